"""The integration tier's ComfyUI: the pack's headless runtime (ComfyUI as a library, prompts validated and
executed as the server does) with temp model/output folders, the pack installed as a custom_nodes folder and
the test-only nodes loaded. One host per test session.
"""
from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from headless.runtime import PromptFailed, PromptInvalid, Runtime, start  # noqa: F401  (tests import them here)

REPO = Path(__file__).resolve().parents[2]
PACK_NODE_IDS = ("SDALoKrLoader", "SDAAdapterStack", "SDAInvertTrainingAdapter")
MODEL_FOLDERS = ("loras", "lpips", "diffusion_models", "text_encoders", "vae", "checkpoints")


@dataclass
class ComfyHost:
    """The pack's headless runtime plus what tests need: temp model/output folders."""

    runtime: Runtime
    root: Path

    @property
    def comfy_path(self) -> Path:
        return self.runtime.comfy_path

    @property
    def version(self) -> str:
        return self.runtime.version

    def folder(self, name: str) -> Path:
        path = self.root / "models" / name
        path.mkdir(parents=True, exist_ok=True)
        return path

    @property
    def output_dir(self) -> Path:
        return self.root / "output"

    def validate(self, prompt: dict) -> list[str]:
        return self.runtime.validate(prompt)

    def run(self, prompt: dict) -> dict:
        """Validate and execute like the server; the UI outputs per node id, or PromptFailed."""
        return self.runtime.run(prompt)


_HOST: ComfyHost | None = None


def comfy_path_from_env() -> Path | None:
    value = os.environ.get("COMFYUI_PATH")
    return Path(value).resolve() if value else None


def boot(comfy_path: Path) -> ComfyHost:
    """ComfyUI on the CPU with temp model/output folders, our pack installed as a custom_nodes folder, test nodes."""
    global _HOST
    if _HOST is not None:
        return _HOST
    root = Path(tempfile.mkdtemp(prefix="sda-comfy-"))

    def folders(folder_paths):
        for name in MODEL_FOLDERS:
            path = root / "models" / name
            path.mkdir(parents=True, exist_ok=True)
            folder_paths.add_model_folder_path(name, str(path), is_default=True)
        (root / "output").mkdir(parents=True, exist_ok=True)
        folder_paths.set_output_directory(str(root / "output"))
        folder_paths.set_temp_directory(str(root / "temp"))

    runtime = start(comfy_path, ("--cpu",), load_pack=None, before_nodes=folders, user_model_paths=False)
    # Installed the way users install it: a folder in custom_nodes/ (here a link to this checkout).
    custom = root / "custom_nodes"
    custom.mkdir()
    (custom / "comfyui-sda").symlink_to(REPO, target_is_directory=True)
    runtime.load_custom_node(custom / "comfyui-sda")
    import nodes

    missing = [n for n in PACK_NODE_IDS if n not in nodes.NODE_CLASS_MAPPINGS]
    if missing:
        raise RuntimeError(f"the pack loaded but did not register {missing}")
    runtime.load_custom_node(REPO / "tests" / "sdatest" / "comfy_nodes")
    _HOST = ComfyHost(runtime=runtime, root=root)
    return _HOST
