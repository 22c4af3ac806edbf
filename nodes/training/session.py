"""The student and teacher on the device while training: trainable weights, residency, denoisers, LoKr and
assistant as weight wrappers, gradient checkpointing."""
from __future__ import annotations

import contextlib
import dataclasses
import math
import sys
from typing import Any, Callable, ContextManager, Iterator

import torch

import comfy.model_management as mm
import comfy.patcher_extension

from ...sda_core.adapters import LoadedAdapter, Target
from ...sda_core.training import LoKrSet, SDAConfig, SDAModels
from ...sda_core.training.bypass import LoKrBypass
from ...sda_core.training.grad_checkpoint import Switches, checkpoint_blocks
from ...sda_core.training.rope import with_rotation_backward, with_rotation_backward1
from .. import host
from .checks import FLOW_TYPES, parameterization
from .conds import BatchedConds, batch_model_conds, model_conds
from .shared_teacher import attach_teacher, detach_student, student_additions, teacher_additions


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

    A teacher that is the student plus its own patches runs on the student's loaded weights (`shared_weights`,
    see shared_teacher): only the student is ever loaded. Otherwise both stay loaded when they fit. When memory
    is short, or when they are clones of one model whose difference cannot ride as weight wrappers (ComfyUI
    holds one set of weights for both), the teacher is loaded for its forwards only and freed before the
    student's next forward.
    """

    def __init__(self, student, teacher, weights: TrainableWeights, shared_weights: str | None = None) -> None:
        """shared_weights: how a teacher sharing the student's weights differs from it (None: it does not)."""
        self.student, self.teacher, self.weights = student, teacher, weights
        self.shared_weights = shared_weights
        self.shared = student.is_clone(teacher)
        self.swap = not shared_weights and (self.shared or not self._both_fit())

    def _both_fit(self) -> bool:
        device = self.student.load_device
        if mm.is_device_cpu(device):
            return True
        loaded = self.student.loaded_size() + self.teacher.loaded_size()
        needed = self.student.model_size() + self.teacher.model_size() + mm.minimum_inference_memory()
        return needed <= mm.get_free_memory(device) + loaded

    def describe(self) -> str:
        if self.shared_weights:
            return f"teacher runs on the student's loaded weights ({self.shared_weights})"
        if not self.swap:
            return "student and teacher both loaded"
        why = "they share one model's weights" if self.shared else "memory is short for both"
        return f"teacher loaded only for its forwards ({why})"

    def start(self) -> None:
        mm.load_models_gpu([self.student] if self.swap or self.shared_weights else [self.student, self.teacher])
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


def make_shared_teacher(clone, teacher, residency: Residency, sample_sigmas: torch.Tensor, lokr: LoKrSet,
                        assistant: "AssistantSwitch | None", as_teacher: Callable[[], ContextManager]) -> Callable:
    """The teacher's denoiser on the student's loaded weights: LoKr and assistant off, the weights as the
    teacher's (`as_teacher`: its patches on, or the student's own off), the teacher's own transformer options."""
    def denoise(x: torch.Tensor, sigma: torch.Tensor, cond) -> torch.Tensor:
        residency.ready(clone)
        kwargs = cond if isinstance(cond, BatchedConds) else batch_model_conds([cond])
        off = assistant.off() if assistant is not None else contextlib.nullcontext()
        with lokr.disabled(), off, as_teacher():
            return clone.model.apply_model(x, sigma, transformer_options=transformer_options(teacher, sample_sigmas),
                                           **kwargs)

    return denoise


def attach_lokr(model, targets: dict[str, Target], config: SDAConfig, device) -> LoKrSet:
    """One trainable LoKr per target on `model` (a clone), applied on the compute side (sda_core.training.bypass):
    each adapted layer's forward is an object patch of the clone, so it exists only while the clone is loaded;
    q/k/v are row slices of the fused qkv."""
    shapes = {name: (t.shape[0], math.prod(t.shape[1:])) for name, t in targets.items()}
    lokr = LoKrSet.build(shapes, factor=config.factor, rank=config.rank, seed=config.seed).to(device)
    by_param: dict[str, list] = {}
    for name, target in sorted(targets.items()):
        by_param.setdefault(target.param, []).append((target.rows[0] if target.rows else 0, lokr[name]))
    for param, parts in by_param.items():
        path = host.MODEL_PREFIX + param.rsplit(".", 1)[0]
        layer = comfy.utils.get_attr(model.model, path)
        model.add_object_patch(path + ".forward", LoKrBypass(layer.forward, parts))
    return lokr


class InputCopy:
    """A norm layer's forward on a copy of its input whenever a gradient is wanted.

    ComfyUI's FLUX.1 blocks add their residuals in place (`img += …`) into the tensor they just normalised, and
    a layer norm keeps its input for backward: autograd then refuses the backward ("modified by an inplace
    operation"). Normalising a copy leaves the norm's saved tensor untouched; forwards without grad (rollout,
    baseline, teacher) run as loaded.
    """

    def __init__(self, forward: Callable[..., torch.Tensor]) -> None:
        self.forward = forward

    def __call__(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        if torch.is_grad_enabled() and x.requires_grad:
            x = x.clone()
        return self.forward(x, *args, **kwargs)


def copy_norm_inputs(model) -> None:
    """`InputCopy` on every layer norm and group norm of `model` (a clone, before loading), as object patches."""
    for name, module in model.model.diffusion_model.named_modules():
        if isinstance(module, (torch.nn.LayerNorm, torch.nn.GroupNorm)):
            model.add_object_patch(f"{host.MODEL_PREFIX}{name}.forward", InputCopy(module.forward))


def train_in_fp32(model) -> None:
    """Run `model` (the training clone) in fp32, its weights kept as loaded: ComfyUI casts each as it is used.

    A LoKr's early deltas lie far below a bf16 weight's (or activation's) rounding step; in a bf16 forward they
    vanish from the output while gradients still flow (see sda_core.training.bypass for the numbers).
    """
    compute = model.model.manual_cast_dtype or model.model.get_dtype()
    if compute != torch.float32:
        model.set_model_compute_dtype(torch.float32)


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
    host.add_switched_weights(model, loaded, switch)
    return switch


ROPE_KERNELS = {"apply_rope": with_rotation_backward, "apply_rope1": with_rotation_backward1}


@contextlib.contextmanager
def differentiable_rope(model) -> Iterator[None]:
    """ComfyUI's RoPE kernels made differentiable while training, put back on exit.

    ComfyUI 0.8 computes RoPE with comfy-kitchen's fused ops, which have no backward. Model code calls them as
    module globals imported from comfy.ldm.flux.math: `apply_rope` (Flux's attention, Z-Image) and
    `apply_rope1` (Qwen-Image). Each such global of ComfyUI's model modules (and of the model's own module) is
    swapped for the same op with a rotation backward (sda_core.training.rope).
    """
    own = type(model.model.diffusion_model).__module__
    swapped = []
    try:
        for name, module in list(sys.modules.items()):
            if module is None or not (name.startswith("comfy.ldm.") or name == own):
                continue
            for kernel, wrap in ROPE_KERNELS.items():
                original = vars(module).get(kernel)
                if callable(original) and not hasattr(original, "wrapped"):
                    setattr(module, kernel, wrap(original))
                    swapped.append((module, kernel, original))
        yield
    finally:
        for module, kernel, original in reversed(swapped):
            setattr(module, kernel, original)


def transformer_blocks(model) -> list[torch.nn.Module]:
    diffusion_model = model.model.diffusion_model
    return [block for child in diffusion_model.children() if isinstance(child, torch.nn.ModuleList) for block in child]


def _share_teacher(clone, student, teacher) -> tuple[Callable[[], ContextManager] | None, str | None]:
    """(the context a teacher forward on `clone` runs in, how it differs) when the teacher can share the student's
    weights (shared_teacher), else (None, None)."""
    additions = teacher_additions(student, teacher)
    if additions is not None:
        return attach_teacher(clone, additions), "its own patches switched on for its forwards"
    own = student_additions(student, teacher)
    if own is not None:
        return detach_student(clone, own), "the student's own patches switched off for its forwards"
    return None, None


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
        train_in_fp32(clone)
        copy_norm_inputs(clone)
        lokr = attach_lokr(clone, targets, config, device)
        switch = attach_assistant(clone, assistant) if assistant is not None else None
        as_teacher, shared = _share_teacher(clone, student, teacher)
        weights = TrainableWeights(clone.model)
        residency = Residency(clone, teacher, weights, shared_weights=shared)
        sigmas = config.schedule().to(device)
        latent = torch.zeros((1, *config.latent_shape), device=device)
        conds = [c for cond in positive for c in model_conds(clone, cond, latent, "positive")]
        models = SDAModels(
            student=make_denoiser(clone, residency, sigmas),
            teacher=make_denoiser(teacher, residency, sigmas) if as_teacher is None else
            make_shared_teacher(clone, teacher, residency, sigmas, lokr, switch, as_teacher),
            lokr=lokr, conds=conds, assistant=switch.off if switch else None,
            negative=model_conds(clone, negative, latent, "negative")[0] if negative else None,
            batch_conds=batch_model_conds, device=device,
            parameterization=None if student.model.model_type.name in FLOW_TYPES else parameterization(student))
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

