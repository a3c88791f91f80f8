"""The uncertainty rules on hand-made maps: uncertainty, multi-class fusion, rectification, Dice, trust gating."""

from __future__ import annotations

import logging
import math

import numpy as np
import pytest

from semisam.teacher.rectify import (
    SOURCE_IGNORED,
    SOURCE_MODEL,
    SOURCE_TEACHER,
    ClassEvidence,
    binary_entropy,
    dice_per_class,
    evidence_from_model,
    fuse_classes,
    mean_and_uncertainty,
    rectify,
    trusted_classes,
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
    r = rectify(teacher_label, teacher_uncertainty, model_probs, uncertainty_threshold=0.5, model_confidence=0.9)
    np.testing.assert_array_equal(r.label, [[1, 1, 1]])
    np.testing.assert_array_equal(r.weight, [[1, 1, 0]])
    np.testing.assert_array_equal(r.source, [[SOURCE_TEACHER, SOURCE_MODEL, SOURCE_IGNORED]])
    np.testing.assert_array_equal(r.uncertainty, teacher_uncertainty)
    assert r.label.dtype == np.int64 and r.weight.dtype == np.float32 and r.source.dtype == np.uint8
    assert r.uncertainty.dtype == np.float32


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


def test_trusted_classes_rules(caplog):
    nan = float("nan")
    teacher = {1: [0.9, 0.8, nan], 2: [0.5, 0.6], 3: [0.70, 0.70], 4: [nan, nan], 5: [0.0, nan], 6: [nan]}
    model = {1: [0.7, 0.6, 0.2], 2: [0.8, 0.9], 3: [0.68, 0.68], 4: [nan], 5: [nan, nan], 6: [0.0]}
    with caplog.at_level(logging.INFO, logger="semisam"):
        trusted = trusted_classes(teacher, model, margin=0.05)
    assert trusted == {
        1: True,  # teacher 0.85 vs model 0.5 (the NaN image is ignored for the teacher only)
        2: False,  # teacher worse
        3: False,  # better by 0.02, within the 0.05 margin
        4: True,  # no data: trusted
        5: False,  # the teacher hallucinates a class neither the labels nor the model contain
        6: True,  # the model hallucinates it, the teacher stays silent
    }
    assert "class 4 has no Dice score" in caplog.text
    assert "class 5" in caplog.text and "class 6" in caplog.text
    assert "class 1" not in caplog.text
    # without a margin, class 3 is trusted; with a negative margin, the teacher may be a little worse
    assert trusted_classes({3: [0.70]}, {3: [0.68]}, 0.0) == {3: True}
    assert trusted_classes({2: [0.78]}, {2: [0.8]}, -0.05) == {2: True}
    # a class missing from one mapping is a class without data on that side
    assert trusted_classes({7: [nan]}, {}, 0.0) == {7: True}
