"""Benchmark: all-pairs LPIPS with PairwiseLPIPS vs the lpips package's per-pair loop.

Run from the repo root:  python bench/lpips_pairwise.py
Random 256x256 images, AlexNet LPIPS with the package's calibrated heads and a random backbone
(no download needed; the speed does not depend on the backbone's values). Both sides get the same
prepared [-1, 1] inputs and run in this process, interleaved: the peer's pairs are timed in slices
with one run of ours between slices, and each side's best observed rate counts, so load from
other processes on a shared machine hits both sides alike. Both wall time and this process's CPU
time are measured; the verdict uses CPU time. The default is one torch thread: with several,
threads spin at barriers while a busy machine deschedules their partners, which inflates the
peer's many small calls far more than ours (the ratio then looks better than it is).
Options: --threads N.
"""
from __future__ import annotations

import argparse
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


class Clock:
    """Wall and CPU seconds of one timed block."""

    def __enter__(self):
        self.wall, self.cpu = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc):
        self.wall, self.cpu = time.perf_counter() - self.wall, time.process_time() - self.cpu


@torch.no_grad()
def peer_loop(model, x: torch.Tensor, pairs: list[tuple[int, int]]) -> tuple[Clock, dict]:
    with Clock() as clock:
        values = {(i, j): float(model(x[i : i + 1], x[j : j + 1])) for i, j in pairs}
    return clock, values


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1)")
    torch.set_num_threads(parser.parse_args().threads)
    torch.manual_seed(0)
    rng = random.Random(0)
    model = build_lpips("alex")
    ours = PairwiseLPIPS(model, batch_size=16)
    warm = prepare_images(torch.rand(2, SIZE, SIZE, 3))
    peer_loop(model, warm, [(0, 1)])  # first-call overheads out of the timings

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, CPU, alex, {SIZE}x{SIZE}; "
          f"load average at start {os.getloadavg()[0]:.2f}")
    print(f"{'N':>4} {'pairs':>6} {'timed':>6} | {'peer wall':>9} {'ours wall':>9} {'ratio':>7} | "
          f"{'peer cpu':>9} {'ours cpu':>9} {'ratio':>7} | {'target':>6} {'result':>6} {'max |diff|':>10}")
    for n, target in TARGETS.items():
        x = prepare_images(torch.rand(n, SIZE, SIZE, 3))
        all_pairs = [(i, j) for i in range(n) for j in range(i + 1, n)]
        timed = all_pairs if len(all_pairs) <= MAX_TIMED_PAIRS else rng.sample(all_pairs, MAX_TIMED_PAIRS)

        ours.distances(x)  # warm-up at this batch shape (oneDNN picks kernels per shape)
        ours_runs, peer_rates, values = [], [], {}
        for k in range(0, len(timed), SLICE):
            with Clock() as clock:
                matrix = ours.distances(x)
            ours_runs.append(clock)
            clock, got = peer_loop(model, x, timed[k : k + SLICE])
            peer_rates.append((clock.wall / len(got), clock.cpu / len(got)))
            values.update(got)
        ours_wall, ours_cpu = min(c.wall for c in ours_runs), min(c.cpu for c in ours_runs)
        peer_wall = min(r[0] for r in peer_rates) * len(all_pairs)
        peer_cpu = min(r[1] for r in peer_rates) * len(all_pairs)
        diff = max(abs(v - float(matrix[i, j])) for (i, j), v in values.items())
        ratio = peer_cpu / ours_cpu
        note = "all" if len(timed) == len(all_pairs) else f"{len(timed)}*"
        print(f"{n:>4} {len(all_pairs):>6} {note:>6} | {peer_wall:>9.2f} {ours_wall:>9.3f} "
              f"{peer_wall / ours_wall:>6.1f}x | {peer_cpu:>9.2f} {ours_cpu:>9.3f} {ratio:>6.1f}x | "
              f"{target:>5.0f}x {'PASS' if ratio >= target else 'MISS':>6} {diff:>10.2e}")
    print(f"peer = {PEER}: lpips.LPIPS()(img_i, img_j) for every pair i < j, timed in slices of {SLICE}")
    print("  pairs; its best per-pair time x all pairs. ours = PairwiseLPIPS.distances (batch 16), best of")
    print("  one run per slice after a warm-up at the same shape. Seconds; verdict on the CPU-time ratio.")
    print(f"* timed on a random subset of {MAX_TIMED_PAIRS} of the pairs and extrapolated to all pairs;"
          " max |diff| is over the pairs actually timed.")
    print(f"load average at end {os.getloadavg()[0]:.2f}")

if __name__ == "__main__":
    main()
