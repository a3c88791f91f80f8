"""Teacher throughput: the batched engine against a naive ``SamPredictor`` loop.

Measured per teacher kind and precision, on the same images:

- ``embed``: images/s through the image encoder, batched (``teacher.embed_batch_size``);
- ``everything``: images/s of the everything mode on cached embeddings (the SAMAug prior maps' masks);
- ``decode``: images/s decoding ``K`` perturbed boxes per image on cached embeddings, all prompts of all images
  in batched decoder calls (what a pseudo-label refresh does);
- ``engine``: embed + decode, images/s — the engine's cost for an image never seen before;
- ``naive``: the same work the way a segment-anything user writes it: ``SamPredictor.set_image`` per image and
  ``predict`` per box, fp32, one at a time; ``speedup = engine / naive``.

Timings use ``time.perf_counter`` after one warm-up call, with ``torch.cuda.synchronize`` on CUDA.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence

import numpy as np
import torch
from segment_anything import SamPredictor

from semisam.config.schema import RunConfig
from semisam.teacher.engine import SamTeacher
from semisam.teacher.precompute import everything_masks, to_uint8_rgb

logger = logging.getLogger("semisam")


def jittered_boxes(image_size: tuple[int, int], count: int, seed: int = 0) -> np.ndarray:
    """``count`` boxes (XYXY, pixels) around the image centre, each corner jittered by up to 10 % of the box side:
    the shape of a pseudo-label refresh's prompts."""
    height, width = image_size
    rng = np.random.default_rng(seed)
    base = np.array([0.3 * width, 0.3 * height, 0.7 * width, 0.7 * height], dtype=np.float32)
    side = np.array([0.4 * width, 0.4 * height, 0.4 * width, 0.4 * height], dtype=np.float32)
    boxes = base + rng.uniform(-0.1, 0.1, size=(count, 4)).astype(np.float32) * side
    return np.clip(boxes, 0, [width - 1, height - 1, width - 1, height - 1]).astype(np.float32)


def _timed(fn: Callable[[], object], device: torch.device, repeats: int = 1) -> float:
    """Seconds per call of ``fn`` after a warm-up call."""
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    tic = time.perf_counter()
    for _ in range(repeats):
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return (time.perf_counter() - tic) / repeats


def benchmark_teacher(
    teacher: SamTeacher,
    images: Sequence[np.ndarray],
    cfg: RunConfig,
    boxes_per_image: int = 10,
    everything: bool = True,
) -> dict[str, float]:
    """Throughputs (images/s) of one teacher on ``images`` (float32 (C, H, W) in [0, 1])."""
    device = teacher.device
    sizes = [tuple(int(s) for s in image.shape[-2:]) for image in images]
    inputs = [teacher.input_size(size) for size in sizes]
    boxes = [torch.from_numpy(jittered_boxes(size, boxes_per_image, seed=i)) for i, size in enumerate(sizes)]
    n = len(images)
    result: dict[str, float] = {"images": n, "boxes_per_image": boxes_per_image}

    embed_s = _timed(lambda: teacher.embed(images), device)
    embeddings = teacher.embed(images)
    decode_s = _timed(lambda: teacher.decode_boxes(embeddings, boxes, sizes, inputs), device)
    result["embed_img_s"] = n / embed_s
    result["decode_img_s"] = n / decode_s
    result["engine_img_s"] = n / (embed_s + decode_s)
    if everything:
        every_s = _timed(
            lambda: [everything_masks(teacher, im, embeddings[i : i + 1], cfg) for i, im in enumerate(images)], device
        )
        result["everything_img_s"] = n / every_s

    predictor = SamPredictor(teacher.model)

    def naive() -> None:  # the plain segment-anything path: set_image on a uint8 image, one box at a time
        for image, image_boxes in zip(images, boxes, strict=True):
            predictor.set_image(to_uint8_rgb(image))
            for box in image_boxes:
                predictor.predict(box=box.numpy(), multimask_output=False)

    naive_s = _timed(naive, device)  # fp32: SamPredictor runs the model as it is, without autocast
    result["naive_img_s"] = n / naive_s
    result["speedup"] = result["engine_img_s"] / result["naive_img_s"]
    return result


def format_rows(rows: list[dict]) -> str:
    """A Markdown table of benchmark rows."""
    columns = [
        ("teacher", "teacher"),
        ("precision", "precision"),
        ("device", "device"),
        ("embed_img_s", "embed img/s"),
        ("everything_img_s", "everything img/s"),
        ("decode_img_s", "decode K boxes img/s"),
        ("engine_img_s", "engine img/s"),
        ("naive_img_s", "naive img/s"),
        ("speedup", "engine / naive"),
    ]
    lines = ["| " + " | ".join(title for _, title in columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        cells = []
        for key, _ in columns:
            value = row.get(key, "")
            cells.append(f"{value:.3g}" if isinstance(value, float) else str(value))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
