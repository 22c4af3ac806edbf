"""Thin ComfyUI V3 nodes over sda_core: widgets and ComfyUI objects in, sda_core calls, ComfyUI objects out."""
