"""Readers of raw cases: one interface over 2D image folders, the nnU-Net v2 raw layout and SSL4MIS h5 files.

A reader only reads. It does not normalise intensities, resize, or cache voxel data (the dataset layer does
that); it does check that what it returns is usable, and raises :class:`~semisam.data.errors.DataError` naming
the file when it is not.

Conventions shared by every reader:

- images are float32, channel-first: ``(C, H, W)`` for a 2D case, ``(C, D, H, W)`` for a 3D case, where ``D``
  is the slicing axis (the axis along which the volume is cut into 2D training slices) moved first;
- labels are int64 ``(H, W)`` or ``(D, H, W)`` with every value in ``[0, cfg.num_classes)``;
- :meth:`CaseReader.read_image` never opens a label file, so unlabeled cases need none;
- spacing is in millimetres, one value per spatial axis in the order of the returned arrays.

What is an error and what is not (every error is a :class:`DataError` whose message starts with the file):

- unreadable, truncated or garbage files, a missing file, a missing h5 dataset: error;
- an image/label size mismatch, label values outside ``[0, num_classes)`` (checked after
  ``data.label_threshold``), non-integer or NaN labels: error;
- NaN/inf anywhere in an image: error (one NaN poisons the normalisation, the loss and every weight after it);
- a constant image: a **warning** (once per file per process), not an error. It is not corrupt, just without
  signal: blank slices and frames occur in real data and nnU-Net trains on them; intensity normalisation maps
  it to zeros (see :func:`~semisam.data.transforms.normalize_intensity`). Failing a whole data set over one
  blank image would be worse than training on it;
- a label without foreground: fine per case (ACDC has 43 such slices); a labeled split whose labels are *all*
  background is an error, raised by :func:`~semisam.data.dataset.check_labeled_cases` before training.
"""

from __future__ import annotations

import abc
import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from semisam.config.schema import DataConfig
from semisam.data.errors import DataError

logger = logging.getLogger("semisam")

#: Extensions a 2D folder image may have when ``data.image_suffix`` is empty (compared case-insensitively).
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")

# ITU-R 601-2 luma, the weights PIL uses for its "L" conversion.
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)


# ----------------------------------------------------------------------------------------------------------
# Checks shared by every reader
# ----------------------------------------------------------------------------------------------------------


_warned_constant: set[str] = set()  # files already reported as constant by this process


def _check_image(image: np.ndarray, path: Path) -> None:
    """Raise on an empty image or NaN/inf values; warn once per file (do not raise) on a constant image.

    A constant image is valid but carries no signal: blank slices exist in real data, and normalisation maps it
    to zeros. It is logged (once, not at every epoch) so that a data set full of them does not go unnoticed.
    """
    if image.size == 0:
        raise DataError(f"{path}: image is empty (shape {image.shape})")
    finite = np.isfinite(image)
    if not finite.all():
        if not finite.any():
            raise DataError(f"{path}: image is entirely NaN/inf")
        bad = image.size - int(np.count_nonzero(finite))
        raise DataError(f"{path}: image holds {bad} NaN/inf values (of {image.size})")
    low, high = float(image.min()), float(image.max())
    if low == high and str(path) not in _warned_constant:
        _warned_constant.add(str(path))
        logger.warning("%s: image is constant (every value is %g); it is used, normalised to zeros", path, low)


def _check_label(label: np.ndarray, path: Path, num_classes: int) -> np.ndarray:
    """Return ``label`` as int64 after checking that every value is an integer class index in range."""
    if label.size == 0:
        raise DataError(f"{path}: label is empty (shape {label.shape})")
    if label.dtype.kind == "b":
        label = label.astype(np.uint8)
    elif label.dtype.kind == "f":
        if not np.isfinite(label).all():
            raise DataError(f"{path}: label holds NaN/inf values")
        if np.any(label != np.round(label)):
            raise DataError(f"{path}: label holds non-integer values; labels must be class indices")
    elif label.dtype.kind not in "iu":
        raise DataError(f"{path}: label has dtype {label.dtype}; expected integer class indices")
    if label.min() < 0 or label.max() >= num_classes:
        values = np.unique(label)
        bad = values[(values < 0) | (values >= num_classes)]
        shown = ", ".join(f"{v:g}" for v in bad[:10].tolist()) + (", ..." if bad.size > 10 else "")
        raise DataError(
            f"{path}: label values [{shown}] are outside [0, {num_classes}) "
            f"(data.num_classes={num_classes}); masks stored as 0/255 need data.label_threshold"
        )
    return label.astype(np.int64, copy=False)


def _match_channels(image: np.ndarray, in_channels: int, path: Path) -> np.ndarray:
    """Convert ``(C, ...)`` to ``in_channels`` where that is meaningful: gray -> RGB by replication,
    RGB -> gray by ITU-R 601 luminance. Any other mismatch is a :class:`DataError`."""
    channels = image.shape[0]
    if channels == in_channels:
        return image
    if channels == 1 and in_channels == 3:
        return np.repeat(image, 3, axis=0)
    if channels == 3 and in_channels == 1:
        return np.tensordot(_LUMA, image, axes=(0, 0))[None].astype(np.float32)
    raise DataError(
        f"{path}: image has {channels} channel(s) but data.in_channels={in_channels}, "
        f"and {channels} -> {in_channels} has no defined conversion"
    )


def _require_file(path: Path, what: str) -> None:
    if not path.is_file():
        raise DataError(f"{path}: {what} not found")


# ----------------------------------------------------------------------------------------------------------
# The interface
# ----------------------------------------------------------------------------------------------------------


class CaseReader(abc.ABC):
    """Reads raw cases of one data set (no normalisation, no resizing).

    Subclasses build an index ``case id -> where its files are`` once (lazily, on first use) and read files on
    every call; they hold no voxel data, so a reader is cheap to pickle into data-loader workers.
    """

    def __init__(self, cfg: DataConfig) -> None:
        self.cfg = cfg
        self.root = Path(cfg.root)
        self._index: dict[str, Any] | None = None

    # -- the index ---------------------------------------------------------------------------------------
    @abc.abstractmethod
    def _build_index(self) -> dict[str, Any]:
        """Find every case on disk: ``{case id: entry}``; raise :class:`DataError` on duplicate ids."""

    def _entry(self, case_id: str) -> Any:
        if self._index is None:
            self._index = self._build_index()
        try:
            return self._index[case_id]
        except KeyError:
            raise DataError(f"{self.root}: no case {case_id!r} in this data set") from None

    def case_ids(self) -> list[str]:
        """Every case found on disk, sorted. Raises :class:`DataError` on duplicate ids."""
        if self._index is None:
            self._index = self._build_index()
        return sorted(self._index)

    # -- reading -----------------------------------------------------------------------------------------
    @abc.abstractmethod
    def read_image(self, case_id: str) -> np.ndarray:
        """The image as stored: float32 ``(C, H, W)`` (2D case) or ``(C, D, H, W)`` (3D case, slicing axis
        first), with ``C == cfg.in_channels``. Never opens the label file."""

    @abc.abstractmethod
    def read_label(self, case_id: str) -> np.ndarray:
        """The label: int64 ``(H, W)`` or ``(D, H, W)``, same spatial shape as the image, values in
        ``[0, cfg.num_classes)``."""

    def has_label(self, case_id: str) -> bool:
        """Whether the case has a label to read (a cheap check: file existence, or the h5 dataset's presence).

        The base implementation cannot tell and answers ``True``; :meth:`read_label` then reports a missing label.
        """
        self._entry(case_id)
        return True

    def label_location(self, case_id: str) -> str:
        """Where the label of a case is (or would be), for messages."""
        return f"the label of case {case_id!r} under {self.root}"

    @abc.abstractmethod
    def num_slices(self, case_id: str) -> int | None:
        """``None`` for a 2D case; the number ``D`` of slices of a 3D case, read from the header when the
        format allows (without loading voxel data)."""

    @abc.abstractmethod
    def spacing(self, case_id: str) -> tuple[float, ...] | None:
        """Physical spacing in mm per spatial axis, in the order of the returned arrays (``(D, H, W)`` or
        ``(H, W)``); ``None`` when the format does not store it."""


# ----------------------------------------------------------------------------------------------------------
# 2D image folders
# ----------------------------------------------------------------------------------------------------------


def _pil_array(path: Path) -> np.ndarray:
    """Read a 2D image file as stored: ``(H, W)`` or ``(H, W, C)`` (or whatever tifffile gives for a TIFF)."""
    from PIL import Image

    _require_file(path, "image file")
    try:
        with Image.open(path) as im:
            im.load()
            if im.mode == "P":
                im = im.convert("RGBA" if "transparency" in im.info else "RGB")
            elif im.mode == "PA":
                im = im.convert("RGBA")
            elif im.mode in ("CMYK", "YCbCr", "LAB", "HSV"):
                im = im.convert("RGB")
            elif im.mode == "1":
                im = im.convert("L")  # 1-bit masks behave like 0/255 masks
            return np.asarray(im)
    except Exception as pil_err:  # PIL raises OSError, SyntaxError, ValueError... for broken files
        if path.suffix.lower() in (".tif", ".tiff"):
            try:
                import tifffile

                return np.asarray(tifffile.imread(path))
            except Exception as tiff_err:
                raise DataError(f"{path}: cannot read TIFF (PIL: {pil_err}; tifffile: {tiff_err})") from tiff_err
        raise DataError(f"{path}: cannot read image (truncated or not an image file?): {pil_err}") from pil_err


def _channels_last_to_first(arr: np.ndarray, path: Path) -> np.ndarray:
    """``(H, W)`` -> ``(1, H, W)``; ``(H, W, C)`` -> ``(C', H, W)`` with alpha dropped (LA -> L, RGBA -> RGB).
    A channel-first ``(C, H, W)`` TIFF with C <= 4 is accepted too."""
    if arr.ndim == 2:
        return arr[None]
    if arr.ndim == 3:
        if arr.shape[-1] <= 4:
            arr = np.moveaxis(arr, -1, 0)
        elif arr.shape[0] > 4:
            raise DataError(f"{path}: cannot tell the channel axis of an image of shape {arr.shape}")
        channels = arr.shape[0]
        if channels == 2:  # gray + alpha
            return arr[:1]
        if channels == 4:  # RGB + alpha
            return arr[:3]
        return arr
    raise DataError(f"{path}: image of shape {arr.shape}; a folder image must be 2D: (H, W) or (H, W, C)")


def _image_size_2d(path: Path) -> tuple[int, int]:
    """(H, W) of a 2D image from its header when PIL can read it lazily, else from the decoded array."""
    from PIL import Image

    _require_file(path, "image file")
    try:
        with Image.open(path) as im:
            return im.height, im.width
    except Exception:
        return tuple(_channels_last_to_first(_pil_array(path), path).shape[1:])  # type: ignore[return-value]


class FolderReader(CaseReader):
    """2D images and masks in two folders.

    Images are ``root/<image_dir>/<id><ext>``, labels ``root/<label_dir>/<id><label_suffix>``. With
    ``data.image_suffix == ""`` any of :data:`IMAGE_EXTENSIONS` is accepted (two files with the same stem
    are an error); otherwise only names ending in ``image_suffix``, whose id is the name without it.

    Images: RGB -> ``(3, H, W)``, grayscale -> ``(1, H, W)``, alpha dropped, then matched to
    ``data.in_channels`` (RGB -> luminance for 1, gray replicated for 3). Values as stored (0..255 for 8-bit).
    Labels: the first channel of a multi-channel mask; with ``data.label_threshold`` set,
    ``value > threshold`` is 1 and the rest 0; otherwise the stored values are class indices. A 1-bit mask
    reads as 0/255. Spacing is unknown (``None``).
    """

    def _build_index(self) -> dict[str, Path]:
        image_dir = self.root / self.cfg.image_dir
        if not image_dir.is_dir():
            raise DataError(f"{image_dir}: image folder not found (data.root / data.image_dir)")
        suffix = self.cfg.image_suffix
        index: dict[str, Path] = {}
        for path in sorted(image_dir.iterdir()):
            if path.name.startswith(".") or not path.is_file():
                continue
            if suffix:
                if not path.name.endswith(suffix) or len(path.name) == len(suffix):
                    continue
                case_id = path.name[: -len(suffix)]
            else:
                if path.suffix.lower() not in IMAGE_EXTENSIONS:
                    continue
                case_id = path.name[: -len(path.suffix)]
            if case_id in index:
                raise DataError(
                    f"{image_dir}: two images have the id {case_id!r}: {index[case_id].name} and {path.name} "
                    f"(set data.image_suffix to choose one)"
                )
            index[case_id] = path
        if not index:
            wanted = suffix or "/".join(IMAGE_EXTENSIONS)
            raise DataError(f"{image_dir}: no image files ending in {wanted}")
        return index

    def image_path(self, case_id: str) -> Path:
        """The image file of a case."""
        return self._entry(case_id)

    def label_path(self, case_id: str) -> Path:
        """Where the label file of a case is (it may not exist for an unlabeled case)."""
        self._entry(case_id)
        return self.root / self.cfg.label_dir / f"{case_id}{self.cfg.label_suffix}"

    def has_label(self, case_id: str) -> bool:
        return self.label_path(case_id).is_file()

    def label_location(self, case_id: str) -> str:
        return str(self.label_path(case_id))

    def read_image(self, case_id: str) -> np.ndarray:
        path = self.image_path(case_id)
        image = _channels_last_to_first(_pil_array(path), path).astype(np.float32)
        _check_image(image, path)
        return np.ascontiguousarray(_match_channels(image, self.cfg.in_channels, path))

    def read_label(self, case_id: str) -> np.ndarray:
        image_path = self.image_path(case_id)
        path = self.label_path(case_id)
        _require_file(path, f"label file of case {case_id!r}")
        label = _channels_last_to_first(_pil_array(path), path)[0]
        image_size = _image_size_2d(image_path)
        if label.shape != image_size:
            raise DataError(
                f"{path}: label size {label.shape[0]}x{label.shape[1]} (HxW) does not match the image "
                f"{image_path.name} size {image_size[0]}x{image_size[1]}"
            )
        if self.cfg.label_threshold is not None:
            label = (label > self.cfg.label_threshold).astype(np.int64)
        return np.ascontiguousarray(_check_label(label, path, self.cfg.num_classes))

    def num_slices(self, case_id: str) -> int | None:
        self._entry(case_id)
        return None

    def spacing(self, case_id: str) -> tuple[float, ...] | None:
        self._entry(case_id)
        return None


# ----------------------------------------------------------------------------------------------------------
# nnU-Net v2 raw layout (NIfTI)
# ----------------------------------------------------------------------------------------------------------

NIFTI_ENDINGS = (".nii.gz", ".nii")


@dataclass(frozen=True)
class _NiftiCase:
    images: tuple[Path, ...]  # one file per channel, in channel order
    label: Path  # may not exist (unlabeled case)


def _load_nifti(path: Path, what: str) -> Any:
    """Open a NIfTI file (header only; nibabel reads voxel data lazily)."""
    import nibabel as nib

    _require_file(path, what)
    try:
        return nib.load(path)
    except Exception as err:
        raise DataError(f"{path}: cannot read NIfTI header: {err}") from err


def _xyz_shape(shape: tuple[int, ...], path: Path) -> tuple[int, int, int]:
    """A NIfTI shape as ``(X, Y, Z)``: a 2D ``(X, Y)`` image is a one-slice ``(X, Y, 1)`` volume, and a
    trailing singleton 4th axis is dropped."""
    if len(shape) == 2:
        return (shape[0], shape[1], 1)
    if len(shape) == 3:
        return tuple(shape)  # type: ignore[return-value]
    if len(shape) == 4 and shape[3] == 1:
        return tuple(shape[:3])  # type: ignore[return-value]
    raise DataError(
        f"{path}: NIfTI of shape {tuple(shape)}; expected (X, Y, Z) or (X, Y) with one file per channel "
        f"(nnU-Net v2 raw layout)"
    )


class NnUNetReader(CaseReader):
    """The nnU-Net v2 raw layout, read with nibabel.

    ``root/dataset.json`` (``channel_names``, ``labels``, ``file_ending``; ``numTraining`` checked if
    present), ``root/imagesTr/{case}_{XXXX}{file_ending}`` (one file per channel, 0000, 0001, ...),
    ``root/labelsTr/{case}{file_ending}``, and optionally ``imagesTs/`` + ``labelsTs/``; cases from both are
    listed, and an id in both is an error.

    Arrays are used in their stored voxel order ``(X, Y, Z)`` (no reorientation). Axis ``data.slice_axis``
    is moved first, the other two keep their order: ``(D, H, W)``; channels are stacked: ``(C, D, H, W)``.
    Spacing comes from the header zooms, reordered the same way. A 2D NIfTI ``(X, Y)`` is read as the
    one-slice volume ``(X, Y, 1)`` (its third spacing is 1.0), so with ``slice_axis=2`` it has
    ``num_slices == 1``.
    """

    def __init__(self, cfg: DataConfig) -> None:
        super().__init__(cfg)
        if cfg.slice_axis not in (0, 1, 2):
            raise DataError(f"data.slice_axis={cfg.slice_axis} must be 0, 1 or 2 (an axis of the (X, Y, Z) array)")
        self.dataset_json = self.root / "dataset.json"
        self.dataset = self._read_dataset_json()
        self.file_ending: str = self.dataset["file_ending"]
        self.num_channels = len(self.dataset["channel_names"])

    def _read_dataset_json(self) -> dict[str, Any]:
        path = self.dataset_json
        _require_file(path, "nnU-Net dataset.json")
        try:
            meta = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as err:
            raise DataError(f"{path}: not valid JSON: {err}") from err
        if not isinstance(meta, dict):
            raise DataError(f"{path}: must hold a JSON object")
        missing = [k for k in ("channel_names", "labels", "file_ending") if k not in meta]
        if missing:
            raise DataError(f"{path}: missing key(s) {', '.join(missing)}")
        channels = meta["channel_names"]
        if not isinstance(channels, dict) or not channels:
            raise DataError(f"{path}: channel_names must map '0', '1', ... to channel names")
        if len(channels) != self.cfg.in_channels:
            raise DataError(
                f"{path}: channel_names lists {len(channels)} channel(s) {list(channels.values())} "
                f"but data.in_channels={self.cfg.in_channels}"
            )
        labels = meta["labels"]
        if not isinstance(labels, dict) or not all(isinstance(v, int) for v in labels.values()):
            raise DataError(f"{path}: labels must map names to integer values (region-based labels unsupported)")
        if "ignore" in labels:
            raise DataError(f"{path}: the nnU-Net 'ignore' label is not supported")
        if sorted(labels.values()) != list(range(len(labels))):
            raise DataError(f"{path}: label values {sorted(labels.values())} must be 0, 1, ..., N-1")
        if len(labels) != self.cfg.num_classes:
            raise DataError(
                f"{path}: labels lists {len(labels)} classes {list(labels)} but data.num_classes={self.cfg.num_classes}"
            )
        if meta["file_ending"] not in NIFTI_ENDINGS:
            raise DataError(
                f"{path}: file_ending {meta['file_ending']!r} is not supported; this reader reads "
                f"{' / '.join(NIFTI_ENDINGS)} (2D PNG data sets: use data.format=folder)"
            )
        return meta

    def _build_index(self) -> dict[str, _NiftiCase]:
        ending = self.file_ending
        pattern = re.compile(r"^(?P<case>.+)_(?P<channel>\d{4})" + re.escape(ending) + "$")
        index: dict[str, _NiftiCase] = {}
        found_dir = False
        num_training = 0
        for images_name, labels_name in (("imagesTr", "labelsTr"), ("imagesTs", "labelsTs")):
            images_dir = self.root / images_name
            if not images_dir.is_dir():
                continue
            found_dir = True
            channels: dict[str, dict[int, Path]] = {}
            for path in sorted(images_dir.iterdir()):
                match = pattern.match(path.name)
                if match is None or path.name.startswith("."):
                    continue
                channels.setdefault(match["case"], {})[int(match["channel"])] = path
            for case_id, files in channels.items():
                expected = list(range(self.num_channels))
                if sorted(files) != expected:
                    wanted = [f"{case_id}_{c:04d}{ending}" for c in expected]
                    have = sorted(p.name for p in files.values())
                    raise DataError(
                        f"{images_dir}: case {case_id!r} has channel files {have}; dataset.json names "
                        f"{self.num_channels} channel(s), so expected exactly {wanted}"
                    )
                if case_id in index:
                    raise DataError(
                        f"{self.root}: case id {case_id!r} is in both imagesTr and imagesTs "
                        f"({index[case_id].images[0]} and {files[0]})"
                    )
                index[case_id] = _NiftiCase(
                    images=tuple(files[c] for c in expected),
                    label=self.root / labels_name / f"{case_id}{ending}",
                )
                num_training += images_name == "imagesTr"
        if not found_dir:
            raise DataError(f"{self.root}: neither imagesTr/ nor imagesTs/ exists (nnU-Net v2 raw layout)")
        if not index:
            raise DataError(f"{self.root}: no files named <case>_<XXXX>{ending} in imagesTr/ or imagesTs/")
        declared = self.dataset.get("numTraining")
        if declared is not None and declared != num_training:
            logger.warning("%s: numTraining=%s but imagesTr/ holds %d cases", self.dataset_json, declared, num_training)
        return index

    def _to_slicing_order(self, array: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(np.moveaxis(array, self.cfg.slice_axis, 0))

    def image_paths(self, case_id: str) -> tuple[Path, ...]:
        """The image files of a case, one per channel."""
        return self._entry(case_id).images

    def label_path(self, case_id: str) -> Path:
        """Where the label file of a case is (it may not exist for an unlabeled case)."""
        return self._entry(case_id).label

    def has_label(self, case_id: str) -> bool:
        return self.label_path(case_id).is_file()

    def label_location(self, case_id: str) -> str:
        return str(self.label_path(case_id))

    def read_image(self, case_id: str) -> np.ndarray:
        channels = []
        first_shape: tuple[int, int, int] | None = None
        for path in self.image_paths(case_id):
            nifti = _load_nifti(path, "image file")
            shape = _xyz_shape(nifti.shape, path)
            if first_shape is None:
                first_shape = shape
            elif shape != first_shape:
                raise DataError(f"{path}: channel shape {shape} differs from channel 0000 shape {first_shape}")
            try:
                data = nifti.get_fdata(dtype=np.float32)
            except Exception as err:
                raise DataError(f"{path}: cannot read voxel data (truncated file?): {err}") from err
            data = data.reshape(shape)
            _check_image(data, path)
            channels.append(self._to_slicing_order(data))
        return np.stack(channels).astype(np.float32, copy=False)

    def read_label(self, case_id: str) -> np.ndarray:
        image_path = self.image_paths(case_id)[0]
        path = self.label_path(case_id)
        nifti = _load_nifti(path, f"label file of case {case_id!r}")
        shape = _xyz_shape(nifti.shape, path)
        image_shape = _xyz_shape(_load_nifti(image_path, "image file").shape, image_path)
        if shape != image_shape:
            raise DataError(f"{path}: label shape {shape} does not match image {image_path.name} shape {image_shape}")
        try:
            data = np.asanyarray(nifti.dataobj)
        except Exception as err:
            raise DataError(f"{path}: cannot read voxel data (truncated file?): {err}") from err
        label = _check_label(data.reshape(shape), path, self.cfg.num_classes)
        return self._to_slicing_order(label)

    def num_slices(self, case_id: str) -> int | None:
        path = self.image_paths(case_id)[0]
        return int(_xyz_shape(_load_nifti(path, "image file").shape, path)[self.cfg.slice_axis])

    def spacing(self, case_id: str) -> tuple[float, ...] | None:
        path = self.image_paths(case_id)[0]
        zooms = [float(z) for z in _load_nifti(path, "image file").header.get_zooms()[:3]]
        zooms += [1.0] * (3 - len(zooms))
        axis = self.cfg.slice_axis
        return (zooms[axis], *(z for i, z in enumerate(zooms) if i != axis))


# ----------------------------------------------------------------------------------------------------------
# SSL4MIS h5 (ACDC as the semi-supervised literature ships it)
# ----------------------------------------------------------------------------------------------------------


class SSL4MISH5Reader(CaseReader):
    """The SSL4MIS layout: ``root/data/{id}.h5`` with datasets ``image`` (float32) and ``label`` (uint8).

    A 2D slice file holds ``(H, W)`` arrays, a volume file ``(D, H, W)`` (already slicing axis first). Case
    ids are the stems of ``root/data/*.h5``. Only the dataset needed is read. Spacing is not stored
    (``None``).
    """

    def _build_index(self) -> dict[str, Path]:
        data_dir = self.root / "data"
        if not data_dir.is_dir():
            raise DataError(f"{data_dir}: folder not found (SSL4MIS layout: data.root/data/<id>.h5)")
        index = {p.stem: p for p in sorted(data_dir.glob("*.h5")) if not p.name.startswith(".")}
        if not index:
            raise DataError(f"{data_dir}: no .h5 files")
        return index

    def case_path(self, case_id: str) -> Path:
        """The h5 file of a case."""
        return self._entry(case_id)

    def has_label(self, case_id: str) -> bool:
        """Whether the case's h5 file holds a ``label`` dataset (opens the file, reads no data)."""
        import h5py

        path = self.case_path(case_id)
        _require_file(path, "h5 file")
        try:
            with h5py.File(path, "r") as handle:
                return "label" in handle
        except Exception as err:
            raise DataError(f"{path}: cannot open h5 file (truncated or not HDF5?): {err}") from err

    def label_location(self, case_id: str) -> str:
        return f"{self.case_path(case_id)} (dataset 'label')"

    def _dataset_shape(self, path: Path, key: str) -> tuple[int, ...]:
        return self._with_dataset(path, key, lambda ds: tuple(ds.shape))

    def _read_dataset(self, path: Path, key: str) -> np.ndarray:
        return self._with_dataset(path, key, lambda ds: np.asarray(ds[()]))

    @staticmethod
    def _with_dataset(path: Path, key: str, fn: Any) -> Any:
        import h5py

        _require_file(path, "h5 file")
        try:
            handle = h5py.File(path, "r")
        except Exception as err:
            raise DataError(f"{path}: cannot open h5 file (truncated or not HDF5?): {err}") from err
        with handle:
            if key not in handle:
                raise DataError(f"{path}: no dataset {key!r} (it holds {sorted(handle.keys())})")
            try:
                return fn(handle[key])
            except Exception as err:
                raise DataError(f"{path}: cannot read dataset {key!r}: {err}") from err

    @staticmethod
    def _check_ndim(shape: tuple[int, ...], path: Path, key: str) -> None:
        if len(shape) not in (2, 3):
            raise DataError(f"{path}: dataset {key!r} has shape {shape}; expected (H, W) or (D, H, W)")

    def read_image(self, case_id: str) -> np.ndarray:
        path = self.case_path(case_id)
        image = self._read_dataset(path, "image")
        self._check_ndim(image.shape, path, "image")
        image = image.astype(np.float32, copy=False)[None]
        _check_image(image, path)
        return np.ascontiguousarray(_match_channels(image, self.cfg.in_channels, path))

    def read_label(self, case_id: str) -> np.ndarray:
        path = self.case_path(case_id)
        image_shape = self._dataset_shape(path, "image")
        label = self._read_dataset(path, "label")
        if label.shape != image_shape:
            raise DataError(f"{path}: label shape {label.shape} does not match image shape {image_shape}")
        return np.ascontiguousarray(_check_label(label, path, self.cfg.num_classes))

    def num_slices(self, case_id: str) -> int | None:
        path = self.case_path(case_id)
        shape = self._dataset_shape(path, "image")
        self._check_ndim(shape, path, "image")
        return None if len(shape) == 2 else int(shape[0])

    def spacing(self, case_id: str) -> tuple[float, ...] | None:
        self._entry(case_id)
        return None


_READERS: dict[str, type[CaseReader]] = {
    "folder": FolderReader,
    "nnunet": NnUNetReader,
    "ssl4mis_h5": SSL4MISH5Reader,
}


def build_reader(cfg: DataConfig) -> CaseReader:
    """The reader for ``cfg.format``: ``folder`` | ``nnunet`` | ``ssl4mis_h5``."""
    try:
        cls = _READERS[cfg.format]
    except KeyError:
        raise DataError(f"data.format={cfg.format!r} is not one of {', '.join(_READERS)}") from None
    return cls(cfg)
