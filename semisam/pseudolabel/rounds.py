"""The bank of a self-training round: a trained student labels the unlabeled pool through the teacher, and the
most reliable images keep their rectified pseudo-labels (Keuth et al. 2024 "SAM carries the burden"; ST++'s
reliable-image selection).

:func:`make_round_bank` runs the one calibrate-then-label pipeline (:mod:`semisam.pseudolabel.pipeline`) with the
round's student, scores every pool image's reliability (:mod:`semisam.pseudolabel.reliability`), keeps the
``pseudo_labels.select_fraction`` most reliable, and writes into the round's directory::

    bank.npz           the selected images' pseudo-labels (atomic)
    reliability.csv    every pool image: its signals, score, whether it was kept
    pseudo_labels.png  the most and least reliable images: student vs pseudo-label
    selection.json     written last: its presence means the bank is complete (read back, never recomputed)

The rounds themselves (round 0, the training of each round, resuming) are run by
:class:`semisam.workflow.rounds.SelfTraining`, above the trainer.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from semisam.config.schema import RunConfig, semisam_backbone
from semisam.data.cases import CaseLoader, Item
from semisam.data.dataset import expand_to_slices
from semisam.data.readers import build_reader
from semisam.data.splits import resolve_split
from semisam.evaluation.figures import save_prediction_figure
from semisam.pseudolabel.labeler import BankEntry, PseudoLabelBank, PseudoLabeler, PseudoLabelResult
from semisam.pseudolabel.pipeline import Labeling, calibrate_then_label, calibration_items, initial_trust
from semisam.pseudolabel.reliability import rank_by_reliability, select_reliable
from semisam.student.checkpoint import load_student
from semisam.teacher.adapt import build_run_teacher
from semisam.teacher.engine import SamTeacher
from semisam.teacher.stores import open_embedding_store, open_prior_store
from semisam.utils import atomic_write_text

logger = logging.getLogger("semisam")

SELECTION_FILE = "selection.json"
BANK_FILE = "bank.npz"


@dataclass
class RoundData:
    """What a round after round 0 trains on besides the labeled images: the unlabeled ``items`` (the selected
    images, or the whole pool for a backbone that learns from it by consistency) and their fixed ``bank``
    (entries keyed by position in ``items``; positions without an entry have no pseudo-label). It is the round's
    bank source for the trainer: the bank never changes during the round."""

    items: list[Item]
    bank: PseudoLabelBank = field(default_factory=PseudoLabelBank)
    seconds: float = 0.0  # no refresh happens during a round

    @property
    def first_bank_iteration(self) -> int:
        return 0

    def is_due(self, iteration: int) -> bool:
        return False

    def resume(self, iteration: int) -> None:
        """Nothing to restore: the bank is the round's, from its start."""


def trains_on_pool(cfg: RunConfig) -> bool:
    """Whether a round after round 0 trains on the whole unlabeled pool (backbones unimatch and bcp: their own
    consistency teaches the images the selection left out, the teacher's labels join on the selected ones) or only
    on the selected pseudo-labeled images (the supervised backbone, which has no loss for the others)."""
    return semisam_backbone(cfg) != "supervised"


def read_round_bank(round_dir: Path) -> RoundData | None:
    """The round's bank as written by :func:`make_round_bank`, or ``None`` if it was never completed."""
    selection_path, bank_path = round_dir / SELECTION_FILE, round_dir / BANK_FILE
    if not (selection_path.exists() and bank_path.exists()):
        return None
    selection = json.loads(selection_path.read_text())
    items = [(str(c), int(k)) for c, k in selection.get("train_items", selection["items"])]
    bank = PseudoLabelBank.load(bank_path)
    logger.info("%s: bank of %d selected images restored", round_dir.name, len(bank.entries))
    return RoundData(items, bank)


@dataclass
class RoundLabeling:
    """What labeling a round's pool needs: the ``pool`` and ``calibration`` items, the labeler (teacher, cache,
    case loader) and the trust in force before calibration."""

    pool: list[Item]
    calibration: list[Item]
    labeler: PseudoLabeler

    @classmethod
    def build(cls, cfg: RunConfig, teacher: SamTeacher, device) -> RoundLabeling:
        reader = build_reader(cfg.data)
        split = resolve_split(cfg.data, reader.case_ids())
        pool = expand_to_slices(reader, split.unlabeled)
        calibration = calibration_items(cfg, expand_to_slices(reader, split.val))
        priors = open_prior_store(cfg, [*split.unlabeled, *split.val]) if cfg.priors.enabled else None
        embeddings = open_embedding_store(cfg, teacher, sorted({c for c, _ in [*pool, *calibration]}))
        labeler = PseudoLabeler(cfg, teacher, CaseLoader(reader, cfg.data, priors), embeddings, priors, device)
        return cls(pool, calibration, labeler)


def make_round_bank(
    cfg: RunConfig,
    checkpoint: Path,
    round_dir: Path,
    seed: int,
    teacher: SamTeacher | None = None,
    progress: bool = True,
) -> RoundData:
    """The unlabeled items and the bank of the round in ``round_dir``, labeled by the student of ``checkpoint``
    (read back if the round's ``selection.json`` exists)."""
    if cfg.pseudo_labels.control:  # the same-steps control: the round's images, no teacher label
        reader = build_reader(cfg.data)
        pool = expand_to_slices(reader, resolve_split(cfg.data, reader.case_ids()).unlabeled)
        logger.info("%s: the same-steps control: no teacher label (pseudo_labels.control=true)", round_dir.name)
        return RoundData(pool)  # no entry: the backbone's own loss on them, none for the supervised backbone
    restored = read_round_bank(round_dir)
    if restored is not None:
        return restored
    student = load_student(checkpoint, weights="model")
    context = RoundLabeling.build(cfg, build_run_teacher(cfg, teacher, progress), student.device)
    logger.info(
        "%s: labeling %d unlabeled images with the student of %s", round_dir.name, len(context.pool), checkpoint
    )
    # No gate here (min_model_dice gates online refreshes, whose EMA may still be the random start): a round's
    # student is a finished run, the best the run has; its calibration Dice is logged.
    labeling = calibrate_then_label(
        context.labeler, student.model, context.pool, context.calibration, initial_trust(cfg), seed, min_model_dice=0.0
    )
    logger.info(
        "%s: the round's student scores %.3f Dice on the calibration slices",
        round_dir.name,
        labeling.calibration.model_dice,
    )
    return _select_and_write(cfg, context, labeling, checkpoint, round_dir)


def _select_and_write(
    cfg: RunConfig, context: RoundLabeling, labeling: Labeling, checkpoint: Path, round_dir: Path
) -> RoundData:
    """Keep the most reliable images of a labeled pool and write the round's files (``selection.json`` last)."""
    pl, pool, results = cfg.pseudo_labels, context.pool, labeling.results
    trusted = labeling.calibration.trusted
    scores = [r.reliability().score(pl.reliability) for r in results]
    chosen = select_reliable(scores, pl.select_fraction)
    items = [pool[i] for i in chosen]
    bank = PseudoLabelBank(iteration=0, trusted=dict(trusted), first_iteration=0)
    # entries keyed by position in the items the round trains on: the pool, or the selected images alone
    train_items = pool if trains_on_pool(cfg) else items
    keys = chosen if trains_on_pool(cfg) else range(len(chosen))
    bank.entries = {j: BankEntry.from_rectified(results[i].rectified) for j, i in zip(keys, chosen, strict=True)}
    round_dir.mkdir(parents=True, exist_ok=True)
    write_reliability_csv(round_dir / "reliability.csv", pool, results, scores, set(chosen))
    save_selection_figure(round_dir / "pseudo_labels.png", context.labeler.loader, pool, results, scores, cfg)
    bank.save(round_dir / BANK_FILE)
    selection = {
        "checkpoint": str(checkpoint),
        "rule": pl.reliability,
        "fraction": pl.select_fraction,
        "pool": len(pool),
        "selected": len(items),
        "score_threshold": min((scores[i] for i in chosen), default=math.nan),
        "trusted": {str(k): v for k, v in trusted.items()},
        "teacher": {"adapt": cfg.teacher.adapt, "val_dice": context.labeler.teacher.adaptation_scores},
        "refresh": labeling.stats.scalars(),
        "items": [[c, k] for c, k in items],
        "train_items": [[c, k] for c, k in train_items],
    }
    atomic_write_text(round_dir / SELECTION_FILE, json.dumps(selection, indent=2))  # last: its presence means done
    logger.info(
        "%s: kept %d of %d pool images (reliability=%s >= %.3f); %.0f%% of their pixels ignored",
        round_dir.name,
        len(items),
        len(pool),
        pl.reliability,
        selection["score_threshold"],
        100 * float(np.mean([(e.weight == 0).mean() for e in bank.entries.values()])) if items else 0.0,
    )
    return RoundData(train_items, bank)


def write_reliability_csv(
    path: Path, items: list[Item], results: list[PseudoLabelResult], scores: list[float], chosen: set[int]
) -> None:
    """One row per pool image: case, slice, the two reliability signals, the score, prompts, kept share, selected."""
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(["case", "slice", "teacher_agreement", "student_agreement", "score", "prompts", "kept", "selected"])
    for i, ((case_id, k), r) in enumerate(zip(items, results, strict=True)):
        rel = r.reliability()
        kept = float((r.rectified.weight > 0).mean())
        row = [case_id, k, f"{rel.teacher:.4f}", f"{rel.student:.4f}", f"{scores[i]:.4f}", r.prompts, f"{kept:.4f}"]
        writer.writerow([*row, int(i in chosen)])
    atomic_write_text(path, buf.getvalue())


def save_selection_figure(
    path: Path, loader: CaseLoader, items: list[Item], results: list[PseudoLabelResult], scores: list[float], cfg
) -> None:
    """The 3 most and 3 least reliable images: the student's prediction (middle) and the pseudo-label (right,
    ignored pixels drawn as background, with its Dice against the student's prediction)."""
    order = [i for i in rank_by_reliability(scores) if not math.isnan(scores[i])]
    shown = [*order[:3], *order[-3:]] if len(order) > 6 else order
    if not shown:
        return
    save_prediction_figure(
        path,
        [loader.image_slice(*items[i]) for i in shown],
        [results[i].model_probs.argmax(0) for i in shown],
        [results[i].rectified.label * (results[i].rectified.weight > 0) for i in shown],
        [f"{items[i][0]}: reliability {scores[i]:.2f}" for i in shown],
        cfg.data.num_classes,
        class_names=cfg.data.class_names or None,
        columns=("student", "pseudo-label (vs student)"),
    )
