"""The frozen teacher's image embeddings as prior maps for the student (``priors.source=embeddings``).

A SAM image embedding (256 x e x e; e = 64 for every supported kind) carries what the teacher knows of an image.
The student takes it as extra input channels, offline and cached like SAMAug's maps:

1. **A fixed reduction.** A PCA of the 256 channels is fitted once on the embeddings of the *training* images
   (labeled + unlabeled; never val or test), from up to :data:`FIT_POSITIONS` grid positions per image inside the
   image's extent. Each position's embedding ``x`` becomes ``(x - mean) @ components.T / scales``: the first
   ``priors.embedding_channels`` components, whitened (unit variance on the training images). Nothing derived
   from labels enters the input.
2. **The image's extent.** The teacher sees the image resized (longest side to the encoder size, then padded
   bottom/right; MedSAM kinds stretch it to the square), so only part of the grid covers the image. The reduced
   map is resampled to the input frame, cropped to the resized image and stored at about the grid's resolution
   (``ceil(h * e / S) x ceil(w * e / S)``, S the encoder size): a map that covers exactly the image, which
   :func:`~semisam.data.fusion.align_priors` resizes to the image's pixels wherever a prior is read.

Storage per 2D image: ``channels x 64 x 64`` float16 at most (32 channels: 256 KB), against 2 MB for the embedding.
The manifest names the teacher, the data normalisation and the reduction (channels, and a hash of the training
ids the PCA was fitted on): a store made by another teacher or reduction is rebuilt by the precompute and refused
by training and evaluation.
"""

from __future__ import annotations

import io
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from tqdm.auto import tqdm

from semisam.config.schema import RunConfig
from semisam.data.cases import CaseLoader
from semisam.teacher.cache import CacheError, CacheStore
from semisam.utils import atomic_write_bytes

logger = logging.getLogger("semisam")

BASIS_NAME = "pca.npz"
PREVIEW_NAME = "embedding_priors_preview.png"
FIT_POSITIONS = 1024  # grid positions sampled per training image for the PCA
PREVIEW_IMAGES = 4


@dataclass
class PcaBasis:
    """A fixed linear reduction of embedding channels.

    Attributes:
        mean: float64 (256,), the training embeddings' mean.
        components: float64 (P, 256), orthonormal rows, by decreasing variance.
        scales: float64 (P,), the standard deviation along each component (whitening divides by it).
        explained: float64 (P,), the share of the total variance each component explains.
    """

    mean: np.ndarray
    components: np.ndarray
    scales: np.ndarray
    explained: np.ndarray

    @property
    def channels(self) -> int:
        return int(self.components.shape[0])

    def reduce(self, embeddings: np.ndarray) -> np.ndarray:
        """float (..., 256, h, w) -> float32 (..., P, h, w): whitened PCA components at every grid position."""
        x = np.moveaxis(np.asarray(embeddings, dtype=np.float32), -3, -1)  # (..., h, w, 256)
        weights = (self.components / self.scales[:, None]).T.astype(np.float32)  # (256, P)
        offset = (self.mean @ weights.astype(np.float64)).astype(np.float32)  # (P,)
        return np.moveaxis(x @ weights - offset, -1, -3)

    def save(self, path: Path) -> None:
        buffer = io.BytesIO()
        np.savez(buffer, mean=self.mean, components=self.components, scales=self.scales, explained=self.explained)
        atomic_write_bytes(path, buffer.getvalue())

    @classmethod
    def load(cls, path: Path) -> PcaBasis:
        try:
            with np.load(path, allow_pickle=False) as data:
                return cls(data["mean"], data["components"], data["scales"], data["explained"])
        except FileNotFoundError:
            raise CacheError(f"{path}: the embedding priors' PCA is missing (run the precompute tool)") from None
        except (OSError, ValueError, KeyError) as err:
            raise CacheError(f"{path}: damaged PCA file ({err}); delete its folder and rerun the precompute") from err


def extent_cells(input_size: Sequence[int], encoder_size: int, grid: int) -> tuple[int, int]:
    """The embedding cells (rows, columns) that the resized image ``input_size`` (h, w) touches, a partly covered
    cell included."""
    rows, cols = (min(grid, math.ceil(side * grid / encoder_size - 1e-6)) for side in input_size[:2])
    return rows, cols


def crop_to_extent(maps: np.ndarray, input_size: Sequence[int], encoder_size: int) -> np.ndarray:
    """The part of grid maps that covers the image, resampled to whole cells.

    Args:
        maps: float (N, P, e, e): maps on the embedding grid of the teacher's padded (S, S) input frame.
        input_size: (h, w), the image's size inside that frame after the teacher's resize (pixels).
        encoder_size: S, the encoder's input size (pixels).

    Returns:
        float32 (N, P, ceil(h e / S), ceil(w e / S)) covering exactly the image's extent (upsampled to the input
        frame, cropped to (h, w), area-resampled down): SAM's own mask post-processing, at grid resolution.
    """
    grid = maps.shape[-1]
    height, width = int(input_size[0]), int(input_size[1])
    if (height, width) == (encoder_size, encoder_size):
        return np.asarray(maps, dtype=np.float32)
    rows, cols = extent_cells((height, width), encoder_size, grid)
    x = torch.from_numpy(np.ascontiguousarray(maps, dtype=np.float32))
    x = F.interpolate(x, (encoder_size, encoder_size), mode="bilinear", align_corners=False)[..., :height, :width]
    return F.interpolate(x, (rows, cols), mode="area").numpy()


def fit_pca(
    embeddings: Sequence[tuple[np.ndarray, Sequence[int]]],
    channels: int,
    encoder_size: int,
    seed: int = 0,
    positions: int = FIT_POSITIONS,
) -> PcaBasis:
    """Fit the reduction on training embeddings.

    Args:
        embeddings: ``(embedding, input_size)`` per image: float (256, e, e) and the image's (h, w) inside the
            teacher's input frame; only positions inside the image's extent are sampled.
        channels: components kept (P <= 256).
        encoder_size: the teacher's input size S (pixels).
        seed: the position sampling's seed (fixed by the precompute, not the run's: one cache serves every seed
            and protocol of a data set).
        positions: at most this many positions per image.

    Returns:
        the :class:`PcaBasis`, components sorted by decreasing variance, sign fixed (largest loading positive).
    """
    rng = np.random.default_rng(seed)
    dim = None
    total = 0
    sum_x = sum_xx = None
    for embedding, input_size in embeddings:
        dim, grid = embedding.shape[0], embedding.shape[-1]
        rows, cols = extent_cells(input_size, encoder_size, grid)
        x = np.asarray(embedding[:, :rows, :cols], dtype=np.float64).reshape(dim, -1).T  # (n, 256)
        if x.shape[0] > positions:
            x = x[rng.choice(x.shape[0], positions, replace=False)]
        sum_x = x.sum(0) if sum_x is None else sum_x + x.sum(0)
        sum_xx = x.T @ x if sum_xx is None else sum_xx + x.T @ x
        total += x.shape[0]
    if not total or dim is None:
        raise ValueError("no training embeddings to fit the embedding priors' PCA on")
    if channels > dim:
        raise ValueError(f"priors.embedding_channels={channels} exceeds the embedding's {dim} channels")
    mean = sum_x / total
    covariance = sum_xx / total - np.outer(mean, mean)
    eigenvalues, eigenvectors = np.linalg.eigh(covariance)
    order = np.argsort(eigenvalues)[::-1][:channels]
    components = eigenvectors[:, order].T
    signs = np.sign(components[np.arange(channels), np.abs(components).argmax(1)])
    components = components * signs[:, None]
    variances = np.clip(eigenvalues[order], 1e-12, None)
    return PcaBasis(mean, components, np.sqrt(variances), variances / np.clip(eigenvalues, 0, None).sum())


def write_embedding_priors(
    cfg: RunConfig,
    teacher,
    loader: CaseLoader,
    embeddings: CacheStore,
    store: CacheStore,
    fit_ids: Sequence[str],
    case_ids: Sequence[str],
    fit: bool = True,
    progress: bool = True,
) -> int:
    """Fill ``store`` with the embedding priors of ``case_ids`` (those it lacks), fitting the PCA first if needed.

    Args:
        teacher: the built teacher (its resize rule, encoder size and grid).
        loader: reads each case's image for its size (never its label).
        embeddings: the cached embeddings of every case of ``fit_ids`` and ``case_ids``.
        store: the ``embedding_priors`` store, prepared with its manifest.
        fit_ids: the training cases the PCA is fitted on (when the store has none yet and ``fit``).
        fit: fit a missing PCA here (rank 0); elsewhere a missing PCA is an error.

    Returns:
        the number of cases written.
    """
    basis_path = store.dir / BASIS_NAME
    if not basis_path.exists():
        if not fit:
            raise CacheError(f"{basis_path} is missing: the PCA is fitted by the first process before the others")
        missing = embeddings.missing(list(fit_ids))
        if missing:
            raise CacheError(
                f"{embeddings.dir} lacks the embeddings of {len(missing)} training cases (e.g. {missing[:3]}) that "
                "the embedding priors' PCA is fitted on: run the precompute on the labeled and unlabeled splits"
            )
        basis = fit_pca(
            _fit_embeddings(teacher, loader, embeddings, fit_ids, progress),
            cfg.priors.embedding_channels,
            teacher.spec.encoder_size,
        )
        basis.save(basis_path)
        logger.info(
            "embedding priors: PCA of %d cases, %d components keep %.1f %% of the variance (%s)",
            len(fit_ids),
            basis.channels,
            100 * basis.explained.sum(),
            basis_path,
        )
    basis = PcaBasis.load(basis_path)
    todo = store.missing(list(dict.fromkeys(case_ids)))
    for case_id in tqdm(todo, desc="embedding priors", disable=not progress, unit="case"):
        image = loader.image(case_id)
        loader.clear()
        embedding = embeddings.load(case_id)
        volume = embedding.ndim == 4
        reduced = basis.reduce(embedding if volume else embedding[None])
        maps = crop_to_extent(reduced, teacher.input_size(image.shape[-2:]), teacher.spec.encoder_size)
        store.save(case_id, maps if volume else maps[0])
    return len(todo)


def _fit_embeddings(teacher, loader: CaseLoader, embeddings: CacheStore, fit_ids: Sequence[str], progress: bool):
    """Yield ``(embedding (256, e, e), input size (h, w))`` of every slice of the fit cases."""
    for case_id in tqdm(fit_ids, desc="fit embedding PCA", disable=not progress, unit="case"):
        size = teacher.input_size(loader.reader.read_image(case_id).shape[-2:])
        embedding = embeddings.load(case_id)
        for slice_embedding in embedding if embedding.ndim == 4 else embedding[None]:
            yield slice_embedding, size


def write_preview(root: Path, loader: CaseLoader, store: CacheStore, case_ids: Sequence[str]) -> Path | None:
    """``<root>/embedding_priors_preview.png``: per case, the image and its first three components as an RGB image
    (each scaled over the case), then components 1, 2 and 3 alone; ``None`` without cases."""
    case_ids = [c for c in case_ids if store.has(c)][:PREVIEW_IMAGES]
    if not case_ids:
        return None
    fig = Figure(figsize=(12, 3 * len(case_ids)))
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(case_ids), 5, squeeze=False)
    for row, case_id in zip(axes, case_ids, strict=True):
        image, maps = loader.image(case_id), store.load(case_id)
        loader.clear()
        if image.ndim == 4:
            k = image.shape[1] // 2
            image, maps = image[:, k], maps[k]
        shown = image[0] if image.shape[0] == 1 else np.clip(image[:3].transpose(1, 2, 0), 0, 1)
        row[0].imshow(shown, cmap="gray", vmin=0, vmax=1)
        row[0].set_title(f"{case_id} {image.shape[-2]}x{image.shape[-1]}", fontsize=8)
        aligned = np.stack([_stretch(m) for m in maps[:3]], axis=-1)
        row[1].imshow(aligned)
        row[1].set_title(f"components 1-3 as RGB ({maps.shape[-2]}x{maps.shape[-1]} cells)", fontsize=8)
        for c in range(3):
            if c < maps.shape[0]:
                row[2 + c].imshow(maps[c], cmap="coolwarm")
                row[2 + c].set_title(f"component {c + 1}", fontsize=8)
        for ax in row:
            ax.axis("off")
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=80)
    path = Path(root) / PREVIEW_NAME
    atomic_write_bytes(path, buffer.getvalue())
    return path


def _stretch(channel: np.ndarray) -> np.ndarray:
    low, high = np.percentile(channel, (2, 98))
    return np.clip((channel - low) / max(high - low, 1e-6), 0, 1)
