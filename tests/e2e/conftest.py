"""The browser tier: a real ComfyUI server (main.py) with the pack installed the way ComfyUI-Manager installs
it, driven through its real frontend in headless Chromium (Playwright, Debian's /usr/bin/chromium).

Install: a `git clone` of this repository into <base>/custom_nodes/comfyui-sda, with the working tree's
tracked and untracked (not ignored) files copied over it — so uncommitted work is what gets tested, in the
folder layout a clone gives — then `pip install` once per line of requirements.txt, as the Manager does.
The test-only nodes (tiny models) are a second custom-node folder; the server finds `sdatest` on PYTHONPATH.
Everything lives in a temporary --base-directory; the server is always stopped (its process group killed).
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import pytest

from sdatest.workflow_api import write_tiny_model_files

REPO = Path(__file__).resolve().parents[2]
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
ARTIFACTS = REPO / "test-artifacts" / "e2e"
SERVER_START_TIMEOUT = 120.0


def pytest_collection_modifyitems(config, items):
    for item in items:
        if "tests/e2e" in str(item.fspath).replace(os.sep, "/"):
            item.add_marker(pytest.mark.e2e)


def _skip_reason() -> str | None:
    if not os.environ.get("COMFYUI_PATH"):
        return "COMFYUI_PATH is not set: no ComfyUI server to start (the README's test command sets it)"
    if not CHROMIUM.exists():
        return f"{CHROMIUM} is missing: `apt-get install chromium` (CI's .ci/run does)"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "playwright is not installed (requirements-test.txt lists it)"
    return None


@dataclass
class Server:
    url: str
    base: Path
    log: Path
    version: str
    object_info: dict[str, Any]

    def get_json(self, path: str) -> Any:
        with urllib.request.urlopen(self.url + path, timeout=30) as response:
            return json.load(response)

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def install_like_manager(custom_nodes: Path) -> Path:
    """git clone + working-tree overlay into custom_nodes/comfyui-sda, then pip once per requirements line."""
    dest = custom_nodes / "comfyui-sda"
    subprocess.run(["git", "clone", "--quiet", "--no-hardlinks", str(REPO), str(dest)], check=True)
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                            check=True, capture_output=True).stdout.decode().split("\0")
    for rel in filter(None, listed):
        src, target = REPO / rel, dest / rel
        if src.is_file():
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, target)
        elif target.exists():  # deleted in the working tree, not yet committed
            target.unlink()
    for line in (dest / "requirements.txt").read_text().splitlines():
        requirement = line.split("#", 1)[0].strip()
        if requirement:
            subprocess.run([sys.executable, "-m", "pip", "install", "--disable-pip-version-check", "-q", requirement],
                           check=True)
    return dest


def _comfyui_dir(comfy_path: Path, scratch: Path) -> Path:
    """COMFYUI_PATH, or a copy of it without extra_model_paths.yaml (which main.py would read)."""
    if not (comfy_path / "extra_model_paths.yaml").exists():
        return comfy_path
    copy = scratch / "comfyui"
    shutil.copytree(comfy_path, copy, symlinks=True, ignore=shutil.ignore_patterns(
        "extra_model_paths.yaml", ".git", "models", "output", "input", "user", "custom_nodes", "temp"))
    return copy


def _prepare_base(base: Path) -> dict[str, str]:
    """Settings, the pack, the test-only nodes and model files in a fresh base directory; the server's env."""
    settings = base / "user" / "default" / "comfy.settings.json"
    settings.parent.mkdir(parents=True)
    settings.write_text(json.dumps({"Comfy.TutorialCompleted": True}))  # no Templates dialog over the canvas
    custom_nodes = base / "custom_nodes"
    custom_nodes.mkdir()
    pack = install_like_manager(custom_nodes)
    shutil.copytree(pack / "tests" / "sdatest", base / "testlib" / "sdatest",
                    ignore=shutil.ignore_patterns("comfy_nodes", "__pycache__"))
    shutil.copytree(pack / "tests" / "sdatest" / "comfy_nodes", custom_nodes / "sdatest_nodes",
                    ignore=shutil.ignore_patterns("__pycache__"))
    write_tiny_model_files(base / "models")
    env = dict(os.environ, PYTHONPATH=str(base / "testlib"), PYTHONUNBUFFERED="1")
    return env


def _wait_until_serving(url: str, process: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + SERVER_START_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"ComfyUI exited with {process.returncode} before serving; log {log}")
        try:
            with urllib.request.urlopen(url + "/object_info", timeout=5):
                return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            time.sleep(0.5)
    raise RuntimeError(f"ComfyUI did not serve {url} within {SERVER_START_TIMEOUT:.0f} s; log {log}")


def _stop(process: subprocess.Popen) -> None:
    if process.poll() is not None:
        return
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=15)


# Module scope, not session: Playwright's sync API keeps an asyncio loop running in this thread while it is
# open (asyncio.run in the in-process integration tier would fail), and the server should not outlive the tier.
@pytest.fixture(scope="module")
def server(tmp_path_factory) -> Iterator[Server]:
    reason = _skip_reason()
    if reason:
        pytest.skip(reason)
    comfy_path = Path(os.environ["COMFYUI_PATH"]).resolve()
    base = tmp_path_factory.mktemp("comfyui-base")
    env = _prepare_base(base)
    comfy_dir = _comfyui_dir(comfy_path, tmp_path_factory.mktemp("comfyui-copy"))
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    log = base / "server.log"
    command = [sys.executable, "main.py", "--cpu", "--listen", "127.0.0.1", "--port", str(port),
               "--base-directory", str(base), "--database-url", "sqlite:///:memory:"]
    with open(log, "wb") as out:
        process = subprocess.Popen(command, cwd=comfy_dir, env=env, stdout=out, stderr=subprocess.STDOUT,
                                   stdin=subprocess.DEVNULL, start_new_session=True)
    try:
        _wait_until_serving(url, process, log)
        version = (comfy_path / "comfyui_version.py").read_text().split('"')[1]
        info = json.load(urllib.request.urlopen(url + "/object_info", timeout=60))
        yield Server(url=url, base=base, log=log, version=version, object_info=info)
    finally:
        _stop(process)


@pytest.fixture(scope="module")
def browser(server):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture
def page(browser, server):
    """The ComfyUI page, loaded, with every node type registered; page errors collected in page.errors."""
    context = browser.new_context(viewport={"width": 1600, "height": 1000})
    page = context.new_page()
    page.errors = []
    page.on("pageerror", lambda error: page.errors.append(str(error)))
    try:
        page.goto(server.url)
        page.wait_for_function("() => window.app?.graph && window.LiteGraph?.registered_node_types"
                               " && 'SDALoKrLoader' in LiteGraph.registered_node_types", timeout=60_000)
        yield page
    finally:
        context.close()


@pytest.fixture(scope="module")
def artifacts(server) -> Path:
    folder = ARTIFACTS / server.version
    folder.mkdir(parents=True, exist_ok=True)
    return folder
