"""The repository explains itself: nothing in it cites a document or a path outside it (the method is
docs/method.md), and docs/method.md holds the numbered terms (1)–(7) the training code cites."""
from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
# Spelled in pieces so this file does not match itself.
OUTSIDE = ("SDA" + ".md", "../" + "shared", "/" + "work/")
NOT_THE_REPOS = {".git", "__pycache__", ".pytest_cache", ".venv", "test-artifacts"}  # git's and tools' files


def _text_files() -> list[Path]:
    return [path for path in REPO.rglob("*")
            if path.is_file() and not NOT_THE_REPOS & set(path.relative_to(REPO).parts)]


def test_no_file_refers_to_a_document_or_path_outside_the_repository():
    found = []
    for path in _text_files():
        try:
            text = path.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue  # binary
        for number, line in enumerate(text.splitlines(), start=1):
            if any(word in line for word in OUTSIDE):
                found.append(f"{path.relative_to(REPO)}:{number}: {line.strip()[:100]}")
    assert not found, "references outside the repository (cite docs/method.md instead):\n" + "\n".join(found)


def test_method_doc_holds_the_seven_numbered_terms_the_code_cites():
    text = (REPO / "docs" / "method.md").read_text(encoding="utf-8")
    numbered = [int(n) for n in re.findall(r"^\*\*\((\d)\)", text, flags=re.MULTILINE)]
    assert numbered == [1, 2, 3, 4, 5, 6, 7]
    cited = {int(n) for n in re.findall(r"\((\d)\)", (REPO / "sda_core" / "training" / "loss.py").read_text())}
    assert cited and cited <= set(numbered), f"loss.py cites terms {sorted(cited)}"


def test_method_doc_links_point_at_files_and_headings_that_exist():
    text = (REPO / "docs" / "method.md").read_text(encoding="utf-8")
    for target in re.findall(r"\]\(([^)]+)\)", text):
        file, _, anchor = target.partition("#")
        path = (REPO / "docs" / file).resolve()
        assert path.is_file(), f"docs/method.md links to a missing file: {target}"
        if anchor:
            headings = re.findall(r"^#+ (.+)$", path.read_text(encoding="utf-8"), flags=re.MULTILINE)
            slugs = {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-") for h in headings}
            assert anchor in slugs, f"docs/method.md links to a missing heading: {target}"
