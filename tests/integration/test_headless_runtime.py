"""headless.runtime finds models where the user's ComfyUI does: the checkout's extra_model_paths.yaml.

One ComfyUI lives per process, so each case starts a fresh Python on a copy of the checkout (its top-level
modules copied, its packages linked) that carries the yaml.
"""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

PACK = Path(__file__).resolve().parents[2]


def _checkout_with_yaml(real: Path, tmp: Path, yaml_text: str | None) -> Path:
    root = tmp / "ComfyUI"
    root.mkdir()
    for entry in real.iterdir():
        if entry.name in {"models", "output", "input", "user", "custom_nodes", "extra_model_paths.yaml"}:
            continue
        if entry.is_dir():
            (root / entry.name).symlink_to(entry, target_is_directory=True)
        else:  # nodes.py, folder_paths.py ...: their folder is the checkout ComfyUI sees
            shutil.copy2(entry, root / entry.name)
    for name in ("models", "output", "input", "custom_nodes"):
        (root / name).mkdir()
    if yaml_text is not None:
        (root / "extra_model_paths.yaml").write_text(yaml_text)
    return root


def _lora_folders(root: Path, user_model_paths: bool) -> list[str]:
    code = (
        "import json, sys\n"
        f"sys.path.insert(0, {str(PACK)!r})\n"
        "from headless import runtime\n"
        f"runtime.start({str(root)!r}, ('--cpu',), load_pack=None, user_model_paths={user_model_paths})\n"
        "import folder_paths\n"
        "print('LORAS=' + json.dumps(folder_paths.get_folder_paths('loras')))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600, cwd=root)
    assert done.returncode == 0, done.stderr[-3000:]
    line = next(line for line in done.stdout.splitlines() if line.startswith("LORAS="))
    return json.loads(line[len("LORAS="):])


@pytest.mark.parametrize("user_model_paths", [True, False])
def test_extra_model_paths_yaml_is_read_as_main_py_reads_it(comfy, tmp_path, user_model_paths):
    shared = tmp_path / "shared_models"
    (shared / "my_loras").mkdir(parents=True)
    yaml_text = f"mine:\n    base_path: {shared}\n    loras: my_loras\n"
    root = _checkout_with_yaml(comfy.comfy_path, tmp_path, yaml_text)
    folders = _lora_folders(root, user_model_paths)
    assert str(root / "models" / "loras") in folders  # ComfyUI's own folder, inside the copy
    assert (str(shared / "my_loras") in folders) is user_model_paths
