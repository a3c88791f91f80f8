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

import functools
import logging
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from segment_anything import SamPredictor

from semisam.config.schema import RunConfig
from semisam.teacher.cache import CacheStore
from semisam.teacher.engine import SamTeacher
from semisam.teacher.precompute import everything_masks, to_uint8_rgb
from semisam.teacher.priors import prior_maps

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


# The offline pass (tools/precompute.py) split into its stages, per image: what each costs on the given images.
PRECOMPUTE_STAGES = ("read", "encoder", "everything", "priors", "save")


def precompute_stage_times(
    teacher: SamTeacher,
    loader,
    case_ids: Sequence[str],
    cfg: RunConfig,
    out_dir,
) -> dict[str, float]:
    """Seconds per 2D image of each stage of the offline pass, one image at a time, on ``case_ids`` (2D cases):

    - ``read``: reading and normalising the image (``CaseLoader.image``, cache cleared first);
    - ``encoder``: ``teacher.embed`` of that image (resize, normalise, image encoder);
    - ``everything``: :func:`~semisam.teacher.precompute.everything_masks` on its embedding (decoder, filters,
      NMS, masks at the original size);
    - ``priors``: :func:`~semisam.teacher.priors.prior_maps` of those masks;
    - ``save``: storing the embedding and the priors as the cache does (float16 ``.npy``, atomic) under ``out_dir``.

    Each stage is timed twice: wall clock (``<stage>``) and this process's CPU time (``<stage>_cpu``,
    ``time.process_time``). With one thread on a core that other jobs share, the CPU time is what the stage would
    take alone on that core; the wall clock also counts the waits. One warm-up image (the first) is run and not
    counted. Also returns ``total`` / ``total_cpu`` (sums of the stages), ``masks`` (mean masks per image) and
    ``images``.
    """
    stores = {kind: CacheStore(Path(out_dir), kind) for kind in ("embeddings", "priors")}
    for store in stores.values():
        store.dir.mkdir(parents=True, exist_ok=True)
    sums = dict.fromkeys([*PRECOMPUTE_STAGES, *(f"{s}_cpu" for s in PRECOMPUTE_STAGES)], 0.0)
    masks = 0
    counted = 0
    for index, case_id in enumerate([case_ids[0], *case_ids]):
        times: dict[str, float] = {}
        clock = [time.perf_counter(), time.process_time()]
        lap = functools.partial(_lap, times, clock)
        loader.clear()
        image = loader.image(case_id)
        if image.ndim != 3:
            raise ValueError(f"{case_id}: precompute_stage_times takes 2D cases, got shape {image.shape}")
        lap("read")
        embedding = teacher.embed([image])
        lap("encoder")
        records = everything_masks(teacher, image, embedding, cfg)
        lap("everything")
        maps = prior_maps(records, image.shape[-2:])
        lap("priors")
        stores["embeddings"].save(case_id, embedding[0].cpu().numpy())
        stores["priors"].save(case_id, maps)
        lap("save")
        if index == 0:
            continue  # warm-up
        counted += 1
        masks += len(records)
        for key, value in times.items():
            sums[key] += value
    result = {key: value / counted for key, value in sums.items()}
    result["total"] = sum(result[stage] for stage in PRECOMPUTE_STAGES)
    result["total_cpu"] = sum(result[f"{stage}_cpu"] for stage in PRECOMPUTE_STAGES)
    result["masks"] = masks / counted
    result["images"] = counted
    return result


def _lap(times: dict[str, float], clock: list[float], stage: str) -> None:
    """Record the wall and CPU seconds since ``clock`` as ``stage`` / ``<stage>_cpu`` and restart ``clock``."""
    now = (time.perf_counter(), time.process_time())
    times[stage], times[f"{stage}_cpu"] = now[0] - clock[0], now[1] - clock[1]
    clock[:] = now


def format_stage_rows(rows: list[dict]) -> str:
    """A Markdown table of :func:`precompute_stage_times` rows: CPU seconds per image by stage, then the wall
    clock total."""
    stages = (*PRECOMPUTE_STAGES, "total")
    titles = ["run", *(f"{stage} cpu s/img" for stage in stages), "total wall s/img", "masks/img"]
    lines = ["| " + " | ".join(titles) + " |", "|" + "---|" * len(titles)]
    for row in rows:
        cells = [str(row.get("label", ""))]
        cells += [f"{row[f'{stage}_cpu']:.3f}" for stage in stages]
        cells += [f"{row['total']:.3f}", f"{row['masks']:.1f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def precision_agreement(
    teachers: dict[str, SamTeacher],
    images: Sequence[np.ndarray],
    labels: Sequence[np.ndarray],
    boxes: Sequence[tuple[list[int], torch.Tensor]],
) -> list[dict]:
    """How much a teacher's precision changes what it returns, on labeled images prompted with label boxes.

    Args:
        teachers: the same model at several precisions, ``{name: teacher}``; the first is the reference (fp32).
        images: float32 (C, H, W) in [0, 1]; labels: their int (H, W) label maps.
        boxes: per image ``(classes, (N, 4) XYXY boxes)``, one box per class present
            (:func:`~semisam.teacher.grid_analysis.label_boxes`).

    Returns:
        one row per teacher: ``embed_s_per_image`` (one image per call, after a warm-up), ``dice`` (mean over
        boxes of the Dice of its mask with the boxed class) and ``dice_per_class``, and against the reference
        teacher's masks ``mask_iou`` (mean IoU; 1 where both are empty) and ``embedding_rel_error`` (relative L2
        norm of the embedding difference, mean over images).
    """
    rows, reference = [], None
    for name, teacher in teachers.items():
        teacher.embed(images[:1])  # warm-up
        tic = time.perf_counter()
        embeddings = torch.cat([teacher.embed([image]) for image in images]).float()
        seconds = (time.perf_counter() - tic) / len(images)
        masks = []
        for i, (image, (_, image_boxes)) in enumerate(zip(images, boxes, strict=True)):
            size = tuple(int(s) for s in image.shape[-2:])
            result = teacher.decode_boxes(embeddings[i : i + 1], [image_boxes], [size], [teacher.input_size(size)])[0]
            masks.append((result.logits > 0).cpu().numpy())
        dice: dict[int, list[float]] = {}
        for label, (classes, _), mask in zip(labels, boxes, masks, strict=True):
            for c, m in zip(classes, mask, strict=True):
                truth = np.asarray(label) == c
                dice.setdefault(c, []).append(2 * float((m & truth).sum()) / max(1.0, float(m.sum() + truth.sum())))
        row = {
            "precision": name,
            "images": len(images),
            "boxes": sum(len(v) for v in dice.values()),
            "embed_s_per_image": seconds,
            "dice": float(np.mean([d for v in dice.values() for d in v])) if dice else float("nan"),
            "dice_per_class": {c: float(np.mean(v)) for c, v in sorted(dice.items())},
        }
        if reference is None:
            reference = (embeddings, masks)
        else:
            ref_emb, ref_masks = reference
            diff = (embeddings - ref_emb).flatten(1).norm(dim=1) / ref_emb.flatten(1).norm(dim=1)
            ious = []
            for a_all, b_all in zip(ref_masks, masks, strict=True):
                for a, b in zip(a_all, b_all, strict=True):
                    union = float((a | b).sum())
                    ious.append(1.0 if union == 0 else float((a & b).sum()) / union)
            row["mask_iou"] = float(np.mean(ious)) if ious else float("nan")
            row["embedding_rel_error"] = float(diff.mean())
        rows.append(row)
    return rows
