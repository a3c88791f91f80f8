"""The three case readers: shapes, dtypes, orientation, spacing, unlabeled cases, and every DataError."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import tifffile
from PIL import Image

from semisam.config.schema import DataConfig
from semisam.data.errors import DataError
from semisam.data.phantom import make_phantom
from semisam.data.readers import FolderReader, NnUNetReader, SSL4MISH5Reader, build_reader

from .conftest import write_h5, write_png


def _cfg(root: Path, fmt: str, **kw) -> DataConfig:
    kw.setdefault("num_classes", 4)
    return DataConfig(name="test", format=fmt, root=str(root), **kw)


def _truncate(path: Path, keep: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


# ----------------------------------------------------------------------------------------------------------
# Folder
# ----------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def phantom_folder(tmp_path_factory) -> Path:
    return make_phantom(tmp_path_factory.mktemp("folder"), num_cases=4, size=32, layout="folder", num_val=1, num_test=1)


def test_folder_reads_phantom_as_stored(phantom_folder):
    reader = build_reader(_cfg(phantom_folder, "folder"))
    assert isinstance(reader, FolderReader)
    assert reader.case_ids() == ["case_000", "case_001", "case_002", "case_003"]
    image, label = reader.read_image("case_001"), reader.read_label("case_001")
    assert image.shape == (1, 32, 32) and image.dtype == np.float32
    assert label.shape == (32, 32) and label.dtype == np.int64
    stored = np.asarray(Image.open(phantom_folder / "images" / "case_001.png"))
    np.testing.assert_array_equal(image[0], stored.astype(np.float32))  # values as stored, 0..255
    assert set(np.unique(label)) == {0, 1, 2, 3}
    assert reader.num_slices("case_001") is None and reader.spacing("case_001") is None


def test_folder_rgb_gray_alpha_and_channel_conversion(tmp_path):
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (5, 7, 3), dtype=np.uint8)
    write_png(tmp_path / "images" / "rgb.png", rgb)
    write_png(tmp_path / "images" / "rgba.png", np.dstack([rgb, np.full((5, 7), 9, np.uint8)]))
    gray = rng.integers(0, 256, (5, 7), dtype=np.uint8)
    write_png(tmp_path / "images" / "gray.png", gray)

    three = build_reader(_cfg(tmp_path, "folder", in_channels=3))
    np.testing.assert_array_equal(three.read_image("rgb"), rgb.transpose(2, 0, 1).astype(np.float32))
    np.testing.assert_array_equal(three.read_image("rgba"), rgb.transpose(2, 0, 1).astype(np.float32))
    replicated = three.read_image("gray")
    assert replicated.shape == (3, 5, 7)
    for c in range(3):
        np.testing.assert_array_equal(replicated[c], gray.astype(np.float32))

    one = build_reader(_cfg(tmp_path, "folder", in_channels=1))
    luminance = one.read_image("rgb")
    assert luminance.shape == (1, 5, 7) and luminance.dtype == np.float32
    expected = 0.299 * rgb[..., 0] + 0.587 * rgb[..., 1] + 0.114 * rgb[..., 2]
    np.testing.assert_allclose(luminance[0], expected, atol=1e-3)
    # PIL's own "L" conversion rounds the same luminance.
    pil_l = np.asarray(Image.fromarray(rgb).convert("L")).astype(np.float32)
    assert np.abs(luminance[0] - pil_l).max() <= 1.0

    with pytest.raises(DataError, match=r"rgb\.png.*3 channel.*in_channels=2"):
        build_reader(_cfg(tmp_path, "folder", in_channels=2)).read_image("rgb")


def test_folder_labels_threshold_first_channel_and_classes(tmp_path):
    write_png(tmp_path / "images" / "a.png", np.zeros((4, 6), np.uint8) + 7)
    mask = np.zeros((4, 6), np.uint8)
    mask[1:3, 2:5] = 255
    write_png(tmp_path / "masks" / "a.png", mask)
    kvasir_like = build_reader(_cfg(tmp_path, "folder", num_classes=2, label_threshold=127))
    np.testing.assert_array_equal(kvasir_like.read_label("a"), (mask > 127).astype(np.int64))

    # An RGB mask: the first channel is the label.
    rgb_mask = np.dstack([mask // 255 * 3, np.full((4, 6), 200, np.uint8), np.zeros((4, 6), np.uint8)])
    write_png(tmp_path / "masks" / "a.png", rgb_mask)
    label = build_reader(_cfg(tmp_path, "folder")).read_label("a")
    assert label.dtype == np.int64
    np.testing.assert_array_equal(label, rgb_mask[..., 0])


def test_folder_unlabeled_image_needs_no_label_file(tmp_path):
    write_png(tmp_path / "images" / "u1.png", np.arange(12, dtype=np.uint8).reshape(3, 4))
    reader = build_reader(_cfg(tmp_path, "folder"))
    assert not (tmp_path / "masks").exists()
    assert reader.read_image("u1").shape == (1, 3, 4)
    with pytest.raises(DataError, match=r"masks/u1\.png.*not found"):
        reader.read_label("u1")
    # read_image never opens the label: a corrupt label file does not disturb it.
    (tmp_path / "masks").mkdir()
    (tmp_path / "masks" / "u1.png").write_bytes(b"not a png")
    assert reader.read_image("u1").shape == (1, 3, 4)
    with pytest.raises(DataError, match=r"u1\.png.*cannot read"):
        reader.read_label("u1")


def test_folder_duplicate_stems_and_suffixes(tmp_path):
    write_png(tmp_path / "images" / "a.png", np.zeros((4, 4), np.uint8))
    write_png(tmp_path / "images" / "b.png", np.zeros((4, 4), np.uint8))
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(tmp_path / "images" / "a.jpg")
    (tmp_path / "images" / "notes.txt").write_text("ignored")
    with pytest.raises(DataError, match=r"images.*id 'a'.*a\.jpg.*a\.png"):
        build_reader(_cfg(tmp_path, "folder")).case_ids()
    assert build_reader(_cfg(tmp_path, "folder", image_suffix=".png")).case_ids() == ["a", "b"]
    assert build_reader(_cfg(tmp_path, "folder", image_suffix=".jpg")).case_ids() == ["a"]


def test_folder_custom_suffixes(tmp_path):
    write_png(tmp_path / "img" / "c1_img.png", np.full((3, 3), 5, np.uint8))
    write_png(tmp_path / "lab" / "c1_seg.png", np.eye(3, dtype=np.uint8))
    cfg = _cfg(tmp_path, "folder", image_dir="img", label_dir="lab", image_suffix="_img.png", label_suffix="_seg.png")
    reader = build_reader(cfg)
    assert reader.case_ids() == ["c1"]
    np.testing.assert_array_equal(reader.read_label("c1"), np.eye(3, dtype=np.int64))


def test_folder_tiff_read_with_tifffile_when_pil_cannot(tmp_path):
    data = np.random.default_rng(1).normal(size=(5, 6, 3)).astype(np.float32)  # RGB float32: not PIL's
    (tmp_path / "images").mkdir()
    tifffile.imwrite(tmp_path / "images" / "t.tif", data)
    image = build_reader(_cfg(tmp_path, "folder", in_channels=3)).read_image("t")
    np.testing.assert_array_equal(image, data.transpose(2, 0, 1))


def test_folder_errors(tmp_path, caplog):
    rng = np.random.default_rng(2)
    write_png(tmp_path / "images" / "trunc.png", rng.integers(0, 256, (64, 64), dtype=np.uint8))
    _truncate(tmp_path / "images" / "trunc.png")
    write_png(tmp_path / "images" / "big.png", np.zeros((8, 9), np.uint8))
    write_png(tmp_path / "masks" / "big.png", np.zeros((9, 8), np.uint8))
    write_png(tmp_path / "images" / "range.png", np.zeros((4, 4), np.uint8))
    write_png(tmp_path / "masks" / "range.png", np.array([[0, 1], [5, 255]], np.uint8).repeat(2, 0).repeat(2, 1))
    tifffile.imwrite(tmp_path / "images" / "nan.tif", np.array([[1.0, np.nan], [2.0, 3.0]], np.float32))
    tifffile.imwrite(tmp_path / "images" / "allnan.tif", np.full((2, 2), np.nan, np.float32))
    tifffile.imwrite(tmp_path / "images" / "flat.tif", np.full((2, 2), 4.0, np.float32))
    reader = build_reader(_cfg(tmp_path, "folder"))

    with pytest.raises(DataError, match=r"trunc\.png.*cannot read image"):
        reader.read_image("trunc")
    with pytest.raises(DataError, match=r"masks/big\.png.*9x8.*big\.png.*8x9"):
        reader.read_label("big")
    with pytest.raises(DataError, match=r"masks/range\.png.*values \[5, 255\].*outside \[0, 4\)"):
        reader.read_label("range")
    with pytest.raises(DataError, match=r"nan\.tif.*1 NaN/inf"):
        reader.read_image("nan")
    with pytest.raises(DataError, match=r"allnan\.tif.*entirely NaN"):
        reader.read_image("allnan")
    with caplog.at_level(logging.WARNING, logger="semisam"):
        np.testing.assert_array_equal(reader.read_image("flat"), np.full((1, 2, 2), 4.0, np.float32))
    assert any("flat.tif" in r.getMessage() and "constant" in r.getMessage() for r in caplog.records)
    with pytest.raises(DataError, match=r"no case 'nope'"):
        reader.read_image("nope")
    (tmp_path / "images" / "big.png").unlink()
    with pytest.raises(DataError, match=r"big\.png.*not found"):
        reader.read_image("big")
    with pytest.raises(DataError, match=r"elsewhere.*image folder not found"):
        build_reader(_cfg(tmp_path, "folder", image_dir="elsewhere")).case_ids()


# ----------------------------------------------------------------------------------------------------------
# nnU-Net raw
# ----------------------------------------------------------------------------------------------------------


def _dataset_json(root: Path, channels: int = 1, num_classes: int = 4, **extra) -> None:
    root.mkdir(parents=True, exist_ok=True)
    meta = {
        "channel_names": {str(c): f"ch{c}" for c in range(channels)},
        "labels": {"background": 0, **{f"c{k}": k for k in range(1, num_classes)}},
        "file_ending": ".nii.gz",
        **extra,
    }
    (root / "dataset.json").write_text(json.dumps(meta))


def _nifti(path: Path, array: np.ndarray, zooms=(1.0, 1.0, 1.0)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(array, np.diag([*zooms, 1.0])), path)
    return path


def _pattern(shape=(5, 6, 7)) -> np.ndarray:
    x, y, z = np.meshgrid(*[np.arange(n) for n in shape], indexing="ij")
    return (100 * x + 10 * y + z).astype(np.float32)  # every voxel names its (x, y, z)


@pytest.mark.parametrize(
    ("axis", "shape", "spacing"),
    [(2, (7, 5, 6), (2.0, 0.5, 0.7)), (0, (5, 6, 7), (0.5, 0.7, 2.0)), (1, (6, 5, 7), (0.7, 0.5, 2.0))],
)
def test_nnunet_orientation_and_spacing(tmp_path, axis, shape, spacing):
    _dataset_json(tmp_path, num_classes=3, numTraining=1)
    volume = _pattern()
    label = (volume.astype(np.int64) % 3).astype(np.uint8)
    _nifti(tmp_path / "imagesTr" / "vol_0000.nii.gz", volume, zooms=(0.5, 0.7, 2.0))
    _nifti(tmp_path / "labelsTr" / "vol.nii.gz", label, zooms=(0.5, 0.7, 2.0))
    reader = build_reader(_cfg(tmp_path, "nnunet", num_classes=3, slice_axis=axis))
    assert isinstance(reader, NnUNetReader)
    image = reader.read_image("vol")
    assert image.shape == (1, *shape) and image.dtype == np.float32
    assert reader.num_slices("vol") == shape[0]
    assert reader.spacing("vol") == pytest.approx(spacing)
    # Slice k is the volume cut at index k of the slicing axis; the other two axes keep their order.
    for k in range(shape[0]):
        np.testing.assert_array_equal(image[0, k], np.take(volume, k, axis=axis))
    lab = reader.read_label("vol")
    assert lab.dtype == np.int64 and lab.shape == shape
    np.testing.assert_array_equal(lab, np.moveaxis(label, axis, 0))
    x, y, z = 4, 1, 3  # one asymmetric spot, checked explicitly for the default axis
    if axis == 2:
        assert image[0, z, x, y] == 100 * x + 10 * y + z


def test_nnunet_channels_stack_in_order_and_test_cases_are_listed(tmp_path):
    _dataset_json(tmp_path, channels=2)
    base = _pattern((4, 5, 3))
    _nifti(tmp_path / "imagesTr" / "a_0000.nii.gz", base)
    _nifti(tmp_path / "imagesTr" / "a_0001.nii.gz", -base - 1)
    _nifti(tmp_path / "imagesTs" / "b_0000.nii.gz", base)
    _nifti(tmp_path / "imagesTs" / "b_0001.nii.gz", base * 2)
    _nifti(tmp_path / "labelsTs" / "b.nii.gz", np.ones((4, 5, 3), np.uint8))
    reader = build_reader(_cfg(tmp_path, "nnunet", in_channels=2))
    assert reader.case_ids() == ["a", "b"]
    image = reader.read_image("a")
    assert image.shape == (2, 3, 4, 5)
    np.testing.assert_array_equal(image[1], -image[0] - 1)
    np.testing.assert_array_equal(reader.read_label("b"), np.ones((3, 4, 5), np.int64))
    # "a" is unlabeled (no labelsTr/a.nii.gz): its image reads, its label is a clear error.
    with pytest.raises(DataError, match=r"labelsTr/a\.nii\.gz.*not found"):
        reader.read_label("a")


def test_nnunet_2d_nifti_is_a_one_slice_volume(tmp_path):
    _dataset_json(tmp_path)
    plane = np.arange(20, dtype=np.float32).reshape(4, 5)
    _nifti(tmp_path / "imagesTr" / "p_0000.nii.gz", plane, zooms=(0.8, 0.9, 1.0))
    _nifti(tmp_path / "labelsTr" / "p.nii.gz", (plane > 10).astype(np.uint8))
    reader = build_reader(_cfg(tmp_path, "nnunet"))
    assert reader.num_slices("p") == 1
    np.testing.assert_array_equal(reader.read_image("p"), plane[None, None])
    assert reader.read_label("p").shape == (1, 4, 5)
    assert reader.spacing("p") == pytest.approx((1.0, 0.8, 0.9))


def test_nnunet_phantom(tmp_path):
    root = make_phantom(tmp_path, num_cases=3, size=32, layout="nnunet", num_val=1, num_test=1)
    reader = build_reader(_cfg(root, "nnunet"))
    assert reader.case_ids() == ["case_000", "case_001", "case_002"]  # case_002 lives in imagesTs
    for case in reader.case_ids():
        image, label = reader.read_image(case), reader.read_label(case)
        d = reader.num_slices(case)
        assert 3 <= d <= 5 and image.shape == (1, d, 32, 32) and label.shape == (d, 32, 32)
        assert reader.spacing(case) == pytest.approx((8.0, 1.5, 1.5))
        assert set(np.unique(label[0])) == {0, 1, 2, 3}  # the base slice shows every structure


def test_nnunet_errors(tmp_path):
    with pytest.raises(DataError, match=r"dataset\.json.*not found"):
        build_reader(_cfg(tmp_path, "nnunet"))
    _dataset_json(tmp_path, channels=2)
    with pytest.raises(DataError, match=r"dataset\.json.*2 channel.*in_channels=1"):
        build_reader(_cfg(tmp_path, "nnunet"))
    _dataset_json(tmp_path, num_classes=3)
    with pytest.raises(DataError, match=r"dataset\.json.*3 classes.*num_classes=4"):
        build_reader(_cfg(tmp_path, "nnunet"))
    _dataset_json(tmp_path)

    volume = _pattern((6, 6, 4))
    _nifti(tmp_path / "imagesTr" / "ok_0000.nii.gz", volume)
    _nifti(tmp_path / "labelsTr" / "ok.nii.gz", np.zeros((6, 5, 4), np.uint8))  # wrong size
    _nifti(tmp_path / "imagesTr" / "range_0000.nii.gz", volume)
    bad = np.zeros((6, 6, 4), np.uint8)
    bad[0, 0, 0], bad[1, 1, 1] = 4, 9
    _nifti(tmp_path / "labelsTr" / "range.nii.gz", bad)
    _nifti(tmp_path / "imagesTr" / "frac_0000.nii.gz", volume)
    _nifti(tmp_path / "labelsTr" / "frac.nii.gz", np.full((6, 6, 4), 0.5, np.float32))
    nan = volume.copy()
    nan[2, 2, 2] = np.inf
    _nifti(tmp_path / "imagesTr" / "nan_0000.nii.gz", nan)
    big = np.random.default_rng(0).normal(size=(40, 40, 10)).astype(np.float32)
    trunc = _nifti(tmp_path / "imagesTr" / "trunc_0000.nii.gz", big)
    _truncate(trunc)
    reader = build_reader(_cfg(tmp_path, "nnunet"))

    with pytest.raises(DataError, match=r"labelsTr/ok\.nii\.gz.*\(6, 5, 4\).*ok_0000\.nii\.gz.*\(6, 6, 4\)"):
        reader.read_label("ok")
    with pytest.raises(DataError, match=r"labelsTr/range\.nii\.gz.*values \[4, 9\]"):
        reader.read_label("range")
    with pytest.raises(DataError, match=r"labelsTr/frac\.nii\.gz.*non-integer"):
        reader.read_label("frac")
    with pytest.raises(DataError, match=r"nan_0000\.nii\.gz.*NaN/inf"):
        reader.read_image("nan")
    # A truncated file: the header still answers num_slices (no voxel data is read), the data is an error.
    assert reader.num_slices("trunc") == 10
    with pytest.raises(DataError, match=r"trunc_0000\.nii\.gz.*cannot read voxel data"):
        reader.read_image("trunc")

    # A case missing a channel file, and a case in both imagesTr and imagesTs.
    _dataset_json(tmp_path, channels=2)
    with pytest.raises(DataError, match=r"imagesTr.*'frac'.*frac_0001\.nii\.gz"):
        build_reader(_cfg(tmp_path, "nnunet", in_channels=2)).case_ids()
    _dataset_json(tmp_path)
    _nifti(tmp_path / "imagesTs" / "ok_0000.nii.gz", volume)
    with pytest.raises(DataError, match=r"'ok' is in both imagesTr and imagesTs"):
        build_reader(_cfg(tmp_path, "nnunet")).case_ids()


# ----------------------------------------------------------------------------------------------------------
# SSL4MIS h5
# ----------------------------------------------------------------------------------------------------------


def test_h5_phantom_slices_and_volumes(tmp_path):
    root = make_phantom(tmp_path, num_cases=3, size=32, layout="ssl4mis_h5", num_val=1, num_test=1)
    reader = build_reader(_cfg(root, "ssl4mis_h5"))
    assert isinstance(reader, SSL4MISH5Reader)
    ids = reader.case_ids()
    assert ids == sorted(ids) and "case_001" in ids and "case_000_slice_0" in ids
    image, label = reader.read_image("case_000_slice_0"), reader.read_label("case_000_slice_0")
    assert image.shape == (1, 32, 32) and image.dtype == np.float32 and 0 <= image.min() <= image.max() <= 1
    assert label.shape == (32, 32) and label.dtype == np.int64
    assert reader.num_slices("case_000_slice_0") is None
    d = reader.num_slices("case_001")
    assert reader.read_image("case_001").shape == (1, d, 32, 32)
    assert reader.read_label("case_001").shape == (d, 32, 32)
    assert reader.spacing("case_001") is None


def test_h5_reads_only_the_key_it_needs(tmp_path):
    image = np.linspace(0, 1, 12, dtype=np.float32).reshape(3, 4)
    write_h5(tmp_path / "data" / "unlab.h5", image=image)  # an unlabeled slice: no label dataset
    reader = build_reader(_cfg(tmp_path, "ssl4mis_h5"))
    np.testing.assert_array_equal(reader.read_image("unlab"), image[None])
    with pytest.raises(DataError, match=r"unlab\.h5.*no dataset 'label'"):
        reader.read_label("unlab")
    replicated = build_reader(_cfg(tmp_path, "ssl4mis_h5", in_channels=3)).read_image("unlab")
    assert replicated.shape == (3, 3, 4)


def test_h5_errors(tmp_path):
    write_h5(tmp_path / "data" / "size.h5", image=np.ones((4, 5), np.float32), label=np.zeros((5, 4), np.uint8))
    write_h5(
        tmp_path / "data" / "range.h5",
        image=np.ones((2, 2), np.float32),
        label=np.array([[0, 7], [1, 2]], np.uint8),
    )
    write_h5(tmp_path / "data" / "nan.h5", image=np.array([[0, np.nan], [1, 2]], np.float32))
    write_h5(tmp_path / "data" / "allnan.h5", image=np.full((2, 2), np.nan, np.float32))
    big = np.random.default_rng(0).normal(size=(64, 64)).astype(np.float32)
    _truncate(write_h5(tmp_path / "data" / "trunc.h5", image=big, label=np.zeros((64, 64), np.uint8)))
    reader = build_reader(_cfg(tmp_path, "ssl4mis_h5"))
    with pytest.raises(DataError, match=r"size\.h5.*label shape \(5, 4\).*image shape \(4, 5\)"):
        reader.read_label("size")
    with pytest.raises(DataError, match=r"range\.h5.*values \[7\]"):
        reader.read_label("range")
    with pytest.raises(DataError, match=r"nan\.h5.*1 NaN/inf"):
        reader.read_image("nan")
    with pytest.raises(DataError, match=r"allnan\.h5.*entirely NaN"):
        reader.read_image("allnan")
    with pytest.raises(DataError, match=r"trunc\.h5.*cannot open h5 file"):
        reader.read_image("trunc")
    with pytest.raises(DataError, match=r"range\.h5.*1 channel.*in_channels=2"):
        build_reader(_cfg(tmp_path, "ssl4mis_h5", in_channels=2)).read_image("range")
    (tmp_path / "data" / "size.h5").unlink()
    with pytest.raises(DataError, match=r"size\.h5.*not found"):
        reader.read_image("size")
    with pytest.raises(DataError, match=r"data\.format='dicom'"):
        build_reader(_cfg(tmp_path, "dicom"))


# ----------------------------------------------------------------------------------------------------------
# Real data
# ----------------------------------------------------------------------------------------------------------


def test_real_acdc_slice_and_volume(acdc_root):
    reader = build_reader(_cfg(acdc_root, "ssl4mis_h5", modality="none"))
    ids = reader.case_ids()
    assert len(ids) == 1372  # 1,312 training slices + 60 val/test volumes
    image, label = (
        reader.read_image("patient099_frame01_slice_15"),
        reader.read_label("patient099_frame01_slice_15"),
    )
    assert image.shape == (1, 224, 154) and image.dtype == np.float32 and 0 <= image.min() < image.max() <= 1
    assert label.shape == (224, 154) and label.dtype == np.int64 and set(np.unique(label)) <= {0, 1, 2, 3}
    assert reader.num_slices("patient099_frame01_slice_15") is None
    assert reader.num_slices("patient028_frame01") == 10
    volume, vlabel = reader.read_image("patient028_frame01"), reader.read_label("patient028_frame01")
    assert volume.shape == (1, 10, 256, 224) and vlabel.shape == (10, 256, 224)
    assert set(np.unique(vlabel)) == {0, 1, 2, 3}


def test_real_kvasir_image_and_mask(kvasir_root):
    cfg = _cfg(
        kvasir_root,
        "folder",
        num_classes=2,
        in_channels=3,
        modality="rgb",
        label_threshold=127,
    )
    reader = build_reader(cfg)
    case = json.loads((kvasir_root / "splits.json").read_text())["train"][0]
    assert len(reader.case_ids()) == 998
    image, label = reader.read_image(case), reader.read_label(case)
    assert image.shape == (3, 256, 256) and image.dtype == np.float32 and image.max() > 100
    assert label.shape == (256, 256) and label.dtype == np.int64
    assert set(np.unique(label)) == {0, 1} and 0 < label.mean() < 0.9
