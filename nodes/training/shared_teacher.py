"""A teacher that is the student plus its own patches, run on the student's loaded weights.

When the teacher MODEL is a clone of the student with extra patches (Turbo + a de-distill LoRA through any LoRA
loader), ComfyUI holds one set of weights for both and loading one unloads the other: per training step it
would re-patch every adapted weight twice. Instead the teacher's extra patches ride on the training clone as
weight wrappers that are off except during the teacher's forwards (computed by ComfyUI's own
`comfy.lora.calculate_weight`, as its low-VRAM path applies patches), and those forwards also switch the LoKr
and the assistant adapter off. One copy of the weights, no model loads, frees, patches or unpatches per step.

The mirror case is as common: the student is the teacher plus a distillation adapter (Qwen-Image + a
Lightning LoRA, SDXL + a DMD2 / Hyper / Lightning LoRA, Z-Image + a turbo LoRA). Then the training clone is
loaded without the student's additions, which ride as weight wrappers that are ON except during the teacher's
forwards. The student's forwards then compute those additions per layer in the compute dtype (fp32 while
training), where the MODEL a user samples has them merged into its stored weights.

Only when one is exactly the other plus additions (the base's patches are a prefix of the other's on every
weight, the same object patches and weight wrappers before its own, every added patch on a weight ComfyUI
computes through a cast op) is it shared this way; otherwise the session swaps the teacher in (residency).
"""
from __future__ import annotations

import contextlib
import dataclasses
import uuid
from typing import Callable, ContextManager, Iterator

import torch

import comfy.lora
import comfy.utils


@dataclasses.dataclass
class TeacherPatches:
    """What the teacher adds to the student: ComfyUI patches and weight wrappers, by weight key."""

    patches: dict[str, list]
    wrappers: dict[str, list]

    def count(self) -> int:
        return sum(map(len, self.patches.values())) + sum(map(len, self.wrappers.values()))


def _prefix(base: list, full: list) -> bool:
    return len(base) <= len(full) and all(a is b for a, b in zip(base, full))


def _additions(base: dict, full: dict) -> dict[str, list] | None:
    """full's entries after base's on every key; None when base is not a prefix of full somewhere."""
    if any(key not in full for key in base):
        return None
    out = {}
    for key, items in full.items():
        have = base.get(key, [])
        if not _prefix(have, items):
            return None
        if len(items) > len(have):
            out[key] = list(items[len(have):])
    return out


def _wrappable(model, key: str) -> bool:
    """Whether ComfyUI applies weight functions to `key` (a weight or bias of a cast op)."""
    path, _, kind = key.rpartition(".")
    if kind not in ("weight", "bias"):
        return False
    try:
        module = comfy.utils.get_attr(model.model, path)
    except AttributeError:
        return False
    return hasattr(module, "comfy_cast_weights") and hasattr(module, f"{kind}_function")


def teacher_additions(student, teacher) -> TeacherPatches | None:
    """The teacher's own patches when it can share the student's weights (see the module docstring), else None."""
    if teacher is student or not student.is_clone(teacher):
        return None
    if set(student.object_patches) != set(teacher.object_patches) or any(
            student.object_patches[k] is not teacher.object_patches[k] for k in student.object_patches):
        return None
    patches = _additions(student.patches, teacher.patches)
    wrappers = _additions(student.weight_wrapper_patches, teacher.weight_wrapper_patches)
    if patches is None or wrappers is None:
        return None
    if not all(_wrappable(student, key) for key in (*patches, *wrappers)):
        return None
    return TeacherPatches(patches, wrappers)


def student_additions(student, teacher) -> TeacherPatches | None:
    """The student's own patches over the teacher's when the student is the teacher plus them, else None."""
    return teacher_additions(teacher, student)


class TeacherSwitch:
    """Whether some additions apply: `on()` and `off()` set it inside, its value before is restored on exit."""

    def __init__(self, active: bool = False) -> None:
        self.active = active

    @contextlib.contextmanager
    def _set(self, value: bool) -> Iterator[None]:
        before = self.active
        self.active = value
        try:
            yield
        finally:
            self.active = before

    def on(self) -> ContextManager[None]:
        return self._set(True)

    def off(self) -> ContextManager[None]:
        return self._set(False)


class _Switched:
    """A weight function applied only while the switch is on."""

    def __init__(self, switch: TeacherSwitch, function: Callable[[torch.Tensor], torch.Tensor]) -> None:
        self.switch, self.function = switch, function

    def __call__(self, weight: torch.Tensor) -> torch.Tensor:
        return self.function(weight) if self.switch.active else weight


class _Patches:
    """ComfyUI's patch list of one weight applied to the weight as it is computed (a copy, in the compute dtype)."""

    def __init__(self, key: str, patches: list) -> None:
        self.key, self.patches = key, patches

    def __call__(self, weight: torch.Tensor) -> torch.Tensor:
        return comfy.lora.calculate_weight(self.patches, weight, self.key, intermediate_dtype=weight.dtype)


def attach_teacher(clone, additions: TeacherPatches) -> Callable[[], ContextManager[None]]:
    """The teacher's additions on `clone` (before it is loaded) as switchable weight wrappers, off; returns what
    a teacher forward runs inside (them on)."""
    switch = TeacherSwitch(active=False)
    _add_switched(clone, additions, switch)
    return switch.on


def detach_student(clone, additions: TeacherPatches) -> Callable[[], ContextManager[None]]:
    """The student's own additions taken off `clone`'s patches (before it is loaded: it loads as the teacher) and
    put back as switchable weight wrappers, on; returns what a teacher forward runs inside (them off)."""
    for key, added in additions.patches.items():
        kept = clone.patches[key][:len(clone.patches[key]) - len(added)]  # new lists: the student keeps its own
        if kept:
            clone.patches[key] = kept
        else:
            del clone.patches[key]
    for key, added in additions.wrappers.items():
        kept = clone.weight_wrapper_patches[key][:len(clone.weight_wrapper_patches[key]) - len(added)]
        if kept:
            clone.weight_wrapper_patches[key] = kept
        else:
            del clone.weight_wrapper_patches[key]
    clone.patches_uuid = uuid.uuid4()  # other weights than the student's: ComfyUI must patch it afresh
    switch = TeacherSwitch(active=True)
    _add_switched(clone, additions, switch)
    return switch.off


def _add_switched(clone, additions: TeacherPatches, switch: TeacherSwitch) -> None:
    for key, patches in sorted(additions.patches.items()):
        clone.add_weight_wrapper(key, _Switched(switch, _Patches(key, patches)))
    for key, wrappers in sorted(additions.wrappers.items()):
        for wrapper in wrappers:
            clone.add_weight_wrapper(key, _Switched(switch, wrapper))
