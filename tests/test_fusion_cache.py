import json

import numpy as np
import pytest
import torch

from semisam.config.loader import load_config
from semisam.data.fusion import fuse_priors, more_confident, student_in_channels
from semisam.teacher.cache import CacheError, CacheStore, expected_manifest, teacher_identity

from .conftest import REPO


def _cfg(*overrides):
    return load_config(REPO / "configs" / "demo.yaml", ["method.name=mean_teacher", *overrides])


@pytest.mark.parametrize(
    ("overrides", "channels"),
    [
        (("priors.enabled=false",), 1),
        (("priors.enabled=true",), 3),
        (("priors.enabled=true", "priors.fusion=add"), 3),
        (("priors.enabled=true", "priors.fusion=none"), 1),
        (("priors.enabled=false", "priors.fusion=concat"), 1),
    ],
)
def test_student_input_channels(overrides, channels):
    assert student_in_channels(_cfg(*overrides)) == channels


def test_concat_layout_and_raw_input():
    image = torch.rand(2, 3, 8, 8)
    priors = torch.rand(2, 2, 8, 8)
    fused = fuse_priors(image, priors, "concat")
    assert fused.shape == (2, 5, 8, 8)
    assert torch.equal(fused[:, :3], image) and torch.equal(fused[:, 3:], priors)
    raw = fuse_priors(image, None, "concat")
    assert raw.shape == (2, 5, 8, 8) and torch.all(raw[:, 3:] == 0) and torch.equal(raw[:, :3], image)
    assert torch.equal(fuse_priors(image, priors, "none"), image)


def test_add_layout_is_samaug_g_and_b():
    rgb = torch.rand(1, 3, 4, 4)
    priors = torch.rand(1, 2, 4, 4)
    fused = fuse_priors(rgb, priors, "add")
    assert torch.equal(fused[:, 0], rgb[:, 0])
    assert torch.allclose(fused[:, 1], rgb[:, 1] + priors[:, 0])
    assert torch.allclose(fused[:, 2], rgb[:, 2] + priors[:, 1])
    grey = torch.rand(1, 1, 4, 4)
    fused = fuse_priors(grey, priors, "add")
    assert fused.shape == (1, 3, 4, 4) and torch.equal(fused[:, 0], grey[:, 0])
    assert torch.equal(fuse_priors(grey, None, "add"), grey.expand(-1, 3, -1, -1))
    with pytest.raises(ValueError, match="do not match"):
        fuse_priors(rgb, torch.rand(1, 2, 5, 4), "concat")


def test_more_confident_picks_per_image():
    sure = torch.tensor([[0.95, 0.05]]).view(1, 2, 1, 1).expand(1, 2, 3, 3)
    unsure = torch.tensor([[0.4, 0.6]]).view(1, 2, 1, 1).expand(1, 2, 3, 3)
    a = torch.cat([sure, unsure])
    b = torch.cat([unsure, sure])
    picked = more_confident(a, b)
    assert torch.equal(picked[0], sure[0]) and torch.equal(picked[1], sure[0])


def _identity(sha="abc"):
    return teacher_identity("litemedsam", sha, "resize-longest-256", 256)


def test_cache_store_round_trip_and_atomic_files(tmp_path):
    cfg = _cfg()
    store = CacheStore(tmp_path, "priors")
    assert store.prepare(expected_manifest(cfg, "priors", _identity())) is False
    array = np.random.default_rng(0).random((2, 5, 6), dtype=np.float32)
    store.save("case_1", array)
    assert store.has("case_1") and store.missing(["case_1", "case_2"]) == ["case_2"]
    loaded = store.load("case_1")
    assert loaded.dtype == np.float32 and np.allclose(loaded, array, atol=1e-3)
    assert sorted(p.name for p in store.dir.iterdir()) == ["case_1.npy", "manifest.json"]
    assert json.loads(store.manifest_path.read_text())["teacher"]["checkpoint_sha256"] == "abc"
    # the same teacher again keeps the finished cases
    assert store.prepare(expected_manifest(cfg, "priors", _identity())) is True
    assert store.has("case_1")


def test_another_teacher_rebuilds_and_training_refuses(tmp_path):
    cfg = _cfg()
    store = CacheStore(tmp_path, "priors")
    store.prepare(expected_manifest(cfg, "priors", _identity("abc")))
    store.save("case_1", np.zeros((2, 3, 3), np.float32))
    other = expected_manifest(cfg, "priors", _identity("def"))
    with pytest.raises(CacheError, match=r"checkpoint_sha256.*tools/precompute.py"):
        store.check(other, "python tools/precompute.py --config X")
    assert store.prepare(other) is False  # rebuilt
    assert not store.has("case_1")
    store.check(other, "unused")
    # other everything-mode settings also make the priors stale
    changed = expected_manifest(_cfg("teacher.everything.pred_iou_thresh=0.7"), "priors", _identity("def"))
    with pytest.raises(CacheError, match="pred_iou_thresh"):
        store.check(changed, "cmd")


def test_damaged_and_missing_cache_files_are_named(tmp_path):
    store = CacheStore(tmp_path, "embeddings")
    store.prepare({"format": 1})
    with pytest.raises(CacheError, match="missing"):
        store.load("nope")
    store.path("bad").write_bytes(b"not an npy file")
    with pytest.raises(CacheError, match="bad.npy"):
        store.load("bad")
    with pytest.raises(CacheError, match="cannot name"):
        store.path("../escape")
