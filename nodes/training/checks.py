"""Checks on the training node's inputs, and where a run's files go."""
from __future__ import annotations

import dataclasses
import os
import re
from typing import Any

import torch

import comfy.model_base
import comfy.samplers
import folder_paths

from ...sda_core.adapters import Target, module_targets
from ...sda_core.paths import check_new_file_name
from ...sda_core.training import flow_sigmas
from ...sda_core.training.lokr_file import resolve_inside
from .. import host

CATEGORY = "SDA"
NONE = "None"
CHECKPOINT_FOLDER = "sda_checkpoints"
# the longest ending a run adds to save_name in models/loras: the diverged LoKr, numbered if the name is taken
LONGEST_LORA_ENDING = "_diverged_9999.safetensors"
REPORT_WINDOW = 20  # steps averaged for the report's first/last loss
EVAL_SAMPLER = ("euler", "simple")  # the schedule the loss trains on (simple scheduler, the student's shift)
# diffusers-style Z-Image module names the LoKr trains (ComfyUI maps to_q/k/v onto rows of attention.qkv)
LOKR_TARGET = re.compile(
    r"^(?P<block>layers|noise_refiner|context_refiner)\.\d+\.(attention\.(to_q|to_k|to_v|to_out\.0)|feed_forward\.w[123])$")


def describe_model(model) -> str:
    """What the metadata and report call a MODEL: its ComfyUI model config, and whether it carries patches."""
    name = type(getattr(model.model, "model_config", model.model)).__name__
    return name + (f" with {len(model.patches)} patched weights" if model.patches else "")


def require_flow(model, widget: str) -> None:
    model_type = model.model.model_type
    if model_type != comfy.model_base.ModelType.FLOW:
        raise ValueError(f"{widget}: SDA training needs a flow-matching model (model type FLOW, like Z-Image); this "
                         f"{widget} is {type(model.model).__name__} with model type {model_type.name}")


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


def latent_shape(student, width: int, height: int, pool_kernel: int) -> tuple[int, int, int]:
    """(C, H, W) of the training latents; the diversity pooling must tile the latent exactly."""
    multiple = 8 * pool_kernel
    for widget, px in (("width", width), ("height", height)):
        if px < multiple or px % multiple:
            nearest = max(multiple, round(px / multiple) * multiple)
            raise ValueError(f"{widget} {px}: must be a multiple of 8 × pool_kernel = {multiple} px, so that the "
                             f"{pool_kernel}×{pool_kernel} pooling of the diversity term tiles the latent "
                             f"({px} px -> {px // 8} latent cells); e.g. {nearest}")
    return (student.model.latent_format.latent_channels, height // 8, width // 8)


def student_shift(student, steps: int) -> float:
    """The flow shift of the student's sampling, checked: sda_core's sigmas must be ComfyUI's simple schedule."""
    sampling_ = student.get_model_object("model_sampling")
    shift = getattr(sampling_, "shift", None)
    if shift is None:
        raise ValueError(f"student: its model sampling ({type(sampling_).__name__}) has no flow shift; SDA training "
                         "follows a shifted discrete flow schedule like Z-Image's")
    ours = flow_sigmas(steps, float(shift))
    theirs = comfy.samplers.calculate_sigmas(sampling_, EVAL_SAMPLER[1], steps).float().cpu()
    if ours.shape != theirs.shape or not torch.allclose(ours, theirs, atol=1e-5):
        raise ValueError(f"student: its {steps}-step simple schedule {theirs.tolist()} is not the shifted flow schedule "
                         f"the trainer follows ({ours.tolist()}); its model sampling {type(sampling_).__name__} is "
                         "not supported")
    return float(shift)


def lokr_targets(model, include_refiners: bool) -> dict[str, Target]:
    """The student's Z-Image attention (q, k, v, out) and feed-forward (w1-w3) modules, by diffusers name."""
    chosen = {}
    for name, target in module_targets(host.model_layout(model)).items():
        match = LOKR_TARGET.match(name)
        if match and (include_refiners or match["block"] == "layers"):
            chosen[name] = target
    if not chosen:
        raise ValueError(f"student: {describe_model(model)} has no Z-Image transformer blocks "
                         "(layers.N.attention.to_q … feed_forward.w3); the SDA LoKr trains Z-Image")
    return chosen


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

