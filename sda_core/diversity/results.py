"""One model's seed-diversity result, its report, and the model-beside-model comparison built from several.

What travels between the grid node and the compare node is a DiversityResult: the images, seeds, scores and
pairwise matrix of one model under one setting.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Sequence

import torch

from .clip_score import ClipScore
from .grid import compose_rows, draw_seed_grid
from .scores import DEFINITIONS, DiversityScores, definitions_markdown
from .table import comparison_rows, markdown_table, setting_warnings


@dataclass
class DiversityResult:
    label: str
    images: torch.Tensor  # IMAGE [N, H, W, 3] in [0, 1]
    seeds: list
    scores: DiversityScores
    matrix: torch.Tensor  # [N, N] pairwise LPIPS
    settings: dict[str, Any] = field(default_factory=dict)
    grid: torch.Tensor | None = None
    clip_score: ClipScore | None = None  # prompt fidelity, when CLIP towers were connected
    seconds_per_image: float | None = None  # sampling (and decoding) time per image, when measured

    @property
    def size(self) -> tuple[int, int]:
        """(width, height) of the images as rendered."""
        return int(self.images.shape[2]), int(self.images.shape[1])

    def entry(self) -> dict[str, Any]:
        """This result as one row of a comparison (sda_core.diversity.table)."""
        return {**self.scores.to_dict(), "label": self.label, "seeds": list(self.seeds), "size": self.size,
                "clip_score": self.clip_score.mean if self.clip_score is not None else None,
                "seconds_per_image": self.seconds_per_image}

    def draw_grid(self, header_lines: Sequence[str]) -> torch.Tensor:
        grid, _ = draw_seed_grid(self.images, self.seeds, header_lines)
        return grid


def score_lines(scores: DiversityScores) -> list[str]:
    return [
        f"avg LPIPS {scores.avg_lpips:.3f}  ·  pixel std {scores.pixel_std:.3f}",
        f"sharpness {scores.sharpness:.4g}  ·  Vendi {scores.vendi:.2f} of {scores.n_images}",
    ]


def grid_header(label: str, settings: dict[str, Any], scores: DiversityScores,
                clip_score: ClipScore | None = None) -> list[str]:
    shown = ", ".join(f"{k} {v}" for k, v in settings.items() if k != "note")
    lines = [label, shown, *score_lines(scores)]
    if clip_score is not None:
        lines.append(clip_score.line())
    if settings.get("note"):
        lines.append(settings["note"])
    return lines


def _pair_summary(matrix: torch.Tensor, seeds: Sequence) -> dict[str, Any]:
    n = matrix.shape[0]
    iu = torch.triu_indices(n, n, offset=1)
    values = matrix[iu[0], iu[1]]
    lo, hi = int(values.argmin()), int(values.argmax())

    def pair(k: int) -> dict[str, Any]:
        i, j = int(iu[0][k]), int(iu[1][k])
        return {"seeds": [seeds[i], seeds[j]], "lpips": float(values[k])}

    return {"pairs": int(values.numel()), "min": float(values.min()), "max": float(values.max()),
            "mean": float(values.mean()), "std": float(values.std(correction=0)),
            "most_similar": pair(lo), "most_different": pair(hi)}


def grid_report(result: DiversityResult) -> str:
    """The JSON report of one grid: settings, seeds, scores, a summary of the pairwise matrix, definitions."""
    return json.dumps({
        "label": result.label,
        "settings": result.settings,
        "seeds": list(result.seeds),
        "scores": result.scores.to_dict(),
        "seconds_per_image": result.seconds_per_image,
        "pairwise_lpips": _pair_summary(result.matrix, result.seeds),
        **({"clip_score": result.clip_score.to_dict()} if result.clip_score is not None else {}),
        "definitions": DEFINITIONS,
    }, indent=2)


@dataclass
class Comparison:
    results: list[DiversityResult]
    roles: list[str]
    rows: list[dict[str, Any]]
    warnings: list[str]
    table: str


def compare_results(results: Sequence[DiversityResult | None], baseline: int | None = None,
                    teacher: int | None = None) -> Comparison:
    """Rows in the given order (inputs left empty are skipped); recovery for each candidate row when both a
    baseline and a teacher are marked. `baseline`/`teacher` are 1-based input positions."""
    given = [(k, r) for k, r in enumerate(results, start=1) if r is not None]
    if len(given) < 2:
        raise ValueError(f"Diversity Compare needs at least 2 results, got {len(given)}")
    positions = [k for k, _ in given]
    for name, index in (("baseline", baseline), ("teacher", teacher)):
        if index is not None and index not in positions:
            raise ValueError(f"{name} is input {index}, but result_{index} is not connected")
    if baseline is not None and baseline == teacher:
        raise ValueError(f"baseline and teacher are both input {baseline}; mark two different inputs")
    rows = comparison_rows([r.entry() for _, r in given],
                           baseline=positions.index(baseline) if baseline is not None else None,
                           teacher=positions.index(teacher) if teacher is not None else None)
    warnings = setting_warnings(rows)
    table = markdown_table(rows, warnings) + "\n\nDefinitions:\n" + definitions_markdown()
    return Comparison(results=[r for _, r in given], roles=[row["role"] for row in rows], rows=rows,
                      warnings=warnings, table=table)


def _side_text(row: dict[str, Any]) -> list[str]:
    lines = [f"{row['label']} ({row['role']})", f"avg LPIPS {row['avg_lpips']:.3f}", f"pixel std {row['pixel_std']:.3f}"]
    sharp = f"sharpness {row['sharpness']:.4g}"
    if row["sharpness_rel"] is not None and row["role"] != "baseline":
        sharp += f" (×{row['sharpness_rel']:.2f} baseline)"
    lines += [sharp, f"Vendi {row['vendi']:.2f}"]
    if row.get("clip_score") is not None:
        lines.append(f"CLIP score {row['clip_score']:.1f}")
    if row["recovery"] is not None:
        lines.append(f"recovery {row['recovery'].text() if row['recovery'].value is not None else 'n/a'}")
    if row.get("seconds_per_image") is not None:
        lines.append(f"{row['seconds_per_image']:.3g} s / image")
    return lines


def compare_image(comparison: Comparison) -> torch.Tensor:
    """One row per model (its grid, or its images tiled), scores in a side panel."""
    rows = []
    for result, row in zip(comparison.results, comparison.rows):
        grid = result.grid if result.grid is not None else result.draw_grid([result.label])
        rows.append((grid, _side_text(row)))
    return compose_rows(rows, ["Seed diversity, model beside model", *(f"Warning: {w}" for w in comparison.warnings)])
