"""The comparison table in the layout of the SDA model card (Markdown)."""
from __future__ import annotations

from typing import Mapping, Sequence

HEADER = (
    "| model | role | avg pairwise LPIPS (diversity) | pixel std (magnitude) "
    "| sharpness (rel. to baseline) | Vendi score |"
)


def _num(value: float | None, fmt: str) -> str:
    return "—" if value is None else format(value, fmt)


def _cell(text: object) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def markdown_table(rows: Sequence[Mapping], recovery: float | None) -> str:
    """Markdown table (one row per model, in order) plus the recovery line.

    Each row: label, role ('baseline', 'teacher' or anything else), avg_lpips, pixel_std,
    sharpness, vendi (missing or None -> '—'). The first 'baseline' row is the reference for the
    LPIPS difference and the relative sharpness.
    """
    base = next((r for r in rows if r.get("role") == "baseline"), None)
    lines = [HEADER, "|---|---|---|---|---|---|"]
    for r in rows:
        lp, sh = r.get("avg_lpips"), r.get("sharpness")
        lp_text = _num(lp, ".3f")
        sh_text = _num(sh, ".4g")
        if base is not None and r is not base:
            if lp is not None and base.get("avg_lpips") is not None:
                lp_text += f" ({lp - base['avg_lpips']:+.3f})"
            if sh is not None and base.get("sharpness"):
                sh_text += f" (×{sh / base['sharpness']:.2f})"
        elif r is base and sh is not None:
            sh_text += " (×1.00)"
        cells = [r.get("label", ""), r.get("role", ""), lp_text, _num(r.get("pixel_std"), ".3f"), sh_text,
                 _num(r.get("vendi"), ".2f")]
        lines.append("| " + " | ".join(_cell(c) for c in cells) + " |")
    value = "n/a" if recovery is None else f"{recovery * 100:.1f} %"
    lines += ["", f"Recovery = (SDA − baseline)/(teacher − baseline) = {value}"]
    return "\n".join(lines)
