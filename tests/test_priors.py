"""SAMAug prior maps and the conversion of segment-anything's mask records."""

from __future__ import annotations

import numpy as np
import pytest
from skimage.segmentation import find_boundaries

from semisam.teacher.priors import MaskRecord, prior_maps, records_from_amg

SHAPE = (20, 24)


def square(y0: int, x0: int, side: int, shape: tuple[int, int] = SHAPE) -> np.ndarray:
    mask = np.zeros(shape, dtype=bool)
    mask[y0 : y0 + side, x0 : x0 + side] = True
    return mask


def record(mask: np.ndarray, stability: float, iou: float = 0.9) -> MaskRecord:
    ys, xs = np.nonzero(mask)
    bbox = (float(xs.min()), float(ys.min()), float(xs.max() - xs.min()), float(ys.max() - ys.min()))
    return MaskRecord(mask, stability, iou, bbox, int(mask.sum()))


def test_overlapping_squares_are_normalised_by_the_peak():
    a, b = square(2, 2, 8), square(6, 6, 8)  # overlap [6:10, 6:10]
    maps = prior_maps([record(a, 0.9), record(b, 0.6)], SHAPE)
    assert maps.shape == (2, *SHAPE) and maps.dtype == np.float32
    seg = maps[0]
    peak = 0.9 + 0.6  # > 1: the whole map is divided by it
    np.testing.assert_allclose(seg[a & ~b], 0.9 / peak, rtol=1e-6)
    np.testing.assert_allclose(seg[b & ~a], 0.6 / peak, rtol=1e-6)
    np.testing.assert_allclose(seg[a & b], 1.0, rtol=1e-6)
    assert np.all(seg[~(a | b)] == 0)
    assert seg.max() == pytest.approx(1.0)


def test_disjoint_masks_keep_their_stability_scores():
    a, b = square(1, 1, 5), square(10, 12, 6)
    seg = prior_maps([record(a, 0.9), record(b, 0.6)], SHAPE)[0]
    np.testing.assert_allclose(seg[a], 0.9, rtol=1e-6)
    np.testing.assert_allclose(seg[b], 0.6, rtol=1e-6)
    assert np.all(seg[~(a | b)] == 0)
    # a peak of exactly 1 is not rescaled either
    seg1 = prior_maps([record(a, 0.5), record(square(3, 3, 5), 0.5)], SHAPE)[0]
    assert seg1.max() == pytest.approx(1.0)
    np.testing.assert_allclose(seg1[a & ~square(3, 3, 5)], 0.5, rtol=1e-6)


def test_boundary_of_a_square_is_find_boundaries_thick():
    a = square(2, 2, 8)
    boundary = prior_maps([record(a, 0.9)], SHAPE)[1]
    np.testing.assert_array_equal(boundary, find_boundaries(a, mode="thick").astype(np.float32))
    # by hand: both sides of the edge, 4-connectivity (the outer corners are not boundary pixels)
    expected = np.zeros(SHAPE, dtype=np.float32)
    expected[1:11, 2:10] = 1
    expected[2:10, 1:11] = 1
    expected[3:9, 3:9] = 0
    np.testing.assert_array_equal(boundary, expected)


def test_boundary_prior_is_the_binary_union():
    a, b = square(2, 2, 8), square(6, 6, 8)
    boundary = prior_maps([record(a, 0.9), record(b, 0.6)], SHAPE)[1]
    union = find_boundaries(a, mode="thick") | find_boundaries(b, mode="thick")
    np.testing.assert_array_equal(boundary, union.astype(np.float32))
    assert set(np.unique(boundary)) == {0.0, 1.0}


def test_no_records_gives_zeros():
    maps = prior_maps([], (7, 9))
    assert maps.shape == (2, 7, 9) and maps.dtype == np.float32
    assert not maps.any()


def test_mask_of_the_wrong_shape_is_refused():
    with pytest.raises(ValueError, match="shape"):
        prior_maps([record(square(0, 0, 3, (10, 10)), 0.9)], SHAPE)


def test_records_from_amg():
    a, b = square(2, 2, 8), square(10, 12, 6)
    anns = [
        {
            "segmentation": a,
            "area": 64,
            "bbox": [2, 2, 7, 7],
            "predicted_iou": 0.97,
            "point_coords": [[6.0, 6.0]],
            "stability_score": 0.96,
            "crop_box": [0, 0, 24, 20],
        },
        {
            "segmentation": b.astype(np.uint8),
            "area": 36,
            "bbox": [12.0, 10.0, 5.0, 5.0],
            "predicted_iou": 0.6,
            "point_coords": [[14.0, 12.0]],
            "stability_score": 0.7,
            "crop_box": [0, 0, 24, 20],
        },
    ]
    records = records_from_amg(anns)
    assert len(records) == 2
    first, second = records
    assert first.segmentation.dtype == bool and np.array_equal(first.segmentation, a)
    assert (first.stability_score, first.predicted_iou, first.area) == (0.96, 0.97, 64)
    assert first.bbox == (2.0, 2.0, 7.0, 7.0) and all(isinstance(v, float) for v in first.bbox)
    assert second.segmentation.dtype == bool and np.array_equal(second.segmentation, b)
    assert (second.stability_score, second.predicted_iou, second.area, second.bbox) == (0.7, 0.6, 36, (12, 10, 5, 5))
    assert records_from_amg([]) == []


def test_records_from_amg_refuses_rle_and_missing_keys():
    rle = {"segmentation": {"size": [4, 4], "counts": [16]}, "area": 0, "bbox": [0, 0, 0, 0]}
    rle |= {"predicted_iou": 0.9, "stability_score": 0.9}
    with pytest.raises(ValueError, match="binary_mask"):
        records_from_amg([rle])
    with pytest.raises(ValueError, match="stability_score"):
        records_from_amg(
            [{"segmentation": np.zeros((4, 4), bool), "area": 0, "bbox": [0, 0, 0, 0], "predicted_iou": 1}]
        )


# ----------------------------------------------------------------------------------------------------------------
# Prior quality: the best mask per labeled structure, and the per-data-set summary
# ----------------------------------------------------------------------------------------------------------------


def test_best_mask_overlap_per_class():
    from semisam.teacher.priors import best_mask_overlap

    label = np.zeros(SHAPE, dtype=np.int64)
    label[2:10, 2:10] = 1  # 64 px
    label[12:16, 12:20] = 3  # 32 px; class 2 absent
    exact, half = square(2, 2, 8), square(2, 2, 8) & (np.arange(SHAPE[1]) < 6)[None]  # 64 px, 32 px inside class 1
    best = best_mask_overlap([record(half, 0.8), record(exact, 0.5)], label, [1, 2, 3])
    assert set(best) == {1, 3}  # an absent class is not scored
    assert best[1] == pytest.approx((1.0, 1.0))  # the exact mask wins, whatever its order or score
    assert best[3] == pytest.approx((0.0, 0.0))
    assert best_mask_overlap([record(half, 0.8)], label, [1])[1] == pytest.approx((0.5, 2 * 32 / 96))
    assert best_mask_overlap([], label, [1, 3]) == {1: (0.0, 0.0), 3: (0.0, 0.0)}
    with pytest.raises(ValueError, match="shape"):
        best_mask_overlap([record(square(0, 0, 3, (5, 5)), 0.5)], label, [1])


def test_quality_summary_and_empty_prior_warning(caplog):
    import logging

    from semisam.teacher.precompute import ImageQuality, summarize_quality, warn_if_empty

    rows = [
        ImageQuality("a", -1, 3, {1: (0.8, 0.9), 2: (0.2, 0.3)}),
        ImageQuality("b", -1, 5, {1: (0.4, 0.5)}),
        ImageQuality("c", 0, 0, None),  # an unlabeled image: counted, not scored
        ImageQuality("c", 1, 2, None),
    ]
    summary = summarize_quality(rows, ["background", "polyp"], skipped=7)
    assert summary["images"] == 4 and summary["cases"] == 3 and summary["cases_skipped"] == 7
    assert summary["masks_per_image"] == {"mean": 2.5, "median": 2.5, "min": 0, "max": 5}
    assert summary["empty_images"] == 1 and summary["empty_share"] == 0.25
    assert summary["scored_images"] == 2
    assert summary["classes"]["polyp"] == {
        "images": 2,
        "best_iou_mean": 0.6,
        "best_iou_median": 0.6,
        "best_dice_mean": 0.7,
        "share_best_iou_ge_0.5": 0.5,
    }
    assert summary["classes"]["class_2"]["images"] == 1  # no name given: named by index
    with caplog.at_level(logging.WARNING, logger="semisam"):
        assert warn_if_empty(summary)  # 25 % > 10 %
    assert "EMPTY PRIORS" in caplog.text and "1 of 4 images" in caplog.text
    caplog.clear()
    fine = summarize_quality([*rows, *[ImageQuality(f"d{i}", -1, 1, None) for i in range(6)]], ["background"])
    assert fine["empty_share"] == 0.1 and not warn_if_empty(fine) and "EMPTY" not in caplog.text
