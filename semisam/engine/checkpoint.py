"""Checkpoints: atomic writes, safe loads, and the random-number state that makes a resumed run exact.

A checkpoint is a plain dict of tensors, numbers, strings and lists, loadable with
``torch.load(path, weights_only=True)``: nothing in it can execute code when loaded.

Keys: ``format`` (int), ``config`` (the run config as a plain dict), ``iteration`` (completed iterations),
``model``, ``ema`` (or absent), ``optimizer``, ``scheduler``, ``scaler`` (or absent), ``best_metric``,
``best_iteration``, ``rng`` (see :func:`capture_rng`), ``model_info`` (``arch``, ``in_channels``,
``num_classes``), ``versions``.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from semisam.utils import atomic_torch_save, remove_stale_temporaries

CHECKPOINT_FORMAT = 1


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be used; the message names the file."""


def capture_rng() -> dict[str, Any]:
    """Python, NumPy and torch (CPU and CUDA) generator states, as tensors and plain lists."""
    py_version, py_state, py_gauss = random.getstate()
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    state: dict[str, Any] = {
        "python": [py_version, list(py_state), py_gauss],
        "numpy": [np_name, torch.from_numpy(np_keys.astype(np.int64)), np_pos, np_has_gauss, np_gauss],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    """Inverse of :func:`capture_rng`."""
    py_version, py_state, py_gauss = state["python"]
    random.setstate((py_version, tuple(py_state), py_gauss))
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = state["numpy"]
    np.random.set_state((np_name, np_keys.numpy().astype(np.uint32), np_pos, np_has_gauss, np_gauss))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


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
