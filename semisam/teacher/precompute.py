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

import io
import json
import logging
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from tqdm.auto import tqdm

from semisam import distributed
from semisam.config.schema import RunConfig, trains_on_pseudo_labels
from semisam.data.cases import CaseLoader
from semisam.data.readers import CaseReader, build_reader
from semisam.data.splits import Split, resolve_split
from semisam.teacher.cache import CacheStore, cache_root, expected_manifest
from semisam.teacher.embedding_priors import write_embedding_priors
from semisam.teacher.embedding_priors import write_preview as write_embedding_priors_preview
from semisam.teacher.engine import build_teacher
from semisam.teacher.everything import everything_amg, everything_box_grid
from semisam.teacher.priors import MaskRecord, best_mask_overlap, prior_maps
from semisam.teacher.stores import embedding_fit_ids, identity_of
from semisam.utils import atomic_write_bytes, atomic_write_text

logger = logging.getLogger("semisam")

SPLIT_NAMES = ("labeled", "unlabeled", "val", "test")
TRAIN_SPLITS = ("labeled", "unlabeled")
# Prior quality is scored against the labels of these splits only: they are the cases whose labels a user may look
# at (labeled for training, val for model selection). The scores are reported, never fed to training.
SCORED_SPLITS = ("labeled", "val")
SUMMARY_NAME = "priors_summary.json"  # beside the cache's stores, in cache_root(cfg)
PREVIEW_NAME = "priors_preview.png"
PREVIEW_IMAGES = 4
# More empty priors than this share of images means the everything mode does not suit the teacher or the data:
# the student would get constant-zero input channels.
EMPTY_PRIOR_WARN_SHARE = 0.10


@dataclass
class ImageQuality:
    """Prior quality of one 2D image (a 2D case or one slice of a volume).

    Attributes:
        case_id: the case; slice_index: the slice of a volume, -1 for a 2D case.
        masks: number of everything-mode masks drawn into its priors (0: all-zero priors).
        overlap: ``{class: (best IoU, best Dice)}`` of the best mask per foreground class present in the label
            (:func:`~semisam.teacher.priors.best_mask_overlap`); ``None`` for cases whose label was not read
            (unlabeled and test cases).
    """

    case_id: str
    slice_index: int
    masks: int
    overlap: dict[int, tuple[float, float]] | None = None


def embedding_splits(cfg: RunConfig) -> tuple[str, ...]:
    """The splits whose embeddings are kept: training cases, and the val cases the pseudo-label refreshes
    calibrate on when ``cfg`` trains on pseudo-labels."""
    uses_pseudo_labels = trains_on_pseudo_labels(cfg)
    return (*TRAIN_SPLITS, "val") if uses_pseudo_labels else TRAIN_SPLITS


def offline_pass(cfg: RunConfig, embeddings_only: bool = False, refine: bool = False) -> tuple[bool, tuple[str, ...]]:
    """What ``tools/precompute.py`` computes for ``cfg``: ``(priors, embedding splits)``. Priors only when the
    config's student takes them (``priors.enabled``) and not ``embeddings_only``; embeddings of
    :func:`embedding_splits`, plus val and test with ``refine`` (test-time refinement decodes on them)."""
    keep = embedding_splits(cfg)
    if refine:
        keep = tuple(dict.fromkeys([*keep, "val", "test"]))
    return cfg.priors.enabled and not embeddings_only, keep


@dataclass
class PrecomputeReport:
    """What a precompute run did. ``quality`` has one row per image whose priors this run computed, ``summary``
    their :func:`summarize_quality` (``None`` without priors computed)."""

    root: Path
    computed: list[str] = field(default_factory=list)
    skipped: int = 0
    images: int = 0  # 2D images (slices) processed
    seconds: float = 0.0
    quality: list[ImageQuality] = field(default_factory=list)
    summary: dict | None = None

    @property
    def seconds_per_image(self) -> float:
        return self.seconds / self.images if self.images else 0.0


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
    rank = distributed.rank() if rank is None else rank
    world_size = distributed.world_size() if world_size is None else world_size
    unknown = [s for s in splits if s not in SPLIT_NAMES]
    if unknown:
        raise ValueError(f"unknown splits {unknown}; choose from {SPLIT_NAMES}")
    teacher = (teacher or build_teacher(cfg.teacher)).frozen  # the everything mode is the published decoder's
    reader = reader or build_reader(cfg.data)
    split = resolve_split(cfg.data, reader.case_ids())
    if limit is not None:
        split = Split(*(getattr(split, name)[:limit] for name in ("labeled", "unlabeled", "val", "test")))
    root = cache_root(cfg)
    embedding_priors = priors and cfg.priors.enabled and cfg.priors.source == "embeddings"
    everything = priors and not embedding_priors
    stores = _prepared_stores(cfg, root, identity_of(teacher), everything, rank, embedding_priors)
    keep = embedding_splits(cfg) if keep_embeddings_of is None else tuple(keep_embeddings_of)
    if embedding_priors:  # every requested case's embedding is reduced to its priors: keep them all
        keep = tuple(dict.fromkeys([*keep, *splits]))
    requested = _case_order(split, splits, keep)
    fit_ids = embedding_fit_ids(cfg, reader) if embedding_priors else []
    listed = {case for case, _ in requested}  # the PCA's training cases are embedded (and kept) whatever the splits
    all_cases = requested + [(case, True) for case in fit_ids if case not in listed]
    cases = all_cases[rank::world_size]
    report = PrecomputeReport(root=root)
    todo, report.skipped = _cases_to_compute(
        cases, stores, cfg.teacher.cache_embeddings or embedding_priors, everything
    )
    logger.info(
        "teacher %s: %d cases to compute, %d already cached, in %s", teacher.spec.kind, len(todo), report.skipped, root
    )
    loader = CaseLoader(reader, cfg.data)
    desc = f"precompute[{teacher.spec.kind}]" + (f" rank {rank}/{world_size}" if world_size > 1 else "")
    scored = {case for name in SCORED_SPLITS for case in getattr(split, name)}  # the only labels read here
    previews = _compute_and_store(
        teacher, loader, todo, stores, cfg, scored, report, desc=desc, progress=progress and rank == 0, main=rank == 0
    )
    if embedding_priors:
        _reduce_embeddings(
            cfg, teacher, loader, stores, split, fit_ids, [c for c, _ in requested], rank, world_size, progress
        )
    return _final_report(report, cfg, root, previews)


def _reduce_embeddings(
    cfg: RunConfig,
    teacher,
    loader: CaseLoader,
    stores: dict[str, CacheStore],
    split: Split,
    fit_ids: list[str],
    case_ids: list[str],
    rank: int,
    world_size: int,
    progress: bool,
) -> None:
    """The embedding priors of ``case_ids`` (:mod:`semisam.teacher.embedding_priors`): rank 0 prepares the store
    and fits the PCA on the training cases ``fit_ids`` once every rank has embedded its share; then each rank
    reduces its share of the cases."""
    store = CacheStore(cache_root(cfg), "embedding_priors")
    distributed.barrier()  # every rank's embeddings are written
    if rank == 0:
        store.prepare(expected_manifest(cfg, "embedding_priors", identity_of(teacher), fit_ids))
        write_embedding_priors(cfg, teacher, loader, stores["embeddings"], store, fit_ids, [], progress=progress)
    distributed.barrier()  # the PCA is fitted
    tic = time.perf_counter()
    written = write_embedding_priors(
        cfg,
        teacher,
        loader,
        stores["embeddings"],
        store,
        fit_ids,
        case_ids[rank::world_size],
        fit=False,
        progress=progress and rank == 0,
    )
    logger.info("embedding priors: %d cases written in %.1f s (%s)", written, time.perf_counter() - tic, store.dir)
    distributed.barrier()
    if rank == 0:
        shown = [*split.val, *split.labeled]
        preview = write_embedding_priors_preview(cache_root(cfg), loader, store, shown)
        if preview is not None:
            logger.info("embedding priors: look at %s", preview)


def _prepared_stores(
    cfg: RunConfig, root: Path, identity: dict, priors: bool, rank: int, embeddings: bool = False
) -> dict[str, CacheStore]:
    """The ``embeddings`` and ``priors`` stores under ``root``. Rank 0 prepares those this run writes (a store
    made by another teacher or with other settings is wiped, the manifest written); every rank then waits at a
    barrier, so no rank writes into a store before it is ready."""
    stores = {kind: CacheStore(root, kind) for kind in ("embeddings", "priors")}
    for kind, store in stores.items():
        if (kind == "embeddings" and not (cfg.teacher.cache_embeddings or embeddings)) or (
            kind == "priors" and not priors
        ):
            continue
        if rank == 0:
            store.prepare(expected_manifest(cfg, kind, identity))
    distributed.barrier()  # the stores are ready (a stale one wiped) before any rank writes into them
    return stores


def _cases_to_compute(
    cases: Sequence[tuple[str, bool]], stores: dict[str, CacheStore], keep_embeddings: bool, priors: bool
) -> tuple[list[tuple[str, bool, bool, bool]], int]:
    """``(todo, skipped)``: ``(case_id, keeps_embedding, need_emb, need_pri)`` for each case that lacks a file
    this run writes, and the number of cases that lack none."""
    todo, skipped = [], 0
    for case_id, keeps_embedding in cases:
        need_emb = keep_embeddings and keeps_embedding and not stores["embeddings"].has(case_id)
        need_pri = priors and not stores["priors"].has(case_id)
        if need_emb or need_pri:
            todo.append((case_id, keeps_embedding, need_emb, need_pri))
        else:
            skipped += 1
    return todo, skipped


def _compute_and_store(
    teacher,
    loader: CaseLoader,
    todo: list[tuple[str, bool, bool, bool]],
    stores: dict[str, CacheStore],
    cfg: RunConfig,
    scored: set[str],
    report: PrecomputeReport,
    desc: str,
    progress: bool,
    main: bool,
) -> list[tuple[np.ndarray, np.ndarray, np.ndarray | None, str]]:
    """Compute the ``todo`` cases (:func:`_compute_cases`) and store each one's embeddings and priors as it
    finishes; ``report`` gets the cases, images, quality rows and seconds. ``desc``: the tqdm bar's
    description, shown with ``progress``.

    Returns:
        on the ``main`` process, the preview rows (:func:`_preview_item`) of the first :data:`PREVIEW_IMAGES`
        cases whose priors were computed; elsewhere none.
    """
    tic = time.perf_counter()
    bar = tqdm(total=len(todo), desc=desc, disable=not progress, unit="case")
    previews: list[tuple[np.ndarray, np.ndarray, np.ndarray | None, str]] = []
    computed = _compute_cases(teacher, loader, todo, stores, cfg, scored)
    for case_id, need_emb, need_pri, embeddings, prior_maps_, quality in computed:
        if need_emb:
            stores["embeddings"].save(case_id, embeddings)
        if need_pri:
            stores["priors"].save(case_id, prior_maps_)
            report.quality.extend(quality)
            if len(previews) < PREVIEW_IMAGES and main:
                previews.append(_preview_item(loader, case_id, prior_maps_, quality, scored))
        report.computed.append(case_id)
        report.images += len(embeddings) if embeddings.ndim == 4 else 1
        bar.update(1)
    bar.close()
    report.seconds = time.perf_counter() - tic
    return previews


def _final_report(
    report: PrecomputeReport,
    cfg: RunConfig,
    root: Path,
    previews: list[tuple[np.ndarray, np.ndarray, np.ndarray | None, str]],
) -> PrecomputeReport:
    """This rank's report, or on rank 0 of a process group the ranks' merged one (every rank waits for the last
    to finish); with quality rows, the summary is added and written with the previews, and empty priors warned
    about."""
    if distributed.is_distributed():
        reports = distributed.gather_to_main(report)  # also a barrier: rank 0 waits for the last rank to finish
        distributed.barrier()  # the others return only once everything is cached too
        if reports is None:
            return report
        report = _merged(reports)
    if report.quality:
        report.summary = summarize_quality(report.quality, list(cfg.data.class_names), skipped=report.skipped)
        write_quality_report(root, report.summary, previews)
        warn_if_empty(report.summary, root)
    return report


def _merged(reports: list[PrecomputeReport]) -> PrecomputeReport:
    """One report for the ranks of a torchrun precompute (seconds: the slowest rank's, i.e. wall clock)."""
    return PrecomputeReport(
        root=reports[0].root,
        computed=[case for r in reports for case in r.computed],
        skipped=sum(r.skipped for r in reports),
        images=sum(r.images for r in reports),
        seconds=max(r.seconds for r in reports),
        quality=[row for r in reports for row in r.quality],
    )


def _compute_cases(teacher, loader: CaseLoader, todo, stores, cfg: RunConfig, scored: set[str]) -> Iterator[tuple]:
    """Yield ``(case_id, need_emb, need_pri, embeddings, priors, quality)`` per finished case.

    Cases are taken ``embed_batch_size`` at a time and all their slices that lack a cached embedding go through
    the encoder together (in batches of ``embed_batch_size``), so 2D data sets use full encoder batches too.
    Cached embeddings are reused, never recomputed. ``quality`` holds one :class:`ImageQuality` per slice whose
    priors were computed; the label is read (to score them) only for cases in ``scored``.
    """
    batch_size = teacher.embed_batch_size
    classes = list(range(1, cfg.data.num_classes))
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
            volume = image.ndim == 4
            quality: list[ImageQuality] = []
            priors = np.empty((len(case_slices), 0))
            if need_pri:
                label = _label_for_scoring(loader, case_id, image) if case_id in scored else None
                maps = []
                for k, s in enumerate(case_slices):
                    records = everything_masks(teacher, s, emb[k : k + 1], cfg)
                    maps.append(prior_maps(records, s.shape[-2:]))
                    slice_label = None if label is None else (label[k] if volume else label)
                    overlap = None if slice_label is None else best_mask_overlap(records, slice_label, classes)
                    quality.append(ImageQuality(case_id, k if volume else -1, len(records), overlap))
                priors = np.stack(maps)
            emb_np = emb.numpy()
            yield (
                case_id,
                need_emb,
                need_pri,
                (emb_np if volume else emb_np[0]),
                (priors if volume else priors[0]),
                quality,
            )


def _label_for_scoring(loader: CaseLoader, case_id: str, image: np.ndarray) -> np.ndarray | None:
    """The label of a labeled/val case, for the prior-quality report only; ``None`` (with a warning) when the case
    has none or its shape differs from the image's."""
    if not loader.reader.has_label(case_id):
        return None
    label = loader.reader.read_label(case_id)
    if tuple(label.shape) != tuple(image.shape[1:]):
        logger.warning(
            "%s: label %s and image %s differ in shape; prior quality not scored", case_id, label.shape, image.shape[1:]
        )
        return None
    return label


# ----------------------------------------------------------------------------------------------------------------
# The prior-quality report
# ----------------------------------------------------------------------------------------------------------------


def summarize_quality(rows: Sequence[ImageQuality], class_names: Sequence[str], skipped: int = 0) -> dict:
    """Per data set: masks per image, share of images with empty priors, and per foreground class the best
    mask's IoU / Dice over the scored images (labeled and val cases) where the class is present.

    Args:
        rows: one per image (2D case or slice).
        class_names: names in label order, background first (``data.class_names``); classes without a name are
            called ``class_<k>``.
        skipped: cases that were already cached and so are not in ``rows`` (said in the summary).

    Returns:
        a JSON-ready dict: ``images``, ``cases``, ``cases_skipped``, ``masks_per_image`` (mean, median, min, max),
        ``empty_images``, ``empty_share``, ``scored_images``, and ``classes``: ``{name: {images, best_iou_mean,
        best_iou_median, best_dice_mean, share_best_iou_ge_0.5}}``.
    """
    counts = np.array([r.masks for r in rows], dtype=np.int64)
    empty = int((counts == 0).sum())
    scored = [r for r in rows if r.overlap is not None]
    per_class: dict[int, list[tuple[float, float]]] = {}
    for r in scored:
        for c, pair in (r.overlap or {}).items():
            per_class.setdefault(int(c), []).append(pair)
    classes = {}
    for c in sorted(per_class):
        ious = np.array([p[0] for p in per_class[c]])
        dices = np.array([p[1] for p in per_class[c]])
        name = class_names[c] if c < len(class_names) else f"class_{c}"
        classes[name] = {
            "images": len(ious),
            "best_iou_mean": round(float(ious.mean()), 4),
            "best_iou_median": round(float(np.median(ious)), 4),
            "best_dice_mean": round(float(dices.mean()), 4),
            "share_best_iou_ge_0.5": round(float((ious >= 0.5).mean()), 4),
        }
    n = len(rows)
    return {
        "images": n,
        "cases": len({r.case_id for r in rows}),
        "cases_skipped": int(skipped),
        "masks_per_image": {
            "mean": round(float(counts.mean()), 3) if n else 0.0,
            "median": float(np.median(counts)) if n else 0.0,
            "min": int(counts.min()) if n else 0,
            "max": int(counts.max()) if n else 0,
        },
        "empty_images": empty,
        "empty_share": round(empty / n, 4) if n else 0.0,
        "scored_images": len(scored),
        "classes": classes,
    }


def warn_if_empty(summary: dict, where: Path | str = "") -> bool:
    """Log a WARNING when more than :data:`EMPTY_PRIOR_WARN_SHARE` of the images got no mask (all-zero priors).
    Returns whether it warned."""
    if summary["images"] == 0 or summary["empty_share"] <= EMPTY_PRIOR_WARN_SHARE:
        return False
    logger.warning(
        "EMPTY PRIORS: %d of %d images (%.0f %%) got no everything-mode mask, so their prior maps are all zeros%s. "
        "The teacher's everything mode keeps nothing on this data: check teacher.everything (thresholds, "
        "box_scales) against %s before training with priors.",
        summary["empty_images"],
        summary["images"],
        100.0 * summary["empty_share"],
        f" ({where})" if where else "",
        SUMMARY_NAME,
    )
    return True


def _preview_item(
    loader: CaseLoader, case_id: str, priors: np.ndarray, quality: list[ImageQuality], scored: set[str]
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, str]:
    """(image (C, H, W), priors (2, H, W), label (H, W) or None, title) of a case's middle slice."""
    image = loader.image(case_id)
    k = image.shape[1] // 2 if image.ndim == 4 else -1
    label = None
    if case_id in scored and loader.reader.has_label(case_id):
        full = loader.reader.read_label(case_id)
        label = full[k] if k >= 0 else full
    row = quality[max(k, 0)]
    title = f"{case_id}" + (f" [{k}]" if k >= 0 else "") + f": {row.masks} masks"
    return (image[:, k] if k >= 0 else image), (priors[k] if k >= 0 else priors), label, title


def write_quality_report(
    root: Path, summary: dict, previews: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray | None, str]]
) -> tuple[Path, Path | None]:
    """Write ``summary`` as ``<root>/priors_summary.json`` and, with previews, ``<root>/priors_preview.png``: one
    row per image (the image with its label's outline where scored, the segmentation prior, the boundary prior).

    Returns:
        the two paths (the PNG's ``None`` without previews).
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    summary_path = root / SUMMARY_NAME
    atomic_write_text(summary_path, json.dumps(summary, indent=2) + "\n")
    logger.info(
        "prior quality (%s): %d images, %.2f masks per image, %.1f %% empty; %s",
        summary_path,
        summary["images"],
        summary["masks_per_image"]["mean"],
        100.0 * summary["empty_share"],
        ", ".join(f"{name} best-mask IoU {c['best_iou_mean']:.3f}" for name, c in summary["classes"].items())
        or "no labeled images scored",
    )
    if not previews:
        return summary_path, None
    fig = Figure(figsize=(9, 3 * len(previews)))
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(previews), 3, squeeze=False)
    for row, (image, priors, label, title) in zip(axes, previews, strict=True):
        shown = image[0] if image.shape[0] == 1 else np.clip(image[:3].transpose(1, 2, 0), 0, 1)
        row[0].imshow(shown, cmap="gray", vmin=0, vmax=1)
        if label is not None and np.any(label > 0):
            row[0].contour(label, levels=np.arange(0.5, int(label.max()) + 0.5), colors="yellow", linewidths=0.8)
        row[0].set_title(title, fontsize=8)
        row[1].imshow(priors[0], cmap="magma", vmin=0, vmax=1)
        row[1].set_title("segmentation prior", fontsize=8)
        row[2].imshow(priors[1], cmap="gray", vmin=0, vmax=1)
        row[2].set_title("boundary prior", fontsize=8)
        for ax in row:
            ax.axis("off")
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=80)
    preview_path = root / PREVIEW_NAME
    atomic_write_bytes(preview_path, buffer.getvalue())
    return summary_path, preview_path
