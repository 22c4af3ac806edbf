"""Sampling time with the adapter by step vs the plain loader vs the base model, in one run.

Peer: the pack's own SDALoKrLoader (merged weights, ComfyUI's patcher). Target: scheduled ≤ 1.2× the loader.
Runs ComfyUI in-process on the tiny random-weight Z-Image of the tests (COMFYUI_PATH must name a checkout):

    COMFYUI_PATH=… python bench/scheduled_adapter.py [--repeats 5] [--size 256] [--batch 4]
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "tests"), str(REPO)]

from sdatest import comfy_host, tiny_models  # noqa: E402
from sdatest.adapter_files import write_sda_lokr  # noqa: E402
from sdatest.graph import Graph  # noqa: E402

LOKR = "bench_sda.safetensors"


def prompt(variant: str, size: int, batch: int, schedule: str) -> dict:
    g = Graph()
    model = g.add("SDATest_TinyZImage", seed=0, dtype="fp32", shared=True)
    if variant == "loader":
        model = g.add("SDALoKrLoader", model=model, lokr_name=LOKR, strength=1.0)
    elif variant == "scheduled":
        model = g.add("SDAScheduledAdapter", model=model, lora_name=LOKR, strength=1.0, step_strengths=schedule,
                      start_percent=0.0, end_percent=1.0)
    cond = g.add("SDATest_TinyConditioning", seed=0, tokens=8)
    latent = g.add("EmptySD3LatentImage", width=size, height=size, batch_size=batch)
    out = g.add("KSampler", model=model, seed=1, steps=8, cfg=1.0, sampler_name="euler", scheduler="simple",
                positive=cond, negative=cond, latent_image=latent, denoise=1.0)
    g.add("SDATest_Capture", value=out, key="bench")
    return g.prompt()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--size", type=int, default=256, help="image side in pixels (latent = size / 8)")
    parser.add_argument("--batch", type=int, default=4)
    args = parser.parse_args()
    path = comfy_host.comfy_path_from_env()
    if path is None:
        sys.exit("set COMFYUI_PATH to a ComfyUI checkout (bash scripts/test.sh provides one in ~/.cache/comfyui-sda)")
    host = comfy_host.boot(path)
    shapes = tiny_models.tiny_zimage_shapes()
    write_sda_lokr(host.folder("loras") / LOKR, shapes, factor=8, seed=1, scale=0.05)

    variants = [("base", ""), ("loader", ""), ("scheduled all steps", "1"), ("scheduled first 2 of 8", "1,1,0")]
    times: dict[str, list[float]] = {name: [] for name, _ in variants}
    for name, schedule in variants:  # warm-up: builds the shared model, first patching
        host.run(prompt(name.split()[0], args.size, args.batch, schedule))
    for _ in range(args.repeats):  # interleaved, so drift hits every variant alike
        for name, schedule in variants:
            start = time.perf_counter()
            host.run(prompt(name.split()[0], args.size, args.batch, schedule))
            times[name].append(time.perf_counter() - start)

    print(f"ComfyUI {host.version}, tiny Z-Image, {args.batch}×{args.size}², euler/simple 8 steps, "
          f"median of {args.repeats} prompts (each prompt re-patches: what a user pays)")
    loader = statistics.median(times["loader"])
    for name, _ in variants:
        t = statistics.median(times[name])
        print(f"  {name:24s} {t * 1000:8.1f} ms   {t / loader:5.2f}× the loader")
    worst = statistics.median(times["scheduled all steps"]) / loader
    print(f"target: scheduled ≤ 1.2× SDALoKrLoader (peer) — all steps {worst:.2f}× → {'PASS' if worst <= 1.2 else 'MISS'}")


if __name__ == "__main__":
    main()
