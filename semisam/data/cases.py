"""Whole cases, read and normalised: the one home of per-case normalisation, and the training item's type.

A training *item* (:data:`Item`) is ``(case_id, slice_index)``; ``slice_index`` is ``-1`` for a 2D case and ``k``
for the k-th slice (along the reader's slicing axis) of a 3D case. Both the on-the-fly dataset
(:mod:`semisam.data.dataset`) and the in-memory slice store (:mod:`semisam.data.memory`) read their cases through
:class:`CaseLoader`, so a slice is normalised the same way, with its volume's statistics, whichever path reads it.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Protocol

import numpy as np

from semisam.config.schema import DataConfig
from semisam.data.fusion import align_priors
from semisam.data.readers import CaseReader
from semisam.data.transforms import normalize_intensity

Item = tuple[str, int]


class PriorSource(Protocol):
    """Where prior maps come from (the teacher cache's priors store)."""

    def load(self, case_id: str) -> np.ndarray: ...


class CaseLoader:
    """Reads and normalises whole cases, keeping the last few in memory (3D cases are read once per volume,
    not once per slice). Normalisation is per case, so a slice is normalised with its volume's statistics."""

    def __init__(self, reader: CaseReader, cfg: DataConfig, priors: PriorSource | None = None) -> None:
        self.reader = reader
        self.cfg = cfg
        self.priors = priors
        self._cache: OrderedDict[str, np.ndarray] = OrderedDict()
        self._priors_case: str | None = None
        self._priors_array = np.empty(0, np.float32)

    def image(self, case_id: str) -> np.ndarray:
        """Normalised image, float32 (C, H, W) or (C, D, H, W)."""
        if case_id in self._cache:
            self._cache.move_to_end(case_id)
            return self._cache[case_id]
        image = normalize_intensity(
            self.reader.read_image(case_id), self.cfg.modality, tuple(self.cfg.clip_percentiles)
        )
        self._cache[case_id] = image
        while len(self._cache) > max(1, self.cfg.cache_cases):
            self._cache.popitem(last=False)
        return image

    def clear(self) -> None:
        """Forget cached cases (for passes that read every case once)."""
        self._cache.clear()

    def image_slice(self, case_id: str, slice_index: int) -> np.ndarray:
        """float32 (C, H, W)."""
        image = self.image(case_id)
        return image if slice_index < 0 else image[:, slice_index]

    def priors_slice(self, case_id: str, slice_index: int, size: tuple[int, int] | None = None) -> np.ndarray:
        """Prior maps of a slice from the teacher cache, float32 (P, H, W), on the image slice's pixel grid (or
        resized to ``size`` (h, w)): SAMAug's maps are stored at the image's size, embedding priors at the
        embedding grid's (:func:`~semisam.data.fusion.align_priors`)."""
        if self.priors is None:
            raise ValueError("no prior store was given")
        if self._priors_case != case_id:
            self._priors_case, self._priors_array = case_id, self.priors.load(case_id)
        maps = self._priors_array if slice_index < 0 else self._priors_array[slice_index]
        return align_priors(maps, size or self.image_slice(case_id, slice_index).shape[-2:])

    def label_slice(self, case_id: str, slice_index: int) -> np.ndarray:
        """int64 (H, W). Only ever called for labeled items."""
        label = self.reader.read_label(case_id)
        return label if slice_index < 0 else label[slice_index]
