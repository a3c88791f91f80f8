"""LiteMedSAM's everything mode on real images keeps masks, and on polyps its best mask finds the polyp.

These tests fail if the box grid's filters keep no mask: segment-anything's generator thresholds (stability >=
0.95) suit SAM's scores, not a box-only model's, and under them the SAMAug prior maps of real images were all
zeros. They run the settings the CPU benchmark uses (``configs/benchmark/cpu_*.yaml``).
"""

from __future__ import annotations

import json
import logging

import h5py
import numpy as np
import pytest
from omegaconf import OmegaConf
from PIL import Image

from semisam.config.schema import EverythingConfig, TeacherConfig
from semisam.teacher.priors import best_mask_overlap, prior_maps

from .conftest import REPO

NUM_KVASIR = 4
NUM_ACDC = 2
MIN_POLYP_IOU = 0.5

logger = logging.getLogger("semisam")


def _everything_cfg(name: str) -> EverythingConfig:
    """The ``teacher.everything`` settings of a CPU benchmark config over the schema's defaults."""
    raw = OmegaConf.load(REPO / "configs" / "benchmark" / name)
    merged = OmegaConf.merge(OmegaConf.structured(EverythingConfig), raw.teacher.everything)
    return OmegaConf.to_object(merged)


@pytest.fixture(scope="module")
def litemedsam():
    from semisam.teacher import build_teacher

    return build_teacher(TeacherConfig(kind="litemedsam", device="cpu"))


def _records(teacher, image: np.ndarray, cfg: EverythingConfig):
    """Everything-mode masks of one float32 (C, H, W) image in [0, 1], through the precompute's own path."""
    from types import SimpleNamespace

    from semisam.teacher.precompute import everything_masks

    embedding = teacher.embed([image], batch_size=1)
    return everything_masks(teacher, image, embedding, SimpleNamespace(teacher=SimpleNamespace(everything=cfg)))


def test_litemedsam_priors_find_the_polyp_on_kvasir(kvasir_root, litemedsam):
    cfg = _everything_cfg("cpu_kvasir.yaml")
    case_ids = json.loads((kvasir_root / "splits.json").read_text())["val"][:NUM_KVASIR]
    ious = []
    for case_id in case_ids:
        image = np.asarray(Image.open(kvasir_root / "images" / f"{case_id}.jpg").convert("RGB"), dtype=np.float32)
        label = (np.asarray(Image.open(kvasir_root / "masks" / f"{case_id}.png").convert("L")) > 127).astype(np.int64)
        records = _records(litemedsam, image.transpose(2, 0, 1) / 255.0, cfg)
        assert records, f"{case_id}: no everything-mode mask kept (all-zero priors)"
        maps = prior_maps(records, label.shape)
        assert maps[0].max() > 0 and maps[1].max() == 1, f"{case_id}: empty prior channel"
        ious.append(best_mask_overlap(records, label, [1])[1][0])
        logger.info("%s: %d masks, best-mask polyp IoU %.3f", case_id, len(records), ious[-1])
    hits = sum(iou >= MIN_POLYP_IOU for iou in ious)
    assert hits > len(ious) / 2, f"best-mask polyp IoU {np.round(ious, 3).tolist()}: >= {MIN_POLYP_IOU} on {hits}"


def test_litemedsam_priors_keep_masks_on_acdc(acdc_root, litemedsam):
    cfg = _everything_cfg("cpu_acdc.yaml")
    names = (acdc_root / "train_slices.list").read_text().split()[:136]  # labeled slices of the 7-patient protocol
    names = [n for n in names if n.endswith("_slice_5")][:NUM_ACDC]  # mid-ventricular: all three structures
    for name in names:
        with h5py.File(acdc_root / "data" / f"{name}.h5") as f:
            image, label = f["image"][:].astype(np.float32)[None], f["label"][:].astype(np.int64)
        records = _records(litemedsam, image, cfg)
        assert records, f"{name}: no everything-mode mask kept (all-zero priors)"
        maps = prior_maps(records, label.shape)
        assert maps[0].max() > 0 and maps[1].max() == 1, f"{name}: empty prior channel"
        best = best_mask_overlap(records, label, [1, 2, 3])
        logger.info("%s: %d masks, best-mask IoU per class %s", name, len(records), best)
