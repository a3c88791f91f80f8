"""A seeded synthetic cardiac-like data set, written in any of the three on-disk layouts semisam reads.

Each slice shows a short-axis "heart" inside a "body": class 3 (left ventricle) is a bright elliptical disk,
class 2 (myocardium) a darker ring around it, class 1 (right ventricle) a bright crescent hugging the ring on
one side; everything else is class 0 (background). Position, radii, elongation, rotation and per-class
intensities vary per case; a smooth multiplicative bias field, partial-volume blur, Gaussian noise, and bright
or dark clutter blobs in the background make the task non-trivial (intensity alone does not separate the
blood pools from the clutter), yet a small U-Net learns it in a few hundred iterations at 64x64.

Cases are drawn from ``numpy.random.default_rng([seed, case_index])``, so a case does not depend on how many
others are made, and the same arguments give identical arrays.

Layouts (case ids ``case_000``, ``case_001``, ...; the first ``num_cases - num_val - num_test`` train, then
val, then test):

- ``folder``: 2D cases; ``images/<id>.png`` (8-bit grayscale, 0..255), ``masks/<id>.png`` (class indices
  0..3), ``splits.json`` with ``train`` / ``val`` / ``test`` lists.
- ``nnunet``: 3D cases of 3-5 slices; nnU-Net v2 raw layout with ``dataset.json``; train and val cases in
  ``imagesTr/`` + ``labelsTr/``, test cases in ``imagesTs/`` + ``labelsTs/``; ``.nii.gz`` arrays ``(X, Y, Z)``
  (slices along Z, int16 intensities 0..1000), voxel spacing :data:`PHANTOM_SPACING` mm; ``splits.json`` as
  above.
- ``ssl4mis_h5``: 3D cases stored as SSL4MIS stores ACDC: train cases as 2D slice files
  ``data/<id>_slice_<k>.h5``, val/test cases as volume files ``data/<id>.h5`` (``image`` float32 0..1
  ``(D, H, W)``, ``label`` uint8), with ``train_slices.list``, ``val.list``, ``test.list``.

A ``phantom.json`` manifest (written last) records the arguments; calling :func:`make_phantom` again with the
same arguments on a complete phantom returns at once.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import h5py
import nibabel as nib
import numpy as np
from PIL import Image
from scipy.ndimage import gaussian_filter

logger = logging.getLogger("semisam")

CLASS_NAMES = ["background", "right_ventricle", "myocardium", "left_ventricle"]
LAYOUTS = ("folder", "nnunet", "ssl4mis_h5")
#: Voxel spacing (mm) of the ``nnunet`` layout, for the NIfTI axes (X, Y, Z).
PHANTOM_SPACING = (1.5, 1.5, 8.0)
MANIFEST = "phantom.json"
_GENERATOR_VERSION = 1  # bump when the drawing changes, so that cached phantoms are rebuilt
_LABELED_FRACTION = 0.25


# ----------------------------------------------------------------------------------------------------------
# Drawing
# ----------------------------------------------------------------------------------------------------------


def _ellipse(yy: np.ndarray, xx: np.ndarray, cy: float, cx: float, ry: float, rx: float, angle: float) -> np.ndarray:
    """Normalised squared radius of a rotated ellipse: <= 1 inside."""
    c, s = np.cos(angle), np.sin(angle)
    u = (xx - cx) * c + (yy - cy) * s
    v = -(xx - cx) * s + (yy - cy) * c
    return (u / rx) ** 2 + (v / ry) ** 2


def _draw_case(rng: np.random.Generator, size: int, num_slices: int | None) -> tuple[np.ndarray, np.ndarray]:
    """One case: image float32 in [0, 1] and label uint8 in 0..3, each ``(H, W)`` (``num_slices=None``) or
    ``(D, H, W)`` (base to apex: the heart shrinks and the right ventricle ends before the apex)."""
    u = rng.uniform
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    # Anatomy, in pixels.
    cy, cx = size * (0.5 + u(-0.12, 0.12)), size * (0.5 + u(-0.12, 0.12))
    r_lv, thickness = size * u(0.09, 0.14), size * u(0.045, 0.07)
    elong, angle = np.sqrt(u(0.75, 1.3)), u(0, np.pi)
    rv_dir, rv_along, rv_across = u(0, 2 * np.pi), u(0.75, 0.95), u(1.2, 1.5)
    body_r = size * np.array([u(0.40, 0.47), u(0.40, 0.47)])
    # Appearance, in [0, 1].
    level = {
        "outside": u(0.0, 0.05),
        "tissue": u(0.15, 0.3),
        1: u(0.6, 0.85),
        2: u(0.32, 0.48),
        3: u(0.7, 0.95),
    }
    noise_std, blur = u(0.03, 0.06), u(0.5, 0.9)
    bias = u(-0.15, 0.15, size=3)
    blobs = []
    for _ in range(int(rng.integers(3, 7))):
        for _attempt in range(20):  # a blob away from the heart, inside the body
            by, bx = size * u(0.15, 0.85), size * u(0.15, 0.85)
            if np.hypot(by - cy, bx - cx) > 2.3 * (r_lv + thickness):
                break
        blobs.append((by, bx, size * u(0.03, 0.08), size * u(0.03, 0.08), u(0, np.pi), u(0.3, 0.95)))

    scales = [u(0.75, 1.05)] if num_slices is None else np.linspace(1.0, 0.55, num_slices) * u(0.9, 1.05)
    gy, gx = np.linspace(-1, 1, size, dtype=np.float32)[:, None], np.linspace(-1, 1, size, dtype=np.float32)
    field = 1.0 + bias[0] * gx + bias[1] * gy + bias[2] * gx * gy
    images, labels = [], []
    for scale in scales:
        # Slices drift a little through the volume.
        sy, sx = cy + u(-1.0, 1.0), cx + u(-1.0, 1.0)
        r_in, r_out = r_lv * scale, r_lv * scale + thickness * (0.5 + 0.5 * scale)
        lv = _ellipse(yy, xx, sy, sx, r_in / elong, r_in * elong, angle) <= 1
        epi = _ellipse(yy, xx, sy, sx, r_out / elong, r_out * elong, angle) <= 1
        label = np.zeros((size, size), np.uint8)
        if scale > 0.6:
            ry, rx = r_out * np.array([rv_across, rv_along])
            oy, ox = sy + 0.8 * r_out * np.sin(rv_dir), sx + 0.8 * r_out * np.cos(rv_dir)
            label[(_ellipse(yy, xx, oy, ox, ry, rx, rv_dir) <= 1) & ~epi] = 1
        label[epi & ~lv] = 2
        label[lv] = 3

        image = np.full((size, size), level["outside"], np.float32)
        image[_ellipse(yy, xx, size / 2, size / 2, body_r[0], body_r[1], 0.0) <= 1] = level["tissue"]
        for by, bx, bry, brx, bangle, bvalue in blobs:
            image[(_ellipse(yy, xx, by, bx, bry, brx, bangle) <= 1) & (label == 0)] = bvalue
        for cls in (1, 2, 3):
            image[label == cls] = level[cls]
        image = gaussian_filter(image, blur) * field
        image = image + rng.normal(0.0, noise_std, image.shape).astype(np.float32)
        images.append(np.clip(image, 0.0, 1.0).astype(np.float32))
        labels.append(label)
    if num_slices is None:
        return images[0], labels[0]
    return np.stack(images), np.stack(labels)


# ----------------------------------------------------------------------------------------------------------
# Writing
# ----------------------------------------------------------------------------------------------------------


def _write_png(path: Path, array: np.ndarray) -> None:
    Image.fromarray(array.astype(np.uint8)).save(path)


def _write_h5(path: Path, image: np.ndarray, label: np.ndarray) -> None:
    with h5py.File(path, "w") as f:
        f.create_dataset("image", data=image.astype(np.float32), compression="gzip")
        f.create_dataset("label", data=label.astype(np.uint8), compression="gzip")


def _write_nifti(path: Path, array_xyz: np.ndarray) -> None:
    nifti = nib.Nifti1Image(array_xyz, np.diag([*PHANTOM_SPACING, 1.0]))
    nifti.header.set_xyzt_units("mm")
    nib.save(nifti, path)


def _write_lines(path: Path, lines: list[str]) -> None:
    path.write_text("".join(f"{line}\n" for line in lines), encoding="utf-8")


def make_phantom(
    root: Path,
    num_cases: int = 60,
    size: int = 64,
    seed: int = 0,
    layout: str = "folder",
    num_val: int = 10,
    num_test: int = 10,
) -> Path:
    """Write the phantom data set under ``root`` (created if needed) and return ``root``.

    Args:
        root: output folder.
        num_cases: total number of cases; the first ``num_cases - num_val - num_test`` form the training pool.
        size: height and width of every slice, in pixels (>= 32).
        seed: the seed; the same arguments always give identical arrays.
        layout: ``folder`` | ``nnunet`` | ``ssl4mis_h5`` (see the module docstring).
        num_val, num_test: cases in the validation and test sets.

    Raises:
        ValueError: an unknown layout, ``size < 32``, or no training case left.
    """
    if layout not in LAYOUTS:
        raise ValueError(f"layout={layout!r} is not one of {', '.join(LAYOUTS)}")
    if size < 32:
        raise ValueError(f"size={size} must be >= 32")
    if min(num_val, num_test) < 0 or num_cases - num_val - num_test < 1:
        raise ValueError(f"num_cases={num_cases} leaves no training case after {num_val} val + {num_test} test")
    root = Path(root)
    manifest = {
        "generator_version": _GENERATOR_VERSION,
        "layout": layout,
        "num_cases": num_cases,
        "size": size,
        "seed": seed,
        "num_val": num_val,
        "num_test": num_test,
    }
    if _already_made(root, manifest):
        logger.info("phantom already at %s", root)
        return root

    ids = [f"case_{i:03d}" for i in range(num_cases)]
    num_train = num_cases - num_val - num_test
    subsets = {
        "train": ids[:num_train],
        "val": ids[num_train : num_train + num_val],
        "test": ids[num_train + num_val :],
    }
    _make_folders(root, layout)
    train_slices: list[str] = []
    for index, case_id in enumerate(ids):
        rng = np.random.default_rng([seed, index])
        num_slices = int(rng.integers(3, 6)) if layout != "folder" else None
        image, label = _draw_case(rng, size, num_slices)
        train_slices += _write_case(root, layout, case_id, image, label, subsets)
    _write_index_files(root, layout, subsets, train_slices)
    (root / MANIFEST).write_text(json.dumps(manifest, indent=1), encoding="utf-8")
    logger.info("wrote a %s phantom of %d cases to %s", layout, num_cases, root)
    return root


def _already_made(root: Path, manifest: dict[str, Any]) -> bool:
    """Whether ``root`` holds a complete phantom made with ``manifest``'s arguments. A manifest of another
    phantom (or an unreadable one) is removed, so that every file is rewritten."""
    manifest_path = root / MANIFEST
    if not manifest_path.is_file():
        return False
    try:
        if json.loads(manifest_path.read_text(encoding="utf-8")) == manifest:
            return True
    except ValueError:
        pass
    manifest_path.unlink()  # another phantom (or a broken one): rewrite every file
    return False


def _make_folders(root: Path, layout: str) -> None:
    """``root`` and the folders of ``layout``."""
    root.mkdir(parents=True, exist_ok=True)
    if layout == "folder":
        for sub in ("images", "masks"):
            (root / sub).mkdir(exist_ok=True)
    elif layout == "nnunet":
        for sub in ("imagesTr", "labelsTr", "imagesTs", "labelsTs"):
            (root / sub).mkdir(exist_ok=True)
    else:
        (root / "data").mkdir(exist_ok=True)


def _write_case(
    root: Path, layout: str, case_id: str, image: np.ndarray, label: np.ndarray, subsets: dict[str, list[str]]
) -> list[str]:
    """Write one case (image float32 in [0, 1], label uint8; ``(H, W)`` for ``folder``, ``(D, H, W)``
    otherwise) in ``layout``'s files; returns the names of the slice files it wrote for the ``ssl4mis_h5``
    training list (none for other layouts and held-out cases)."""
    if layout == "folder":
        _write_png(root / "images" / f"{case_id}.png", np.round(image * 255))
        _write_png(root / "masks" / f"{case_id}.png", label)
        return []
    if layout == "nnunet":
        part = "Ts" if case_id in subsets["test"] else "Tr"
        # (D, H, W) -> NIfTI (X, Y, Z) = (H, W, D): slices along Z, read back with data.slice_axis=2.
        _write_nifti(
            root / f"images{part}" / f"{case_id}_0000.nii.gz",
            np.round(np.moveaxis(image, 0, -1) * 1000).astype(np.int16),
        )
        _write_nifti(root / f"labels{part}" / f"{case_id}.nii.gz", np.moveaxis(label, 0, -1).astype(np.uint8))
        return []
    if case_id not in subsets["train"]:
        _write_h5(root / "data" / f"{case_id}.h5", image, label)
        return []
    names = []
    for k in range(image.shape[0]):
        name = f"{case_id}_slice_{k}"
        _write_h5(root / "data" / f"{name}.h5", image[k], label[k])
        names.append(name)
    return names


def _write_index_files(root: Path, layout: str, subsets: dict[str, list[str]], train_slices: list[str]) -> None:
    """The split lists (``splits.json``, or SSL4MIS's ``.list`` files) and nnU-Net's ``dataset.json``."""
    if layout == "ssl4mis_h5":
        _write_lines(root / "train_slices.list", train_slices)
        _write_lines(root / "val.list", subsets["val"])
        _write_lines(root / "test.list", subsets["test"])
    else:
        (root / "splits.json").write_text(json.dumps(subsets, indent=1), encoding="utf-8")
    if layout == "nnunet":
        dataset = {
            "channel_names": {"0": "MRI"},
            "labels": {name: value for value, name in enumerate(CLASS_NAMES)},
            "numTraining": len(subsets["train"]) + len(subsets["val"]),
            "file_ending": ".nii.gz",
            "name": "semisam phantom",
        }
        (root / "dataset.json").write_text(json.dumps(dataset, indent=1), encoding="utf-8")


def phantom_data_config(root: Path, layout: str, labeled_fraction: float = _LABELED_FRACTION) -> dict[str, Any]:
    """The ``data:`` config keys that read a phantom made by :func:`make_phantom`.

    The training pool is the phantom's train set (slices, for ``ssl4mis_h5``), its first ``labeled_fraction``
    labeled and the rest unlabeled; val/test are the phantom's. ``image_size`` is the phantom's slice size
    (from its manifest; 64 when there is none yet).

    Returns:
        A plain dict, mergeable onto :class:`~semisam.config.schema.DataConfig`.
    """
    if layout not in LAYOUTS:
        raise ValueError(f"layout={layout!r} is not one of {', '.join(LAYOUTS)}")
    root = Path(root)
    size = 64
    manifest_path = root / MANIFEST
    if manifest_path.is_file():
        size = int(json.loads(manifest_path.read_text(encoding="utf-8"))["size"])
    if layout == "ssl4mis_h5":
        split: dict[str, Any] = {
            "train": {"file": "train_slices.list"},
            "val": {"file": "val.list"},
            "test": {"file": "test.list"},
        }
    else:
        split = {name: {"file": "splits.json", "key": name} for name in ("train", "val", "test")}
    split["labeled_fraction"] = labeled_fraction
    return {
        "name": f"phantom_{layout}",
        "format": layout,
        "root": str(root),
        "num_classes": len(CLASS_NAMES),
        "class_names": list(CLASS_NAMES),
        "modality": "none" if layout == "ssl4mis_h5" else "mr",
        "in_channels": 1,
        "image_size": [size, size],
        "slice_axis": 2,
        "split": split,
    }
