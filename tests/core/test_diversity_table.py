"""The comparison table: the SDA card's layout, a recovery line per candidate, warnings when rows differ."""
import pytest

from sda_core.diversity.table import comparison_rows, markdown_table, setting_warnings

CARD = [
    dict(label="8-step baseline (collapsed)", avg_lpips=0.564, lpips_se=0.01, pixel_std=0.190, sharpness=0.0125,
         vendi=4.2),
    dict(label="8-step + SDA LoKr", avg_lpips=0.691, lpips_se=0.01, pixel_std=0.209, sharpness=0.0150, vendi=7.9),
    dict(label="50-step teacher", avg_lpips=0.745, lpips_se=0.01, pixel_std=0.243, sharpness=0.0100, vendi=None),
]


def test_markdown_table_like_the_sda_card():
    table = markdown_table(comparison_rows(CARD, baseline=0, teacher=2))
    lines = table.splitlines()
    assert lines[0] == ("| model | role | avg pairwise LPIPS (diversity) | Vendi score | pixel std (magnitude) "
                        "| sharpness (rel. to baseline) | recovery |")
    assert lines[2] == "| 8-step baseline (collapsed) | baseline | 0.564 | 4.20 | 0.190 | 0.0125 (×1.00) | — |"
    assert lines[3] == "| 8-step + SDA LoKr | candidate | 0.691 (+0.127) | 7.90 | 0.209 | 0.015 (×1.20) | 70.2 % |"
    assert lines[4] == "| 50-step teacher | teacher | 0.745 (+0.181) | — | 0.243 | 0.01 (×0.80) | — |"
    assert lines[-1] == "Recovery of 8-step + SDA LoKr = (8-step + SDA LoKr − baseline)/(teacher − baseline) = 70.2 %"
    assert markdown_table(comparison_rows(CARD, baseline=0)).splitlines()[-1] == \
        "Recovery: mark a baseline and a teacher to see the recovery."
    assert "a \\| b" in markdown_table([dict(label="a | b", role="x")])


def test_optional_columns_appear_when_a_row_has_them():
    rows = comparison_rows([dict(CARD[0], seconds_per_image=0.5, clip_score=31.25), CARD[1]], baseline=0)
    lines = markdown_table(rows).splitlines()
    assert lines[0].endswith("| CLIP score (prompt fidelity) | recovery | s / image |")
    assert lines[2].endswith("| 31.2 | — | 0.5 |") and lines[3].endswith("| — | — | — |")


def test_a_teacher_less_diverse_than_the_baseline_gives_no_percentage():
    entries = [dict(CARD[0], avg_lpips=0.5), dict(CARD[1], avg_lpips=0.45), dict(CARD[2], avg_lpips=0.4)]
    table = markdown_table(comparison_rows(entries, baseline=0, teacher=2))
    assert "%" not in table
    assert "= n/a (the teacher (0.400) is not more diverse than the baseline (0.500)" in table


@pytest.mark.parametrize("changes, message", [
    ({"seeds": [1, 2]}, "rows differ in seed count (a: 3; b: 2)"),
    ({"seeds": [1, 2, 4]}, "rows use different seeds (a: 1, 2, 3; b: 1, 2, 4)"),
    ({"size": (64, 128)}, "rows differ in image size (a: 64×64; b: 64×128)"),
])
def test_rows_that_differ_in_seeds_counts_or_sizes_are_warned(changes, message):
    a = dict(label="a", avg_lpips=0.5, sharpness=0.1, seeds=[1, 2, 3], size=(64, 64))
    rows = comparison_rows([a, dict(a, label="b", **changes)], baseline=0)
    warnings = setting_warnings(rows)
    assert len(warnings) == 1 and warnings[0].startswith(message)
    assert markdown_table(rows, warnings).splitlines()[-1] == f"Warning: {warnings[0]}"
    assert setting_warnings(comparison_rows([a, dict(a, label="b")])) == []
