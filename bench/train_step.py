"""Time and peak memory of one SDA training step: ours vs the published snippet taken literally.

Ours (`sda_core.training.loop.train_step`): the no-grad forwards are batched (rollout z1+z2 in one
forward per Euler step, teacher z1+z2 in one forward), the anchor and diversity forwards share one grad
forward when no assistant adapter sets them apart, and a pure-anchor step (k >= div_skip) rolls out z1
only. Reference: the card's snippet literally, one forward per prediction (rollout z1, rollout z2,
teacher z1, teacher z2 separately) and one backward of the summed loss. Same process, same models,
same per-step draws (prompt, seeds, k); steps interleaved so machine load hits both alike.

Memory: peak bytes held by torch's CPU allocator above the level at the start of the step, from
the profiler's allocation events (`profile_memory=True`), measured in a separate pass (the profiler
slows the forwards). Python-heap and RSS are not counted.

The model is pluggable: `--model module:function`, where function() returns an object with
`.models` (SDAModels) and `.config` (SDAConfig), or a (models, config) pair; it must build the
same initial weights on every call. Default: `sda_core.training.toy.tiny_dit_problem`.
`--model comfy`: the tiny random-weight Z-Image of the integration tests inside ComfyUI (set
COMFYUI_PATH), wired exactly as the SDA Train LoKr node wires it (--size/--batch apply).

    python bench/train_step.py [--steps 32] [--threads 1] [--model pkg.mod:builder] [--dim 256 --size 32 ...]
    COMFYUI_PATH=... python bench/train_step.py --model comfy [--assistant]
    COMFYUI_PATH=... python bench/train_step.py --teachers [--steps 16]

--teachers: our step with a teacher that shares the student's weights (the student plus a de-distill LoRA
through ComfyUI's LoRA loader: its patches ride as weight wrappers on the student's loaded weights) against
our step with a separate teacher of the same size, both resident. Same draws, steps interleaved; prints the
time ratio shared / separate (target <= 1.1).

Threads: torch's default (all cores, as ComfyUI runs) unless --threads says otherwise. Batching pays
where one row leaves the device idle: several CPU threads or a GPU. On one CPU thread every op is
compute-bound, batching saves only per-call overhead, and the ratio is lower (on a 2-core CPU: about
1.2x at one thread, 1.4x at two).
"""
from __future__ import annotations

import argparse
import collections
import contextlib
import dataclasses
import importlib
import os
import statistics
import sys
import time
from typing import Any, Callable

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests"))

from sda_core.training import loss as L  # noqa: E402
from sda_core.training.batching import concat_conds  # noqa: E402
from sda_core.training.config import SDAConfig, SDAModels  # noqa: E402
from sda_core.training.loop import StepDraw, draw_step, make_optimizer, train_step  # noqa: E402
from sda_core.training.trajectory import euler_step, flow_sigmas, initial_latent  # noqa: E402
from sdatest.measure import peak_cpu_allocation  # noqa: E402

TARGET_SPEEDUP = 1.3
TARGET_SHARED_TEACHER = 1.1


TINY = {"dim": 256, "n_layers": 2, "size": 32, "batch": 1}
WITH_ASSISTANT = [False]  # --assistant (set by main)
# Sessions left open for the whole run: a collected session would close its contexts (e.g. the differentiable
# RoPE that ComfyUI 0.8 needs) while its denoisers are still in use.
OPEN_SESSIONS: list = []


def default_builder() -> tuple[SDAModels, SDAConfig]:
    """A Z-Image-named transformer of the tiny test Z-Image's size: dim 256, 2 blocks, 16x32x32 latents."""
    from sdatest.toy_training import tiny_dit_problem

    tp = tiny_dit_problem(size=TINY["size"], dim=TINY["dim"], n_layers=TINY["n_layers"], batch=TINY["batch"],
                          steps=10**6, lr=1e-4)
    return tp.models, tp.config


def comfy_zimage_builder() -> tuple[SDAModels, SDAConfig]:
    """The integration tests' tiny random-weight Z-Image inside ComfyUI (COMFYUI_PATH), student seed 0 and
    teacher seed 1, wired by the SDA Train LoKr node's own glue: apply_model with ComfyUI's conds, the LoKr as
    weight wrappers on a clone, the models loaded through comfy.model_management."""
    from sdatest import comfy_host, tiny_models

    path = comfy_host.comfy_path_from_env()
    if path is None:
        raise SystemExit("--model comfy needs COMFYUI_PATH (a ComfyUI checkout, e.g. the test command's 0.3.75)")
    comfy_host.boot(path)
    import nodes

    training = sys.modules[nodes.NODE_CLASS_MAPPINGS["SDATrainLoKr"].__module__]
    student, teacher = tiny_models.tiny_zimage(0), tiny_models.tiny_zimage(1)
    assistant = _tiny_assistant(training, student) if WITH_ASSISTANT[0] else None
    config = training.SDAConfig(steps=10**6, lr=1e-4, batch=TINY["batch"], latent_shape=(16, TINY["size"], TINY["size"]),
                                shift=training.student_schedule(student, 8, "simple").shift)
    prompts = [tiny_models.tiny_conditioning(0), tiny_models.tiny_conditioning(2)]
    session = training.Session.open(student, teacher, config, training.lokr_targets(student, False)[1], prompts, None,
                                    assistant, False)
    session.start()  # left open: the bench process ends with it
    OPEN_SESSIONS.append(session)
    return session.models, config


def comfy_teachers_builder(shared: bool) -> Callable[[], tuple[SDAModels, SDAConfig]]:
    """The tiny Z-Image session with a teacher that is the student plus a de-distill LoRA (ComfyUI's own LoRA
    loader: shared weights) or a separate tiny Z-Image of the same size (both resident)."""
    def build() -> tuple[SDAModels, SDAConfig]:
        from sdatest import comfy_host, tiny_models

        path = comfy_host.comfy_path_from_env()
        if path is None:
            raise SystemExit("--teachers needs COMFYUI_PATH (a ComfyUI checkout, e.g. the test command's 0.3.75)")
        comfy_host.boot(path)
        import comfy.sd
        import comfy.utils
        import nodes

        training = sys.modules[nodes.NODE_CLASS_MAPPINGS["SDATrainLoKr"].__module__]
        student = tiny_models.tiny_zimage(0)
        if shared:
            lora = comfy.utils.load_torch_file(_tiny_lora(student))
            teacher, _ = comfy.sd.load_lora_for_models(student, None, lora, 1.0, 0.0)
        else:
            teacher = tiny_models.tiny_zimage(1)
        config = training.SDAConfig(steps=10**6, lr=1e-4, batch=TINY["batch"],
                                    latent_shape=(16, TINY["size"], TINY["size"]), shift=training.student_schedule(student, 8, "simple").shift)
        prompts = [tiny_models.tiny_conditioning(0), tiny_models.tiny_conditioning(2)]
        session = training.Session.open(student, teacher, config, training.lokr_targets(student, False)[1], prompts, None,
                                        None, False)
        session.start()  # left open: the bench process ends with it
        OPEN_SESSIONS.append(session)
        print(f"{'shared' if shared else 'separate'} teacher: {session.residency.describe()}")
        return session.models, config

    return build


def _tiny_lora(student) -> str:
    import tempfile

    from sdatest import adapter_files

    path = os.path.join(tempfile.mkdtemp(prefix="sda-bench-"), "lora.safetensors")
    shapes = {k: tuple(v.shape) for k, v in student.model.diffusion_model.state_dict().items()}
    adapter_files.write_lora(path, shapes, rank=4)
    return path


def _tiny_assistant(training, student):
    """A random LoRA on the tiny Z-Image's main layers, parsed onto the student as the node parses its assistant."""
    return training.host.load_adapter(_tiny_lora(student), training.host.model_layout(student), label="assistant")


def _load_builder(spec: str | None) -> Callable[[], Any]:
    if not spec:
        return default_builder
    if spec == "comfy":
        return comfy_zimage_builder
    mod, _, fn = spec.partition(":")
    return getattr(importlib.import_module(mod), fn)


def _build(builder: Callable[[], Any]) -> tuple[SDAModels, SDAConfig]:
    out = builder()
    return (out.models, out.config) if hasattr(out, "models") else tuple(out)


# --- the reference: the published snippet, literally ------------------------------------------------

def _call(models: SDAModels, den, x, sigma: float, conds):
    sig = torch.full((x.shape[0],), sigma, dtype=x.dtype, device=x.device)
    cond = models.batch_conds(list(conds)) if models.batch_conds else concat_conds(conds)
    return den(x, sig, cond).float()


@torch.no_grad()
def _rollout_one(models, z, sigmas, k, conds):
    x = initial_latent(z, float(sigmas[0]))
    for i in range(k):
        x0 = _call(models, models.student, x, float(sigmas[i]), conds)
        x = euler_step(x, x0, float(sigmas[i]), float(sigmas[i + 1]))
    return x


def reference_step(models: SDAModels, config: SDAConfig, draw: StepDraw, sigmas, optimizer, params):
    """One forward per prediction, one backward of the sum (what the card's snippet does)."""
    conds = [models.conds[i] for i in draw.cond_indices]
    k, s = draw.k, float(sigmas[draw.k])
    optimizer.zero_grad(set_to_none=True)
    z1, z2 = draw.z1.to(models.device), draw.z2.to(models.device)
    x_t1 = _rollout_one(models, z1, sigmas, k, conds)
    x_t2 = _rollout_one(models, z2, sigmas, k, conds)
    x0_pol = _call(models, models.student, x_t1, s, conds)
    v_pol = (x_t1 - x0_pol) / s
    with torch.no_grad(), models.lokr.disabled():
        v_base = (x_t1 - _call(models, models.student, x_t1, s, conds)) / s
    sft = F.huber_loss(v_pol, v_base.detach(), delta=config.huber_delta)
    loss, div = sft, None
    if k < config.div_skip:
        with torch.no_grad():
            x0_t1 = _call(models, models.teacher, x_t1, s, conds)
            x0_t2 = _call(models, models.teacher, x_t2, s, conds)
        with models.assistant() if models.assistant else contextlib.nullcontext():
            x0_s2 = _call(models, models.student, x_t2, s, conds)
        x0_s1 = x_t1 - s * v_pol.detach()
        d_s = F.avg_pool2d(x0_s2 - x0_s1, config.pool_kernel).flatten(1)
        d_t = F.avg_pool2d(x0_t2 - x0_t1, config.pool_kernel).flatten(1)
        div = (1 - F.cosine_similarity(d_s, d_t, dim=1)).mean()
        loss = sft + config.lambda_div * div
    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, config.grad_clip)
    optimizer.step()
    return L.combine(sft.detach(), None if div is None else div.detach(), config.lambda_div)


def ours_step(models, config, draw, sigmas, optimizer, params):
    terms, _ = train_step(models, config, draw, sigmas, optimizer, params)
    return terms.total


# --- measuring --------------------------------------------------------------------------------------

class Counted:
    """A denoiser that counts its calls and rows: the work batching saves is calls, not rows (FLOPs)."""

    def __init__(self, fn) -> None:
        self.fn, self.calls, self.rows = fn, 0, 0

    def __call__(self, x, sigma, cond):
        self.calls += 1
        self.rows += x.shape[0]
        return self.fn(x, sigma, cond)


class Runner:
    def __init__(self, builder, step_fn):
        models, self.config = _build(builder)
        self.counted = [Counted(models.student), Counted(models.teacher)]
        self.models = dataclasses.replace(models, student=self.counted[0], teacher=self.counted[1])
        self.params = list(self.models.lokr.parameters())
        self.opt = make_optimizer(self.params, self.config)
        self.sigmas = flow_sigmas(self.config.student_steps, self.config.shift)
        self.step_fn = step_fn

    def work(self) -> tuple[int, int]:
        return sum(c.calls for c in self.counted), sum(c.rows for c in self.counted)

    def __call__(self, draw):
        return self.step_fn(self.models, self.config, draw, self.sigmas, self.opt, self.params)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", help="module:function returning the models, or 'comfy' (default: tiny DiT)")
    ap.add_argument("--steps", type=int, default=32, help="timed steps per variant (k cycles through the schedule)")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--mem-steps", type=int, default=8, help="steps profiled for memory")
    ap.add_argument("--threads", type=int, default=0,
                    help="torch CPU threads (0: torch's default, all cores, as ComfyUI runs)")
    for key, val in TINY.items():
        ap.add_argument(f"--{key.replace('_', '-')}", type=int, default=val, help="default model only")
    ap.add_argument("--assistant", action="store_true",
                    help="--model comfy: train with an assistant adapter (its anchor and diversity forwards differ, "
                         "so they cannot share one forward)")
    ap.add_argument("--teachers", action="store_true",
                    help="compare a teacher sharing the student's weights with a separate resident one (needs "
                         "COMFYUI_PATH)")
    args = ap.parse_args(argv)
    if args.teachers:
        TINY.update({k: getattr(args, k) for k in TINY})
        if args.threads:
            torch.set_num_threads(args.threads)
        return compare_teachers(args)
    if args.assistant and args.model != "comfy":
        raise SystemExit("--assistant needs --model comfy")
    WITH_ASSISTANT[0] = args.assistant
    TINY.update({k: getattr(args, k) for k in TINY})
    if args.threads:
        torch.set_num_threads(args.threads)
    builder = _load_builder(args.model)
    ours, ref = Runner(builder, ours_step), Runner(builder, reference_step)
    cfg = ours.config
    if cfg.teacher_cfg != 1.0:
        raise SystemExit("the reference step implements teacher cfg 1 only (the card's setting)")
    n_conds = len(ours.models.conds)
    params_n = sum(p.numel() for p in ours.params)
    what = (args.model or f"tiny DiT {TINY}") + (" with an assistant adapter" if args.assistant else "")
    print(f"model: {what}; LoKr params {params_n}; latent {cfg.latent_shape}, "
          f"batch {cfg.batch}, {cfg.student_steps} student steps, div_skip {cfg.div_skip}; "
          f"torch {torch.__version__}, {torch.get_num_threads()} thread(s)")

    t_ours, t_ref, diffs, ks = [], [], [], []
    with torch.enable_grad():
        for i in range(args.warmup + args.steps):
            if i == args.warmup:
                work_start = {r: r.work() for r in (ours, ref)}
            draw = draw_step(cfg, i, n_conds)
            draw.k = i % cfg.student_steps  # k evenly over the schedule, the draw's expectation: no lucky short runs
            order = (ours, ref) if i % 2 == 0 else (ref, ours)
            times, losses = {}, {}
            for r in order:
                t = time.perf_counter()
                losses[r] = float(r(draw))
                times[r] = time.perf_counter() - t
            if i >= args.warmup:
                t_ours.append(times[ours])
                t_ref.append(times[ref])
                ks.append(draw.k)
                diffs.append(abs(losses[ours] - losses[ref]) / max(abs(losses[ref]), 1e-12))
            if i == 0:
                first_diff = abs(losses[ours] - losses[ref]) / max(abs(losses[ref]), 1e-12)

        work = {r: [(a - b) / args.steps for a, b in zip(r.work(), work_start[r])] for r in (ours, ref)}
        m_ours, m_ref = [], []
        for i in range(args.mem_steps):
            # the profiled steps cover the schedule: force k through 0..student_steps-1
            draw = draw_step(cfg, 10_000 + i, n_conds)
            draw.k = i % cfg.student_steps
            m_ours.append(peak_cpu_allocation(lambda: ours(draw)))
            m_ref.append(peak_cpu_allocation(lambda: ref(draw)))

    med_o, med_r = statistics.median(t_ours), statistics.median(t_ref)
    tot_o, tot_r = sum(t_ours), sum(t_ref)
    speed = tot_r / tot_o
    peak_o, peak_r = max(m_ours), max(m_ref)
    per_k = collections.Counter(ks)
    print(f"steps timed: {args.steps} (k: {', '.join(f'{k}x{per_k[k]}' for k in sorted(per_k))})")
    print(f"time/step  ours {1e3 * tot_o / len(t_ours):8.1f} ms (median {1e3 * med_o:.1f})   "
          f"reference {1e3 * tot_r / len(t_ref):8.1f} ms (median {1e3 * med_r:.1f})")
    print(f"denoiser forwards/step  ours {work[ours][0]:.2f} calls over {work[ours][1]:.2f} rows   reference "
          f"{work[ref][0]:.2f} calls over {work[ref][1]:.2f} rows (rows ~ FLOPs: a compute-bound device gains little)")
    k_hi = min(args.mem_steps, cfg.student_steps) - 1
    print(f"peak torch CPU allocation per step (max over {args.mem_steps} steps, k=0..{k_hi}): "
          f"ours {peak_o / 2**20:.2f} MiB   reference {peak_r / 2**20:.2f} MiB")
    print(f"same loss as the reference: relative difference {first_diff:.1e} at the first step, "
          f"{max(diffs):.1e} at most after the two copies' weights drift apart by rounding")
    n = cfg.student_steps
    cycles = [sum(t_ref[i:i + n]) / sum(t_ours[i:i + n]) for i in range(0, len(t_ours) - n + 1, n)]
    if len(cycles) > 1:
        print(f"ratio per pass over k=0..{n - 1}: {', '.join(f'{c:.2f}' for c in cycles)} (the machine's noise)")
    ok = speed >= TARGET_SPEEDUP and peak_o <= peak_r
    print(f"ratio: {speed:.2f}x faster, memory {peak_o / peak_r:.2f}x of the reference  "
          f"[target >= {TARGET_SPEEDUP}x faster at no more memory: {'PASS' if ok else 'MISS'}]")
    return 0


def compare_teachers(args) -> int:
    """Shared-weight teacher vs separate resident teacher: our step on both, interleaved on the same draws."""
    shared, separate = Runner(comfy_teachers_builder(True), ours_step), Runner(comfy_teachers_builder(False), ours_step)
    cfg = shared.config
    n_conds = len(shared.models.conds)
    print(f"model: tiny Z-Image in ComfyUI {TINY}; latent {cfg.latent_shape}, batch {cfg.batch}; "
          f"torch {torch.__version__}, {torch.get_num_threads()} thread(s)")
    times: dict[Runner, list[float]] = {shared: [], separate: []}
    with torch.enable_grad():
        for i in range(args.warmup + args.steps):
            draw = draw_step(cfg, i, n_conds)
            draw.k = i % cfg.student_steps
            for r in ((shared, separate) if i % 2 == 0 else (separate, shared)):
                t = time.perf_counter()
                r(draw)
                if i >= args.warmup:
                    times[r].append(time.perf_counter() - t)
    t_shared, t_sep = sum(times[shared]), sum(times[separate])
    ratio = t_shared / t_sep
    print(f"time/step  shared teacher {1e3 * t_shared / args.steps:8.1f} ms (median "
          f"{1e3 * statistics.median(times[shared]):.1f})   separate resident teacher {1e3 * t_sep / args.steps:8.1f} "
          f"ms (median {1e3 * statistics.median(times[separate]):.1f})")
    print(f"ratio: shared / separate = {ratio:.2f}x  [target <= {TARGET_SHARED_TEACHER}x: "
          f"{'PASS' if ratio <= TARGET_SHARED_TEACHER else 'MISS'}]")
    return 0


if __name__ == "__main__":
    sys.exit(main())
