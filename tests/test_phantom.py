"""The synthetic phantom: determinism, anatomy, difficulty, the three layouts, and its data config."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from omegaconf import OmegaConf
from scipy.ndimage import binary_dilation

from semisam.config.schema import DataConfig, RunConfig, validate_config
from semisam.data.phantom import CLASS_NAMES, LAYOUTS, make_phantom, phantom_data_config
from semisam.data.readers import build_reader
from semisam.data.splits import resolve_split


def _config(root: Path, layout: str) -> DataConfig:
    return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(DataConfig), phantom_data_config(root, layout)))


def _all_arrays(root: Path, layout: str) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    reader = build_reader(_config(root, layout))
    return {c: (reader.read_image(c), reader.read_label(c)) for c in reader.case_ids()}


@pytest.fixture(scope="module")
def folder_phantom(tmp_path_factory) -> Path:
    return make_phantom(tmp_path_factory.mktemp("ph"), num_cases=24, size=48, seed=5, num_val=4, num_test=4)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_same_seed_same_arrays_other_seed_other_arrays(tmp_path, layout):
    kw = {"num_cases": 4, "size": 32, "layout": layout, "num_val": 1, "num_test": 1}
    a = _all_arrays(make_phantom(tmp_path / "a", seed=7, **kw), layout)
    b = _all_arrays(make_phantom(tmp_path / "b", seed=7, **kw), layout)
    c = _all_arrays(make_phantom(tmp_path / "c", seed=8, **kw), layout)
    assert a.keys() == b.keys()
    for case in a:
        for x, y in zip(a[case], b[case], strict=True):
            assert x.tobytes() == y.tobytes()
    assert any(a[k][0].tobytes() != c[k][0].tobytes() for k in a if k in c)


def test_a_case_does_not_depend_on_how_many_are_made(tmp_path):
    few = _all_arrays(make_phantom(tmp_path / "few", num_cases=3, size=32, num_val=1, num_test=1), "folder")
    many = _all_arrays(make_phantom(tmp_path / "many", num_cases=6, size=32, num_val=1, num_test=1), "folder")
    np.testing.assert_array_equal(few["case_001"][0], many["case_001"][0])


def test_anatomy_ring_encloses_the_left_ventricle(folder_phantom):
    reader = build_reader(_config(folder_phantom, "folder"))
    for case in reader.case_ids():
        label = reader.read_label(case)
        assert set(np.unique(label)) == {0, 1, 2, 3}, case
        lv = label == 3
        # The myocardium surrounds the LV: one step out of the LV lands in LV or myocardium only.
        assert np.isin(label[binary_dilation(lv)], (2, 3)).all(), case
        # The RV crescent touches the myocardium, never the LV.
        rv_border = binary_dilation(label == 1) & (label != 1)
        assert (label[rv_border] == 2).any() and not (label[rv_border] == 3).any(), case
        assert label[0].max() == 0 and label[:, 0].max() == 0  # the heart stays inside the field of view


def test_task_is_learnable_but_not_a_threshold(folder_phantom):
    reader = build_reader(_config(folder_phantom, "folder"))
    images = np.stack([reader.read_image(c)[0] for c in reader.case_ids()])
    labels = np.stack([reader.read_label(c) for c in reader.case_ids()])
    means = [images[labels == k].mean() for k in range(4)]
    # Blood pools are bright, the myocardium darker: the structures are visible...
    assert means[3] > means[2] + 40 and means[1] > means[2] + 40
    # ...but a global intensity threshold does not segment the blood pools (clutter, bias, noise).
    pools = np.isin(labels, (1, 3))
    best = max(2 * (pools & (images > t)).sum() / (pools.sum() + (images > t).sum()) for t in range(0, 256, 4))
    assert best < 0.93
    assert (images[labels == 0] > means[3]).sum() > 50  # background clutter as bright as the LV


def test_folder_layout_files_and_split(folder_phantom):
    assert sorted(p.name for p in (folder_phantom / "images").iterdir())[:2] == [
        "case_000.png",
        "case_001.png",
    ]
    splits = json.loads((folder_phantom / "splits.json").read_text())
    assert [len(splits[k]) for k in ("train", "val", "test")] == [16, 4, 4]
    cfg = _config(folder_phantom, "folder")
    split = resolve_split(cfg, build_reader(cfg).case_ids())
    assert split.labeled == splits["train"][:4] and split.unlabeled == splits["train"][4:]
    assert split.val == splits["val"] and split.test == splits["test"]


def test_nnunet_layout(tmp_path):
    root = make_phantom(tmp_path, num_cases=5, size=32, layout="nnunet", num_val=1, num_test=1)
    meta = json.loads((root / "dataset.json").read_text())
    assert meta["labels"] == {name: k for k, name in enumerate(CLASS_NAMES)}
    assert meta["numTraining"] == 4 and meta["file_ending"] == ".nii.gz"
    assert sorted(p.name for p in (root / "imagesTs").iterdir()) == ["case_004_0000.nii.gz"]
    assert (root / "labelsTs" / "case_004.nii.gz").is_file()
    cfg = _config(root, "nnunet")
    reader = build_reader(cfg)
    split = resolve_split(cfg, reader.case_ids())
    assert (split.labeled, split.unlabeled, split.val, split.test) == (
        ["case_000"],
        ["case_001", "case_002"],
        ["case_003"],
        ["case_004"],
    )
    label = reader.read_label("case_000")
    assert (label[-1] == 1).sum() == 0  # the right ventricle ends before the apex
    assert (label[0] == 1).sum() > 0


def test_ssl4mis_layout(tmp_path):
    root = make_phantom(tmp_path, num_cases=5, size=32, layout="ssl4mis_h5", num_val=1, num_test=1)
    slices = (root / "train_slices.list").read_text().split()
    assert slices[0] == "case_000_slice_0" and all(s.startswith(("case_000", "case_001", "case_002")) for s in slices)
    assert (root / "val.list").read_text().split() == ["case_003"]
    assert (root / "test.list").read_text().split() == ["case_004"]
    cfg = _config(root, "ssl4mis_h5")
    reader = build_reader(cfg)
    assert all(reader.num_slices(s) is None for s in slices)
    assert reader.num_slices("case_003") >= 3 and reader.num_slices("case_004") >= 3
    split = resolve_split(cfg, reader.case_ids())
    assert split.labeled == slices[: round(0.25 * len(slices))]
    assert (
        cfg.modality == "none" and 0 <= reader.read_image("case_003").min() <= reader.read_image("case_003").max() <= 1
    )


@pytest.mark.parametrize("layout", LAYOUTS)
def test_phantom_data_config_is_a_valid_run_config(tmp_path, layout):
    root = make_phantom(tmp_path, num_cases=4, size=40, layout=layout, num_val=1, num_test=1)
    data = phantom_data_config(root, layout)
    assert data["format"] == layout and data["num_classes"] == 4 and data["image_size"] == [40, 40]
    run = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(RunConfig), {"data": data}))
    validate_config(run)
    assert run.data.class_names == CLASS_NAMES


def test_manifest_skips_identical_regeneration_and_rebuilds_on_change(tmp_path):
    root = make_phantom(tmp_path, num_cases=3, size=32, num_val=1, num_test=1)
    image = root / "images" / "case_000.png"
    os.utime(image, ns=(10**9, 10**9))  # a mark that a regeneration would overwrite
    assert make_phantom(root, num_cases=3, size=32, num_val=1, num_test=1) == root
    assert image.stat().st_mtime_ns == 10**9
    make_phantom(root, num_cases=3, size=32, seed=1, num_val=1, num_test=1)
    assert json.loads((root / "phantom.json").read_text())["seed"] == 1


def test_bad_arguments():
    with pytest.raises(ValueError, match="layout"):
        make_phantom(Path("unused"), layout="dicom")
    with pytest.raises(ValueError, match="size"):
        make_phantom(Path("unused"), size=16)
    with pytest.raises(ValueError, match="no training case"):
        make_phantom(Path("unused"), num_cases=4, num_val=2, num_test=2)
