"""bench/diversity_methods.py keeps running and printing each method's time ratio against its peer; the numbers
themselves are the bench's business, not a test's."""
import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_diversity_methods_bench_prints_a_ratio_per_method(comfy):
    env = dict(os.environ, COMFYUI_PATH=str(comfy.comfy_path))
    args = ["--size", "32", "--batch", "2", "--steps", "8", "--tokens", "8", "--repeats", "1"]
    done = subprocess.run([sys.executable, str(ROOT / "bench" / "diversity_methods.py"), *args], capture_output=True,
                          text=True, timeout=900, cwd=ROOT, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    out = done.stdout
    for name, peer in [("SDA Conditioning Noise", "plain model"), ("SDA Condition Annealing", "plain model"),
                       ("SDA Model by Step", "2 chained KSamplerAdvanced")]:
        assert re.search(rf"ratio: {name} / {peer} \(peer\) = [\d.]+×  \[goal ≤ [\d.]+× → (MET|MISSED)\]", out), out
