"""How good are the teacher's pseudo-labels? An offline check against the held-back labels of unlabeled images.

Runs the same pipeline a ``semisam`` refresh runs (prompts from a trained model's predictions, perturbed,
decoded by the frozen teacher, rectified), then — and only here, for analysis — reads the labels of those
unlabeled training images to score: the teacher's fused label before rectification, the rectified pseudo-label
on the pixels it keeps, and the model's own prediction on the same pixels and on all pixels.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence

import numpy as np
import torch

from semisam.config.schema import RELIABILITY_RULES, RunConfig
from semisam.data.cases import CaseLoader
from semisam.data.dataset import expand_to_slices
from semisam.data.readers import build_reader
from semisam.data.splits import resolve_split
from semisam.pseudolabel.labeler import PseudoLabeler, PseudoLabelResult, score_against_labels
from semisam.pseudolabel.pipeline import calibrate_then_label, calibration_items, initial_trust
from semisam.pseudolabel.reliability import rank_by_reliability, select_reliable
from semisam.teacher.adapt import build_run_teacher
from semisam.teacher.precompute import precompute
from semisam.teacher.stores import open_embedding_store, open_prior_store

logger = logging.getLogger("semisam")

SELECT_FRACTIONS = (0.25, 0.5, 0.75, 1.0)


def analyze_pseudo_labels(
    cfg: RunConfig, model: torch.nn.Module, limit: int, device: torch.device, teacher=None, progress: bool = True
) -> tuple[dict, list]:
    """Score pseudo-labels of the first ``limit`` unlabeled cases.

    Returns:
        the scores, and per item ``(image (C, H, W), result, held-back label (H, W))``.
    """
    teacher = build_run_teacher(cfg, teacher, progress)
    reader = build_reader(cfg.data)
    split = resolve_split(cfg.data, reader.case_ids())
    # trust is calibrated on held-out labeled cases (val), as in training
    precompute(cfg, teacher=teacher, splits=["unlabeled", "val"], limit=limit, progress=progress, priors=False)
    priors = open_prior_store(cfg, [*split.val[:limit], *split.unlabeled[:limit]]) if cfg.priors.enabled else None
    embeddings = open_embedding_store(cfg, teacher, [*split.val[:limit], *split.unlabeled[:limit]])
    labeler = PseudoLabeler(cfg, teacher, CaseLoader(reader, cfg.data, priors), embeddings, priors, device)
    model.to(device).eval()
    calibration = calibration_items(cfg, expand_to_slices(reader, split.val[:limit]))
    items = expand_to_slices(reader, split.unlabeled[:limit])
    # the analysis labels whatever the student's score: it reports that score instead of gating on it
    labeling = calibrate_then_label(
        labeler, model, items, calibration, initial_trust(cfg), seed=cfg.seed, min_model_dice=0.0
    )
    results, trusted = labeling.results, labeling.calibration.trusted
    scores: dict = {}
    if labeling.calibration.calibrated:
        scores["calibration"] = labeling.calibration.scalars
    held_back = [labeler.loader.label_slice(c, k) for c, k in items]  # analysis only: never part of training
    scores.update(score_against_labels(results, held_back, cfg.data.num_classes))
    scores["reliability"] = reliability_report(results, held_back, cfg.data.num_classes)
    scores["refresh"] = labeling.stats.scalars()
    scores["trusted"] = {str(k): v for k, v in trusted.items()}
    images = [labeler.loader.image_slice(c, k) for c, k in items]
    return scores, list(zip(images, results, held_back, strict=True))


def reliability_report(
    results: Sequence[PseudoLabelResult],
    refs: Sequence[np.ndarray],
    num_classes: int,
    rules: Sequence[str] = RELIABILITY_RULES,
    fractions: Sequence[float] = SELECT_FRACTIONS,
    bins: int = 4,
) -> dict:
    """Pseudo-label quality against the student's own, per image-reliability bin (analysis: reads held-back labels).

    For each rule (:mod:`semisam.pseudolabel.reliability`): the images :func:`select_reliable` keeps at each
    ``fraction``, and ``bins`` equal-count bins of the score from least to most reliable (images without a score in
    a bin of their own), each scored by :func:`score_against_labels`: the teacher's label before rectification and
    the student's prediction on all pixels, the rectified label and the student on the kept pixels. ``gain``: the
    pseudo-label's Dice minus the student's on the same images, before rectification, in Dice points x 100.
    """
    signals = [r.reliability() for r in results]
    out: dict = {}

    def scored(indices: Sequence[int]) -> dict:
        if not indices:
            return {"images": 0}
        row = score_against_labels([results[i] for i in indices], [refs[i] for i in indices], num_classes)
        row["gain_points"] = 100 * (row["dice_teacher_before_rectification"] - row["dice_model_all"])
        row["gain_on_kept_points"] = 100 * (row["dice_rectified_on_kept"] - row["dice_model_on_kept"])
        return {k: v for k, v in row.items() if not k.endswith("_prompted_images")}

    for rule in rules:
        values = [s.score(rule) for s in signals]
        top = {f"{f:g}": scored(select_reliable(values, f)) for f in fractions}
        order = [i for i in rank_by_reliability(values) if not math.isnan(values[i])][::-1]  # least reliable first
        chunks = [list(c) for c in np.array_split(np.array(order, dtype=int), bins) if len(c)]
        binned = []
        for chunk in chunks:
            row = scored(sorted(chunk))
            row["score_range"] = [float(values[chunk[0]]), float(values[chunk[-1]])]
            binned.append(row)
        unscored = [i for i, v in enumerate(values) if math.isnan(v)]
        out[rule] = {"top_fraction": top, "bins": binned, "unscored": scored(unscored)}
    return out


def pooled_class_dice(predictions: Sequence[np.ndarray], refs: Sequence[np.ndarray], num_classes: int) -> list[float]:
    """Per foreground class ``1..K-1``, the Dice of label maps pooled over all images (every pixel counts once;
    ``nan`` where neither side has the class)."""
    out = []
    for k in range(1, num_classes):
        overlap = total = 0
        for pred, ref in zip(predictions, refs, strict=True):
            a, b = pred == k, ref == k
            overlap += int(np.logical_and(a, b).sum())
            total += int(a.sum() + b.sum())
        out.append(2 * overlap / total if total else math.nan)
    return out


def compare_teachers(
    cfg: RunConfig, model: torch.nn.Module, limit: int, device: torch.device, teacher=None, progress: bool = True
) -> dict:
    """The published teacher, the adapted one (``cfg.teacher.adapt``) and the student, per class, on the same
    pixels: the first ``limit`` unlabeled images, prompts from the student's predictions, the teacher asked about
    every class (no calibration), its fused label before rectification against the held-back labels (an analysis:
    never part of training). Returns ``{class name: {"frozen", "adapted", "student": pooled Dice}, "images": n}``
    (``adapted`` only with ``teacher.adapt`` other than ``none``)."""
    adapted = build_run_teacher(cfg, teacher, progress)
    teachers = {"frozen": adapted.frozen, **({"adapted": adapted} if adapted is not adapted.frozen else {})}
    reader = build_reader(cfg.data)
    cases = resolve_split(cfg.data, reader.case_ids()).unlabeled[:limit]
    precompute(cfg, teacher=adapted.frozen, splits=["unlabeled"], limit=limit, progress=progress, priors=False)
    priors = open_prior_store(cfg, cases) if cfg.priors.enabled else None
    embeddings = open_embedding_store(cfg, adapted.frozen, cases)
    items = expand_to_slices(reader, cases)
    every_class = {k: True for k in range(1, cfg.data.num_classes)}
    labels: dict[str, list[np.ndarray]] = {}
    student: list[np.ndarray] = []
    model.to(device).eval()
    for name, t in teachers.items():
        labeler = PseudoLabeler(cfg, t, CaseLoader(reader, cfg.data, priors), embeddings, priors, device)
        results, _ = labeler.label(model, items, every_class, seed=cfg.seed)
        labels[name] = [r.teacher_label for r in results]
        student = [r.model_probs.argmax(0) for r in results]
        refs = [labeler.loader.label_slice(c, k) for c, k in items]  # analysis only: never part of training
    names = cfg.data.class_names or [str(k) for k in range(cfg.data.num_classes)]
    scores = {n: pooled_class_dice(v, refs, cfg.data.num_classes) for n, v in {**labels, "student": student}.items()}
    out: dict = {names[k]: {n: s[k - 1] for n, s in scores.items()} for k in range(1, cfg.data.num_classes)}
    out["images"] = len(items)
    return out
