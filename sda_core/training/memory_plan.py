"""The peak device memory of an SDA training run, estimated before anything is loaded.

A step of `loop.train_step` runs, one after the other, with the LoKr state always on the device:
  rollout / baseline   the student, no grad, 2·B rows (z1 and z2) then B rows
  teacher              the teacher, no grad, 2·B·cfg·K rows (z1 and z2, cfg's negative, K = teacher_batch)
  grad forward         the student with grad, 2·B rows (B with an assistant adapter: anchor and diversity
                       forwards then run apart), then its backward
so the peak is the largest phase, each phase with the weights resident while it runs:

    peak = lokr_state + max(student_resident + nograd(2·B),
                            teacher_resident + nograd(teacher rows),
                            student_resident + grad(grad rows))

    lokr_state  = 20 bytes per LoKr parameter: the fp32 factors, their gradients, AdamW's two moments
                  and the loop's copy of the last good step (4 each)
    resident    student and teacher weights in their own dtypes: both (a separate teacher beside the
                student), one of them (a separate teacher swapped in for its forwards: the student is
                off the device while the teacher runs, and back for its own phases), or the student's
                plus the teacher's own patches (a teacher that shares the student's weights)
    nograd(n)   (2·n·L·W + n·H·L·min(L, 1024) [when attention materialises its scores])·4 + c · the largest
                adapted weight: the working set of one block
    grad(n)     without checkpointing: every trained block keeps its activations and LoKr products,
                    blocks·n·L·((13.5 + 12.1)·D + 4·F + H·L·[scores])·4  + c · adapted elements
                with checkpointing: every block keeps its input (n·L·D·4) and one block at a time is
                recomputed with its activations, LoKr products and c · its adapted elements;
                either way plus a backward working set of n·L·W·4 and c · the largest adapted weight.

The training clone computes in fp32 with each LoKr beside its frozen layer (sda_core.training.bypass), so
its activations are fp32 whatever the weights' dtype; weights stored in another dtype are cast to fp32 as
each layer runs and the linear layer keeps that copy for its input gradient: c = 4 bytes per adapted
element (0 for fp32 weights, used as they are). n rows of L tokens (image patches plus text tokens through
the main blocks), block width D, feed-forward width F, W = max(F, 3·D) (the widest activation), H heads.
13.5 width-D elements per token (beside 4 F-wide ones) is what a Z-Image block keeps for its backward and
12.1 what its seven LoKr products keep, both counted with torch's saved-tensor hooks on ComfyUI's block.
A separate teacher's no-grad forward runs in its own dtype (its activation bytes scaled accordingly).
The constants were checked against measured peaks on the CPU (tests/integration/test_memory_plan.py;
docs/memory_plan.md has the formula and the numbers).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Sequence

from .lokr import lokr_shapes

__all__ = ["ActivationProfile", "RunFacts", "MemoryPlan", "Option", "RunDoesNotFit", "estimate", "options_that_fit",
           "check_fits", "lokr_param_count", "zimage_profile", "gib"]

LOKR_STATE_BYTES = 20  # per LoKr parameter: fp32 factor, gradient, AdamW's two moments, last-good copy
BACKWARD_WIDE = 1  # activations of the widest width live at once in a block's backward
SCORE_CHUNK = 1024  # query rows per chunk of ComfyUI's split attention (no-grad: one chunk lives at a time)
TEACHER_MODES = ("resident", "swapped", "shared")


def gib(n: float) -> str:
    """Bytes for a person: GiB with two decimals, MiB below one GiB."""
    return f"{n / 2**30:.2f} GiB" if n >= 2**30 else f"{n / 2**20:.1f} MiB"


@dataclass(frozen=True)
class ActivationProfile:
    """What one transformer block keeps per token and row, from the model's shape (see `zimage_profile`).

    saved_per_token: bytes a grad forward keeps per row and token in one block (attention scores aside).
    input_per_token: bytes per row and token a checkpointed block keeps (its input).
    wide_per_token: bytes per row and token of the block's widest activation.
    scores_per_token_pair: bytes per row, head and (query, key) pair when attention materialises its scores
        (ComfyUI's split / sub-quadratic attention: the CPU), 0 with fused attention (SDPA, xformers, flash).
    heads: attention heads.
    adapted_copy_bytes: bytes per adapted weight element a grad forward keeps beside the weight itself.
    teacher_scale: a separate teacher's activation bytes per element over the student's (it runs in its own
        dtype, the training clone in fp32).
    """

    saved_per_token: float
    input_per_token: float
    wide_per_token: float
    scores_per_token_pair: float
    heads: int
    adapted_copy_bytes: float
    teacher_scale: float = 1.0


BLOCK_SAVED = 13.5  # width-D fp32 elements a Z-Image block keeps per token for its backward, beside 4 F-wide ones
LOKR_SAVED = 12.1  # width-D fp32 elements the LoKr products of one block keep per token (sda_core.training.bypass)


def zimage_profile(dim: int, ffn_dim: int, heads: int, weight_bytes: int, attention_scores: bool,
                   teacher_compute_bytes: int = 4) -> ActivationProfile:
    """The activation profile of ComfyUI's Z-Image (NextDiT) block of width `dim`, feed-forward `ffn_dim`, as
    the training clone runs it: in fp32 with each LoKr beside its frozen layer (sda_core.training.bypass).

    weight_bytes: bytes per element of the stored weights. Weights stored in another dtype are cast to fp32 as
    each layer runs, and the linear layer keeps that fp32 copy for its input gradient (4 bytes per adapted
    element); fp32 weights are used as they are. teacher_compute_bytes: what a separate teacher computes in.
    """
    e = 4
    return ActivationProfile(
        saved_per_token=((BLOCK_SAVED + LOKR_SAVED) * dim + 4 * ffn_dim) * e,
        input_per_token=dim * e,
        wide_per_token=max(ffn_dim, 3 * dim) * e,
        scores_per_token_pair=e if attention_scores else 0.0,
        heads=heads,
        adapted_copy_bytes=0 if weight_bytes == e else e,
        teacher_scale=teacher_compute_bytes / e,
    )


def lokr_param_count(shapes: Sequence[tuple[int, int]], factor: int, rank: int | None) -> int:
    """Trainable parameters of one LoKr per (out, in) weight, as `lokr.TrainableLoKr` builds them."""
    total = 0
    for out_dim, in_dim in shapes:
        (a, b), (c, d) = lokr_shapes(out_dim, in_dim, factor)
        total += a * b + (c * d if rank is None else rank * (c + d))
    return total


@dataclass(frozen=True)
class RunFacts:
    """The numbers a run's memory depends on, all known before loading.

    student_bytes / teacher_bytes: their weights in their own dtypes; teacher_params: its parameter count
        (for an fp8 teacher's size). teacher: "resident" (a separate teacher beside the student),
        "swapped" (loaded for its forwards only), "shared" (runs on the student's weights plus its own
        patches of teacher_extra_bytes).
    lokr_params: trainable LoKr parameters. adapted_elements: elements of the weights the LoKr wraps (a
        fused qkv counted once); largest_adapted: elements of the largest one; block_adapted: adapted
        elements of one block.
    image_tokens / text_tokens: tokens of one row (padded as the model pads them). trained_blocks: how many
        trained blocks see (image and text, image only, text only) tokens: Z-Image's main layers, noise
        refiner and context refiner.
    batch: prompts per step (B); teacher_cfg: the teacher runs cfg (its negative doubles its rows);
        teacher_batch: K steps' teacher forwards run as one; grad_rows: rows of the grad forward (2·B, or B
        with an assistant adapter). latent_elements: elements of one row's latent.
    """

    student_bytes: int
    teacher_bytes: int
    teacher_params: int
    teacher: str
    teacher_extra_bytes: int
    lokr_params: int
    adapted_elements: int
    largest_adapted: int
    block_adapted: int
    image_tokens: int
    text_tokens: int
    trained_blocks: tuple[int, int, int]
    profile: ActivationProfile
    batch: int
    teacher_cfg: bool
    teacher_batch: int
    grad_rows: int
    gradient_checkpointing: bool
    latent_elements: int

    def __post_init__(self) -> None:
        if self.teacher not in TEACHER_MODES:
            raise ValueError(f"RunFacts: teacher must be one of {TEACHER_MODES}, got {self.teacher!r}")

    @property
    def teacher_rows(self) -> int:
        """Rows of one teacher forward: z1 and z2 of each prompt, twice with cfg, for K steps."""
        return 2 * self.batch * (2 if self.teacher_cfg else 1) * self.teacher_batch

    @property
    def tokens(self) -> int:
        """Tokens through the main blocks: the longest sequence of a forward."""
        return self.image_tokens + self.text_tokens

    @property
    def blocks(self) -> list[tuple[int, int]]:
        """(count, tokens) of the trained blocks."""
        tokens = (self.tokens, self.image_tokens, self.text_tokens)
        return [(n, t) for n, t in zip(self.trained_blocks, tokens) if n]


@dataclass(frozen=True)
class MemoryPlan:
    """The estimate, by part (bytes). `peak` is what the device must hold at the run's worst moment."""

    facts: RunFacts
    student_weights: int
    teacher_weights: int
    lokr_state: int
    rollout: int  # the no-grad student phase above its resident weights
    teacher_forward: int  # the teacher phase above its resident weights
    grad: int  # the grad forward and backward above the resident weights
    phases: dict  # phase -> bytes of the whole device at that phase
    peak: int

    @property
    def peak_phase(self) -> str:
        return max(self.phases, key=self.phases.get)

    def lines(self, budget: int | None = None, device: str = "") -> list[str]:
        """The plan as the node's report prints it."""
        f = self.facts
        where = f" on {device}" if device else ""
        of = f" of {gib(budget)} available" if budget is not None else ""
        teacher = {"resident": f"teacher {gib(self.teacher_weights)} beside it",
                   "swapped": f"teacher {gib(self.teacher_weights)} loaded only for its forwards",
                   "shared": f"teacher shares the student's weights (+{gib(f.teacher_extra_bytes)} of its patches)"}
        ckpt = "on" if f.gradient_checkpointing else "off"
        return [
            f"memory plan: peak {gib(self.peak)}{where}{of}, at the {self.peak_phase}",
            f"  weights: student {gib(self.student_weights)}, {teacher[f.teacher]}",
            f"  LoKr: {f.lokr_params:,} parameters, {gib(self.lokr_state)} with gradients, AdamW state and a copy",
            f"  activations: grad forward of {f.grad_rows} rows x {f.tokens} tokens through "
            f"{sum(f.trained_blocks)} blocks {gib(self.grad)} (checkpointing {ckpt}); "
            f"rollout {gib(self.rollout)}; teacher forward of {f.teacher_rows} rows {gib(self.teacher_forward)}",
        ]


def _nograd(f: RunFacts, rows: int, scale: float = 1.0) -> float:
    p = f.profile
    scores = rows * p.heads * f.tokens * min(f.tokens, SCORE_CHUNK) * p.scores_per_token_pair
    cast = f.largest_adapted * p.adapted_copy_bytes
    return (rows * f.tokens * p.wide_per_token * 2 + scores) * scale + cast + rows * f.latent_elements * 4 * 4


def _block_saved(f: RunFacts, rows: int, tokens: int) -> float:
    p = f.profile
    return rows * tokens * (p.saved_per_token + p.heads * tokens * p.scores_per_token_pair)


def _grad(f: RunFacts, rows: int) -> float:
    p = f.profile
    if f.gradient_checkpointing:
        kept = sum(n * rows * tokens * p.input_per_token for n, tokens in f.blocks)
        kept += max(_block_saved(f, rows, tokens) for _, tokens in f.blocks) + f.block_adapted * p.adapted_copy_bytes
    else:
        kept = sum(n * _block_saved(f, rows, tokens) for n, tokens in f.blocks)
        kept += f.adapted_elements * p.adapted_copy_bytes
    backward = BACKWARD_WIDE * rows * f.tokens * p.wide_per_token + f.largest_adapted * p.adapted_copy_bytes
    return kept + backward + rows * f.latent_elements * 4 * 8


def estimate(f: RunFacts) -> MemoryPlan:
    """The run's peak device memory and its parts (the module docstring has the formula)."""
    student, teacher = f.student_bytes, f.teacher_bytes
    lokr = LOKR_STATE_BYTES * f.lokr_params
    if f.teacher == "resident":
        s_res = t_res = student + teacher
    elif f.teacher == "swapped":
        s_res, t_res = student, teacher
    else:
        s_res = t_res = student + f.teacher_extra_bytes
    teacher_scale = 1.0 if f.teacher == "shared" else f.profile.teacher_scale  # a shared teacher runs on the clone
    rollout, teach, grad = _nograd(f, 2 * f.batch), _nograd(f, f.teacher_rows, teacher_scale), _grad(f, f.grad_rows)
    phases = {"rollout": lokr + s_res + rollout, "teacher forward": lokr + t_res + teach,
              "grad forward and backward": lokr + s_res + grad}
    return MemoryPlan(f, student, teacher if f.teacher != "shared" else 0, lokr, int(rollout), int(teach), int(grad),
                      {k: int(v) for k, v in phases.items()}, int(max(phases.values())))


@dataclass(frozen=True)
class Option:
    """A change to the run and its estimated peak."""

    what: str
    peak: int


def options_that_fit(f: RunFacts, budget: int, sizes: Sequence[tuple[str, int, int]] = ()) -> list[Option]:
    """Changes that bring the estimate under `budget`, each with its peak, smallest peak first.

    sizes: smaller training sizes to try, largest first, as (label, image_tokens, latent_elements); the
    largest that fits is offered. When no single change fits, checkpointing, the best teacher change and
    teacher_batch 1 are tried together.
    """
    general: list[tuple[str, dict]] = []
    if not f.gradient_checkpointing:
        general.append(("gradient_checkpointing on", {"gradient_checkpointing": True}))
    if f.teacher_batch > 1:
        general.append(("teacher_batch 1", {"teacher_batch": 1}))
    teacher: list[tuple[str, dict]] = []
    if f.teacher != "shared" and f.teacher_bytes > f.teacher_params:
        teacher.append(("the teacher in fp8 (weight_dtype fp8_e4m3fn on its loader)", {"teacher_bytes": f.teacher_params}))
    if f.teacher != "shared":
        teacher.append(("a teacher that shares the student's weights (the student's MODEL through a LoRA loader with "
                        "a de-distill adapter, plus the adapter's own size)", {"teacher": "shared", "teacher_extra_bytes": 0}))
    if f.teacher == "resident":
        teacher.append(("the teacher loaded only for its forwards (teacher_batch 4: one swap per 4 steps)",
                        {"teacher": "swapped"}))

    def peak(change: dict) -> int:
        return estimate(dataclasses.replace(f, **change)).peak

    fits = [Option(what, p) for what, change in general + teacher if (p := peak(change)) <= budget]
    for label, image_tokens, latent_elements in sizes:
        if (p := peak({"image_tokens": image_tokens, "latent_elements": latent_elements})) <= budget:
            fits.append(Option(f"a smaller size, {label}", p))
            break
    if not fits and len(general + teacher) > 1:
        chosen = general + sorted(teacher, key=lambda c: peak(c[1]))[:1]
        together = {k: v for _, change in chosen for k, v in change.items()}
        if (p := peak(together)) <= budget:
            fits.append(Option("together: " + " + ".join(what for what, _ in chosen), p))
    return sorted(fits, key=lambda o: o.peak)


class RunDoesNotFit(MemoryError):
    """The estimate exceeds the device; the message lists what would fit."""


def check_fits(plan: MemoryPlan, budget: int, device: str, sizes: Sequence[tuple[str, int, int]] = ()) -> None:
    """Refuse a run whose estimated peak exceeds `budget` bytes, naming the options that would fit."""
    if plan.peak <= budget:
        return
    options = options_that_fit(plan.facts, budget, sizes)
    listed = " ".join(f"({i}) {o.what}: {gib(o.peak)}." for i, o in enumerate(options, 1)) if options else (
        "none of gradient checkpointing, an fp8 or shared teacher, teacher_batch, a smaller size, alone or "
        "together; free the device or use one with more memory.")
    raise RunDoesNotFit(
        f"SDA Train LoKr: this run needs about {gib(plan.peak)} on {device} (at the {plan.peak_phase}) but "
        f"{gib(budget)} is available, so it would run out of memory. Options that fit: {listed} "
        "The plan: " + " | ".join(line.strip() for line in plan.lines()))
