"""Prompts into the conds ComfyUI's sampler would give the model, batched for the trainer."""
from __future__ import annotations

import hashlib

import torch

import comfy.sampler_helpers
import comfy.samplers

from ...sda_core.training.batching import Unbatchable


def split_entries(conditioning) -> list[list]:
    """One single-entry CONDITIONING per prompt: each entry, and each batch row of it, is a prompt."""
    out = []
    for tensor, options in conditioning:
        rows = tensor.shape[0]
        for i in range(rows):
            opts = {k: v[i:i + 1] if torch.is_tensor(v) and v.ndim > 0 and v.shape[0] == rows and rows > 1 else v
                    for k, v in options.items()}
            out.append([[tensor[i:i + 1], opts]])
    return out


def encode(clip, text: str) -> list:
    return clip.encode_from_tokens_scheduled(clip.tokenize(text))


def gather_prompts(prompts: str, clip, conditioning) -> tuple[list[list], str]:
    """The positive prompts as CONDITIONINGs, and a line for the report saying where they came from."""
    lines = [line.strip() for line in (prompts or "").splitlines() if line.strip()]
    if conditioning is not None:
        entries = split_entries(conditioning)
        if not entries:
            raise ValueError("conditioning: the connected CONDITIONING holds no prompt")
        ignored = " (the prompts text is ignored)" if lines else ""
        return entries, f"{len(entries)} from the conditioning input{ignored}"
    if not lines:
        raise ValueError("prompts: no prompt; write one prompt per line (with clip connected) or connect conditioning")
    if clip is None:
        raise ValueError("clip: connect a CLIP to encode the prompts (one per line), or connect conditioning instead")
    return [split_entries(encode(clip, line))[0] for line in lines], f"{len(lines)} lines encoded with clip"


def negative_conditioning(cfg: float, clip, negative_prompt: str, positives: list[list]) -> tuple[list | None, str]:
    """The teacher's negative for cfg > 1: negative_prompt through clip, else a zeroed conditioning."""
    if cfg == 1.0:
        return None, "teacher cfg 1 (no negative)"
    if clip is not None:
        return split_entries(encode(clip, negative_prompt or ""))[0], f"teacher cfg {cfg:g}, negative {negative_prompt!r}"
    if (negative_prompt or "").strip():
        raise ValueError("negative_prompt: connect clip to encode it (the prompts came as conditioning)")
    return zeroed(positives[0]), f"teacher cfg {cfg:g}, negative: zeroed conditioning (no clip)"


def zeroed(conditioning: list) -> list:
    """The conditioning with its text features (and pooled output) zeroed, as ConditioningZeroOut gives it."""
    def zero(opts: dict) -> dict:
        return {k: torch.zeros_like(v) if k == "pooled_output" and torch.is_tensor(v) else v for k, v in opts.items()}

    return [[torch.zeros_like(t), zero(opts)] for t, opts in conditioning]


def _plain(value):
    """A normal-tensor copy of what the executor made under inference mode (autograd refuses those)."""
    return value.detach().clone() if torch.is_tensor(value) else value


def model_conds(model, conditioning: list, latent: torch.Tensor, prompt_type: str) -> list[dict]:
    """Per entry, the model conds ComfyUI's sampler makes (the model's extra_conds), for a batch of one."""
    entries = [[_plain(t), {k: _plain(v) for k, v in opts.items()}] for t, opts in conditioning]
    converted = comfy.sampler_helpers.convert_cond(entries)
    converted = comfy.samplers.encode_model_conds(model.model.extra_conds, converted, latent, latent.device, prompt_type)
    return [{k: c.process_cond(batch_size=1, area=None) for k, c in entry["model_conds"].items()} for entry in converted]


class BatchedConds(dict):
    """apply_model keyword arguments for a batch of rows (marks conds already batched)."""


def batch_model_conds(rows: list[dict]) -> BatchedConds:
    """Rows' model conds concatenated the way ComfyUI's sampler batches them; Unbatchable when it would not."""
    first = rows[0]
    out = BatchedConds()
    for key, cond in first.items():
        others = [row.get(key) for row in rows[1:]]
        if any(o is None or not cond.can_concat(o) for o in others):
            raise Unbatchable(f"cond {key!r} differs between prompts")
        out[key] = cond.concat(others)
    if any(row.keys() != first.keys() for row in rows):
        raise Unbatchable("prompts carry different conds")
    return out


def prompt_fingerprint(conditionings: list[list]) -> str:
    digest = hashlib.sha256()
    for cond in conditionings:
        digest.update(cond[0][0].detach().float().cpu().numpy().tobytes())
    return digest.hexdigest()[:16]

