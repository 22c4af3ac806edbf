"""SDA Train LoKr: train an SDA LoKr on the loaded student and teacher MODELs, inside ComfyUI.

Glue only. ComfyUI objects become what sda_core.training takes: denoiser callables over `apply_model` with the
conds ComfyUI's sampler would make (the MODEL's wrappers included; cond hooks, ControlNets and
model_function_wrapper are not applied while training), a LoKrSet riding on a clone of the student as weight
wrappers, the assistant adapter as a switchable weight wrapper. `sda_core.training.train` runs the SDA loss and
loop. The results go back as ComfyUI objects: the saved file loaded onto the student as patches (exactly what
a user gets loading it), the loss curves as an IMAGE.

Files. The LoKr: `<save_name>.safetensors` in the first `loras` folder, never overwritten (a suffix is
added). The checkpoint of a save_name: `sda_checkpoints/<save_name>.ckpt.safetensors` in ComfyUI's output
folder (not under loras, where it would show up in every LoRA list); with evals on, the best LoKr's factors
so far sit beside it (`<save_name>.best.safetensors`) so a resumed run keeps its best.
"""
from __future__ import annotations

import contextlib
import copy
import dataclasses
import hashlib
import math
import os
import re
import sys
import time
from typing import Any, Callable, Iterator

import torch
from safetensors import safe_open

import comfy.model_base
import comfy.model_management as mm
import comfy.patcher_extension
import comfy.sampler_helpers
import comfy.samplers
import comfy.utils
import folder_paths
from comfy_api.latest import io

from ..sda_core.adapters import LoadedAdapter, Target, module_targets
from ..sda_core.diversity.scores import score_batch
from ..sda_core.schedule import ScheduledWeight
from ..sda_core.training import (Checkpoint, LoKrSet, SDAConfig, SDAModels, SlicedLoKr, TrainingDiverged,
                                 TrainResult, flow_sigmas, load_checkpoint, save_lokr, train, training_metadata)
from ..sda_core.training.batching import Unbatchable
from ..sda_core.training.files import atomic_save_safetensors
from ..sda_core.training.grad_checkpoint import Switches, checkpoint_blocks
from ..sda_core.training.lokr_file import resolve_inside
from ..sda_core.training.plot import draw_loss_curves, summarize
from ..sda_core.training.rope import with_rotation_backward
from . import host, sampling

CATEGORY = "SDA"
NONE = "None"
CHECKPOINT_FOLDER = "sda_checkpoints"
REPORT_WINDOW = 20  # steps averaged for the report's first/last loss
EVAL_SAMPLER = ("euler", "simple")  # the schedule the loss trains on (simple scheduler, the student's shift)
# diffusers-style Z-Image module names the LoKr trains (ComfyUI maps to_q/k/v onto rows of attention.qkv)
LOKR_TARGET = re.compile(
    r"^(?P<block>layers|noise_refiner|context_refiner)\.\d+\.(attention\.(to_q|to_k|to_v|to_out\.0)|feed_forward\.w[123])$")


# --- checks on the inputs ------------------------------------------------------------------------------

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


def require_same_family(student, teacher) -> None:
    """The teacher must read the student's latents and conditioning (e.g. Z-Image base for Z-Image-Turbo)."""
    s, t = _architecture(student), _architecture(teacher)
    diff = [f"{k} {s[k]} (student) vs {t[k]} (teacher)" for k in s if s[k] != t[k]]
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
            resolve_inside(loras_root, name + ".safetensors")
            checkpoint = resolve_inside(ckpt_root, name + ".ckpt.safetensors")
            best = resolve_inside(ckpt_root, name + ".best.safetensors")
        except ValueError as exc:
            raise ValueError(f"save_name: {exc}") from None
        return cls(name, loras_root, checkpoint, best)


# --- prompts and conds ---------------------------------------------------------------------------------

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


# --- the models on the device ---------------------------------------------------------------------------

def _alias(t: torch.Tensor) -> torch.Tensor:
    """A tensor on t's storage made in the current (inference or normal) mode: no copy."""
    return torch.empty(0, dtype=t.dtype, device=t.device).set_(t.untyped_storage(), t.storage_offset(), t.size(),
                                                               t.stride())


class TrainableWeights:
    """The student's weights as frozen normal tensors while it trains, given back as they were on exit.

    The executor loads models under torch.inference_mode(), and autograd cannot save inference tensors for
    backward; trainable-looking base weights would also collect gradients. Each such weight is swapped for
    a frozen alias of the same storage (no copy), and swapped back in `restore`.
    """

    def __init__(self, module: torch.nn.Module) -> None:
        self.module = module
        self.swapped: dict[tuple[int, str, str], tuple] = {}

    def refresh(self) -> None:
        """Alias whatever ComfyUI (re)loaded since the last call."""
        for mod in self.module.modules():
            for kind, table in (("param", mod._parameters), ("buffer", mod._buffers)):
                for name, t in list(table.items()):
                    if t is None or type(t.data) is not torch.Tensor or not (t.is_inference() or t.requires_grad):
                        continue
                    alias = torch.nn.Parameter(_alias(t.data), requires_grad=False) if kind == "param" else _alias(t)
                    key = (id(mod), kind, name)
                    was = self.swapped[key][4:] if key in self.swapped else (t.is_inference(), t.requires_grad)
                    table[name] = alias
                    self.swapped[key] = (mod, kind, name, alias, *was)

    def restore(self) -> None:
        for mod, kind, name, alias, was_inference, requires_grad in self.swapped.values():
            table = mod._parameters if kind == "param" else mod._buffers
            if table.get(name) is not alias:
                continue  # ComfyUI replaced it meanwhile (patched or moved): leave ComfyUI's
            with torch.inference_mode(was_inference):
                data = _alias(alias.data)
                table[name] = torch.nn.Parameter(data, requires_grad=requires_grad) if kind == "param" else data
        self.swapped.clear()


class Residency:
    """Student and teacher on the torch device through comfy.model_management only.

    Both stay loaded when they fit. When memory is short, or when they are clones of one model (e.g. the
    teacher is the student plus a de-distill LoRA: ComfyUI holds one set of weights for both), the teacher is
    loaded for its forwards only and freed before the student's next forward.
    """

    def __init__(self, student, teacher, weights: TrainableWeights) -> None:
        self.student, self.teacher, self.weights = student, teacher, weights
        self.shared = student.is_clone(teacher)
        self.swap = self.shared or not self._both_fit()

    def _both_fit(self) -> bool:
        device = self.student.load_device
        if mm.is_device_cpu(device):
            return True
        loaded = self.student.loaded_size() + self.teacher.loaded_size()
        needed = self.student.model_size() + self.teacher.model_size() + mm.minimum_inference_memory()
        return needed <= mm.get_free_memory(device) + loaded

    def describe(self) -> str:
        if not self.swap:
            return "student and teacher both loaded"
        why = "they share one model's weights" if self.shared else "memory is short for both"
        return f"teacher loaded only for its forwards ({why})"

    def start(self) -> None:
        mm.load_models_gpu([self.student] if self.swap else [self.student, self.teacher])
        self.weights.refresh()

    def ready(self, model) -> None:
        """Called before every forward of `model`."""
        if model is self.student and self.swap:
            self.release(self.teacher)
        if not self._loaded(model):
            mm.load_models_gpu([model])
            if model is self.student:
                self.weights.refresh()

    @staticmethod
    def _loaded(model) -> bool:
        return any(m is model for m in mm.loaded_models())

    def release(self, model) -> None:
        """Unload `model` (weights unpatched, memory given back), keeping every other loaded model."""
        if self._loaded(model):
            keep = [lm for lm in mm.current_loaded_models if lm.model is not model]
            mm.free_memory(1e30, model.load_device, keep_loaded=keep)


def transformer_options(model, sample_sigmas: torch.Tensor) -> dict:
    """What the sampler would pass: the model's transformer options with its wrappers, on the student's schedule."""
    options = comfy.patcher_extension.merge_nested_dicts({}, model.model_options.get("transformer_options", {}))
    for kind in ("wrappers", "callbacks"):
        options[kind] = comfy.patcher_extension.merge_nested_dicts(options.get(kind, {}), getattr(model, kind, {}))
    options["sample_sigmas"] = sample_sigmas
    return options


def make_denoiser(model, residency: Residency, sample_sigmas: torch.Tensor) -> Callable:
    """denoise(x_t, sigma[B], cond) -> x0 through model.model.apply_model, the model made ready first."""
    def denoise(x: torch.Tensor, sigma: torch.Tensor, cond) -> torch.Tensor:
        residency.ready(model)
        kwargs = cond if isinstance(cond, BatchedConds) else batch_model_conds([cond])
        return model.model.apply_model(x, sigma, transformer_options=transformer_options(model, sample_sigmas), **kwargs)

    return denoise


def attach_lokr(model, targets: dict[str, Target], config: SDAConfig, device) -> LoKrSet:
    """One trainable LoKr per target on `model` (a clone) as weight wrappers; q/k/v as slices of the fused qkv."""
    shapes = {name: (t.shape[0], math.prod(t.shape[1:])) for name, t in targets.items()}
    lokr = LoKrSet.build(shapes, factor=config.factor, rank=config.rank, seed=config.seed).to(device)
    by_param: dict[str, list] = {}
    for name, target in sorted(targets.items()):
        by_param.setdefault(target.param, []).append((target.rows, lokr[name]))
    for param, parts in by_param.items():
        wrapper = parts[0][1] if parts[0][0] is None else SlicedLoKr([(rows[0], m) for rows, m in parts])
        model.add_weight_wrapper(host.MODEL_PREFIX + param, wrapper)
    return lokr


class AssistantSwitch:
    """The assistant adapter's strength on its weight wrappers: 1 (on) or 0 (off: the weights without it)."""

    def __init__(self) -> None:
        self.value = 1.0

    @contextlib.contextmanager
    def off(self) -> Iterator[None]:
        before = self.value
        self.value = 0.0
        try:
            yield
        finally:
            self.value = before


def attach_assistant(model, loaded: LoadedAdapter) -> AssistantSwitch:
    switch = AssistantSwitch()
    regions: dict[str, list] = {}
    for target, module in loaded.placements:
        regions.setdefault(host.MODEL_PREFIX + target.param, []).append((target.rows, module))
    for key, key_regions in regions.items():
        model.add_weight_wrapper(key, ScheduledWeight(key_regions, switch))
    return switch


@contextlib.contextmanager
def differentiable_rope(model) -> Iterator[None]:
    """The model code's RoPE made differentiable while training, put back on exit.

    ComfyUI 0.8 computes RoPE with comfy-kitchen's fused op, which has no backward; the model's module
    global `apply_rope` is swapped for the same op with a rotation backward (sda_core.training.rope).
    """
    module = sys.modules.get(type(model.model.diffusion_model).__module__)
    original = getattr(module, "apply_rope", None)
    if original is None or hasattr(original, "wrapped"):
        yield
        return
    module.apply_rope = with_rotation_backward(original)
    try:
        yield
    finally:
        module.apply_rope = original


def transformer_blocks(model) -> list[torch.nn.Module]:
    diffusion_model = model.model.diffusion_model
    return [block for child in diffusion_model.children() if isinstance(child, torch.nn.ModuleList) for block in child]


@dataclasses.dataclass
class Session:
    """Everything one training call sets up on ComfyUI's objects; `close` undoes it."""

    clone: Any
    lokr: LoKrSet
    switch: AssistantSwitch | None
    weights: TrainableWeights
    residency: Residency
    models: SDAModels
    gradient_checkpointing: bool
    undo: contextlib.ExitStack

    @classmethod
    def open(cls, student, teacher, config: SDAConfig, targets, positive: list, negative: list | None,
             assistant: LoadedAdapter | None, gradient_checkpointing: bool) -> "Session":
        device = mm.get_torch_device()
        clone = student.clone()
        lokr = attach_lokr(clone, targets, config, device)
        switch = attach_assistant(clone, assistant) if assistant is not None else None
        weights = TrainableWeights(clone.model)
        residency = Residency(clone, teacher, weights)
        sigmas = flow_sigmas(config.student_steps, config.shift).to(device)
        latent = torch.zeros((1, *config.latent_shape), device=device)
        conds = [c for cond in positive for c in model_conds(clone, cond, latent, "positive")]
        models = SDAModels(
            student=make_denoiser(clone, residency, sigmas), teacher=make_denoiser(teacher, residency, sigmas),
            lokr=lokr, conds=conds, assistant=switch.off if switch else None,
            negative=model_conds(clone, negative, latent, "negative")[0] if negative else None,
            batch_conds=batch_model_conds, device=device)
        return cls(clone, lokr, switch, weights, residency, models, gradient_checkpointing, contextlib.ExitStack())

    def start(self) -> None:
        """Load the models, make RoPE differentiable and, if asked, checkpoint the student's blocks."""
        self.residency.start()
        self.undo.enter_context(differentiable_rope(self.clone))
        if self.gradient_checkpointing:
            flags = [(m, "enabled") for _, m in self.lokr.items()] + ([(self.switch, "value")] if self.switch else [])
            self.undo.enter_context(checkpoint_blocks(transformer_blocks(self.clone), Switches(flags)))

    def close(self) -> None:
        """Checkpointing and RoPE undone, the training clone unloaded (its wrappers leave with it), weights restored."""
        try:
            self.undo.close()
            self.residency.release(self.clone)
        finally:
            self.weights.restore()


# --- progress, evals, files -----------------------------------------------------------------------------

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

    def __init__(self, session: Session, plan: EvalPlan, steps: int, best_path: str) -> None:
        self.session, self.plan, self.steps, self.best_path = session, plan, steps, best_path
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
                    steps=self.steps, cfg=1.0, sampler_name=EVAL_SAMPLER[0], scheduler=EVAL_SAMPLER[1],
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
                  details: dict) -> tuple[str, str]:
    """(absolute path, name relative to the loras folder) of a newly written LoKr file (never overwriting)."""
    meta = training_metadata(config, steps_done, details["student"], **details)
    path = save_lokr(name, lokr, meta, root=files.loras_root)
    return path, os.path.relpath(path, files.loras_root)


# --- the node ---------------------------------------------------------------------------------------------

@dataclasses.dataclass
class Outcome:
    """What one training call produced: for the node's outputs and its report."""

    result: TrainResult
    lokr_path: str
    lokr_name: str
    best: tuple[str, dict] | None
    evals: list[dict]
    notes: list[str]
    residency: str
    lokr_modules: int
    lokr_params: int
    gradient_checkpointing: bool


def run_training(student, teacher, config: SDAConfig, files: RunFiles, *, targets, positive, negative, assistant,
                 gradient_checkpointing: bool, resume: bool, details: dict, eval_plan: EvalPlan | None,
                 node_id: str | None) -> Outcome:
    """Set up, train (resuming if asked), save; ComfyUI's objects are restored whatever happens."""
    notes: list[str] = []
    with torch.inference_mode(False), torch.enable_grad():  # tensors made here (checkpoint state too) can train
        checkpoint = _resume_checkpoint(files, config, details, notes) if resume else _fresh_start(files, notes)
        session = Session.open(student, teacher, config, targets, positive, negative, assistant, gradient_checkpointing)
        try:
            if checkpoint is not None:
                _restore_lokr(checkpoint, session.lokr, files)
            session.start()
            evaluator = _start_evaluator(session, eval_plan, config, files, checkpoint, notes)
            result = _train(session, config, files, checkpoint, evaluator, details, node_id)
            return _save(session, config, files, result, evaluator, details, notes)
        finally:
            session.close()


def _fresh_start(files: RunFiles, notes: list[str]) -> None:
    if os.path.isfile(files.checkpoint):
        notes.append(f"a new run (resume off): the earlier checkpoint of {files.save_name!r} is replaced")
    return None


def _start_evaluator(session: Session, plan: EvalPlan | None, config: SDAConfig, files: RunFiles,
                     checkpoint: Checkpoint | None, notes: list[str]) -> Evaluator | None:
    """The eval, with its history and best LoKr carried over from a resumed run; a first eval where there is none
    (at step 0 the frozen student: the baseline)."""
    if plan is None:
        return None
    evaluator = Evaluator(session, plan, config.student_steps, files.best_factors)
    if checkpoint is not None:
        notes += filter(None, [evaluator.restore(checkpoint.extra)])
    if not evaluator.history:
        evaluator(checkpoint.step if checkpoint is not None else 0)
    return evaluator


def _train(session: Session, config: SDAConfig, files: RunFiles, checkpoint: Checkpoint | None,
           evaluator: Evaluator | None, details: dict, node_id: str | None) -> TrainResult:
    """sda_core's loop with ComfyUI's progress bar, interrupt and the eval hooked in."""
    progress = Progress(config.steps, node_id)
    progress.update(checkpoint.step if checkpoint else 0)

    def on_step(step: int, entry: dict) -> None:
        progress.update(step, entry)
        if evaluator is not None and step % evaluator.plan.every == 0:
            evaluator(step)

    def should_stop() -> bool:
        return progress.interrupted or (evaluator is not None and evaluator.interrupted) or mm.processing_interrupted()

    def extra() -> dict:
        return {**details, **(evaluator.state() if evaluator else {})}

    os.makedirs(os.path.dirname(files.checkpoint), exist_ok=True)
    try:
        return train(session.models, config, on_step=on_step, should_stop=should_stop, resume=checkpoint,
                     checkpoint_path=files.checkpoint, checkpoint_extra=extra)
    except TrainingDiverged as exc:
        path, _ = save_run_lokr(files, session.lokr, files.save_name + "_diverged", config, exc.last_good_step,
                                {**details, "diverged": True})
        raise RuntimeError(f"{exc} That LoKr was saved as {path}.") from None


def _save(session: Session, config: SDAConfig, files: RunFiles, result: TrainResult, evaluator: Evaluator | None,
          details: dict, notes: list[str]) -> Outcome:
    """The LoKr as trained so far (and the best by diversity) as new files in models/loras."""
    path, name = save_run_lokr(files, session.lokr, files.save_name, config, result.steps,
                               {**details, "interrupted": result.interrupted})
    best = None
    if evaluator is not None and evaluator.best is not None:
        best_path, _ = save_run_lokr(files, evaluator.best, files.save_name + "_best", config,
                                     evaluator.best_entry["step"], {**details, "eval": evaluator.best_entry})
        best = (best_path, evaluator.best_entry)
    return Outcome(result, path, name, best, evaluator.history if evaluator else [], notes,
                   session.residency.describe(), len(session.lokr), sum(p.numel() for p in session.lokr.parameters()),
                   session.gradient_checkpointing)


def _restore_lokr(checkpoint: Checkpoint, lokr: LoKrSet, files: RunFiles) -> None:
    """The checkpoint's LoKr weights, now (the first eval of a resumed run sees them); refused if they don't fit."""
    try:
        checkpoint.restore(lokr)
    except ValueError as exc:
        raise ValueError(f"resume: {exc}: the checkpoint {files.checkpoint} was trained with other LoKr settings "
                         "(lokr_factor, lokr_rank, include_refiners) or another model; turn resume off or choose "
                         "another save_name") from None


def _resume_checkpoint(files: RunFiles, config: SDAConfig, details: dict, notes: list[str]) -> Checkpoint | None:
    if not os.path.isfile(files.checkpoint):
        notes.append(f"resume: no checkpoint for save_name {files.save_name!r} ({files.checkpoint}); started at step 0")
        return None
    try:
        checkpoint = load_checkpoint(files.checkpoint)
    except ValueError as exc:
        raise ValueError(f"resume: {exc}") from None
    changed = [f"{k} {checkpoint.config.get(k)!r} -> {v!r}" for k, v in config.to_dict().items()
               if k != "steps" and checkpoint.config.get(k) != v]
    notes.append(f"resumed from step {checkpoint.step} ({files.checkpoint})")
    if changed:
        notes.append("settings changed since the checkpoint: " + "; ".join(changed))
    if checkpoint.extra.get("prompts") not in (None, details["prompts"]):
        notes.append("the prompts differ from the checkpoint's: the rest of the run trains on the new ones")
    return checkpoint


def build_report(files: RunFiles, config: SDAConfig, outcome: Outcome, prompt_note: str, negative_note: str,
                 assistant: str) -> str:
    result = outcome.result
    if result.interrupted:
        status = f"interrupted at step {result.steps} of {config.steps}; continue with resume on"
    else:
        status = f"{result.steps} of {config.steps} steps done"
    rank = "full w2" if config.rank is None else f"rank {config.rank}"
    lines = [
        f"SDA Train LoKr '{files.save_name}': {status} in {result.elapsed_s:.1f} s",
        *outcome.notes,
        f"models: {outcome.residency}; prompts: {prompt_note}; {negative_note}; assistant adapter: {assistant}",
        f"LoKr: {outcome.lokr_modules} modules, factor {config.factor}, {rank}, {outcome.lokr_params} parameters",
        f"settings: {config.student_steps}-step schedule (shift {config.shift:g}), latent {list(config.latent_shape)}, "
        f"lr {config.lr:g}, lambda_div {config.lambda_div:g}, huber_delta {config.huber_delta:g}, pool_kernel "
        f"{config.pool_kernel}, div_skip {config.div_skip}, seed {config.seed}"
        + (", gradient checkpointing" if outcome.gradient_checkpointing else ""),
    ]
    summary = summarize(result.history, window=REPORT_WINDOW)
    for key in ("total", "anchor", "diversity"):
        if key in summary:
            s = summary[key]
            if s["n"] > REPORT_WINDOW:
                lines.append(f"{key}: {s['first']:.4g} over the first {REPORT_WINDOW} steps it was computed, "
                             f"{s['last']:.4g} over the last {REPORT_WINDOW}")
            else:
                lines.append(f"{key}: {s['last']:.4g} (mean over its {s['n']} steps)")
    if result.bad_steps:
        lines.append(f"{result.bad_steps} steps skipped (non-finite loss or gradient)")
    if outcome.evals:
        lines.append("eval avg LPIPS: " + ", ".join(f"step {e['step']}: {e['avg_lpips']:.4f}" for e in outcome.evals))
    lines.append(f"saved: {outcome.lokr_path}")
    if outcome.best:
        lines.append(f"best by diversity: {outcome.best[0]} (step {outcome.best[1]['step']}, avg LPIPS "
                     f"{outcome.best[1]['avg_lpips']:.4f})")
    lines.append(f"checkpoint: {files.checkpoint}")
    return "\n".join(lines)


def _int(id: str, default: int, lo: int, hi: int, tooltip: str, optional: bool = False) -> io.Int.Input:
    return io.Int.Input(id, default=default, min=lo, max=hi, tooltip=tooltip, optional=optional)


class SDATrainLoKr(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="SDATrainLoKr",
            display_name="SDA Train LoKr",
            category=CATEGORY,
            description=("Train an SDA LoKr that restores seed diversity to a few-step student by aligning its "
                         "seed-to-seed changes with a many-step teacher's, anchored to the frozen student. "
                         "Saves to models/loras; stop it any time and continue with resume."),
            is_output_node=True,
            inputs=[
                io.Model.Input("student", tooltip="The few-step model to train (e.g. Z-Image-Turbo; LoRAs may be applied)."),
                io.Model.Input("teacher", tooltip="The many-step model whose seed-to-seed changes the student should follow."),
                io.String.Input("prompts", multiline=True, default="",
                                tooltip="One prompt per line, encoded with clip. Ignored when conditioning is connected."),
                io.Clip.Input("clip", optional=True, tooltip="Encodes prompts (and negative_prompt)."),
                io.Conditioning.Input("conditioning", optional=True,
                                      tooltip="Instead of prompts + clip: every entry of the CONDITIONING is one prompt."),
                io.String.Input("negative_prompt", multiline=True, default="", optional=True,
                                tooltip="The teacher's negative, used when teacher_cfg > 1."),
                io.Float.Input("teacher_cfg", default=1.0, min=1.0, max=30.0, step=0.1, optional=True,
                               tooltip="1: the teacher's conditional prediction; > 1: cfg with the negative."),
                io.Combo.Input("assistant_adapter", options=[NONE] + host.lora_names(), default=NONE, optional=True,
                               tooltip="A de-distill training adapter: on for the anchor, off for the diversity forward."),
                _int("width", 512, 64, 4096, "Training resolution in pixels (latent = width/8)."),
                _int("height", 512, 64, 4096, "Training resolution in pixels (latent = height/8)."),
                _int("steps", 500, 1, 1_000_000, "Total training steps (a resumed run counts the earlier ones)."),
                io.Float.Input("learning_rate", default=1e-4, min=1e-7, max=1e-1, step=1e-6, round=1e-7),
                io.Float.Input("lambda_div", default=1.0, min=0.0, max=100.0, step=0.05,
                               tooltip="Weight of the diversity (direction) term against the anchor."),
                io.Float.Input("huber_delta", default=0.08, min=1e-4, max=10.0, step=0.01,
                               tooltip="Huber delta of the anchor to the frozen student."),
                _int("pool_kernel", 8, 1, 64, "Low-pass kernel on the latent deltas: only macro-composition counts."),
                _int("div_skip", 7, 0, 100, "The diversity term is used on schedule steps 0..div_skip-1; later steps "
                     "are pure anchor."),
                _int("student_steps", 8, 1, 100, "The student's sampling steps (the schedule training follows)."),
                _int("lokr_factor", 8, 1, 64, "LoKr factor (the card: 8)."),
                _int("lokr_rank", 0, 0, 4096, "0: full-rank lokr_w2 (the card's setting); else a rank-r w2."),
                io.Boolean.Input("include_refiners", default=False,
                                 tooltip="Also train the noise/context refiner blocks."),
                io.Boolean.Input("gradient_checkpointing", default=False,
                                 tooltip="Recompute block activations in backward: less memory, slower."),
                io.Int.Input("seed", default=0, min=0, max=0xFFFFFFFFFFFFFFFF, control_after_generate=False),
                io.String.Input("save_name", default="sda_lokr",
                                tooltip="File name in models/loras (a suffix is added if it exists)."),
                _int("checkpoint_every", 100, 0, 1_000_000, "Steps between checkpoints (0: only at the end or on "
                     "interrupt)."),
                io.Boolean.Input("resume", default=False,
                                 tooltip="Continue from save_name's checkpoint (in output/sda_checkpoints); off: a new "
                                         "run whose checkpoint replaces it."),
                io.Vae.Input("vae", optional=True, tooltip="With eval_every: decode eval renders for LPIPS."),
                _int("eval_every", 0, 0, 1_000_000, "Every N steps render fixed seeds and score their avg LPIPS "
                     "(needs vae; 0: off). Keeps <save_name>_best too.", optional=True),
                _int("eval_seeds", 4, 2, 64, "Seeds rendered per eval.", optional=True),
            ],
            outputs=[
                io.Model.Output("model", display_name="MODEL"),
                io.String.Output("lokr_path", display_name="lokr_path"),
                io.Image.Output("loss_curves", display_name="loss_curves"),
            ],
            hidden=[io.Hidden.unique_id],
        )

    @classmethod
    def execute(cls, student, teacher, prompts: str, width: int, height: int, steps: int, learning_rate: float,
                lambda_div: float, huber_delta: float, pool_kernel: int, div_skip: int, student_steps: int,
                lokr_factor: int, lokr_rank: int, include_refiners: bool, gradient_checkpointing: bool, seed: int,
                save_name: str, checkpoint_every: int, resume: bool, clip=None, conditioning=None,
                negative_prompt: str = "", teacher_cfg: float = 1.0, assistant_adapter: str = NONE, vae=None,
                eval_every: int = 0, eval_seeds: int = 4) -> io.NodeOutput:
        require_flow(student, "student")
        require_flow(teacher, "teacher")
        require_same_family(student, teacher)
        files = RunFiles.for_name(save_name)
        config = SDAConfig(
            steps=steps, lr=learning_rate, lambda_div=lambda_div, huber_delta=huber_delta, pool_kernel=pool_kernel,
            div_skip=div_skip, student_steps=student_steps, shift=student_shift(student, student_steps),
            factor=lokr_factor, rank=lokr_rank or None, teacher_cfg=teacher_cfg, seed=seed,
            checkpoint_every=checkpoint_every, latent_shape=latent_shape(student, width, height, pool_kernel))
        targets = lokr_targets(student, include_refiners)
        positive, prompt_note = gather_prompts(prompts, clip, conditioning)
        negative, negative_note = negative_conditioning(teacher_cfg, clip, negative_prompt, positive)
        use_assistant = assistant_adapter not in (None, "", NONE)
        assistant = host.load_for_model(student, assistant_adapter, widget="assistant_adapter") if use_assistant else None
        details = {"student": describe_model(student), "teacher": describe_model(teacher),
                   "prompts": prompt_fingerprint(positive), "prompt_count": len(positive),
                   "assistant_adapter": assistant_adapter if use_assistant else None,
                   "include_refiners": include_refiners, "trainer": "comfyui-sda SDATrainLoKr"}
        eval_plan = make_eval_plan(vae, eval_every, eval_seeds, seed, width, height, positive, negative)
        outcome = run_training(student, teacher, config, files, targets=targets, positive=positive, negative=negative,
                               assistant=assistant, gradient_checkpointing=gradient_checkpointing, resume=resume,
                               details=details, eval_plan=eval_plan, node_id=cls.hidden.unique_id)
        trained = host.load_for_model(student, outcome.lokr_name, widget="save_name")
        model = host.apply_adapters(student, [(trained, 1.0)])
        image = draw_loss_curves(outcome.result.history, outcome.evals,
                                 title=f"SDA LoKr '{files.save_name}': step {outcome.result.steps}")
        report = build_report(files, config, outcome, prompt_note, negative_note,
                              assistant_adapter if use_assistant else "none")
        return io.NodeOutput(model, outcome.lokr_path, image, ui=host.image_and_text_ui(image, report, cls))


NODES = [SDATrainLoKr]
