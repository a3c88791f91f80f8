"""The batched teacher engine equals segment-anything's own one-prompt-at-a-time ``SamPredictor``."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch
from segment_anything import SamPredictor

from semisam.config.schema import TeacherConfig
from semisam.teacher import SamTeacher, TeacherError, build_teacher, build_tiny_sam, tiny_spec
from semisam.teacher.engine import cpu_has_native_bf16
from semisam.teacher.models import INTENSITY_MINMAX, RESIZE_SQUARE

CPU = torch.device("cpu")
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def _images(seed: int = 0) -> list[np.ndarray]:
    """Two images of different sizes and channel counts: RGB 64x80 and grayscale 96x64, float32 in [0, 1]."""
    rng = np.random.default_rng(seed)
    return [rng.random((3, 64, 80), dtype=np.float32), rng.random((1, 96, 64), dtype=np.float32)]


# XYXY boxes in each image's original pixel coordinates
BOXES = [
    np.array([[5, 5, 40, 30], [10, 20, 70, 60], [0, 0, 79, 63]], dtype=np.float32),
    np.array([[3, 4, 50, 90], [20, 30, 40, 50]], dtype=np.float32),
]


@pytest.fixture(scope="module")
def tiny() -> SamTeacher:
    return SamTeacher(build_tiny_sam(seed=0), tiny_spec(), CPU, None, "tiny-seed-0")


@pytest.fixture(scope="module")
def lite() -> SamTeacher:
    return build_teacher(TeacherConfig(kind="litemedsam", device="cpu", precision="fp32"))  # vs SamPredictor, fp32


def _predictor_reference(teacher: SamTeacher, images, boxes, multimask=False, points=None, labels=None):
    """One prompt at a time through SamPredictor, on the engine's own resized image tensor."""
    predictor = SamPredictor(teacher.model)
    features, logits, ious = [], [], []
    for k, image in enumerate(images):
        original = tuple(image.shape[-2:])
        predictor.set_torch_image(teacher.transform_image(image), original)
        features.append(predictor.features)
        n = len(boxes[k]) if boxes is not None else len(points[k])
        per_image_logits, per_image_iou = [], []
        for j in range(n):
            box = None
            if boxes is not None:
                box = predictor.transform.apply_boxes_torch(torch.as_tensor(boxes[k][j : j + 1]), original)
            coords = point_labels = None
            if points is not None:
                coords = predictor.transform.apply_coords_torch(torch.as_tensor(points[k][j : j + 1]), original)
                point_labels = torch.as_tensor(labels[k][j : j + 1])
            masks, iou, _ = predictor.predict_torch(
                coords, point_labels, boxes=box, multimask_output=multimask, return_logits=True
            )
            per_image_logits.append(masks[0] if multimask else masks[0, 0])
            per_image_iou.append(iou[0] if multimask else iou[0, 0])
        logits.append(torch.stack(per_image_logits))
        ious.append(torch.stack(per_image_iou))
    return torch.cat(features), logits, ious


def _assert_close(results, logits, ious, atol):
    for result, expected_logits, expected_iou in zip(results, logits, ious, strict=True):
        assert result.logits.dtype == torch.float32 and result.iou.dtype == torch.float32
        assert result.logits.shape == expected_logits.shape
        torch.testing.assert_close(result.logits, expected_logits, rtol=0, atol=atol)
        torch.testing.assert_close(result.iou, expected_iou, rtol=0, atol=atol)


# ----------------------------------------------------------------------------------------------------------------
# preprocessing
# ----------------------------------------------------------------------------------------------------------------


def test_preprocess_shapes_sizes_and_grayscale(tiny):
    images = _images()
    x, original_sizes, input_sizes = tiny.preprocess(images)
    assert x.shape == (2, 3, 64, 64) and x.dtype == torch.float32
    assert original_sizes == [(64, 80), (96, 64)]
    assert input_sizes == [(51, 64), (64, 43)] == [tiny.input_size(s) for s in original_sizes]
    gray = images[1]
    torch.testing.assert_close(tiny.preprocess([gray])[0], tiny.preprocess([np.repeat(gray, 3, axis=0)])[0])
    # zero padding bottom/right of the resized image (Sam.preprocess)
    assert torch.all(x[0, :, 51:, :] == 0) and torch.all(x[1, :, :, 43:] == 0)
    # SAM intensity: [0, 1] -> 0..255 -> ImageNet mean/std
    flat = np.full((3, 64, 64), 0.5, dtype=np.float32)
    expected = (127.5 - torch.tensor([123.675, 116.28, 103.53])) / torch.tensor([58.395, 57.12, 57.375])
    torch.testing.assert_close(tiny.preprocess([flat])[0][0, :, 10, 10], expected)
    for bad in (np.zeros((2, 8, 8), np.float32), np.zeros((8, 8), np.float32), np.zeros((3, 8, 8), np.uint8)):
        with pytest.raises(ValueError):
            tiny.preprocess([bad])


def test_minmax_and_square_preprocessing(tiny):
    spec = dataclasses.replace(
        tiny_spec(), kind="tiny-medsam-like", resize=RESIZE_SQUARE, intensity=INTENSITY_MINMAX, accepts_points=False
    )
    teacher = SamTeacher(build_tiny_sam(seed=0), spec, CPU, None, None)
    image = np.full((1, 32, 48), 0.3, dtype=np.float32)
    image[0, 10:20, 10:30] = 0.6
    resized = teacher.transform_image(image)
    assert resized.shape == (1, 3, 64, 64)  # stretched to a square
    assert resized.min().item() == pytest.approx(0.0) and resized.max().item() == pytest.approx(255.0)
    assert teacher.input_size((32, 48)) == (64, 64)
    boxes = teacher.transform_boxes(torch.tensor([[12.0, 8.0, 24.0, 16.0]]), (32, 48))
    torch.testing.assert_close(boxes, torch.tensor([[12 * 64 / 48, 8 * 2.0, 24 * 64 / 48, 16 * 2.0]]))
    embeddings = teacher.embed([image])
    result = teacher.decode_boxes(embeddings, [np.array([[10, 10, 30, 20]])], [(32, 48)], [(64, 64)])[0]
    assert result.logits.shape == (1, 32, 48)


# ----------------------------------------------------------------------------------------------------------------
# batched engine == SamPredictor, tiny SAM
# ----------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("multimask", [False, True])
def test_tiny_batched_decode_equals_predictor(tiny, multimask):
    images = _images()
    features, logits, ious = _predictor_reference(tiny, images, BOXES, multimask=multimask)
    embeddings = tiny.embed(images, batch_size=2)
    torch.testing.assert_close(embeddings, features, rtol=0, atol=1e-5)
    _, original_sizes, input_sizes = tiny.preprocess(images)
    # batch_size 2 on 5 prompts: decoder calls that straddle the two images
    results = tiny.decode_boxes(embeddings, BOXES, original_sizes, input_sizes, multimask=multimask, batch_size=2)
    assert [r.logits.shape for r in results] == [lg.shape for lg in logits]
    _assert_close(results, logits, ious, atol=1e-5)
    one_call = tiny.decode_boxes(embeddings, BOXES, original_sizes, input_sizes, multimask=multimask)
    _assert_close(one_call, logits, ious, atol=1e-5)


def test_tiny_batched_embed_equals_per_image(tiny):
    images = _images() + _images(seed=1)
    batched = tiny.embed(images, batch_size=3)
    single = torch.cat([tiny.embed([image]) for image in images])
    assert batched.shape == (4, 256, 4, 4) and batched.dtype == torch.float32
    torch.testing.assert_close(batched, single, rtol=0, atol=1e-5)


def test_tiny_points_with_and_without_boxes_equal_predictor(tiny):
    images = _images()
    points = [np.array([[[20, 15], [60, 50]]] * 3, np.float32), np.array([[[30, 60], [10, 10]]] * 2, np.float32)]
    labels = [np.array([[1, 0]] * 3), np.array([[1, 1]] * 2)]
    embeddings = tiny.embed(images)
    _, original_sizes, input_sizes = tiny.preprocess(images)
    for boxes in (BOXES, None):
        _, logits, ious = _predictor_reference(tiny, images, boxes, points=points, labels=labels)
        results = tiny.decode_boxes(
            embeddings, boxes, original_sizes, input_sizes, points=points, point_labels=labels, batch_size=4
        )
        _assert_close(results, logits, ious, atol=1e-5)
    ragged, ragged_labels = [points[0], points[1][:, :1]], [labels[0], labels[1][:, :1]]
    with pytest.raises(ValueError, match="same number of points"):
        tiny.decode_boxes(embeddings, None, original_sizes, input_sizes, points=ragged, point_labels=ragged_labels)


def test_decode_subsets_empty_prompts_and_half_precision_embeddings(tiny):
    images = _images()
    embeddings = tiny.embed(images)
    _, original_sizes, input_sizes = tiny.preprocess(images)
    full = tiny.decode_boxes(embeddings, BOXES, original_sizes, input_sizes)
    # a reordered subset of the embeddings, e.g. read back from a float16 cache on the CPU
    reversed_half = embeddings.flip(0).half().cpu()
    results = tiny.decode_boxes(
        reversed_half, [np.zeros((0, 4), np.float32), BOXES[0]], original_sizes[::-1], input_sizes[::-1]
    )
    assert results[0].logits.shape == (0, 96, 64) and results[0].iou.shape == (0,)
    torch.testing.assert_close(results[1].logits, full[0].logits, rtol=0, atol=1e-2)
    with pytest.raises(ValueError, match=r"\(N, 4\)"):
        tiny.decode_boxes(embeddings, [BOXES[0][0], BOXES[1]], original_sizes, input_sizes)
    with pytest.raises(ValueError, match="original sizes"):
        tiny.decode_boxes(embeddings, BOXES, original_sizes[:1], input_sizes)


def test_teacher_is_frozen_and_outputs_carry_no_gradient(tiny):
    assert not tiny.model.training
    assert not any(p.requires_grad for p in tiny.model.parameters())
    images = _images()
    embeddings = tiny.embed(images)
    _, original_sizes, input_sizes = tiny.preprocess(images)
    result = tiny.decode_boxes(embeddings, BOXES, original_sizes, input_sizes)[0]
    assert not embeddings.requires_grad and not result.logits.requires_grad


def test_manifest_names_the_teacher(tiny):
    manifest = tiny.manifest()
    assert manifest == {
        "kind": "tiny",
        "checkpoint_sha256": "tiny-seed-0",
        "preprocessing": "resize-longest-64+sam-mean-std+pad",
        "encoder_size": 64,
        "embedding_shape": [256, 4, 4],
        "dtype": "float32",
        "semisam_teacher_version": 1,
    }
    assert json.loads(json.dumps(manifest)) == manifest


def test_build_teacher_with_an_injected_model():
    cfg = TeacherConfig(kind="sam_vit_b", device="cpu", precision="auto", embed_batch_size=3, decode_batch_size=7)
    teacher = build_teacher(cfg, sam=build_tiny_sam(), spec=tiny_spec(), checkpoint_sha256="abc")
    # auto: bf16 where the CPU computes it natively, fp32 elsewhere
    assert teacher.device == CPU and teacher.dtype == (torch.bfloat16 if cpu_has_native_bf16() else None)
    assert (teacher.embed_batch_size, teacher.decode_batch_size) == (3, 7)
    assert teacher.manifest()["checkpoint_sha256"] == "abc"
    with pytest.raises(TeacherError, match="encoder_size"):
        build_teacher(cfg, sam=build_tiny_sam())  # the sam_vit_b spec (1024) does not fit a 64-pixel encoder


# ----------------------------------------------------------------------------------------------------------------
# LiteMedSAM: real weights
# ----------------------------------------------------------------------------------------------------------------


def test_litemedsam_batched_engine_equals_predictor(lite):
    images = _images()
    features, logits, ious = _predictor_reference(lite, images, BOXES)
    embeddings = lite.embed(images, batch_size=2)
    assert embeddings.shape == (2, 256, 64, 64)
    torch.testing.assert_close(embeddings, features, rtol=0, atol=1e-4)
    _, original_sizes, input_sizes = lite.preprocess(images)
    assert input_sizes == [(205, 256), (256, 171)]
    results = lite.decode_boxes(embeddings, BOXES, original_sizes, input_sizes, batch_size=4)
    _assert_close(results, logits, ious, atol=1e-4)
    manifest = lite.manifest()
    assert manifest["kind"] == "litemedsam" and manifest["embedding_shape"] == [256, 64, 64]
    assert manifest["preprocessing"] == "resize-longest-256+minmax+pad" and len(manifest["checkpoint_sha256"]) == 64


def test_box_only_teacher_refuses_points(lite):
    embeddings = torch.zeros((1, 256, 64, 64))
    with pytest.raises(TeacherError, match="litemedsam is box-only"):
        lite.decode_boxes(
            embeddings,
            [np.array([[1, 1, 5, 5]], np.float32)],
            [(64, 64)],
            [(256, 256)],
            points=[np.zeros((1, 1, 2), np.float32)],
            point_labels=[np.ones((1, 1))],
        )


# ----------------------------------------------------------------------------------------------------------------
# GPU (the lent machine): autocast on CUDA
# ----------------------------------------------------------------------------------------------------------------


@pytest.mark.gpu
@needs_cuda
def test_cuda_bf16_teacher_matches_cpu_fp32(tiny):
    cfg = TeacherConfig(kind="litemedsam", device="cuda", precision="auto")
    gpu = build_teacher(cfg)
    assert gpu.dtype in (torch.bfloat16, torch.float16) and gpu.manifest()["dtype"] != "float32"
    cpu = build_teacher(TeacherConfig(kind="litemedsam", device="cpu"))
    images = _images()
    _, original_sizes, input_sizes = cpu.preprocess(images)
    gpu_embeddings = gpu.embed(images)
    assert gpu_embeddings.device.type == "cuda" and gpu_embeddings.dtype == torch.float32
    cpu_embeddings = cpu.embed(images)
    assert torch.nn.functional.cosine_similarity(gpu_embeddings.cpu().flatten(), cpu_embeddings.flatten(), dim=0) > 0.99
    gpu_results = gpu.decode_boxes(gpu_embeddings, BOXES, original_sizes, input_sizes)
    cpu_results = cpu.decode_boxes(cpu_embeddings, BOXES, original_sizes, input_sizes)
    for g, c in zip(gpu_results, cpu_results, strict=True):
        agreement = ((g.logits.cpu() > 0) == (c.logits > 0)).float().mean()
        assert agreement > 0.97
        assert g.logits.dtype == torch.float32
    fp32 = SamTeacher(build_tiny_sam(seed=0), tiny_spec(), torch.device("cuda"), None, None)
    torch.testing.assert_close(fp32.embed(images).cpu(), tiny.embed(images), rtol=1e-3, atol=1e-3)
