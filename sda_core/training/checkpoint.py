"""Resumable training state: LoKr factors, AdamW state, step, loss history, config, torch CPU RNG.

One safetensors file (tensors) with everything else as JSON in its metadata: no pickle, so loading
a checkpoint never executes code. Written atomically; resuming from it continues the same loss curve
bit for bit on CPU (the loop draws all its randomness from per-step generators).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import torch
from safetensors import safe_open

from .atomic_save import atomic_save_safetensors
from .lokr import LoKrSet

__all__ = ["Checkpoint", "save_checkpoint", "load_checkpoint", "CHECKPOINT_VERSION"]

CHECKPOINT_VERSION = "1"


def _spec(lokr: LoKrSet) -> dict[str, dict[str, Any]]:
    return {n: {"out_dim": m.out_dim, "in_dim": m.in_dim, "factor": m.factor, "rank": m.rank} for n, m in lokr.items()}


@dataclass
class Checkpoint:
    """Everything `train(resume=...)` needs to continue exactly where a run stopped."""

    step: int
    history: list[dict]
    config: dict
    lokr: dict[str, torch.Tensor]
    lokr_spec: dict[str, dict]
    optimizer: dict
    param_names: list[str]
    rng_state: torch.Tensor
    extra: dict = field(default_factory=dict)

    @classmethod
    def capture(
        cls,
        step: int,
        history: list[dict],
        config: dict,
        lokr: LoKrSet,
        optimizer: torch.optim.Optimizer,
        extra: dict | None = None,
    ) -> "Checkpoint":
        """Snapshot (copies) of the live training state after `step` completed steps."""
        named = lokr.named_tensors()
        by_id = {id(p): n for n, p in named.items()}
        names = [by_id[id(p)] for g in optimizer.param_groups for p in g["params"]]
        state = optimizer.state_dict()
        state = {
            "state": {i: {k: (v.detach().clone() if torch.is_tensor(v) else v) for k, v in s.items()}
                      for i, s in state["state"].items()},
            "param_groups": json.loads(json.dumps(state["param_groups"])),
        }
        return cls(
            step=int(step),
            history=json.loads(json.dumps(history)),
            config=dict(config),
            lokr={n: p.detach().clone() for n, p in named.items()},
            lokr_spec=_spec(lokr),
            optimizer=state,
            param_names=names,
            rng_state=torch.get_rng_state(),
            extra=dict(extra or {}),
        )

    def restore(self, lokr: LoKrSet, optimizer: torch.optim.Optimizer | None = None) -> None:
        """Load factors (and optimiser state) into a LoKr set of the same modules and shapes."""
        spec = _spec(lokr)
        if spec != self.lokr_spec:
            missing = sorted(set(self.lokr_spec) ^ set(spec))
            detail = f"modules differ: {missing[:5]}" if missing else "shapes/factor/rank differ"
            raise ValueError(f"checkpoint does not match this LoKr set ({detail})")
        named = lokr.named_tensors()
        with torch.no_grad():
            for n, p in named.items():
                p.copy_(self.lokr[n])
        if optimizer is not None:
            by_id = {id(p): n for n, p in named.items()}
            names = [by_id[id(p)] for g in optimizer.param_groups for p in g["params"]]
            if names != self.param_names:
                raise ValueError("checkpoint optimiser parameters are in a different order than this LoKr set's")
            groups = [dict(g) for g in self.optimizer["param_groups"]]
            for g in groups:
                if "betas" in g:
                    g["betas"] = tuple(g["betas"])
            optimizer.load_state_dict({"state": self.optimizer["state"], "param_groups": groups})


def save_checkpoint(path: str, ckpt: Checkpoint) -> str:
    """Atomically write `ckpt` to `path` (overwriting the previous checkpoint there); returns path."""
    tensors = {f"lokr.{n}": t for n, t in ckpt.lokr.items()}
    plain_state: dict[str, dict] = {}
    for i, s in ckpt.optimizer["state"].items():
        for k, v in s.items():
            if torch.is_tensor(v):
                tensors[f"optim.{i}.{k}"] = v
            else:
                plain_state.setdefault(str(i), {})[k] = v
    tensors["rng.torch_cpu"] = ckpt.rng_state
    meta = {
        "sda_checkpoint_version": CHECKPOINT_VERSION,
        "step": str(ckpt.step),
        "history": json.dumps(ckpt.history),
        "config": json.dumps(ckpt.config),
        "lokr_spec": json.dumps(ckpt.lokr_spec),
        "param_names": json.dumps(ckpt.param_names),
        "optimizer_param_groups": json.dumps(ckpt.optimizer["param_groups"]),
        "optimizer_plain_state": json.dumps(plain_state),
        "extra": json.dumps(ckpt.extra),
    }
    atomic_save_safetensors(tensors, path, meta)
    return path


def load_checkpoint(path: str) -> Checkpoint:
    """Read a checkpoint written by `save_checkpoint` (safetensors + JSON only); ValueError naming the file when
    it is not one (truncated, garbage, another kind of safetensors file)."""
    try:
        return _read_checkpoint(path)
    except ValueError:
        raise
    except Exception as exc:  # safetensors' SafetensorError, a JSON or key error in the metadata, an OSError
        raise ValueError(f"{path} is not a readable SDA training checkpoint ({type(exc).__name__}: {exc}); it is "
                         "damaged or was not written by SDA Train LoKr") from None


def _read_checkpoint(path: str) -> Checkpoint:
    with safe_open(path, framework="pt", device="cpu") as f:
        meta = f.metadata() or {}
        if meta.get("sda_checkpoint_version") != CHECKPOINT_VERSION:
            raise ValueError(f"{path} is not an SDA training checkpoint (version {meta.get('sda_checkpoint_version')!r})")
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    state: dict[int, dict] = {}
    for i, s in json.loads(meta["optimizer_plain_state"]).items():
        state.setdefault(int(i), {}).update(s)
    lokr = {}
    for k, t in tensors.items():
        if k.startswith("lokr."):
            lokr[k[len("lokr."):]] = t
        elif k.startswith("optim."):
            _, i, name = k.split(".", 2)
            state.setdefault(int(i), {})[name] = t
    return Checkpoint(
        step=int(meta["step"]),
        history=json.loads(meta["history"]),
        config=json.loads(meta["config"]),
        lokr=lokr,
        lokr_spec=json.loads(meta["lokr_spec"]),
        optimizer={"state": state, "param_groups": json.loads(meta["optimizer_param_groups"])},
        param_names=json.loads(meta["param_names"]),
        rng_state=tensors["rng.torch_cpu"],
        extra=json.loads(meta["extra"]),
    )
