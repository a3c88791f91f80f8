"""The offline teacher pass: embeddings + priors cached with a manifest, resumable, rebuilt for another teacher;
training with priors refuses a missing cache and trains on a complete one."""

import json

import numpy as np
import pytest
import torch

from semisam.config.loader import load_config
from semisam.data.readers import build_reader
from semisam.data.splits import resolve_split
from semisam.engine.trainer import Trainer
from semisam.teacher import precompute as pc
from semisam.teacher import stores
from semisam.teacher.cache import CacheError, cache_root
from semisam.teacher.engine import build_teacher
from semisam.teacher.models import build_tiny_sam, tiny_spec

from .conftest import REPO, tiny_overrides


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
    monkeypatch.setattr(stores, "identity_from_config", lambda c: stores.identity_of(tiny_teacher))
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


def test_samaug_alternation_feeds_raw_inputs_on_odd_iterations(phantom_root, tmp_path, tiny_teacher, monkeypatch):
    cfg = _cfg(phantom_root, tmp_path, "priors.enabled=true", "priors.alternate=true")
    monkeypatch.setattr(stores, "identity_from_config", lambda c: stores.identity_of(tiny_teacher))
    pc.precompute(cfg, teacher=tiny_teacher, splits=["labeled", "unlabeled", "val"], progress=False)
    trainer = Trainer(cfg, progress=False)
    raw = next(iter(trainer._loader(trainer.labeled_items, True, 2, 0)))
    trainer.iteration = 0
    augmented = trainer._inputs(dict(raw))
    trainer.iteration = 1
    plain = trainer._inputs(dict(raw))
    assert augmented["priors"].abs().sum() > 0
    assert torch.equal(augmented["image"][:, 1:], augmented["priors"])
    assert torch.all(plain["image"][:, 1:] == 0) and torch.equal(plain["image"][:, :1], raw["image"])


def test_export_png_stacks(phantom_root, tmp_path, tiny_teacher, monkeypatch):
    from PIL import Image

    from semisam.teacher.export import export_augmented

    cfg = _cfg(phantom_root, tmp_path)
    monkeypatch.setattr(stores, "identity_from_config", lambda c: stores.identity_of(tiny_teacher))
    pc.precompute(cfg, teacher=tiny_teacher, splits=["unlabeled", "test"], progress=False)
    out = export_augmented(cfg, tmp_path / "export", splits=["unlabeled", "test"])
    split = resolve_split(cfg.data, build_reader(cfg.data).case_ids())
    test_case, unlabeled_case = split.test[0], split.unlabeled[0]
    for k in range(3):
        assert Image.open(out / "images" / f"{test_case}_000{k}.png").size == (32, 32)
    seg = np.asarray(Image.open(out / "images" / f"{test_case}_0001.png"), dtype=np.float32) / 255
    cached = np.load(cache_root(cfg) / "priors" / f"{test_case}.npy").astype(np.float32)[0]
    assert np.abs(seg - cached).max() <= 1 / 255 + 1e-3
    assert (out / "labels" / f"{test_case}.png").exists()
    assert not (out / "labels" / f"{unlabeled_case}.png").exists()  # unlabeled cases never export a label


def test_export_nnunet_adds_prior_channels(tmp_path, tiny_teacher, monkeypatch):
    import nibabel as nib

    from semisam.data.phantom import make_phantom, phantom_data_config
    from semisam.teacher.export import export_augmented

    root = make_phantom(tmp_path / "nn", num_cases=8, size=32, seed=0, layout="nnunet", num_val=2, num_test=2)
    data = phantom_data_config(root, "nnunet")
    overrides = [f"data.{k}={v}" for k, v in _flatten(data).items()]
    cfg = load_config(
        REPO / "configs/demo.yaml",
        [
            *overrides,
            "data.split.labeled_count=null",
            "data.image_size=[32,32]",
            f"teacher.cache_dir={tmp_path / 'cache'}",
            "teacher.everything.points_per_side=4",
            "teacher.everything.pred_iou_thresh=0.0",
            "teacher.everything.stability_score_thresh=0.0",
            "device=cpu",
        ],
    )
    monkeypatch.setattr(stores, "identity_from_config", lambda c: stores.identity_of(tiny_teacher))
    pc.precompute(cfg, teacher=tiny_teacher, splits=["val"], progress=False)
    split = resolve_split(cfg.data, build_reader(cfg.data).case_ids())
    out = export_augmented(cfg, tmp_path / "nn_export", splits=["val"])
    case = split.val[0]
    original = nib.load(str(root / "imagesTr" / f"{case}_0000.nii.gz"))
    seg = nib.load(str(out / "imagesTr" / f"{case}_0001.nii.gz"))
    assert seg.shape == original.shape and np.allclose(seg.affine, original.affine)
    assert (out / "imagesTr" / f"{case}_0002.nii.gz").exists() and (out / "labelsTr" / f"{case}.nii.gz").exists()
    channels = json.loads((out / "dataset.json").read_text())["channel_names"]
    assert len(channels) == 3 and channels["1"] == "SAM segmentation prior"


def _flatten(d, prefix=""):
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = json.dumps(v) if isinstance(v, list) else v
    return out


@pytest.fixture(scope="module")
def tiny_box_teacher():
    """The tiny random SAM as a box-only teacher: the precompute takes the box-grid everything mode."""
    from dataclasses import replace

    cfg = load_config(REPO / "configs/demo.yaml", ["data.root=unused", "device=cpu"])
    spec = replace(tiny_spec(), kind="tiny_box", accepts_points=False)
    return build_teacher(cfg.teacher, sam=build_tiny_sam(seed=0), spec=spec)


def test_precompute_reports_prior_quality_from_labeled_and_val_labels_only(
    phantom_root, tmp_path, tiny_box_teacher, caplog
):
    import logging

    from PIL import Image

    cfg = _cfg(phantom_root, tmp_path, "teacher.everything.box_overlap=0.0")  # 4 boxes per image
    reader = build_reader(cfg.data)
    split = resolve_split(cfg.data, reader.case_ids())
    read = []
    real_read_label = reader.read_label
    reader.read_label = lambda case_id: read.append(case_id) or real_read_label(case_id)
    with caplog.at_level(logging.WARNING, logger="semisam"):
        report = pc.precompute(cfg, teacher=tiny_box_teacher, reader=reader, progress=False)
    assert "EMPTY PRIORS" not in caplog.text
    assert set(read) == set(split.labeled) | set(split.val)  # never an unlabeled or test case's label

    n_images = len({*split.labeled, *split.unlabeled, *split.val, *split.test})
    summary = json.loads((cache_root(cfg) / pc.SUMMARY_NAME).read_text())
    assert summary == report.summary
    assert summary["images"] == n_images and summary["empty_share"] == 0.0
    assert 1 <= summary["masks_per_image"]["min"] <= summary["masks_per_image"]["max"] <= 4
    assert summary["scored_images"] == len(split.labeled) + len(split.val)
    assert set(summary["classes"]) <= set(cfg.data.class_names[1:]) and summary["classes"]
    for c in summary["classes"].values():
        assert 0 < c["images"] <= summary["scored_images"] and 0 <= c["best_iou_mean"] <= 1
    preview = Image.open(cache_root(cfg) / pc.PREVIEW_NAME)
    assert preview.size[0] > 100 and preview.size[1] > 100


def test_precompute_warns_when_priors_are_empty(phantom_root, tmp_path, tiny_box_teacher, caplog):
    import logging

    # no predicted IoU exceeds 1: every mask is filtered, as SAM's thresholds did to LiteMedSAM's
    cfg = _cfg(
        phantom_root, tmp_path, "teacher.everything.box_overlap=0.0", "teacher.everything.box_pred_iou_thresh=1.0"
    )
    with caplog.at_level(logging.WARNING, logger="semisam"):
        report = pc.precompute(cfg, teacher=tiny_box_teacher, splits=["val"], progress=False)
    assert report.summary["empty_share"] == 1.0 and report.summary["masks_per_image"]["max"] == 0
    assert "EMPTY PRIORS" in caplog.text and f"{report.images} of {report.images} images" in caplog.text
    assert all(c["best_iou_mean"] == 0.0 for c in report.summary["classes"].values())


def test_the_offline_pass_follows_the_config():
    """Priors only for a student that takes them; embeddings of what pseudo-labels (and refinement) decode on."""
    from semisam.config.loader import load_config
    from semisam.teacher.precompute import offline_pass

    semisam = load_config(REPO / "configs/kvasir/10_semisam.yaml", ["priors.enabled=false"])
    assert offline_pass(semisam) == (False, ("labeled", "unlabeled", "val"))
    assert offline_pass(semisam, refine=True) == (False, ("labeled", "unlabeled", "val", "test"))
    with_priors = load_config(REPO / "configs/kvasir/10_semisam.yaml", ["priors.enabled=true"])
    assert offline_pass(with_priors)[0] is True
    assert offline_pass(with_priors, embeddings_only=True)[0] is False
    supervised = load_config(REPO / "configs/kvasir/10_supervised.yaml")
    assert offline_pass(supervised) == (False, ("labeled", "unlabeled"))
