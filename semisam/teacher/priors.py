"""SAMAug prior maps: the teacher's everything-mode masks drawn into a segmentation and a boundary channel.

SAMAug (Zhang et al. 2023, https://github.com/yizhezhang2000/SAMAug, ``SAMAug.py``) runs
``SamAutomaticMaskGenerator(sam, crop_nms_thresh=0.5, box_nms_thresh=0.5, pred_iou_thresh=0.5)`` on an RGB image
and, for every returned mask (``output_mode="binary_mask"``), does::

    SegPrior[mask] += stability_score
    BoundaryPrior += find_boundaries(mask, mode="thick"); BoundaryPrior[BoundaryPrior > 0] = 1

then adds ``SegPrior`` to the G channel and ``BoundaryPrior`` to the B channel of the image (as float in [0, 1]).
:func:`prior_maps` computes exactly these two maps, with one difference: SAMAug leaves ``SegPrior`` as a raw sum
(overlapping masks push it above 1, so their G channel can exceed 2); here, when the sum's maximum exceeds 1 the
whole map is divided by that maximum, so the channel always lies in [0, 1] (see :func:`prior_maps`). Where no two
masks overlap the maximum is at most 1 and the map is SAMAug's, value for value.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from skimage.segmentation import find_boundaries

logger = logging.getLogger("semisam")

_AMG_KEYS = ("segmentation", "stability_score", "predicted_iou", "bbox", "area")


@dataclass(frozen=True, eq=False)
class MaskRecord:
    """One everything-mode mask.

    Attributes:
        segmentation: bool (H, W) at the original image size.
        stability_score: IoU of the mask thresholded at ``mask_threshold +/- offset`` (segment-anything's
            ``calculate_stability_score``), in [0, 1].
        predicted_iou: the mask decoder's own quality estimate.
        bbox: (x, y, w, h) in pixels, as segment-anything's amg records compute it: ``batched_mask_to_box`` gives the
            inclusive XYXY extent (x0, y0, x1, y1) and ``w = x1 - x0``, ``h = y1 - y0`` (so a one-pixel mask has
            w = h = 0).
        area: number of True pixels of ``segmentation``.
    """

    segmentation: np.ndarray
    stability_score: float
    predicted_iou: float
    bbox: tuple[float, float, float, float]
    area: int


def records_from_amg(anns: list[dict[str, Any]]) -> list[MaskRecord]:
    """Convert ``SamAutomaticMaskGenerator(output_mode="binary_mask").generate(image)`` output to MaskRecords.

    Each ``ann`` needs ``segmentation`` (an (H, W) array), ``stability_score``, ``predicted_iou``, ``bbox``
    (XYWH) and ``area``; other keys (``point_coords``, ``crop_box``) are ignored. Order is kept.

    Raises:
        ValueError: a key is missing, or ``segmentation`` is not a 2D array (e.g. an RLE dict from another
            ``output_mode``).
    """
    records = []
    for i, ann in enumerate(anns):
        missing = [k for k in _AMG_KEYS if k not in ann]
        if missing:
            raise ValueError(f"mask record {i} lacks {missing}")
        seg = ann["segmentation"]
        if not isinstance(seg, np.ndarray) or seg.ndim != 2:
            raise ValueError(
                f"mask record {i}: 'segmentation' must be an (H, W) array (output_mode='binary_mask'), "
                f"got {type(seg).__name__}"
            )
        bbox = tuple(float(v) for v in ann["bbox"])
        if len(bbox) != 4:
            raise ValueError(f"mask record {i}: 'bbox' must have 4 values (XYWH), got {len(bbox)}")
        records.append(
            MaskRecord(
                segmentation=seg.astype(bool, copy=False),
                stability_score=float(ann["stability_score"]),
                predicted_iou=float(ann["predicted_iou"]),
                bbox=bbox,  # type: ignore[arg-type]
                area=int(ann["area"]),
            )
        )
    return records


def prior_maps(records: Sequence[MaskRecord], shape: tuple[int, int]) -> np.ndarray:
    """SAMAug's two prior maps of one image.

    Args:
        records: everything-mode masks; each ``segmentation`` must have shape ``shape``.
        shape: (H, W) of the image.

    Returns:
        float32 (2, H, W):

        - channel 0, segmentation prior: ``S = sum_i stability_score_i * mask_i``; if ``S.max() > 1`` then
          ``S / S.max()``, otherwise ``S`` unchanged. So values lie in [0, 1]; without overlapping masks they are
          the stability scores themselves (SAMAug's map), with overlaps the whole map is rescaled so that the
          most-covered pixel is 1 (SAMAug keeps the raw sum).
        - channel 1, boundary prior: 1 where any mask has a boundary pixel by
          ``skimage.segmentation.find_boundaries(mask, mode="thick")`` (both sides of the edge), else 0.

        No records: zeros.

    Raises:
        ValueError: a mask's shape differs from ``shape``.
    """
    height, width = int(shape[0]), int(shape[1])
    seg = np.zeros((height, width), dtype=np.float64)
    boundary = np.zeros((height, width), dtype=bool)
    for i, record in enumerate(records):
        mask = np.asarray(record.segmentation, dtype=bool)
        if mask.shape != (height, width):
            raise ValueError(f"mask {i} has shape {mask.shape}, expected {(height, width)}")
        seg[mask] += float(record.stability_score)
        boundary |= find_boundaries(mask, mode="thick")
    peak = float(seg.max()) if seg.size else 0.0
    if peak > 1.0:
        seg /= peak
    return np.stack([seg, boundary]).astype(np.float32)


def best_mask_overlap(
    records: Sequence[MaskRecord], label: np.ndarray, classes: Sequence[int]
) -> dict[int, tuple[float, float]]:
    """How well the best everything-mode mask matches each labeled structure of one image.

    For measuring prior quality only (labeled and validation cases): nothing here may feed training.

    Args:
        records: everything-mode masks, each ``segmentation`` bool (H, W).
        label: integer (H, W) label map of the same image.
        classes: foreground class indices to score.

    Returns:
        ``{class: (best IoU, best Dice)}`` over the masks, for each class of ``classes`` present in ``label``
        (absent classes are left out). With no masks both are 0.

    Raises:
        ValueError: a mask's shape differs from the label's.
    """
    label = np.asarray(label)
    present = [int(c) for c in classes if np.any(label == c)]
    if not records:
        return {c: (0.0, 0.0) for c in present}
    masks = np.stack([np.asarray(r.segmentation, dtype=bool) for r in records])
    if masks.shape[1:] != label.shape:
        raise ValueError(f"masks of shape {masks.shape[1:]} for a label of shape {label.shape}")
    flat = masks.reshape(len(masks), -1)
    areas = flat.sum(1)
    out: dict[int, tuple[float, float]] = {}
    for c in present:
        target = (label == c).reshape(-1)
        inter = flat[:, target].sum(1)
        total = areas + int(target.sum())
        iou = inter / np.maximum(total - inter, 1)
        dice = 2.0 * inter / np.maximum(total, 1)
        out[c] = (float(iou.max()), float(dice.max()))
    return out
