"""The README stays a map a newcomer can trust: its node table lists every node the registry hands to
ComfyUI, and every path its module map names exists."""
from __future__ import annotations

import re
from pathlib import Path

from sdatest.pack_source import registered_node_ids

REPO = Path(__file__).resolve().parents[2]
README = (REPO / "README.md").read_text(encoding="utf-8")


def _section(title: str) -> str:
    match = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## )", README, flags=re.MULTILINE | re.DOTALL)
    assert match, f"README has no '## {title}' section"
    return match.group(1)


def test_node_table_has_a_row_for_every_registered_node():
    rows = re.findall(r"^\| `(SDA\w+)` \| (.+) \|$", _section("Nodes"), flags=re.MULTILINE)
    assert sorted(node_id for node_id, _ in rows) == sorted(registered_node_ids())
    assert all(purpose.strip() for _, purpose in rows)


def test_module_map_names_only_paths_that_exist():
    section = _section("Module map")
    named = re.findall(r"`([\w./]+)`", section)
    assert len(named) > 20
    roots = {"nodes/", "headless/", "sda_core/", "sda_core/adapters/", "sda_core/diversity/", "sda_core/methods/",
             "sda_core/training/", "scripts/", "tests/"}
    missing = []
    for name in named:
        # a bare file name belongs to the folder of the bullet it is in: look for it anywhere in those
        candidates = [REPO / name] + [REPO / root / name for root in roots]
        if not any(path.exists() for path in candidates):
            missing.append(name)
    assert not missing, f"README module map names paths that do not exist: {missing}"
