"""The on-disk cache of what the frozen teacher computes once per image: embeddings and SAMAug prior maps.

Layout (``<teacher.cache_dir>/<data.name>/<teacher.kind>/``)::

    embeddings/manifest.json     who made them (teacher identity + data normalisation)
    embeddings/<case>.npy        float16, (256, e, e) for a 2D case, (D, 256, e, e) for a volume
    priors/manifest.json         the same + the everything-mode settings
    priors/<case>.npy            float16, (2, H, W) or (D, 2, H, W): segmentation prior, boundary prior
    embedding_priors/manifest.json   the same + the reduction (PCA channels, the training ids it was fitted on)
    embedding_priors/pca.npz     the fixed PCA (mean, components, scales) fitted on the training images
    embedding_priors/<case>.npy  float16, (P, h, w) or (D, P, h, w): the embedding's whitened PCA components over
                                 the image's extent, at the embedding grid's resolution (see
                                 :mod:`semisam.teacher.embedding_priors`)

Every file is written atomically (temporary file + rename), so a case file that exists is complete: an
interrupted precompute resumes by skipping the cases already there. A manifest that names another teacher (kind,
checkpoint sha256, preprocessing, encoder size), other data normalisation or other everything-mode settings makes
the store stale: :meth:`CacheStore.prepare` wipes and rebuilds it, and a reader (training) refuses it.
Arrays are plain ``.npy`` loaded with ``allow_pickle=False``: nothing in a cache can execute code.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import shutil
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from semisam.config.schema import RunConfig
from semisam.utils import atomic_write_bytes, atomic_write_text, remove_stale_temporaries

logger = logging.getLogger("semisam")

CACHE_FORMAT = 1
KINDS = ("embeddings", "priors", "embedding_priors")


class CacheError(RuntimeError):
    """A cache that cannot be used as it is; the message says which command rebuilds it."""


def cache_root(cfg: RunConfig) -> Path:
    """``<teacher.cache_dir>/<data.name>/<teacher.kind>``."""
    return Path(cfg.teacher.cache_dir).expanduser() / cfg.data.name / cfg.teacher.kind


def teacher_identity(
    kind: str,
    checkpoint_sha256: str | None,
    preprocessing: str,
    encoder_size: int,
    engine_version: int = 1,
    dtype: str = "float32",
) -> dict:
    """The fields that name a teacher in a manifest (the engine version changes when its numerics do; ``dtype``,
    the autocast dtype it ran in, changes them by rounding: a bf16 cache is not an fp32 one)."""
    return {
        "kind": kind,
        "checkpoint_sha256": checkpoint_sha256,
        "preprocessing": preprocessing,
        "encoder_size": encoder_size,
        "engine_version": engine_version,
        "dtype": dtype,
    }


def expected_manifest(cfg: RunConfig, kind: str, teacher: dict, fit_ids: Sequence[str] | None = None) -> dict:
    """The manifest a store of ``kind`` must carry to be used with this config and teacher identity
    (``fit_ids``: for ``embedding_priors``, the training case ids the PCA is fitted on)."""
    data = cfg.data
    manifest: dict[str, Any] = {
        "format": CACHE_FORMAT,
        "teacher": teacher,
        "data": {
            "name": data.name,
            "modality": data.modality,
            "clip_percentiles": list(data.clip_percentiles),
            "in_channels": data.in_channels,
        },
    }
    if kind == "priors":
        manifest["everything"] = asdict(cfg.teacher.everything)
    if kind == "embedding_priors":
        if fit_ids is None:
            raise ValueError("an embedding-prior manifest names the training ids its PCA was fitted on")
        manifest["reduction"] = {
            "method": "pca",
            "channels": cfg.priors.embedding_channels,
            "whitened": True,
            "fit_cases": len(fit_ids),
            "fit_ids_sha256": hashlib.sha256("\n".join(sorted(fit_ids)).encode()).hexdigest(),
        }
    return manifest


def _safe_name(case_id: str) -> str:
    if "/" in case_id or "\\" in case_id or case_id.startswith("."):
        raise CacheError(f"case id {case_id!r} cannot name a cache file")
    return case_id


class CacheStore:
    """One store (embeddings or priors) of a teacher cache."""

    def __init__(self, root: Path, kind: str) -> None:
        if kind not in KINDS:
            raise ValueError(f"cache kind {kind!r} is not one of {KINDS}")
        self.kind = kind
        self.dir = Path(root) / kind
        self.manifest_path = self.dir / "manifest.json"

    def read_manifest(self) -> dict | None:
        if not self.manifest_path.exists():
            return None
        try:
            return json.loads(self.manifest_path.read_text())
        except (OSError, json.JSONDecodeError) as err:
            raise CacheError(f"{self.manifest_path}: unreadable cache manifest ({err})") from err

    def prepare(self, manifest: dict) -> bool:
        """Make the store ready for ``manifest``; wipe it first if it was made by another teacher or setting.

        Temporary files left by a precompute killed in the middle of a write are deleted (only rank 0 prepares,
        before the other ranks start, so nobody is writing).

        Returns:
            True if the existing store was kept (its finished cases will be skipped), False if it is new or
            was rebuilt.
        """
        current = self.read_manifest()
        if current == manifest:
            remove_stale_temporaries(self.dir)
            return True
        if current is not None or (self.dir.exists() and any(self.dir.iterdir())):
            logger.warning(
                "%s was made by another teacher or with other settings (%s); rebuilding it",
                self.dir,
                _difference(current, manifest),
            )
            shutil.rmtree(self.dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.manifest_path, json.dumps(manifest, indent=2, sort_keys=True))
        return False

    def check(self, manifest: dict, command: str) -> None:
        """Refuse a missing or stale store, saying which command makes it."""
        current = self.read_manifest()
        if current is None:
            raise CacheError(f"no teacher {self.kind} in {self.dir}; make them with: {command}")
        if current != manifest:
            raise CacheError(
                f"{self.dir} was made by another teacher or with other settings "
                f"({_difference(current, manifest)}); rebuild it with: {command}"
            )

    def path(self, case_id: str) -> Path:
        return self.dir / f"{_safe_name(case_id)}.npy"

    def has(self, case_id: str) -> bool:
        return self.path(case_id).exists()

    def missing(self, case_ids: list[str]) -> list[str]:
        return [c for c in case_ids if not self.has(c)]

    def save(self, case_id: str, array: np.ndarray) -> None:
        """Store ``array`` as float16, atomically."""
        buf = io.BytesIO()
        np.save(buf, np.asarray(array, dtype=np.float16), allow_pickle=False)
        atomic_write_bytes(self.path(case_id), buf.getvalue())

    def load(self, case_id: str) -> np.ndarray:
        """float32 array of one case; a clear error for a missing or damaged file."""
        path = self.path(case_id)
        try:
            return np.load(path, allow_pickle=False).astype(np.float32)
        except FileNotFoundError:
            raise CacheError(f"{path}: missing from the teacher cache (run the precompute tool)") from None
        except (OSError, ValueError) as err:
            raise CacheError(f"{path}: damaged cache file ({err}); delete it and rerun the precompute tool") from err


def _difference(old: dict | None, new: dict) -> str:
    if old is None:
        return "no manifest"
    diffs = []

    def walk(a: Any, b: Any, prefix: str) -> None:
        if isinstance(a, dict) and isinstance(b, dict):
            for key in sorted(set(a) | set(b)):
                walk(a.get(key, "<absent>"), b.get(key, "<absent>"), f"{prefix}{key}.")
        elif a != b:
            diffs.append(f"{prefix.rstrip('.')}: {a!r} -> {b!r}")

    walk(old, new, "")
    return "; ".join(diffs[:4]) or "same"
