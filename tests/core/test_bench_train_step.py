"""bench/train_step.py keeps running and printing what the issue asks for (time, memory, the ratio), on the
pure-torch tiny DiT; its numbers are the bench's business, not a test's."""
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_train_step_bench_prints_time_memory_work_and_the_ratio():
    args = ["--steps", "8", "--warmup", "1", "--mem-steps", "2", "--threads", "1", "--dim", "32", "--size", "16"]
    done = subprocess.run([sys.executable, str(ROOT / "bench" / "train_step.py"), *args], capture_output=True,
                          text=True, timeout=600, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-2000:]
    out = done.stdout
    assert "steps timed: 8 (k: 0x1, 1x1, 2x1, 3x1, 4x1, 5x1, 6x1, 7x1)" in out
    calls = re.search(r"ours ([\d.]+) calls over ([\d.]+) rows\s+reference ([\d.]+) calls over ([\d.]+) rows", out)
    ours_calls, ours_rows, ref_calls, ref_rows = map(float, calls.groups())
    assert ours_calls < ref_calls and ours_rows < ref_rows == ref_calls  # the reference: one row per call
    assert re.search(r"peak torch CPU allocation .* ours [\d.]+ MiB\s+reference [\d.]+ MiB", out)
    first = re.search(r"relative difference ([\d.e+-]+) at the first step", out)
    assert float(first.group(1)) < 1e-5  # the same loss as the reference on the same weights
    assert re.search(r"ratio: [\d.]+x faster, memory [\d.]+x of the reference\s+\[target >= 1\.3x", out)
