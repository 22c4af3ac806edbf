"""The training node's memory plan: ComfyUI's models and the node's settings as `memory_plan.RunFacts`, the
device's budget from comfy.model_management, the refusal before anything loads."""
from __future__ import annotations

import dataclasses
import math

import comfy.model_management as mm

from ...sda_core.training import SDAConfig
from ...sda_core.training.memory_plan import (MemoryPlan, RunFacts, check_fits, estimate, lokr_param_count,
                                              zimage_profile)
from .. import host
from .shared_teacher import student_additions, teacher_additions

TEXT_TOKENS = 128  # when the conditioning says nothing: a typical prompt's padded length


def compute_bytes(model) -> int:
    """Bytes per activation element of a model run as loaded: the dtype apply_model computes in (fp8 weights
    compute in bf16/fp16). The training clone itself computes in fp32 (session.train_in_fp32)."""
    dtype = model.model.manual_cast_dtype or model.model.get_dtype()
    return dtype.itemsize


def attention_scores(model) -> bool:
    """Whether ComfyUI's attention on this device materialises the score matrix (split / sub-quadratic)."""
    fused = ("pytorch_attention_enabled", "xformers_enabled", "flash_attention_enabled", "sage_attention_enabled")
    return not any(getattr(mm, name, lambda: False)() for name in fused)


def _patch_bytes(patches: dict) -> int:
    """Bytes of the tensors in ComfyUI patch entries (a shared teacher keeps its own patches beside the weights)."""
    import torch

    total = 0
    for entries in patches.values():
        for patch in entries:
            stack = [patch]
            while stack:
                item = stack.pop()
                if isinstance(item, torch.Tensor):
                    total += item.numel() * item.element_size()
                elif isinstance(item, (list, tuple)):
                    stack.extend(item)
                elif hasattr(item, "weights"):
                    stack.extend(item.weights)
    return total


def _tokens(n: int, multiple) -> int:
    """Tokens as the model pads them (Z-Image pads image and text tokens to a multiple of 32)."""
    return int(math.ceil(n / multiple) * multiple) if multiple else n


def image_tokens(student, latent_h: int, latent_w: int) -> int:
    unet = student.model.model_config.unet_config
    patch = int(unet.get("patch_size", 2))
    return _tokens(math.ceil(latent_h / patch) * math.ceil(latent_w / patch), unet.get("pad_tokens_multiple"))


def gather(student, teacher, config: SDAConfig, targets: dict, positive: list, assistant: bool,
           gradient_checkpointing: bool) -> RunFacts:
    """The facts of a run of the SDA Train LoKr node (its models unloaded or loaded: nothing moves here).

    The teacher shares the student's weights when the session can run it on them (shared_teacher), is
    swapped when it is a clone that cannot share, and is planned beside the student otherwise."""
    layout = host.model_layout(student)
    unet = student.model.model_config.unet_config
    dim, heads = int(unet["dim"]), int(unet["n_heads"])
    ffn = layout.shapes["layers.0.feed_forward.w1.weight"][0]
    _, h, w = config.latent_shape
    text = _tokens(max((int(e[0].shape[1]) for cond in positive for e in cond), default=TEXT_TOKENS),
                   unet.get("pad_tokens_multiple"))
    adapted = {t.param: math.prod(layout.shapes[t.param]) for t in targets.values()}  # a fused qkv once
    per_block: dict[str, int] = {}
    for param, n in adapted.items():
        block = ".".join(param.split(".")[:2])
        per_block[block] = per_block.get(block, 0) + n
    trained = tuple(len({b for b in per_block if b.startswith(group + ".")})
                    for group in ("layers", "noise_refiner", "context_refiner"))
    shapes = [(t.shape[0], math.prod(t.shape[1:])) for t in targets.values()]
    additions = teacher_additions(student, teacher) or student_additions(student, teacher)
    mode = "shared" if additions is not None else "swapped" if student.is_clone(teacher) else "resident"
    return RunFacts(
        student_bytes=student.model_size(), teacher_bytes=teacher.model_size(),
        teacher_params=sum(p.numel() for p in teacher.model.parameters()),
        teacher=mode, teacher_extra_bytes=_patch_bytes(additions.patches) if additions is not None else 0,
        lokr_params=lokr_param_count(shapes, config.factor, config.rank),
        adapted_elements=sum(adapted.values()), largest_adapted=max(adapted.values()),
        block_adapted=max(per_block.values()), image_tokens=image_tokens(student, h, w), text_tokens=text,
        trained_blocks=trained,
        profile=zimage_profile(dim, ffn, heads, student.model.get_dtype().itemsize, attention_scores(student),
                               compute_bytes(teacher)),
        batch=config.batch, teacher_cfg=config.teacher_cfg != 1.0, teacher_batch=config.teacher_batch,
        grad_rows=config.batch if assistant else 2 * config.batch, gradient_checkpointing=gradient_checkpointing,
        latent_elements=math.prod(config.latent_shape))


def device_budget(device) -> int:
    """Bytes the run may use on `device`: what is free plus what ComfyUI would unload to make room."""
    freeable = sum(lm.model_loaded_memory() for lm in mm.current_loaded_models if lm.device == device)
    return min(mm.get_total_memory(device), mm.get_free_memory(device) + freeable)


def smaller_sizes(student, config: SDAConfig, width: int, height: int) -> list[tuple[str, int, int]]:
    """Sizes of the same aspect below width x height on the node's grid (multiples of 8 x pool_kernel px),
    largest first, as (label, image tokens, latent elements)."""
    step = 8 * config.pool_kernel
    channels = config.latent_shape[0]
    sizes = []
    for k in range(1, 8):
        scale = 1 - k / 8
        nw, nh = (max(step, int(px * scale) // step * step) for px in (width, height))
        if (nw, nh) != (width, height) and (not sizes or sizes[-1][0] != f"{nw}x{nh}"):
            sizes.append((f"{nw}x{nh}", image_tokens(student, nh // 8, nw // 8), channels * (nh // 8) * (nw // 8)))
    return sizes


def plan_run(student, teacher, config: SDAConfig, targets: dict, positive: list, assistant: bool,
             gradient_checkpointing: bool, width: int, height: int, family: str = "Z-Image"
             ) -> tuple[MemoryPlan | None, list[str]]:
    """The plan and its report lines; raises `RunDoesNotFit` (a MemoryError) when it exceeds the device (not CPU).

    The plan models Z-Image's blocks (measured, see docs/memory_plan.md); for another architecture there is no
    plan (None) and the report says so.

    A separate teacher counts as resident beside the student when both fit, else as swapped in for its
    forwards, as the session loads them; teacher_batch counts only for a swapped teacher (the session uses it
    only there).
    """
    if family != "Z-Image":
        return None, [f"memory plan: not made for {family} (the plan models Z-Image's blocks); if the device runs "
                      "short, turn on gradient_checkpointing or lower width/height"]
    device = student.load_device
    facts = gather(student, teacher, config, targets, positive, assistant, gradient_checkpointing)
    if facts.teacher != "swapped":
        facts = dataclasses.replace(facts, teacher_batch=1)
    plan = estimate(facts)
    if mm.is_device_cpu(device):
        return plan, plan.lines(None, "cpu") + ["  (CPU: not checked against the machine's memory)"]
    budget = device_budget(device)
    if facts.teacher == "resident" and plan.peak > budget:
        plan = estimate(dataclasses.replace(facts, teacher="swapped", teacher_batch=config.teacher_batch))
    check_fits(plan, budget, str(device), smaller_sizes(student, config, width, height))
    return plan, plan.lines(budget, str(device))
