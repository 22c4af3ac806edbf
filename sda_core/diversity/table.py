"""The comparison of several models, one row each: roles, recovery, warnings, and its Markdown table.

One home for the UI's Diversity Compare and the headless CLI: both hand in plain entries (a dict per model:
label, avg_lpips, lpips_se, vendi, pixel_std, sharpness, and when known clip_score, seconds_per_image,
seeds, size) and get the same rows and the same table.
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

from .scores import Recovery, recovery

# (row key, column title, format); columns whose key no row holds are left out (e.g. no CLIP score measured)
COLUMNS = (
    ("label", "model", None),
    ("role", "role", None),
    ("avg_lpips", "avg pairwise LPIPS (diversity)", ".3f"),
    ("vendi", "Vendi score", ".2f"),
    ("pixel_std", "pixel std (magnitude)", ".3f"),
    ("sharpness", "sharpness (rel. to baseline)", ".4g"),
    ("clip_score", "CLIP score (prompt fidelity)", ".1f"),
    ("recovery", "recovery", None),
    ("seconds_per_image", "s / image", ".3g"),
)
OPTIONAL_COLUMNS = {"clip_score", "seconds_per_image"}
NO_RECOVERY = "mark a baseline and a teacher to see the recovery"


def comparison_rows(entries: Sequence[Mapping[str, Any]], baseline: int | None = None,
                    teacher: int | None = None) -> list[dict[str, Any]]:
    """Rows in the given order with role, recovery (a Recovery for each candidate when both a baseline and a
    teacher are marked, else None) and sharpness relative to the baseline. `baseline`/`teacher` are 0-based."""
    base = entries[baseline] if baseline is not None else None
    top = entries[teacher] if teacher is not None else None
    rows = []
    for k, entry in enumerate(entries):
        role = "baseline" if k == baseline else "teacher" if k == teacher else "candidate"
        row = dict(entry, role=role, recovery=None, sharpness_rel=None)
        if role == "candidate" and base is not None and top is not None:
            row["recovery"] = recovery(base["avg_lpips"], entry["avg_lpips"], top["avg_lpips"],
                                       base.get("lpips_se"), top.get("lpips_se"))
        if base is not None and base.get("sharpness"):
            row["sharpness_rel"] = entry["sharpness"] / base["sharpness"]
        rows.append(row)
    return rows


def _seed_text(seeds: Sequence) -> str:
    seeds = list(seeds)
    return ", ".join(map(str, seeds)) if len(seeds) <= 6 else f"{', '.join(map(str, seeds[:4]))}, … {seeds[-1]}"


def _differs(rows: Sequence[Mapping], key: str, show) -> str | None:
    """'label value, label value' when rows holding `key` do not all agree on it, else None."""
    held = [(r["label"], r[key]) for r in rows if r.get(key) is not None]
    if len({repr(v) for _, v in held}) < 2:
        return None
    return "; ".join(f"{label}: {show(v)}" for label, v in held)


def setting_warnings(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """Why rows may not be comparable: different seed counts, seeds or image sizes."""
    warnings = []
    counts = [dict(label=r["label"], n=len(r["seeds"])) for r in rows if r.get("seeds") is not None]
    by_count = _differs(counts, "n", str)
    if by_count:
        warnings.append(f"rows differ in seed count ({by_count}): avg LPIPS and Vendi over different numbers "
                        "of images are not comparable")
    else:
        by_seeds = _differs(rows, "seeds", _seed_text)
        if by_seeds:
            warnings.append(f"rows use different seeds ({by_seeds}): part of each difference is which seeds "
                            "were drawn; use one seed list for every row")
    by_size = _differs(rows, "size", lambda s: f"{s[0]}×{s[1]}")
    if by_size:
        warnings.append(f"rows differ in image size ({by_size}): LPIPS and sharpness depend on resolution")
    return warnings


def _num(value: float | None, fmt: str) -> str:
    return "—" if value is None else format(value, fmt)


def _cell(text: object) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _row_cells(row: Mapping[str, Any], base: Mapping[str, Any] | None, keys: Sequence[str]) -> list[str]:
    cells = []
    for key, _, fmt in (c for c in COLUMNS if c[0] in keys):
        value = row.get(key)
        if key == "recovery":
            text = "—" if value is None else "n/a" if value.value is None else value.text()
        elif fmt is None:
            text = "" if value is None else str(value)
        else:
            text = _num(value, fmt)
        if key == "avg_lpips" and base is not None and row is not base and value is not None:
            text += f" ({value - base['avg_lpips']:+.3f})"
        if key == "sharpness" and value is not None and row.get("sharpness_rel") is not None:
            text += f" (×{row['sharpness_rel']:.2f})"
        cells.append(_cell(text))
    return cells


def recovery_lines(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """One line per candidate: its recovery, or n/a and why."""
    candidates = [r for r in rows if r.get("role") == "candidate"]
    if not candidates:
        return []
    if all(r.get("recovery") is None for r in candidates):
        return [f"Recovery: {NO_RECOVERY}."]
    return [f"Recovery of {r['label']} = ({r['label']} − baseline)/(teacher − baseline) = {r['recovery'].text()}"
            for r in candidates]


def markdown_table(rows: Sequence[Mapping[str, Any]], warnings: Sequence[str] = ()) -> str:
    """Markdown table (one row per model, in order), then a recovery line per candidate, then the warnings.

    The first 'baseline' row is the reference for the LPIPS difference and the relative sharpness.
    """
    keys = [key for key, _, _ in COLUMNS if key not in OPTIONAL_COLUMNS or any(r.get(key) is not None for r in rows)]
    base = next((r for r in rows if r.get("role") == "baseline"), None)
    titles = [title for key, title, _ in COLUMNS if key in keys]
    lines = ["| " + " | ".join(titles) + " |", "|" + "---|" * len(titles)]
    lines += ["| " + " | ".join(_row_cells(r, base, keys)) + " |" for r in rows]
    extra = recovery_lines(rows) + [f"Warning: {w}" for w in warnings]
    return "\n".join(lines + ([""] + extra if extra else []))
