import numpy as np
import pytest
import torch

from semisam.config.schema import DataConfig
from semisam.data.dataset import IterationBatchSampler, SliceDataset, expand_to_slices


class RecordingReader:
    """A reader over in-memory cases that records every label read; labels of 'u*' cases do not exist."""

    def __init__(self, volumes: dict[str, int | None], size=(20, 24)):
        self.volumes = volumes
        self.size = size
        self.label_reads: list[str] = []

    def case_ids(self):
        return sorted(self.volumes)

    def num_slices(self, case_id):
        return self.volumes[case_id]

    def _label(self, case_id):
        n = self.volumes[case_id]
        base = np.zeros(self.size, np.int64)
        base[4:12, 5:15] = 1 + (hash(case_id) % 3)
        return base if n is None else np.stack([np.roll(base, k, axis=1) for k in range(n)])

    def read_image(self, case_id):
        return (self._label(case_id) * 40.0 + 10).astype(np.float32)[None]

    def read_label(self, case_id):
        self.label_reads.append(case_id)
        if case_id.startswith("u"):
            raise FileNotFoundError(f"label of unlabeled case {case_id} must never be read")
        return self._label(case_id)

    def spacing(self, case_id):
        return None

    def has_label(self, case_id):
        return not case_id.startswith("u")


def _cfg(**kw) -> DataConfig:
    cfg = DataConfig(name="fake", format="folder", root=".", num_classes=4, modality="mr")
    cfg.image_size = [16, 16]
    for k, v in kw.items():
        setattr(cfg, k, v)
    return cfg


def test_expand_to_slices_mixes_2d_and_3d_cases():
    reader = RecordingReader({"a": None, "b": 3})
    assert expand_to_slices(reader, ["a", "b"]) == [("a", -1), ("b", 0), ("b", 1), ("b", 2)]


def test_labeled_samples_have_aligned_labels_and_volume_slices():
    reader = RecordingReader({"a": None, "v": 4}, size=(16, 16))
    cfg = _cfg()
    cfg.augmentation.rotate_limit = 0  # exact (flip / 90-degree) transforms: no interpolation at edges
    ds = SliceDataset(reader, expand_to_slices(reader, ["a", "v"]), cfg, labeled=True, train=True)
    for i in range(len(ds)):
        s = ds[(i, 100 + i)]
        assert s["image"].shape == (1, 16, 16) and s["image"].dtype == torch.float32
        assert s["label"].shape == (16, 16) and s["label"].dtype == torch.int64
        # the image was drawn from the label: after joint augmentation they still coincide
        assert torch.equal(s["image"][0] > 0.1, s["label"] > 0)
    assert ds[(2, 7)]["slice_index"] == 1 and ds[(0, 7)]["slice_index"] == -1


def test_unlabeled_dataset_never_reads_a_label():
    reader = RecordingReader({"u1": None, "u2": 2})
    ds = SliceDataset(reader, expand_to_slices(reader, ["u1", "u2"]), _cfg(), labeled=False, train=True, strong=True)
    samples = [ds[(i, i)] for i in range(len(ds))]
    assert reader.label_reads == []
    assert all("label" not in s for s in samples)


def test_volume_read_once_for_all_its_slices():
    reader = RecordingReader({"v": 5})
    calls = []
    original = reader.read_image
    reader.read_image = lambda cid: calls.append(cid) or original(cid)
    ds = SliceDataset(reader, expand_to_slices(reader, ["v"]), _cfg(), labeled=False, train=False)
    for i in range(5):
        ds[i]
    assert calls == ["v"]


def test_sampler_epochs_cover_every_item_once():
    sampler = IterationBatchSampler(num_items=10, batch_size=4, total=5, seed=3)
    seen = [idx for batch in sampler for idx, _ in batch]
    assert len(seen) == 20
    assert sorted(seen[:10]) == list(range(10)) and sorted(seen[10:20]) == list(range(10))
    assert seen[:10] != seen[10:20]  # a fresh permutation each epoch


def test_sampler_resumes_exactly():
    full = list(IterationBatchSampler(7, 3, total=9, seed=11))
    resumed = list(IterationBatchSampler(7, 3, total=9, seed=11, start=4))
    assert resumed == full[4:]
    assert list(IterationBatchSampler(7, 3, total=9, seed=12)) != full


def test_sampler_rejects_empty():
    with pytest.raises(ValueError, match="items"):
        IterationBatchSampler(0, 2, 5, 0)


def test_same_seed_same_sample():
    reader = RecordingReader({"a": None})
    ds = SliceDataset(reader, [("a", -1)], _cfg(), labeled=True, train=True, strong=True)
    a, b = ds[(0, 42)], ds[(0, 42)]
    assert torch.equal(a["image"], b["image"]) and torch.equal(a["label"], b["label"])
