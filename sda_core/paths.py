"""File names typed into widgets stay inside the folder they name: one guard for reading and writing."""
from __future__ import annotations

import os
import re


class PathEscapes(ValueError):
    """A file name that would leave its folder (absolute, '..', or a symlink pointing elsewhere)."""


def path_inside(root: str, name: str) -> str:
    """The real path of `name` under `root`; PathEscapes if it is empty or leaves `root`. Existence is not checked."""
    name = "" if name is None else str(name)
    if not name.strip() or name.strip() in {".", ".."}:
        raise PathEscapes(f"no file name given ({name!r}); choose a file inside {root}")
    if os.path.isabs(name) or re.match(r"^[A-Za-z]:", name) or name.startswith(("/", "\\")):
        raise PathEscapes(f"{name}: absolute paths are refused (they would point outside the models folder "
                          f"{root}); choose a file inside it")
    if ".." in re.split(r"[\\/]", name):
        raise PathEscapes(f"{name}: '..' would escape to outside the models folder {root}; choose a file inside it")
    root_real = os.path.realpath(root)
    real = os.path.realpath(os.path.join(root_real, name))
    if os.path.commonpath([root_real, real]) != root_real or real == root_real:
        raise PathEscapes(f"{name}: resolves to {real}, outside the models folder {root} "
                          "(a symlink pointing elsewhere?); refused")
    return real
