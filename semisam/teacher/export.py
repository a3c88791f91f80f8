"""Export the SAMAug-augmented inputs for other frameworks (nnU-Net, any 2D trainer).

- nnU-Net raw data (``data.format=nnunet``): a new data set folder in which every case keeps its channels and
  gains the two priors as the next channels (``{case}_0001.nii.gz``, ``{case}_0002.nii.gz`` after a one-channel
  ``{case}_0000``), with the original affine; labels are copied and ``dataset.json`` lists the new channels.
- 2D data (``folder`` / ``ssl4mis_h5``): PNG stacks ``images/{case}_0000.png`` (the normalised image, 8-bit),
  ``{case}_0001.png`` (segmentation prior) and ``{case}_0002.png`` (boundary prior), and ``labels/{case}.png``
  where the case has a label (never for unlabeled training cases). 3D ``ssl4mis_h5`` volumes get one stack per
  slice, ``{case}_slice{k}``.

Priors are read from the teacher cache (run the precompute first); images and labels from the source data.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Sequence
from pathlib import Path

import nibabel as nib
import numpy as np
from PIL import Image

from semisam.config.schema import ConfigError, RunConfig
from semisam.data.cases import CaseLoader
from semisam.data.readers import build_reader
from semisam.data.splits import Split, resolve_split
from semisam.teacher.precompute import SPLIT_NAMES
from semisam.teacher.stores import open_prior_store
from semisam.utils import atomic_write_text

PRIOR_CHANNEL_NAMES = ("SAM segmentation prior", "SAM boundary prior")


def _to_uint8(x: np.ndarray) -> np.ndarray:
    return (np.clip(x, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def _save_png(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.png")
    Image.fromarray(array).save(tmp)
    tmp.replace(path)


def export_augmented(
    cfg: RunConfig, out_dir: str | Path, splits: Sequence[str] = SPLIT_NAMES, limit: int | None = None
) -> Path:
    """Write the augmented inputs of the given splits' cases to ``out_dir``; returns ``out_dir``.

    Raises:
        ConfigError: ``priors.source=embeddings`` (its maps are inputs of semisam's learned projection, not images
            another framework can read; the export writes SAMAug's two maps).
    """
    if cfg.priors.source == "embeddings":
        raise ConfigError("--export writes SAMAug's everything maps: run it with priors.source=everything")
    out = Path(out_dir)
    reader = build_reader(cfg.data)
    split = resolve_split(cfg.data, reader.case_ids())
    if limit is not None:
        split = Split(*(getattr(split, name)[:limit] for name in ("labeled", "unlabeled", "val", "test")))
    labeled_cases: dict[str, bool] = {}
    for name in splits:
        for case_id in getattr(split, name):
            has_label = name != "unlabeled"
            labeled_cases[case_id] = labeled_cases.get(case_id, False) or has_label
    store = open_prior_store(cfg, list(labeled_cases))
    if cfg.data.format == "nnunet":
        _export_nnunet(cfg, reader, store, labeled_cases, out)
    else:
        _export_png(cfg, reader, store, labeled_cases, out)
    return out


def _export_png(cfg, reader, store, cases: dict[str, bool], out: Path) -> None:
    loader = CaseLoader(reader, cfg.data)
    for case_id, has_label in cases.items():
        image = loader.image(case_id)
        loader.clear()
        priors = store.load(case_id)
        label = reader.read_label(case_id) if has_label else None
        if image.ndim == 3:
            items = [(case_id, image, priors, label)]
        else:
            items = [
                (f"{case_id}_slice{k}", image[:, k], priors[k], None if label is None else label[k])
                for k in range(image.shape[1])
            ]
        for name, img, pri, lab in items:
            pixels = img.transpose(1, 2, 0) if img.shape[0] == 3 else img[0]
            _save_png(out / "images" / f"{name}_0000.png", _to_uint8(pixels))
            _save_png(out / "images" / f"{name}_0001.png", _to_uint8(pri[0]))
            _save_png(out / "images" / f"{name}_0002.png", _to_uint8(pri[1]))
            if lab is not None:
                _save_png(out / "labels" / f"{name}.png", lab.astype(np.uint8))


def _export_nnunet(cfg, reader, store, cases: dict[str, bool], out: Path) -> None:
    dataset = dict(reader.dataset)
    channels = dict(dataset["channel_names"])
    first_new = len(channels)
    for i, name in enumerate(PRIOR_CHANNEL_NAMES):
        channels[str(first_new + i)] = name
    ending = dataset["file_ending"]
    for case_id, has_label in cases.items():
        sources = reader.image_paths(case_id)
        images_dir = out / ("imagesTr" if sources[0].parent.name == "imagesTr" else "imagesTs")
        labels_dir = out / images_dir.name.replace("images", "labels")
        images_dir.mkdir(parents=True, exist_ok=True)
        for src in sources:
            shutil.copyfile(src, images_dir / src.name)
        reference = nib.load(str(sources[0]))
        priors = store.load(case_id)  # (D, 2, H, W), D along data.slice_axis
        for i in range(2):
            volume = np.moveaxis(priors[:, i], 0, cfg.data.slice_axis).astype(np.float32)
            image = nib.Nifti1Image(volume, reference.affine, reference.header)
            image.set_data_dtype(np.float32)
            nib.save(image, str(images_dir / f"{case_id}_{first_new + i:04d}{ending}"))
        if has_label:
            labels_dir.mkdir(parents=True, exist_ok=True)
            label_src = reader.label_path(case_id)
            if label_src.exists():
                shutil.copyfile(label_src, labels_dir / label_src.name)
    dataset["channel_names"] = channels
    dataset["numTraining"] = len(list((out / "labelsTr").glob(f"*{ending}"))) if (out / "labelsTr").exists() else 0
    atomic_write_text(out / "dataset.json", json.dumps(dataset, indent=2))
