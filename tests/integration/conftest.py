"""The integration tier: nodes run inside ComfyUI's own validation and executor (see sdatest.comfy_host).

Runs where COMFYUI_PATH names a ComfyUI checkout (the README's test command provides 0.3.75). Elsewhere it
skips with a one-line reason — except under CI, where a missing ComfyUI is a failure.
"""
from __future__ import annotations

import os

import pytest

from sdatest import comfy_host, tiny_models


def pytest_collection_modifyitems(config, items):
    for item in items:
        if "tests/integration" in str(item.fspath).replace(os.sep, "/"):
            item.add_marker(pytest.mark.integration)


@pytest.fixture(scope="session")
def comfy() -> comfy_host.ComfyHost:
    path = comfy_host.comfy_path_from_env()
    if path is None:
        reason = "COMFYUI_PATH is not set: no ComfyUI to run the integration tier in (the README's test command sets it)"
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)
    return comfy_host.boot(path)


@pytest.fixture
def loras(comfy):
    """ComfyUI's loras folder for this session (files written here show up in the combo widgets)."""
    return comfy.folder("loras")


@pytest.fixture(scope="session")
def lpips_weights(comfy):
    """A random-weight AlexNet backbone in the session's models/lpips (LPIPS never downloads in tests)."""
    return tiny_models.write_lpips_backbone(comfy.folder("lpips"))
