"""Training slices held in memory (semisam.data.memory) and what they change for the trainer."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch

from semisam.config.loader import load_config
from semisam.data.dataset import SliceDataset, expand_to_slices
from semisam.data.errors import DataError
from semisam.data.memory import SliceStore, resize_maps
from tests.conftest import REPO, run_train_tool, tiny_overrides
from tests.test_dataset import RecordingReader, _cfg

DEMO = REPO / "configs" / "demo.yaml"


def test_resize_maps_keeps_label_values_and_channels():
    label = np.zeros((20, 24), np.int64)
    label[2:10, 3:20] = 3
    small = resize_maps(label, (10, 12), nearest=True)
    assert small.shape == (10, 12) and small.dtype == np.int64
    assert set(np.unique(small)) == {0, 3}
    maps = np.random.default_rng(0).random((3, 20, 24)).astype(np.float32)
    out = resize_maps(maps, (16, 16))
    assert out.shape == (3, 16, 16) and out.dtype == np.float32
    assert resize_maps(maps, (20, 24)) is maps  # already at size: untouched


def test_store_samples_equal_disk_samples_without_augmentation():
    """Without augmentation the two paths are the same resize of the same normalised slice."""
    reader = RecordingReader({"a": None, "v": 3}, size=(20, 24))
    cfg = _cfg(in_memory=False)
    items = expand_to_slices(reader, ["a", "v"])
    disk = SliceDataset(reader, items, cfg, labeled=True, train=False)
    store = SliceStore.build(reader, items, cfg, labeled=True)
    memory = SliceDataset(reader, items, cfg, labeled=True, train=False, store=store)
    assert store.images.shape == (4, 1, 16, 16) and store.native_shapes == [(20, 24)] * 4
    for i in range(len(items)):
        a, b = disk[i], memory[i]
        np.testing.assert_allclose(a["image"].numpy(), b["image"].numpy(), atol=1e-5)
        assert torch.equal(a["label"], b["label"])


def test_the_volume_label_is_read_once_and_unlabeled_labels_never():
    reader = RecordingReader({"v": 5, "u1": None, "u2": 2})
    cfg = _cfg()
    SliceStore.build(reader, expand_to_slices(reader, ["v"]), cfg, labeled=True)
    assert reader.label_reads == ["v"]
    reader.label_reads.clear()
    store = SliceStore.build(reader, expand_to_slices(reader, ["u1", "u2"]), cfg, labeled=False)
    assert store.labels is None and reader.label_reads == []


@dataclass
class _Entry:
    label: np.ndarray
    weight: np.ndarray
    uncertainty: np.ndarray
    source: np.ndarray


@dataclass
class _Bank:
    entries: dict


def test_a_native_size_bank_entry_is_resized_to_the_stored_size():
    reader = RecordingReader({"u1": None}, size=(20, 24))
    cfg = _cfg()  # image_size 16x16, in memory
    label = np.zeros((20, 24), np.int64)
    label[:, 12:] = 2  # right half
    weight = (label > 0).astype(np.float32)
    bank = _Bank({0: _Entry(label, weight, weight * 0.5, (label > 0).astype(np.uint8))})
    ds = SliceDataset(reader, [("u1", -1)], cfg, labeled=False, train=False, bank=bank)
    sample = ds[0]
    assert sample["pseudo_label"].shape == (16, 16) and sample["weight"].shape == (16, 16)
    assert torch.all(sample["pseudo_label"][:, 8:] == 2) and torch.all(sample["pseudo_label"][:, :8] == 0)
    assert torch.equal(sample["weight"] > 0, sample["pseudo_label"] > 0)
    assert float(sample["uncertainty"].max()) == pytest.approx(0.5)
    assert torch.equal(sample["pseudo_source"], (sample["pseudo_label"] > 0).long())  # resized with the label


def test_weak_intensity_jitter_changes_the_image_only(monkeypatch):
    reader = RecordingReader({"a": None})
    items = [("a", -1)]
    cfg = _cfg()
    cfg.augmentation.flip = cfg.augmentation.rotate90 = False
    cfg.augmentation.rotate_limit = 0.0
    jittered = SliceDataset(reader, items, cfg, labeled=True, train=True)
    plain_cfg = _cfg()
    plain_cfg.augmentation.flip = plain_cfg.augmentation.rotate90 = False
    plain_cfg.augmentation.rotate_limit = 0.0
    plain_cfg.augmentation.weak_brightness_contrast = 0.0
    plain = SliceDataset(reader, items, plain_cfg, labeled=True, train=True)
    assert plain.intensity is None
    base = plain[(0, 5)]
    changed = [not torch.allclose(jittered[(0, seed)]["image"], base["image"]) for seed in range(8)]
    assert any(changed)  # p=0.8 per sample
    for seed in range(8):
        assert torch.equal(jittered[(0, seed)]["label"], base["label"])
        image = jittered[(0, seed)]["image"]
        assert float(image.min()) >= 0.0 and float(image.max()) <= 1.0


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def test_a_bad_labeled_file_stops_training_before_a_step_with_workers(phantom_root, tmp_path):
    """Everything is read when the trainer is built, so a truncated image stops the run there, in the main
    process, in one line: with loader workers too (where a worker's traceback would otherwise be all the user
    sees)."""
    import shutil

    root = tmp_path / "data"
    shutil.copytree(phantom_root, root)
    overrides = tiny_overrides(root, tmp_path / "run", **{"method.name": "supervised", "data.num_workers": "2"})
    cfg = load_config(DEMO, overrides)
    from semisam.data.readers import build_reader
    from semisam.data.splits import resolve_split

    split = resolve_split(cfg.data, build_reader(cfg.data).case_ids())
    bad = root / "images" / f"{split.labeled[-1]}.png"
    _truncate(bad)
    from semisam.engine.trainer import Trainer

    with pytest.raises(DataError, match=rf"{bad.name}: cannot read image"):
        Trainer(cfg, progress=False)
    assert not (tmp_path / "run" / "checkpoints").exists()
    proc = run_train_tool(DEMO, overrides)
    assert proc.returncode == 2, proc.stderr[-2000:]
    errors = [line for line in proc.stderr.splitlines() if "ERROR" in line]
    assert len(errors) == 1 and bad.name in errors[0] and "cannot read image" in errors[0]
    assert "Traceback" not in proc.stderr and "DataLoader worker" not in proc.stderr


def test_in_memory_and_disk_training_match_without_augmentation(phantom_root, tmp_path):
    """The same run from memory and from disk: same batches, same (resize-only) samples, so the same weights."""
    from semisam.engine.trainer import Trainer

    common = {
        "method.name": "supervised",
        "deterministic": "true",
        "data.augmentation.flip": "false",
        "data.augmentation.rotate90": "false",
        "data.augmentation.rotate_limit": "0",
        "data.augmentation.weak_brightness_contrast": "0",
        "schedule.val_every": "0",
    }
    weights = []
    for in_memory in ("true", "false"):
        out = tmp_path / f"run_{in_memory}"
        cfg = load_config(DEMO, tiny_overrides(phantom_root, out, **common, **{"data.in_memory": in_memory}))
        Trainer(cfg, progress=False).fit()
        state = torch.load(out / "checkpoints" / "last.pt", weights_only=True)["model"]
        weights.append(state)
    for key in weights[0]:
        torch.testing.assert_close(weights[0][key], weights[1][key], atol=1e-4, rtol=1e-4)
