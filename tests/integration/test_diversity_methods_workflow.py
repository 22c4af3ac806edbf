"""workflows/diversity_methods_compared.json inside ComfyUI's executor with tiny models: every method's grid
runs and lands as a row of the one Diversity Compare table — with the base-model row muted as shipped, and
unmuted as a user with the base Z-Image would run it."""
from __future__ import annotations

import copy
import json
from typing import Any

import pytest

from sdatest.workflow_api import TINY_LOADERS, WORKFLOWS_DIR, tiny_variant, to_api, write_tiny_model_files
from workflow_compiler import VIRTUAL_TYPES, node_defs

NAME = "diversity_methods_compared"
LABELS = ["Turbo", "+ SDA", "+ SDA steps 1-2", "+ cond. noise", "+ CADS"]


@pytest.fixture(scope="module")
def shipped() -> dict[str, Any]:
    return json.loads((WORKFLOWS_DIR / f"{NAME}.json").read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def defs(comfy, shipped) -> dict[str, dict[str, Any]]:
    types = {n["type"] for n in shipped["nodes"]} | {tiny for tiny, _ in TINY_LOADERS.values()}
    return node_defs(types - VIRTUAL_TYPES)


@pytest.fixture(scope="module")
def model_files(comfy):
    return write_tiny_model_files(comfy.root / "models")


def _table(prompt: dict, outputs: dict) -> str:
    (table,) = [t for i, n in prompt.items() if n["class_type"] == "PreviewAny" for t in outputs[i]["text"]]
    return table


def _rows(table: str) -> list[str]:
    body = [line for line in table.splitlines() if line.startswith("| ") and "---" not in line][1:]
    return [line.split("|")[1].strip() for line in body]


def test_shipped_workflow_runs_five_methods_into_one_table(comfy, shipped, defs, model_files):
    prompt = to_api(tiny_variant(shipped, defs), defs)
    assert "SDAModelByStep" not in {n["class_type"] for n in prompt.values()}, "the base-model row ships muted"
    outputs = comfy.run(prompt)
    grids = [i for i, n in prompt.items() if n["class_type"] == "SDASeedDiversityGrid"]
    assert len(grids) == 5
    assert _rows(_table(prompt, outputs)) == LABELS


def test_unmuted_base_model_row_joins_the_table(comfy, shipped, defs, model_files):
    workflow = copy.deepcopy(shipped)
    muted = [n for n in workflow["nodes"] if n.get("mode") == 2]
    assert {n["type"] for n in muted} == {"UNETLoader", "ModelSamplingAuraFlow", "SDAModelByStep",
                                         "SDASeedDiversityGrid"}
    for node in muted:
        node["mode"] = 0
    prompt = to_api(tiny_variant(workflow, defs), defs)
    outputs = comfy.run(prompt)
    assert _rows(_table(prompt, outputs)) == [*LABELS, "+ base step 1"]
