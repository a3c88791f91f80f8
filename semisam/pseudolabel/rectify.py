"""The uncertainty rules of the pseudo-labels, each in one place: uncertainty from the teacher's decodes of a
prompt and its perturbations, the fusion of per-class evidence into one label map, the rectification, and the
per-class trust gate.

All arrays are numpy and belong to ONE image of size ``(H, W)`` (its original size, the teacher's frame).
Uncertainties are float32 in ``[0, 1]``: 0 = certain, 1 = as uncertain as it gets. Labels are int64 class
indices, 0 = background. See :class:`~semisam.config.schema.PseudoLabelConfig` for the method.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from scipy.special import entr

from semisam.config.schema import UNCERTAINTY_KINDS
from semisam.pseudolabel.prompts import PROBABILITY_RANGE_TOLERANCE, check_class_probabilities
from semisam.utils import SMOOTH

logger = logging.getLogger("semisam")


def binary_entropy(p: np.ndarray) -> np.ndarray:
    """Binary entropy in bits of probabilities ``p`` (any shape, values in ``[0, 1]``): float32, 1.0 at 0.5 and
    0.0 at 0 and 1 (``0 log 0 = 0``)."""
    p = np.clip(np.asarray(p, dtype=np.float64), 0.0, 1.0)
    return ((entr(p) + entr(1.0 - p)) / math.log(2.0)).clip(0.0, 1.0).astype(np.float32)


def mean_and_uncertainty(probs: np.ndarray, kind: str = "entropy") -> tuple[np.ndarray, np.ndarray]:
    """Mean and uncertainty of the teacher's ``N`` foreground probability maps for one prompt set (SAM-U).

    Args:
        probs: float ``(N, H, W)``, values in ``[0, 1]``: ``sigmoid(logits)`` of the teacher's decodes of one
            prompt and its ``N - 1`` perturbations (``N >= 1``).
        kind: ``"entropy"``: binary entropy of the mean, in bits (1.0 where the mean is 0.5, 0 where it is 0 or
            1); ``"variance"``: the variance over ``N`` times 4 (the largest variance of a ``[0, 1]`` variable is
            1/4), so 1.0 where half the decodes say 0 and half say 1.

    Returns:
        ``(mean, uncertainty)``, both float32 ``(H, W)`` in ``[0, 1]``.

    Raises:
        ValueError: an unknown ``kind``, a shape other than ``(N, H, W)``, a non-float array, values outside
            ``[0, 1]``.
    """
    if kind not in UNCERTAINTY_KINDS:
        raise ValueError(f"uncertainty kind {kind!r} must be one of {', '.join(UNCERTAINTY_KINDS)}")
    probs = np.asarray(probs)
    if not np.issubdtype(probs.dtype, np.floating) or probs.ndim != 3 or probs.shape[0] < 1:
        raise ValueError(f"probs must be float (N, H, W) sigmoid maps with N >= 1, got {probs.dtype} {probs.shape}")
    _check_unit_range(probs, "probs")
    p = probs.astype(np.float64).clip(0.0, 1.0)
    mean = p.mean(axis=0)
    if kind == "entropy":
        uncertainty = binary_entropy(mean)
    else:
        uncertainty = (4.0 * p.var(axis=0)).clip(0.0, 1.0)
    return mean.astype(np.float32), uncertainty.astype(np.float32)


@dataclass
class ClassEvidence:
    """One class's evidence on one image: the teacher's (or, for a class the teacher is not trusted with, the
    model's: :func:`evidence_from_model`).

    Attributes:
        class_index: the foreground class, ``>= 1``.
        mean: float ``(H, W)`` in ``[0, 1]``: the probability that each pixel belongs to the class.
        uncertainty: float ``(H, W)`` in ``[0, 1]``.
    """

    class_index: int
    mean: np.ndarray
    uncertainty: np.ndarray


def fuse_classes(evidence: Sequence[ClassEvidence], shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """One label map and its uncertainty from per-class evidence: THE multi-class rule.

    **Label.** A pixel gets the class with the highest mean among the classes whose mean is ``>= 0.5`` there
    (equal means: the lower class index); if no class reaches 0.5, it is background (0).

    **Uncertainty.** The label at a pixel is a claim about *every* class: "``k`` yes, every other class no" (and a
    background pixel says "no" to all of them). So the pixel's uncertainty is the **maximum of all classes'
    uncertainties there**, whatever its label. On top of that, where a second class also claims the pixel
    (runner-up mean ``>= 0.5``: overlapping prompts of different classes), the teacher contradicts itself and the
    uncertainty is at least the *conflict* ``1 - (mean_winner - mean_runner_up)`` (1 when the two are tied).

    Why not only the winner's own uncertainty: a pixel would then be certain where the winner is sure while
    another class's decodes disagree about it (e.g. ACDC's myocardium ring, whose box also covers the LV: the
    teacher's myocardium answer wavers over the LV), and the rule would jump from certain to uncertain when a
    runner-up crosses 0.5. With entropy, a runner-up just below 0.5 already has uncertainty ~1 and the conflict
    at 0.5 is continuous with it. Where the evidence is uncertain, :func:`rectify` still takes the model's label if
    the model is confident, so this costs only the pixels nobody is sure of.

    **No evidence at all** (the model predicted no foreground, so the teacher was not asked, and no class came
    from the model): every pixel is background with uncertainty 0 — certain, i.e. the model's all-background
    answer is kept as a weight-1 pseudo-label. Likewise a class without evidence is treated as certainly absent.

    Args:
        evidence: at most one :class:`ClassEvidence` per class; each ``mean`` / ``uncertainty`` of shape ``shape``.
        shape: ``(H, W)`` of the image.

    Returns:
        ``(label, uncertainty)``: int64 ``(H, W)`` and float32 ``(H, W)`` in ``[0, 1]``.

    Raises:
        ValueError: a class index < 1, a class given twice, maps of the wrong shape or outside ``[0, 1]``.
    """
    shape = (int(shape[0]), int(shape[1]))
    if not evidence:
        return np.zeros(shape, dtype=np.int64), np.zeros(shape, dtype=np.float32)
    indices = [int(e.class_index) for e in evidence]
    if min(indices) < 1:
        raise ValueError(f"evidence class indices must be foreground (>= 1), got {indices}")
    if len(set(indices)) != len(indices):
        raise ValueError(f"evidence must hold one entry per class, got classes {indices}")
    ordered = sorted(evidence, key=lambda e: int(e.class_index))
    for e in ordered:
        for name in ("mean", "uncertainty"):
            array = np.asarray(getattr(e, name))
            if array.shape != shape:
                raise ValueError(f"class {e.class_index}: {name} has shape {array.shape}, expected {shape}")
            _check_unit_range(array, f"class {e.class_index} {name}")
    means = np.stack([np.asarray(e.mean, dtype=np.float64) for e in ordered])  # (C, H, W)
    uncertainties = np.stack([np.asarray(e.uncertainty, dtype=np.float64) for e in ordered])
    class_ids = np.asarray([int(e.class_index) for e in ordered], dtype=np.int64)

    claims = np.where(means >= 0.5, means, -1.0)  # a class below 0.5 does not claim the pixel
    winner = claims.argmax(axis=0)  # first maximum = lower class index on ties
    claimed = claims.max(axis=0) >= 0.5
    label = np.where(claimed, class_ids[winner], 0).astype(np.int64)

    uncertainty = uncertainties.max(axis=0)
    if len(ordered) > 1:
        top_two = np.sort(claims, axis=0)[-2:]  # (2, H, W): runner-up, winner
        contested = top_two[0] >= 0.5
        conflict = 1.0 - (top_two[1] - top_two[0])
        uncertainty = np.where(contested, np.maximum(uncertainty, conflict), uncertainty)
    return label, uncertainty.clip(0.0, 1.0).astype(np.float32)


@dataclass
class Rectified:
    """A rectified pseudo-label of one image.

    Attributes:
        label: int64 ``(H, W)`` class indices (meaningless where ``weight == 0``: the teacher's label is kept).
        weight: float32 ``(H, W)`` in ``[0, 1]``: how much the pixel counts in the loss, 0 where it is ignored
            (see :func:`rectify` for the soft weights of kept pixels).
        uncertainty: float32 ``(H, W)``: the teacher's uncertainty (before rectification).
        source: uint8 ``(H, W)``: :data:`SOURCE_IGNORED` (0), :data:`SOURCE_TEACHER` (1, teacher certain) or
            :data:`SOURCE_MODEL` (2, teacher uncertain and model confident).
    """

    label: np.ndarray
    weight: np.ndarray
    uncertainty: np.ndarray
    source: np.ndarray


SOURCE_IGNORED, SOURCE_TEACHER, SOURCE_MODEL = 0, 1, 2


def rectify(
    teacher_label: np.ndarray,
    teacher_uncertainty: np.ndarray,
    model_probs: np.ndarray,
    uncertainty_threshold: float,
    model_confidence: float,
    soft_weights: bool = True,
) -> Rectified:
    """THE rectification rule, per pixel:

    1. teacher uncertainty ``u <= uncertainty_threshold``: the teacher's label (source 1), weight ``1 - u``;
    2. otherwise, the model's max probability ``>= model_confidence``: the model's argmax label (source 2),
       weight ``1 - H(model) / log2(K)`` (its entropy over the ``K`` classes, normalised to ``[0, 1]``);
    3. otherwise: weight 0 (source 0); the label stays the teacher's and is not trained on.

    Why soft weights: a kept pixel whose decodes nearly disagree (``u`` just under the threshold) is not as good
    a label as one all decodes agree on; the weight says so to the loss instead of a hard 0/1 step at the
    threshold. Each kept pixel is weighted by the doubt of whoever gave its label. With ``soft_weights=False``
    every kept pixel weighs 1.

    Args:
        teacher_label: integer ``(H, W)`` fused teacher label (:func:`fuse_classes`), values in ``0..K-1``.
        teacher_uncertainty: float ``(H, W)`` in ``[0, 1]``.
        model_probs: float ``(K, H, W)`` softmax probabilities of the model (validated as such).
        uncertainty_threshold: in ``[0, 1]``.
        model_confidence: in ``[0, 1]``.

    Raises:
        ValueError: mismatched shapes, a non-integer or out-of-range label, invalid probabilities or thresholds.
    """
    model_probs = check_class_probabilities(model_probs, "model_probs")
    num_classes, height, width = model_probs.shape
    teacher_label = np.asarray(teacher_label)
    teacher_uncertainty = np.asarray(teacher_uncertainty)
    if teacher_label.shape != (height, width) or teacher_uncertainty.shape != (height, width):
        raise ValueError(
            f"teacher_label {teacher_label.shape} and teacher_uncertainty {teacher_uncertainty.shape} must match "
            f"the model's (H, W) = {(height, width)}"
        )
    if not np.issubdtype(teacher_label.dtype, np.integer):
        raise ValueError(f"teacher_label must be an integer label map, got dtype {teacher_label.dtype}")
    if teacher_label.size and (teacher_label.min() < 0 or teacher_label.max() >= num_classes):
        raise ValueError(f"teacher_label values must lie in 0..{num_classes - 1}")
    _check_unit_range(teacher_uncertainty, "teacher_uncertainty")
    for name, value in (("uncertainty_threshold", uncertainty_threshold), ("model_confidence", model_confidence)):
        if not 0.0 <= value <= 1.0:
            raise ValueError(f"{name}={value} must be in [0, 1]")

    teacher_sure = teacher_uncertainty <= uncertainty_threshold
    model_sure = ~teacher_sure & (model_probs.max(axis=0) >= model_confidence)
    label = np.where(model_sure, model_probs.argmax(axis=0), teacher_label).astype(np.int64)
    source = np.full((height, width), SOURCE_IGNORED, dtype=np.uint8)
    source[teacher_sure] = SOURCE_TEACHER
    source[model_sure] = SOURCE_MODEL
    weight = (source != SOURCE_IGNORED).astype(np.float64)
    if soft_weights:
        probs = model_probs.astype(np.float64).clip(0.0, 1.0)
        model_doubt = entr(probs).sum(axis=0) / math.log(num_classes)  # natural logs on both sides: in [0, 1]
        doubt = np.where(model_sure, model_doubt, teacher_uncertainty.astype(np.float64))
        weight = weight * (1.0 - doubt).clip(0.0, 1.0)
    return Rectified(label, weight.astype(np.float32), teacher_uncertainty.astype(np.float32), source)


def output_label(rectified: Rectified, model_probs: np.ndarray, student_classes: Sequence[int] = ()) -> np.ndarray:
    """THE rule that turns a rectified label into an output (test-time refinement), per pixel:

    1. where rectification kept the pixel (teacher certain, or model confident): the rectified label;
    2. where it ignored the pixel (nobody sure): the student's argmax — an output has no "ignore";
    3. the classes in ``student_classes`` (those the calibration left to the student) are exactly the student's:
       every pixel the student labels with one of them keeps that label, and no other pixel gets one of them.

    Args:
        rectified: :func:`rectify`'s result for the image.
        model_probs: float ``(K, H, W)`` softmax probabilities of the student.
        student_classes: foreground classes whose masks are returned as the student predicted them.

    Returns:
        int64 ``(H, W)`` class indices.
    """
    model_probs = check_class_probabilities(model_probs, "model_probs")
    student = model_probs.argmax(axis=0).astype(np.int64)
    if rectified.label.shape != student.shape:
        raise ValueError(f"rectified label {rectified.label.shape} does not match the model's {student.shape}")
    out = np.where(rectified.source == SOURCE_IGNORED, student, rectified.label).astype(np.int64)
    if len(student_classes):
        kept = np.isin(student, list(student_classes)) | np.isin(out, list(student_classes))
        out[kept] = student[kept]
    return out


def evidence_from_model(model_probs: np.ndarray, class_index: int) -> ClassEvidence:
    """A class's evidence from the model itself (for classes the teacher is not trusted with): ``mean`` = the
    model's probability of the class, ``uncertainty`` = its binary entropy in bits; both float32 ``(H, W)``.

    Raises:
        ValueError: invalid probabilities (:func:`~semisam.pseudolabel.prompts.check_class_probabilities`) or a class
            outside ``1..K-1``.
    """
    model_probs = check_class_probabilities(model_probs, "model_probs")
    if not 1 <= class_index < model_probs.shape[0]:
        raise ValueError(f"class_index={class_index} is not a foreground class of K={model_probs.shape[0]}")
    mean = model_probs[class_index].astype(np.float64).clip(0.0, 1.0)
    return ClassEvidence(int(class_index), mean.astype(np.float32), binary_entropy(mean))


def dice_per_class(pred: np.ndarray, ref: np.ndarray, num_classes: int) -> dict[int, float]:
    """Dice of each foreground class ``1..num_classes-1`` between two label maps (MONAI's ``compute_dice``).

    Args:
        pred, ref: integer label maps of the same shape (any number of dimensions), values in
            ``0..num_classes-1``.
        num_classes: classes including background.

    Returns:
        ``{class: dice}``; NaN where the class is absent from both maps, 0.0 where it is in only one of them.

    Raises:
        ValueError: shapes differ, non-integer maps, values out of range, ``num_classes < 2``.
    """
    import torch
    from monai.metrics import compute_dice

    pred, ref = np.asarray(pred), np.asarray(ref)
    if num_classes < 2:
        raise ValueError(f"num_classes={num_classes} must be >= 2")
    if pred.shape != ref.shape:
        raise ValueError(f"pred {pred.shape} and ref {ref.shape} must have the same shape")
    for name, array in (("pred", pred), ("ref", ref)):
        if not (np.issubdtype(array.dtype, np.integer) or array.dtype == bool):
            raise ValueError(f"{name} must be an integer label map, got dtype {array.dtype}")
        if array.size and (array.min() < 0 or array.max() >= num_classes):
            raise ValueError(f"{name} values must lie in 0..{num_classes - 1}")
    if pred.ndim == 0 or pred.size == 0:
        raise ValueError("pred and ref must be non-empty arrays")

    def one_hot(array: np.ndarray) -> torch.Tensor:
        t = torch.from_numpy(np.ascontiguousarray(array, dtype=np.int64))
        spatial = t.reshape(1, *array.shape) if array.ndim > 1 else t.reshape(1, 1, -1)
        return torch.nn.functional.one_hot(spatial, num_classes).movedim(-1, 1).float()  # (1, K, *spatial)

    p, r = one_hot(pred), one_hot(ref)
    # ignore_empty=False gives 1.0 for "both empty"; we want NaN there (no evidence either way).
    dice = compute_dice(p, r, include_background=False, ignore_empty=False)[0].double().numpy()
    dims = tuple(range(2, p.ndim))
    both_empty = ((p.sum(dim=dims) + r.sum(dim=dims))[0, 1:] == 0).numpy()
    return {k: (float("nan") if both_empty[k - 1] else float(dice[k - 1])) for k in range(1, num_classes)}


@dataclass
class DiceCounts:
    """Per-image sufficient statistics of one class's binary Dice on some pixels, for ``N`` calibration images:
    float64 ``(N,)`` arrays ``intersection`` (predicted and in the label), ``total`` (predicted + in the label) and
    ``pixels`` (how many pixels were scored)."""

    intersection: np.ndarray
    total: np.ndarray
    pixels: np.ndarray

    def dice(self, rows: np.ndarray | slice = slice(None)) -> np.ndarray | float:
        """Dice pooled over the images ``rows`` (MONAI's smoothing: both empty -> 1). With a 2D index array
        ``(B, N)`` (bootstrap resamples), one pooled Dice per row."""
        inter = np.asarray(self.intersection)[rows].sum(axis=-1)
        total = np.asarray(self.total)[rows].sum(axis=-1)
        return (2.0 * inter + SMOOTH) / (total + SMOOTH)


@dataclass
class TrustDecision:
    """One class's trust decision: ``trusted`` (use the teacher's evidence), the pooled Dice of the teacher and
    of the model on the teacher's own pixels, the noise band the difference had to leave, the number of teacher
    pixels scored, and ``reason``: ``teacher`` / ``model`` (the difference left the band), ``kept`` (inside the
    band: the previous decision stands), ``no data`` (no teacher pixel: the previous decision stands)."""

    trusted: bool
    teacher_dice: float
    model_dice: float
    band: float
    pixels: int
    reason: str


def trust_decisions(
    teacher: Mapping[int, DiceCounts],
    model: Mapping[int, DiceCounts],
    previous: Mapping[int, bool],
    margin: float,
    noise_sigmas: float,
    seed: int = 0,
    resamples: int = 1000,
) -> dict[int, TrustDecision]:
    """THE per-class trust rule: does the teacher label its own pixels better than the model labels them?

    **What is compared.** For class ``k``, the teacher's pixels are those where its evidence for ``k`` decided
    the pseudo-label (inside ``k``'s prompt boxes, certain after rectification). On exactly those pixels of the
    held-out calibration images, the teacher's label and the model's argmax are each scored against the labels
    by a Dice pooled over the images (``teacher[k]``, ``model[k]``: :class:`DiceCounts`, one row per image).
    Pixels filled in by the model's own labels (model fallback, outside the boxes) are not the teacher's and
    would only pull both scores together.

    **Noise band and hysteresis.** ``d = teacher Dice - model Dice``; its standard error ``se`` is estimated by
    resampling the images (``resamples`` bootstrap draws, seeded by ``seed``). The band is
    ``max(margin, noise_sigmas * se)``: ``d > band`` trusts the teacher, ``d < -band`` the model, and anything
    inside the band (an exact tie, a 2e-5 difference, one flipped image among few) keeps ``previous[k]`` (the
    teacher when there is none: the method's default, its pixels still gated by their uncertainty). So a
    decision, which switches a whole class of the bank, changes only on evidence.

    A class without a single teacher pixel (never prompted on the calibration images) keeps ``previous[k]`` too.

    Returns:
        ``{k: TrustDecision}`` for every class of either mapping, in increasing class order.

    Raises:
        ValueError: ``margin`` or ``noise_sigmas`` negative, ``resamples < 1``, counts of different lengths.
    """
    if margin < 0 or noise_sigmas < 0 or resamples < 1:
        raise ValueError(f"margin={margin} and noise_sigmas={noise_sigmas} must be >= 0, resamples={resamples} >= 1")
    rng = np.random.default_rng(seed)
    out: dict[int, TrustDecision] = {}
    empty = DiceCounts(np.zeros(0), np.zeros(0), np.zeros(0))
    for k in sorted(set(teacher) | set(model)):
        t, m = teacher.get(k, empty), model.get(k, empty)
        n = len(t.intersection)
        if len(m.intersection) != n:
            raise ValueError(f"class {k}: teacher counts of {n} images but model counts of {len(m.intersection)}")
        before = bool(previous.get(k, True))
        pixels = int(np.asarray(t.pixels).sum()) if n else 0
        if pixels == 0:
            out[k] = TrustDecision(before, float("nan"), float("nan"), float("nan"), 0, "no data")
            continue
        t_dice, m_dice = float(t.dice()), float(m.dice())
        difference = t_dice - m_dice
        rows = rng.integers(0, n, size=(resamples, n))
        se = float(np.std(t.dice(rows) - m.dice(rows))) if n > 1 else 0.0
        band = max(margin, noise_sigmas * se)
        if difference > band:
            trusted, reason = True, "teacher"
        elif difference < -band:
            trusted, reason = False, "model"
        else:
            trusted, reason = before, "kept"
        out[k] = TrustDecision(trusted, t_dice, m_dice, band, pixels, reason)
    return out


def _check_unit_range(array: np.ndarray, name: str) -> None:
    if array.size == 0:
        return
    if not np.all(np.isfinite(array)):
        raise ValueError(f"{name} contains non-finite values")
    low, high = float(array.min()), float(array.max())
    if low < -PROBABILITY_RANGE_TOLERANCE or high > 1 + PROBABILITY_RANGE_TOLERANCE:
        raise ValueError(f"{name} must lie in [0, 1], got values in [{low:.4g}, {high:.4g}]")
