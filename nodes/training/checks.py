"""Checks on the training node's inputs, and where a run's files go."""
from __future__ import annotations

import dataclasses
import math
import os
from typing import Any

import torch

import comfy.samplers
import folder_paths

from ...sda_core.adapters import Target, module_targets
from ...sda_core.adapters.layout import ModelLayout, key_map_targets
from ...sda_core.paths import check_new_file_name
from ...sda_core.training.lokr_file import resolve_inside
from ...sda_core.training.targets import TargetTable, select_targets, table_for
from .. import host

CATEGORY = "SDA"
NONE = "None"
CHECKPOINT_FOLDER = "sda_checkpoints"
# the longest ending a run adds to save_name in models/loras: the diverged LoKr, numbered if the name is taken
LONGEST_LORA_ENDING = "_diverged_9999.safetensors"
REPORT_WINDOW = 20  # steps averaged for the report's first/last loss
EVAL_SAMPLER = "euler"  # the sampler the loss's rollout is (on the scheduler the run trains on)
# Model types whose denoised output and own prediction the loss can use (docs/method.md, "Other architectures")
FLOW_TYPES = ("FLOW", "FLUX")
TRAINABLE_TYPES = FLOW_TYPES + ("EPS", "V_PREDICTION")
SUPPORTED = "Z-Image, FLUX.1, SD3.5, Qwen-Image or SDXL (eps or v-prediction)"


def describe_model(model) -> str:
    """What the metadata and report call a MODEL: its ComfyUI model config, and whether it carries patches."""
    name = type(getattr(model.model, "model_config", model.model)).__name__
    return name + (f" with {len(model.patches)} patched weights" if model.patches else "")


def architecture_name(model) -> str:
    """The model as a user knows it: the pack's family name when it trains it, else ComfyUI's config name."""
    table = target_table(model)
    return table.family if table is not None else type(getattr(model.model, "model_config", model.model)).__name__


def target_table(model, layout: ModelLayout | None = None) -> TargetTable | None:
    """The table of layers SDA trains for the model's architecture (targets.TABLES), None for another one."""
    layout = layout if layout is not None else host.model_layout(model)
    return table_for(type(model.model).__name__, zimage=layout.key_map is None)


def require_trainable(model, widget: str) -> None:
    """A model whose prediction the loss can read (flow, eps or v); its architecture is checked by lokr_targets."""
    model_type = model.model.model_type.name
    if model_type not in TRAINABLE_TYPES:
        what = f"{architecture_name(model)} ({type(model.model).__name__}, model type {model_type})"
        raise ValueError(f"{widget}: SDA training reads x0 from a flow, eps or v-prediction model; this {widget} is "
                         f"{what}. Trainable: {SUPPORTED}")


def _architecture(model) -> dict[str, Any]:
    unet = getattr(getattr(model.model, "model_config", None), "unet_config", {}) or {}
    return {
        "model class": type(model.model).__name__,
        "latent channels": model.model.latent_format.latent_channels,
        "input channels": unet.get("in_channels"),
        "text feature size": unet.get("cap_feat_dim", unet.get("context_dim")),
    }


def _input_weights(model) -> dict[str, tuple[int, ...]]:
    """Shape of the first weight that reads the text features student and teacher share, from the weights themselves
    (a model config can be incomplete). A wider teacher, or one patching the latent differently, is fine."""
    shapes = {}
    for label, attr in (("text feature input", "cap_embedder"),):
        module = getattr(model.model.diffusion_model, attr, None)
        weight = next((m.weight for m in (module.modules() if module is not None else [])
                       if isinstance(getattr(m, "weight", None), torch.Tensor) and m.weight.dim() == 2), None)
        if weight is not None:
            shapes[f"{label} ({attr})"] = tuple(weight.shape)
    return shapes


def require_same_family(student, teacher) -> None:
    """The teacher must read the student's latents and conditioning (e.g. Z-Image base for Z-Image-Turbo)."""
    s, t = _architecture(student), _architecture(teacher)
    diff = [f"{k} {s[k]} (student) vs {t[k]} (teacher)" for k in s if s[k] != t[k]]
    ws, wt = _input_weights(student), _input_weights(teacher)
    diff += [f"{k}: the student's weight is {list(ws[k])} (width {ws[k][0]}), the teacher's {list(wt[k])} (width "
             f"{wt[k][0]}): both must read the same {ws[k][1]}-wide conditioning" for k in ws
             if k in wt and ws[k][1] != wt[k][1]]
    if diff:
        raise ValueError("student and teacher do not match: " + "; ".join(diff) + ". The teacher must be the "
                         "many-step model of the student's family, sharing its latent space and text encoder")


def latent_shape(student, width: int, height: int, pool_kernel: int) -> tuple[int, ...]:
    """(C, H, W) of the training latents, or (C, 1, H, W) for a model whose latents have a time axis (Qwen-Image);
    the diversity pooling must tile the latent exactly."""
    latent_format = student.model.latent_format
    ratio = int(getattr(latent_format, "spacial_downscale_ratio", 8))
    multiple = ratio * pool_kernel
    for widget, px in (("width", width), ("height", height)):
        if px < multiple or px % multiple:
            nearest = max(multiple, round(px / multiple) * multiple)
            raise ValueError(f"{widget} {px}: must be a multiple of {ratio} × pool_kernel = {multiple} px, so that the "
                             f"{pool_kernel}×{pool_kernel} pooling of the diversity term tiles the latent "
                             f"({px} px -> {px // ratio} latent cells); e.g. {nearest}")
    extra = (1,) * (int(getattr(latent_format, "latent_dimensions", 2)) - 2)  # one frame
    return (latent_format.latent_channels, *extra, height // ratio, width // ratio)


@dataclasses.dataclass(frozen=True)
class Schedule:
    """The student's sampling as ComfyUI runs it: sigmas of the scheduler, flow shift, noise scaling."""

    sigmas: tuple[float, ...]
    shift: float | None
    noise_scale: float | None  # None: a flow model's (x = σ0·noise)


def student_schedule(student, steps: int, scheduler: str) -> Schedule:
    """The sigmas KSampler samples the student with (its model sampling, ModelSampling* patches included) and how
    it scales noise onto an empty latent at the first one."""
    sampling_ = student.get_model_object("model_sampling")
    sigmas = comfy.samplers.calculate_sigmas(sampling_, scheduler, steps).float().cpu()
    flow = student.model.model_type.name in FLOW_TYPES
    noise_scale = None
    if not flow:
        first = sigmas[:1]
        max_denoise = math.isclose(float(sampling_.sigma_max), float(first), rel_tol=1e-5) or float(first) > float(
            sampling_.sigma_max)  # what KSampler decides for a full denoise
        noise_scale = float(sampling_.noise_scaling(first, torch.ones(1), torch.zeros(1), max_denoise))
    shift = getattr(sampling_, "shift", None)
    return Schedule(tuple(sigmas.tolist()), float(shift) if shift is not None and flow else None, noise_scale)


def parameterization(model):
    """sigma [B] -> (c_skip, c_out) of the model's own prediction, read off ComfyUI's `calculate_denoised`
    (affine in the model output and input): what a v-prediction or eps anchor compares."""
    sampling_ = model.get_model_object("model_sampling")

    def coefficients(sigma: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        ones = torch.ones(sigma.shape[0], 1, dtype=torch.float32, device=sigma.device)
        zeros = torch.zeros_like(ones)
        sig = sigma.float()
        c_skip = sampling_.calculate_denoised(sig, zeros, ones).reshape(-1)
        c_out = -sampling_.calculate_denoised(sig, ones, zeros).reshape(-1)
        return c_skip, c_out

    return coefficients


def lokr_targets(model, include_refiners: bool) -> tuple[TargetTable, dict[str, Target]]:
    """The student's attention and feed-forward layers the LoKr trains (targets.TABLES), named as its file does."""
    layout = host.model_layout(model)
    table = target_table(model, layout)
    if table is None:
        raise ValueError(f"student: SDA training has no target table for {architecture_name(model)} "
                         f"({type(model.model).__name__}); it trains {SUPPORTED}")
    if layout.key_map is None:  # Z-Image: the pack's own map, in its file's names
        names = {table.prefix + name: target for name, target in module_targets(layout).items()}
    else:
        names = key_map_targets(layout)
    chosen = select_targets(table, names, include_refiners)
    if not chosen:
        raise ValueError(f"student: {describe_model(model)} has no {table.family} transformer blocks "
                         f"({table.blocks}); the SDA LoKr trains those")
    return table, chosen


@dataclasses.dataclass(frozen=True)
class RunFiles:
    """Where a save_name's LoKr and checkpoint go; both refused if the name would leave their folder."""

    save_name: str
    loras_root: str
    checkpoint: str
    best_factors: str

    @classmethod
    def for_name(cls, save_name: str) -> "RunFiles":
        name = (save_name or "").strip()
        if name.endswith(".safetensors"):
            name = name[: -len(".safetensors")]
        if not name:
            raise ValueError("save_name: empty; give a file name such as sda_lokr")
        loras_root = folder_paths.get_folder_paths("loras")[0]
        ckpt_root = os.path.join(folder_paths.get_output_directory(), CHECKPOINT_FOLDER)
        try:
            check_new_file_name(loras_root, name, LONGEST_LORA_ENDING)  # now, not at save time after the run
            check_new_file_name(ckpt_root, name, ".ckpt.safetensors")
            resolve_inside(loras_root, name + ".safetensors")
            checkpoint = resolve_inside(ckpt_root, name + ".ckpt.safetensors")
            best = resolve_inside(ckpt_root, name + ".best.safetensors")
        except ValueError as exc:
            raise ValueError(f"save_name: {exc}") from None
        return cls(name, loras_root, checkpoint, best)

