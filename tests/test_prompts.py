"""Prompts from hand-made probability maps: components, boxes, points, negatives, perturbations, refusals."""

from __future__ import annotations

import numpy as np
import pytest

from semisam.config.schema import PseudoLabelConfig
from semisam.pseudolabel.prompts import (
    ClassPrompt,
    check_class_probabilities,
    perturb_prompts,
    prompts_from_probabilities,
)


def probs_from_label(label: np.ndarray, num_classes: int, confidence: float = 0.9) -> np.ndarray:
    """Soft (K, H, W) probabilities whose argmax is ``label``: ``confidence`` on the label, the rest spread."""
    rest = (1.0 - confidence) / (num_classes - 1)
    probs = np.full((num_classes, *label.shape), rest, dtype=np.float32)
    np.put_along_axis(probs, label[None].astype(np.int64), confidence, axis=0)
    return probs


def disc(shape: tuple[int, int], centre: tuple[int, int], radius: float) -> np.ndarray:
    rows, cols = np.ogrid[: shape[0], : shape[1]]
    return (rows - centre[0]) ** 2 + (cols - centre[1]) ** 2 <= radius**2


def cfg(**kw) -> PseudoLabelConfig:
    base = {"min_area": 1, "box_margin": 0.0, "components": "largest"}
    base.update(kw)
    return PseudoLabelConfig(**base)


# ---------------------------------------------------------------- component selection


def two_blobs() -> np.ndarray:
    label = np.zeros((20, 30), dtype=np.int64)
    label[2:8, 3:9] = 1  # 36 px
    label[12:14, 20:22] = 1  # 4 px
    label[15:18, 2:5] = 2  # 9 px
    return label


def test_largest_component_only():
    prompts = prompts_from_probabilities(probs_from_label(two_blobs(), 3), cfg(components="largest"))
    assert [p.class_index for p in prompts] == [1, 2]
    assert prompts[0].component.sum() == 36
    np.testing.assert_array_equal(prompts[0].box, [3, 2, 9, 8])
    assert prompts[1].component.sum() == 9


def test_all_components_sorted_by_area_and_min_area():
    label = two_blobs()
    prompts = prompts_from_probabilities(probs_from_label(label, 3), cfg(components="all"))
    assert [(p.class_index, int(p.component.sum())) for p in prompts] == [(1, 36), (1, 4), (2, 9)]
    np.testing.assert_array_equal(prompts[1].box, [20, 12, 22, 14])

    prompts = prompts_from_probabilities(probs_from_label(label, 3), cfg(components="all", min_area=5))
    assert [(p.class_index, int(p.component.sum())) for p in prompts] == [(1, 36), (2, 9)]
    # the largest rule drops a class whose largest component is too small
    prompts = prompts_from_probabilities(probs_from_label(label, 3), cfg(components="largest", min_area=10))
    assert [p.class_index for p in prompts] == [1]


def test_min_area_fraction_drops_specks_relative_to_the_image():
    label = two_blobs()  # 600 pixels: components of 36 and 4 (class 1), 9 (class 2)
    fraction = cfg(components="all", min_area=1, min_area_fraction=0.01)  # 6 pixels here
    prompts = prompts_from_probabilities(probs_from_label(label, 3), fraction)
    assert [(p.class_index, int(p.component.sum())) for p in prompts] == [(1, 36), (2, 9)]
    larger = cfg(components="all", min_area=10, min_area_fraction=0.01)  # the larger of the two rules
    assert [int(p.component.sum()) for p in prompts_from_probabilities(probs_from_label(label, 3), larger)] == [36]


def test_diagonal_pixels_are_one_component():
    label = np.zeros((6, 6), dtype=np.int64)
    label[1, 1] = label[2, 2] = label[3, 3] = 1  # 8-connected chain
    (prompt,) = prompts_from_probabilities(probs_from_label(label, 2), cfg(components="all"))
    assert prompt.component.sum() == 3


def test_absent_class_gets_no_prompt_and_classes_filter():
    label = np.zeros((10, 10), dtype=np.int64)
    label[2:5, 2:5] = 2
    probs = probs_from_label(label, 4)
    assert [p.class_index for p in prompts_from_probabilities(probs, cfg())] == [2]
    assert prompts_from_probabilities(probs, cfg(), classes=[1, 3]) == []
    assert prompts_from_probabilities(probs_from_label(np.zeros((8, 8), np.int64), 3), cfg()) == []
    with pytest.raises(ValueError, match="foreground"):
        prompts_from_probabilities(probs, cfg(), classes=[0])
    with pytest.raises(ValueError, match="foreground"):
        prompts_from_probabilities(probs, cfg(), classes=[4])


def test_argmax_decides_the_region_not_a_threshold():
    # class 1 at 0.45 beats background 0.35 and class 2 0.2: the pixel is class 1 although below 0.5
    probs = np.zeros((3, 4, 4), dtype=np.float32)
    probs[0], probs[1], probs[2] = 0.8, 0.1, 0.1
    probs[:, 1, 2] = [0.35, 0.45, 0.2]
    (prompt,) = prompts_from_probabilities(probs, cfg())
    assert prompt.class_index == 1
    np.testing.assert_array_equal(prompt.box, [2, 1, 3, 2])
    np.testing.assert_array_equal(prompt.point, [2, 1])


# ---------------------------------------------------------------- boxes


def test_box_exact_pixel_edges_and_margin():
    label = np.zeros((40, 50), dtype=np.int64)
    label[10:20, 5:25] = 1  # rows 10..19, cols 5..24: 20 wide, 10 tall
    probs = probs_from_label(label, 2)
    (tight,) = prompts_from_probabilities(probs, cfg())
    assert tight.box.dtype == np.float32 and tight.box.shape == (4,)
    np.testing.assert_array_equal(tight.box, [5, 10, 25, 20])
    (grown,) = prompts_from_probabilities(probs, cfg(box_margin=0.1))
    np.testing.assert_allclose(grown.box, [5 - 2, 10 - 1, 25 + 2, 20 + 1])


def test_box_clipped_at_image_borders():
    label = np.zeros((16, 16), dtype=np.int64)
    label[0:4, 12:16] = 1
    (prompt,) = prompts_from_probabilities(probs_from_label(label, 2), cfg(box_margin=0.5))
    np.testing.assert_allclose(prompt.box, [10, 0, 16, 6])


# ---------------------------------------------------------------- points


def test_point_is_disc_centre():
    label = disc((31, 41), (12, 25), 6).astype(np.int64)
    (prompt,) = prompts_from_probabilities(probs_from_label(label, 2), cfg())
    assert prompt.point.dtype == np.float32
    np.testing.assert_array_equal(prompt.point, [25, 12])  # XY = (column, row)


def test_point_on_ring_body_not_in_hole():
    shape, centre = (41, 41), (20, 20)
    ring = disc(shape, centre, 12) & ~disc(shape, centre, 8)
    label = ring.astype(np.int64)
    (prompt,) = prompts_from_probabilities(probs_from_label(label, 2), cfg())
    x, y = prompt.point.astype(int)
    assert ring[y, x]
    radius = np.hypot(y - centre[0], x - centre[1])
    assert 8 < radius <= 12  # in the ring's body, not at the centroid (which lies in the hole)


def test_point_of_component_cut_by_border_stays_inside():
    label = np.zeros((20, 20), dtype=np.int64)
    label[0:5, 0:20] = 1  # a band along the top edge, 5 rows
    (prompt,) = prompts_from_probabilities(probs_from_label(label, 2), cfg())
    assert prompt.point[1] == 2  # the border counts as outside: the middle row of the band


# ---------------------------------------------------------------- negative points


def test_negative_points_in_background_inside_box():
    shape, centre = (41, 41), (20, 20)
    ring = disc(shape, centre, 12) & ~disc(shape, centre, 8)
    label = ring.astype(np.int64)
    label[disc(shape, centre, 5)] = 2  # a second class inside the hole (ACDC: the LV inside the myocardium)
    label[0:3, 0:3] = 1  # a far, small component of class 1: not in the box
    probs = probs_from_label(label, 3)
    (ring_prompt, _) = prompts_from_probabilities(probs, cfg(negative_points=3))
    negatives = ring_prompt.negative_points
    assert negatives.shape == (3, 2) and negatives.dtype == np.float32
    x0, y0, x1, y1 = ring_prompt.box
    for x, y in negatives.astype(int):
        assert label[y, x] != 1  # not the class
        assert x0 <= x < x1 and y0 <= y < y1
    # the farthest background point from the ring is in its hole, at its centre
    np.testing.assert_array_equal(negatives[0], [20, 20])
    # greedy farthest-first: distinct points
    assert len({tuple(p) for p in negatives.tolist()}) == 3
    # deterministic
    again = prompts_from_probabilities(probs, cfg(negative_points=3))[0].negative_points
    np.testing.assert_array_equal(again, negatives)


def test_negative_points_none_when_not_asked_or_no_background():
    label = np.zeros((10, 10), dtype=np.int64)
    label[2:6, 2:6] = 1
    (prompt,) = prompts_from_probabilities(probs_from_label(label, 2), cfg(negative_points=0))
    assert prompt.negative_points is None
    (full,) = prompts_from_probabilities(probs_from_label(np.ones((6, 6), np.int64), 2), cfg(negative_points=2))
    assert full.negative_points is None


def test_negative_points_fall_back_to_image_when_box_is_all_class():
    label = np.zeros((10, 10), dtype=np.int64)
    label[2:6, 2:6] = 1  # a full square: its tight box has no background
    (prompt,) = prompts_from_probabilities(probs_from_label(label, 2), cfg(negative_points=2))
    for x, y in prompt.negative_points.astype(int):
        assert label[y, x] == 0
    np.testing.assert_array_equal(prompt.negative_points[0], [9, 9])  # farthest from the square


# ---------------------------------------------------------------- perturbation


def square_prompt() -> tuple[ClassPrompt, np.ndarray]:
    label = np.zeros((32, 48), dtype=np.int64)
    label[4:14, 32:36] = 1  # an L: its box holds background, so "points in the component" is a real check
    label[10:14, 32:48] = 1  # reaches the right border: the grown box is clipped there
    (prompt,) = prompts_from_probabilities(probs_from_label(label, 2), cfg(box_margin=0.1, negative_points=2))
    return prompt, label


def test_perturbation_bounds_count_validity_and_points():
    prompt, _ = square_prompt()
    height, width = prompt.component.shape
    jitter = 0.3
    copies = perturb_prompts(prompt, 50, jitter, (height, width), np.random.default_rng(0))
    assert len(copies) == 50
    x0, y0, x1, y1 = prompt.box.astype(np.float64)
    limit = jitter * np.array([x1 - x0, y1 - y0, x1 - x0, y1 - y0]) + 1e-4
    moved_any = False
    for c in copies:
        assert c.box.dtype == np.float32 and c.class_index == prompt.class_index
        assert np.all(np.abs(c.box - prompt.box) <= limit)
        assert c.box[0] >= 0 and c.box[2] <= width and c.box[1] >= 0 and c.box[3] <= height
        assert c.box[2] >= c.box[0] + 1 and c.box[3] >= c.box[1] + 1
        x, y = c.point.astype(int)
        assert c.point.dtype == np.float32 and np.array_equal(c.point, [x, y])
        assert prompt.component[y, x]
        assert c.negative_points is prompt.negative_points
        moved_any |= not np.array_equal(c.box, prompt.box)
    assert moved_any
    # the points are resampled (not all the same)
    assert len({tuple(c.point.tolist()) for c in copies}) > 5
    # the grown box is clipped at the right border (48 + 1.6 > 48), and so are the copies that move right
    assert prompt.box[2] == width
    assert any(c.box[2] == width for c in copies)


def test_perturbation_is_deterministic_and_excludes_original():
    prompt, _ = square_prompt()
    a = perturb_prompts(prompt, 6, 0.2, prompt.component.shape, np.random.default_rng(7))
    b = perturb_prompts(prompt, 6, 0.2, prompt.component.shape, np.random.default_rng(7))
    c = perturb_prompts(prompt, 6, 0.2, prompt.component.shape, np.random.default_rng(8))
    assert [p.box.tolist() for p in a] == [p.box.tolist() for p in b]
    assert [p.point.tolist() for p in a] == [p.point.tolist() for p in b]
    assert [p.box.tolist() for p in a] != [p.box.tolist() for p in c]
    assert perturb_prompts(prompt, 0, 0.2, prompt.component.shape, np.random.default_rng(0)) == []
    assert all(p is not prompt for p in a)


def test_perturbation_keeps_tiny_boxes_valid_under_large_jitter():
    component = np.zeros((8, 8), dtype=bool)
    component[3, 4] = True
    prompt = ClassPrompt(1, np.array([4, 3, 5, 4], np.float32), component, np.array([4, 3], np.float32), None)
    for c in perturb_prompts(prompt, 200, 1.0, (8, 8), np.random.default_rng(1)):
        assert c.box[2] >= c.box[0] + 1 and c.box[3] >= c.box[1] + 1
        assert np.all(np.abs(c.box - prompt.box) <= 1.0 + 1e-5)  # jitter 1.0 x side 1
        np.testing.assert_array_equal(c.point, [4, 3])  # the only pixel of the component


def test_perturbation_without_point_and_bad_arguments():
    prompt, _ = square_prompt()
    no_point = ClassPrompt(1, prompt.box, prompt.component, None, None)
    assert all(c.point is None for c in perturb_prompts(no_point, 3, 0.1, (32, 48), np.random.default_rng(0)))
    with pytest.raises(ValueError):
        perturb_prompts(prompt, -1, 0.1, (32, 48), np.random.default_rng(0))
    with pytest.raises(ValueError):
        perturb_prompts(prompt, 2, -0.1, (32, 48), np.random.default_rng(0))
    with pytest.raises(ValueError, match="valid box"):
        perturb_prompts(prompt, 2, 0.1, (16, 16), np.random.default_rng(0))  # box outside a smaller image


# ---------------------------------------------------------------- refusing labels


def test_refuses_label_maps():
    label = two_blobs()
    with pytest.raises(ValueError, match="floating-point"):
        prompts_from_probabilities(label, cfg())  # int (H, W)
    with pytest.raises(ValueError, match="floating-point"):
        prompts_from_probabilities(np.stack([label == 0, label == 1, label == 2]), cfg())  # bool one-hot
    with pytest.raises(ValueError, match="floating-point"):
        prompts_from_probabilities(np.eye(3, dtype=np.int64)[label].transpose(2, 0, 1), cfg())  # int one-hot
    with pytest.raises(ValueError, match=r"\(K, H, W\)"):
        prompts_from_probabilities(label.astype(np.float32), cfg())  # float label map (H, W)
    # a float one-hot of the foreground classes only (no background channel): sums are 0 on background
    foreground_only = np.stack([label == 1, label == 2]).astype(np.float32)
    with pytest.raises(ValueError, match="sum to 1"):
        prompts_from_probabilities(foreground_only, cfg())
    # a float label map with a channel axis of class indices 0..2 (K=1 after stacking is refused too)
    with pytest.raises(ValueError, match="K >= 2"):
        prompts_from_probabilities(label[None].astype(np.float32), cfg())
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        prompts_from_probabilities(np.stack([label, 1 - label]).astype(np.float32), cfg())
    bad = probs_from_label(label, 3)
    bad[0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="non-finite"):
        prompts_from_probabilities(bad, cfg())


def test_accepts_low_precision_softmax():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(4, 16, 16)).astype(np.float32)
    probs = np.exp(logits) / np.exp(logits).sum(0, keepdims=True)
    probs16 = probs.astype(np.float16)  # sums off by ~1e-3
    assert check_class_probabilities(probs16) is not None
    prompts_from_probabilities(probs16, cfg())
