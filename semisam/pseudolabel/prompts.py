"""Prompts for the frozen teacher, made from the model's class probabilities, and their perturbations.

This module holds the numpy-level prompt rules of the uncertainty-rectified pseudo-labels (see
:class:`~semisam.config.schema.PseudoLabelConfig`): which connected component of which class becomes a prompt,
its box, its positive point, its negative points, and how a prompt is jittered to measure the teacher's
uncertainty. Prompts come from probabilities only: :func:`prompts_from_probabilities` refuses anything that does
not look like a softmax output (an integer label map, a one-hot map whose channels do not sum to one), so that a
label cannot be turned into a prompt by mistake (SemiSAM's released script made that leak).

Coordinate conventions (segment-anything's frame of the original image: ``x`` = column, to the right; ``y`` =
row, down; both in pixels):

- **Pixel** ``(row r, column c)`` covers the square ``[c, c + 1) x [r, r + 1)``.
- **Boxes** are float32 ``(4,)`` ``XYXY`` = ``(x_min, y_min, x_max, y_max)`` in *pixel-edge* coordinates: the
  tight box of a component whose columns are ``c0..c1`` and rows ``r0..r1`` (inclusive) is
  ``(c0, r0, c1 + 1, r1 + 1)``; a box always lies within ``[0, W] x [0, H]`` and is at least one pixel wide and
  tall (``x_max >= x_min + 1``, ``y_max >= y_min + 1``).
- **Points** are float32 ``(2,)`` ``XY`` = ``(c, r)``: the integer *index* of a pixel, which is what
  segment-anything expects (its prompt encoder adds 0.5 itself to reach the pixel's centre). A point ``(c, r)``
  lies in a box exactly when ``x_min <= c < x_max`` and ``y_min <= r < y_max``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from semisam.config.schema import PseudoLabelConfig
from semisam.teacher.boxes import component_box

logger = logging.getLogger("semisam")

# Probabilities produced in bf16/fp16 and cast back to float32 may miss a sum of 1 by a few 1e-3.
PROBABILITY_SUM_TOLERANCE = 1e-2
PROBABILITY_RANGE_TOLERANCE = 1e-4
_EIGHT_CONNECTED = np.ones((3, 3), dtype=bool)


@dataclass
class ClassPrompt:
    """One prompt for the teacher: a box (and points) around one connected component of one class.

    Attributes:
        class_index: the foreground class, ``1..K-1``.
        box: float32 ``(4,)`` XYXY in pixel-edge coordinates (see the module docstring).
        component: bool ``(H, W)``: the component the prompt came from (shared, not copied, by perturbations).
        point: float32 ``(2,)`` XY pixel index of the positive point: the component's distance-transform maximum
            for an original prompt, a uniformly drawn pixel of the component for a perturbed one.
        negative_points: float32 ``(M, 2)`` XY pixel indices of background points, ``M = cfg.negative_points``;
            ``None`` when no negative points were asked for (or none exist: see
            :func:`prompts_from_probabilities`).
    """

    class_index: int
    box: np.ndarray
    component: np.ndarray
    point: np.ndarray | None
    negative_points: np.ndarray | None


def check_class_probabilities(probs: np.ndarray, name: str = "probs") -> np.ndarray:
    """Validate softmax probabilities of one image and return them as a float array.

    Args:
        probs: float ``(K, H, W)``, ``K >= 2`` classes (background first), values in ``[0, 1]``, summing to 1 over
            ``K`` at every pixel (within :data:`PROBABILITY_SUM_TOLERANCE`).
        name: what to call the array in error messages.

    Raises:
        ValueError: for anything else: an integer or boolean array (a label map), the wrong number of dimensions,
            fewer than two classes, non-finite values, values outside ``[0, 1]``, or channel sums away from 1
            (e.g. a one-hot map without its background channel).
    """
    probs = np.asarray(probs)
    if not np.issubdtype(probs.dtype, np.floating):
        raise ValueError(
            f"{name} must be floating-point class probabilities (K, H, W), got dtype {probs.dtype}: "
            "a label map cannot be used here (prompts come from the model's predictions only)"
        )
    if probs.ndim != 3 or probs.shape[0] < 2 or probs.shape[1] < 1 or probs.shape[2] < 1:
        raise ValueError(f"{name} must be (K, H, W) with K >= 2 classes, got shape {probs.shape}")
    if not np.all(np.isfinite(probs)):
        raise ValueError(f"{name} contains non-finite values")
    low, high = float(probs.min()), float(probs.max())
    if low < -PROBABILITY_RANGE_TOLERANCE or high > 1 + PROBABILITY_RANGE_TOLERANCE:
        raise ValueError(f"{name} must lie in [0, 1] (softmax probabilities), got values in [{low:.4g}, {high:.4g}]")
    sums = probs.sum(axis=0, dtype=np.float64)
    worst = float(np.abs(sums - 1.0).max())
    if worst > PROBABILITY_SUM_TOLERANCE:
        raise ValueError(
            f"{name} must sum to 1 over the K={probs.shape[0]} classes at every pixel (softmax probabilities); "
            f"the largest deviation is {worst:.4g}. A one-hot label map is not a prediction."
        )
    return probs


def prompts_from_probabilities(
    probs: np.ndarray, cfg: PseudoLabelConfig, classes: Sequence[int] | None = None
) -> list[ClassPrompt]:
    """Box prompts (with positive and optional negative points) from one image's predicted probabilities.

    For each foreground class ``k`` (all of ``1..K-1``, or only ``classes``), the region ``argmax == k`` is split
    into 8-connected components. ``cfg.components == "largest"`` keeps the largest one (ties: the first in
    row-major order) if its area is at least the smallest area; ``"all"`` keeps every component of at least that
    area: ``cfg.min_area`` pixels or ``cfg.min_area_fraction`` of the image, whichever is larger. A class the model
    does not predict (or only in smaller components) gets no prompt (its evidence stays the model's own). Per kept
    component:

    - **box**: its tight pixel-edge box, grown on each side by ``cfg.box_margin`` times its width (x) or height
      (y), clipped to ``[0, W] x [0, H]``;
    - **point**: the maximum of the Euclidean distance transform inside the component, the image border counting
      as outside (the centre of its largest inscribed disc; on a ring, a pixel of the ring's body; ties: first in
      row-major order);
    - **negative_points**: ``cfg.negative_points`` pixels inside the box that are not predicted as class ``k``,
      chosen greedily farthest-first: the first is the candidate farthest from the component, each next one
      maximises its distance to the component and to the points already chosen (deterministic, spread out; on
      a ring the first lands in the hole). With fewer candidates than asked, candidates repeat; with no
      candidate inside the box, the whole image is searched; if every pixel of the image is class ``k`` there is
      no background at all and ``negative_points`` is ``None`` (logged). ``None`` also when
      ``cfg.negative_points == 0``.

    Args:
        probs: float ``(K, H, W)`` softmax probabilities of one image (validated by
            :func:`check_class_probabilities`: labels and one-hot maps with wrong sums are refused).
        cfg: the pseudo-label settings (``components``, ``min_area``, ``box_margin``, ``negative_points``).
        classes: foreground classes to prompt (each in ``1..K-1``); ``None`` for all of them.

    Returns:
        Prompts ordered by class, then by decreasing component area (ties: row-major order of the components).

    Raises:
        ValueError: invalid ``probs``, a class outside ``1..K-1``, an unknown ``cfg.components``, or a negative
            ``cfg.min_area`` / ``cfg.box_margin`` / ``cfg.negative_points``.
    """
    probs = check_class_probabilities(probs)
    wanted = _prompted_classes(cfg, classes, probs.shape[0])
    argmax = probs.argmax(axis=0)
    prompts: list[ClassPrompt] = []
    for k in wanted:
        region = argmax == k
        for component in _kept_components(region, cfg):
            box = component_box(component, cfg.box_margin)
            negatives = None
            if cfg.negative_points > 0:
                negatives = negative_points(component, ~region, box, cfg.negative_points)
                if negatives is None:
                    logger.debug("class %d covers the whole image: no background for negative points", k)
            prompts.append(ClassPrompt(k, box, component, distance_peak(component), negatives))
    return prompts


def _prompted_classes(cfg: PseudoLabelConfig, classes: Sequence[int] | None, num_classes: int) -> list[int]:
    """The sorted foreground classes to prompt, after checking the prompt settings of ``cfg`` (see
    :func:`prompts_from_probabilities` for what is refused)."""
    if cfg.components not in ("largest", "all"):
        raise ValueError(f"pseudo_labels.components={cfg.components!r} must be 'largest' or 'all'")
    if cfg.min_area < 0 or cfg.box_margin < 0 or cfg.negative_points < 0:
        raise ValueError("pseudo_labels.min_area, box_margin and negative_points must be >= 0")
    if classes is None:
        return list(range(1, num_classes))
    wanted = sorted({int(k) for k in classes})
    bad = [k for k in wanted if not 1 <= k < num_classes]
    if bad:
        raise ValueError(f"classes {bad} are not foreground classes of a K={num_classes} prediction (1..K-1)")
    return wanted


def _kept_components(region: np.ndarray, cfg: PseudoLabelConfig) -> list[np.ndarray]:
    """The 8-connected components of bool ``(H, W)`` ``region`` that get a prompt, as bool ``(H, W)`` masks, by
    decreasing area (ties: row-major order of the components): the largest or all (``cfg.components``), each of at
    least ``max(cfg.min_area, cfg.min_area_fraction * H * W)`` pixels."""
    if not region.any():
        return []
    labels, count = ndimage.label(region, structure=_EIGHT_CONNECTED)
    areas = np.bincount(labels.ravel(), minlength=count + 1)[1:]
    order = np.argsort(-areas, kind="stable")  # stable: ties keep the label (row-major) order
    if cfg.components == "largest":
        order = order[:1]
    smallest = max(cfg.min_area, cfg.min_area_fraction * region.size)  # pixels, at this image's size
    return [labels == index + 1 for index in order if areas[index] >= smallest]


def distance_peak(component: np.ndarray) -> np.ndarray:
    """Float32 ``(2,)`` XY pixel index of the maximum of the Euclidean distance transform of a non-empty bool
    ``(H, W)`` mask (pixels outside the image count as background; ties: first in row-major order)."""
    rows = np.flatnonzero(component.any(axis=1))
    cols = np.flatnonzero(component.any(axis=0))
    if rows.size == 0:
        raise ValueError("an empty component has no distance-transform maximum")
    # The tight crop padded by one background pixel gives the same distances as the whole image (the nearest
    # outside pixel is never beyond that frame), and the padding makes the image border count as outside: a
    # component cut by the border is centred on the part that is seen.
    crop = component[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
    distance = ndimage.distance_transform_edt(np.pad(crop, 1))[1:-1, 1:-1]
    row, col = np.unravel_index(int(np.argmax(distance)), distance.shape)
    return np.asarray([cols[0] + col, rows[0] + row], dtype=np.float32)


def negative_points(component: np.ndarray, background: np.ndarray, box: np.ndarray, count: int) -> np.ndarray | None:
    """``count`` background points, greedily farthest-first from the component (see
    :func:`prompts_from_probabilities`): float32 ``(count, 2)`` XY pixel indices, or ``None`` if ``background``
    (bool ``(H, W)``, the pixels that may be negatives) is empty."""
    if count <= 0 or not background.any():
        return None
    height, width = component.shape
    # Pixel (c, r) is inside the box when x_min <= c < x_max and y_min <= r < y_max.
    x0, y0, x1, y1 = (int(np.ceil(v)) for v in box)
    frame = (slice(max(0, y0), min(height, y1)), slice(max(0, x0), min(width, x1)))
    if not background[frame].any():
        frame = (slice(0, height), slice(0, width))
    # The box holds the whole component, so distances computed in its frame are exact.
    rows, cols = np.nonzero(background[frame])  # row-major order: argmax ties go to the first
    score = ndimage.distance_transform_edt(~component[frame])[rows, cols]
    rows, cols = rows + frame[0].start, cols + frame[1].start
    coords = np.stack([rows, cols], axis=1).astype(np.float64)
    chosen = []
    for _ in range(count):
        best = int(np.argmax(score))
        chosen.append((cols[best], rows[best]))
        score = np.minimum(score, np.sqrt(((coords - coords[best]) ** 2).sum(axis=1)))
    return np.asarray(chosen, dtype=np.float32)


def perturb_prompts(
    prompt: ClassPrompt, count: int, jitter: float, image_size: tuple[int, int], rng: np.random.Generator
) -> list[ClassPrompt]:
    """``count`` jittered copies of ``prompt`` (the original is not included), for the teacher's uncertainty.

    Per copy, in this order of draws from ``rng`` (so the result is fixed by the generator's state):

    - the four box coordinates each move by ``U(-jitter, jitter)`` times the prompt box's width (x coordinates) or
      height (y coordinates), then are clipped to ``[0, W] x [0, H]``. If that leaves the box narrower (or
      shorter) than one pixel, the pair of coordinates is pulled back along the straight line towards the
      original pair just far enough to be one pixel apart: every coordinate stays within ``jitter`` x side of
      the original, inside the image, and the box stays valid;
    - the positive point (if the prompt has one) is redrawn uniformly among the component's pixels (XY pixel
      index, as in the module docstring).

    ``negative_points``, ``component`` and ``class_index`` are kept (the arrays are shared, not copied).

    Args:
        prompt: the prompt to perturb; its box must lie in the image and be at least one pixel wide and tall.
        count: number of copies, ``>= 0``.
        jitter: fraction of the box side, ``>= 0``.
        image_size: ``(H, W)`` of the image, pixels.
        rng: the random generator (advanced by the draws).

    Returns:
        ``count`` prompts with float32 boxes and points.

    Raises:
        ValueError: negative ``count`` or ``jitter``, or a prompt box that is invalid or outside the image.
    """
    if count < 0 or jitter < 0:
        raise ValueError(f"count={count} and jitter={jitter} must be >= 0")
    height, width = int(image_size[0]), int(image_size[1])
    box = np.asarray(prompt.box, dtype=np.float64)
    if box.shape != (4,):
        raise ValueError(f"prompt box must be (4,) XYXY, got shape {box.shape}")
    x0, y0, x1, y1 = box
    inside = 0 <= x0 <= x1 - 1 and x1 <= width and 0 <= y0 <= y1 - 1 and y1 <= height
    if not inside:
        raise ValueError(f"prompt box {box.tolist()} is not a valid box inside a {height}x{width} image")
    scale = np.asarray([x1 - x0, y1 - y0, x1 - x0, y1 - y0])
    upper = np.asarray([width, height, width, height], dtype=np.float64)
    pixels = np.flatnonzero(prompt.component) if prompt.point is not None else None
    if pixels is not None and pixels.size == 0:
        raise ValueError("prompt has a positive point but an empty component")
    copies = []
    for _ in range(count):
        moved = np.clip(box + rng.uniform(-jitter, jitter, size=4) * scale, 0.0, upper)
        moved[[0, 2]] = _at_least_one_apart(box[[0, 2]], moved[[0, 2]])
        moved[[1, 3]] = _at_least_one_apart(box[[1, 3]], moved[[1, 3]])
        point = None
        if pixels is not None:
            row, col = np.unravel_index(int(pixels[rng.integers(pixels.size)]), prompt.component.shape)
            point = np.asarray([col, row], dtype=np.float32)
        copies.append(
            ClassPrompt(prompt.class_index, moved.astype(np.float32), prompt.component, point, prompt.negative_points)
        )
    return copies


# The repaired gap aims a little above one pixel so that it survives the cast to float32.
_MIN_GAP = 1.0 + 1e-3


def _at_least_one_apart(original: np.ndarray, moved: np.ndarray) -> np.ndarray:
    """Pull ``moved = (lo, hi)`` back towards ``original`` (whose gap is >= 1) until ``hi - lo >= 1``.

    Both pairs lie in the (convex) set of allowed positions (within the jitter of the original, in the image), so
    every point of the segment between them does too; the gap changes linearly along it.
    """
    gap, original_gap = moved[1] - moved[0], original[1] - original[0]
    if gap >= _MIN_GAP:
        return moved
    if original_gap <= gap:  # a box of (almost) exactly one pixel: its own coordinates are the safe choice
        return original.copy()
    t = min(1.0, (_MIN_GAP - gap) / (original_gap - gap))
    return moved + t * (original - moved)
