"""bench/full_size.py still runs (shrunk to one small layer on the CPU) and prints its whole table: every row with
its numbers, the training rows with a measured peak beside the plan's. Its numbers are the bench's business."""
import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
ROWS = ["sampling 64², batch 1", "sampling 64², batch 4", "16-seed grid 64²", "LPIPS over 16 images 64²",
        "train: shared teacher", "train: separate teacher, both resident, checkpointing off",
        "train: separate teacher, both resident, checkpointing on", "train: separate teacher swapped, checkpointing on",
        "train: separate teacher swapped, teacher_batch 4"]


def test_full_size_bench_shrunk_prints_every_row_with_numbers(comfy):
    args = ["--cpu", "--threads", "1", "--layers", "1", "--dim", "256", "--size", "64", "--tokens", "8",
            "--sample-steps", "1", "--train-steps", "1"]
    env = dict(os.environ, COMFYUI_PATH=str(comfy.comfy_path))
    done = subprocess.run([sys.executable, str(ROOT / "bench" / "full_size.py"), *args], capture_output=True, text=True,
                          timeout=1200, cwd=ROOT, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    out = done.stdout
    assert re.search(r"dim 256, 1 layers, 0\.\d+ B parameters in float32 on cpu", out)
    rows = {line.split("|")[1].strip(): [c.strip() for c in line.split("|")[2:-1]]
            for line in out.splitlines() if line.startswith("| ") and not line.startswith("| what")}
    for name in ROWS:
        (row,) = [cells for what, cells in rows.items() if what.startswith(name)]
        assert re.fullmatch(r"[\d.]+ s(/step)?", row[0]), (name, row)
        if name.startswith("sampling") or name.startswith("train"):
            assert re.fullmatch(r"[\d.]+ MiB", row[1]), (name, row)
        if name.startswith("train"):
            assert re.fullmatch(r"[\d.]+ MiB", row[2]) and 0.75 <= float(row[3]) <= 1.25, (name, row)
