"""One-command evaluation of a trained student on a held-out split (nnU-Net style: a folder with
``summary.json``, ``metrics_per_case.csv`` and PNG figures)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import torch

from semisam.config.loader import config_from_dict, load_config
from semisam.config.schema import ConfigError, RunConfig
from semisam.data.fusion import student_in_channels
from semisam.data.readers import build_reader
from semisam.data.splits import resolve_split
from semisam.engine.checkpoint import load_checkpoint, load_model_weights
from semisam.evaluation.figures import save_metric_bar_figure, save_prediction_figure
from semisam.evaluation.inference import evaluate_cases
from semisam.evaluation.report import write_report
from semisam.student.unet import build_student
from semisam.utils import autocast_dtype, resolve_device

logger = logging.getLogger("semisam")

SPLITS = ("test", "val", "labeled", "unlabeled")


def load_student(
    checkpoint: str | Path,
    config_paths: Sequence[str | Path] | None = None,
    overrides: Sequence[str] = (),
    weights: str = "model",
) -> tuple[RunConfig, torch.nn.Module, torch.device]:
    """A trained student in eval mode on its device, with the config to run it under.

    The config is the checkpoint's own (or ``config_paths`` + ``overrides``); the student's architecture and
    inputs (``student``, ``priors``) are always the checkpoint's. ``weights``: ``model`` or ``ema``.

    Raises:
        ConfigError: a config whose classes or channels differ from the checkpoint's, or ``ema`` asked of a
            checkpoint without EMA weights.
        CheckpointError: an unreadable checkpoint or weights of another architecture.
    """
    checkpoint = Path(checkpoint)
    state = load_checkpoint(checkpoint)
    saved = config_from_dict(state["config"])
    cfg = load_config(config_paths, overrides) if config_paths else config_from_dict(state["config"], overrides)
    cfg.student, cfg.priors = saved.student, saved.priors  # the architecture and its inputs are the checkpoint's
    for key in ("num_classes", "in_channels"):
        if getattr(cfg.data, key) != getattr(saved.data, key):
            raise ConfigError(
                f"data.{key}={getattr(cfg.data, key)} but {checkpoint} was trained with {getattr(saved.data, key)}"
            )
    if weights not in ("model", "ema"):
        raise ConfigError(f"weights={weights!r} is not one of model, ema")
    device = resolve_device(cfg.device)
    model = build_student(cfg.student, student_in_channels(saved), cfg.data.num_classes)
    if weights == "ema" and state.get("ema") is None:
        raise ConfigError(f"{checkpoint} holds no EMA weights (method {saved.method.name})")
    ema_state = state.get("ema") or {}
    source = {"model": state["model"], "ema": ema_state.get("module", ema_state)}[weights]
    load_model_weights(model, {"model": source}, checkpoint)
    return cfg, model.to(device).eval(), device


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
    cfg, model, device = load_student(checkpoint, config_paths, overrides, weights)

    reader = build_reader(cfg.data)
    cases = getattr(resolve_split(cfg.data, reader.case_ids()), split)
    if not cases:
        raise ConfigError(f"split {split!r} of data set {cfg.data.name!r} has no cases")
    out = Path(out_dir) if out_dir else checkpoint.parent.parent / f"eval_{split}"
    logger.info(
        "evaluating %s (%s weights) on %d %s cases of %s",
        checkpoint,
        weights,
        len(cases),
        split,
        cfg.data.name,
    )
    priors = None
    if cfg.priors.enabled:
        from semisam.teacher.precompute import open_prior_store  # the teacher stack only when it is used

        priors = open_prior_store(cfg, cases)
    acc, kept = evaluate_cases(
        model,
        reader,
        cases,
        cfg.data,
        cfg.eval,
        device,
        cfg.eval.metrics,
        autocast_dtype(cfg.schedule.amp, device),
        keep=cfg.eval.figure_cases,
        progress=progress,
        priors=priors,
        priors_cfg=cfg.priors,
    )
    summary = write_report(out, acc)
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
    logger.info("wrote %s", out)
    return summary
