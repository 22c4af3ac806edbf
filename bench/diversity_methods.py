"""Sampling time of each training-free diversity method relative to the plain model, in the same run.

Peers: the plain model through ComfyUI's KSampler (for conditioning noise and CADS, goal ≤ 1.05×), and two
chained KSamplerAdvanced with the same split (for SDA Model by Step, goal ≤ 1.00× of the chain). Runs ComfyUI
in-process on the tiny random-weight Z-Image of the tests (COMFYUI_PATH must name a checkout); on a tiny model
the fixed per-call costs weigh far more than on the real 6B one, so these ratios are upper bounds:

    COMFYUI_PATH=… python bench/diversity_methods.py [--size 256] [--batch 4] [--steps 8] [--cfg 1] [--repeats 3]
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "tests"), str(REPO)]

from sdatest import comfy_host  # noqa: E402
from sdatest.graph import Graph  # noqa: E402

PLAIN = "plain model (peer)"
CHAINED = "2 chained KSamplerAdvanced (peer)"


def _prompt(args, method: str) -> dict:
    g = Graph()
    model = g.add("SDATest_TinyZImage", seed=0, dtype="fp32", shared=True)
    early = g.add("SDATest_TinyZImage", seed=1, dtype="fp32", shared=True)
    pos = g.add("SDATest_TinyConditioning", seed=1, tokens=args.tokens)
    neg = g.add("SDATest_TinyConditioning", seed=2, tokens=args.tokens)
    latent = g.add("EmptySD3LatentImage", width=args.size, height=args.size, batch_size=args.batch)
    common = dict(steps=args.steps, cfg=args.cfg, sampler_name="euler", scheduler="simple", positive=pos, negative=neg)
    split = max(1, args.steps // 8)  # the early model on the first step of 8
    if method == CHAINED:
        first = g.add("KSamplerAdvanced", model=early, add_noise="enable", noise_seed=7, latent_image=latent,
                      start_at_step=0, end_at_step=split, return_with_leftover_noise="enable", **common)
        out = g.add("KSamplerAdvanced", model=model, add_noise="disable", noise_seed=7, latent_image=first,
                    start_at_step=split, end_at_step=10000, return_with_leftover_noise="disable", **common)
    else:
        if method == "SDA Conditioning Noise":
            model = g.add("SDAConditioningNoise", model=model, strength=0.3, start_percent=0.0, end_percent=0.25,
                          protect_tokens=0)
        elif method == "SDA Condition Annealing":
            model = g.add("SDAConditionAnnealing", model=model, tau1=0.6, tau2=0.9, noise_scale=0.25, psi=1.0)
        elif method == "SDA Model by Step":
            model = g.add("SDAModelByStep", model=model, model_early=early, cfg_early=args.cfg, start_percent=0.0,
                          end_percent=split / args.steps)
        out = g.add("KSampler", model=model, seed=7, latent_image=latent, denoise=1.0, **common)
    g.add("SDATest_Capture", value=out, key="samples")
    return g.prompt()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--cfg", type=float, default=1.0)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    path = comfy_host.comfy_path_from_env()
    if path is None:
        sys.exit("set COMFYUI_PATH to a ComfyUI checkout (bash scripts/test.sh provides one in ~/.cache/comfyui-sda)")
    host = comfy_host.boot(path)
    names = [PLAIN, "SDA Conditioning Noise", "SDA Condition Annealing", CHAINED, "SDA Model by Step"]
    prompts = {name: _prompt(args, name) for name in names}
    for prompt in prompts.values():
        host.run(prompt)  # warm-up: models built and cached, kernels warm
    times = {name: [] for name in names}
    for _ in range(args.repeats):
        for name in names:  # interleaved, so a slow moment of the machine hits every variant alike
            start = time.perf_counter()
            host.run(prompts[name])
            times[name].append(time.perf_counter() - start)
    median = {name: statistics.median(t) for name, t in times.items()}
    print(f"ComfyUI {host.version}, tiny Z-Image, batch {args.batch} at {args.size}², euler/simple {args.steps} steps, "
          f"cfg {args.cfg:g}, {args.tokens} prompt tokens, median of {args.repeats}")
    for name in names:
        print(f"  {name:36s} {median[name] * 1000:8.1f} ms")
    goals = [("SDA Conditioning Noise", PLAIN, 1.05), ("SDA Condition Annealing", PLAIN, 1.05),
             ("SDA Model by Step", CHAINED, 1.00)]
    for name, peer, goal in goals:
        ratio = median[name] / median[peer]
        print(f"ratio: {name} / {peer} = {ratio:.3f}×  [goal ≤ {goal:.2f}× → {'MET' if ratio <= goal else 'MISSED'}]")


if __name__ == "__main__":
    main()
