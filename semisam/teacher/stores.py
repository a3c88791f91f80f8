"""Opening the teacher cache for reading: one opener per store kind, and the teacher identity a store must carry.

A store is usable only if its manifest names the same teacher (kind, checkpoint sha256, preprocessing, encoder
size, engine version, dtype) and data normalisation as the run, and holds every case the run reads. Both openers
refuse anything else with a :class:`~semisam.teacher.cache.CacheError` that names the store and the command that
makes it (``tools/precompute.py``); they never rebuild (that is the precompute's job).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import numpy as np

from semisam.config.schema import RunConfig
from semisam.data.readers import CaseReader, build_reader
from semisam.data.splits import resolve_split
from semisam.teacher.cache import CacheError, CacheStore, cache_root, expected_manifest, teacher_identity
from semisam.teacher.checkpoints import resolve_checkpoint
from semisam.teacher.engine import DTYPE_NAMES, TEACHER_VERSION, SamTeacher, teacher_dtype
from semisam.teacher.models import get_spec
from semisam.utils import resolve_device

PCA_FIT_CASES = 256  # training cases the embedding priors' PCA is fitted on (evenly spaced over the pool)
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


def prior_store_kind(cfg: RunConfig) -> str:
    """The cache store of ``cfg.priors.source``: ``priors`` (SAMAug's maps) or ``embedding_priors``."""
    return "embedding_priors" if cfg.priors.source == "embeddings" else "priors"


def embedding_fit_ids(cfg: RunConfig, reader: CaseReader | None = None) -> list[str]:
    """The training cases the embedding priors' PCA is fitted on: at most :data:`PCA_FIT_CASES`, evenly spaced
    over the sorted training pool (labeled + every unlabeled case, ``data.split.unlabeled_count`` ignored; never
    val or test). Label-free, and the same for every labeled subset and pool size of a data set, so that one
    cache serves all of its protocols."""
    reader = reader or build_reader(cfg.data)
    whole = replace(cfg.data, split=replace(cfg.data.split, unlabeled_count=None))
    split = resolve_split(whole, reader.case_ids())
    pool = sorted({*split.labeled, *split.unlabeled})
    if len(pool) <= PCA_FIT_CASES:
        return pool
    return [pool[i] for i in np.linspace(0, len(pool) - 1, PCA_FIT_CASES).round().astype(int)]


def open_prior_store(cfg: RunConfig, case_ids: Sequence[str]) -> CacheStore:
    """The prior maps of ``case_ids`` from the store of ``priors.source`` (a run with ``priors.enabled``), refused
    unless made by this config's teacher and settings (for embedding priors: the same PCA channels, fitted on the
    same training ids) and complete."""
    kind = prior_store_kind(cfg)
    store = CacheStore(cache_root(cfg), kind)
    command = f"{PRECOMPUTE_COMMAND} (cache: {store.dir})"
    fit_ids = embedding_fit_ids(cfg) if kind == "embedding_priors" else None
    try:  # the student takes these maps as input: the message names the key that asks for them
        store.check(expected_manifest(cfg, kind, identity_from_config(cfg), fit_ids), command)
        return _require_cases(store, case_ids, "prior maps for", f"complete it with: {command}")
    except CacheError as err:
        raise CacheError(f"priors.enabled=true, priors.source={cfg.priors.source}: {err}") from None


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
