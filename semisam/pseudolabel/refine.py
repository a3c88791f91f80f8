"""Test-time refinement: the frozen teacher refines a trained student's predictions (UR-SAM at inference).

For every held-out image (a 2D case, or each slice of a volume):

1. the student predicts class probabilities on the un-augmented image, at the image's own size;
2. its prediction becomes prompts by the pseudo-labels' prompt rules (:mod:`semisam.pseudolabel.prompts`), each
   perturbed ``pseudo_labels.perturbations`` times, for the classes the calibration hands to the teacher;
3. the teacher decodes them on the cached embedding; the mean and uncertainty of each prompt's decodes, fused over
   classes and rectified against the student's probabilities, are exactly a pseudo-label
   (:class:`~semisam.pseudolabel.labeler.PseudoLabeler`);
4. :func:`~semisam.pseudolabel.rectify.output_label` turns it into the output: pixels nobody is sure of take the
   student's label, and the classes left to the student are returned exactly as it predicted them.

**Which classes are refined** is calibrated on held-out val slices (never on training labels, never on the split
being scored): per class, the val Dice of the output with only that class refined against the student's own
(:meth:`PseudoLabeler.calibrate` with ``scope="output"``); a class is refined only when it gains more than the
noise band (``refine.trust_margin``, ``refine.trust_noise_sigmas``), and stays the student's otherwise. So a class
the teacher cannot segment (a box-only teacher and ACDC's myocardium ring) never loses on val.

Nothing here reads a label of the scored split: labels are read after the predictions, only to score them.
:func:`evaluate_refined` writes an nnU-Net-style folder whose ``summary.json`` holds the refined scores (the
output) and the student-alone scores of the same images side by side.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from semisam.config.schema import ConfigError, RunConfig
from semisam.data.cases import CaseLoader, Item
from semisam.data.dataset import expand_to_slices, require_labels
from semisam.data.readers import CaseReader, build_reader
from semisam.data.splits import resolve_split
from semisam.evaluation.figures import save_refinement_figure
from semisam.evaluation.metrics import MetricAccumulator
from semisam.evaluation.report import PER_CASE_FILE, per_case_csv, write_summary
from semisam.evaluation.runner import SPLITS
from semisam.pseudolabel.labeler import PseudoLabeler
from semisam.pseudolabel.pipeline import CalibrationRule, calibrate, calibration_items
from semisam.pseudolabel.rectify import output_label
from semisam.student.checkpoint import load_student
from semisam.teacher.adapt import build_run_teacher
from semisam.teacher.precompute import precompute
from semisam.teacher.stores import open_embedding_store, open_prior_store
from semisam.utils import atomic_write_text

logger = logging.getLogger("semisam")

STUDENT_PER_CASE_FILE = "metrics_per_case_student.csv"
FIGURE_FILE = "refinement.png"
FIGURE_CASES = 3  # best and worst cases by gain


@dataclass
class RefinedImage:
    """One 2D image refined: ``student`` and ``refined`` int64 ``(H, W)`` label maps, the teacher's per-pixel
    ``uncertainty`` float32 ``(H, W)`` in ``[0, 1]`` (1 where the teacher was not asked), and ``prompts``, the
    number of prompts decoded (originals and perturbations; 0: the teacher was not asked)."""

    student: np.ndarray
    refined: np.ndarray
    uncertainty: np.ndarray
    prompts: int


def calibrate_refinement(
    labeler: PseudoLabeler, model: torch.nn.Module, items: Sequence[Item], seed: int
) -> tuple[dict[int, bool], dict[str, float]]:
    """Which classes the teacher refines, from held-out labeled ``items`` (val slices): ``{class: refine}`` and
    the calibration's scalars (per class the refined and the student's val Dice, the band). Default, and the answer
    inside the noise band: the student."""
    cfg = labeler.cfg
    rule = CalibrationRule("output", cfg.refine.trust_margin, cfg.refine.trust_noise_sigmas)
    student_first = dict.fromkeys(range(1, cfg.data.num_classes), False)
    outcome = calibrate(labeler, model, items, student_first, seed, rule)
    return outcome.trusted, {
        k.replace("calibration/", "").replace("teacher_dice", "refined_dice"): v for k, v in outcome.scalars.items()
    }


def refine_images(
    labeler: PseudoLabeler, model: torch.nn.Module, items: Sequence[Item], trusted: dict[int, bool], seed: int
) -> list[RefinedImage]:
    """The student's and the refined label maps of ``items`` (see the module docstring). ``trusted`` must name
    every foreground class: ``True`` refines it, ``False`` returns the student's mask of it unchanged."""
    classes = range(1, labeler.cfg.data.num_classes)
    missing = [k for k in classes if k not in trusted]
    if missing:
        raise ValueError(f"trusted must decide every foreground class; missing {missing}")
    student_classes = [k for k in classes if not trusted[k]]
    results, _ = labeler.label(model, items, trusted, seed, batch_size=labeler.cfg.refine.batch_size)
    return [
        RefinedImage(
            r.model_probs.argmax(0).astype(np.int64),
            output_label(r.rectified, r.model_probs, student_classes),
            r.rectified.uncertainty.astype(np.float32),
            r.prompts,
        )
        for r in results
    ]


def _case_items(loader: CaseLoader, case_id: str) -> list[Item]:
    image = loader.image(case_id)
    return [(case_id, k) for k in range(image.shape[1])] if image.ndim == 4 else [(case_id, -1)]


def _stack(images: Sequence[RefinedImage], name: str, volume: bool) -> np.ndarray:
    arrays = [getattr(r, name) for r in images]
    return np.stack(arrays) if volume else arrays[0]


def _figure_row(loader: CaseLoader, case_id: str, items: list[Item], refined: list[RefinedImage], label: np.ndarray):
    """The slice with the most foreground in the reference (the image itself for 2D), at most ~256 px a side."""
    volume = label.ndim == 3
    k = int(np.argmax((label > 0).reshape(label.shape[0], -1).sum(1))) if volume else 0
    r = refined[k]
    image = loader.image_slice(*items[k])
    step = max(1, math.ceil(max(image.shape[-2:]) / 256))
    ds = (slice(None, None, step), slice(None, None, step))
    ref = label[k] if volume else label
    return {
        "image": image[(slice(None), *ds)],
        "student": r.student[ds],
        "refined": r.refined[ds],
        "uncertainty": r.uncertainty[ds],
        "reference": ref[ds],
        "slice": k if volume else -1,
    }


@dataclass
class RefinementRun:
    """Everything a refined evaluation works with: the student and its config, the cases scored, the val cases
    that calibrate, and the labeler on the teacher's cache."""

    checkpoint: Path
    weights: str
    cfg: RunConfig
    model: torch.nn.Module
    reader: CaseReader
    cases: list[str]
    val: list[str]
    labeler: PseudoLabeler
    seconds: dict[str, float] = field(default_factory=dict)

    @classmethod
    def open(
        cls, checkpoint: Path, split: str, config_paths, overrides, weights: str, progress: bool, teacher
    ) -> RefinementRun:
        """Load the student, check the splits, embed what the cache lacks and build the labeler."""
        if split not in SPLITS:
            raise ConfigError(f"split={split!r} is not one of {', '.join(SPLITS)}")
        student = load_student(checkpoint, config_paths, overrides, weights)
        cfg = student.config
        reader = build_reader(cfg.data)
        splits = resolve_split(cfg.data, reader.case_ids())
        cases = list(getattr(splits, split))
        if not cases:
            raise ConfigError(f"split {split!r} of data set {cfg.data.name!r} has no cases")
        if split == "val" or not splits.val:
            raise ConfigError(
                f"refinement calibrates on the val split and scores another one; data set {cfg.data.name!r} "
                f"{'has no val cases' if not splits.val else 'cannot score val with it'} "
                "(data.split.val / val_fraction)"
            )
        require_labels(reader, cases, "evaluated")  # checked first; read only after each case is predicted
        teacher = build_run_teacher(cfg, teacher, progress)
        tic = time.perf_counter()
        precompute(
            cfg, teacher, splits=[split, "val"], progress=progress, priors=False, keep_embeddings_of=[split, "val"]
        )
        embed_seconds = time.perf_counter() - tic
        priors = open_prior_store(cfg, [*cases, *splits.val]) if cfg.priors.enabled else None
        embeddings = open_embedding_store(cfg, teacher, [*cases, *splits.val])
        labeler = PseudoLabeler(cfg, teacher, CaseLoader(reader, cfg.data, priors), embeddings, priors, student.device)
        return cls(
            checkpoint,
            weights,
            cfg,
            student.model,
            reader,
            cases,
            list(splits.val),
            labeler,
            {"embeddings": embed_seconds},
        )

    def decide_classes(self) -> tuple[dict[int, bool], list[Item], dict[str, float]]:
        """Which classes the teacher refines (calibrated on val, or ``refine.classes`` forced), the calibration
        items and the calibration's scalars."""
        cfg, tic = self.cfg, time.perf_counter()
        if cfg.refine.classes is None:
            items = calibration_items(cfg, expand_to_slices(self.reader, self.val), cfg.refine.calibration_images)
            trusted, scalars = calibrate_refinement(self.labeler, self.model, items, seed=cfg.seed)
        else:  # the ablation: the classes given, no calibration
            items, scalars = [], {"forced": 1.0}
            trusted = {k: k in cfg.refine.classes for k in range(1, cfg.data.num_classes)}
        self.seconds["calibration"] = time.perf_counter() - tic
        names = cfg.data.class_names or None
        logger.info(
            "refinement: the teacher refines %s; the student keeps %s",
            [names[k] if names else k for k, t in trusted.items() if t] or "no class",
            [names[k] if names else k for k, t in trusted.items() if not t] or "no class",
        )
        return trusted, items, scalars

    def score_cases(self, trusted: dict[int, bool], progress: bool) -> tuple[dict, list, int, int]:
        """Refine and score every case: the student's and the refined accumulators, the figure rows of the cases
        that gain most and least, and the numbers of images and prompts."""
        cfg, loader, names = self.cfg, self.labeler.loader, self.cfg.data.class_names or None
        accs = {n: MetricAccumulator(cfg.data.num_classes, names, cfg.eval.metrics) for n in ("student", "refined")}
        rows, images, prompts = [], 0, 0
        tic = time.perf_counter()
        for case_id in tqdm(self.cases, desc="refine", disable=not progress):
            items = _case_items(loader, case_id)
            refined = refine_images(self.labeler, self.model, items, trusted, seed=cfg.seed + 1)
            volume = len(items) > 1 or items[0][1] >= 0
            label = self.reader.read_label(case_id)  # scoring only, after the case is predicted
            spacing = self.reader.spacing(case_id)
            student_scores = accs["student"].add(case_id, _stack(refined, "student", volume), label, spacing)
            refined_scores = accs["refined"].add(case_id, _stack(refined, "refined", volume), label, spacing)
            gain = _fg_dice(refined_scores) - _fg_dice(student_scores)
            rows.append(
                (0.0 if math.isnan(gain) else gain, case_id, _figure_row(loader, case_id, items, refined, label))
            )
            rows.sort(key=lambda r: r[0])
            del rows[FIGURE_CASES : max(FIGURE_CASES, len(rows) - FIGURE_CASES)]  # keep the extremes only
            loader.clear()
            images += len(items)
            prompts += sum(r.prompts for r in refined)
        self.seconds["refine"] = time.perf_counter() - tic
        return accs, rows, images, prompts


def evaluate_refined(
    checkpoint: str | Path,
    split: str = "test",
    out_dir: str | Path | None = None,
    config_paths: Sequence[str | Path] | None = None,
    overrides: Sequence[str] = (),
    weights: str = "model",
    progress: bool = True,
    teacher=None,
) -> dict:
    """Score a checkpoint on ``split`` with and without test-time refinement, and write the report.

    Arguments as :func:`~semisam.evaluation.runner.evaluate_checkpoint`; ``teacher``: an already built teacher
    (default: built from the config's ``teacher`` section). Missing embeddings of the scored split and of the val
    split (the calibration) are computed into the teacher cache first.

    Writes into ``out_dir`` (default ``<run>/eval_<split>_refined``, ``..._refined_adapted`` with
    ``teacher.adapt=decoder``: :func:`refined_dir_name`): ``summary.json`` (nnU-Net-shaped, the refined
    output's scores, with ``student`` holding the same for the student alone, ``metric_per_case`` entries carrying
    ``student_metrics``, and ``refinement``: the classes refined, the calibration, seconds per image),
    ``metrics_per_case.csv`` (refined), ``metrics_per_case_student.csv`` and ``refinement.png`` (image, student,
    refined, uncertainty, reference for the cases that gain most and least).

    Returns:
        the summary dict.

    Raises:
        ConfigError: an unknown split, no val cases to calibrate on, or a checkpoint/config mismatch.
    """
    checkpoint = Path(checkpoint)
    run = RefinementRun.open(checkpoint, split, config_paths, overrides, weights, progress, teacher)
    trusted, calibration, calibration_scalars = run.decide_classes()
    accs, rows, images, prompts = run.score_cases(trusted, progress)
    summary = _refined_summary(run, accs, trusted, calibration, calibration_scalars, images, prompts)
    out = Path(out_dir) if out_dir else checkpoint.parent.parent / refined_dir_name(split, run.cfg)
    _write_refined_report(out, run.cfg, summary, rows)
    return summary


def refined_dir_name(split: str, cfg: RunConfig) -> str:
    """``eval_<split>_refined``, or ``eval_<split>_refined_adapted`` by the adapted teacher (``teacher.adapt``)."""
    return f"eval_{split}_refined" + ("" if cfg.teacher.adapt == "none" else "_adapted")


def _refined_summary(
    run: RefinementRun,
    accs: dict,
    trusted: dict[int, bool],
    calibration: list[Item],
    calibration_scalars: dict[str, float],
    images: int,
    prompts: int,
) -> dict:
    """The refined output's nnU-Net-shaped summary with the student's scores and the refinement's record."""
    summary = accs["refined"].summary()
    student = accs["student"].summary()
    for entry, own in zip(summary["metric_per_case"], student["metric_per_case"], strict=True):
        entry["student_metrics"] = own["metrics"]
    summary["student"] = {k: student[k] for k in ("metric_per_case", "mean", "foreground_mean")}
    summary["refinement"] = {
        "checkpoint": str(run.checkpoint),
        "weights": run.weights,
        "refined_classes": [k for k, t in trusted.items() if t],
        "trusted": {str(k): v for k, v in trusted.items()},
        "calibration": {"images": len(calibration), **calibration_scalars},
        "images": images,
        "prompts_per_image": prompts / max(1, images),
        "seconds": dict(run.seconds),
        "seconds_per_image": run.seconds["refine"] / max(1, images),
        # the teacher that refined: published, or adapted (with its val Dice against the published decoder's)
        "teacher": {"adapt": run.cfg.teacher.adapt, "val_dice": run.labeler.teacher.adaptation_scores},
    }
    return summary


def _write_refined_report(out: Path, cfg: RunConfig, summary: dict, rows: list) -> None:
    """``summary.json``, both per-case CSVs and ``refinement.png``."""
    write_summary(out, summary)
    atomic_write_text(out / PER_CASE_FILE, per_case_csv(summary))
    student = {**summary["student"], "class_names": summary["class_names"]}
    atomic_write_text(out / STUDENT_PER_CASE_FILE, per_case_csv(student))
    save_refinement_figure(
        out / FIGURE_FILE,
        [{**row, "title": f"{case_id}: {100 * gain:+.1f} Dice points"} for gain, case_id, row in rows[::-1]],
        cfg.data.num_classes,
        class_names=cfg.data.class_names or None,
        image_channels=cfg.data.in_channels,
    )
    refinement = summary["refinement"]
    logger.info(
        "refined %d images (%.2f s each, %.1f prompts): foreground Dice %.4f (student %.4f); wrote %s",
        refinement["images"],
        refinement["seconds_per_image"],
        refinement["prompts_per_image"],
        summary["foreground_mean"].get("dice", math.nan),
        summary["student"]["foreground_mean"].get("dice", math.nan),
        out,
    )


def _fg_dice(scores: dict[int, dict[str, float]]) -> float:
    values = [v["dice"] for v in scores.values() if "dice" in v and not math.isnan(v["dice"])]
    return float(np.mean(values)) if values else math.nan
