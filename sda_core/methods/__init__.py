"""Training-free diversity methods that run beside SDA: the maths only (ComfyUI glue lives in nodes/)."""
