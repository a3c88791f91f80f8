"""Which pseudo-labeled images to trust as a whole: image-level reliability, from the teacher's own answers.

Pixel-level rectification (:mod:`semisam.pseudolabel.rectify`) keeps the pixels the teacher is sure of; an
image can still be wrong as a whole (a box around the wrong object, a polyp the student missed). Two signals need
no label:

- **teacher agreement**: the teacher decodes each prompt and its jittered copies; the IoU of all of their binary
  masks at once (pixels every decode marks / pixels any decode marks) says whether the answer depends on exactly
  where the box is. Several prompts of an image are averaged weighted by their union area (a large object counts
  more than a speck). NaN when the teacher was asked nothing.
- **student agreement**: foreground Dice between the teacher's fused label and the student's prediction (the
  teacher refines the student's boxes: an answer far from what the student saw is more often the teacher's
  mistake than the student's; docs/RESULTS.md). NaN when neither marks any foreground.

``reliability=both`` takes the lower of the two (an image is reliable when both agree). Images without any
prompt (the student saw nothing) score NaN and come last: nothing says their empty label is right. The rule and
the share to keep were chosen on held-back labels with ``tools/analyze_pseudo_labels.py`` (per-bin report).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

BINARY_THRESHOLD = 0.5  # a decode marks a pixel where its sigmoid probability exceeds this


def decode_agreement(decodes: np.ndarray) -> tuple[float, float]:
    """Agreement of one prompt's decodes.

    Args:
        decodes: float (N, H, W) foreground probabilities of the prompt and its perturbed copies.

    Returns:
        ``(iou, union)``: pixels every decode marks over pixels any decode marks (1.0 when none marks any), and
        that union's size in pixels (the weight of this prompt in the image's score).
    """
    masks = np.asarray(decodes) > BINARY_THRESHOLD
    union = int(masks.any(0).sum())
    if union == 0:
        return 1.0, 0.0
    return float(masks.all(0).sum()) / union, float(union)


def image_teacher_agreement(agreements: Sequence[tuple[float, float]]) -> float:
    """Union-weighted mean of :func:`decode_agreement` over an image's prompts; NaN without prompts; the plain mean
    when no decode marks anything."""
    if not agreements:
        return math.nan
    ious = np.array([a for a, _ in agreements], dtype=np.float64)
    weights = np.array([w for _, w in agreements], dtype=np.float64)
    if weights.sum() == 0:
        return float(ious.mean())
    return float((ious * weights).sum() / weights.sum())


def foreground_dice(a: np.ndarray, b: np.ndarray, num_classes: int) -> float:
    """Mean over foreground classes present in ``a`` or ``b`` (int (H, W) label maps) of their Dice; NaN if none
    is present in either."""
    scores = []
    for k in range(1, num_classes):
        x, y = a == k, b == k
        total = int(x.sum()) + int(y.sum())
        if total:
            scores.append(2.0 * float((x & y).sum()) / total)
    return float(np.mean(scores)) if scores else math.nan


@dataclass(frozen=True)
class ImageReliability:
    """The two label-free signals of one pseudo-labeled image (see the module docstring), each in [0, 1] or NaN."""

    teacher: float
    student: float

    def score(self, rule: str) -> float:
        """The image's reliability under ``rule`` (a name of :data:`RULES`); NaN when unknown."""
        if rule not in RULES:
            raise ValueError(f"reliability rule {rule!r} is not one of {' | '.join(RULES)}")
        return RULES[rule](self)


def _teacher_rule(r: ImageReliability) -> float:
    """The teacher's agreement with itself across the perturbed prompts."""
    return r.teacher


def _student_rule(r: ImageReliability) -> float:
    """The teacher's agreement with the student whose prompts it answered."""
    return r.student


def _both_rule(r: ImageReliability) -> float:
    """The lower of the two: an image is reliable when both agree (NaN when either is unknown)."""
    if math.isnan(r.teacher) or math.isnan(r.student):
        return math.nan
    return min(r.teacher, r.student)


# The selection rules (pseudo_labels.reliability): a new rule is a function here and its name in
# semisam.config.schema.RELIABILITY_RULES (a test checks that the two agree).
RULES: dict[str, Callable[[ImageReliability], float]] = {
    "teacher": _teacher_rule,
    "student": _student_rule,
    "both": _both_rule,
}


def image_reliability(teacher_agreement: float, teacher_label: np.ndarray, model_probs: np.ndarray) -> ImageReliability:
    """Reliability of one image from its teacher agreement, the teacher's fused label (int (H, W)) and the
    student's class probabilities (float (K, H, W)) the prompts came from."""
    student = foreground_dice(teacher_label, model_probs.argmax(0), model_probs.shape[0])
    return ImageReliability(float(teacher_agreement), student)


def rank_by_reliability(scores: Sequence[float]) -> list[int]:
    """Indices from the most to the least reliable; NaN scores last, ties in input order."""
    keyed = [(-s if not math.isnan(s) else math.inf, i) for i, s in enumerate(scores)]
    return [i for _, i in sorted(keyed)]


def select_reliable(scores: Sequence[float], fraction: float) -> list[int]:
    """The ``fraction`` (0, 1] most reliable images (rounded, at least one if any has a score), in input order.
    Images with a NaN score are never selected."""
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction={fraction} must be in (0, 1]")
    scored = [i for i in rank_by_reliability(scores) if not math.isnan(scores[i])]
    count = min(len(scored), max(1, round(fraction * len(scores)))) if scored else 0
    return sorted(scored[:count])
