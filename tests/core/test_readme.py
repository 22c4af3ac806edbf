"""The README stays a map a newcomer can trust: its node table lists every node the registry hands to
ComfyUI, its architecture table names every node and every tiny architecture the tests build (and only test
modules that exist), and every path its module map names exists."""
from __future__ import annotations

import re
from pathlib import Path

from sdatest import tiny_archs
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


def test_architecture_table_covers_every_node_and_every_tiny_architecture():
    """Issue 15: a row per architecture the integration tier builds a tiny model of (tests/sdatest/tiny_archs.py,
    plus Z-Image), a column naming each registered node, and cells grounded in test modules that exist."""
    section = _section("Architectures")
    rows = re.findall(r"^\| ([^|]+) \| (`\w+`|—) \|(.*)\|$", section, flags=re.MULTILINE)
    tiny = [name.strip("`") for _, name, _ in rows if name != "—"]
    assert sorted(tiny) == sorted({*tiny_archs.ARCHS, "zimage"}), f"rows for {tiny}"
    assert any(name == "—" and "other" in arch for arch, name, _ in rows), "no row for the other models ComfyUI runs"
    named = set(re.findall(r"`(SDA\w+)`", section))
    assert named == registered_node_ids(), f"nodes not in the table: {registered_node_ids() - named}; " \
                                           f"not registered: {named - registered_node_ids()}"
    modules = dict(re.findall(r"^- ([A-Z]) `(tests/[\w/]+\.py)`", section, flags=re.MULTILINE))
    assert len(modules) >= 5
    missing = sorted(path for path in modules.values() if not (REPO / path).is_file())
    assert not missing, f"the architecture table cites test modules that do not exist: {missing}"
    for arch, name, cells in rows:
        cited = cells.split("|")[-1].split()
        assert set(cited) <= set(modules) | {"—"}, f"{arch}: cites {cited}, tests are {sorted(modules)}"
        if name != "—":
            assert cited and "—" not in cited, f"{arch}: a tested row must cite its tests"
