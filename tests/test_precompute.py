"""The offline teacher pass: embeddings + priors cached with a manifest, resumable, rebuilt for another teacher;
training with priors refuses a missing cache and trains on a complete one."""

import json

import numpy as np
import pytest

from semisam.config.loader import load_config
from semisam.data.readers import build_reader
from semisam.data.splits import resolve_split
from semisam.engine.trainer import Trainer
from semisam.teacher import precompute as pc
from semisam.teacher.cache import CacheError, cache_root
from semisam.teacher.engine import build_teacher
from semisam.teacher.models import build_tiny_sam, tiny_spec

from .conftest import REPO, tiny_overrides


@pytest.fixture(scope="module")
def tiny_teacher():
    cfg = load_config(REPO / "configs/demo.yaml", ["data.root=unused", "device=cpu"])
    return build_teacher(cfg.teacher, sam=build_tiny_sam(seed=0), spec=tiny_spec())


def _cfg(root, tmp_path, *extra):
    overrides = tiny_overrides(root, tmp_path / "run", **{"method.name": "supervised"})
    overrides += [
        f"teacher.cache_dir={tmp_path / 'cache'}",
        "teacher.everything.box_scales=[0.5]",
        "teacher.everything.pred_iou_thresh=0.0",
        "teacher.everything.stability_score_thresh=0.0",
        "teacher.everything.points_per_side=4",
        *extra,
    ]
    return load_config(REPO / "configs/demo.yaml", overrides)


def test_precompute_writes_resumes_and_skips(phantom_root, tmp_path, tiny_teacher, monkeypatch):
    cfg = _cfg(phantom_root, tmp_path)
    split = resolve_split(cfg.data, build_reader(cfg.data).case_ids())
    all_cases = [*split.labeled, *split.unlabeled, *split.val, *split.test]

    # "killed" after 5 cases: the 6th case's computation raises
    real = pc.everything_masks
    calls = {"n": 0}

    def flaky(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 6:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(pc, "everything_masks", flaky)
    with pytest.raises(KeyboardInterrupt):
        pc.precompute(cfg, teacher=tiny_teacher, progress=False)
    root = cache_root(cfg)
    done = sorted(p.stem for p in (root / "priors").glob("*.npy"))
    assert 0 < len(done) < len(all_cases)
    assert not [p for p in (root / "priors").iterdir() if p.name.startswith(".")]  # no half-written file
    monkeypatch.setattr(pc, "everything_masks", real)

    report = pc.precompute(cfg, teacher=tiny_teacher, progress=False)
    assert report.skipped == len(done)
    assert sorted(report.computed) == sorted(set(all_cases) - set(done))
    manifest = json.loads((root / "priors" / "manifest.json").read_text())
    assert manifest["teacher"]["kind"] == tiny_teacher.spec.kind
    assert manifest["everything"]["box_scales"] == [0.5]
    priors = np.load(root / "priors" / f"{split.val[0]}.npy")
    assert priors.dtype == np.float16 and priors.shape == (2, 32, 32)
    assert priors.min() >= 0 and priors.max() <= 1
    # embeddings only for training cases
    emb_cases = {p.stem for p in (root / "embeddings").glob("*.npy")}
    assert emb_cases == set(split.labeled) | set(split.unlabeled)

    again = pc.precompute(cfg, teacher=tiny_teacher, progress=False)
    assert again.computed == [] and again.skipped == len(set(all_cases))


def test_another_teacher_rebuilds_the_cache(phantom_root, tmp_path, tiny_teacher):
    cfg = _cfg(phantom_root, tmp_path)
    pc.precompute(cfg, teacher=tiny_teacher, splits=["val"], progress=False)
    other = build_teacher(cfg.teacher, sam=build_tiny_sam(seed=1), spec=tiny_spec())
    other.checkpoint_sha256 = "another-teacher"
    report = pc.precompute(cfg, teacher=other, splits=["val"], progress=False)
    assert len(report.computed) == 4 and report.skipped == 0
    manifest = json.loads((cache_root(cfg) / "priors" / "manifest.json").read_text())
    assert manifest["teacher"]["checkpoint_sha256"] == "another-teacher"


def test_training_with_priors_needs_the_cache_then_uses_it(phantom_root, tmp_path, tiny_teacher, monkeypatch):
    cfg = _cfg(phantom_root, tmp_path, "priors.enabled=true")
    monkeypatch.setattr(pc, "identity_from_config", lambda c: pc.identity_of(tiny_teacher))
    with pytest.raises(CacheError, match="tools/precompute.py"):
        Trainer(cfg, progress=False)
    pc.precompute(cfg, teacher=tiny_teacher, splits=["labeled", "unlabeled", "val"], progress=False)
    trainer = Trainer(cfg, progress=False)
    assert trainer.in_channels == 3  # image + 2 prior channels
    batch = trainer._inputs(next(iter(trainer._loader(trainer.labeled_items, True, 2, 0))))
    assert batch["image"].shape[1] == 3 and batch["priors"].shape[1] == 2
    assert np.allclose(batch["image"][:, 1:].numpy(), batch["priors"].numpy())
    result = trainer.fit()
    assert result.iterations == 6 and result.best_checkpoint.exists()
