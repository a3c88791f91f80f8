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


def perturb_box(
    box: np.ndarray,
    image_size: tuple[int, int],
    rng: np.random.Generator,
    jitter: float,
    scale: tuple[float, float] = (1.0, 1.0),
) -> np.ndarray:
    """A box as a student might give it: ``box`` ``(4,)`` XYXY scaled about its centre by a factor drawn from
    ``U(scale)``, then each coordinate moved by ``U(-jitter, jitter)`` times the scaled box's width (x) or height
    (y); clipped to ``[0, W] x [0, H]`` (``image_size`` = ``(H, W)``) and kept at least one pixel wide and tall.
    Returns float32 ``(4,)``; the draws (one scale, then four moves) come from ``rng``."""
    height, width = float(image_size[0]), float(image_size[1])
    x0, y0, x1, y1 = (float(v) for v in box)
    factor = rng.uniform(*scale)
    cx, cy, half_w, half_h = (x0 + x1) / 2, (y0 + y1) / 2, factor * (x1 - x0) / 2, factor * (y1 - y0) / 2
    side = np.asarray([2 * half_w, 2 * half_h, 2 * half_w, 2 * half_h])
    moved = np.asarray([cx - half_w, cy - half_h, cx + half_w, cy + half_h]) + rng.uniform(-jitter, jitter, 4) * side
    moved = np.clip(moved, 0.0, [width, height, width, height])
    for lo, hi, limit in ((0, 2, width), (1, 3, height)):
        if moved[hi] - moved[lo] < 1.0:  # collapsed: a one-pixel box around the middle, inside the image
            middle = min(max((moved[lo] + moved[hi]) / 2, 0.5), limit - 0.5)
            moved[lo], moved[hi] = middle - 0.5, middle + 0.5
    return moved.astype(np.float32)
