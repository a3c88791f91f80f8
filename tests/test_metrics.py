"""Segmentation metrics against values worked out by hand on tiny label maps.

Geometry used throughout: A = a 4x4 square at rows/cols 2..5 of an 8x8 image, B = A shifted down one row.
|A| = |B| = 16, |A n B| = 12 -> Dice = 24/32 = 0.75, IoU = 12/20 = 0.6.
Surfaces (MONAI: mask minus its erosion) are the 12 border pixels of each square. From A to B: the top
row of A (4 px) is 1 row from B's top row, the two inner pixels of A's bottom row are 1 away from B's
bottom row, the other 6 border pixels lie on B's surface (0). So each direction has six 0s and six 1s:
HD95 = 1, ASD = 0.5.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from semisam.evaluation.metrics import (
    EMPTY_RULES,
    METRIC_NAMES,
    MetricAccumulator,
    case_metrics,
    image_diagonal,
)


def square(shape=(8, 8), rows=(2, 6), cols=(2, 6), label=1, into=None):
    out = np.zeros(shape, dtype=np.int64) if into is None else into
    out[rows[0] : rows[1], cols[0] : cols[1]] = label
    return out


def test_square_overlap_dice_iou_and_one_pixel_shift_distances():
    ref = square()
    pred = square(rows=(3, 7))
    m = case_metrics(pred, ref, num_classes=2)
    assert set(m) == {1}
    assert list(m[1]) == list(METRIC_NAMES)
    assert m[1]["dice"] == pytest.approx(2 * 12 / (16 + 16))
    assert m[1]["iou"] == pytest.approx(12 / 20)
    assert m[1]["hd95"] == pytest.approx(1.0)
    assert m[1]["asd"] == pytest.approx(0.5)


def test_identical_masks_are_perfect():
    ref = square()
    m = case_metrics(ref.copy(), ref, num_classes=2)[1]
    assert m == {"dice": 1.0, "iou": 1.0, "hd95": 0.0, "asd": 0.0}


def test_isolated_pixels_distance_scaled_by_column_spacing():
    ref = np.zeros((8, 8), dtype=np.int64)
    pred = np.zeros((8, 8), dtype=np.int64)
    ref[2, 2] = 1
    pred[2, 5] = 1  # 3 columns away
    m = case_metrics(pred, ref, 2)[1]
    assert m["dice"] == 0.0 and m["iou"] == 0.0
    assert m["hd95"] == pytest.approx(3.0) and m["asd"] == pytest.approx(3.0)
    mm = case_metrics(pred, ref, 2, spacing=(0.5, 2.0))[1]  # (row, col) spacing: 3 cols * 2 mm
    assert mm["hd95"] == pytest.approx(6.0) and mm["asd"] == pytest.approx(6.0)


def test_anisotropic_spacing_follows_axis_order():
    ref = square()
    pred = square(rows=(3, 7))
    # rows 2 mm, cols 3 mm: the 1-row distances become 2 mm (the 1-col alternative is 3 mm)
    m = case_metrics(pred, ref, 2, spacing=(2.0, 3.0))[1]
    assert m["hd95"] == pytest.approx(2.0)
    assert m["asd"] == pytest.approx(1.0)
    # swapped: the top rows are now 3 mm away, the bottom-row inner pixels reach a column edge at 2 mm
    # -> each direction: six 0, four 3, two 2: HD95 = 3, ASD = (12 + 4) / 12
    m = case_metrics(pred, ref, 2, spacing=(3.0, 2.0))[1]
    assert m["hd95"] == pytest.approx(3.0)
    assert m["asd"] == pytest.approx(16 / 12)
    # overlap metrics do not depend on spacing
    assert m["dice"] == pytest.approx(0.75) and m["iou"] == pytest.approx(0.6)


def test_3d_cube_shifted_one_slice():
    ref = np.zeros((8, 8, 8), dtype=np.int64)
    pred = np.zeros((8, 8, 8), dtype=np.int64)
    ref[2:6, 2:6, 2:6] = 1
    pred[3:7, 2:6, 2:6] = 1
    # |A n B| = 48 of 64: Dice 0.75, IoU 0.6. Surface: 56 voxels per cube; 20 of them (the top face and the 4
    # inner voxels of the bottom face) are one slice from the other surface, 36 lie on it.
    m = case_metrics(pred, ref, 2, spacing=(2.0, 3.0, 3.0))[1]
    assert m["dice"] == pytest.approx(0.75)
    assert m["iou"] == pytest.approx(0.6)
    assert m["hd95"] == pytest.approx(2.0)
    assert m["asd"] == pytest.approx(20 * 2.0 / 56)
    px = case_metrics(pred, ref, 2)[1]
    assert px["asd"] == pytest.approx(20 / 56)


def test_both_empty_is_nan():
    ref = square()
    m = case_metrics(ref, ref, num_classes=3)  # class 2 absent from both
    assert m[1]["dice"] == 1.0
    assert all(math.isnan(v) for v in m[2].values())
    assert list(m[2]) == list(METRIC_NAMES)


def test_missed_structure_gets_worst_scores():
    ref = square()
    pred = np.zeros_like(ref)
    m = case_metrics(pred, ref, 2)[1]
    assert m["dice"] == 0.0 and m["iou"] == 0.0
    assert m["hd95"] == pytest.approx(math.sqrt(8**2 + 8**2))
    assert m["asd"] == pytest.approx(math.sqrt(8**2 + 8**2))
    mm = case_metrics(pred, ref, 2, spacing=(2.0, 3.0))[1]
    assert mm["hd95"] == pytest.approx(math.hypot(16.0, 24.0))
    assert mm["asd"] == pytest.approx(math.hypot(16.0, 24.0))


def test_hallucinated_structure_gets_worst_scores_3d():
    ref = np.zeros((4, 8, 10), dtype=np.int64)
    pred = ref.copy()
    pred[1, 2:4, 2:4] = 1
    m = case_metrics(pred, ref, 2, spacing=(5.0, 1.0, 1.0))[1]
    assert m["dice"] == 0.0 and m["iou"] == 0.0
    diag = math.sqrt(20.0**2 + 8.0**2 + 10.0**2)
    assert m["hd95"] == pytest.approx(diag) and m["asd"] == pytest.approx(diag)
    assert image_diagonal((4, 8, 10), (5.0, 1.0, 1.0)) == pytest.approx(diag)


def test_classes_are_scored_independently():
    ref = square(label=1)
    square(rows=(2, 6), cols=(6, 8), label=2, into=ref)  # class 2 touches class 1
    pred = square(label=1)
    square(rows=(3, 7), cols=(6, 8), label=2, into=pred)  # only class 2 is shifted
    m = case_metrics(pred, ref, 3)
    assert m[1] == {"dice": 1.0, "iou": 1.0, "hd95": 0.0, "asd": 0.0}
    # class 2: 4x2 rectangles shifted one row: overlap 3x2 = 6 -> Dice 12/16, IoU 6/10
    assert m[2]["dice"] == pytest.approx(0.75)
    assert m[2]["iou"] == pytest.approx(0.6)
    assert m[2]["hd95"] == pytest.approx(1.0)
    # the same class-2 maps alone give the same numbers
    alone = case_metrics((pred == 2).astype(np.int64), (ref == 2).astype(np.int64), 2)[1]
    assert alone == pytest.approx(m[2])


def test_metric_subset_and_label_dtypes():
    ref = square().astype(np.uint8)
    pred = square(rows=(3, 7)).astype(bool)
    m = case_metrics(pred, ref, 2, metrics=["dice"])
    assert m == {1: {"dice": pytest.approx(0.75)}}
    m = case_metrics(pred.astype(np.float32), ref, 2, metrics=("asd", "iou"))
    assert list(m[1]) == ["asd", "iou"]


@pytest.mark.parametrize(
    ("pred", "ref", "kwargs", "match"),
    [
        (np.zeros((8, 8), int), np.zeros((8, 7), int), {}, "shape"),
        (np.full((8, 8), 2), np.zeros((8, 8), int), {}, "outside"),
        (np.full((8, 8), -1), np.zeros((8, 8), int), {}, "outside"),
        (np.zeros((8, 8), int), np.zeros((8, 8), int), {"spacing": (1.0,)}, "spacing"),
        (np.zeros((8, 8), int), np.zeros((8, 8), int), {"spacing": (1.0, 0.0)}, "spacing"),
        (np.zeros((8, 8), int), np.zeros((8, 8), int), {"metrics": ("dice", "hd100")}, "unknown"),
        (np.full((8, 8), 0.5), np.zeros((8, 8), int), {}, "integer"),
        (np.zeros(8, int), np.zeros(8, int), {}, "H, W"),
    ],
)
def test_invalid_inputs_raise(pred, ref, kwargs, match):
    with pytest.raises(ValueError, match=match):
        case_metrics(pred, ref, 2, **kwargs)


def test_num_classes_must_include_background():
    with pytest.raises(ValueError, match="num_classes"):
        case_metrics(np.zeros((4, 4), int), np.zeros((4, 4), int), 1)


def test_acdc_sized_volume_scores_in_mm():
    """A volume of ACDC's size and spacing (speed is a benchmark's business, not a test's: a timed assertion
    failed on a loaded machine)."""
    _, yy, xx = np.mgrid[:10, :256, :216]
    r = np.hypot(yy - 128, xx - 108)
    ref = np.zeros((10, 256, 216), dtype=np.int64)
    ref[r < 40] = 2
    ref[r < 25] = 3
    ref[(r >= 40) & (r < 60) & (xx < 100)] = 1
    pred = np.roll(ref, 3, axis=1)
    m = case_metrics(pred, ref, 4, spacing=(10.0, 1.5, 1.5))
    for c in (1, 2, 3):
        assert 0.5 < m[c]["dice"] < 1.0
        assert 0.0 < m[c]["hd95"] <= 4.5 + 1e-6  # a 3-row shift at 1.5 mm: no surface point is further


# --- accumulator -------------------------------------------------------------------------------------------


def two_case_accumulator(**kwargs):
    """Case a: class 1 perfect, class 2 absent from both (NaN). Case b: class 1 shifted, class 2 missed."""
    acc = MetricAccumulator(3, class_names=["background", "RV", "LV"], **kwargs)
    ref_a = square()
    acc.add("a", ref_a.copy(), ref_a)
    ref_b = square()
    square(rows=(6, 8), cols=(0, 2), label=2, into=ref_b)
    pred_b = square(rows=(3, 7))
    acc.add("b", pred_b, ref_b)
    return acc


def test_accumulator_nan_ignoring_means_and_foreground_mean():
    acc = two_case_accumulator()
    assert len(acc) == 2
    diag = math.sqrt(128)
    mean = acc.mean()
    assert set(mean) == {"1", "2"}
    assert mean["1"]["dice"] == pytest.approx((1.0 + 0.75) / 2)
    assert mean["1"]["iou"] == pytest.approx((1.0 + 0.6) / 2)
    assert mean["1"]["hd95"] == pytest.approx((0.0 + 1.0) / 2)
    assert mean["1"]["asd"] == pytest.approx((0.0 + 0.5) / 2)
    # class 2: case a is NaN (ignored), case b is a miss
    assert mean["2"] == pytest.approx({"dice": 0.0, "iou": 0.0, "hd95": diag, "asd": diag})
    fg = acc.foreground_mean()
    assert fg["dice"] == pytest.approx((0.875 + 0.0) / 2)
    assert fg["hd95"] == pytest.approx((0.5 + diag) / 2)

    per_case = acc.per_case()
    assert [p["case"] for p in per_case] == ["a", "b"]
    assert set(per_case[0]["metrics"]) == {"1", "2"}
    assert math.isnan(per_case[0]["metrics"]["2"]["dice"])


def test_accumulator_summary_shape_and_units():
    acc = two_case_accumulator()
    s = acc.summary()
    assert set(s) >= {"metric_per_case", "mean", "foreground_mean", "class_names", "units", "num_cases"}
    assert s["class_names"] == {"1": "RV", "2": "LV"}
    assert s["units"] == {"hd95": "pixels", "asd": "pixels"}
    assert s["num_cases"] == 2
    assert s["empty_rules"] == EMPTY_RULES and "\n" not in EMPTY_RULES

    vol = MetricAccumulator(2)
    cube = np.zeros((3, 4, 4), dtype=np.int64)
    cube[1, 1:3, 1:3] = 1
    vol.add("v", cube, cube)
    assert vol.summary()["units"]["hd95"] == "voxels"
    assert vol.summary()["class_names"] == {"1": "class_1"}

    mm = MetricAccumulator(2, metrics=("dice", "hd95"), units="mm")
    mm.add("v", cube, cube, spacing=(5.0, 1.0, 1.0))
    assert mm.summary()["units"] == {"hd95": "mm"}
    assert set(mm.mean()["1"]) == {"dice", "hd95"}


def test_accumulator_all_nan_class_stays_nan():
    acc = MetricAccumulator(3)
    ref = square()
    acc.add("a", ref, ref)
    assert all(math.isnan(v) for v in acc.mean()["2"].values())
    assert acc.foreground_mean()["dice"] == 1.0  # the NaN class is left out of the foreground mean


def test_accumulator_rejects_mixed_spacing_duplicates_and_bad_names():
    ref = square()
    acc = MetricAccumulator(2)
    acc.add("a", ref, ref, spacing=(1.0, 1.0))
    with pytest.raises(ValueError, match="spacing"):
        acc.add("b", ref, ref)
    with pytest.raises(ValueError, match="already"):
        acc.add("a", ref, ref, spacing=(1.0, 1.0))
    acc2 = MetricAccumulator(2)
    acc2.add("a", ref, ref)
    with pytest.raises(ValueError, match="spacing"):
        acc2.add("b", ref, ref, spacing=(1.0, 1.0))
    assert len(acc2) == 1  # a rejected case is not kept
    with pytest.raises(ValueError, match="units='mm'"):
        MetricAccumulator(2, units="mm").add("a", ref, ref)
    with pytest.raises(ValueError, match="class_names"):
        MetricAccumulator(3, class_names=["a", "b", "c", "d"])
    with pytest.raises(ValueError, match="units"):
        MetricAccumulator(2, units="cm")
