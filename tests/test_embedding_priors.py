"""The teacher's image embeddings as a prior input (``priors.source=embeddings``): the fixed PCA, the crop to the
image's extent, the cache and its identity, alignment with the image under every transform and every mixing,
the student's learned projection, and training / evaluation refusing what does not match."""

import json

import numpy as np
import pytest
import torch

from semisam.config.loader import load_config
from semisam.config.schema import ConfigError
from semisam.data.dataset import SliceDataset
from semisam.data.fusion import align_priors, fuse_priors, student_in_channels
from semisam.data.readers import build_reader
from semisam.data.splits import resolve_split
from semisam.engine.trainer import Trainer
from semisam.methods import build_method
from semisam.student.unet import EmbeddingHead, PriorProjection, build_run_student
from semisam.teacher import precompute as pc
from semisam.teacher import stores
from semisam.teacher.cache import CacheError, cache_root
from semisam.teacher.embedding_priors import BASIS_NAME, PcaBasis, crop_to_extent, fit_pca

from .conftest import REPO, tiny_overrides

FEAT = ("priors.enabled=true", "priors.source=embeddings")


def _cfg(root, tmp_path, *extra, method="supervised"):
    overrides = tiny_overrides(root, tmp_path / "run", **{"method.name": method})
    overrides += [f"teacher.cache_dir={tmp_path / 'cache'}", *FEAT, "priors.embedding_channels=6", *extra]
    return load_config(REPO / "configs/demo.yaml", overrides)


# ---------------------------------------------------------------- the reduction and the image's extent


def test_pca_finds_the_dominant_directions_and_whitens():
    rng = np.random.default_rng(0)
    basis = np.linalg.qr(rng.normal(size=(16, 16)))[0][:, :3].T  # 3 orthonormal directions in 16 channels
    scales = np.array([5.0, 2.0, 1.0])
    embeddings = []
    for _ in range(6):
        coeffs = rng.normal(size=(3, 8, 8)) * scales[:, None, None]
        x = np.einsum("kc,khw->chw", basis, coeffs) + 0.01 * rng.normal(size=(16, 8, 8)) + 3.0
        embeddings.append((x, (32, 32)))
    pca = fit_pca(embeddings, channels=3, encoder_size=32)
    # the components span the planted directions, in order of variance
    overlap = np.abs(pca.components @ basis.T)
    assert np.allclose(np.diag(overlap), 1, atol=0.01)
    assert np.all(np.diff(pca.scales) < 0) and 0.99 < pca.explained.sum() <= 1
    reduced = np.concatenate([pca.reduce(x[None])[0].reshape(3, -1) for x, _ in embeddings], axis=1)
    assert np.allclose(reduced.mean(1), 0, atol=0.05) and np.allclose(reduced.std(1), 1, atol=0.05)
    assert np.allclose(np.corrcoef(reduced), np.eye(3), atol=0.05)


def test_pca_samples_only_the_image_extent():
    """Grid cells beyond the resized image (padding) never enter the fit: a constant in the padding is ignored."""
    rng = np.random.default_rng(1)
    x = rng.normal(size=(4, 8, 8))
    x[:, :, 4:] = 100.0  # the padded right half of a 32 x 16 (h x w) image in a 32 x 32 frame
    pca = fit_pca([(x, (32, 16))], channels=2, encoder_size=32)
    assert np.all(np.abs(pca.mean) < 1.0)


def test_crop_to_extent_keeps_an_image_aligned_with_its_map():
    """A map that encodes the input frame's x coordinate, cropped to a non-square image's extent and aligned to
    its pixels, gives back each pixel's own x coordinate (to within the grid's resolution)."""
    encoder, grid = 64, 16
    height, width = 40, 64  # the image as the teacher resized it (longest side 64), padded below to 64 x 64
    cells = (np.arange(grid) + 0.5) * encoder / grid  # each cell's centre, in input-frame pixels
    maps = np.stack([np.tile(cells, (grid, 1)), np.tile(cells[:, None], (1, grid))])[None]  # x, y
    cropped = crop_to_extent(maps, (height, width), encoder)
    assert cropped.shape == (1, 2, 10, 16)  # ceil(40 * 16 / 64) rows
    native = (80, 128)  # the image's own size, twice the resized one
    aligned = align_priors(cropped[0], native)
    xs = (np.arange(native[1]) + 0.5) * width / native[1]
    ys = (np.arange(native[0]) + 0.5) * height / native[0]
    inner = slice(8, -8)  # bilinear edges clamp at the border cells
    assert np.abs(aligned[0][:, inner] - xs[inner]).max() < 1.0
    assert np.abs(aligned[1][inner, :] - ys[inner, None]).max() < 1.0


# ---------------------------------------------------------------- the cache


@pytest.fixture
def feat_cache(phantom_root, tmp_path, tiny_teacher, monkeypatch):
    monkeypatch.setattr(stores, "identity_from_config", lambda c: stores.identity_of(tiny_teacher))
    cfg = _cfg(phantom_root, tmp_path)
    report = pc.precompute(cfg, teacher=tiny_teacher, progress=False)
    return cfg, report


def test_precompute_writes_the_reduced_embeddings_of_every_split(feat_cache, tiny_teacher):
    cfg, _ = feat_cache
    root = cache_root(cfg) / "embedding_priors"
    split = resolve_split(cfg.data, build_reader(cfg.data).case_ids())
    cases = {*split.labeled, *split.unlabeled, *split.val, *split.test}
    assert {p.stem for p in root.glob("*.npy")} == cases
    manifest = json.loads((root / "manifest.json").read_text())
    assert manifest["teacher"]["kind"] == tiny_teacher.spec.kind
    assert manifest["reduction"]["channels"] == 6 and manifest["reduction"]["method"] == "pca"
    assert manifest["reduction"]["fit_cases"] == len(stores.embedding_fit_ids(cfg))
    maps = np.load(root / f"{split.test[0]}.npy")
    assert maps.dtype == np.float16 and maps.shape == (6, 4, 4)  # the tiny teacher's 4 x 4 grid
    assert maps.std() > 0.1  # not a constant map
    # the fit used training cases only: the whole pool (beyond the run's unlabeled_count), never val or test
    fit = set(stores.embedding_fit_ids(cfg))
    pool = set(build_reader(cfg.data).case_ids()) - {*split.val, *split.test}
    assert fit == pool and len(fit) > len({*split.labeled, *split.unlabeled})
    assert (cache_root(cfg) / "embedding_priors_preview.png").stat().st_size > 1000
    again = pc.precompute(cfg, teacher=tiny_teacher, progress=False)
    assert again.computed == []


def test_the_pca_fit_ignores_the_labeled_subset_and_the_pool_size(phantom_root, tmp_path):
    base = _cfg(phantom_root, tmp_path)
    other = _cfg(phantom_root, tmp_path, "data.split.labeled_count=3", "data.split.unlabeled_count=2")
    assert stores.embedding_fit_ids(base) == stores.embedding_fit_ids(other)


def test_training_refuses_another_reduction_and_the_precompute_rebuilds_it(feat_cache, tmp_path, tiny_teacher):
    cfg, _ = feat_cache
    trainer = Trainer(cfg, progress=False)
    assert trainer.in_channels == 1 + 6
    other = _cfg(cfg.data.root, tmp_path, "priors.embedding_channels=4")
    with pytest.raises(CacheError, match=r"priors.source=embeddings.*reduction.channels: 6 -> 4"):
        Trainer(other, progress=False)
    pc.precompute(other, teacher=tiny_teacher, progress=False)
    assert PcaBasis.load(cache_root(other) / "embedding_priors" / BASIS_NAME).channels == 4
    assert Trainer(other, progress=False).in_channels == 1 + 4


def test_training_refuses_a_cache_of_another_teacher(feat_cache, tiny_teacher, monkeypatch):
    cfg, _ = feat_cache
    identity = dict(stores.identity_of(tiny_teacher), checkpoint_sha256="another-teacher")
    monkeypatch.setattr(stores, "identity_from_config", lambda c: identity)
    with pytest.raises(CacheError, match="another teacher"):
        Trainer(cfg, progress=False)


def test_a_student_trained_with_embedding_priors_trains_and_evaluates_only_with_them(feat_cache):
    from semisam.evaluation.runner import evaluate_checkpoint

    cfg, _ = feat_cache
    trainer = Trainer(cfg, progress=False)
    assert isinstance(trainer.model, PriorProjection)
    batch = trainer._inputs(next(iter(trainer._loader(trainer.labeled_items, True, 2, 0))))
    assert batch["image"].shape[1] == 7 and torch.equal(batch["image"][:, 1:], batch["priors"])
    result = trainer.fit()
    summary = evaluate_checkpoint(result.best_checkpoint, split="test", progress=False)
    assert 0 <= summary["foreground_mean"]["dice"] <= 1
    for path in (cache_root(cfg) / "embedding_priors").glob("*.npy"):
        path.unlink()
    with pytest.raises(CacheError, match=r"priors.source=embeddings.*lacks prior maps"):
        evaluate_checkpoint(result.best_checkpoint, split="test", progress=False)


# ---------------------------------------------------------------- alignment under augmentation and mixing


class _ImageAsPriors:
    """A prior store whose maps are the case's own normalised image, repeated: aligned maps equal the image."""

    def __init__(self, reader, cfg, channels=3):
        from semisam.data.cases import CaseLoader

        self.loader, self.channels = CaseLoader(reader, cfg), channels

    def load(self, case_id):
        return np.repeat(self.loader.image(case_id), self.channels, axis=0)


@pytest.mark.parametrize(
    "augmentation",
    [
        {"flip": True, "rotate90": False, "rotate_limit": 0.0, "scale_limit": 0.0},
        {"flip": False, "rotate90": True, "rotate_limit": 0.0, "scale_limit": 0.0},
        {"flip": False, "rotate90": False, "rotate_limit": 30.0, "scale_limit": 0.2},
        {"flip": True, "rotate90": True, "rotate_limit": 20.0, "scale_limit": 0.1},
    ],
    ids=["flips", "rot90", "affine", "all"],
)
@pytest.mark.parametrize("in_memory", [True, False], ids=["store", "on-the-fly"])
def test_priors_move_with_the_image_under_every_spatial_transform(phantom_root, tmp_path, augmentation, in_memory):
    extra = [f"data.augmentation.{k}={v}" for k, v in augmentation.items()]
    cfg = _cfg(
        phantom_root, tmp_path, "data.augmentation.weak_brightness_contrast=0", f"data.in_memory={in_memory}", *extra
    )
    reader = build_reader(cfg.data)
    split = resolve_split(cfg.data, reader.case_ids())
    items = [(c, -1) for c in split.labeled]
    dataset = SliceDataset(reader, items, cfg.data, labeled=True, strong=2, priors=_ImageAsPriors(reader, cfg.data))
    moved = strong_changed = 0
    for seed in range(12):
        sample = dataset[(seed % len(items), seed)]
        image, priors = sample["image"], sample["priors"]
        assert priors.shape == (3, *image.shape[-2:])
        assert torch.allclose(priors, image.expand(3, -1, -1), atol=1e-5)  # moved together, pixel for pixel
        # photometric views change the image channels only: the priors stay the weak view's
        strong_changed += not torch.allclose(sample["strong_image"], image)
        unaugmented = dataset.loader.image_slice(items[seed % len(items)][0], -1)
        moved += not np.allclose(image.numpy(), unaugmented, atol=1e-4)
    assert moved > 0 and strong_changed > 0  # the transforms did act


def _fused_batch(batch=4, size=16, channels=1, priors=3):
    """Unlabeled / labeled batches whose prior channels copy the image channel: any mixing that treats the
    channels alike keeps the copy."""
    image = torch.rand(batch, channels, size, size)
    fused = fuse_priors(image, image.expand(-1, priors, -1, -1), "concat")
    return fused, torch.randint(0, 4, (batch, size, size))


@pytest.mark.parametrize("method", ["unimatch", "bcp"])
def test_mixing_moves_the_priors_with_the_image(phantom_root, tmp_path, method):
    cfg = _cfg(phantom_root, tmp_path, method=method)
    cfg.method.unimatch.cutmix_prob = 1.0
    cfg.method.unimatch.feature_perturbation = False  # the spy has no decoder to perturb; mixing is tested
    seen = []

    class Spy(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.head = torch.nn.Conv2d(7, cfg.data.num_classes, 1)

        def forward(self, x):
            seen.append(x.detach().clone())
            return self.head(x)

    model = Spy()
    step = build_method(cfg)
    fused_u, _ = _fused_batch(priors=6)
    fused_l, label = _fused_batch(priors=6)
    unlabeled = {"image": fused_u, "strong_image": fused_u.clone(), "strong_image_2": fused_u.clone()}
    labeled = {"image": fused_l, "label": label}
    ema = torch.nn.Module()
    ema.module = Spy()
    step.step(model, ema, labeled, unlabeled, iteration=10_000)
    mixed = 0
    for x in seen:
        for sample in x:
            assert torch.equal(sample[1:], sample[:1].expand(6, -1, -1))
        mixed += 1
    assert mixed >= 2


# ---------------------------------------------------------------- the student's input and its projection


@pytest.mark.parametrize("channels", [4, 32])
def test_the_student_input_follows_the_config(phantom_root, tmp_path, channels):
    cfg = _cfg(phantom_root, tmp_path, f"priors.embedding_channels={channels}")
    assert student_in_channels(cfg) == 1 + channels
    model = build_run_student(cfg)
    assert isinstance(model, PriorProjection) and model.project[0].in_channels == channels
    assert model.project[0].out_channels == 16 and model.keep_image
    out = model(torch.rand(2, 1 + channels, 32, 32))
    assert out.shape == (2, cfg.data.num_classes, 32, 32)
    with pytest.raises(ValueError, match="embedding-prior channels"):
        model(torch.rand(2, 3, 32, 32))
    plain = _cfg(phantom_root, tmp_path, "priors.enabled=false")
    assert student_in_channels(plain) == 1 and not isinstance(build_run_student(plain), PriorProjection)


def test_the_projection_learns_from_the_priors():
    """The prior channels reach the logits through the projection (its gradient is not zero)."""
    net = torch.nn.Conv2d(1 + 4, 2, 1)
    model = PriorProjection(net, image_channels=1, prior_channels=6, width=4)
    x = torch.rand(2, 7, 8, 8)
    model(x).sum().backward()
    assert model.project[0].weight.grad.abs().sum() > 0


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (("priors.fusion=add",), "priors.fusion must be concat"),
        (("priors.alternate=true",), "priors.alternate"),
        (("priors.embedding_channels=300",), "priors.embedding_channels=300"),
        (("priors.source=pixels",), "priors.source='pixels'"),
    ],
)
def test_bad_embedding_prior_settings_name_the_key(phantom_root, tmp_path, extra, message):
    with pytest.raises(ConfigError, match=message):
        _cfg(phantom_root, tmp_path, *extra)


def test_the_head_only_reference_reads_the_priors_alone(phantom_root, tmp_path):
    cfg = _cfg(phantom_root, tmp_path, "student.arch=embedding_head")
    model = build_run_student(cfg).eval()
    assert isinstance(model.net, EmbeddingHead) and not model.keep_image
    x = torch.rand(2, 7, 32, 32)
    other_image = x.clone()
    other_image[:, :1] = torch.rand(2, 1, 32, 32)
    with torch.no_grad():
        assert model(x).shape == (2, cfg.data.num_classes, 32, 32)
        assert model(torch.rand(1, 7, 33, 30)).shape == (1, cfg.data.num_classes, 33, 30)
        assert torch.equal(model(x), model(other_image))  # the image is not read
        other_priors = x.clone()
        other_priors[:, 1:] = torch.rand(2, 6, 32, 32)
        assert not torch.allclose(model(x), model(other_priors))
    with pytest.raises(ConfigError, match="embedding_head reads the embedding priors"):
        _cfg(phantom_root, tmp_path, "student.arch=embedding_head", "priors.enabled=false")


@pytest.mark.parametrize("seed", [None, 7])
def test_more_channels_than_opencv_takes_still_move_as_one(seed):
    """A 256-component embedding prior exceeds OpenCV's channel limit: it is transformed in chunks, under one draw."""
    import albumentations as A

    from semisam.data.transforms import MAX_JOINT_CHANNELS, apply_joint

    rng = np.random.default_rng(0)
    image = rng.random((1, 24, 24)).astype(np.float32)
    priors = np.repeat(image, MAX_JOINT_CHANNELS + 140, axis=0)
    label = (image[0] > 0.5).astype(np.int64)
    transform = A.Compose([A.HorizontalFlip(p=0.5), A.Affine(rotate=(-40, 40), p=1.0)], seed=0)
    for _ in range(4):
        cont, disc = apply_joint(transform, {"image": image, "priors": priors}, {"label": label}, seed)
        assert cont["priors"].shape == priors.shape
        assert np.allclose(cont["priors"], cont["image"], atol=1e-6)
        assert not np.allclose(cont["image"], image)
        assert disc["label"].shape == label.shape
