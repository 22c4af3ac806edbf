"""Z-Image-Turbo's real architecture at full size with random weights: what sampling, a seed grid, LPIPS and SDA
training cost on this device, and the memory plan beside every measured training peak. One table.

    python bench/full_size.py                       # ComfyUI found through COMFYUI_PATH or ../../ (custom_nodes)
    python bench/full_size.py --layers 2 --dim 1024 --size 512     # smaller, same code paths

The model is ComfyUI's own Z-Image (comfy.supported_models.ZImage: NextDiT with Z-Image's modulation) at the
size ComfyUI detects from the real checkpoint: dim 3840, 30 layers, 2 noise and 2 context refiner layers, 30
heads, text features 2560, 6.15 B parameters, in bf16 (fp32 with --cpu: what ComfyUI runs there). Its weights
are random (values change neither speed nor memory), so nothing is downloaded; the teacher is a second such
model. Prompts are random text features of --tokens tokens.

Rows:
  sampling           seconds per step through comfy.sample.sample (euler, simple, cfg 1), batch 1 and 4
  16-seed grid       the pack's seed sampling of the SDA Seed Diversity Grid (8 steps, batch 4), latents only
                     (no VAE decode: there is no VAE without a download)
  LPIPS              all pairwise distances of 16 images at --size through the pack's PairwiseLPIPS (256 px
                     short side, the grid's default), AlexNet with a random backbone (the speed is the same)
  training           seconds per SDA step (sda_core's train loop over --train-steps steps, k drawn as in a run)
                     through the training node's own session, its peak device memory (CUDA: torch's
                     max_memory_allocated; CPU: the weights and LoKr factors resident plus the peak of torch's
                     allocations during the run) beside the memory plan's estimate for the same run. A
                     configuration whose estimate exceeds the device is skipped.
The shared teacher is the student plus a random rank-4 LoRA through ComfyUI's own LoRA loader.
"""
from __future__ import annotations

import argparse
import dataclasses
import importlib
import os
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tests")]

import torch  # noqa: E402

# ComfyUI's Z-Image as model detection reads it from the real checkpoint (comfy/model_detection.py, dim 3840)
ZIMAGE_TURBO = {
    "image_model": "lumina2", "patch_size": 2, "in_channels": 16, "dim": 3840, "cap_feat_dim": 2560, "n_layers": 30,
    "n_refiner_layers": 2, "n_heads": 30, "n_kv_heads": 30, "axes_dims": [32, 48, 48], "axes_lens": [1536, 512, 512],
    "qk_norm": True, "ffn_dim_multiplier": 8.0 / 3.0, "rope_theta": 256.0, "z_image_modulation": True,
    "time_scale": 1000.0, "pad_tokens_multiple": 32,
}
HEAD_DIM = 128
SAMPLE_STEPS = 8
GRID_SEEDS, GRID_BATCH = 16, 4


def find_comfyui(explicit: str | None) -> Path:
    for candidate in (explicit, os.environ.get("COMFYUI_PATH"), REPO.parents[1] if REPO.parent.name == "custom_nodes"
                      else None):
        if candidate and (Path(candidate) / "comfy").is_dir():
            return Path(candidate).resolve()
    raise SystemExit("ComfyUI not found: run from ComfyUI/custom_nodes/comfyui-sda, set COMFYUI_PATH or pass --comfyui")


def zimage_config(layers: int, dim: int) -> dict:
    heads = max(1, dim // HEAD_DIM)
    if dim % heads or dim // heads != HEAD_DIM or dim < 256:
        raise SystemExit(f"--dim {dim}: must be a multiple of {HEAD_DIM} and at least 256 (Z-Image's head size "
                         f"{HEAD_DIM}; its modulation needs 256)")
    return dict(ZIMAGE_TURBO, n_layers=layers, dim=dim, n_heads=heads, n_kv_heads=heads)


def build_zimage(config: dict, dtype: torch.dtype, seed: int):
    """A ModelPatcher around ComfyUI's Z-Image with random weights, built where ComfyUI's loader builds it."""
    import comfy.model_management as mm
    import comfy.model_patcher
    import comfy.supported_models

    model_config = comfy.supported_models.ZImage(config)
    model_config.set_inference_dtype(dtype, None)
    model = model_config.get_model({}, device=mm.unet_offload_device())
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.diffusion_model.named_parameters():
            if "norm" in name and p.dim() == 1:
                p.fill_(1.0)
            else:
                p.normal_(0.0, 0.02, generator=gen)
    return comfy.model_patcher.ModelPatcher(model, load_device=mm.get_torch_device(), offload_device=mm.unet_offload_device())


def conditioning(tokens: int, features: int, seed: int) -> list:
    return [[torch.randn(1, tokens, features, generator=torch.Generator().manual_seed(seed)), {}]]


class Device:
    """Peak memory of a piece of code on the compute device: CUDA's counters, or torch's CPU allocations."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.cuda = device.type == "cuda"

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize(self.device)

    def peak(self, fn, resident: int = 0) -> int:
        """Bytes at fn()'s peak: on CUDA everything allocated; on the CPU `resident` plus fn's own peak."""
        if self.cuda:
            torch.cuda.reset_peak_memory_stats(self.device)
            fn()
            self.sync()
            return torch.cuda.max_memory_allocated(self.device)
        from sdatest.measure import peak_cpu_allocation

        return resident + peak_cpu_allocation(fn)

    def total(self) -> int:
        import comfy.model_management as mm

        return mm.get_total_memory(self.device)

    def timed(self, fn) -> float:
        self.sync()
        t = time.perf_counter()
        fn()
        self.sync()
        return time.perf_counter() - t


@dataclasses.dataclass
class Row:
    what: str
    seconds: float | None = None
    unit: str = ""
    peak: int | None = None
    plan: int | None = None
    note: str = ""


def fmt_bytes(n: int | None) -> str:
    return "" if n is None else f"{n / 2**30:.2f} GiB" if n >= 2**30 else f"{n / 2**20:.1f} MiB"


def table(rows: list[Row]) -> str:
    lines = ["| what | seconds | peak memory | memory plan | measured / plan |", "|---|---|---|---|---|"]
    for r in rows:
        if r.note and r.seconds is None:
            lines.append(f"| {r.what} | {r.note} | | | |")
            continue
        ratio = f"{r.peak / r.plan:.2f}" if r.peak and r.plan else ""
        seconds = f"{r.seconds:.3f} {r.unit}" + (f" ({r.note})" if r.note else "")
        lines.append(f"| {r.what} | {seconds} | {fmt_bytes(r.peak)} | {fmt_bytes(r.plan)} | {ratio} |")
    return "\n".join(lines)


class Bench:
    def __init__(self, args) -> None:
        import comfy.model_management as mm
        import nodes

        self.args = args
        self.mm = mm
        self.training = sys.modules[nodes.NODE_CLASS_MAPPINGS["SDATrainLoKr"].__module__]
        package = self.training.__package__
        self.memory = importlib.import_module(package + ".memory")
        self.sampling = importlib.import_module(package.rsplit(".", 1)[0] + ".sampling")
        self.device = Device(mm.get_torch_device())
        self.dtype = torch.float32 if self.device.device.type == "cpu" else torch.bfloat16
        self.config = zimage_config(args.layers, args.dim)
        self.student = build_zimage(self.config, self.dtype, seed=0)
        self._teacher = None
        self.prompts = [conditioning(args.tokens, self.config["cap_feat_dim"], s) for s in (0, 1)]

    @property
    def teacher(self):
        if self._teacher is None:
            self._teacher = build_zimage(self.config, self.dtype, seed=1)
        return self._teacher

    def unload(self) -> None:
        self.mm.unload_all_models()
        self.mm.soft_empty_cache()

    # --- sampling ---------------------------------------------------------------------------------------

    def sampling_row(self, batch: int) -> Row:
        import comfy.sample

        size = self.args.size
        latent = torch.zeros(batch, 16, size // 8, size // 8)
        noise = torch.randn(latent.shape, generator=torch.Generator().manual_seed(0))
        positive = negative = self.prompts[0]

        def run(steps):
            with torch.inference_mode():
                comfy.sample.sample(self.student, noise, steps, 1.0, "euler", "simple", positive, negative, latent,
                                    disable_pbar=True, seed=0)

        self.unload()
        run(1)  # load and warm up
        steps = self.args.sample_steps
        seconds = self.device.timed(lambda: run(steps))
        peak = self.device.peak(lambda: run(1), resident=self.student.model_size())
        return Row(f"sampling {size}², batch {batch}", seconds / steps, "s/step", peak)

    def grid_row(self) -> Row:
        size = self.args.size

        def run():
            with torch.inference_mode():
                self.sampling.sample_seeds(self.student, self.prompts[0], self.prompts[0], list(range(GRID_SEEDS)),
                                           width=size, height=size, steps=self.args.sample_steps, cfg=1.0, sampler_name="euler",
                                           scheduler="simple", batch_size=GRID_BATCH)

        seconds = self.device.timed(run)
        return Row(f"{GRID_SEEDS}-seed grid {size}², {self.args.sample_steps} steps, batch {GRID_BATCH} (sampling; no VAE "
                   "decode)", seconds, "s")

    def lpips_row(self) -> Row:
        from sda_core.diversity.lpips_pairs import PairwiseLPIPS
        from sda_core.diversity.weights import build_lpips

        lpips = PairwiseLPIPS(build_lpips("alex").to(self.device.device).eval())
        images = torch.rand(GRID_SEEDS, self.args.size, self.args.size, 3, generator=torch.Generator().manual_seed(0))
        lpips(images[:2])  # warm up
        seconds = self.device.timed(lambda: lpips(images))
        return Row(f"LPIPS over {GRID_SEEDS} images {self.args.size}² (all pairs, 256 px; random AlexNet backbone)",
                   seconds, "s")

    # --- training ---------------------------------------------------------------------------------------

    def shared_teacher(self):
        """The student plus a random rank-4 'de-distill' LoRA through ComfyUI's own LoRA loader: one set of weights."""
        import tempfile

        import comfy.sd
        import comfy.utils
        from sdatest import adapter_files

        path = os.path.join(tempfile.mkdtemp(prefix="sda-full-size-"), "dedistill.safetensors")
        shapes = {k: tuple(v.shape) for k, v in self.student.model.diffusion_model.state_dict().items()}
        adapter_files.write_lora(path, shapes, rank=4)
        teacher, _ = comfy.sd.load_lora_for_models(self.student, None, comfy.utils.load_torch_file(path), 1.0, 0.0)
        return teacher

    def train_row(self, what: str, teacher_mode: str, checkpointing: bool, teacher_batch: int = 1) -> Row:
        from sda_core.training import train
        from sda_core.training.memory_plan import estimate

        training, student = self.training, self.student
        teacher = self.shared_teacher() if teacher_mode == "shared" else self.teacher
        latent = self.args.size // 8
        n = max(self.args.train_steps, teacher_batch)
        config = training.SDAConfig(steps=n, lr=1e-4, latent_shape=(16, latent, latent), teacher_batch=teacher_batch,
                                    shift=training.student_schedule(student, SAMPLE_STEPS, "simple").shift)
        targets = training.lokr_targets(student, False)[1]
        facts = self.memory.gather(student, teacher, config, targets, self.prompts, False, checkpointing)
        if facts.teacher != teacher_mode and teacher_mode != "swapped":
            return Row(what, note=f"n/a: this checkout plans the teacher as {facts.teacher}")
        plan = estimate(dataclasses.replace(facts, teacher=teacher_mode))
        if self.device.cuda and plan.peak > self.device.total():
            return Row(what, note=f"skipped: the plan's {fmt_bytes(plan.peak)} exceeds the device's "
                                  f"{fmt_bytes(self.device.total())}")
        self.unload()
        with torch.inference_mode(False), torch.enable_grad():
            session = training.Session.open(student, teacher, config, targets, self.prompts, None, None, checkpointing)
            if teacher_mode != "shared":
                session.residency.swap = teacher_mode == "swapped"
            try:
                session.start()
                if teacher_mode == "shared" and not session.residency.shared_weights:
                    return Row(what, note=f"n/a: the session swapped the teacher ({session.residency.describe()})")
                train(session.models, dataclasses.replace(config, steps=1))  # warm up
                result = None

                def run():
                    nonlocal result
                    result = train(session.models, config)

                seconds = self.device.timed(run)
                resident = student.model_size() + (teacher.model_size() if teacher_mode == "resident" else 0)
                peak = self.device.peak(run, resident=resident + 4 * plan.facts.lokr_params)
            except torch.cuda.OutOfMemoryError:
                return Row(what, note=f"out of memory (the plan said {fmt_bytes(plan.peak)})")
            finally:
                session.close()
        note = f"{result.bad_steps} of {n} steps non-finite" if result.bad_steps else ""
        return Row(what, seconds / n, "s/step", peak, plan.peak, note)

    def rows(self) -> list[Row]:
        rows = [self.sampling_row(1), self.sampling_row(4), self.grid_row(), self.lpips_row()]
        for what, mode, ckpt, k in [
            ("train: shared teacher (student + adapter), checkpointing on", "shared", True, 1),
            ("train: separate teacher, both resident, checkpointing off", "resident", False, 1),
            ("train: separate teacher, both resident, checkpointing on", "resident", True, 1),
            ("train: separate teacher swapped, checkpointing on", "swapped", True, 1),
            ("train: separate teacher swapped, teacher_batch 4, checkpointing on", "swapped", True, 4),
        ]:
            rows.append(self.train_row(what, mode, ckpt, k))
        return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--layers", type=int, default=ZIMAGE_TURBO["n_layers"], help="main transformer layers (30)")
    ap.add_argument("--dim", type=int, default=ZIMAGE_TURBO["dim"], help="block width, a multiple of 128 (3840)")
    ap.add_argument("--size", type=int, default=1024, help="image size in pixels, a multiple of 64 (1024)")
    ap.add_argument("--tokens", type=int, default=128, help="text tokens per prompt (128)")
    ap.add_argument("--sample-steps", type=int, default=SAMPLE_STEPS, help="sampling steps, timed and of the grid (8)")
    ap.add_argument("--train-steps", type=int, default=8, help="timed training steps per configuration (8)")
    ap.add_argument("--cpu", action="store_true", help="run on the CPU (ComfyUI's --cpu)")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    ap.add_argument("--comfyui", help="a ComfyUI checkout (default: COMFYUI_PATH, or the ComfyUI this pack sits in)")
    args = ap.parse_args(argv)
    if args.size % 64:
        raise SystemExit(f"--size {args.size}: must be a multiple of 64 (8 px per latent cell x pool kernel 8)")
    if args.threads:
        torch.set_num_threads(args.threads)
    from headless.runtime import start

    start(find_comfyui(args.comfyui), ("--cpu",) if args.cpu else (), user_model_paths=False)
    bench = Bench(args)
    n_params = sum(p.numel() for p in bench.student.model.diffusion_model.parameters())
    print(f"Z-Image (ComfyUI's ZImage config): dim {args.dim}, {args.layers} layers, {n_params / 1e9:.2f} B parameters "
          f"in {str(bench.dtype).replace('torch.', '')} on {bench.device.device}; {args.size}² images, {args.tokens} "
          f"text tokens; torch {torch.__version__}")
    print(table(bench.rows()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
