"""The colours every image the pack draws shares (grids, heat-maps, comparison sheets, loss curves)."""
from __future__ import annotations

import numpy as np

BACKGROUND = (24, 24, 24)
FRAME = (90, 90, 90)  # axes, frames, the heat-map's diagonal
TEXT = (235, 235, 235)
MUTED = (150, 150, 150)
# Five anchor colours of the viridis scale (perceptually ordered, colour-blind safe).
VIRIDIS = np.array(
    [(68, 1, 84), (59, 82, 139), (33, 145, 140), (94, 201, 98), (253, 231, 37)], dtype=np.float64
)
