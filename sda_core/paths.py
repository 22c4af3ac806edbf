"""File names typed into widgets stay inside the folder they name: one guard for reading and writing."""
from __future__ import annotations

import os
import re


class PathEscapes(ValueError):
    """A file name that would leave its folder (absolute, '..', or a symlink pointing elsewhere)."""


# Characters Windows refuses in file names, and names it reserves for devices: refused on every platform, so a
# name that works here also works in a workflow opened on Windows (and files copied there).
WINDOWS_FORBIDDEN = set('<>:"|?*')
WINDOWS_RESERVED = {"CON", "PRN", "AUX", "NUL", *(f"COM{i}" for i in range(1, 10)), *(f"LPT{i}" for i in range(1, 10))}
WINDOWS_MAX_PATH = 259  # without the long-paths setting, a full path of 260 characters or more fails


def _name_max(folder: str) -> int:
    """The longest file name (bytes) this platform's file system takes in `folder` (255 almost everywhere)."""
    while folder and not os.path.isdir(folder):
        folder = os.path.dirname(folder)
    try:
        return int(os.pathconf(folder or ".", "PC_NAME_MAX"))
    except (AttributeError, OSError, ValueError):
        return 255  # Windows (NTFS: 255 UTF-16 units) and file systems that do not say


def check_new_file_name(root: str, name: str, longest_suffix: str = "") -> None:
    """Refuse, before anything is written, a name the platform cannot create under `root`.

    `name` may hold sub-folders ('a/b'); `longest_suffix` is the longest ending the caller will add to the last
    part (e.g. '_diverged_99.safetensors'), so a run is not lost at save time to a name too long. ValueError says
    which rule the name breaks and what would fit.
    """
    label = repr(name) if len(name) <= 60 else f"{name[:40]!r}… ({len(name)} characters)"
    parts = re.split(r"[\\/]", name)
    for i, part in enumerate(parts):
        bad = sorted({c for c in part if c in WINDOWS_FORBIDDEN or ord(c) < 32})
        if bad:
            shown = " ".join(repr(c) for c in bad)
            raise ValueError(f"{label}: the characters {shown} are not allowed in file names on Windows (refused on "
                             "every platform, so workflows and files move between them); use letters, digits, "
                             "'-', '_' or '.'")
        if part.split(".")[0].upper() in WINDOWS_RESERVED:
            raise ValueError(f"{label}: {part!r} is a device name on Windows and cannot be a file name; choose "
                             "another")
        if part not in ("", ".", "..") and part != part.rstrip(" ."):  # '.' and '..': path_inside's to judge
            raise ValueError(f"{label}: {part!r} ends with a space or a dot, which Windows drops from file names; "
                             "remove it")
        ending = longest_suffix if i == len(parts) - 1 else ""
        limit = _name_max(os.path.join(root, *parts[:i]))
        size = len((part + ending).encode("utf-8"))
        if size > limit:
            room = limit - len(ending.encode("utf-8"))
            raise ValueError(f"{label}: {'its last part' if len(parts) > 1 else 'it'} is {len(part.encode('utf-8'))} "
                             f"bytes long; with the "
                             f"{ending!r} added to it, the file name would be {size} bytes, over the {limit} this "
                             f"file system allows; shorten it to at most {room} bytes")
    full = os.path.join(os.path.abspath(root), name + longest_suffix)
    if os.name == "nt" and len(full) > WINDOWS_MAX_PATH:
        raise ValueError(f"{label}: the full path {full[:60]}… would be {len(full)} characters, over Windows' "
                         f"{WINDOWS_MAX_PATH}; shorten the name (or enable long paths in Windows)")


def path_inside(root: str, name: str) -> str:
    """The real path of `name` under `root`; PathEscapes if it is empty or leaves `root`. Existence is not checked."""
    name = "" if name is None else str(name)
    if not name.strip() or name.strip() in {".", ".."}:
        raise PathEscapes(f"no file name given ({name!r}); choose a file inside {root}")
    if os.path.isabs(name) or name.startswith(("/", "\\")):
        raise PathEscapes(f"{name}: absolute paths are refused (they would point outside the models folder "
                          f"{root}); choose a file inside it")
    if re.match(r"^[A-Za-z]:", name):
        raise PathEscapes(f"{name}: starts with {name[:2]!r}, a Windows drive (it would point outside the models "
                          f"folder {root}); ':' cannot be part of a file name; choose a plain name inside it")
    if ".." in re.split(r"[\\/]", name):
        raise PathEscapes(f"{name}: '..' would escape to outside the models folder {root}; choose a file inside it")
    root_real = os.path.realpath(root)
    real = os.path.realpath(os.path.join(root_real, name))
    if os.path.commonpath([root_real, real]) != root_real or real == root_real:
        raise PathEscapes(f"{name}: resolves to {real}, outside the models folder {root} "
                          "(a symlink pointing elsewhere?); refused")
    return real
