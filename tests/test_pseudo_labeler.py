"""The pseudo-label pipeline on hand-made probabilities with a stub teacher (no network, no data on disk):
what becomes of predicted objects that no prompt covers, how the teacher is scored during trust calibration."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from semisam.config.loader import load_config
from semisam.pseudolabel.labeler import PseudoLabeler
from semisam.pseudolabel.rectify import SOURCE_IGNORED

from .conftest import REPO


class BoxTeacher:
    """A box-only stub teacher: each box decodes to the pixels whose centre lies in it (logit +10), or, when
    ``masks`` is given, to ``masks[k]`` inside the box (the teacher's own, possibly wrong, answer)."""

    spec = SimpleNamespace(accepts_points=False)

    def __init__(self, mask: np.ndarray | None = None) -> None:
        self.mask = mask

    def input_size(self, size):
        return tuple(size)

    def decode_boxes(
        self, embeddings, boxes, original_sizes, input_sizes, points=None, point_labels=None, classes=None
    ):
        out = []
        for image_boxes, (height, width) in zip(boxes, original_sizes, strict=True):
            rows = np.arange(height)[:, None] + 0.5
            cols = np.arange(width)[None, :] + 0.5
            maps = []
            for x0, y0, x1, y1 in np.asarray(image_boxes, dtype=np.float64):
                inside = (cols >= x0) & (cols < x1) & (rows >= y0) & (rows < y1)
                if self.mask is not None:
                    inside &= self.mask
                maps.append(np.where(inside, 10.0, -10.0))
            out.append(SimpleNamespace(logits=torch.from_numpy(np.stack(maps).astype(np.float32))))
        return out


class Images:
    """Stub loader and embedding store: every item is a blank (1, H, W) image with a blank embedding."""

    def __init__(self, shape):
        self.shape = shape

    def image_slice(self, case_id, slice_index):
        return np.zeros((1, *self.shape), np.float32)

    def load(self, case_id):
        return np.zeros((256, 4, 4), np.float16)


def binary_cfg(*extra):
    overrides = ["data.root=unused", "device=cpu", "data.num_classes=2", "data.class_names=[]"]
    overrides += ["pseudo_labels.perturbations=2", "pseudo_labels.jitter=0.0", "pseudo_labels.min_area=16"]
    return load_config(REPO / "configs/demo.yaml", [*overrides, *extra])


def labeler_for(cfg, probs: list[np.ndarray], teacher=None) -> PseudoLabeler:
    images = Images(probs[0].shape[-2:])
    labeler = PseudoLabeler(cfg, teacher or BoxTeacher(), images, images, None, torch.device("cpu"))
    labeler.model_probabilities = lambda model, items: [probs[i] for i in range(len(items))]
    return labeler


def two_polyps(confidence: float = 0.97) -> tuple[np.ndarray, np.ndarray]:
    """Binary softmax (2, 40, 40) with a large polyp (100 px), a second one (36 px) and a speck (4 px), each
    predicted at ``confidence``; and the label map of those objects."""
    label = np.zeros((40, 40), np.int64)
    label[4:14, 4:14] = 1
    label[25:31, 25:31] = 1
    label[35:37, 2:4] = 1  # below min_area=16
    fg = np.where(label == 1, confidence, 1 - confidence).astype(np.float32)
    return np.stack([1 - fg, fg]), label


@pytest.mark.parametrize("components", ["largest", "all"])
def test_predicted_objects_no_prompt_covers_are_not_certain_background(components):
    probs, objects = two_polyps()
    cfg = binary_cfg(f"pseudo_labels.components={components}")
    labeler = labeler_for(cfg, [probs])
    (result,), _ = labeler.label(torch.nn.Identity(), [("case", -1)], {1: True}, seed=0)
    r = result.rectified
    assert result.prompts > 0
    # the model predicts these pixels as the class at 0.97: they keep it, or are ignored; never weight-1 background
    erased = (objects == 1) & (r.label == 0) & (r.weight > 0)
    assert not erased.any(), f"{int(erased.sum())} predicted foreground pixels taught as background"
    second, speck = np.zeros_like(objects, bool), np.zeros_like(objects, bool)
    second[25:31, 25:31], speck[35:37, 2:4] = True, True
    for region in (second, speck):
        assert np.all((r.label[region] == 1) | (r.source[region] == SOURCE_IGNORED))


def test_every_component_is_prompted_by_default():
    probs, _ = two_polyps()
    labeler = labeler_for(binary_cfg(), [probs])
    assert labeler.cfg.pseudo_labels.components == "all"
    (result,), _ = labeler.label(torch.nn.Identity(), [("case", -1)], {1: True}, seed=0)
    assert result.prompts == 2 * (1 + 2)  # the two polyps above min_area, each with its 2 perturbations


def over_segmented_and_missed() -> tuple[list[np.ndarray], list[np.ndarray], np.ndarray]:
    """Two calibration images: on the first the model predicts a 10x10 square around a 6x6 object (which the
    teacher segments exactly); on the second it misses a 6x6 object altogether (the teacher is not asked)."""
    truth = np.zeros((40, 40), np.int64)
    truth[6:12, 6:12] = 1
    predicted = np.zeros((40, 40), np.float32)
    predicted[4:14, 4:14] = 1
    fg = np.where(predicted > 0, 0.97, 0.03).astype(np.float32)
    missed = np.full((40, 40), 0.03, np.float32)
    probs = [np.stack([1 - fg, fg]), np.stack([1 - missed, missed])]
    second = np.zeros((40, 40), np.int64)
    second[25:31, 25:31] = 1
    return probs, [truth, second], truth == 1


def test_calibration_scores_the_teacher_on_its_own_pixels():
    probs, labels, object_mask = over_segmented_and_missed()
    labeler = labeler_for(binary_cfg(), probs, BoxTeacher(mask=object_mask))
    trusted, scalars, model_dice = labeler.calibrate(torch.nn.Identity(), [("a", -1), ("b", -1)], labels, seed=0)
    # inside its box the teacher is exactly right; the model there has 100 predicted pixels for 36 true ones.
    # The second image, where the teacher was never asked, is nobody's evidence about the teacher.
    assert scalars["calibration/teacher_dice_1"] == pytest.approx(1.0, abs=1e-6)
    assert scalars["calibration/model_dice_1"] == pytest.approx(2 * 36 / 136, abs=1e-6)
    assert trusted == {1: True}
    # the model check still scores the model on every pixel of every held-out image
    assert model_dice == pytest.approx((2 * 36 / 136 + 0.0) / 2, abs=1e-6)


def test_calibration_inside_the_noise_band_keeps_the_decision_in_force():
    probs, labels, _ = over_segmented_and_missed()
    # a teacher that answers exactly what the model predicted: an exact tie on its pixels
    labeler = labeler_for(binary_cfg(), probs, BoxTeacher(mask=probs[0][1] > 0.5))
    items = [("a", -1), ("b", -1)]
    for previous in (False, True):
        trusted, scalars, _ = labeler.calibrate(torch.nn.Identity(), items, labels, seed=0, previous={1: previous})
        assert scalars["calibration/teacher_dice_1"] == pytest.approx(scalars["calibration/model_dice_1"])
        assert trusted == {1: previous}


class RingTeacher(BoxTeacher):
    """ACDC's failure, in miniature: a box around the ring (class 1, the myocardium) decodes to the cavity inside
    it (class 2, the LV), as LiteMedSAM's myocardium boxes return the LV cavity; a box around the cavity decodes
    to the cavity less a 1-pixel rim."""

    def __init__(self, cavity: np.ndarray, core: np.ndarray) -> None:
        super().__init__()
        self.cavity, self.core = cavity, core

    def decode_boxes(
        self, embeddings, boxes, original_sizes, input_sizes, points=None, point_labels=None, classes=None
    ):
        out = []
        for image_boxes in boxes:
            sides = np.asarray(image_boxes, dtype=np.float64)[:, 2] - np.asarray(image_boxes, dtype=np.float64)[:, 0]
            maps = [np.where(self.cavity if side > 16 else self.core, 10.0, -10.0) for side in sides]
            out.append(SimpleNamespace(logits=torch.from_numpy(np.stack(maps).astype(np.float32))))
        return out


def test_calibration_judges_each_class_on_its_own_decodes():
    """With every class trusted at once the ring's decode claims the cavity's rim, where the cavity's own decode
    is silent: the rim is the teacher's "certain" ring, and the cavity class would be scored 0 on it although
    its own decode is right wherever it speaks. Judged alone (the model's evidence for the ring), the cavity's
    teacher label is its own decode."""
    truth = np.zeros((40, 40), np.int64)
    truth[8:28, 8:28] = 1
    truth[12:24, 12:24] = 2  # 144 cavity pixels inside a ring
    cavity, core = truth == 2, np.zeros((40, 40), bool)
    core[13:23, 13:23] = True  # 100 pixels
    predicted = np.where(truth > 0, 1, 0)
    predicted[11:25, 11:25] = 2  # the model over-segments the cavity by a pixel
    probs = np.stack([np.where(predicted == c, 0.97, 0.015) for c in range(3)]).astype(np.float32)
    cfg = binary_cfg("data.num_classes=3", "pseudo_labels.trust_margin=0.02")
    labeler = labeler_for(cfg, [probs], RingTeacher(cavity, core))
    trusted, scalars, _ = labeler.calibrate(torch.nn.Identity(), [("a", -1)], [truth], seed=0)
    # the cavity's teacher pixels: its core (right) and the rim its decode leaves out (certain background)
    assert scalars["calibration/teacher_dice_2"] == pytest.approx(2 * 100 / (100 + 144), abs=1e-6)
    # the ring's decode is the cavity: wrong wherever it speaks
    assert scalars["calibration/teacher_dice_1"] < 0.1 and not trusted[1]
