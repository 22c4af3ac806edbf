"""Counting ComfyUI's model loading and patching calls where ComfyUI makes them (tests of residency)."""
from __future__ import annotations

COUNTED = ("load_models_gpu", "free_memory", "patch_model", "unpatch_model")


def count_model_calls(monkeypatch) -> dict[str, int]:
    """A dict of call counts, live: comfy.model_management's load_models_gpu/free_memory and ModelPatcher's
    patch_model/unpatch_model, wrapped for the test (monkeypatch undoes it)."""
    import comfy.model_management as mm
    import comfy.model_patcher

    calls = dict.fromkeys(COUNTED, 0)

    def counting(owner, name):
        original = getattr(owner, name)

        def wrapper(*args, **kwargs):
            calls[name] += 1
            return original(*args, **kwargs)

        monkeypatch.setattr(owner, name, wrapper)

    for name in ("load_models_gpu", "free_memory"):
        counting(mm, name)
    for name in ("patch_model", "unpatch_model"):
        counting(comfy.model_patcher.ModelPatcher, name)
    return calls
