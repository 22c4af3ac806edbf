"""Fixtures every tier shares (tier-specific ones live in tests/<tier>/conftest.py; helpers in tests/sdatest/)."""
from __future__ import annotations

import json
from typing import Any

import pytest
import torch

from sdatest.workflow_api import WORKFLOWS_DIR

SHIPPED_WORKFLOWS = sorted(WORKFLOWS_DIR.glob("*.json"))


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread for a module (opt in with `pytestmark = pytest.mark.usefixtures("one_thread")`).

    Tiny ops: on the shared 2-core machines a second thread mostly waits (20x slower under load); and runs
    compared bit for bit within a module must use the same thread count (reduction order)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(params=SHIPPED_WORKFLOWS, ids=[p.stem for p in SHIPPED_WORKFLOWS])
def shipped(request) -> tuple[str, dict[str, Any]]:
    """Each workflow in workflows/, as (name, parsed UI-format JSON)."""
    return request.param.stem, json.loads(request.param.read_text(encoding="utf-8"))


@pytest.fixture
def workflow(shipped) -> dict[str, Any]:
    return shipped[1]
