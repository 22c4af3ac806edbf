"""Every node of the pack explains itself where users meet it: walked through ComfyUI's node registry after
the pack was loaded as the server loads it, in the definitions the frontend receives (GET /object_info).

Each input and output has a tooltip (hovering a widget tells its unit, what its range means, why its
default), and each display name carries "SDA", so a node search for "SDA" finds the whole pack.
"""
from __future__ import annotations

from typing import Any

import pytest

from sdatest.pack_source import registered_node_ids
from workflow_compiler import node_info

PACK_MODULE = "custom_nodes.comfyui-sda"  # the pack's folder name in the test host's custom_nodes/
INPUT_SECTIONS = ("required", "optional")  # "hidden" inputs are the server's, never shown


@pytest.fixture(scope="module")
def pack_nodes(comfy) -> dict[str, dict[str, Any]]:
    """Definition of every node type the pack registered, by node id."""
    import nodes

    ours = sorted(node_id for node_id, cls in nodes.NODE_CLASS_MAPPINGS.items()
                  if getattr(cls, "RELATIVE_PYTHON_MODULE", None) == PACK_MODULE)
    assert "SDALoKrLoader" in ours, f"the pack's nodes were not found under {PACK_MODULE}: {ours}"
    return {node_id: node_info(node_id) for node_id in ours}


def _missing_tooltips(info: dict[str, Any]) -> list[str]:
    missing = []
    for section in INPUT_SECTIONS:
        for name, spec in info.get("input", {}).get(section, {}).items():
            options = spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}
            if not str(options.get("tooltip") or "").strip():
                missing.append(f"input {name}")
    tooltips = list(info.get("output_tooltips") or [])
    for index, name in enumerate(info.get("output_name") or info.get("output") or []):
        if index >= len(tooltips) or not str(tooltips[index] or "").strip():
            missing.append(f"output {name}")
    return missing


def test_the_walk_sees_every_node_the_registry_lists(pack_nodes):
    """The walk is only as good as its node list: it must hold what nodes/registry.py hands to ComfyUI."""
    assert set(pack_nodes) == registered_node_ids()


def test_every_input_and_output_has_a_tooltip(pack_nodes):
    missing = {node_id: gaps for node_id, info in pack_nodes.items() if (gaps := _missing_tooltips(info))}
    assert not missing, "no tooltip on: " + "; ".join(f"{n}: {', '.join(g)}" for n, g in sorted(missing.items()))


def test_every_display_name_carries_sda(pack_nodes):
    names = {node_id: info.get("display_name") or node_id for node_id, info in pack_nodes.items()}
    without = {node_id: name for node_id, name in names.items() if "SDA" not in name}
    assert not without, f"display names a search for 'SDA' does not find: {without}"
