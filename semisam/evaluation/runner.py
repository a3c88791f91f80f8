"""One-command evaluation of a trained student on a held-out split (nnU-Net style: a folder with
``summary.json``, ``metrics_per_case.csv`` and PNG figures)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

from semisam.config.schema import ConfigError, RunConfig
from semisam.data.readers import build_reader
from semisam.data.splits import resolve_split
from semisam.evaluation.figures import save_metric_bar_figure, save_prediction_figure
from semisam.evaluation.inference import evaluate_cases
from semisam.evaluation.report import write_report
from semisam.student.checkpoint import load_student
from semisam.teacher.stores import open_prior_store
from semisam.utils import autocast_dtype

logger = logging.getLogger("semisam")

SPLITS = ("test", "val", "labeled", "unlabeled")


def evaluate_checkpoint(
    checkpoint: str | Path,
    split: str = "test",
    out_dir: str | Path | None = None,
    config_paths: Sequence[str | Path] | None = None,
    overrides: Sequence[str] = (),
    weights: str = "model",
    progress: bool = True,
) -> dict:
    """Score a checkpoint on one split of its data set and write the report.

    Args:
        checkpoint: a ``.pt`` written by the trainer (loaded with ``weights_only=True``).
        split: ``test`` | ``val`` | ``labeled`` | ``unlabeled`` (the latter only for analysis: it reads the
            held-back labels of unlabeled training cases).
        out_dir: where to write; default ``<run_dir>/eval_<split>`` next to the checkpoint's run.
        config_paths: YAML configs to take the data/eval sections from instead of the checkpoint's own config.
        overrides: ``key=value`` overrides on top (e.g. ``data.root=/elsewhere``). The student architecture
            always comes from the checkpoint.
        weights: ``model`` (the student) or ``ema`` (its moving average, for methods that keep one).

    Returns:
        the summary dict (also written as ``summary.json``).
    """
    if split not in SPLITS:
        raise ConfigError(f"split={split!r} is not one of {', '.join(SPLITS)}")
    checkpoint = Path(checkpoint)
    student = load_student(checkpoint, config_paths, overrides, weights)
    cfg = student.config
    reader = build_reader(cfg.data)
    cases = getattr(resolve_split(cfg.data, reader.case_ids()), split)
    if not cases:
        raise ConfigError(f"split {split!r} of data set {cfg.data.name!r} has no cases")
    out = Path(out_dir) if out_dir else checkpoint.parent.parent / f"eval_{split}"
    logger.info(
        "evaluating %s (%s weights) on %d %s cases of %s", checkpoint, weights, len(cases), split, cfg.data.name
    )
    acc, kept = evaluate_cases(
        student.model,
        reader,
        cases,
        cfg.data,
        cfg.eval,
        student.device,
        cfg.eval.metrics,
        autocast_dtype(cfg.schedule.amp, student.device),
        keep=cfg.eval.figure_cases,
        progress=progress,
        priors=open_prior_store(cfg, cases) if cfg.priors.enabled else None,
        priors_cfg=cfg.priors,
    )
    summary = write_report(out, acc)
    _write_figures(out, cfg, summary, kept)
    logger.info("wrote %s", out)
    return summary


def _write_figures(out: Path, cfg: RunConfig, summary: dict, kept: list[dict]) -> None:
    """``predictions.png`` (the kept cases: image, reference, prediction) and ``dice_per_class.png``."""
    if kept:
        save_prediction_figure(
            out / "predictions.png",
            [k["image"] for k in kept],
            [k["label"] for k in kept],
            [k["pred"] for k in kept],
            [k["case_id"] for k in kept],
            cfg.data.num_classes,
            class_names=cfg.data.class_names or None,
            image_channels=cfg.data.in_channels,
        )
    if "dice" in cfg.eval.metrics:
        save_metric_bar_figure(out / "dice_per_class.png", summary)
