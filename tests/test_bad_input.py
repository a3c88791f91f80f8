"""Bad input, item by item: each gives one of the project's errors (DataError, ConfigError, CheckpointError,
CacheError, TeacherError; exit status 2 from the tools), whose message names the file or key and says what is
wrong, and nothing already computed is lost.

Other files cover more variants of some items: tests/test_readers.py (every reader error), tests/test_splits.py
(id lists and split rules), tests/test_config.py (config keys, types and rules), tests/test_checkpoint.py and
tests/test_teacher_models.py (checkpoints). Here is one test per kind of bad input, end to end where it matters.
"""

from __future__ import annotations

import ast
import dataclasses
import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import tifffile
import torch
from PIL import Image

from semisam.config.loader import config_to_dict, load_config
from semisam.config.schema import ConfigError, DataConfig, SplitConfig, SubsetConfig, TeacherConfig
from semisam.data.dataset import SliceDataset, check_labeled_cases, expand_to_slices
from semisam.data.errors import DataError
from semisam.data.readers import build_reader
from semisam.data.splits import read_id_list, resolve_split
from semisam.student.checkpoint import CheckpointError, load_checkpoint, load_model_weights, save_checkpoint
from semisam.teacher import stores
from semisam.teacher.cache import CacheError, CacheStore, cache_root, expected_manifest, teacher_identity
from semisam.teacher.checkpoints import SAM_CHECKPOINTS, resolve_checkpoint
from semisam.teacher.errors import TeacherError

from .conftest import REPO, run_train_tool, tiny_overrides, write_h5, write_png

DEMO = REPO / "configs" / "demo.yaml"


# ----------------------------------------------------------------------------------------------------------
# Small files
# ----------------------------------------------------------------------------------------------------------


def _data_cfg(root: Path, fmt: str, **kw) -> DataConfig:
    kw.setdefault("num_classes", 4)
    return DataConfig(name="bad", format=fmt, root=str(root), **kw)


def _nifti(path: Path, array: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(array, np.eye(4)), path)
    return path


def _nnunet_root(root: Path, ending: str = ".nii.gz", num_classes: int = 4) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    labels = {"background": 0, **{f"c{k}": k for k in range(1, num_classes)}}
    (root / "dataset.json").write_text(
        json.dumps({"channel_names": {"0": "MR"}, "labels": labels, "file_ending": ending})
    )
    return root


def _cut_in_half(path: Path) -> Path:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def _noise(shape, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


def _copy_phantom(phantom_root: Path, tmp_path: Path) -> Path:
    root = tmp_path / "data"
    shutil.copytree(phantom_root, root)
    return root


# ----------------------------------------------------------------------------------------------------------
# 1. Unreadable or truncated images, for the three readers
# ----------------------------------------------------------------------------------------------------------


def _truncated_png(tmp_path: Path):
    _cut_in_half(write_png(tmp_path / "images" / "c.png", _noise((64, 64))))
    return _data_cfg(tmp_path, "folder"), "c", "read_image", "c.png", "cannot read image"


def _truncated_jpg(tmp_path: Path):
    path = tmp_path / "images" / "c.jpg"
    path.parent.mkdir(parents=True)
    Image.fromarray(_noise((64, 64, 3))).save(path, quality=95)
    _cut_in_half(path)
    return _data_cfg(tmp_path, "folder", in_channels=3), "c", "read_image", "c.jpg", "truncated"


def _garbage_mask(tmp_path: Path):
    write_png(tmp_path / "images" / "c.png", _noise((8, 8)))
    (tmp_path / "masks").mkdir()
    (tmp_path / "masks" / "c.png").write_bytes(b"\x89PNG but not really" * 10)
    return _data_cfg(tmp_path, "folder"), "c", "read_label", "masks/c.png", "cannot read image"


def _garbage_h5(tmp_path: Path):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "c.h5").write_bytes(b"garbage, not HDF5" * 50)
    return _data_cfg(tmp_path, "ssl4mis_h5"), "c", "read_image", "c.h5", "cannot open h5 file"


def _truncated_h5(tmp_path: Path):
    image = np.random.default_rng(0).normal(size=(64, 64)).astype(np.float32)
    _cut_in_half(write_h5(tmp_path / "data" / "c.h5", image=image, label=np.zeros((64, 64), np.uint8)))
    return _data_cfg(tmp_path, "ssl4mis_h5"), "c", "read_label", "c.h5", "truncated or not HDF5"


def _truncated_nifti_gz(tmp_path: Path):
    root = _nnunet_root(tmp_path)
    volume = np.random.default_rng(0).normal(size=(40, 40, 10)).astype(np.float32)
    _cut_in_half(_nifti(root / "imagesTr" / "c_0000.nii.gz", volume))
    return _data_cfg(root, "nnunet"), "c", "read_image", "c_0000.nii.gz", "cannot read voxel data"


def _truncated_nifti(tmp_path: Path):
    root = _nnunet_root(tmp_path, ending=".nii")
    volume = np.random.default_rng(0).normal(size=(40, 40, 10)).astype(np.float32)
    _cut_in_half(_nifti(root / "imagesTr" / "c_0000.nii", volume))
    return _data_cfg(root, "nnunet"), "c", "read_image", "c_0000.nii", "truncated file"


def _garbage_nifti_label(tmp_path: Path):
    root = _nnunet_root(tmp_path)
    _nifti(root / "imagesTr" / "c_0000.nii.gz", np.ones((4, 4, 2), np.float32))
    (root / "labelsTr").mkdir()
    (root / "labelsTr" / "c.nii.gz").write_bytes(b"not gzip at all" * 30)
    return _data_cfg(root, "nnunet"), "c", "read_label", "labelsTr/c.nii.gz", "cannot read NIfTI header"


@pytest.mark.parametrize(
    "make",
    [
        _truncated_png,
        _truncated_jpg,
        _garbage_mask,
        _garbage_h5,
        _truncated_h5,
        _truncated_nifti_gz,
        _truncated_nifti,
        _garbage_nifti_label,
    ],
    ids=lambda f: f.__name__.strip("_"),
)
def test_unreadable_or_truncated_files(tmp_path, make):
    cfg, case, method, filename, problem = make(tmp_path)
    with pytest.raises(DataError) as err:
        getattr(build_reader(cfg), method)(case)
    assert filename in str(err.value) and problem in str(err.value)


# ----------------------------------------------------------------------------------------------------------
# 2. Image / label size mismatch
# ----------------------------------------------------------------------------------------------------------


def _mismatch_folder(tmp_path: Path):
    write_png(tmp_path / "images" / "c.png", _noise((8, 9)))
    write_png(tmp_path / "masks" / "c.png", np.zeros((9, 8), np.uint8))
    return _data_cfg(tmp_path, "folder"), "masks/c.png", "does not match the image c.png"


def _mismatch_h5(tmp_path: Path):
    write_h5(tmp_path / "data" / "c.h5", image=np.ones((4, 5), np.float32), label=np.zeros((4, 6), np.uint8))
    return _data_cfg(tmp_path, "ssl4mis_h5"), "c.h5", "does not match image shape"


def _mismatch_nnunet(tmp_path: Path):
    root = _nnunet_root(tmp_path)
    _nifti(root / "imagesTr" / "c_0000.nii.gz", np.ones((6, 6, 3), np.float32))
    _nifti(root / "labelsTr" / "c.nii.gz", np.zeros((6, 6, 4), np.uint8))
    return _data_cfg(root, "nnunet"), "labelsTr/c.nii.gz", "does not match image c_0000.nii.gz"


@pytest.mark.parametrize("make", [_mismatch_folder, _mismatch_h5, _mismatch_nnunet], ids=["folder", "h5", "nnunet"])
def test_image_label_size_mismatch(tmp_path, make):
    cfg, filename, problem = make(tmp_path)
    with pytest.raises(DataError) as err:
        build_reader(cfg).read_label("c")
    assert filename in str(err.value) and problem in str(err.value)


# ----------------------------------------------------------------------------------------------------------
# 3. Label values outside data.num_classes (after data.label_threshold)
# ----------------------------------------------------------------------------------------------------------


def test_label_values_outside_the_classes(tmp_path):
    mask = np.zeros((6, 6), np.uint8)
    mask[1:4, 1:4] = 255
    write_png(tmp_path / "images" / "c.png", _noise((6, 6)))
    write_png(tmp_path / "masks" / "c.png", mask)
    with pytest.raises(DataError) as err:
        build_reader(_data_cfg(tmp_path, "folder", num_classes=2)).read_label("c")
    message = str(err.value)
    assert "masks/c.png" in message and "values [255] are outside [0, 2)" in message
    assert "data.label_threshold" in message  # the fix for 0/255 masks
    # thresholded, the same mask is a valid binary label: values are checked after thresholding
    label = build_reader(_data_cfg(tmp_path, "folder", num_classes=2, label_threshold=127)).read_label("c")
    np.testing.assert_array_equal(label, (mask > 127).astype(np.int64))

    write_h5(tmp_path / "data" / "h.h5", image=np.ones((2, 2), np.float32), label=np.array([[0, 3], [1, 2]], np.uint8))
    with pytest.raises(DataError, match=r"h\.h5: label values \[3\] are outside \[0, 3\)"):
        build_reader(_data_cfg(tmp_path, "ssl4mis_h5", num_classes=3)).read_label("h")
    root = _nnunet_root(tmp_path / "nn")
    _nifti(root / "imagesTr" / "n_0000.nii.gz", np.ones((3, 3, 2), np.float32))
    _nifti(root / "labelsTr" / "n.nii.gz", np.full((3, 3, 2), 7, np.uint8))
    with pytest.raises(DataError, match=r"labelsTr/n\.nii\.gz: label values \[7\] are outside \[0, 4\)"):
        build_reader(_data_cfg(root, "nnunet")).read_label("n")


# ----------------------------------------------------------------------------------------------------------
# 4. NaN / inf images (errors) and constant images (a warning, once)
# ----------------------------------------------------------------------------------------------------------


def test_nan_and_inf_images_are_errors(tmp_path):
    (tmp_path / "images").mkdir()
    tifffile.imwrite(tmp_path / "images" / "n.tif", np.array([[1.0, np.nan], [np.inf, 3.0]], np.float32))
    with pytest.raises(DataError, match=r"images/n\.tif: image holds 2 NaN/inf values"):
        build_reader(_data_cfg(tmp_path, "folder")).read_image("n")
    write_h5(tmp_path / "data" / "h.h5", image=np.full((3, 3), np.nan, np.float32))
    with pytest.raises(DataError, match=r"h\.h5: image is entirely NaN/inf"):
        build_reader(_data_cfg(tmp_path, "ssl4mis_h5")).read_image("h")
    root = _nnunet_root(tmp_path / "nn")
    volume = np.ones((3, 3, 2), np.float32)
    volume[1, 1, 1] = -np.inf
    _nifti(root / "imagesTr" / "v_0000.nii.gz", volume)
    with pytest.raises(DataError, match=r"v_0000\.nii\.gz: image holds 1 NaN/inf values"):
        build_reader(_data_cfg(root, "nnunet")).read_image("v")


def test_a_constant_image_is_used_with_one_warning(tmp_path, caplog):
    """The documented choice (semisam/data/readers.py): a constant image is valid data without signal, so it is a
    warning, logged once per file, and it normalises to zeros."""
    from semisam.data.transforms import normalize_intensity

    write_png(tmp_path / "images" / "flat.png", np.full((5, 5), 40, np.uint8))
    reader = build_reader(_data_cfg(tmp_path, "folder"))
    with caplog.at_level(logging.WARNING, logger="semisam"):
        for _ in range(3):
            image = reader.read_image("flat")
    warnings = [r.getMessage() for r in caplog.records if "constant" in r.getMessage()]
    assert len(warnings) == 1 and "flat.png" in warnings[0]
    assert np.all(normalize_intensity(image, "mr", (0.5, 99.5)) == 0)


# ----------------------------------------------------------------------------------------------------------
# 5. Empty masks: fine for some cases, an error when every labeled mask is empty
# ----------------------------------------------------------------------------------------------------------


def _folder_with_masks(root: Path, masks: dict[str, np.ndarray]) -> None:
    for case, mask in masks.items():
        write_png(root / "images" / f"{case}.png", _noise(mask.shape, seed=len(case)))
        write_png(root / "masks" / f"{case}.png", mask)


def test_empty_masks_are_fine_unless_every_labeled_mask_is_empty(tmp_path):
    full = np.zeros((16, 16), np.uint8)
    full[4:10, 4:10] = 2
    _folder_with_masks(tmp_path, {"e1": np.zeros((16, 16), np.uint8), "e2": np.zeros((16, 16), np.uint8), "f": full})
    cfg = _data_cfg(tmp_path, "folder")
    reader = build_reader(cfg)
    check_labeled_cases(reader, ["e1", "e2", "f"], cfg)  # some empty masks: legitimate (ACDC has them)
    SliceDataset(reader, expand_to_slices(reader, ["e1", "f"]), cfg, labeled=True)
    with pytest.raises(DataError) as err:
        SliceDataset(reader, expand_to_slices(reader, ["e1", "e2"]), cfg, labeled=True)
    message = str(err.value)
    assert "masks/e1.png" in message and "background only" in message and "2 labeled cases" in message


def test_all_empty_after_thresholding_points_at_the_threshold(tmp_path):
    mask = np.zeros((16, 16), np.uint8)
    mask[3:9, 3:9] = 1  # a 0/1 mask read with a 0/255 threshold: every pixel is background
    _folder_with_masks(tmp_path, {"a": mask, "b": mask})
    cfg = _data_cfg(tmp_path, "folder", num_classes=2, label_threshold=127)
    with pytest.raises(DataError) as err:
        check_labeled_cases(build_reader(cfg), ["a", "b"], cfg)
    message = str(err.value)
    assert "masks/a.png" in message and "background only" in message and "data.label_threshold=127" in message


def test_all_empty_labeled_split_stops_training_before_a_step(phantom_root, tmp_path):
    from semisam.engine.trainer import Trainer

    root = _copy_phantom(phantom_root, tmp_path)
    cfg = load_config(DEMO, tiny_overrides(root, tmp_path / "run", **{"method.name": "supervised"}))
    labeled = resolve_split(cfg.data, build_reader(cfg.data).case_ids()).labeled
    for case in labeled:
        write_png(root / "masks" / f"{case}.png", np.zeros((32, 32), np.uint8))
    with pytest.raises(DataError, match=r"every label of the 6 labeled cases is background only"):
        Trainer(cfg, progress=False).fit()
    assert not (tmp_path / "run" / "checkpoints" / "last.pt").exists()


def test_a_val_case_without_label_stops_training_before_a_step(phantom_root, tmp_path):
    from semisam.engine.trainer import Trainer

    root = _copy_phantom(phantom_root, tmp_path)
    cfg = load_config(DEMO, tiny_overrides(root, tmp_path / "run", **{"method.name": "supervised"}))
    val = resolve_split(cfg.data, build_reader(cfg.data).case_ids()).val
    (root / "masks" / f"{val[1]}.png").unlink()
    with pytest.raises(DataError, match=rf"1 of {len(val)} val cases have no label file: .*masks/{val[1]}\.png"):
        Trainer(cfg, progress=False)
    assert not (tmp_path / "run").exists()


# ----------------------------------------------------------------------------------------------------------
# 6. Missing files in a split
# ----------------------------------------------------------------------------------------------------------


def _split_cfg(root: Path, **split) -> DataConfig:
    for name in ("train", "val", "test", "labeled"):
        if isinstance(split.get(name), str):
            split[name] = SubsetConfig(file=split[name])
    return DataConfig(name="s", format="folder", root=str(root), num_classes=4, split=SplitConfig(**split))


def test_a_listed_case_absent_on_disk(tmp_path):
    _folder_with_masks(tmp_path, {f"c{i}": np.eye(8, dtype=np.uint8) for i in range(4)})
    (tmp_path / "train.list").write_text("c0\nc1\nc_gone\n")
    cfg = _split_cfg(tmp_path, train="train.list")
    with pytest.raises(DataError, match=r"train\.list: ids not found in the data set.*'c_gone'"):
        resolve_split(cfg, build_reader(cfg).case_ids())


def test_a_labeled_case_without_its_label_file(tmp_path):
    _folder_with_masks(tmp_path, {f"c{i}": np.eye(8, dtype=np.uint8) for i in range(4)})
    (tmp_path / "masks" / "c2.png").unlink()
    cfg = _split_cfg(tmp_path)
    reader = build_reader(cfg)
    with pytest.raises(DataError, match=r"1 of 4 labeled cases have no label file: .*masks/c2\.png"):
        SliceDataset(reader, expand_to_slices(reader, reader.case_ids()), cfg, labeled=True)


def test_evaluation_checks_every_label_before_predicting(tmp_path):
    from semisam.config.schema import EvalConfig
    from semisam.evaluation.inference import evaluate_cases

    _folder_with_masks(tmp_path, {f"c{i}": np.eye(8, dtype=np.uint8) for i in range(3)})
    (tmp_path / "masks" / "c2.png").unlink()
    cfg = _split_cfg(tmp_path)
    cfg.image_size = [16, 16]
    model = torch.nn.Conv2d(1, 4, 1)
    with pytest.raises(DataError, match=r"1 of 3 evaluated cases have no label file: .*masks/c2\.png"):
        evaluate_cases(model, build_reader(cfg), ["c0", "c1", "c2"], cfg, EvalConfig(), torch.device("cpu"), ["dice"])


# ----------------------------------------------------------------------------------------------------------
# 7. Duplicate case ids
# ----------------------------------------------------------------------------------------------------------


def test_duplicate_ids(tmp_path):
    _folder_with_masks(tmp_path, {f"c{i}": np.eye(8, dtype=np.uint8) for i in range(6)})
    (tmp_path / "dup.list").write_text("c0\nc1\nc1.png\n")
    with pytest.raises(DataError, match=r"dup\.list: duplicate ids \['c1'\]"):
        read_id_list(tmp_path / "dup.list")
    (tmp_path / "train.list").write_text("c0\nc1\nc2\nc3\n")
    (tmp_path / "val.list").write_text("c3\nc4\n")
    cfg = _split_cfg(tmp_path, train="train.list", val="val.list")
    with pytest.raises(DataError, match=r"data\.split: train and val share ids \['c3'\]"):
        resolve_split(cfg, build_reader(cfg).case_ids())
    (tmp_path / "splits.json").write_text(json.dumps({"train": ["c0", "c1"], "test": ["c1", "c5"]}))
    cfg = _split_cfg(tmp_path)
    cfg.split.train = SubsetConfig(file="splits.json", key="train")
    cfg.split.test = SubsetConfig(file="splits.json", key="test")
    with pytest.raises(DataError, match=r"train and test share ids \['c1'\]"):
        resolve_split(cfg, build_reader(cfg).case_ids())
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "images" / "c0.jpg")  # c0.png and c0.jpg
    with pytest.raises(DataError, match=r"images: two images have the id 'c0': c0\.jpg and c0\.png"):
        build_reader(_split_cfg(tmp_path)).case_ids()


# ----------------------------------------------------------------------------------------------------------
# 8. A checkpoint of another architecture (library and tools/evaluate.py)
# ----------------------------------------------------------------------------------------------------------


def _foreign_checkpoint(phantom_root: Path, tmp_path: Path) -> Path:
    """A checkpoint whose config describes the tiny U-Net but whose weights come from a wider one."""
    from semisam.student.unet import build_student

    cfg = load_config(DEMO, tiny_overrides(phantom_root, tmp_path / "run", **{"method.name": "supervised"}))
    wide = dataclasses.replace(cfg.student, features=[8, 16, 32, 64, 128])
    weights = build_student(wide, 1, cfg.data.num_classes).state_dict()
    path = tmp_path / "run" / "checkpoints" / "best.pt"
    save_checkpoint(path, {"config": config_to_dict(cfg), "model": weights, "model_info": {"arch": "unet-wide"}})
    return path


def test_a_checkpoint_of_another_architecture(phantom_root, tmp_path):
    from semisam.evaluation.runner import evaluate_checkpoint
    from semisam.student.unet import build_student

    path = _foreign_checkpoint(phantom_root, tmp_path)
    cfg = load_config(DEMO, tiny_overrides(phantom_root, tmp_path / "run"))
    model = build_student(cfg.student, 1, cfg.data.num_classes)
    with pytest.raises(CheckpointError) as err:
        load_model_weights(model, load_checkpoint(path), path)
    message = str(err.value)
    assert str(path) in message and "another architecture" in message and "shape mismatch" in message
    first = next(iter(model.state_dict()))
    assert first in message  # the first mismatching keys are named
    with pytest.raises(CheckpointError, match=r"best\.pt: weights of another architecture"):
        evaluate_checkpoint(path, "test", progress=False)


def test_evaluate_tool_reports_a_foreign_checkpoint_in_one_line(phantom_root, tmp_path):
    path = _foreign_checkpoint(phantom_root, tmp_path)
    proc = subprocess.run(
        [sys.executable, str(REPO / "tools/evaluate.py"), "--checkpoint", str(path), "--no-progress"],
        capture_output=True,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert proc.returncode == 2
    assert "CheckpointError" in proc.stderr and str(path) in proc.stderr and "another architecture" in proc.stderr
    assert "Traceback" not in proc.stderr


# ----------------------------------------------------------------------------------------------------------
# 9. A teacher checkpoint with the wrong checksum
# ----------------------------------------------------------------------------------------------------------


def test_a_teacher_checkpoint_with_the_wrong_checksum(tmp_path, monkeypatch):
    path = tmp_path / "sam_vit_b_01ec64.pth"
    path.write_bytes(b"not the official weights" * 40)
    official = dataclasses.replace(SAM_CHECKPOINTS["sam_vit_b"], size=path.stat().st_size)  # size passes, sha not
    monkeypatch.setitem(SAM_CHECKPOINTS, "sam_vit_b", official)
    with pytest.raises(TeacherError) as err:
        resolve_checkpoint(TeacherConfig(kind="sam_vit_b", checkpoint=str(path)))
    message = str(err.value)
    assert str(path) in message and f"sha256 expected {official.sha256}" in message
    assert hashlib.sha256(path.read_bytes()).hexdigest() in message and official.url in message


# ----------------------------------------------------------------------------------------------------------
# 10. A cache made by another teacher, and a damaged cache file
# ----------------------------------------------------------------------------------------------------------


def test_a_cache_made_by_another_teacher_is_refused(tmp_path, monkeypatch):

    cfg = load_config(DEMO, [f"data.root={tmp_path}", f"teacher.cache_dir={tmp_path / 'cache'}"])
    ours = teacher_identity("litemedsam", "a" * 64, "medsam", 256)
    theirs = teacher_identity("litemedsam", "b" * 64, "medsam", 256)
    store = CacheStore(cache_root(cfg), "priors")
    store.prepare(expected_manifest(cfg, "priors", theirs))
    store.save("c0", np.zeros((2, 4, 4)))
    monkeypatch.setattr(stores, "identity_from_config", lambda c: ours)
    with pytest.raises(CacheError) as err:
        stores.open_prior_store(cfg, ["c0"])
    message = str(err.value)
    assert str(store.dir) in message and "another teacher" in message
    assert "checkpoint_sha256" in message and "tools/precompute.py" in message
    assert store.has("c0")  # refusing deletes nothing

    store.path("c0").write_bytes(b"\x93NUMPY garbage")
    with pytest.raises(CacheError, match=r"c0\.npy: damaged cache file"):
        store.load("c0")


# ----------------------------------------------------------------------------------------------------------
# 11. A config with unknown keys or wrong types (more in tests/test_config.py)
# ----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("override", "key", "problem"),
    [
        ("schedule.iterationz=5", "schedule.iterationz", "iterationz"),
        ("schedule.iterations=many", "schedule.iterations", "many"),
        ("data.num_classes=[1,2]", "data.num_classes", "num_classes"),
        ("method.name=fixmatch", "method.name", "not one of"),
    ],
)
def test_a_config_with_unknown_keys_or_wrong_types(override, key, problem):
    with pytest.raises(ConfigError) as err:
        load_config(DEMO, [override])
    assert key in str(err.value) and problem in str(err.value)


def test_an_unknown_key_in_a_yaml_file_names_the_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(f"defaults: [{DEMO}]\nschedule:\n  lr_shedule: poly\n")
    with pytest.raises(ConfigError) as err:
        load_config(bad)
    assert "bad.yaml" in str(err.value) and "schedule.lr_shedule" in str(err.value)


# ----------------------------------------------------------------------------------------------------------
# 12. A split that leaves no labeled data
# ----------------------------------------------------------------------------------------------------------


def test_a_split_that_leaves_no_labeled_data(tmp_path):
    _folder_with_masks(tmp_path, {f"c{i}": np.eye(8, dtype=np.uint8) for i in range(6)})
    with pytest.raises(ConfigError, match=r"data\.split\.labeled_count=0 leaves no labeled data"):
        load_config(DEMO, ["data.split.labeled_count=0"])
    (tmp_path / "train.list").write_text("c0\nc1\nc2\n")
    (tmp_path / "lab.list").write_text("c4\nc5\n")
    cfg = _split_cfg(tmp_path, train="train.list", labeled="lab.list")
    with pytest.raises(DataError, match=r"lab\.list: labeled ids not in the training pool: \['c4', 'c5'\]"):
        resolve_split(cfg, build_reader(cfg).case_ids())
    (tmp_path / "empty.list").write_text("\n")
    cfg = _split_cfg(tmp_path, train="empty.list")
    with pytest.raises(DataError, match=r"data\.split leaves no labeled data \(training pool of 0 cases"):
        resolve_split(cfg, build_reader(cfg).case_ids())
    (tmp_path / "val.list").write_text("\n".join(f"c{i}" for i in range(6)) + "\n")
    cfg = _split_cfg(tmp_path, val="val.list")  # everything held out for validation
    with pytest.raises(DataError, match=r"leaves no labeled data"):
        resolve_split(cfg, build_reader(cfg).case_ids())


# ----------------------------------------------------------------------------------------------------------
# Nothing computed is lost: a bad case mid-precompute, a bad file met when resuming
# ----------------------------------------------------------------------------------------------------------


def test_a_bad_case_mid_precompute_keeps_the_finished_cases(phantom_root, tmp_path, tiny_teacher):
    from semisam.teacher import precompute as pc

    root = _copy_phantom(phantom_root, tmp_path)
    cfg = load_config(
        DEMO,
        [
            *tiny_overrides(root, tmp_path / "run"),
            f"teacher.cache_dir={tmp_path / 'cache'}",
            "teacher.everything.points_per_side=4",
            "teacher.everything.pred_iou_thresh=0.0",
            "teacher.everything.stability_score_thresh=0.0",
        ],
    )
    split = resolve_split(cfg.data, build_reader(cfg.data).case_ids())
    bad = root / "images" / f"{split.test[-1]}.png"  # the last case of the precompute's order
    good_bytes = bad.read_bytes()
    _cut_in_half(bad)
    with pytest.raises(DataError, match=rf"{bad.name}: cannot read image"):
        pc.precompute(cfg, teacher=tiny_teacher, progress=False)
    priors_dir = cache_root(cfg) / "priors"
    done = {p.name: p.stat().st_mtime_ns for p in priors_dir.glob("*.npy")}
    total = len(split.labeled) + len(split.unlabeled) + len(split.val) + len(split.test)
    assert total >= 20 and len(done) == total - 1  # every case before the bad one is cached
    assert not [p for p in priors_dir.iterdir() if p.name.startswith(".")]

    bad.write_bytes(good_bytes)  # fixed: the rerun computes only the missing case
    report = pc.precompute(cfg, teacher=tiny_teacher, progress=False)
    assert report.computed == [split.test[-1]] and report.skipped == total - 1
    assert all(priors_dir.joinpath(name).stat().st_mtime_ns == mtime for name, mtime in done.items())


def test_a_bad_file_met_when_resuming_leaves_the_checkpoints_intact(phantom_root, tmp_path):
    from semisam.engine.trainer import Trainer

    root = _copy_phantom(phantom_root, tmp_path)
    overrides = tiny_overrides(root, tmp_path / "run", **{"method.name": "supervised", "deterministic": "true"})
    Trainer(load_config(DEMO, overrides), progress=False).fit(stop_at=3)
    ckpts = tmp_path / "run" / "checkpoints"
    before = {p.name: p.read_bytes() for p in ckpts.iterdir()}
    cfg = load_config(DEMO, overrides)
    split = resolve_split(cfg.data, build_reader(cfg.data).case_ids())
    bad = root / "images" / f"{split.labeled[0]}.png"
    good_bytes = bad.read_bytes()
    for case in split.labeled:  # every labeled image: the resumed run meets one at its first batch
        _cut_in_half(root / "images" / f"{case}.png")
    with pytest.raises(DataError, match=r"\.png: cannot read image"):
        Trainer(cfg, progress=False).fit()
    assert {p.name: p.read_bytes() for p in ckpts.iterdir()} == before

    # the tool says the same in one line with exit status 2
    proc = run_train_tool(DEMO, overrides)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "DataError" in proc.stderr and "cannot read image" in proc.stderr and "Traceback" not in proc.stderr
    assert {p.name: p.read_bytes() for p in ckpts.iterdir()} == before

    for case in split.labeled:
        shutil.copyfile(phantom_root / "images" / f"{case}.png", root / "images" / f"{case}.png")
    assert bad.read_bytes() == good_bytes
    result = Trainer(load_config(DEMO, overrides), progress=False).fit()
    assert result.iterations == 6


# ----------------------------------------------------------------------------------------------------------
# Safe loading
# ----------------------------------------------------------------------------------------------------------


def _calls(tree: ast.AST):
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            owner = node.func.value
            name = owner.id if isinstance(owner, ast.Name) else getattr(owner, "attr", "")
            yield node, f"{name}.{node.func.attr}", {k.arg: k.value for k in node.keywords}


def test_every_load_in_the_package_and_tools_is_safe():
    """torch.load only with weights_only=True, np.load only with allow_pickle=False, no pickle/yaml.load."""
    problems = []
    for path in sorted([*(REPO / "semisam").rglob("*.py"), *(REPO / "tools").glob("*.py")]):
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import | ast.ImportFrom):
                names = [a.name for a in node.names] + ([node.module] if isinstance(node, ast.ImportFrom) else [])
                if any(n and n.split(".")[0] in ("pickle", "dill", "cloudpickle", "joblib") for n in names):
                    problems.append(f"{path}:{node.lineno}: imports a pickle module")
        for node, call, keywords in _calls(tree):
            where = f"{path}:{node.lineno}: {call}"
            if call == "torch.load":
                flag = keywords.get("weights_only")
                if not (isinstance(flag, ast.Constant) and flag.value is True):
                    problems.append(f"{where} without weights_only=True")
            elif call in ("np.load", "numpy.load"):
                flag = keywords.get("allow_pickle")
                if not (isinstance(flag, ast.Constant) and flag.value is False):
                    problems.append(f"{where} without allow_pickle=False")
            elif call in ("yaml.load", "yaml.unsafe_load", "yaml.full_load", "torch.jit.load", "jit.load"):
                problems.append(f"{where}: not a safe loader")
    assert not problems, "\n".join(problems)


def test_a_checkpoint_with_a_pickled_object_is_refused_without_running_it(tmp_path):
    from semisam.evaluation.runner import evaluate_checkpoint

    marker = tmp_path / "executed"

    class Payload:
        def __reduce__(self):
            return (Path.touch, (marker,))

    path = tmp_path / "run" / "checkpoints" / "best.pt"
    path.parent.mkdir(parents=True)
    torch.save({"model": {}, "config": {}, "payload": Payload()}, path)
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(path)
    assert str(path) in str(err.value) and "cannot be loaded as a semisam checkpoint" in str(err.value)
    with pytest.raises(CheckpointError, match=r"best\.pt: cannot be loaded"):
        evaluate_checkpoint(path, "test", progress=False)
    assert not marker.exists()
