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

import dataclasses
import os

import torch

import comfy.model_management as mm
import comfy.samplers
from comfy_api.latest import io

from ...sda_core.training import (Checkpoint, LoKrSet, SDAConfig, TeacherNotFinite, TrainingDiverged, TrainingFault,
                                  TrainResult, load_checkpoint, train)
from ...sda_core.training.targets import TargetTable
from ...sda_core.training.plot import draw_loss_curves, summarize
from .. import host
from .checks import (CATEGORY, FLOW_TYPES, NONE, REPORT_WINDOW, RunFiles, describe_model, latent_shape,
                     lokr_targets, require_same_family, require_trainable, student_schedule)
from .conds import gather_prompts, negative_conditioning, prompt_fingerprint
from .memory import plan_run
from .progress import EvalPlan, Evaluator, Progress, make_eval_plan, save_run_lokr
from .session import Session


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


def run_training(student, teacher, config: SDAConfig, files: RunFiles, *, table: TargetTable, targets, positive,
                 negative, assistant, gradient_checkpointing: bool, resume: bool, details: dict,
                 eval_plan: EvalPlan | None, node_id: str | None) -> Outcome:
    """Set up, train (resuming if asked), save; ComfyUI's objects are restored whatever happens."""
    notes: list[str] = []
    with torch.inference_mode(False), torch.enable_grad():  # tensors made here (checkpoint state too) can train
        session = Session.open(student, teacher, config, targets, positive, negative, assistant, gradient_checkpointing)
        try:
            _effective_teacher_batch(session, config, notes)
            checkpoint = _resume_checkpoint(files, config, details, notes) if resume else _fresh_start(files, notes)
            if checkpoint is not None:
                _restore_lokr(checkpoint, session.lokr, files)
            session.start()
            evaluator = _start_evaluator(session, eval_plan, config, files, checkpoint, notes)
            result = _train(session, config, files, table, checkpoint, evaluator, details, node_id)
            return _save(session, config, files, table, result, evaluator, details, notes)
        finally:
            session.close()


def _effective_teacher_batch(session: Session, config: SDAConfig, notes: list[str]) -> None:
    """teacher_batch only where it saves swaps: with a teacher loaded for its forwards only; else 1 (exact)."""
    if config.teacher_batch > 1 and not session.residency.swap:
        notes.append(f"teacher_batch {config.teacher_batch} not used: the {session.residency.describe()}, "
                     "so there is no swap to save; targets are made every step")
        config.teacher_batch = 1
    elif config.teacher_batch > 1:
        notes.append(f"teacher_batch {config.teacher_batch}: the teacher runs once per {config.teacher_batch} steps; "
                     f"x_t and teacher targets are up to {config.teacher_batch - 1} updates old")


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
    evaluator = Evaluator(session, plan, config.student_steps, files.best_factors, config.scheduler)
    if checkpoint is not None:
        notes += filter(None, [evaluator.restore(checkpoint.extra)])
    step = checkpoint.step if checkpoint is not None else 0
    if not evaluator.history or (step % plan.every == 0 and evaluator.history[-1]["step"] != step):
        evaluator(step)  # the first eval, or the one a Cancel cut short before the checkpoint
    return evaluator


def _train(session: Session, config: SDAConfig, files: RunFiles, table: TargetTable, checkpoint: Checkpoint | None,
           evaluator: Evaluator | None, details: dict, node_id: str | None) -> TrainResult:
    """sda_core's loop with ComfyUI's progress bar, interrupt and the eval hooked in."""
    progress = Progress(config.steps, node_id)
    progress.update(checkpoint.step if checkpoint else 0)

    def on_step(step: int, entry: dict) -> None:
        progress.update(step, entry)
        if evaluator is not None and step % evaluator.plan.every == 0:
            evaluator(step)

    def should_stop() -> bool:
        return progress.interrupted or (evaluator is not None and evaluator.interrupted) or _take_cancel()

    def extra() -> dict:
        return {**details, **(evaluator.state() if evaluator else {})}

    os.makedirs(os.path.dirname(files.checkpoint), exist_ok=True)
    try:
        result = train(session.models, config, on_step=on_step, should_stop=should_stop, resume=checkpoint,
                       checkpoint_path=files.checkpoint, checkpoint_extra=extra,
                       interrupts=(mm.InterruptProcessingException,))
    except TeacherNotFinite as exc:
        raise RuntimeError(f"teacher: {details['teacher']}: {exc} No LoKr was saved. Check the teacher model file "
                           "(load it alone and sample) or load it in a wider dtype (fp32/bf16 instead of fp16).") from None
    except TrainingDiverged as exc:
        path, _ = save_run_lokr(files, session.lokr, files.save_name + "_diverged", config, exc.last_good_step,
                                {**details, "diverged": True}, table)
        raise RuntimeError(f"{exc} That LoKr was saved as {path}.") from None
    except TrainingFault as exc:
        raise RuntimeError(_fault_message(exc, files, session, config, details, table)) from exc.__cause__
    if evaluator is not None and evaluator.interrupted:
        result.stopped = f"during the eval render after step {result.steps}"
    elif progress.interrupted:
        result.stopped = f"at the progress update after step {result.steps}"
    return result


def _fault_message(fault: TrainingFault, files: RunFiles, session: Session, config: SDAConfig, details: dict,
                   table: TargetTable) -> str:
    """An error ended the run: the last complete step's LoKr is saved like a Cancel's, and the message says where
    everything is and how to go on."""
    saved = "nothing was trained yet"
    if fault.steps > 0:
        path, _ = save_run_lokr(files, session.lokr, files.save_name, config, fault.steps,
                                {**details, "interrupted": True, "error": str(fault)}, table)
        saved = f"the LoKr of step {fault.steps} was saved as {path}"
    if fault.checkpoint_path:
        saved += f" and its checkpoint as {fault.checkpoint_path}; turn resume on to continue from there"
    else:
        saved += f"; its checkpoint could not be written ({files.checkpoint} holds the last one written, if any)"
    hint = ""
    if isinstance(fault.__cause__, (torch.OutOfMemoryError, MemoryError)):
        hint = (" The device ran out of memory: turn gradient_checkpointing on, lower width/height, or load the "
                "teacher in fp8 (or as the student plus a LoRA, which shares the student's weights).")
    return f"SDA Train LoKr stopped: {fault}. Nothing is lost: {saved}.{hint}"


def _take_cancel() -> bool:
    """ComfyUI's Cancel flag, consumed: the node stops, saves and returns normally, so the executor must not
    interrupt it again (ComfyUI's own `throw_exception_if_processing_interrupted` clears it the same way)."""
    if not mm.processing_interrupted():
        return False
    mm.interrupt_current_processing(False)
    return True


def _save(session: Session, config: SDAConfig, files: RunFiles, table: TargetTable, result: TrainResult,
          evaluator: Evaluator | None, details: dict, notes: list[str]) -> Outcome:
    """The LoKr as trained so far (and the best by diversity) as new files in models/loras."""
    path, name = save_run_lokr(files, session.lokr, files.save_name, config, result.steps,
                               {**details, "interrupted": result.interrupted}, table)
    best = None
    if evaluator is not None and evaluator.best is not None:
        best_path, _ = save_run_lokr(files, evaluator.best, files.save_name + "_best", config,
                                     evaluator.best_entry["step"], {**details, "eval": evaluator.best_entry}, table)
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
        raise ValueError(f"resume: {exc}. Delete or move that file to start over under this save_name, or turn "
                         "resume off (a new run replaces it), or choose another save_name") from None
    changed = [f"{k} {checkpoint.config.get(k)!r} -> {v!r}" for k, v in config.to_dict().items()
               if k != "steps" and checkpoint.config.get(k, _DEFAULTS.get(k)) != v]
    notes.append(f"resumed from step {checkpoint.step} ({files.checkpoint})")
    if changed:
        notes.append("settings changed since the checkpoint: " + "; ".join(changed))
    if checkpoint.extra.get("prompts") not in (None, details["prompts"]):
        notes.append("the prompts differ from the checkpoint's: the rest of the run trains on the new ones")
    return checkpoint


_DEFAULTS = {"sigmas": None, "scheduler": "simple", "noise_scale": None}  # what a checkpoint older than them meant


def build_report(files: RunFiles, config: SDAConfig, outcome: Outcome, prompt_note: str, negative_note: str,
                 assistant: str, plan_lines: list[str] = ()) -> str:
    result = outcome.result
    if result.interrupted:
        status = (f"interrupted at step {result.steps} of {config.steps} ({result.stopped}); the LoKr and checkpoint "
                  f"hold step {result.steps}; continue with resume on")
    else:
        status = f"{result.steps} of {config.steps} steps done"
    rank = "full w2" if config.rank is None else f"rank {config.rank}"
    lines = [
        f"SDA Train LoKr '{files.save_name}': {status} in {result.elapsed_s:.1f} s",
        *outcome.notes,
        f"models: {outcome.residency}; prompts: {prompt_note}; {negative_note}; assistant adapter: {assistant}",
        f"LoKr: {outcome.lokr_modules} modules, factor {config.factor}, {rank}, {outcome.lokr_params} parameters",
        f"settings: {schedule_words(config)}, latent {list(config.latent_shape)}, "
        f"lr {config.lr:g}, lambda_div {config.lambda_div:g}, huber_delta {config.huber_delta:g}, pool_kernel "
        f"{config.pool_kernel}, div_skip {config.div_skip}, grad_clip "
        f"{config.grad_clip:g}" + (" (off)" if config.grad_clip <= 0 else "") + f", seed {config.seed}"
        + (", gradient checkpointing" if outcome.gradient_checkpointing else ""),
        diversity_span(config),
    ]
    if assistant != "none":
        lines.append("rollout to x_t with the assistant adapter " + ("ON (rollout_with_assistant)"
                     if config.rollout_with_assistant else "off (the trajectory users sample)"))
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
    lines += plan_lines
    return "\n".join(lines)


def schedule_words(config: SDAConfig) -> str:
    """"8-step schedule (shift 3)" (the simple scheduler), "4-step sgm_uniform schedule" …"""
    name = "" if config.scheduler == "simple" else f" {config.scheduler}"
    shift = f" (shift {config.shift:g})" if config.shift is not None else ""
    return f"{config.student_steps}-step{name} schedule{shift}"


def diversity_span(config: SDAConfig) -> str:
    """Where on the student's schedule the diversity term works, in σ: div_skip is an index, σ is what it means."""
    sigmas = config.schedule().tolist()
    n, k = config.student_steps, config.div_skip
    where = f", shift {config.shift:g}" if config.shift is not None else f", {config.scheduler} schedule"
    if k == 0:
        return "diversity term: off (div_skip 0): anchor only"
    if k >= n:
        return f"diversity term: on every step of the {n}-step schedule, σ {sigmas[0]:.3f} down to {sigmas[n - 1]:.3f}"
    return (f"diversity term: schedule steps 0-{k - 1} (σ {sigmas[0]:.3f} down to {sigmas[k - 1]:.3f}); it stops at "
            f"σ {sigmas[k]:.3f} (step {k} of {n}{where}), where steps are pure anchor")


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
                io.Model.Input("student", tooltip="The few-step model to train (e.g. Z-Image-Turbo, FLUX.1-schnell, "
                               "SD3.5 Large Turbo, Qwen-Image + Lightning, an SDXL Lightning/DMD2/Hyper model; LoRAs "
                               "may be applied). It comes out untouched; the trained LoKr is applied on the MODEL "
                               "output."),
                io.Model.Input("teacher", tooltip="The many-step model of the same family (same latents and text "
                               "encoder) whose seed-to-seed changes the student should follow. Never trained."),
                io.String.Input("prompts", multiline=True, default="",
                                tooltip="One prompt per line, encoded with clip; each step draws one per batch row. "
                                        "Ignored when conditioning is connected."),
                io.Clip.Input("clip", optional=True, tooltip="Encodes prompts (and negative_prompt)."),
                io.Conditioning.Input("conditioning", optional=True,
                                      tooltip="Instead of prompts + clip: every entry of the CONDITIONING is one prompt."),
                io.String.Input("negative_prompt", multiline=True, default="", optional=True,
                                tooltip="The teacher's negative, used only when teacher_cfg > 1 (empty: a zeroed "
                                        "prompt)."),
                io.Float.Input("teacher_cfg", default=1.0, min=1.0, max=30.0, step=0.1, optional=True,
                               tooltip="Guidance scale of the teacher's targets. 1 (default): its conditional "
                                       "prediction, one forward; > 1: cfg with the negative, twice the teacher cost."),
                io.Combo.Input("assistant_adapter", options=[NONE] + host.lora_names(), default=NONE, optional=True,
                               tooltip="A de-distill training adapter in models/loras: on for the anchor, off for the "
                                       "diversity forward (and the rollout, see rollout_with_assistant). None: no "
                                       "adapter."),
                _int("width", 512, 64, 4096, "Training resolution in pixels (latent = width/8 for every supported "
                     "model); a multiple of 8 × pool_kernel. 512: affordable, and large enough for composition to "
                     "form."),
                _int("height", 512, 64, 4096, "Training resolution in pixels (latent = height/8); a multiple of 8 × "
                     "pool_kernel."),
                _int("steps", 500, 1, 1_000_000, "Total optimiser steps (a resumed run counts the earlier ones). "
                     "The card's release came from step 2500; 500 shows the trend."),
                io.Float.Input("learning_rate", default=1e-4, min=1e-7, max=1e-1, step=1e-6, round=1e-7,
                               tooltip="AdamW learning rate of the LoKr factors (weight decay 0.001, the card's). 1e-4: "
                                       "a usual LoKr rate (the card states none); higher diverges sooner."),
                io.Float.Input("lambda_div", default=1.0, min=0.0, max=100.0, step=0.05,
                               tooltip="Weight of the diversity (direction) term against the anchor (weight 1). "
                                       "0: anchor only (nothing moves); 1: equal weight (the card names "
                                       "lambda_div but gives no value)."),
                io.Float.Input("huber_delta", default=0.08, min=1e-4, max=10.0, step=0.01,
                               tooltip="Huber delta of the anchor to the frozen student, in units of the model's "
                                       "own prediction (velocity for flow models, noise for eps, v for "
                                       "v-prediction): quadratic below, linear above. 0.08: the card's."),
                _int("pool_kernel", 8, 1, 64, "Average-pool kernel (latent cells) on the seed-to-seed deltas: only "
                     "macro-composition counts, not texture. 8: the card's."),
                _int("div_skip", 7, 0, 100, "The diversity term runs on schedule steps 0..div_skip-1, later steps "
                     "are pure anchor (0: never; = student_steps: always). 7 of 8 stops it at σ 0.30 on Z-Image "
                     "(shift 3), where only fine detail is left; the report gives the σ for your model and settings."),
                _int("student_steps", 8, 1, 100, "The student's sampling steps: training follows its schedule "
                     "(scheduler below, on the student's own model sampling and shift). 8: Z-Image-Turbo's and "
                     "Qwen-Image-Lightning's; 4: FLUX.1-schnell's, SD3.5 Large Turbo's, SDXL-Lightning 4-step's."),
                _int("lokr_factor", 8, 1, 64, "LoKr Kronecker factor: the small w1 is about factor × factor. "
                     "8: the card's."),
                _int("lokr_rank", 0, 0, 4096, "0: full lokr_w2 (the card's setting); r > 0: w2 = w2_a @ w2_b of "
                     "rank r, a smaller file that learns less."),
                io.Boolean.Input("include_refiners", default=False,
                                 tooltip="Z-Image only: also train the noise/context refiner blocks. Off: the main "
                                         "transformer layers only, as the card."),
                io.Boolean.Input("gradient_checkpointing", default=False,
                                 tooltip="Recompute block activations in backward: less memory, about a third "
                                         "slower; the same result."),
                io.Int.Input("seed", default=0, min=0, max=0xFFFFFFFFFFFFFFFF, control_after_generate=False,
                             tooltip="Seeds the LoKr's init and every step's prompt, noises and schedule step: the "
                                     "same seed and settings train the same LoKr."),
                io.String.Input("save_name", default="sda_lokr",
                                tooltip="File name in models/loras (checked before training: characters every "
                                        "platform accepts, and its length); '_1', '_2' … is added if it exists. "
                                        "The checkpoint goes to output/sda_checkpoints under the same name."),
                _int("checkpoint_every", 100, 0, 1_000_000, "Steps between checkpoints (0: only at the end or on "
                     "Cancel, which always saves the LoKr and checkpoint of the last complete step)."),
                io.Boolean.Input("resume", default=False,
                                 tooltip="Continue from save_name's checkpoint (in output/sda_checkpoints) on the "
                                         "same loss curve; off: a new run whose checkpoint replaces it."),
                io.Vae.Input("vae", optional=True, tooltip="With eval_every: decode eval renders for LPIPS."),
                _int("eval_every", 0, 0, 1_000_000, "Every N steps render fixed seeds and score their avg LPIPS "
                     "(needs vae; 0: off). Keeps <save_name>_best too.", optional=True),
                _int("eval_seeds", 4, 2, 64, "Seeds rendered per eval (more: a steadier score, slower).",
                     optional=True),
                io.Float.Input("grad_clip", default=1.0, min=0.0, max=100.0, step=0.1, optional=True,
                               tooltip="Largest global gradient norm of the LoKr factors per step; a larger one is "
                                       "scaled down to it (0: off). 1.0: the usual default of diffusion fine-tuning; "
                                       "it keeps one extreme draw (two nearly equal noises) from throwing the factors "
                                       "off and leaves ordinary steps alone."),
                io.Boolean.Input("rollout_with_assistant", default=False, optional=True,
                                 tooltip="Off (default): x_t is rolled out without the assistant adapter, on the "
                                         "trajectory users sample (they never load the assistant). On: with it, as "
                                         "the anchor sees the model."),
                io.Combo.Input("scheduler", options=list(comfy.samplers.SCHEDULER_NAMES), default="simple",
                               optional=True,
                               tooltip="The scheduler you sample the student with (KSampler's): the loss trains on "
                                       "its sigmas. simple: Z-Image-Turbo's, FLUX.1-schnell's, Qwen-Image-Lightning's; "
                                       "sgm_uniform: SDXL-Lightning's."),
                _int("teacher_batch", 1, 1, 64, "Steps whose teacher targets are made at once when the teacher is "
                     "loaded only for its forwards (it does not fit beside the student): one teacher swap per K "
                     "steps instead of one per step, but x_t and targets up to K-1 updates old. 1: made every step "
                     "(exact). Not used when the teacher stays loaded or shares the student's weights.",
                     optional=True),
            ],
            outputs=[
                io.Model.Output("model", display_name="MODEL",
                                tooltip="The student with the trained LoKr applied at strength 1, as loading the "
                                        "saved file gives."),
                io.String.Output("lokr_path", display_name="lokr_path",
                                 tooltip="Full path of the LoKr file written in models/loras."),
                io.Image.Output("loss_curves", display_name="loss_curves",
                                tooltip="The loss curves (total, anchor, diversity; eval LPIPS when on) as an image."),
            ],
            hidden=[io.Hidden.unique_id],
        )

    @classmethod
    def execute(cls, student, teacher, prompts: str, width: int, height: int, steps: int, learning_rate: float,
                lambda_div: float, huber_delta: float, pool_kernel: int, div_skip: int, student_steps: int,
                lokr_factor: int, lokr_rank: int, include_refiners: bool, gradient_checkpointing: bool, seed: int,
                save_name: str, checkpoint_every: int, resume: bool, clip=None, conditioning=None,
                negative_prompt: str = "", teacher_cfg: float = 1.0, assistant_adapter: str = NONE, vae=None,
                eval_every: int = 0, eval_seeds: int = 4, grad_clip: float = 1.0,
                rollout_with_assistant: bool = False, teacher_batch: int = 1,
                scheduler: str = "simple") -> io.NodeOutput:
        require_trainable(student, "student")
        require_trainable(teacher, "teacher")
        require_same_family(student, teacher)
        table, targets = lokr_targets(student, include_refiners)
        files = RunFiles.for_name(save_name)
        schedule = student_schedule(student, student_steps, scheduler)
        if div_skip > student_steps:
            raise ValueError(f"div_skip {div_skip}: div_skip must lie in 0..{student_steps} (student_steps); "
                             f"{student_steps - 1} keeps the last step pure anchor, as the card's 7 of 8 does")
        config = SDAConfig(
            steps=steps, lr=learning_rate, lambda_div=lambda_div, huber_delta=huber_delta, pool_kernel=pool_kernel,
            div_skip=div_skip, student_steps=student_steps, shift=schedule.shift, sigmas=schedule.sigmas,
            scheduler=scheduler, noise_scale=schedule.noise_scale, factor=lokr_factor, rank=lokr_rank or None,
            teacher_cfg=teacher_cfg, seed=seed, checkpoint_every=checkpoint_every,
            latent_shape=latent_shape(student, width, height, pool_kernel), grad_clip=grad_clip,
            rollout_with_assistant=rollout_with_assistant, teacher_batch=teacher_batch)
        positive, prompt_note = gather_prompts(prompts, clip, conditioning)
        negative, negative_note = negative_conditioning(teacher_cfg, clip, negative_prompt, positive)
        use_assistant = assistant_adapter not in (None, "", NONE)
        assistant = host.load_for_model(student, assistant_adapter, widget="assistant_adapter") if use_assistant else None
        details = {"student": describe_model(student), "teacher": describe_model(teacher),
                   "prompts": prompt_fingerprint(positive), "prompt_count": len(positive),
                   "assistant_adapter": assistant_adapter if use_assistant else None,
                   "include_refiners": include_refiners, "architecture": table.family,
                   "trainer": "comfyui-sda SDATrainLoKr"}
        if student.model.model_type.name not in FLOW_TYPES:  # the anchor is on the model's own prediction
            details["x0_projection"] = (f"x0 = c_skip*x_t - c_out*p, p the model's own prediction (model type "
                                        f"{student.model.model_type.name}; c_skip, c_out from ComfyUI's model sampling)")
        eval_plan = make_eval_plan(vae, eval_every, eval_seeds, seed, width, height, positive, negative)
        _, plan_lines = plan_run(student, teacher, config, targets, positive, use_assistant, gradient_checkpointing,
                                 width, height, table.family)  # refuses, before anything loads, a run that does not fit
        outcome = run_training(student, teacher, config, files, table=table, targets=targets, positive=positive,
                               negative=negative,
                               assistant=assistant, gradient_checkpointing=gradient_checkpointing, resume=resume,
                               details=details, eval_plan=eval_plan, node_id=cls.hidden.unique_id)
        trained = host.load_for_model(student, outcome.lokr_name, widget="save_name")
        model = host.apply_adapters(student, [(trained, 1.0)])
        image = draw_loss_curves(outcome.result.history, outcome.evals,
                                 title=f"SDA LoKr '{files.save_name}': step {outcome.result.steps}")
        report = build_report(files, config, outcome, prompt_note, negative_note,
                              assistant_adapter if use_assistant else "none", plan_lines)
        return io.NodeOutput(model, outcome.lokr_path, image, ui=host.image_and_text_ui(image, report, cls))


NODES = [SDATrainLoKr]
