"""The teacher's everything mode: the box grid (fake decoder) and segment-anything's generator (tiny random SAM)."""

from __future__ import annotations

from functools import partial
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from semisam.config.schema import EverythingConfig
from semisam.teacher.everything import box_grid, everything_amg, everything_box_grid
from semisam.teacher.priors import MaskRecord, prior_maps

# ----------------------------------------------------------------------------------------------------------------
# Box grid layout
# ----------------------------------------------------------------------------------------------------------------


def _starts(boxes: torch.Tensor, axis: int) -> list[float]:
    return sorted(set(boxes[:, axis].tolist()))


def test_box_grid_layout_on_a_wide_image():
    height, width = 64, 96
    boxes = box_grid((height, width), [0.5, 0.25], overlap=0.5)
    assert boxes.dtype == torch.float32 and boxes.shape == (6 + 35, 4)
    big, small = boxes[:6], boxes[6:]
    # scale 0.5: side 48 of max(H, W) = 96; stride <= 24; 3 columns (0, 24, 48) x 2 rows (0, 16)
    assert torch.all(big[:, 2] - big[:, 0] == 48) and torch.all(big[:, 3] - big[:, 1] == 48)
    assert _starts(big, 0) == [0, 24, 48] and _starts(big, 1) == [0, 16]
    # scale 0.25: side 24, stride <= 12; 7 columns x 5 rows (0, 10, 20, 30, 40)
    assert torch.all(small[:, 2] - small[:, 0] == 24) and torch.all(small[:, 3] - small[:, 1] == 24)
    assert _starts(small, 0) == [0, 12, 24, 36, 48, 60, 72] and _starts(small, 1) == [0, 10, 20, 30, 40]
    # row-major: top row first, left to right
    assert big[:3, 1].tolist() == [0, 0, 0] and big[:3, 0].tolist() == [0, 24, 48]
    for group in (big, small):
        assert group[:, :2].min() >= 0 and group[:, 2].max() == width and group[:, 3].max() == height
        covered = np.zeros((height, width), dtype=bool)
        for x0, y0, x1, y1 in group.int().tolist():
            covered[y0:y1, x0:x1] = True
        assert covered.all()


def test_box_grid_counts_and_clipping():
    assert len(box_grid((64, 64), [0.5, 0.25, 0.125], 0.5)) == 9 + 49 + 225
    assert len(box_grid((512, 512), EverythingConfig().box_scales, EverythingConfig().box_overlap)) == 283
    # no overlap: a plain tiling
    assert len(box_grid((64, 64), [0.25], 0.0)) == 16
    # a scale of 1 on a non-square image: one box, the whole image; repeated boxes are kept once
    assert box_grid((40, 100), [1.0, 1.0], 0.5).tolist() == [[0, 0, 100, 40]]
    # a side longer than the short axis is clipped to it
    tall = box_grid((100, 40), [0.5], 0.5)
    assert torch.all(tall[:, 2] - tall[:, 0] == 40) and _starts(tall, 1) == [0, 25, 50]


@pytest.mark.parametrize(("scales", "overlap"), [([], 0.5), ([0.0], 0.5), ([1.5], 0.5), ([0.5], 1.0), ([0.5], -0.1)])
def test_box_grid_refuses_bad_settings(scales, overlap):
    with pytest.raises(ValueError):
        box_grid((64, 64), scales, overlap)


# ----------------------------------------------------------------------------------------------------------------
# Box-grid everything mode with a fake decoder
# ----------------------------------------------------------------------------------------------------------------

SIZE = 64


def _disc(cx: float, cy: float, r: float) -> np.ndarray:
    yy, xx = np.mgrid[:SIZE, :SIZE]
    return (xx - cx) ** 2 + (yy - cy) ** 2 <= r**2


def _square() -> np.ndarray:
    mask = np.zeros((SIZE, SIZE), dtype=bool)
    mask[36:58, 34:56] = True
    return mask


# name -> (mask, centre (x, y))
OBJECTS = {
    "disc_a": (_disc(16, 16, 7), (16.0, 16.0)),
    "disc_b": (_disc(46, 18, 5), (46.0, 18.0)),
    "square": (_square(), (44.5, 46.5)),
}


def _tight_box(mask: np.ndarray) -> tuple[int, int, int, int]:
    ys, xs = np.nonzero(mask)
    return int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1


def fake_decode(boxes: torch.Tensor, calls: list[int] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """A box-prompted "model" on a 64x64 canvas with two discs and a square.

    - no object centre in the box: an empty mask (dropped), predicted IoU 0.95;
    - one centre, whole object inside the box: that object, confident logits (stability 1), predicted IoU that
      grows as the box gets tighter (so NMS must keep the highest);
    - one centre, object cut by the box: the cut object, predicted IoU 0.3 (filtered);
    - several centres: their union with soft logits (+-0.5: stability 0, filtered), predicted IoU 0.9.
    """
    if calls is not None:
        calls.append(len(boxes))
    logits = torch.full((len(boxes), SIZE, SIZE), -10.0)
    iou = torch.full((len(boxes),), 0.95)
    yy, xx = np.mgrid[:SIZE, :SIZE]
    for i, (x0, y0, x1, y1) in enumerate(boxes.tolist()):
        inside = [n for n, (_, (cx, cy)) in OBJECTS.items() if x0 <= cx < x1 and y0 <= cy < y1]
        if len(inside) == 1:
            mask = OBJECTS[inside[0]][0]
            bx0, by0, bx1, by1 = _tight_box(mask)
            if x0 <= bx0 and y0 <= by0 and bx1 <= x1 and by1 <= y1:
                logits[i] = torch.from_numpy(np.where(mask, 10.0, -10.0))
                iou[i] = 0.99 - 0.1 * (x1 - x0) * (y1 - y0) / SIZE**2
            else:
                cut = mask & (xx >= x0) & (xx < x1) & (yy >= y0) & (yy < y1)
                logits[i] = torch.from_numpy(np.where(cut, 10.0, -10.0))
                iou[i] = 0.3
        elif len(inside) > 1:
            union = np.logical_or.reduce([OBJECTS[n][0] for n in inside])
            logits[i] = torch.from_numpy(np.where(union, 0.5, -0.5))
            iou[i] = 0.9
    return logits, iou


def _best_iou(name: str, boxes: torch.Tensor) -> float:
    """The highest predicted IoU the fake gives a box framing ``name`` alone."""
    logits, iou = fake_decode(boxes)
    mask = OBJECTS[name][0]
    hits = [float(iou[i]) for i in range(len(boxes)) if torch.equal(logits[i] > 0, torch.from_numpy(mask))]
    return max(hits)


CFG = EverythingConfig(
    box_pred_iou_thresh=0.5, box_stability_score_thresh=0.9, box_mask_nms_thresh=0.5, box_scales=[0.5, 0.25, 0.125]
)


def test_box_grid_everything_returns_exactly_the_objects():
    calls: list[int] = []
    records = everything_box_grid(partial(fake_decode, calls=calls), (SIZE, SIZE), CFG, chunk_size=64)
    assert calls == [64, 64, 64, 64, 27]  # 283 boxes, decoded in chunks
    assert all(isinstance(r, MaskRecord) for r in records)
    assert len(records) == 3
    grid = box_grid((SIZE, SIZE), CFG.box_scales, CFG.box_overlap)
    found = {}
    for r in records:
        names = [n for n, (m, _) in OBJECTS.items() if np.array_equal(r.segmentation, m)]
        assert len(names) == 1
        found[names[0]] = r
        mask = OBJECTS[names[0]][0]
        assert r.segmentation.dtype == bool and r.segmentation.shape == (SIZE, SIZE)
        assert r.area == int(mask.sum()) and r.stability_score == pytest.approx(1.0)
        x0, y0, x1, y1 = _tight_box(mask)
        assert r.bbox == (x0, y0, x1 - 1 - x0, y1 - 1 - y0)  # segment-anything's XYWH of inclusive extents
        assert r.predicted_iou == pytest.approx(_best_iou(names[0], grid))  # NMS kept the most confident
    assert set(found) == set(OBJECTS)
    ious = [r.predicted_iou for r in records]
    assert ious == sorted(ious, reverse=True)


def test_box_grid_everything_chunking_and_area_filter():
    whole = everything_box_grid(fake_decode, (SIZE, SIZE), CFG, chunk_size=1000)
    chunked = everything_box_grid(fake_decode, (SIZE, SIZE), CFG, chunk_size=7)
    assert [r.predicted_iou for r in whole] == [r.predicted_iou for r in chunked]
    assert all(np.array_equal(a.segmentation, b.segmentation) for a, b in zip(whole, chunked, strict=True))
    # disc_b (r=5, 81 px) is below 100 px, the others are above
    cfg = EverythingConfig(**{**CFG.__dict__, "min_mask_region_area": 100})
    small_dropped = everything_box_grid(fake_decode, (SIZE, SIZE), cfg)
    assert len(small_dropped) == 2
    assert not any(np.array_equal(r.segmentation, OBJECTS["disc_b"][0]) for r in small_dropped)


def test_box_grid_everything_thresholds():
    # with no IoU threshold the cut objects (IoU 0.3) come back as well; the soft unions still fail stability
    loose = everything_box_grid(
        fake_decode, (SIZE, SIZE), EverythingConfig(**{**CFG.__dict__, "box_pred_iou_thresh": 0})
    )
    assert len(loose) > 3
    assert all(r.stability_score == pytest.approx(1.0) for r in loose)
    # everything filtered -> no records
    strict = EverythingConfig(**{**CFG.__dict__, "box_pred_iou_thresh": 0.999})
    assert everything_box_grid(fake_decode, (SIZE, SIZE), strict) == []


def test_box_grid_everything_checks_decode_shapes():
    def bad(boxes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.zeros(len(boxes), SIZE, SIZE // 2), torch.zeros(len(boxes))

    with pytest.raises(ValueError, match="decode returned"):
        everything_box_grid(bad, (SIZE, SIZE), CFG)
    with pytest.raises(ValueError, match="chunk_size"):
        everything_box_grid(fake_decode, (SIZE, SIZE), CFG, chunk_size=0)


def _ring_and_disc() -> tuple[np.ndarray, np.ndarray]:
    """A thin ring (radii 11..14) and the filled disc it bounds (radius 14), like ACDC's myocardium and the
    myocardium with the left ventricle: the same tight box, mask IoU about 0.4."""
    yy, xx = np.mgrid[:SIZE, :SIZE]
    dist2 = (xx - 32) ** 2 + (yy - 32) ** 2
    return (dist2 > 11**2) & (dist2 <= 14**2), dist2 <= 14**2


def test_mask_nms_compares_masks_not_boxes():
    from segment_anything.utils.amg import batched_mask_to_box
    from torchvision.ops import nms

    from semisam.teacher.everything import mask_nms

    ring, disc = _ring_and_disc()
    shifted = np.roll(disc, 2, axis=1)  # the disc moved by two pixels: mask IoU about 0.8 with the disc
    masks = torch.from_numpy(np.stack([ring, disc, shifted, disc]))
    scores = torch.tensor([0.7, 0.9, 0.95, 0.8])
    # the ring survives beside the disc that shares its box; the disc and its duplicate lose to the shifted disc,
    # which scores highest
    assert mask_nms(masks, scores, 0.5).tolist() == [2, 0]
    assert nms(batched_mask_to_box(masks).float(), scores, 0.5).tolist() == [2]  # box NMS keeps one of the four
    assert mask_nms(masks, scores, 0.9).tolist() == [2, 1, 0]  # only the exact duplicate goes
    assert mask_nms(masks, scores, 1.0).tolist() == [2, 1, 3, 0]  # no IoU exceeds 1: all kept, by score
    assert mask_nms(masks[:0], scores[:0], 0.5).tolist() == []
    with pytest.raises(ValueError, match="mask_nms"):
        mask_nms(masks, scores[:2], 0.5)


def test_box_grid_everything_keeps_the_top_fraction_and_caps():
    cfg = EverythingConfig(**{**CFG.__dict__, "box_pred_iou_thresh": 0.0})
    everything = everything_box_grid(fake_decode, (SIZE, SIZE), cfg)
    assert len(everything) > 3
    # after NMS the three objects, framed by their tightest boxes, have the highest predicted IoU of all masks
    fraction = 3 / len(everything)
    top = everything_box_grid(
        fake_decode, (SIZE, SIZE), EverythingConfig(**{**cfg.__dict__, "box_keep_top_fraction": fraction})
    )
    assert len(top) == 3
    assert {n for r in top for n, (m, _) in OBJECTS.items() if np.array_equal(r.segmentation, m)} == set(OBJECTS)
    # a tiny fraction still keeps the single best mask
    one = everything_box_grid(
        fake_decode, (SIZE, SIZE), EverythingConfig(**{**cfg.__dict__, "box_keep_top_fraction": 1e-6})
    )
    assert len(one) == 1 and one[0].predicted_iou == max(r.predicted_iou for r in everything)
    capped = everything_box_grid(fake_decode, (SIZE, SIZE), EverythingConfig(**{**cfg.__dict__, "box_max_masks": 2}))
    assert [r.predicted_iou for r in capped] == [r.predicted_iou for r in everything[:2]]


def test_box_grid_everything_keeps_masks_from_a_tiny_random_sam(tiny_box_teacher):
    """Through the real decoder (a tiny random SAM as a box-only teacher): the box-mode defaults keep masks, as
    they do for LiteMedSAM, whose scores never pass the automatic generator's stability threshold."""
    from semisam.teacher.precompute import everything_masks

    teacher, cfg = tiny_box_teacher
    image = _image().transpose(2, 0, 1).astype(np.float32) / 255.0
    embedding = teacher.embed([image])
    records = everything_masks(teacher, image, embedding, cfg)
    n_boxes = len(box_grid((48, 64), cfg.teacher.everything.box_scales, cfg.teacher.everything.box_overlap))
    assert 0 < len(records) <= n_boxes
    ious = [r.predicted_iou for r in records]
    assert ious == sorted(ious, reverse=True)
    masks = torch.from_numpy(np.stack([r.segmentation for r in records])).float().flatten(1)
    inter = masks @ masks.T
    union = masks.sum(1)[:, None] + masks.sum(1)[None] - inter
    pairwise = (inter / union).fill_diagonal_(0)
    assert pairwise.max() <= cfg.teacher.everything.box_mask_nms_thresh + 1e-6  # mask NMS held
    maps = prior_maps(records, (48, 64))
    assert maps[1].max() == 1  # boundaries drawn (a random SAM's soft logits have stability 0: a flat seg prior)


# ----------------------------------------------------------------------------------------------------------------
# segment-anything's automatic mask generator on a tiny random SAM
# ----------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_box_teacher():
    """The tiny random SAM as a box-only teacher (so the everything mode is the box grid), with the default
    everything settings, and the config that goes with it."""
    from dataclasses import replace

    from semisam.config.schema import TeacherConfig
    from semisam.teacher.engine import build_teacher
    from semisam.teacher.models import build_tiny_sam, tiny_spec

    spec = replace(tiny_spec(), kind="tiny_box", accepts_points=False)
    teacher = build_teacher(TeacherConfig(device="cpu"), sam=build_tiny_sam(seed=0), spec=spec)
    return teacher, SimpleNamespace(teacher=TeacherConfig(device="cpu"))  # everything_masks reads teacher.everything


@pytest.fixture(scope="module")
def tiny_sam():
    from semisam.teacher.models import build_tiny_sam

    return build_tiny_sam(seed=0, encoder_size=64)


# thresholds 0 and NMS at IoU 1 (only exact duplicates go): a random SAM's masks all survive, 48 of them to compare
AMG_CFG = EverythingConfig(
    points_per_side=4, points_per_batch=5, pred_iou_thresh=0.0, stability_score_thresh=0.0, box_nms_thresh=1.0
)


def _image(height: int = 48, width: int = 64) -> np.ndarray:
    rng = np.random.default_rng(0)
    image = rng.integers(0, 60, size=(height, width, 3), dtype=np.uint8)
    image[10:30, 8:40] += 150  # a bright rectangle
    return image


def test_everything_amg_runs_and_cached_features_match(tiny_sam):
    from segment_anything import SamPredictor

    image = _image()
    records = everything_amg(tiny_sam, image, AMG_CFG)
    assert len(records) == 4 * 4 * 3  # 16 points x 3 masks each
    for r in records:
        assert isinstance(r, MaskRecord)
        assert r.segmentation.shape == (48, 64) and r.segmentation.dtype == bool
        assert r.area == int(r.segmentation.sum()) > 0
    maps = prior_maps(records, (48, 64))
    assert maps.shape == (2, 48, 64) and np.isfinite(maps).all() and maps.min() >= 0 and maps.max() <= 1

    predictor = SamPredictor(tiny_sam)
    predictor.set_image(image)
    features = predictor.get_image_embedding()
    assert features.shape == (1, 256, 4, 4)

    encoder_calls = []
    hook = tiny_sam.image_encoder.register_forward_hook(lambda *args: encoder_calls.append(1))
    try:
        cached = everything_amg(tiny_sam, image, AMG_CFG, features=features)
    finally:
        hook.remove()
    assert encoder_calls == []  # the cached embedding was used, the encoder never ran
    assert len(cached) == len(records)
    for a, b in zip(records, cached, strict=True):
        assert np.array_equal(a.segmentation, b.segmentation)
        for key in ("stability_score", "predicted_iou", "bbox", "area"):
            assert getattr(a, key) == getattr(b, key)


def test_everything_amg_refuses_bad_inputs(tiny_sam):
    with pytest.raises(ValueError, match="uint8"):
        everything_amg(tiny_sam, _image().astype(np.float32), AMG_CFG)
    with pytest.raises(ValueError, match="uint8"):
        everything_amg(tiny_sam, _image()[..., 0], AMG_CFG)
    with pytest.raises(ValueError, match="cached features"):
        everything_amg(tiny_sam, _image(), AMG_CFG, features=torch.zeros(1, 256, 8, 8))
