"""Checkpoints: atomic writes, safe loads, and the one way to get a trained student back from one.

A checkpoint is a plain dict of tensors, numbers, strings and lists, loadable with
``torch.load(path, weights_only=True)``: nothing in it can execute code when loaded.

Keys: ``format`` (int), ``config`` (the run config as a plain dict), ``iteration`` (completed iterations),
``model``, ``ema`` (or absent), ``optimizer``, ``scheduler``, ``scaler`` (or absent), ``best_metric``,
``best_iteration``, ``rng`` (see :func:`semisam.engine.rng.capture_rng`), ``model_info`` (``arch``, ``in_channels``,
``num_classes``), ``versions``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from semisam.config.loader import config_from_dict, load_config
from semisam.config.schema import ConfigError, RunConfig
from semisam.student.unet import build_run_student
from semisam.utils import atomic_torch_save, remove_stale_temporaries, resolve_device

CHECKPOINT_FORMAT = 1


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be used; the message names the file."""


def save_checkpoint(path: Path | str, state: dict[str, Any]) -> None:
    """Write ``state`` atomically (a crash never leaves a half-written checkpoint behind), and delete the temporary
    file that a write of the same checkpoint killed before its rename left next to it."""
    remove_stale_temporaries(Path(path).parent, Path(path).name)
    atomic_torch_save({"format": CHECKPOINT_FORMAT, **state}, path)


def load_checkpoint(path: Path | str, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint with ``weights_only=True``; clear errors for missing, truncated or foreign files."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:
        raise CheckpointError(
            f"{path}: cannot be loaded as a semisam checkpoint ({type(err).__name__}: {err})"
        ) from err
    if not isinstance(state, dict) or "model" not in state or "config" not in state:
        raise CheckpointError(f"{path}: not a semisam checkpoint (no 'model'/'config' entries)")
    if state.get("format", 0) > CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path}: written by a newer semisam (format {state['format']})")
    return state


def load_model_weights(model: torch.nn.Module, state: dict[str, Any], path: Path | str, key: str = "model") -> None:
    """Load ``state[key]`` into ``model`` strictly; a checkpoint of another architecture is a clear error."""
    if key not in state:
        raise CheckpointError(f"{path}: has no '{key}' weights")
    own = model.state_dict()
    theirs = state[key]
    missing = [k for k in own if k not in theirs]
    unexpected = [k for k in theirs if k not in own]
    mismatched = [
        f"{k}: checkpoint {tuple(v.shape)} vs model {tuple(own[k].shape)}"
        for k, v in theirs.items()
        if k in own and own[k].shape != v.shape
    ]
    if missing or unexpected or mismatched:
        problems = [
            f"{label} {items[:3]}"
            for label, items in (
                ("missing", missing),
                ("unexpected", unexpected),
                ("shape mismatch", mismatched),
            )
            if items
        ]
        info = state.get("model_info") or "unknown"
        raise CheckpointError(f"{path}: weights of another architecture ({info}): {'; '.join(problems)}")
    model.load_state_dict(theirs)


WEIGHTS = ("model", "ema", "auto")


@dataclass
class TrainedStudent:
    """A student loaded from a checkpoint: the ``config`` to run it under, the ``model`` in eval mode on ``device``,
    and which ``weights`` were loaded (``model`` or ``ema``)."""

    config: RunConfig
    model: torch.nn.Module
    device: torch.device
    weights: str


def load_student(
    checkpoint: str | Path,
    config_paths: Sequence[str | Path] | None = None,
    overrides: Sequence[str] = (),
    weights: str = "model",
) -> TrainedStudent:
    """The one way to get a trained student back from a checkpoint (evaluation, refinement, rounds, analysis).

    The config is the checkpoint's own (or ``config_paths`` + ``overrides``); the student's architecture and
    inputs (``student``, ``priors``: the number of input channels) are always the checkpoint's.

    Args:
        weights: ``model`` (the student), ``ema`` (its moving average) or ``auto`` (the EMA where the checkpoint
            has one: what prompts the teacher in an online run, else the student).

    Raises:
        ConfigError: a config whose classes or channels differ from the checkpoint's, an unknown ``weights``, or
            ``ema`` asked of a checkpoint without EMA weights.
        CheckpointError: an unreadable checkpoint or weights of another architecture.
    """
    if weights not in WEIGHTS:
        raise ConfigError(f"weights={weights!r} is not one of {', '.join(WEIGHTS)}")
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
    if weights == "auto":
        weights = "ema" if state.get("ema") is not None else "model"
    if weights == "ema" and state.get("ema") is None:
        raise ConfigError(f"{checkpoint} holds no EMA weights (method {saved.method.name})")
    device = resolve_device(cfg.device)
    model = build_run_student(cfg)
    ema_state = state.get("ema") or {}
    source = {"model": state["model"], "ema": ema_state.get("module", ema_state)}[weights]
    load_model_weights(model, {"model": source}, checkpoint)
    return TrainedStudent(cfg, model.to(device).eval(), device, weights)
