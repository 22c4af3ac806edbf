"""Progress, evals with the best-by-diversity LoKr, and the LoKr file of a run."""
from __future__ import annotations

import contextlib
import copy
import dataclasses
import os
import sys
import time
from typing import Any

import torch
from safetensors import safe_open

import comfy.model_management as mm
import comfy.utils

from ...sda_core.diversity.scores import score_batch
from ...sda_core.training import LoKrSet, SDAConfig, save_lokr, training_metadata
from ...sda_core.training.atomic_save import atomic_save_safetensors
from ...sda_core.training.targets import TargetTable
from .. import host, sampling
from .checks import EVAL_SAMPLER, RunFiles
from .conds import zeroed
from .session import Session


class Progress:
    """One progress bar over the training steps, the current loss as the node's progress text (server only).

    The server's progress hook raises ComfyUI's interrupt from inside `update`; that is recorded here so the
    loop can stop at the next step and save, instead of the exception ending the node without a file.
    """

    def __init__(self, total: int, node_id: str | None) -> None:
        self.total, self.node_id = total, node_id
        self.bar = comfy.utils.ProgressBar(total)
        self.interrupted = False
        self._last_text = 0.0

    def update(self, step: int, entry: dict | None = None) -> None:
        try:
            self.bar.update_absolute(step, self.total)
        except mm.InterruptProcessingException:
            self.interrupted = True
        if entry is not None:
            self._send_text(f"step {step}/{self.total}  loss {_num(entry.get('total'))}  anchor "
                            f"{_num(entry.get('anchor'))}  diversity {_num(entry.get('diversity'))}")

    def _send_text(self, text: str) -> None:
        server = sys.modules.get("server")
        instance = getattr(getattr(server, "PromptServer", None), "instance", None)
        if instance is None or self.node_id is None or time.monotonic() - self._last_text < 0.5:
            return
        self._last_text = time.monotonic()
        instance.send_progress_text(text, self.node_id)


def _num(x: float | None) -> str:
    return "-" if x is None else f"{x:.4g}"


@dataclasses.dataclass(frozen=True)
class EvalPlan:
    """What the eval renders (the first prompt, fixed seeds, the training size, every `every` steps) and scores."""

    vae: Any
    positive: list
    negative: list
    seeds: list[int]
    width: int
    height: int
    every: int
    lpips: Any


def make_eval_plan(vae, every: int, n_seeds: int, seed: int, width: int, height: int, positive: list,
                   negative: list | None) -> EvalPlan | None:
    """The eval of the first prompt at cfg 1 (as the student samples), or None when eval_every is 0."""
    if every <= 0:
        return None
    if vae is None:
        raise ValueError("eval_every: connect a vae to decode the eval renders, or set eval_every to 0")
    seeds = [(seed + i) % 2**64 for i in range(n_seeds)]
    lpips = host.lpips_model("alex")  # loaded before training: missing LPIPS weights fail fast
    return EvalPlan(vae, positive[0], negative or zeroed(positive[0]), seeds, width, height, every, lpips)


class Evaluator:
    """Fixed seeds through ComfyUI's sampler with the current LoKr (assistant off, as at inference), scored by
    average pairwise LPIPS; keeps a copy of the LoKr with the best score. An interrupt during sampling is
    recorded (the training loop then stops and saves) instead of failing the node."""

    def __init__(self, session: Session, plan: EvalPlan, steps: int, best_path: str, scheduler: str = "simple") -> None:
        self.session, self.plan, self.steps, self.best_path = session, plan, steps, best_path
        self.scheduler = scheduler
        self.history: list[dict] = []
        self.best: LoKrSet | None = None
        self.best_entry: dict | None = None
        self.interrupted = False

    def __call__(self, step: int) -> None:
        off = self.session.switch.off if self.session.switch else contextlib.nullcontext
        try:
            with torch.no_grad(), off():
                plan = self.plan
                latents, _ = sampling.sample_seeds(
                    self.session.clone, plan.positive, plan.negative, plan.seeds, width=plan.width, height=plan.height,
                    steps=self.steps, cfg=1.0, sampler_name=EVAL_SAMPLER, scheduler=self.scheduler,
                    batch_size=len(plan.seeds))
                images = host.decode(plan.vae, latents)
                scores, _ = score_batch(images, plan.lpips)
        except mm.InterruptProcessingException:
            self.interrupted = True
            return
        entry = {"step": step, "avg_lpips": scores.avg_lpips, "pixel_std": scores.pixel_std}
        self.history.append(entry)
        if step > 0 and (self.best_entry is None or entry["avg_lpips"] > self.best_entry["avg_lpips"]):
            self._keep_best(entry)

    def _keep_best(self, entry: dict) -> None:
        if self.best is None:
            self.best = copy.deepcopy(self.session.lokr).requires_grad_(False)
        live = self.session.lokr.named_tensors()
        with torch.no_grad():
            for name, p in self.best.named_tensors().items():
                p.copy_(live[name])
        self.best_entry = dict(entry)
        atomic_save_safetensors(self.best.named_tensors(), self.best_path, {"step": str(entry["step"])})

    def state(self) -> dict:
        return {"evals": self.history, "best": self.best_entry}

    def restore(self, extra: dict) -> str | None:
        """Eval history and best LoKr of a resumed run; a note when the best could not be recovered."""
        self.history = [dict(e) for e in extra.get("evals", [])]
        best = extra.get("best")
        if not best:
            return None
        if os.path.isfile(self.best_path):
            with safe_open(self.best_path, framework="pt", device="cpu") as f:
                if (f.metadata() or {}).get("step") == str(best["step"]):
                    self.best = copy.deepcopy(self.session.lokr).requires_grad_(False)
                    with torch.no_grad():
                        for name, p in self.best.named_tensors().items():
                            p.copy_(f.get_tensor(name))
                    self.best_entry = dict(best)
                    return None
        return f"the best LoKr of step {best['step']} before the resume was not found; best restarts from here"


def save_run_lokr(files: RunFiles, lokr: LoKrSet, name: str, config: SDAConfig, steps_done: int,
                  details: dict, table: TargetTable) -> tuple[str, str]:
    """(absolute path, name relative to the loras folder) of a newly written LoKr file (never overwriting), its
    modules named as the architecture's table says."""
    meta = training_metadata(config, steps_done, details["student"], **details)
    path = save_lokr(name, lokr, meta, root=files.loras_root, module_key=table.file_key)
    return path, os.path.relpath(path, files.loras_root)

