"""Calibrate, then label: the one pipeline that turns a student into the teacher's pseudo-labels.

Every user of the teacher's labels runs it: the online refresh (:mod:`semisam.pseudolabel.refresh`), the bank of a
self-training round (:mod:`semisam.pseudolabel.rounds`), the offline analysis
(:mod:`semisam.pseudolabel.analysis`) and, for its calibration stage, test-time refinement
(:mod:`semisam.pseudolabel.refine`). The rules that were written once per user live here once:

- the trust in force before any calibration (:func:`initial_trust`);
- which held-out items calibrate, and the error when a rule needs them and there are none
  (:func:`calibration_items`);
- the gate: a student whose foreground Dice on the calibration items is below ``pseudo_labels.min_model_dice``
  prompts the teacher with noise, so nothing is labeled from it (:meth:`Calibration.passes`);
- the seeds: calibration draws from ``seed``, labeling from ``seed + 1``; a run derives ``seed`` from its own seed
  and the iteration or round (:func:`labeling_seed`).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from semisam.config.schema import ConfigError, RunConfig
from semisam.data.dataset import Item
from semisam.pseudolabel.labeler import PseudoLabeler, PseudoLabelResult, RefreshStats, spread

logger = logging.getLogger("semisam")

SEED_STRIDE = 1_000_003  # a prime: the seeds of two runs' refreshes or rounds never coincide


def labeling_seed(run_seed: int, step: int) -> int:
    """The seed of the pipeline at ``step`` (a refresh's iteration, or a round's index) of a run seeded
    ``run_seed``: prompt perturbations differ between steps and runs, and repeat exactly on a resumed run."""
    return run_seed * SEED_STRIDE + step


def initial_trust(cfg: RunConfig) -> dict[int, bool]:
    """``{class: trust the teacher}`` before any calibration: every foreground class, unless
    ``pseudo_labels.trust=none``."""
    return dict.fromkeys(range(1, cfg.data.num_classes), cfg.pseudo_labels.trust != "none")


def needs_calibration(cfg: RunConfig) -> bool:
    """Whether labeling must first score the student on held-out labels: to decide trust
    (``pseudo_labels.trust=calibrate``) or to gate weak students (``pseudo_labels.min_model_dice > 0``)."""
    pl = cfg.pseudo_labels
    return pl.trust == "calibrate" or pl.min_model_dice > 0


def calibration_items(cfg: RunConfig, held_out: Sequence[Item], count: int | None = None) -> list[Item]:
    """``count`` (default ``pseudo_labels.calibration_images``) slices spread evenly over ``held_out``: slices of
    labeled cases the student never trained on (the val split). Not the labeled training images: the student has
    memorised those, so its score there says nothing about its score on unlabeled images.

    Raises:
        ConfigError: the config needs a calibration (:func:`needs_calibration`) and there is nothing held out.
    """
    items = spread(list(held_out), cfg.pseudo_labels.calibration_images if count is None else count)
    if not items and needs_calibration(cfg):
        raise ConfigError(
            "pseudo_labels.trust=calibrate and pseudo_labels.min_model_dice > 0 need held-out labeled cases "
            "(data.split.val, or val_fraction) to score the teacher and the student on: the labeled training "
            "images are memorised by the student. Give a val split, or set pseudo_labels.trust=all|none and "
            "pseudo_labels.min_model_dice=0."
        )
    return items


@dataclass(frozen=True)
class CalibrationRule:
    """How trust is calibrated: ``scope`` ``teacher_pixels`` (pseudo-labels: each class judged on the teacher's own
    certain pixels) or ``output`` (refinement: the whole output), the band (``margin``, ``noise_sigmas``; ``None``:
    the pseudo-label keys), and whether the decision replaces the trust in force (``decide``; otherwise the
    calibration only scores the student, for the gate)."""

    scope: str = "teacher_pixels"
    margin: float | None = None
    noise_sigmas: float | None = None
    decide: bool = True

    @classmethod
    def for_pseudo_labels(cls, cfg: RunConfig) -> CalibrationRule:
        return cls(decide=cfg.pseudo_labels.trust == "calibrate")


@dataclass
class Calibration:
    """The outcome of a calibration: the ``trusted`` classes it leaves in force, its TensorBoard ``scalars`` and
    the student's mean foreground Dice on the calibration items (``model_dice``; NaN when it found nothing to
    prompt from, or when nothing was calibrated)."""

    trusted: dict[int, bool]
    scalars: dict[str, float] = field(default_factory=dict)
    model_dice: float = math.nan
    calibrated: bool = False

    def passes(self, min_model_dice: float) -> bool:
        """The gate: whether the student's prompts are worth decoding (always, when nothing was calibrated)."""
        return not self.calibrated or self.model_dice >= min_model_dice  # NaN fails


def calibrate(
    labeler: PseudoLabeler,
    model: torch.nn.Module,
    items: Sequence[Item],
    trusted: dict[int, bool],
    seed: int,
    rule: CalibrationRule,
) -> Calibration:
    """Score the teacher and the student on held-out labeled ``items`` (their labels only score; the prompts come
    from the student) and decide per-class trust from ``trusted`` (the decisions in force, kept inside the noise
    band). With no items, nothing is calibrated and ``trusted`` stays."""
    if not items:
        return Calibration(dict(trusted))
    labels = [labeler.loader.label_slice(case_id, k) for case_id, k in items]
    decided, scalars, model_dice = labeler.calibrate(
        model,
        items,
        labels,
        seed,
        previous=trusted,
        scope=rule.scope,
        margin=rule.margin,
        noise_sigmas=rule.noise_sigmas,
    )
    return Calibration(decided if rule.decide else dict(trusted), scalars, model_dice, calibrated=True)


@dataclass
class Labeling:
    """The outcome of :func:`calibrate_then_label`: its ``calibration``, and the ``results`` and ``stats`` of the
    labeled items (``None`` when the gate stopped it: ``skipped``)."""

    calibration: Calibration
    results: list[PseudoLabelResult] | None = None
    stats: RefreshStats | None = None

    @property
    def skipped(self) -> bool:
        return self.results is None


def calibrate_then_label(
    labeler: PseudoLabeler,
    model: torch.nn.Module,
    items: Sequence[Item],
    calibration: Sequence[Item],
    trusted: dict[int, bool],
    seed: int,
    rule: CalibrationRule | None = None,
    min_model_dice: float | None = None,
    batch_size: int = 8,
) -> Labeling:
    """Calibrate trust on ``calibration`` (held-out items), then, if the student passes the gate, label ``items``
    (unlabeled) with the teacher as trusted. ``rule`` and ``min_model_dice`` default to the config's
    pseudo-label settings."""
    cfg = labeler.cfg
    rule = rule or CalibrationRule.for_pseudo_labels(cfg)
    gate = cfg.pseudo_labels.min_model_dice if min_model_dice is None else min_model_dice
    # calibrate only when its outcome is used: to decide trust, or for the gate
    needed = rule.decide or gate > 0
    outcome = calibrate(labeler, model, calibration if needed else [], trusted, seed, rule)
    if not outcome.passes(gate):
        return Labeling(outcome)
    results, stats = labeler.label(model, items, outcome.trusted, seed + 1, batch_size=batch_size)
    return Labeling(outcome, results, stats)
