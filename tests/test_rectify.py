"""The uncertainty rules on hand-made maps: uncertainty, multi-class fusion, rectification, Dice, trust gating."""

from __future__ import annotations

import math

import numpy as np
import pytest

from semisam.pseudolabel.rectify import (
    SOURCE_IGNORED,
    SOURCE_MODEL,
    SOURCE_TEACHER,
    ClassEvidence,
    DiceCounts,
    binary_entropy,
    dice_per_class,
    evidence_from_model,
    fuse_classes,
    mean_and_uncertainty,
    rectify,
    trust_decisions,
)

# ---------------------------------------------------------------- uncertainty


def test_binary_entropy_known_values():
    np.testing.assert_allclose(
        binary_entropy(np.array([0.0, 0.5, 1.0, 0.25, 0.75])), [0, 1, 0, 0.8113, 0.8113], atol=1e-4
    )


def test_entropy_of_the_mean():
    # three decodes per pixel; pixel means 0.5, 0, 1, 0.25
    probs = np.array(
        [
            [[1.0, 0.0, 1.0, 0.75]],
            [[0.0, 0.0, 1.0, 0.0]],
            [[0.5, 0.0, 1.0, 0.0]],
        ],
        dtype=np.float32,
    )
    mean, uncertainty = mean_and_uncertainty(probs, "entropy")
    assert mean.shape == uncertainty.shape == (1, 4)
    assert mean.dtype == uncertainty.dtype == np.float32
    np.testing.assert_allclose(mean, [[0.5, 0.0, 1.0, 0.25]], atol=1e-6)
    np.testing.assert_allclose(uncertainty, [[1.0, 0.0, 0.0, 0.8113]], atol=1e-4)
    # SAM-U: the entropy of the mean, not the mean of the entropies (all decodes certain, yet disagreeing)
    disagree = np.array([[[1.0]], [[0.0]]], dtype=np.float32)
    assert mean_and_uncertainty(disagree)[1][0, 0] == pytest.approx(1.0)


def test_variance_scaled_to_unit_range():
    probs = np.array(
        [
            [[1.0, 0.5, 0.2, 1.0]],
            [[0.0, 0.5, 0.6, 1.0]],
        ],
        dtype=np.float32,
    )
    mean, uncertainty = mean_and_uncertainty(probs, "variance")
    np.testing.assert_allclose(mean, [[0.5, 0.5, 0.4, 1.0]], atol=1e-6)
    # population variances 0.25, 0, 0.04, 0 -> x4
    np.testing.assert_allclose(uncertainty, [[1.0, 0.0, 0.16, 0.0]], atol=1e-6)


def test_single_decode_and_bad_inputs():
    mean, uncertainty = mean_and_uncertainty(np.full((1, 2, 2), 0.5, np.float32), "variance")
    np.testing.assert_array_equal(mean, 0.5)
    np.testing.assert_array_equal(uncertainty, 0)
    with pytest.raises(ValueError, match="kind"):
        mean_and_uncertainty(np.zeros((2, 2, 2), np.float32), "std")
    with pytest.raises(ValueError, match=r"\(N, H, W\)"):
        mean_and_uncertainty(np.zeros((2, 2), np.float32))
    with pytest.raises(ValueError, match=r"\(N, H, W\)"):
        mean_and_uncertainty(np.zeros((2, 2, 2), np.int64))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        mean_and_uncertainty(np.full((2, 2, 2), 3.0, np.float32))  # logits, not sigmoids


# ---------------------------------------------------------------- fusion


def ev(k: int, mean, uncertainty) -> ClassEvidence:
    return ClassEvidence(k, np.array([mean], np.float32), np.array([uncertainty], np.float32))


def test_fusion_label_rule_and_background_uncertainty_is_max():
    # pixels:      0     1     2     3     4
    a = ev(1, [0.9, 0.2, 0.6, 0.1, 0.97], [0.1, 0.3, 0.2, 0.05, 0.1])
    b = ev(2, [0.1, 0.3, 0.8, 0.4, 0.95], [0.2, 0.6, 0.3, 0.9, 0.15])
    label, uncertainty = fuse_classes([b, a], (1, 5))  # order of the evidence does not matter
    assert label.dtype == np.int64 and uncertainty.dtype == np.float32
    np.testing.assert_array_equal(label, [[1, 0, 2, 0, 1]])
    expected = [
        max(0.1, 0.2),  # class 1 alone claims it: max over classes
        max(0.3, 0.6),  # background: max over all classes
        max(0.2, 0.3, 1 - (0.8 - 0.6)),  # both claim it: conflict 0.8 dominates
        max(0.05, 0.9),  # background
        max(0.1, 0.15, 1 - (0.97 - 0.95)),  # confident overlap: conflict 0.98
    ]
    np.testing.assert_allclose(uncertainty, [expected], atol=1e-6)


def test_fusion_tie_goes_to_lower_class_with_full_conflict():
    label, uncertainty = fuse_classes([ev(3, [0.7], [0.1]), ev(2, [0.7], [0.1])], (1, 1))
    assert label[0, 0] == 2
    assert uncertainty[0, 0] == pytest.approx(1.0)


def test_fusion_single_class_and_exact_half():
    label, uncertainty = fuse_classes([ev(1, [0.5, 0.49], [1.0, 0.9997])], (1, 2))
    np.testing.assert_array_equal(label, [[1, 0]])  # mean >= 0.5 claims the pixel
    np.testing.assert_allclose(uncertainty, [[1.0, 0.9997]], atol=1e-6)


def test_fusion_without_evidence_is_certain_background():
    label, uncertainty = fuse_classes([], (3, 4))
    assert label.shape == (3, 4) and label.dtype == np.int64 and not label.any()
    assert uncertainty.dtype == np.float32 and not uncertainty.any()


def test_fusion_rejects_bad_evidence():
    with pytest.raises(ValueError, match="one entry per class"):
        fuse_classes([ev(1, [0.5], [0.1]), ev(1, [0.5], [0.1])], (1, 1))
    with pytest.raises(ValueError, match="shape"):
        fuse_classes([ev(1, [0.5], [0.1])], (1, 2))
    with pytest.raises(ValueError, match=">= 1"):
        fuse_classes([ev(0, [0.5], [0.1])], (1, 1))


# ---------------------------------------------------------------- rectification


def test_rectify_three_cases_on_1x3():
    teacher_label = np.array([[1, 2, 1]], np.int64)
    teacher_uncertainty = np.array([[0.2, 0.8, 0.8]], np.float32)
    model_probs = np.array(
        [
            [[0.1, 0.02, 0.4]],
            [[0.1, 0.95, 0.3]],  # pixel 1: model sure of class 1 (teacher said 2, uncertainly)
            [[0.8, 0.03, 0.3]],  # pixel 0: model says 2, but the teacher is certain
        ],
        np.float32,
    )
    r = rectify(teacher_label, teacher_uncertainty, model_probs, 0.5, 0.9, soft_weights=False)
    np.testing.assert_array_equal(r.label, [[1, 1, 1]])
    np.testing.assert_array_equal(r.weight, [[1, 1, 0]])
    np.testing.assert_array_equal(r.source, [[SOURCE_TEACHER, SOURCE_MODEL, SOURCE_IGNORED]])
    np.testing.assert_array_equal(r.uncertainty, teacher_uncertainty)
    assert r.label.dtype == np.int64 and r.weight.dtype == np.float32 and r.source.dtype == np.uint8
    assert r.uncertainty.dtype == np.float32


def test_kept_pixels_weigh_by_the_doubt_of_whoever_gave_their_label():
    teacher_label = np.array([[1, 1, 1, 0, 0]], np.int64)
    teacher_uncertainty = np.array([[0.0, 0.2, 0.5, 0.9, 0.9]], np.float32)
    model_probs = np.array([[[0.5, 0.5, 0.5, 0.95, 0.5]], [[0.5, 0.5, 0.5, 0.05, 0.5]]], np.float32)
    r = rectify(teacher_label, teacher_uncertainty, model_probs, uncertainty_threshold=0.5, model_confidence=0.9)
    np.testing.assert_array_equal(r.source, [[SOURCE_TEACHER] * 3 + [SOURCE_MODEL, SOURCE_IGNORED]])
    # teacher pixels: 1 - u; the model-fallback pixel: 1 - its binary entropy H(0.95) = 0.2864 bits
    np.testing.assert_allclose(r.weight, [[1.0, 0.8, 0.5, 1 - 0.2864, 0.0]], atol=1e-4)
    np.testing.assert_array_equal(r.uncertainty, teacher_uncertainty)  # the map itself is the teacher's


def test_rectify_thresholds_are_inclusive():
    label = np.zeros((1, 2), np.int64)
    unc = np.array([[0.5, 0.6]], np.float32)
    probs = np.array([[[0.1, 0.1]], [[0.9, 0.9]]], np.float32)
    r = rectify(label, unc, probs, 0.5, 0.9)
    np.testing.assert_array_equal(r.source, [[SOURCE_TEACHER, SOURCE_MODEL]])
    np.testing.assert_array_equal(r.label, [[0, 1]])


def test_rectify_rejects_bad_inputs():
    probs = np.array([[[0.5, 0.5]], [[0.5, 0.5]]], np.float32)
    with pytest.raises(ValueError, match="match"):
        rectify(np.zeros((2, 1), np.int64), np.zeros((2, 1), np.float32), probs, 0.5, 0.9)
    with pytest.raises(ValueError, match="0..1"):
        rectify(np.array([[0, 2]]), np.zeros((1, 2), np.float32), probs, 0.5, 0.9)
    with pytest.raises(ValueError, match="integer"):
        rectify(np.zeros((1, 2), np.float32), np.zeros((1, 2), np.float32), probs, 0.5, 0.9)
    with pytest.raises(ValueError, match="sum to 1"):
        rectify(np.zeros((1, 2), np.int64), np.zeros((1, 2), np.float32), probs * 0.5, 0.5, 0.9)
    with pytest.raises(ValueError, match="model_confidence"):
        rectify(np.zeros((1, 2), np.int64), np.zeros((1, 2), np.float32), probs, 0.5, 1.5)


# ---------------------------------------------------------------- model evidence


def test_evidence_from_model_and_its_fusion():
    probs = np.array(
        [
            [[0.7, 0.25, 0.1]],
            [[0.2, 0.5, 0.05]],
            [[0.1, 0.25, 0.85]],
        ],
        np.float32,
    )
    e = evidence_from_model(probs, 1)
    assert e.class_index == 1 and e.mean.dtype == e.uncertainty.dtype == np.float32
    np.testing.assert_allclose(e.mean, [[0.2, 0.5, 0.05]], atol=1e-7)
    np.testing.assert_allclose(e.uncertainty, binary_entropy(np.array([[0.2, 0.5, 0.05]])), atol=1e-6)
    assert e.uncertainty[0, 1] == pytest.approx(1.0)
    # teacher evidence for class 2, model evidence for the untrusted class 1
    teacher = ClassEvidence(2, np.array([[0.0, 0.1, 0.99]], np.float32), np.array([[0.0, 0.1, 0.05]], np.float32))
    label, uncertainty = fuse_classes([teacher, e], (1, 3))
    np.testing.assert_array_equal(label, [[0, 1, 2]])
    np.testing.assert_allclose(uncertainty[0, 1], 1.0, atol=1e-6)
    np.testing.assert_allclose(uncertainty[0, 2], max(0.05, float(binary_entropy(np.float64(0.05)))), atol=1e-6)
    with pytest.raises(ValueError, match="foreground"):
        evidence_from_model(probs, 0)
    with pytest.raises(ValueError, match="floating-point"):
        evidence_from_model(probs.argmax(0)[None].repeat(3, 0), 1)


# ---------------------------------------------------------------- Dice


def test_dice_per_class_hand_computed():
    pred = np.array([[1, 1, 0, 2], [1, 0, 0, 0]])
    ref = np.array([[1, 0, 0, 0], [1, 1, 0, 0]])
    dice = dice_per_class(pred, ref, 4)
    assert set(dice) == {1, 2, 3}
    assert dice[1] == pytest.approx(2 * 2 / (3 + 3))  # overlap 2, sizes 3 and 3
    assert dice[2] == 0.0  # predicted, not in the reference
    assert math.isnan(dice[3])  # in neither


def test_dice_per_class_perfect_and_any_shape():
    ref = np.array([0, 1, 1, 2, 2, 2])
    assert dice_per_class(ref, ref, 3) == {1: 1.0, 2: 1.0}
    assert dice_per_class(ref[None], ref[None], 3) == {1: 1.0, 2: 1.0}  # (1, N), as the lead scores kept pixels
    missed = dice_per_class(np.zeros_like(ref), ref, 3)
    assert missed == {1: 0.0, 2: 0.0}
    with pytest.raises(ValueError, match="shape"):
        dice_per_class(ref, ref[:3], 3)
    with pytest.raises(ValueError, match="0..2"):
        dice_per_class(ref + 1, ref, 3)


# ---------------------------------------------------------------- trust gating


def counts(*rows: tuple[float, float, float]) -> DiceCounts:
    """Per-image (intersection, total, pixels) rows."""
    return DiceCounts(*np.asarray(rows, dtype=np.float64).reshape(-1, 3).T)


def test_trust_needs_a_difference_outside_the_noise_band():
    # class 1: the teacher clearly better on every image; class 2: clearly worse; class 3: a tie far inside the
    # noise band (a difference of 2e-5 must not flip a whole bank); class 4: never a teacher pixel
    teacher = {
        1: counts((45, 100, 200), (44, 100, 200), (46, 100, 200)),
        2: counts((20, 100, 200), (22, 100, 200), (21, 100, 200)),
        3: counts((61111, 200000, 9e5), (61111, 200000, 9e5)),
        4: counts((0, 0, 0), (0, 0, 0)),
    }
    model = {
        1: counts((30, 100, 200), (31, 100, 200), (29, 100, 200)),
        2: counts((40, 100, 200), (41, 100, 200), (39, 100, 200)),
        3: counts((61109, 200000, 9e5), (61109, 200000, 9e5)),
        4: counts((0, 0, 0), (0, 0, 0)),
    }
    for previous in ({}, {1: False, 2: True, 3: False, 4: False}, {3: True, 4: True}):
        d = trust_decisions(teacher, model, previous, margin=0.02, noise_sigmas=2.0)
        assert d[1].trusted and d[1].reason == "teacher"
        assert not d[2].trusted and d[2].reason == "model"
        assert d[3].trusted == previous.get(3, True) and d[3].reason == "kept"  # a 2e-5 lead changes nothing
        assert d[4].trusted == previous.get(4, True) and d[4].reason == "no data" and d[4].pixels == 0
    assert d[1].teacher_dice == pytest.approx(2 * 135 / 300, abs=1e-6)
    assert d[1].model_dice == pytest.approx(2 * 90 / 300, abs=1e-6)
    # an exact tie without a margin keeps the decision in force too
    tie = trust_decisions({1: counts((5, 10, 10))}, {1: counts((5, 10, 10))}, {1: False}, 0.0, 2.0)
    assert tie[1].trusted is False and tie[1].reason == "kept"


def test_trust_band_grows_with_disagreement_between_images():
    # the teacher wins by 0.1 on average, but one image in four says the opposite by as much: not evidence enough
    teacher = counts((50, 100, 100), (50, 100, 100), (50, 100, 100), (30, 100, 100))
    model = counts((40, 100, 100), (40, 100, 100), (40, 100, 100), (40, 100, 100))
    d = trust_decisions({1: teacher}, {1: model}, {1: False}, margin=0.0, noise_sigmas=2.0)[1]
    assert d.teacher_dice - d.model_dice > 0.02 and d.band > d.teacher_dice - d.model_dice
    assert d.trusted is False and d.reason == "kept"
    with pytest.raises(ValueError, match="margin"):
        trust_decisions({1: teacher}, {1: model}, {}, margin=-0.1, noise_sigmas=2.0)
