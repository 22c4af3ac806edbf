"""Seed-diversity metrics for image batches: pairwise LPIPS, Vendi, pixel std, sharpness, grids.

Pure PyTorch/NumPy/Pillow + the `lpips` package; the ComfyUI node layer wraps these functions.
"""
from .grid import GridLayout, RowsLayout, compose_rows, draw_heatmap, draw_seed_grid, layout_rows
from .images import prepare_images, stack_images, validate_images
from .lpips_pairs import PairwiseLPIPS, avg_pairwise, offdiagonal
from .scores import (
    DEFINITIONS,
    DiversityScores,
    definitions_markdown,
    lpips_kernel,
    Recovery,
    jackknife_se,
    pixel_std,
    recovery,
    score_batch,
    sharpness,
    vendi_score,
)
from .table import comparison_rows, markdown_table, setting_warnings
from .weights import BACKBONES, LPIPSWeightsError, find_backbone_file, load_lpips

__all__ = [
    "BACKBONES",
    "DEFINITIONS",
    "DiversityScores",
    "GridLayout",
    "LPIPSWeightsError",
    "PairwiseLPIPS",
    "RowsLayout",
    "avg_pairwise",
    "compose_rows",
    "definitions_markdown",
    "draw_heatmap",
    "draw_seed_grid",
    "find_backbone_file",
    "layout_rows",
    "load_lpips",
    "lpips_kernel",
    "markdown_table",
    "offdiagonal",
    "pixel_std",
    "prepare_images",
    "recovery",
    "Recovery",
    "jackknife_se",
    "comparison_rows",
    "setting_warnings",
    "score_batch",
    "sharpness",
    "stack_images",
    "validate_images",
    "vendi_score",
]
