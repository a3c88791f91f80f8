"""The pseudo-label pipeline on hand-made probabilities with a stub teacher (no network, no data on disk):
what becomes of predicted objects that no prompt covers, how the teacher is scored during trust calibration."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from semisam.config.loader import load_config
from semisam.teacher.pseudo_labels import PseudoLabeler
from semisam.teacher.rectify import SOURCE_IGNORED

from .conftest import REPO


class BoxTeacher:
    """A box-only stub teacher: each box decodes to the pixels whose centre lies in it (logit +10), or, when
    ``masks`` is given, to ``masks[k]`` inside the box (the teacher's own, possibly wrong, answer)."""

    spec = SimpleNamespace(accepts_points=False)

    def __init__(self, mask: np.ndarray | None = None) -> None:
        self.mask = mask

    def input_size(self, size):
        return tuple(size)

    def decode_boxes(self, embeddings, boxes, original_sizes, input_sizes, points=None, point_labels=None):
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
