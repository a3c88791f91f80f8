"""Opening the teacher cache for reading: one opener per store kind, and the teacher identity a store must carry.

A store is usable only if its manifest names the same teacher (kind, checkpoint sha256, preprocessing, encoder
size, engine version, dtype) and data normalisation as the run, and holds every case the run reads. Both openers
refuse anything else with a :class:`~semisam.teacher.cache.CacheError` that names the store and the command that
makes it (``tools/precompute.py``); they never rebuild (that is the precompute's job).
"""

from __future__ import annotations

from collections.abc import Sequence

from semisam.config.schema import RunConfig
from semisam.teacher.cache import CacheError, CacheStore, cache_root, expected_manifest, teacher_identity
from semisam.teacher.checkpoints import resolve_checkpoint
from semisam.teacher.engine import DTYPE_NAMES, TEACHER_VERSION, SamTeacher, teacher_dtype
from semisam.teacher.models import get_spec
from semisam.utils import resolve_device

PRECOMPUTE_COMMAND = "python tools/precompute.py --config <this run's config>"


def identity_of(teacher: SamTeacher) -> dict:
    """Manifest identity of a built teacher."""
    spec = teacher.spec
    return teacher_identity(
        spec.kind,
        teacher.checkpoint_sha256,
        spec.preprocessing,
        spec.encoder_size,
        TEACHER_VERSION,
        DTYPE_NAMES[teacher.dtype],
    )


def identity_from_config(cfg: RunConfig) -> dict:
    """Manifest identity of the configured teacher without building it (hashes the checkpoint file only)."""
    spec = get_spec(cfg.teacher.kind)
    _, sha256 = resolve_checkpoint(cfg.teacher)
    dtype = teacher_dtype(cfg.teacher.precision, resolve_device(cfg.teacher.device))
    return teacher_identity(
        spec.kind, sha256, spec.preprocessing, spec.encoder_size, TEACHER_VERSION, DTYPE_NAMES[dtype]
    )


def open_prior_store(cfg: RunConfig, case_ids: Sequence[str]) -> CacheStore:
    """The SAMAug prior maps of ``case_ids`` (a run with ``priors.enabled``)."""
    store = CacheStore(cache_root(cfg), "priors")
    command = f"{PRECOMPUTE_COMMAND} (cache: {store.dir})"
    store.check(expected_manifest(cfg, "priors", identity_from_config(cfg)), command)
    return _require_cases(store, case_ids, "prior maps for", f"complete it with: {command}")


def open_embedding_store(cfg: RunConfig, teacher: SamTeacher, case_ids: Sequence[str]) -> CacheStore:
    """The image embeddings of ``case_ids`` that ``teacher`` decodes prompts on (pseudo-labels, refinement)."""
    store = CacheStore(cache_root(cfg), "embeddings")
    store.check(expected_manifest(cfg, "embeddings", identity_of(teacher)), PRECOMPUTE_COMMAND)
    advice = f"the teacher decodes prompts on them. Make them with: {PRECOMPUTE_COMMAND}"
    return _require_cases(store, case_ids, "embeddings of", advice)


def _require_cases(store: CacheStore, case_ids: Sequence[str], what: str, advice: str) -> CacheStore:
    """``store`` if it holds every case of ``case_ids``; else a :class:`CacheError` saying how many it lacks
    (``what``: e.g. "prior maps for"), with examples, and ``advice``."""
    missing = store.missing(list(case_ids))
    if missing:
        raise CacheError(
            f"{store.dir} lacks {what} {len(missing)} of {len(case_ids)} cases (e.g. {missing[:3]}); {advice}"
        )
    return store
