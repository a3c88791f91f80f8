"""Shared fixtures: small generated data sets, the location of the real shared data."""

from __future__ import annotations

import os
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from PIL import Image

torch.set_num_threads(1)  # pytest-xdist runs one worker per core

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


def in_ci() -> bool:
    """Whether the tests run in CI (``CI`` set to anything but empty, ``0`` or ``false``; CI sets ``CI=true``)."""
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false")


def require_shared_data(*data_sets: str) -> Path:
    """The real data root ``../shared/data``, with ``data_sets`` (e.g. ``"ACDC"``) present in it.

    The one rule for tests on real data: CI has the data, so there a missing folder fails the test loudly; on a
    developer machine without it the test is skipped, and the skip says which folder was looked for.
    """
    missing = [SHARED_DATA / name for name in data_sets or ("",) if not (SHARED_DATA / name).is_dir()]
    if missing:
        where = ", ".join(str(path) for path in missing)
        if in_ci():
            pytest.fail(f"real data not found at {where}: CI must provide ../shared/data", pytrace=False)
        pytest.skip(f"real data not found at {where} (no ../shared/data on this machine; CI runs this test)")
    return SHARED_DATA


@pytest.fixture
def kvasir_root() -> Path:
    """``../shared/data/Kvasir-SEG`` (see :func:`require_shared_data`: skipped without it, failed in CI)."""
    return require_shared_data("Kvasir-SEG") / "Kvasir-SEG"


@pytest.fixture
def acdc_root() -> Path:
    """``../shared/data/ACDC`` (see :func:`require_shared_data`: skipped without it, failed in CI)."""
    return require_shared_data("ACDC") / "ACDC"


@pytest.fixture(scope="session")
def phantom_root(tmp_path_factory) -> Path:
    """A 2D-folder phantom (24 images of 32x32 + 4 val + 4 test), generated once per session."""
    from semisam.data.phantom import make_phantom

    root = tmp_path_factory.mktemp("phantom")
    make_phantom(root, num_cases=32, size=32, seed=0, layout="folder", num_val=4, num_test=4)
    return root


@pytest.fixture(scope="module")
def tiny_teacher():
    """A randomly initialised tiny SAM as the teacher (CPU, seconds): the pipeline's logic without real weights."""
    from semisam.config.loader import load_config
    from semisam.teacher.engine import build_teacher
    from semisam.teacher.models import build_tiny_sam, tiny_spec

    cfg = load_config(REPO / "configs/demo.yaml", ["data.root=unused", "device=cpu"])
    return build_teacher(cfg.teacher, sam=build_tiny_sam(seed=0), spec=tiny_spec())


def tiny_overrides(root: Path, out: Path, **extra: str) -> list[str]:
    """Overrides that turn configs/demo.yaml into a seconds-long CPU run on ``root``."""
    base = {
        "data.root": str(root),
        "data.image_size": "[32,32]",
        "data.num_workers": "0",
        "data.split.labeled_count": "6",
        # the tests keep the batch-norm BasicUNet and SGD that demo.yaml had before it took the cpu scale's
        # student and AdamW: they check batch-norm statistics (synchronised across ranks, restored on resume),
        # which the demo's instance-norm student has none of, and a 6-step run cannot hold a 120-step lr warm-up
        "student.arch": "basic_unet",
        "student.norm": "batch",
        "student.features": "[4,8,16,32,64]",
        "schedule.optimizer": "sgd",
        "schedule.lr": "0.03",
        "schedule.lr_schedule": "poly",
        "schedule.warmup_iterations": "0",
        "schedule.iterations": "6",
        "schedule.batch_size": "2",
        "schedule.unlabeled_batch_size": "2",
        "schedule.val_every": "3",
        "schedule.checkpoint_every": "3",
        "schedule.log_every": "1",
        "schedule.image_every": "3",
        "output_dir": str(out),
        "device": "cpu",
        "priors.enabled": "false",
        # the online refresh (its own tests); tests/test_rounds.py asks for semisam_rounds, the default
        "method.name": "semisam_online",
    }
    base.update(extra)
    return [f"{k}={v}" for k, v in base.items()]


def write_png(path: Path, array: np.ndarray) -> Path:
    """Write ``array`` (H, W) or (H, W, 3) uint8 as a PNG, creating the folder."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)
    return path


def write_h5(path: Path, **datasets: np.ndarray) -> Path:
    """Write an h5 file with one dataset per keyword (the SSL4MIS layout: ``image``, ``label``)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as f:
        for key, value in datasets.items():
            f.create_dataset(key, data=value)
    return path


def run_train_tool(config: Path, overrides: list[str]):
    """``tools/train.py --config config --no-progress overrides`` in a subprocess (one thread), output captured."""
    import os
    import subprocess
    import sys

    return subprocess.run(
        [sys.executable, str(REPO / "tools/train.py"), "--config", str(config), "--no-progress", *overrides],
        capture_output=True,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )


def scrambled_copy(root: Path, dest: Path, cfg) -> Path:
    """A copy of the data set at ``root`` whose unlabeled cases (as ``cfg``'s split sees them) have random labels:
    whatever path a leak takes, even reading the files directly, it changes what a run computes."""
    import shutil

    import numpy as np
    from PIL import Image

    from semisam.data.readers import build_reader
    from semisam.data.splits import resolve_split

    shutil.copytree(root, dest)
    rng = np.random.default_rng(0)
    for case_id in resolve_split(cfg.data, build_reader(cfg.data).case_ids()).unlabeled:
        path = dest / cfg.data.label_dir / f"{case_id}{cfg.data.label_suffix}"
        label = np.asarray(Image.open(path))
        Image.fromarray(rng.integers(0, cfg.data.num_classes, label.shape).astype(label.dtype)).save(path)
    return dest
