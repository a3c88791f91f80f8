"""Training slices held in memory: every item decoded, normalised and resized to the training size once.

Reading a JPEG or an h5 slice, normalising and resizing it costs far more than the augmentation that follows, and
on a 2-core machine the loader workers that hide that cost compete with the training step for the same cores.
A :class:`SliceStore` does that work once, before the first step, so that a step only augments arrays already
in memory (in the main process: ``data.num_workers=0`` is then the fastest choice on CPU). It also means that a
bad file stops the run before any training, with the file named, whatever ``data.num_workers`` is.

Shapes and conventions: items are ``(case_id, slice_index)`` (:data:`~semisam.data.cases.Item`); every stored
map has the training size ``(h, w) = data.image_size`` (pixels). Images are resized bilinearly (cv2
``INTER_LINEAR``, half-pixel centres: the same sampling as the bilinear resize used at inference), labels by
nearest neighbour. Normalisation is per case, as in :class:`~semisam.data.cases.CaseLoader`.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np
from tqdm.auto import tqdm

from semisam.config.schema import DataConfig
from semisam.data.cases import CaseLoader, Item
from semisam.data.readers import CaseReader

logger = logging.getLogger("semisam")


def resize_maps(maps: np.ndarray, size: Sequence[int], nearest: bool = False) -> np.ndarray:
    """Resize channel-first maps to ``size``.

    Args:
        maps: (C, H, W) float32 maps, or (H, W) for a single label-like map.
        size: target (h, w) in pixels.
        nearest: nearest-neighbour (labels, weight maps) instead of bilinear.

    Returns:
        (C, h, w) or (h, w), same dtype (labels keep their integer values).
    """
    height, width = int(size[0]), int(size[1])
    if maps.shape[-2:] == (height, width):
        return maps
    interp = cv2.INTER_NEAREST if nearest else cv2.INTER_LINEAR
    if maps.ndim == 2:
        work = maps if maps.dtype != np.int64 else maps.astype(np.int32)
        return cv2.resize(work, (width, height), interpolation=interp).astype(maps.dtype, copy=False)
    out = np.empty((maps.shape[0], height, width), dtype=maps.dtype)
    for c in range(maps.shape[0]):  # per channel: cv2 handles at most 4 (512 for some ops) channels at once
        out[c] = cv2.resize(maps[c], (width, height), interpolation=interp)
    return out


@dataclass
class SliceStore:
    """The training items of one set (labeled or unlabeled), at the training size, in memory.

    Attributes:
        items: the ``(case_id, slice_index)`` items, in dataset order.
        images: float32 (N, C, h, w), normalised.
        labels: uint8 (N, h, w) class indices (int16 above 255 classes), or ``None`` for an unlabeled set.
        priors: float32 (N, P, h, w) prior maps (SAMAug's 2, or the embedding priors' components), or ``None``.
        native_shapes: (H, W) of each item as stored, for maps that arrive at native size later (the
            pseudo-label bank).
    """

    items: list[Item]
    images: np.ndarray
    labels: np.ndarray | None
    priors: np.ndarray | None
    native_shapes: list[tuple[int, int]]

    def __len__(self) -> int:
        return len(self.items)

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for a in (self.images, self.labels, self.priors) if a is not None)

    @classmethod
    def build(
        cls,
        reader: CaseReader,
        items: Sequence[Item],
        cfg: DataConfig,
        labeled: bool,
        priors=None,
        progress: bool = False,
        what: str = "",
    ) -> SliceStore:
        """Read every item once (raising the reader's :class:`~semisam.data.errors.DataError`, which names the
        file, on the first bad one).

        Args:
            reader: the data set's reader.
            items: the items to hold.
            cfg: the data config (normalisation, ``image_size``, ``num_classes``).
            labeled: read labels too (never for unlabeled items: their labels are not touched).
            priors: a prior store (``load(case_id)`` -> (P, h, w) or (D, P, h, w) over the image's extent), or
                ``None``.
            progress: a tqdm bar.
            what: the set's name for the bar and the log line.
        """
        items = list(items)
        if not items:
            raise ValueError(f"no {what or 'training'} items to hold in memory")
        loader = CaseLoader(reader, cfg, priors)
        size = (int(cfg.image_size[0]), int(cfg.image_size[1]))
        images = np.empty((len(items), cfg.in_channels, *size), np.float32)
        label_dtype = np.uint8 if cfg.num_classes <= 256 else np.int16
        labels = np.empty((len(items), *size), label_dtype) if labeled else None
        prior_maps = None  # (N, P, h, w), allocated at the first item (P: the prior source's channels)
        shapes: list[tuple[int, int]] = []
        label_case, label_volume = None, None
        for i, (case_id, k) in enumerate(tqdm(items, desc=f"load {what}".strip(), disable=not progress)):
            image = loader.image_slice(case_id, k)
            shapes.append((int(image.shape[-2]), int(image.shape[-1])))
            images[i] = resize_maps(image, size)
            if labels is not None:
                if label_case != case_id:  # a volume's label is read once for all its slices
                    label_case, label_volume = case_id, reader.read_label(case_id)
                label = label_volume if k < 0 else label_volume[k]
                labels[i] = resize_maps(label.astype(np.int32), size, nearest=True)
            if priors is not None:
                maps = loader.priors_slice(case_id, k, size)
                if prior_maps is None:
                    prior_maps = np.empty((len(items), maps.shape[0], *size), np.float32)
                prior_maps[i] = maps
        store = cls(items, images, labels, prior_maps, shapes)
        logger.info(
            "%s: %d slices in memory at %dx%d (%.0f MB)", what or "data", len(items), *size, store.nbytes / 2**20
        )
        return store
