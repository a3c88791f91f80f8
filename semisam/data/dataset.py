"""Training samples: 2D slices of the cases a reader provides, and the iteration-indexed sampler that feeds them.

A training *item* is ``(case_id, slice_index)`` (:data:`~semisam.data.cases.Item`); ``slice_index`` is ``-1`` for
a 2D case and ``k`` for the k-th slice (along the reader's slicing axis) of a 3D case.

Reproducibility and resumption: :class:`IterationBatchSampler` derives batch ``t`` from ``(seed, t)`` alone and
gives every sample its own augmentation seed, so a run restarted at iteration ``t`` sees exactly the batches an
uninterrupted run would have seen, whatever the number of workers.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Protocol

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from semisam.config.schema import DataConfig
from semisam.data.cases import CaseLoader, Item, PriorSource
from semisam.data.errors import DataError
from semisam.data.memory import SliceStore, resize_maps
from semisam.data.readers import CaseReader
from semisam.data.transforms import (
    apply_joint,
    apply_photometric,
    build_intensity_transform,
    build_photometric_transform,
    build_spatial_transform,
)


class PseudoLabelSource(Protocol):
    """A pseudo-label bank: ``entries[index]`` has ``label`` (H, W), ``weight`` (H, W), ``uncertainty`` (H, W)."""

    entries: dict


def expand_to_slices(reader: CaseReader, case_ids: Sequence[str]) -> list[Item]:
    """Every 2D item of ``case_ids``: ``(id, -1)`` for a 2D case, ``(id, k)`` for each slice k of a 3D case."""
    items: list[Item] = []
    for case_id in case_ids:
        n = reader.num_slices(case_id)
        items.extend([(case_id, -1)] if n is None else [(case_id, k) for k in range(n)])
    return items


def require_labels(reader: CaseReader, case_ids: Sequence[str], what: str) -> None:
    """Raise :class:`DataError` naming the missing label files if any of ``case_ids`` has no label (existence
    only: no voxel data is read). ``what`` names the set in the message (``labeled``, ``val``, ``test``)."""
    missing = [c for c in case_ids if not reader.has_label(c)]
    if missing:
        shown = ", ".join(reader.label_location(c) for c in missing[:5]) + (", ..." if len(missing) > 5 else "")
        raise DataError(f"data.split: {len(missing)} of {len(case_ids)} {what} cases have no label file: {shown}")


def check_labeled_cases(reader: CaseReader, case_ids: Sequence[str], cfg: DataConfig, what: str = "labeled") -> None:
    """Check, before any training step, that the labeled cases can be trained on.

    - Every case has a label (file existence, or the h5 ``label`` dataset's presence; no voxel data is read). A
      case without one is a :class:`DataError` naming the missing label files.
    - At least one label has foreground. An all-background mask is legitimate for a single case (ACDC has
      slices without any structure), so it is not checked per case; but a labeled set whose masks are *all*
      background would teach the student to predict background only, and is an error. Labels are read in order
      until one has foreground, so this costs one label read in the usual case.

    Args:
        reader: the data set's reader.
        case_ids: the labeled cases, in any order.
        cfg: the data config (for the hint about ``data.label_threshold``).
        what: the name of the set, for messages.

    Raises:
        DataError: as above; the message names the files and the config keys to look at.
    """
    ids = list(dict.fromkeys(case_ids))
    if not ids:
        raise DataError(f"data.split leaves no {what} data (under {cfg.root})")
    require_labels(reader, ids, what)
    for case_id in ids:
        if np.any(reader.read_label(case_id) > 0):
            return
    hint = (
        f"; with data.label_threshold={cfg.label_threshold}, only mask values above it are foreground "
        f"(masks stored as 0/1 need a threshold below 1)"
        if cfg.label_threshold is not None
        else "; check data.label_dir and data.label_suffix"
    )
    example = reader.label_location(ids[0])
    raise DataError(
        f"data.split: every label of the {len(ids)} {what} cases is background only (e.g. {example}): "
        f"the student would learn to predict background everywhere{hint}"
    )


class SliceDataset(Dataset):
    """2D samples for training.

    ``dataset[(index, seed)]`` (or ``dataset[index]``, unseeded) returns a dict:

    - ``image``: float32 tensor (C, H, W), normalised and resized to ``cfg.image_size``, augmented if ``train``;
    - ``label``: int64 tensor (H, W) — only when ``labeled``; an unlabeled dataset never reads a label;
    - ``priors``: float32 tensor (P, H, W), the prior maps moved with the image — only when ``priors`` is given;
    - ``pseudo_label`` int64 (H, W), ``weight`` float32 (H, W), ``uncertainty`` float32 (H, W): the item's entry of
      the pseudo-label bank moved with the image (weight 0 everywhere while it has none) — only with a ``bank``;
    - ``case_id`` (str), ``slice_index`` (int, -1 for 2D cases), ``index`` (int, position in ``items``).

    Where the maps come from: a :class:`~semisam.data.memory.SliceStore` (``store``, or one built here when
    ``cfg.in_memory``), which holds every item already normalised and at the training size, so a sample is only
    augmented; otherwise each sample is read from disk, augmented at its native size and then resized. Training
    samples (``train``) get the weak pipeline: spatial transforms applied jointly to every map, then the
    brightness/contrast jitter ``cfg.augmentation.weak_brightness_contrast`` on the image channels.
    ``strong`` (a count, 0 to 2) adds ``strong_image`` (and ``strong_image_2``): float32 (C, H, W), the same
    weakly augmented ``image`` with independent draws of photometric augmentation of its channels on top (the
    student's views; ``image`` stays the weak view). With a ``bank``, a sample also carries its ``pseudo_label``
    (H, W) int64, ``weight`` and ``uncertainty`` (H, W) float32 and ``pseudo_source`` (H, W) int64 (0 ignored,
    1 teacher, 2 model), all zeros while the item has no entry.
    A labeled dataset checks its cases at construction (:func:`check_labeled_cases`): labels exist and not all
    of them are background.
    """

    def __init__(
        self,
        reader: CaseReader,
        items: Sequence[Item],
        cfg: DataConfig,
        labeled: bool,
        train: bool = True,
        strong: int = 0,
        priors: PriorSource | None = None,
        bank: PseudoLabelSource | None = None,
        store: SliceStore | None = None,
    ) -> None:
        if not items:
            raise ValueError(f"{'labeled' if labeled else 'unlabeled'} dataset of {cfg.name!r} has no items")
        if labeled:
            check_labeled_cases(reader, [case_id for case_id, _ in items], cfg)
        self.items = list(items)
        self.cfg = cfg
        self.labeled = labeled
        self.loader = CaseLoader(reader, cfg, priors)
        self.with_priors = priors is not None
        if store is None and cfg.in_memory:
            store = SliceStore.build(
                reader, self.items, cfg, labeled, priors, what="labeled" if labeled else "unlabeled"
            )
        if store is not None:
            if store.items != self.items:
                raise ValueError("the slice store holds other items than this dataset")
            if labeled and store.labels is None:
                raise ValueError("a labeled dataset needs a slice store with labels")
            if self.with_priors and store.priors is None:
                raise ValueError("a dataset with priors needs a slice store with priors")
        self.store = store
        self.bank = bank  # replaced by the trainer at each refresh (loaders are re-created after it)
        # maps in the store are already at the training size: no resize in the pipeline
        self.spatial = build_spatial_transform(cfg, train, resize=store is None)
        self.intensity = build_intensity_transform(cfg.augmentation) if train else None
        if not 0 <= int(strong) <= 2:
            raise ValueError(f"strong={strong}: a sample carries 0, 1 or 2 strong views")
        self.strong_views = int(strong)
        self.photometric = build_photometric_transform(cfg.augmentation) if strong else None

    def __len__(self) -> int:
        return len(self.items)

    def _bank_maps(self, index: int, shape: tuple[int, int]) -> dict[str, np.ndarray]:
        """The item's pseudo-label, weight and uncertainty maps (H, W) at ``shape`` (zeros while it has none)."""
        entry = self.bank.entries.get(index)
        if entry is None:
            return {
                "pseudo_label": np.zeros(shape, np.int64),
                "weight": np.zeros(shape, np.float32),
                "uncertainty": np.zeros(shape, np.float32),
                "pseudo_source": np.zeros(shape, np.int64),
            }
        maps = {
            "pseudo_label": entry.label.astype(np.int64),
            "weight": entry.weight.astype(np.float32),
            "uncertainty": entry.uncertainty.astype(np.float32),
            "pseudo_source": entry.source.astype(np.int64),
        }
        if maps["weight"].shape != shape:  # the bank is at native size, the store at the training size
            maps = {
                "pseudo_label": resize_maps(maps["pseudo_label"], shape, nearest=True),
                "weight": resize_maps(maps["weight"], shape, nearest=True),
                "uncertainty": resize_maps(maps["uncertainty"], shape),
                "pseudo_source": resize_maps(maps["pseudo_source"], shape, nearest=True),
            }
        return maps

    def __getitem__(self, key: int | tuple[int, int]) -> dict:
        index, seed = (key, None) if isinstance(key, int) else key
        case_id, slice_index = self.items[index]
        discrete = {}
        if self.store is not None:
            continuous = {"image": self.store.images[index]}
            if self.with_priors:
                continuous["priors"] = self.store.priors[index]
            if self.labeled:
                discrete["label"] = self.store.labels[index].astype(np.int64)
        else:
            continuous = {"image": self.loader.image_slice(case_id, slice_index)}
            if self.with_priors:
                continuous["priors"] = self.loader.priors_slice(case_id, slice_index)
            if self.labeled:
                discrete["label"] = self.loader.label_slice(case_id, slice_index).astype(np.int64)
        if self.bank is not None:
            discrete.update(self._bank_maps(index, tuple(continuous["image"].shape[-2:])))
        cont, disc = apply_joint(self.spatial, continuous, discrete, seed)
        image = cont["image"]
        if self.intensity is not None:
            image = apply_photometric(self.intensity, image, None if seed is None else seed + 2)
        sample = {
            "image": torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32)),
            "case_id": case_id,
            "slice_index": slice_index,
            "index": index,
        }
        for view in range(self.strong_views):  # seeds seed + 1 (the first view, as always) and seed + 3
            strong = apply_photometric(self.photometric, image, None if seed is None else seed + 1 + 2 * view)
            key = "strong_image" if view == 0 else f"strong_image_{view + 1}"
            sample[key] = torch.from_numpy(np.ascontiguousarray(strong, dtype=np.float32))
        if self.labeled:
            sample["label"] = torch.from_numpy(disc["label"].astype(np.int64))
        if self.bank is not None:
            for key in ("pseudo_label", "weight", "uncertainty", "pseudo_source"):
                sample[key] = torch.from_numpy(np.ascontiguousarray(disc[key]))
        if self.with_priors:
            sample["priors"] = torch.from_numpy(np.ascontiguousarray(cont["priors"], dtype=np.float32))
        return sample


class IterationBatchSampler(Sampler[list[tuple[int, int]]]):
    """Yields, for iterations ``start .. total-1``, a batch of ``(index, sample_seed)`` pairs.

    Sample position ``p = t * batch_size + j`` falls in epoch ``p // n`` at place ``p % n`` of that epoch's
    permutation, itself drawn from ``(seed, epoch)``; the sample's augmentation seed is drawn from ``(seed, p)``.
    Nothing depends on how many batches were drawn before, so resuming at ``start`` is exact.
    """

    def __init__(self, num_items: int, batch_size: int, total: int, seed: int, start: int = 0) -> None:
        if num_items <= 0 or batch_size <= 0:
            raise ValueError(f"need items and a positive batch size, got {num_items} items, batch {batch_size}")
        self.n, self.batch_size, self.total, self.seed, self.start = num_items, batch_size, total, seed, start
        self._perm_epoch = -1
        self._perm = np.arange(num_items)

    def _permutation(self, epoch: int) -> np.ndarray:
        if epoch != self._perm_epoch:
            self._perm = np.random.default_rng([self.seed, epoch]).permutation(self.n)
            self._perm_epoch = epoch
        return self._perm

    def batch(self, iteration: int) -> list[tuple[int, int]]:
        """The batch of ``iteration``: ``batch_size`` pairs ``(index, sample_seed)``."""
        out = []
        for j in range(self.batch_size):
            p = iteration * self.batch_size + j
            index = int(self._permutation(p // self.n)[p % self.n])
            sample_seed = int(np.random.default_rng([self.seed, 1, p]).integers(2**31 - 1))
            out.append((index, sample_seed))
        return out

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        for t in range(self.start, self.total):
            yield self.batch(t)

    def __len__(self) -> int:
        return max(0, self.total - self.start)
