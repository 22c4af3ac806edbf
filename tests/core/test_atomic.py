"""Writes land whole or not at all, and a new name never takes an existing file's place."""
import os
import stat

import pytest

from sda_core.atomic import atomic_path, atomic_write_text, claim_new_path, reserve_new_path


def _names(folder):
    return sorted(p.name for p in folder.iterdir())


def test_atomic_write_replaces_whole_and_leaves_no_temp(tmp_path):
    target = tmp_path / "t.md"
    target.write_text("old")
    atomic_write_text(target, "new ✓")
    assert target.read_text(encoding="utf-8") == "new ✓" and _names(tmp_path) == ["t.md"]
    assert stat.S_IMODE(os.stat(target).st_mode) == 0o644


def test_a_failed_write_keeps_the_old_file_and_removes_the_temp(tmp_path):
    target = tmp_path / "t.md"
    target.write_text("old")
    with pytest.raises(RuntimeError, match="disk full"):
        with atomic_path(target) as tmp:
            with open(tmp, "w") as f:
                f.write("half")
            raise RuntimeError("disk full")
    assert target.read_text() == "old" and _names(tmp_path) == ["t.md"]


def test_reserve_new_path_numbers_past_existing_names(tmp_path):
    (tmp_path / "a.md").write_text("x")
    (tmp_path / "a_1.md").write_text("y")
    assert reserve_new_path(tmp_path / "a.md") == str(tmp_path / "a_2.md")
    assert (tmp_path / "a_2.md").read_text() == "" and (tmp_path / "a.md").read_text() == "x"
    assert reserve_new_path(str(tmp_path / "b.md")) == str(tmp_path / "b.md")


def test_a_claimed_name_is_released_when_its_write_fails(tmp_path):
    (tmp_path / "a.md").write_text("x")
    with pytest.raises(RuntimeError, match="disk full"):
        with claim_new_path(tmp_path / "a.md") as claimed:
            assert claimed == str(tmp_path / "a_1.md")
            raise RuntimeError("disk full")
    assert _names(tmp_path) == ["a.md"]
    with claim_new_path(tmp_path / "a.md") as claimed:
        atomic_write_text(claimed, "y")
    assert _names(tmp_path) == ["a.md", "a_1.md"] and (tmp_path / "a_1.md").read_text() == "y"
