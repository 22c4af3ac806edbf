"""Grid reports and the model-beside-model comparison, on made-up scores (no LPIPS run needed)."""
import json

import pytest
import torch

from sda_core.diversity.results import DiversityResult, compare_image, compare_results, grid_header, grid_report
from sda_core.diversity.scores import DiversityScores


def _result(label: str, avg: float, sharp: float = 0.01, n: int = 3) -> DiversityResult:
    matrix = torch.tensor([[0.0, avg - 0.1, avg + 0.1], [avg - 0.1, 0.0, avg], [avg + 0.1, avg, 0.0]], dtype=torch.float64)
    scores = DiversityScores(avg_lpips=avg, pixel_std=0.2, sharpness=sharp, vendi=2.0, n_images=n, net="alex",
                             resize=256, tau=0.5, lpips_min=avg - 0.1, lpips_max=avg + 0.1, lpips_mean=avg,
                             lpips_std=0.08, lpips_se=0.02)
    images = torch.rand(n, 16, 24, 3, generator=torch.Generator().manual_seed(len(label)))
    return DiversityResult(label=label, images=images, seeds=[10, 11, 12], scores=scores, matrix=matrix)


def test_card_numbers_give_the_card_recovery_and_rows_keep_their_order():
    results = [_result("teacher", 0.745), _result("turbo", 0.564, 0.02), _result("sda", 0.691, 0.01)]
    comparison = compare_results(results, baseline=2, teacher=1)
    assert [r["label"] for r in comparison.rows] == ["teacher", "turbo", "sda"]
    assert [r["role"] for r in comparison.rows] == ["teacher", "baseline", "candidate"]
    assert comparison.rows[2]["recovery"].value == pytest.approx(0.127 / 0.181)
    assert comparison.rows[2]["sharpness_rel"] == pytest.approx(0.5)
    assert "70.2 %" in comparison.table and "Definitions:" in comparison.table
    image = compare_image(comparison)
    assert image.shape[0] == 1 and image.shape[-1] == 3


def test_several_candidates_each_get_a_recovery_and_empty_inputs_are_skipped():
    results = [_result("turbo", 0.5), None, _result("first 2", 0.6), _result("teacher", 0.9)]
    comparison = compare_results(results + [_result("all steps", 0.7)], baseline=1, teacher=4)
    assert [r["label"] for r in comparison.rows] == ["turbo", "first 2", "teacher", "all steps"]
    assert "Recovery of first 2 = (first 2 − baseline)/(teacher − baseline) = 25.0 %" in comparison.table
    assert "Recovery of all steps" in comparison.table and "= 50.0 %" in comparison.table


def test_recovery_is_na_when_the_teacher_is_less_diverse_and_rows_that_differ_are_warned():
    """A candidate at 0.45 between a baseline at 0.5 and a teacher at 0.4 lost diversity: not '50.0 %'."""
    smaller = _result("other size", 0.45)
    smaller.images = smaller.images[:, :8]
    comparison = compare_results([_result("turbo", 0.5), smaller, _result("teacher", 0.4)], baseline=1, teacher=3)
    assert "50.0 %" not in comparison.table and "%" not in comparison.table.split("Definitions:")[0]
    assert "Recovery of other size = (other size − baseline)/(teacher − baseline) = n/a (the teacher (0.400) is " \
           "not more diverse than the baseline (0.500)" in comparison.table
    assert comparison.warnings == ["rows differ in image size (turbo: 24×16; other size: 24×8; teacher: 24×16): "
                                   "LPIPS and sharpness depend on resolution"]
    assert f"Warning: {comparison.warnings[0]}" in comparison.table
    tiny_gap = compare_results([_result("turbo", 0.5), _result("sda", 0.6), _result("teacher", 0.5 + 1e-9)],
                               baseline=1, teacher=3)
    assert "n/a (teacher - baseline = 1e-09 is within the scores' noise" in tiny_gap.table
    assert "%" not in tiny_gap.table.split("Definitions:")[0]


@pytest.mark.parametrize("results, baseline, teacher, message", [
    ([None, None], None, None, "at least 2 results"),
    (["a", None], None, None, "at least 2 results"),
    (["a", "b"], 3, None, "baseline is input 3, but result_3 is not connected"),
    (["a", "b"], 1, 1, "both input 1"),
])
def test_compare_errors(results, baseline, teacher, message):
    given = [None if r is None else _result(r, 0.5) for r in results]
    with pytest.raises(ValueError, match=message):
        compare_results(given, baseline=baseline, teacher=teacher)


def test_grid_report_summarises_the_matrix_and_states_definitions():
    result = _result("sda", 0.6)
    report = json.loads(grid_report(result))
    pairs = report["pairwise_lpips"]
    assert pairs["pairs"] == 3
    assert pairs["most_similar"] == {"seeds": [10, 11], "lpips": pytest.approx(0.5)}
    assert pairs["most_different"] == {"seeds": [10, 12], "lpips": pytest.approx(0.7)}
    assert set(report["definitions"]) >= {"avg_lpips", "pixel_std", "sharpness", "vendi"}
    header = grid_header("sda", {"steps": 8, "cfg": 1.0, "note": "one at a time"}, result.scores)
    assert header[0] == "sda" and "steps 8, cfg 1.0" == header[1] and header[-1] == "one at a time"
    assert "avg LPIPS 0.600" in header[2] and "pixel std 0.200" in header[2]
