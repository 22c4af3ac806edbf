"""Benchmark: all-pairs LPIPS with PairwiseLPIPS vs the lpips package's per-pair loop.

Run from the repo root:  python bench/lpips_pairwise.py
Random 256x256 images, AlexNet LPIPS with the package's calibrated heads and a random backbone
(no download needed; the speed does not depend on the backbone's values). Both sides get the same
prepared [-1, 1] inputs and run in this process, interleaved: the peer's pairs are timed in slices
with one run of ours between slices, and each side's best observed rate counts, so load from
other processes on a shared machine hits both sides alike.
"""
from __future__ import annotations

import os
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from sda_core.diversity.lpips_pairs import PairwiseLPIPS, prepare_images  # noqa: E402
from sda_core.diversity.weights import build_lpips  # noqa: E402

PEER = "lpips 0.1.4 per-pair loop"
TARGETS = {16: 10.0, 64: 40.0}  # required speed-up over the peer
SIZE = 256
MAX_TIMED_PAIRS = 160  # above this, the peer is timed on a random subset and extrapolated
SLICE = 20  # peer pairs per timed slice; ours runs once per slice


@torch.no_grad()
def peer_loop(model, x: torch.Tensor, pairs: list[tuple[int, int]]) -> tuple[float, dict]:
    start = time.perf_counter()
    values = {(i, j): float(model(x[i : i + 1], x[j : j + 1])) for i, j in pairs}
    return time.perf_counter() - start, values


def main() -> None:
    torch.manual_seed(0)
    rng = random.Random(0)
    model = build_lpips("alex")
    ours = PairwiseLPIPS(model, batch_size=16)
    warm = prepare_images(torch.rand(2, SIZE, SIZE, 3))
    peer_loop(model, warm, [(0, 1)])  # first-call overheads out of the timings

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, CPU, alex, {SIZE}x{SIZE}; "
          f"load average at start {os.getloadavg()[0]:.2f}")
    print(f"{'N':>4} {'pairs':>6} {'peer timed':>10} {'peer s':>9} {'ours s':>8} {'speed-up':>9} "
          f"{'target':>7} {'result':>6} {'max |diff|':>11}")
    for n, target in TARGETS.items():
        x = prepare_images(torch.rand(n, SIZE, SIZE, 3))
        all_pairs = [(i, j) for i in range(n) for j in range(i + 1, n)]
        timed = all_pairs if len(all_pairs) <= MAX_TIMED_PAIRS else rng.sample(all_pairs, MAX_TIMED_PAIRS)

        ours.distances(x)  # warm-up at this batch shape (oneDNN picks kernels per shape)
        ours_runs, peer_rates, values = [], [], {}
        for k in range(0, len(timed), SLICE):
            start = time.perf_counter()
            matrix = ours.distances(x)
            ours_runs.append(time.perf_counter() - start)
            peer_s, got = peer_loop(model, x, timed[k : k + SLICE])
            peer_rates.append(peer_s / len(got))
            values.update(got)
        ours_s = min(ours_runs)
        peer_total = min(peer_rates) * len(all_pairs)
        diff = max(abs(v - float(matrix[i, j])) for (i, j), v in values.items())
        ratio = peer_total / ours_s
        note = "all" if len(timed) == len(all_pairs) else f"{len(timed)}*"
        print(f"{n:>4} {len(all_pairs):>6} {note:>10} {peer_total:>9.2f} {ours_s:>8.3f} {ratio:>8.1f}x "
              f"{target:>6.0f}x {'PASS' if ratio >= target else 'MISS':>6} {diff:>11.2e}")
    print(f"peer = {PEER}: lpips.LPIPS()(img_i, img_j) for every pair i < j; 'peer s' = its best per-pair")
    print(f"  time over slices of {SLICE} pairs x all pairs. ours = PairwiseLPIPS.distances (batch 16),")
    print("  best of one run per slice, after a warm-up at the same shape.")
    print(f"* timed on a random subset of {MAX_TIMED_PAIRS} of the pairs and extrapolated to all pairs;"
          " max |diff| is over the pairs actually timed.")
    print(f"load average at end {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
