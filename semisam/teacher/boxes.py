"""The box rule for prompting the teacher with a region: the one box a mask gets, shared by every prompt maker.

The pseudo-labels (:mod:`semisam.pseudolabel.prompts`) box the student's predicted components with it, and the
grid analysis (:mod:`semisam.teacher.grid_analysis`) boxes the labeled structures with it, so both ask the
teacher the same question of a region.

Coordinates are segment-anything's frame of the original image: ``x`` = column (to the right), ``y`` = row
(down), in pixels. Pixel ``(row r, column c)`` covers ``[c, c + 1) x [r, r + 1)``, so a box is in *pixel-edge*
coordinates: the tight box of a mask whose columns are ``c0..c1`` and rows ``r0..r1`` (inclusive) is
``(c0, r0, c1 + 1, r1 + 1)``.
"""

from __future__ import annotations

import numpy as np


def component_box(component: np.ndarray, margin: float = 0.0) -> np.ndarray:
    """Float32 ``(4,)`` XYXY pixel-edge box of a non-empty bool ``(H, W)`` mask, each side pushed out by
    ``margin`` x the tight box's width (x) or height (y), clipped to ``[0, W] x [0, H]``."""
    rows = np.flatnonzero(component.any(axis=1))
    cols = np.flatnonzero(component.any(axis=0))
    if rows.size == 0:
        raise ValueError("cannot box an empty component")
    x0, x1 = float(cols[0]), float(cols[-1] + 1)
    y0, y1 = float(rows[0]), float(rows[-1] + 1)
    dx, dy = margin * (x1 - x0), margin * (y1 - y0)
    height, width = component.shape
    box = [max(0.0, x0 - dx), max(0.0, y0 - dy), min(float(width), x1 + dx), min(float(height), y1 + dy)]
    return np.asarray(box, dtype=np.float32)
