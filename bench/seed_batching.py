"""Seeds sampled in batches (Seed Diversity Grid) vs one KSampler run per seed, in one run.

Peer: ComfyUI's own KSampler + VAEDecode, one prompt node pair per seed. Target: ≥ 1.5× at batch 4.
The grid also scores LPIPS and draws its grid, so the comparison is conservative. Runs ComfyUI in-process on
the tiny random-weight Z-Image of the tests (COMFYUI_PATH must name a checkout):

    COMFYUI_PATH=… python bench/seed_batching.py [--seeds 8] [--size 256] [--repeats 3]
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
from sdatest.graph import Graph  # noqa: E402


def _common(g: Graph):
    return (g.add("SDATest_TinyZImage", seed=0, dtype="fp32", shared=True),
            g.add("SDATest_TinyConditioning", seed=0, tokens=8), g.add("SDATest_TinyVAE", seed=0))


def per_seed_prompt(seeds: list[int], size: int) -> dict:
    g = Graph()
    model, cond, vae = _common(g)
    latent = g.add("EmptySD3LatentImage", width=size, height=size, batch_size=1)
    for seed in seeds:
        sampled = g.add("KSampler", model=model, seed=seed, steps=8, cfg=1.0, sampler_name="euler",
                        scheduler="simple", positive=cond, negative=cond, latent_image=latent, denoise=1.0)
        g.add("SDATest_Capture", value=g.add("VAEDecode", samples=sampled, vae=vae), key=f"ks{seed}")
    return g.prompt()


def grid_prompt(seeds: list[int], size: int, batch: int) -> dict:
    g = Graph()
    model, cond, vae = _common(g)
    grid = g.add("SDASeedDiversityGrid", model=model, positive=cond, negative=cond, vae=vae, width=size, height=size,
                 seed=0, num_seeds=len(seeds), seed_list=",".join(map(str, seeds)), steps=8, cfg=1.0,
                 sampler_name="euler", scheduler="simple", batch_size=batch, label="bench", lpips_net="alex",
                 lpips_size="native")
    g.add("SDATest_Capture", value=grid[1], key="grid")
    return g.prompt()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=8)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    path = comfy_host.comfy_path_from_env()
    if path is None:
        sys.exit("set COMFYUI_PATH to a ComfyUI checkout (bash scripts/test.sh provides one in ~/.cache/comfyui-sda)")
    host = comfy_host.boot(path)
    tiny_models.write_lpips_backbone(host.folder("lpips"))  # random backbone: the bench times, it does not judge
    seeds = list(range(100, 100 + args.seeds))
    variants = {"KSampler per seed (peer)": per_seed_prompt(seeds, args.size),
                "grid batch 1": grid_prompt(seeds, args.size, 1),
                "grid batch 4": grid_prompt(seeds, args.size, 4)}
    for prompt in variants.values():
        host.run(prompt)  # warm-up
    times = {name: [] for name in variants}
    for _ in range(args.repeats):
        for name, prompt in variants.items():
            start = time.perf_counter()
            host.run(prompt)
            times[name].append(time.perf_counter() - start)
    print(f"ComfyUI {host.version}, tiny Z-Image, {args.seeds} seeds at {args.size}², euler/simple 8 steps, "
          f"median of {args.repeats}")
    median = {name: statistics.median(t) for name, t in times.items()}
    peer = median["KSampler per seed (peer)"]
    for name, t in median.items():
        print(f"  {name:26s} {t * 1000:8.1f} ms   peer / this = {peer / t:5.2f}×")
    ratio = peer / median["grid batch 4"]
    print(f"target: batch 4 ≥ 1.5× one KSampler run per seed — {ratio:.2f}× → {'PASS' if ratio >= 1.5 else 'MISS'}")


if __name__ == "__main__":
    main()
