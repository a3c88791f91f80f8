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
