"""What an SDA run needs: hyper-parameters (`SDAConfig`) and the models as plain callables (`SDAModels`).

Defaults are the SDA card's (see docs/method.md): LoKr factor 8 with a full w2, AdamW with weight decay 0.001,
Huber anchor delta 0.08, avg-pool kernel 8, the diversity term on steps 0..6 of the 8-step schedule
(step 7 pure anchor), Z-Image's sampling shift 3.0, teacher cfg 1.

Other models bring their own schedule: `sigmas` (the host's scheduler on the student's model sampling) and
`noise_scale` (how the host scales noise onto an empty latent at the first sigma) replace the flow defaults.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Callable, ContextManager

import torch

from .lokr import LoKrSet
from .trajectory import flow_sigmas

__all__ = ["SDAConfig", "SDAModels", "Denoiser", "Parameterization", "X0_PROJECTION"]

Denoiser = Callable[[torch.Tensor, torch.Tensor, Any], torch.Tensor]
"""denoise(x_t [B,C,...], sigma [B], cond) -> x0 [B,C,...] (ComfyUI's apply_model: the denoised estimate)."""

Parameterization = Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]
"""sigma [B] -> (c_skip [B], c_out [B]) with x0 = c_skip·x_t − c_out·prediction: how the student's own output
relates to x0 (flow and eps: (1, σ); v-prediction: (σd²/(σ²+σd²), σ·σd/√(σ²+σd²)))."""

X0_PROJECTION = "x_t - sigma*v (generalises the card's z - v at sigma=1)"


@dataclass
class SDAConfig:
    """Every SDA hyper-parameter; saved whole into checkpoints and LoKr metadata."""

    steps: int = 2500  # the released v1 came from step 2500 of its best run
    lr: float = 1e-4
    lambda_div: float = 1.0
    huber_delta: float = 0.08
    pool_kernel: int = 8
    div_skip: int = 7  # diversity term only for schedule step index k < div_skip
    student_steps: int = 8
    shift: float | None = 3.0  # the flow shift of the student's sampling (None: a model sampling without one)
    # The student's schedule as the host samples it (student_steps + 1 sigmas down to 0); None: the flow schedule
    # of `shift` (ComfyUI's simple scheduler). `scheduler` names it for the report and the eval renders.
    sigmas: tuple[float, ...] | None = None
    scheduler: str = "simple"
    noise_scale: float | None = None  # x at the first sigma = noise_scale·noise; None: sigmas[0] (flow)
    factor: int = 8
    rank: int | None = None  # None: full w2 (the card's "full rank")
    weight_decay: float = 0.001
    grad_clip: float = 1.0  # max global grad norm of the factors; <= 0: off (the norm is still checked for finiteness)
    rollout_with_assistant: bool = False  # x_t rolled out with the assistant adapter OFF: the trajectory users sample
    teacher_cfg: float = 1.0
    batch: int = 1  # prompts per step
    seed: int = 0
    checkpoint_every: int = 0  # 0: only on stop/interrupt and at the end
    max_bad_steps: int = 5  # consecutive non-finite steps before TrainingDiverged
    # x_t and teacher targets made for this many steps at once (one teacher forward, one residency swap); K > 1
    # trains on x_t and targets up to K-1 updates old. 1: made every step.
    teacher_batch: int = 1
    # (C, H, W): Z-Image latent of a 512 px image; (C, T, H, W) for a model whose latents have a time axis
    latent_shape: tuple[int, ...] = (16, 64, 64)

    def __post_init__(self) -> None:
        self.latent_shape = tuple(int(v) for v in self.latent_shape)
        if self.sigmas is not None:
            self.sigmas = tuple(float(s) for s in self.sigmas)
        self.validate()

    def schedule(self) -> torch.Tensor:
        """The student's sigmas (float32, steps + 1 values ending at 0): the ones given, or the flow schedule."""
        if self.sigmas is not None:
            return torch.tensor(self.sigmas, dtype=torch.float32)
        return flow_sigmas(self.student_steps, self.shift)

    def validate(self) -> None:
        """Refuse settings the loss cannot honour, with the reason."""
        def need(ok: bool, msg: str) -> None:
            if not ok:
                raise ValueError(f"SDAConfig: {msg}")

        need(self.steps >= 0, f"steps must be >= 0, got {self.steps}")
        need(self.lr > 0, f"lr must be > 0, got {self.lr}")
        need(self.lambda_div >= 0, f"lambda_div must be >= 0, got {self.lambda_div}")
        need(self.huber_delta > 0, f"huber_delta must be > 0, got {self.huber_delta}")
        need(self.student_steps >= 1, f"student_steps must be >= 1, got {self.student_steps}")
        need(0 <= self.div_skip <= self.student_steps, f"div_skip must lie in 0..{self.student_steps}, got {self.div_skip}")
        need(self.factor >= 1, f"factor must be >= 1, got {self.factor}")
        need(self.rank is None or self.rank >= 1, f"rank must be None (full w2) or >= 1, got {self.rank}")
        need(self.batch >= 1, f"batch must be >= 1, got {self.batch}")
        need(self.max_bad_steps >= 1, f"max_bad_steps must be >= 1, got {self.max_bad_steps}")
        need(self.teacher_batch >= 1, f"teacher_batch must be >= 1, got {self.teacher_batch}")
        need(self.checkpoint_every >= 0, f"checkpoint_every must be >= 0, got {self.checkpoint_every}")
        need(self.teacher_cfg > 0, f"teacher_cfg must be > 0, got {self.teacher_cfg}")
        need(len(self.latent_shape) >= 3, f"latent_shape is (C, H, W) or (C, T, H, W), got {self.latent_shape}")
        need(self.sigmas is not None or self.shift is not None, "a schedule needs sigmas or a flow shift")
        if self.sigmas is not None:
            s = self.sigmas
            need(len(s) == self.student_steps + 1,
                 f"sigmas must hold student_steps + 1 = {self.student_steps + 1} values, got {len(s)}")
            need(all(math.isfinite(v) and v >= 0 for v in s) and all(a > b for a, b in zip(s, s[1:])),
                 f"sigmas must be finite, >= 0 and strictly decreasing, got {list(s)}")
        need(self.noise_scale is None or (math.isfinite(self.noise_scale) and self.noise_scale > 0),
             f"noise_scale must be a finite number > 0, got {self.noise_scale}")
        h, w = self.latent_shape[-2:]
        need(
            self.pool_kernel >= 1 and h >= self.pool_kernel and w >= self.pool_kernel,
            f"pool_kernel {self.pool_kernel} needs a latent of at least that size, got {h}x{w}",
        )

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["latent_shape"] = list(self.latent_shape)
        if self.sigmas is not None:
            d["sigmas"] = list(self.sigmas)
        return d



@dataclass
class SDAModels:
    """The models of one run as plain callables; sda_core never sees a ComfyUI object.

    student: the MODEL being trained (LoKr on, assistant on). teacher: no-grad reference.
    assistant: factory of a context manager that switches the assistant adapter OFF inside and back
    ON on exit (also on exception); None when no assistant is loaded.
    conds: positive conds, one picked per prompt row each step; negative: teacher cfg > 1 only.
    batch_conds: list of per-row conds -> one cond for a batched forward (default: concat on dim 0).
    device: where the noise goes (it is always drawn on the CPU, as ComfyUI does, for reproducibility).
    parameterization: what the student predicts, for the anchor (see `Parameterization`).
    """

    student: Denoiser
    teacher: Denoiser
    lokr: LoKrSet
    conds: list
    assistant: Callable[[], ContextManager] | None = None
    negative: Any = None
    batch_conds: Callable[[list], Any] | None = None
    device: torch.device | str = "cpu"
    parameterization: Parameterization | None = None  # None: a flow model's velocity (c_skip 1, c_out σ)

    def validate(self, config: SDAConfig) -> None:
        if not self.conds:
            raise ValueError("SDAModels: at least one positive cond is needed")
        if len(self.lokr) == 0:
            raise ValueError("SDAModels: the LoKr set is empty; nothing would train")
        if config.teacher_cfg != 1.0 and self.negative is None:
            raise ValueError(f"SDAModels: teacher_cfg {config.teacher_cfg} needs a negative cond")
