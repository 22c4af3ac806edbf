"""Writes that land whole or not at all: a crash, a full disk or a dropped download never leaves a
half-written file under the final name."""
from __future__ import annotations

import contextlib
import os
import tempfile
from typing import Iterator

__all__ = ["atomic_path", "atomic_write_text", "reserve_new_path", "claim_new_path"]


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, mode: int = 0o644) -> Iterator[str]:
    """Yield a temp file's path beside `path`; when the block succeeds it is renamed onto `path`, else removed.

    `mode`: mkstemp's 0600 would hide the file from other users of a shared models folder.
    """
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".sda-", suffix=".tmp", dir=folder)
    os.close(fd)
    try:
        yield tmp
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """UTF-8 text through `atomic_path`."""
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        f.write(text)


def reserve_new_path(path: str | os.PathLike) -> str:
    """Create an empty placeholder at `path`, or `stem_1.ext`, `stem_2.ext`…: the first name nobody holds.

    O_CREAT|O_EXCL makes the claim race-free, so two saves never write the same name.
    """
    path = os.fspath(path)
    stem, ext = os.path.splitext(path)
    n = 0
    while True:
        candidate = path if n == 0 else f"{stem}_{n}{ext}"
        try:
            fd = os.open(candidate, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            n += 1
            continue
        os.close(fd)
        return candidate


@contextlib.contextmanager
def claim_new_path(path: str | os.PathLike) -> Iterator[str]:
    """A name nobody holds (`reserve_new_path`) for the block to fill, atomically; if the block fails, its
    empty placeholder goes too, so a failed save leaves nothing behind."""
    claimed = reserve_new_path(path)
    try:
        yield claimed
    except BaseException:
        if os.path.exists(claimed) and os.path.getsize(claimed) == 0:
            os.remove(claimed)
        raise
