"""The teacher's "segment everything" mode: the masks that SAMAug's prior maps are drawn from.

Two implementations, chosen by what the teacher can be prompted with:

- :func:`everything_amg` (point-capable teachers: SAM ViT-B/L/H, MedSAM): segment-anything's own
  ``SamAutomaticMaskGenerator`` (a grid of point prompts, filtering, NMS), optionally reusing a cached image
  embedding instead of running the encoder again.
- :func:`everything_box_grid` (box-only teachers: LiteMedSAM, whose point-grid everything mode returns nothing):
  a multi-scale grid of square box prompts; the masks filtered by rules chosen for a box-only model's scores
  (chosen from a box-only model's score distributions on real images: docs/RESULTS.md) with segment-anything's
  amg utilities, and de-duplicated
  by mask IoU.

Both return :class:`~semisam.teacher.priors.MaskRecord` lists at the original image size, the input of
:func:`~semisam.teacher.priors.prior_maps`.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable

import numpy as np
import torch
from segment_anything import SamAutomaticMaskGenerator, SamPredictor
from segment_anything.modeling import Sam
from segment_anything.utils.amg import MaskData, batched_mask_to_box, box_xyxy_to_xywh, calculate_stability_score

from semisam.config.schema import EverythingConfig
from semisam.teacher.priors import MaskRecord, records_from_amg

logger = logging.getLogger("semisam")

# segment-anything's Sam.mask_threshold and SamAutomaticMaskGenerator's default stability_score_offset: a mask is
# logits > 0, its stability score the IoU of logits > +1 and logits > -1.
MASK_THRESHOLD = 0.0
STABILITY_SCORE_OFFSET = 1.0

DecodeFn = Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


# ----------------------------------------------------------------------------------------------------------------
# Point-capable teachers: segment-anything's automatic mask generator
# ----------------------------------------------------------------------------------------------------------------


class _CachedFeaturePredictor(SamPredictor):
    """A ``SamPredictor`` whose ``set_image`` installs a cached embedding instead of running the image encoder.

    ``SamAutomaticMaskGenerator`` calls ``predictor.set_image(crop)`` once per crop and then only
    ``predict_torch`` (which reads ``features``, ``input_size``, ``original_size``). With one crop (the whole
    image, ``crop_n_layers=0``) the embedding is the whole image's, so ``set_image`` only has to set what
    ``SamPredictor.set_torch_image`` would have set: the original size, the ResizeLongestSide input size and the
    features. Any other image size means a crop this cache does not hold: refused.
    """

    def __init__(self, model: Sam, features: torch.Tensor, image_size: tuple[int, int]) -> None:
        super().__init__(model)
        self._cached_features = features
        self._cached_size = image_size

    def set_image(self, image: np.ndarray, image_format: str = "RGB") -> None:
        size = (int(image.shape[0]), int(image.shape[1]))
        if size != self._cached_size:
            raise ValueError(f"cached features are for a {self._cached_size} image, asked for {size}")
        self.reset_image()
        self.original_size = size
        self.input_size = self.transform.get_preprocess_shape(size[0], size[1], self.transform.target_length)
        self.features = self._cached_features
        self.is_image_set = True


def everything_amg(
    sam: Sam,
    image_rgb_uint8: np.ndarray,
    cfg: EverythingConfig,
    features: torch.Tensor | None = None,
) -> list[MaskRecord]:
    """Everything mode of a point-capable SAM: ``SamAutomaticMaskGenerator`` on one image.

    The generator runs with ``cfg``'s ``points_per_side``, ``points_per_batch``, ``pred_iou_thresh``,
    ``stability_score_thresh``, ``box_nms_thresh`` and ``min_mask_region_area`` (which, as in segment-anything,
    removes islands and holes smaller than that many pixels, and needs OpenCV), no crops (``crop_n_layers=0``, as
    SAMAug) and ``output_mode="binary_mask"``. Masks with no pixel left are dropped (they add nothing to the
    priors; segment-anything would return them with area 0).

    Args:
        sam: a segment-anything ``Sam`` (frozen; its mode and weights are not touched).
        image_rgb_uint8: uint8 (H, W, 3) RGB image.
        cfg: everything-mode settings.
        features: optional cached image embedding, float (1, C, e, e) with C = the prompt encoder's
            ``embed_dim`` (256) and (e, e) its ``image_embedding_size``, computed from this same image by this same
            model the way ``SamPredictor.set_image`` does (ResizeLongestSide to the encoder size, ``sam.preprocess``,
            ``sam.image_encoder``). It is moved to the model's device and cast to its dtype, and the encoder is not
            run. A cache in another dtype (e.g. float16) gives masks close to, not identical with, the uncached run.

    Returns:
        MaskRecords in the generator's order (descending predicted IoU after NMS), masks bool (H, W).

    Raises:
        ValueError: the image is not uint8 (H, W, 3), or ``features`` has the wrong shape.
    """
    if image_rgb_uint8.ndim != 3 or image_rgb_uint8.shape[2] != 3 or image_rgb_uint8.dtype != np.uint8:
        raise ValueError(
            f"everything_amg needs a uint8 (H, W, 3) image, got {image_rgb_uint8.dtype} {image_rgb_uint8.shape}"
        )
    generator = SamAutomaticMaskGenerator(
        sam,
        points_per_side=cfg.points_per_side,
        points_per_batch=cfg.points_per_batch,
        pred_iou_thresh=cfg.pred_iou_thresh,
        stability_score_thresh=cfg.stability_score_thresh,
        stability_score_offset=STABILITY_SCORE_OFFSET,
        box_nms_thresh=cfg.box_nms_thresh,
        crop_n_layers=0,
        crop_nms_thresh=cfg.box_nms_thresh,  # unused with one crop; SAMAug sets it to its box_nms_thresh
        min_mask_region_area=cfg.min_mask_region_area,
        output_mode="binary_mask",
    )
    if features is not None:
        expected = (1, sam.prompt_encoder.embed_dim, *sam.prompt_encoder.image_embedding_size)
        if tuple(features.shape) != expected:
            raise ValueError(f"cached features have shape {tuple(features.shape)}, this model needs {expected}")
        dtype = next(sam.mask_decoder.parameters()).dtype
        cached = features.detach().to(device=sam.device, dtype=dtype)
        generator.predictor = _CachedFeaturePredictor(sam, cached, image_rgb_uint8.shape[:2])
    anns = generator.generate(image_rgb_uint8)
    records = [r for r in records_from_amg(anns) if r.area > 0]
    logger.debug("everything_amg: %d masks (%d empty dropped)", len(records), len(anns) - len(records))
    return records


# ----------------------------------------------------------------------------------------------------------------
# Box-only teachers: a multi-scale grid of box prompts
# ----------------------------------------------------------------------------------------------------------------


def _axis_starts(length: int, side: float, stride: float) -> list[float]:
    """Start coordinates of boxes of ``side`` along an axis of ``length`` pixels: evenly spaced from 0 to
    ``length - side``, at most ``stride`` apart, so the first box touches 0 and the last touches ``length``."""
    if side >= length:
        return [0.0]
    count = math.ceil((length - side) / stride - 1e-9) + 1
    return np.linspace(0.0, length - side, count).tolist()


def box_grid(image_size: tuple[int, int], scales: list[float], overlap: float) -> torch.Tensor:
    """The box prompts of the box-grid everything mode.

    For each scale ``s`` (in the order given): nominal side ``s * max(H, W)`` pixels, clipped to the image along
    each axis (so on a non-square image the large scales give rectangles as tall or wide as the image); along
    each axis the boxes are evenly spaced from the image's start to its end with a step of at most
    ``side * (1 - overlap)`` (the nominal stride, shrunk so that the last box ends exactly at the border). Rows
    go top to bottom, boxes within a row left to right. Boxes repeated by two scales are kept once.

    Args:
        image_size: (H, W) in pixels.
        scales: fractions of the longest side, each in (0, 1].
        overlap: fraction of a box side shared by neighbouring boxes, in [0, 1).

    Returns:
        float32 (N, 4) XYXY boxes in pixel coordinates of the original image (x1 <= W, y1 <= H).

    Raises:
        ValueError: empty ``scales``, a scale outside (0, 1], ``overlap`` outside [0, 1), or a non-positive size.
    """
    height, width = int(image_size[0]), int(image_size[1])
    if height <= 0 or width <= 0:
        raise ValueError(f"image size must be positive, got {image_size}")
    if len(scales) == 0:
        raise ValueError("box_scales is empty")
    if not 0.0 <= overlap < 1.0:
        raise ValueError(f"box_overlap must be in [0, 1), got {overlap}")
    boxes: list[tuple[float, float, float, float]] = []
    seen: set[tuple[float, float, float, float]] = set()
    for scale in scales:
        if not 0.0 < scale <= 1.0:
            raise ValueError(f"box scales must be in (0, 1], got {scale}")
        side = scale * max(height, width)
        box_h, box_w = min(side, height), min(side, width)
        stride = side * (1.0 - overlap)
        for y0 in _axis_starts(height, box_h, stride):
            for x0 in _axis_starts(width, box_w, stride):
                box = (x0, y0, x0 + box_w, y0 + box_h)
                if box not in seen:
                    seen.add(box)
                    boxes.append(box)
    return torch.tensor(boxes, dtype=torch.float32)


def everything_box_grid(
    decode: DecodeFn,
    image_size: tuple[int, int],
    cfg: EverythingConfig,
    chunk_size: int = 64,
) -> list[MaskRecord]:
    """Everything mode of a box-only SAM: prompt with a multi-scale grid of boxes, keep the best distinct masks.

    A box prompt asks "what object is in this box?", so the grid (see :func:`box_grid`: ``cfg.box_scales`` of the
    longest side, ``cfg.box_overlap``) finds objects whose extent is roughly one of those box sizes and which
    some box frames well. A box-only model answers every box with a mask, and its scores are not on
    segment-anything's scale, so the automatic generator's absolute thresholds keep nothing (LiteMedSAM's score
    distributions on real images: docs/RESULTS.md). The rules, in order, with segment-anything's amg utilities:

    1. predicted IoU ``> cfg.box_pred_iou_thresh`` and stability score (``calculate_stability_score`` at the
       model's mask threshold 0.0, offset 1.0) ``>= cfg.box_stability_score_thresh``, each skipped when 0;
    2. binarise at logits > 0; drop empty masks and masks with fewer than ``cfg.min_mask_region_area`` pixels (a
       box prompt gives one object, so a whole mask below the area is dropped);
    3. mask-IoU NMS (:func:`mask_nms`) at ``cfg.box_mask_nms_thresh``: of two masks overlapping by more than that
       IoU, the one with the higher predicted IoU survives (mask IoU, not box IoU: a ring and the filled disc it
       bounds, such as a myocardium and the myocardium with its ventricle, share a box but are different masks);
    4. relative filter: keep the ``cfg.box_keep_top_fraction`` of the distinct masks left with the highest
       predicted IoU (at least one; 1.0 keeps all) - a rule on the model's own ranking within the image, which
       carries signal where its absolute values do not;
    5. at most ``cfg.box_max_masks`` masks (0: no cap), the highest predicted IoU first.

    Limitations: objects much smaller than the smallest box are found only if the model picks them out of a
    loose box; objects larger than the largest box, or that no box frames (thin or elongated ones spanning
    several boxes), are missed or come back cut at the box edges; the predicted IoU ranks masks only weakly, so
    a box over background still gives a blob that may be kept. Cost: one decoder pass per box, about
    ``(1 + (1 - s) / (s * (1 - overlap)))**2`` boxes per scale ``s`` on a square image (9 + 49 + 225 = 283 for
    scales 0.5, 0.25, 0.125 at overlap 0.5).

    Args:
        decode: ``decode(boxes)`` with float32 (N, 4) XYXY boxes in original pixel coordinates returns
            ``(logits, iou)``: float (N, H, W) mask logits at the original size, and (N,) predicted IoU. The caller
            binds it to the image's cached embedding; it is called with at most ``chunk_size`` boxes at a time.
        image_size: (H, W) of the original image.
        cfg: everything-mode settings.
        chunk_size: boxes per ``decode`` call (bounds memory: chunk_size x H x W float logits at a time).

    Returns:
        MaskRecords (bool (H, W) masks), in descending predicted IoU.

    Raises:
        ValueError: bad grid settings or ``chunk_size``, or ``decode`` returned the wrong shapes.
    """
    if chunk_size <= 0:
        raise ValueError(f"chunk_size must be positive, got {chunk_size}")
    height, width = int(image_size[0]), int(image_size[1])
    boxes = box_grid((height, width), list(cfg.box_scales), float(cfg.box_overlap))
    kept, n_kept = _decode_and_filter(decode, boxes, (height, width), cfg, chunk_size)
    if n_kept == 0:
        logger.debug("everything_box_grid: %d boxes, no mask kept", len(boxes))
        return []
    records = _distinct_best_masks(kept, cfg)
    logger.debug("everything_box_grid: %d boxes -> %d masks -> %d kept", len(boxes), n_kept, len(records))
    return records


def _decode_and_filter(
    decode: DecodeFn, boxes: torch.Tensor, image_size: tuple[int, int], cfg: EverythingConfig, chunk_size: int
) -> tuple[MaskData, int]:
    """Rules 1 and 2 of :func:`everything_box_grid`: decode the ``(N, 4)`` XYXY boxes ``chunk_size`` at a time
    and keep each chunk's masks that pass :func:`_filter_chunk`.

    Returns:
        the kept masks (``masks`` bool ``(n, H, W)``, ``iou_preds``, ``stability_score``, ``boxes`` XYXY, on the
        CPU, in box order) and ``n``.
    """
    height, width = image_size
    kept = MaskData()
    n_kept = 0
    for start in range(0, len(boxes), chunk_size):
        chunk = boxes[start : start + chunk_size]
        with torch.no_grad():
            logits, iou = decode(chunk)
        if tuple(logits.shape) != (len(chunk), height, width) or tuple(iou.reshape(-1).shape) != (len(chunk),):
            raise ValueError(
                f"decode returned logits {tuple(logits.shape)} and iou {tuple(iou.shape)} for {len(chunk)} boxes; "
                f"expected ({len(chunk)}, {height}, {width}) and ({len(chunk)},)"
            )
        chunk_data = _filter_chunk(logits.float(), iou.reshape(-1).float(), cfg)
        n_kept += len(chunk_data["iou_preds"])
        kept.cat(chunk_data)
    return kept, n_kept


def _distinct_best_masks(kept: MaskData, cfg: EverythingConfig) -> list[MaskRecord]:
    """Rules 3 to 5 of :func:`everything_box_grid` on the (non-empty) masks that passed the filters: mask-IoU
    NMS, the top fraction, the cap; MaskRecords in descending predicted IoU (``bbox`` XYWH, from the mask)."""
    keep = mask_nms(kept["masks"], kept["iou_preds"], float(cfg.box_mask_nms_thresh))  # descending predicted IoU
    keep = keep[: max(1, math.ceil(float(cfg.box_keep_top_fraction) * len(keep) - 1e-9))]
    if cfg.box_max_masks > 0:
        keep = keep[: cfg.box_max_masks]
    kept.filter(keep)
    return [
        MaskRecord(
            segmentation=kept["masks"][i].numpy(),
            stability_score=float(kept["stability_score"][i]),
            predicted_iou=float(kept["iou_preds"][i]),
            bbox=tuple(float(v) for v in box_xyxy_to_xywh(kept["boxes"][i]).tolist()),  # type: ignore[arg-type]
            area=int(kept["masks"][i].sum()),
        )
        for i in range(len(keep))
    ]


def mask_nms(masks: torch.Tensor, scores: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    """Greedy non-maximum suppression by mask IoU.

    Masks are visited in descending ``scores`` (ties: the earlier index first); a mask is kept unless its IoU
    with an already kept mask exceeds ``iou_threshold``. The same rule as ``torchvision.ops.nms``, on masks
    instead of boxes.

    Args:
        masks: bool (N, H, W).
        scores: float (N,).
        iou_threshold: in [0, 1]; 1 keeps every mask (no IoU exceeds 1).

    Returns:
        int64 (K,) indices of the kept masks, in descending score.

    Raises:
        ValueError: shapes that do not match.
    """
    if masks.ndim != 3 or scores.shape != (masks.shape[0],):
        raise ValueError(
            f"mask_nms needs (N, H, W) masks and (N,) scores, got {tuple(masks.shape)}, {tuple(scores.shape)}"
        )
    n = int(masks.shape[0])
    if n == 0:
        return torch.zeros(0, dtype=torch.long)
    order = torch.argsort(scores, descending=True, stable=True)
    flat = masks[order].reshape(n, -1).float()
    areas = flat.sum(1)
    inter = flat @ flat.T  # (N, N) pixel counts, exact in float32 below 2**24 pixels
    union = areas[:, None] + areas[None, :] - inter
    iou = torch.where(union > 0, inter / union.clamp(min=1), torch.zeros_like(inter))
    suppressed = torch.zeros(n, dtype=torch.bool)
    keep = []
    for i in range(n):
        if suppressed[i]:
            continue
        keep.append(i)
        suppressed |= iou[i] > iou_threshold
    return order[torch.tensor(keep, dtype=torch.long)].to(torch.long)


def _filter_chunk(logits: torch.Tensor, iou: torch.Tensor, cfg: EverythingConfig) -> MaskData:
    """Apply the per-mask rules (IoU, stability, emptiness, area) to one decoded chunk; masks move to the CPU as
    bool (n, H, W), with their XYXY boxes, predicted IoU and stability score."""
    data = MaskData(masks=logits, iou_preds=iou)
    if cfg.box_pred_iou_thresh > 0.0:
        data.filter(data["iou_preds"] > cfg.box_pred_iou_thresh)
    data["stability_score"] = calculate_stability_score(data["masks"], MASK_THRESHOLD, STABILITY_SCORE_OFFSET)
    if cfg.box_stability_score_thresh > 0.0:
        data.filter(data["stability_score"] >= cfg.box_stability_score_thresh)
    data["masks"] = data["masks"] > MASK_THRESHOLD
    areas = data["masks"].flatten(1).sum(1)
    data.filter((areas > 0) & (areas >= cfg.min_mask_region_area))
    data["boxes"] = batched_mask_to_box(data["masks"])
    return MaskData(
        masks=data["masks"].cpu(),
        iou_preds=data["iou_preds"].cpu(),
        stability_score=data["stability_score"].float().cpu(),
        boxes=data["boxes"].cpu(),
    )
