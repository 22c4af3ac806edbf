"""ComfyUI as a library, the way its server runs prompts: our pack loaded as a custom node, prompts
validated by execution.validate_prompt and run by execution.PromptExecutor (under torch.inference_mode()).

One host per test session; every prompt gets a fresh executor, so nothing is cached between prompts.
"""
from __future__ import annotations

import asyncio
import itertools
import os
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
PACK_NODE_IDS = ("SDALoKrLoader", "SDAAdapterStack", "SDAInvertTrainingAdapter")
MODEL_FOLDERS = ("loras", "lpips", "diffusion_models", "text_encoders", "vae", "checkpoints")


class PromptInvalid(AssertionError):
    """ComfyUI's validation refused the prompt; carries its node errors."""


class PromptFailed(RuntimeError):
    """A node raised while the executor ran the prompt."""

    def __init__(self, exception_type: str, message: str, node_type: str | None):
        super().__init__(f"{node_type}: {exception_type}: {message}")
        self.exception_type = exception_type
        self.message = message
        self.node_type = node_type


class _ServerStub:
    """The few attributes PromptExecutor touches on PromptServer."""

    def __init__(self):
        self.client_id = None
        self.last_node_id = None
        self.last_prompt_id = None
        self.messages: list[tuple[str, Any]] = []

    def send_sync(self, event, data, sid=None):
        self.messages.append((event, data))

    def queue_updated(self):
        pass


@dataclass
class ComfyHost:
    comfy_path: Path
    root: Path
    loaded_pack: bool = False
    _ids: Any = field(default_factory=lambda: itertools.count(1))

    @property
    def version(self) -> str:
        import comfyui_version

        return comfyui_version.__version__

    def folder(self, name: str) -> Path:
        path = self.root / "models" / name
        path.mkdir(parents=True, exist_ok=True)
        return path

    @property
    def output_dir(self) -> Path:
        return self.root / "output"

    def validate(self, prompt: dict) -> list[str]:
        import execution

        prompt_id = f"test-{next(self._ids)}"
        ok, error, outputs, node_errors = asyncio.run(execution.validate_prompt(prompt_id, prompt, None))
        if not ok:
            raise PromptInvalid(f"{error}\n{node_errors}")
        return outputs

    def run(self, prompt: dict) -> dict:
        """Validate and execute like the server; the UI outputs per node id, or PromptFailed."""
        import execution

        outputs = self.validate(prompt)
        server = _ServerStub()
        executor = execution.PromptExecutor(server, cache_type=execution.CacheType.CLASSIC,
                                            cache_args={"lru": 0, "ram": 0.0})
        prompt_id = f"run-{next(self._ids)}"
        executor.execute(prompt, prompt_id, {"client_id": None}, outputs)
        if not executor.success:
            for event, data in executor.status_messages:
                if event == "execution_error":
                    raise PromptFailed(data.get("exception_type", "?"), data.get("exception_message", ""),
                                       data.get("node_type"))
            raise PromptFailed("unknown", str(executor.status_messages), None)
        return executor.history_result["outputs"]


_HOST: ComfyHost | None = None


def comfy_path_from_env() -> Path | None:
    value = os.environ.get("COMFYUI_PATH")
    return Path(value).resolve() if value else None


def boot(comfy_path: Path) -> ComfyHost:
    """Import ComfyUI from comfy_path on the CPU, give it temp model/output folders, load our pack and the test nodes."""
    global _HOST
    if _HOST is not None:
        return _HOST
    if not (comfy_path / "comfy").is_dir():
        raise RuntimeError(f"COMFYUI_PATH={comfy_path} is not a ComfyUI checkout (no comfy/ folder)")
    sys.path.insert(0, str(comfy_path))
    # Our repo root is on sys.path too (pytest pythonpath) and holds a package named `nodes`:
    # ComfyUI's own nodes.py must win that name.
    sys.modules.pop("nodes", None)
    argv, sys.argv = sys.argv, [sys.argv[0], "--cpu"]
    try:
        import comfy.options

        comfy.options.enable_args_parsing()
        import comfy.cli_args  # noqa: F401  (parses --cpu)
    finally:
        sys.argv = argv

    import comfy.utils
    import folder_paths
    import nodes

    comfy.utils.PROGRESS_BAR_ENABLED = False  # no tqdm bars from samplers in test and bench logs

    assert Path(nodes.__file__).resolve().parent == comfy_path, f"wrong `nodes` module: {nodes.__file__}"
    root = Path(tempfile.mkdtemp(prefix="sda-comfy-"))
    host = ComfyHost(comfy_path=comfy_path, root=root)
    for name in MODEL_FOLDERS:
        folder_paths.add_model_folder_path(name, str(host.folder(name)), is_default=True)
    host.output_dir.mkdir(parents=True, exist_ok=True)
    folder_paths.set_output_directory(str(host.output_dir))
    folder_paths.set_temp_directory(str(root / "temp"))

    asyncio.run(nodes.init_extra_nodes(init_custom_nodes=False, init_api_nodes=False))
    # Installed the way users install it: a folder in custom_nodes/ (here a link to this checkout).
    custom = root / "custom_nodes"
    custom.mkdir()
    (custom / "comfyui-sda").symlink_to(REPO, target_is_directory=True)
    if not asyncio.run(nodes.load_custom_node(str(custom / "comfyui-sda"))):
        raise RuntimeError("ComfyUI refused to load the pack (see the log above)")
    missing = [n for n in PACK_NODE_IDS if n not in nodes.NODE_CLASS_MAPPINGS]
    if missing:
        raise RuntimeError(f"the pack loaded but did not register {missing}")
    if not asyncio.run(nodes.load_custom_node(str(REPO / "tests" / "sdatest" / "comfy_nodes"))):
        raise RuntimeError("ComfyUI refused to load the test-only nodes")
    _HOST = host
    return host
