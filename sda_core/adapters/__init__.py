"""Adapters for the diffusion model: read safetensors, detect the key format, place factors on the model.

Pure PyTorch (+ LyCORIS's functional maths); never imports ComfyUI.
"""
from .algorithms import MAX_SCALE, AdapterModule, LoHaModule, LoKrModule, LoRAModule, check_finite_delta, fits
from .apply import apply_deltas
from .arch import guess_architecture
from .errors import AdapterError, AdapterFileMissing
from .file_reading import read_safetensors, resolve_in_folder
from .layout import ModelLayout, Target, module_targets
from .load import load_adapter
from .loaded import LoadedAdapter

__all__ = [
    "AdapterError", "AdapterFileMissing", "AdapterModule", "LoRAModule", "LoHaModule", "LoKrModule", "LoadedAdapter", "ModelLayout",
    "MAX_SCALE", "Target", "apply_deltas", "check_finite_delta", "fits", "guess_architecture", "load_adapter", "module_targets", "read_safetensors",
    "resolve_in_folder",
]
