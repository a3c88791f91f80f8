"""Offline teacher work, done once per image: image embeddings and SAMAug prior maps, into the teacher cache.

For every case of the requested splits: normalise it as the student will see it, embed its slices in batches
with the frozen teacher, run the everything mode on each slice's embedding (segment-anything's automatic mask
generator for point-capable teachers, the box grid for box-only ones), turn the masks into prior maps, and store
the case atomically. Finished cases are skipped, so an interrupted run resumes where it stopped; a cache made by
another teacher or with other settings is rebuilt (see :mod:`semisam.teacher.cache`).

Embeddings are kept, when ``teacher.cache_embeddings`` is set, for the cases the pseudo-label refreshes decode
prompts on: training cases (labeled + unlabeled) and, for a config that trains on pseudo-labels, the val cases
(held-out labels calibrate the teacher's trust). Priors are kept for every case the student will see.

Under torchrun (``torchrun --nproc_per_node=N tools/precompute.py ...``) rank r computes every N-th case of one
fixed order, so each case is computed by exactly one process. Rank 0 prepares the stores (wipes a stale one,
writes the manifests) before the others start writing into them, and the call returns on every rank only once
all ranks are done; rank 0 then holds the report of the whole run. The manifest names the teacher that made the
files, not their completeness (that is what lets an interrupted run resume), so it is written first, as in a
single process.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from semisam import distributed
from semisam.config.schema import RunConfig
from semisam.data.dataset import CaseLoader
from semisam.data.readers import CaseReader, build_reader
from semisam.data.splits import Split, resolve_split
from semisam.teacher.cache import CacheStore, cache_root, expected_manifest, teacher_identity
from semisam.teacher.everything import everything_amg, everything_box_grid
from semisam.teacher.priors import MaskRecord, prior_maps

logger = logging.getLogger("semisam")

SPLIT_NAMES = ("labeled", "unlabeled", "val", "test")
TRAIN_SPLITS = ("labeled", "unlabeled")


def embedding_splits(cfg: RunConfig) -> tuple[str, ...]:
    """The splits whose embeddings are kept: training cases, and the val cases the pseudo-label refreshes
    calibrate on when ``cfg`` trains on pseudo-labels."""
    uses_pseudo_labels = cfg.method.name == "semisam" and cfg.pseudo_labels.enabled
    return (*TRAIN_SPLITS, "val") if uses_pseudo_labels else TRAIN_SPLITS


@dataclass
class PrecomputeReport:
    """What a precompute run did."""

    root: Path
    computed: list[str] = field(default_factory=list)
    skipped: int = 0
    images: int = 0  # 2D images (slices) processed
    seconds: float = 0.0

    @property
    def seconds_per_image(self) -> float:
        return self.seconds / self.images if self.images else 0.0


def identity_of(teacher) -> dict:
    """Manifest identity of a built :class:`~semisam.teacher.engine.SamTeacher`."""
    from semisam.teacher.engine import TEACHER_VERSION

    spec = teacher.spec
    return teacher_identity(
        spec.kind, teacher.checkpoint_sha256, spec.preprocessing, spec.encoder_size, TEACHER_VERSION
    )


def identity_from_config(cfg: RunConfig) -> dict:
    """Manifest identity of the configured teacher without building it (hashes the checkpoint file only)."""
    from semisam.teacher.checkpoints import resolve_checkpoint
    from semisam.teacher.engine import TEACHER_VERSION
    from semisam.teacher.models import get_spec

    spec = get_spec(cfg.teacher.kind)
    _, sha256 = resolve_checkpoint(cfg.teacher)
    return teacher_identity(spec.kind, sha256, spec.preprocessing, spec.encoder_size, TEACHER_VERSION)


def precompute_command(cfg_paths: Sequence[str] = ("<your config>",)) -> str:
    configs = " ".join(f"--config {p}" for p in cfg_paths)
    return f"python tools/precompute.py {configs}"


def to_uint8_rgb(image: np.ndarray) -> np.ndarray:
    """Normalised float (C, H, W) in [0, 1] -> uint8 (H, W, 3) for segment-anything's mask generator."""
    rgb = np.repeat(image[:1], 3, axis=0) if image.shape[0] == 1 else image[:3]
    return (np.clip(rgb, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8).transpose(1, 2, 0)


def everything_masks(teacher, image: np.ndarray, embedding: torch.Tensor, cfg: RunConfig) -> list[MaskRecord]:
    """The teacher's everything-mode masks for one 2D image (C, H, W) in [0, 1], given its embedding
    (1, 256, e, e)."""
    ev = cfg.teacher.everything
    height, width = image.shape[-2:]
    if teacher.spec.accepts_points:
        return everything_amg(teacher.model, to_uint8_rgb(image), ev, features=embedding.to(teacher.device))
    input_size = teacher.input_size((height, width))

    def decode(boxes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        result = teacher.decode_boxes(embedding, [boxes], [(height, width)], [input_size])[0]
        return result.logits, result.iou

    return everything_box_grid(decode, (height, width), ev)


def _slices(image: np.ndarray) -> list[np.ndarray]:
    """(C, H, W) -> [image]; (C, D, H, W) -> D images (C, H, W)."""
    return [image] if image.ndim == 3 else [image[:, k] for k in range(image.shape[1])]


def _case_order(split: Split, splits: Sequence[str], keep: Sequence[str]) -> list[tuple[str, bool]]:
    """Unique cases of the requested splits in split order, with whether their embeddings are kept (a case of
    one of the ``keep`` splits)."""
    seen: dict[str, bool] = {}
    for name in splits:
        for case_id in getattr(split, name):
            seen[case_id] = seen.get(case_id, False) or name in keep
    return list(seen.items())


def precompute(
    cfg: RunConfig,
    teacher=None,
    splits: Sequence[str] = SPLIT_NAMES,
    limit: int | None = None,
    rank: int | None = None,
    world_size: int | None = None,
    progress: bool = True,
    reader: CaseReader | None = None,
    priors: bool = True,
    keep_embeddings_of: Sequence[str] | None = None,
) -> PrecomputeReport:
    """Compute and cache embeddings and prior maps for the configured data set.

    Args:
        teacher: a built :class:`~semisam.teacher.engine.SamTeacher` (default: built from ``cfg.teacher``).
        splits: which splits' cases to process.
        limit: at most this many cases per split (a subset, e.g. for a CPU trial).
        rank, world_size: process ``rank`` handles every ``world_size``-th case (default: this process's place
            in torchrun's process group, see :mod:`semisam.distributed`); rank 0 writes the manifests and,
            in a process group, the others wait for it and everyone waits for the last rank at the end.
        priors: also compute the prior maps (the everything mode, the slow part on a CPU); ``False`` computes
            only the embeddings that pseudo-labels need.
        keep_embeddings_of: the splits whose embeddings are kept (default: :func:`embedding_splits` of ``cfg``;
            a caller preparing a cache for several configs names them).
    """
    from semisam.teacher.engine import build_teacher

    rank = distributed.rank() if rank is None else rank
    world_size = distributed.world_size() if world_size is None else world_size
    unknown = [s for s in splits if s not in SPLIT_NAMES]
    if unknown:
        raise ValueError(f"unknown splits {unknown}; choose from {SPLIT_NAMES}")
    teacher = teacher or build_teacher(cfg.teacher)
    reader = reader or build_reader(cfg.data)
    split = resolve_split(cfg.data, reader.case_ids())
    if limit is not None:
        split = Split(*(getattr(split, name)[:limit] for name in ("labeled", "unlabeled", "val", "test")))
    root = cache_root(cfg)
    identity = identity_of(teacher)
    stores = {kind: CacheStore(root, kind) for kind in ("embeddings", "priors")}
    keep_embeddings = cfg.teacher.cache_embeddings
    for kind, store in stores.items():
        if (kind == "embeddings" and not keep_embeddings) or (kind == "priors" and not priors):
            continue
        if rank == 0:
            store.prepare(expected_manifest(cfg, kind, identity))
    distributed.barrier()  # the stores are ready (a stale one wiped) before any rank writes into them

    keep = embedding_splits(cfg) if keep_embeddings_of is None else tuple(keep_embeddings_of)
    cases = _case_order(split, splits, keep)[rank::world_size]
    report = PrecomputeReport(root=root)
    todo = []
    for case_id, keeps_embedding in cases:
        need_emb = keep_embeddings and keeps_embedding and not stores["embeddings"].has(case_id)
        need_pri = priors and not stores["priors"].has(case_id)
        if need_emb or need_pri:
            todo.append((case_id, keeps_embedding, need_emb, need_pri))
        else:
            report.skipped += 1
    logger.info(
        "teacher %s: %d cases to compute, %d already cached, in %s", teacher.spec.kind, len(todo), report.skipped, root
    )
    loader = CaseLoader(reader, cfg.data)
    tic = time.perf_counter()
    desc = f"precompute[{teacher.spec.kind}]" + (f" rank {rank}/{world_size}" if world_size > 1 else "")
    bar = tqdm(total=len(todo), desc=desc, disable=not progress or rank != 0, unit="case")
    for case_id, need_emb, need_pri, embeddings, prior_maps_ in _compute_cases(teacher, loader, todo, stores, cfg):
        if need_emb:
            stores["embeddings"].save(case_id, embeddings)
        if need_pri:
            stores["priors"].save(case_id, prior_maps_)
        report.computed.append(case_id)
        report.images += len(embeddings) if embeddings.ndim == 4 else 1
        bar.update(1)
    bar.close()
    report.seconds = time.perf_counter() - tic
    if not distributed.is_distributed():
        return report
    reports = distributed.gather_to_main(report)  # also a barrier: rank 0 waits for the last rank to finish
    distributed.barrier()  # the others return only once everything is cached too
    return _merged(reports) if reports is not None else report


def _merged(reports: list[PrecomputeReport]) -> PrecomputeReport:
    """One report for the ranks of a torchrun precompute (seconds: the slowest rank's, i.e. wall clock)."""
    return PrecomputeReport(
        root=reports[0].root,
        computed=[case for r in reports for case in r.computed],
        skipped=sum(r.skipped for r in reports),
        images=sum(r.images for r in reports),
        seconds=max(r.seconds for r in reports),
    )


def _compute_cases(teacher, loader: CaseLoader, todo, stores, cfg: RunConfig) -> Iterator[tuple]:
    """Yield ``(case_id, need_emb, need_pri, embeddings, priors)`` per finished case.

    Cases are taken ``embed_batch_size`` at a time and all their slices that lack a cached embedding go through
    the encoder together (in batches of ``embed_batch_size``), so 2D data sets use full encoder batches too.
    Cached embeddings are reused, never recomputed.
    """
    batch_size = teacher.embed_batch_size
    for start in range(0, len(todo), batch_size):
        chunk = todo[start : start + batch_size]
        images = [loader.image(case_id) for case_id, *_ in chunk]
        loader.clear()
        slices = [_slices(image) for image in images]
        embeddings: list[torch.Tensor | None] = []
        to_embed: list[np.ndarray] = []
        for (case_id, *_), case_slices in zip(chunk, slices, strict=True):
            if stores["embeddings"].has(case_id):
                cached = torch.from_numpy(stores["embeddings"].load(case_id))
                embeddings.append(cached if cached.ndim == 4 else cached[None])
            else:
                embeddings.append(None)
                to_embed.extend(case_slices)
        fresh = (
            torch.cat([teacher.embed(to_embed[i : i + batch_size]).cpu() for i in range(0, len(to_embed), batch_size)])
            if to_embed
            else None
        )
        offset = 0
        for (case_id, _, need_emb, need_pri), image, case_slices, emb in zip(
            chunk, images, slices, embeddings, strict=True
        ):
            if emb is None:
                emb = fresh[offset : offset + len(case_slices)]
                offset += len(case_slices)
            priors = (
                np.stack(
                    [
                        prior_maps(everything_masks(teacher, s, emb[k : k + 1], cfg), s.shape[-2:])
                        for k, s in enumerate(case_slices)
                    ]
                )
                if need_pri
                else np.empty((len(case_slices), 0))
            )
            volume = image.ndim == 4
            emb_np = emb.numpy()
            yield case_id, need_emb, need_pri, (emb_np if volume else emb_np[0]), (priors if volume else priors[0])


def open_prior_store(cfg: RunConfig, case_ids: Sequence[str]) -> CacheStore:
    """The priors store for training/evaluation with ``priors.enabled``: refuses a missing or stale cache, or one
    that lacks some of ``case_ids``, naming the command that makes it."""
    store = CacheStore(cache_root(cfg), "priors")
    command = f"python tools/precompute.py --config <this run's config> (cache: {store.dir})"
    store.check(expected_manifest(cfg, "priors", identity_from_config(cfg)), command)
    missing = store.missing(list(case_ids))
    if missing:
        from semisam.teacher.cache import CacheError

        raise CacheError(
            f"{store.dir} lacks prior maps for {len(missing)} of {len(case_ids)} cases (e.g. {missing[:3]}); "
            f"complete it with: {command}"
        )
    return store
