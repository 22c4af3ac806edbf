"""ComfyUI as a library: import it from a checkout, load this pack as a custom node, run API-format prompts
through ComfyUI's own validation and PromptExecutor — the way its server runs them, without a server.

Used by the headless comparison (`python -m headless.compare`) and by the integration tests.
"""
from __future__ import annotations

import asyncio
import itertools
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

PACK_DIR = Path(__file__).resolve().parents[1]


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
class Runtime:
    comfy_path: Path
    _ids: Any = field(default_factory=lambda: itertools.count(1))

    @property
    def version(self) -> str:
        import comfyui_version

        return comfyui_version.__version__

    def validate(self, prompt: dict) -> list[str]:
        import execution

        ok, error, outputs, node_errors = asyncio.run(execution.validate_prompt(f"v{next(self._ids)}", prompt, None))
        if not ok:
            raise PromptInvalid(f"{error}\n{node_errors}")
        return outputs

    def run(self, prompt: dict) -> dict:
        """Validate and execute like the server; the UI outputs per node id, or PromptFailed.

        Every prompt gets a fresh executor: nothing is cached between prompts.
        """
        import execution

        outputs = self.validate(prompt)
        executor = execution.PromptExecutor(_ServerStub(), cache_type=execution.CacheType.CLASSIC,
                                            cache_args={"lru": 0, "ram": 0.0})
        executor.execute(prompt, f"run{next(self._ids)}", {"client_id": None}, outputs)
        if not executor.success:
            for event, data in executor.status_messages:
                if event == "execution_error":
                    raise PromptFailed(data.get("exception_type", "?"), data.get("exception_message", ""),
                                       data.get("node_type"))
            raise PromptFailed("unknown", str(executor.status_messages), None)
        return executor.history_result["outputs"]

    def load_custom_node(self, path: Path) -> None:
        import nodes

        if not asyncio.run(nodes.load_custom_node(str(path))):
            raise RuntimeError(f"ComfyUI refused to load the custom node {path} (see the log above)")


_RUNTIME: Runtime | None = None


def start(comfy_path: str | os.PathLike, argv: tuple[str, ...] = (), *, load_pack: Path | None = PACK_DIR,
          before_nodes=None, user_model_paths: bool = True) -> Runtime:
    """Import ComfyUI from `comfy_path` with its command-line `argv` (e.g. '--cpu'), init its nodes, load this pack.

    With `user_model_paths`, the checkout's extra_model_paths.yaml is read as main.py reads it, so models kept in
    other folders are found headless too.

    `before_nodes(folder_paths)` runs after ComfyUI is imported and before any node is loaded (model folders).
    Only one ComfyUI can live in a process: a second call returns the first runtime.
    """
    global _RUNTIME
    if _RUNTIME is not None:
        return _RUNTIME
    comfy_path = Path(comfy_path).resolve()
    if not (comfy_path / "comfy").is_dir() or not (comfy_path / "nodes.py").is_file():
        raise RuntimeError(f"{comfy_path} is not a ComfyUI checkout (no comfy/ folder and nodes.py)")
    sys.path.insert(0, str(comfy_path))
    # This pack holds a package named `nodes`: ComfyUI's own nodes.py must own that name.
    sys.modules.pop("nodes", None)
    saved, sys.argv = sys.argv, [sys.argv[0], *argv]
    try:
        import comfy.options

        comfy.options.enable_args_parsing()
        import comfy.cli_args  # noqa: F401  (parses argv)
    finally:
        sys.argv = saved

    import comfy.utils
    import folder_paths
    # ComfyUI's `utils` package before nodes.py puts comfy/ first on sys.path (where `utils` is comfy/utils.py),
    # as main.py does
    import utils.extra_config
    import nodes

    if Path(nodes.__file__).resolve().parent != comfy_path:
        raise RuntimeError(f"imported the wrong `nodes` module ({nodes.__file__}); is {comfy_path} ComfyUI?")
    comfy.utils.PROGRESS_BAR_ENABLED = False
    extra = comfy_path / "extra_model_paths.yaml"
    if user_model_paths and extra.is_file():
        utils.extra_config.load_extra_path_config(str(extra))
    if before_nodes is not None:
        before_nodes(folder_paths)
    asyncio.run(nodes.init_extra_nodes(init_custom_nodes=False, init_api_nodes=False))
    runtime = Runtime(comfy_path=comfy_path)
    if load_pack is not None:
        runtime.load_custom_node(load_pack)
    _RUNTIME = runtime
    return runtime
