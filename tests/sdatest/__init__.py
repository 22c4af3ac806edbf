"""Test-only helpers: tiny models, tiny adapter files, an in-process ComfyUI host. Never shipped."""
