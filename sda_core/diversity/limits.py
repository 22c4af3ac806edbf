"""The ranges the grid and compare nodes accept, in one place: the widgets and the headless CLI check the same."""
from __future__ import annotations

MIN_ROWS, MAX_ROWS = 2, 8  # results one Diversity Compare takes
SIZE = (64, 4096)  # width and height in pixels
NUM_SEEDS = (2, 256)
STEPS = (1, 200)
CFG = (0.0, 30.0)
BATCH_SIZE = (1, 64)
