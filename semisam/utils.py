"""Small shared helpers: atomic file writes, seeding, device and precision choice."""

from __future__ import annotations

import io
import logging
import os
import random
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

logger = logging.getLogger("semisam")

# mkstemp creates files readable by their owner only; written files get the usual umask-derived mode instead
_UMASK = os.umask(0)
os.umask(_UMASK)
FILE_MODE = 0o666 & ~_UMASK

# Dice smoothing (MONAI DiceLoss's smooth_nr / smooth_dr defaults): two empty maps agree perfectly. The one constant
# of the Dice losses (semisam.methods.losses) and of the teacher's calibration Dice (semisam.pseudolabel.rectify).
SMOOTH = 1e-5


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that a reader never sees a half-written file (tmp + fsync + rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, FILE_MODE)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def remove_stale_temporaries(directory: Path | str, name: str | None = None) -> list[Path]:
    """Delete the temporary files that :func:`atomic_write_bytes` leaves behind when its process is killed
    between creating and renaming one (``.<name>.<random>.tmp``): ``name``'s only, or every one in ``directory``.

    Call it only where no other process is writing into ``directory`` at the same time (a resumed run before it
    writes, rank 0 before the other ranks start). Returns the deleted paths.
    """
    directory = Path(directory)
    if not directory.is_dir():
        return []
    prefix = f".{name}." if name is not None else "."
    removed = []
    for path in directory.iterdir():
        if path.name.startswith(prefix) and path.name.endswith(".tmp") and path.is_file():
            path.unlink(missing_ok=True)
            removed.append(path)
    if removed:
        logger.info("removed %d temporary file(s) left in %s by an interrupted write", len(removed), directory)
    return removed


def atomic_write_text(path: Path | str, text: str) -> None:
    """Atomically write UTF-8 text."""
    atomic_write_bytes(Path(path), text.encode("utf-8"))


def atomic_torch_save(obj: Any, path: Path | str) -> None:
    """Atomically ``torch.save`` an object (serialised in memory, then renamed into place)."""
    buf = io.BytesIO()
    torch.save(obj, buf)
    atomic_write_bytes(Path(path), buf.getvalue())


def seed_everything(seed: int, deterministic: bool = False) -> None:
    """Seed Python, NumPy and torch (via MONAI's ``set_determinism``); optionally force deterministic kernels."""
    from monai.utils import set_determinism

    random.seed(seed)
    np.random.seed(seed % 2**32)
    set_determinism(seed=seed, use_deterministic_algorithms=deterministic or None)


def resolve_device(name: str) -> torch.device:
    """``auto`` picks CUDA when available, else CPU; other names are passed to ``torch.device``."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device={name!r} requested but CUDA is not available on this machine")
    return device


def autocast_dtype(mode: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for ``schedule.amp`` on ``device``; ``None`` means full fp32."""
    if mode == "off" or device.type != "cuda":
        return None
    if mode == "fp16":
        return torch.float16
    return torch.bfloat16  # auto and bf16
