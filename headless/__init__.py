"""Running the pack without the UI: ComfyUI as a library (runtime) and the headless comparison (compare)."""
