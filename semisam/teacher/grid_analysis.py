"""The box grid of a box-only teacher, box by box: what each grid box's mask covers, scored against the labels.

For choosing the everything mode's rules on real data and for saying why its priors help or not; and,
with one box around each labeled structure instead of the grid, what the teacher returns for the best prompt a
student could give (its ceiling per structure, e.g. ACDC's myocardium box returns the LV cavity).
Every box of the grid (:func:`~semisam.teacher.everything.box_grid`) is decoded on an image's cached embedding and
its raw mask (logits > 0, before the everything mode's filters, NMS and top-fraction rule) is scored against each
labeled structure (IoU). The per-image question that matters for SAMAug priors is whether the teacher's own
scores single out the mask of a structure: :func:`rank_rules` reports, for each score and each ``k``, how well
the best of the ``k`` top-scored masks of an image matches each class, next to the best of all of them.

Measurement only (labeled and validation images): nothing here feeds training.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import numpy as np
import torch
from tqdm import tqdm

from semisam.data.cases import CaseLoader
from semisam.data.readers import build_reader
from semisam.data.splits import resolve_split
from semisam.teacher.boxes import component_box
from semisam.teacher.cache import CacheStore, cache_root
from semisam.teacher.everything import MASK_THRESHOLD, STABILITY_SCORE_OFFSET, box_grid, calculate_stability_score

#: The teacher's per-mask scores that :func:`rank_rules` ranks masks by.
SCORES = ("predicted_iou", "stability_score", "mean_logit")


def score_box_masks(
    logits: torch.Tensor,
    predicted_iou: torch.Tensor,
    boxes: torch.Tensor,
    label: np.ndarray,
    classes: Sequence[int],
) -> list[dict]:
    """One row per box of one image: the box, the teacher's scores of its mask, and the mask's IoU per class.

    Args:
        logits: float (N, H, W) mask logits of the N boxes at the image's size.
        predicted_iou: float (N,), the decoder's quality estimate per mask.
        boxes: float (N, 4) XYXY box prompts in pixels of the (H, W) image.
        label: integer (H, W) label map.
        classes: foreground classes to score (absent ones get IoU ``nan``).

    Returns:
        Rows with ``box`` (index), ``box_side`` (the box's side over the image's longest side), ``area`` (mask
        pixels over image pixels), ``predicted_iou``, ``stability_score`` (segment-anything's, at threshold 0 and
        offset 1), ``mean_logit`` (mean logit inside the mask; 0 for an empty mask) and ``iou_<c>`` per class.

    Raises:
        ValueError: shapes that do not agree.
    """
    n, height, width = logits.shape
    if predicted_iou.reshape(-1).shape != (n,) or boxes.shape != (n, 4) or tuple(label.shape) != (height, width):
        raise ValueError(
            f"logits {tuple(logits.shape)}, predicted IoU {tuple(predicted_iou.shape)}, boxes {tuple(boxes.shape)} "
            f"and label {tuple(label.shape)} do not describe the same N boxes of one (H, W) image"
        )
    logits = logits.float()
    masks = logits > MASK_THRESHOLD
    stability = calculate_stability_score(logits, MASK_THRESHOLD, STABILITY_SCORE_OFFSET)
    flat = masks.reshape(n, -1).numpy()
    areas = flat.sum(1)
    inside = (logits * masks).reshape(n, -1).sum(1).numpy()
    targets = {c: (np.asarray(label) == c).reshape(-1) for c in classes}
    rows = []
    for i in range(n):
        x0, _, x1, _ = boxes[i].tolist()
        row = {
            "box": i,
            "box_side": (x1 - x0) / max(height, width),
            "area": float(areas[i]) / (height * width),
            "predicted_iou": float(predicted_iou.reshape(-1)[i]),
            "stability_score": float(stability[i]),
            "mean_logit": float(inside[i] / areas[i]) if areas[i] else 0.0,
        }
        for c, target in targets.items():
            if not target.any():
                row[f"iou_{c}"] = math.nan
                continue
            inter = float(np.count_nonzero(flat[i] & target))
            union = float(np.count_nonzero(flat[i] | target))
            row[f"iou_{c}"] = inter / union
        rows.append(row)
    return rows


def rank_rules(
    rows: Iterable[dict],
    classes: Sequence[int],
    ks: Sequence[int] = (1, 2, 3, 5),
    scores: Sequence[str] = SCORES,
    good_iou: float = 0.5,
) -> dict:
    """Whether the teacher's scores pick out the masks of the labeled structures, image by image.

    Args:
        rows: :func:`score_box_masks` rows, each with an ``image`` key naming its image.
        classes: foreground classes (the rows' ``iou_<c>`` columns).
        ks: how many top-scored masks per image to keep.
        scores: row keys to rank masks by (descending).
        good_iou: the IoU at which a mask counts as the structure's.

    Returns:
        ``{"images": n, "boxes_per_image": b, "classes": {c: {"images": n_c, "good_mask_share": s,
        "all": {"best_iou": m, "good_share": g}, "<score>@<k>": {...}}}}``: per class (over the images where it is
        present) the mean best IoU among the kept masks and the share of images where it reaches ``good_iou``;
        ``all`` keeps every mask of the grid; ``good_mask_share`` is the share of all masks that reach
        ``good_iou``.
    """
    by_image: dict[str, list[dict]] = {}
    for row in rows:
        by_image.setdefault(str(row["image"]), []).append(row)
    out: dict = {
        "images": len(by_image),
        "boxes_per_image": float(np.mean([len(r) for r in by_image.values()])) if by_image else 0.0,
        "good_iou": good_iou,
        "classes": {},
    }
    for c in classes:
        key = f"iou_{c}"
        present = {name: r for name, r in by_image.items() if r and not math.isnan(r[0][key])}
        if not present:
            continue
        ious = {name: np.array([x[key] for x in r]) for name, r in present.items()}
        summary: dict = {
            "images": len(present),
            "good_mask_share": float(np.mean(np.concatenate(list(ious.values())) >= good_iou)),
            "all": _best_of(ious.values(), good_iou),
        }
        for score in scores:
            for k in ks:
                picked = []
                for name, r in present.items():
                    order = np.argsort(-np.array([x[score] for x in r]), kind="stable")[:k]
                    picked.append(ious[name][order])
                summary[f"{score}@{k}"] = _best_of(picked, good_iou)
        out["classes"][str(c)] = summary
    return out


def _best_of(ious: Iterable[np.ndarray], good_iou: float) -> dict:
    best = np.array([float(v.max()) if len(v) else 0.0 for v in ious])
    return {"best_iou": float(best.mean()), "good_share": float(np.mean(best >= good_iou))}


def label_boxes(label: np.ndarray, classes: Sequence[int], margin: float = 0.05) -> tuple[list[int], torch.Tensor]:
    """One box per class present in ``label``: the tight box of all its pixels, widened by ``margin`` of its side
    on each edge and clipped to the image. The best box a student could prompt with: what the teacher returns
    for it is the teacher's ceiling on that structure.

    Args:
        label: integer (H, W) label map.
        classes: foreground classes to box (absent ones are skipped).
        margin: widening, as a fraction of the box's width (height) on each side.

    Returns:
        ``(present, boxes)``: the classes boxed, and float32 (N, 4) XYXY pixel-edge boxes (a pixel ``(r, c)``
        spans ``[c, c + 1) x [r, r + 1)``), one row per class of ``present``.
    """
    present = [int(c) for c in classes if (np.asarray(label) == c).any()]
    boxes = [component_box(np.asarray(label) == c, margin) for c in present]
    return present, torch.from_numpy(np.stack(boxes)) if boxes else torch.zeros((0, 4), dtype=torch.float32)


def label_box_summary(rows: Iterable[dict], classes: Sequence[int]) -> dict:
    """What a box around each structure returns: per prompted class, the number of boxes and the mean (and
    median) IoU of the teacher's mask with every class present on the same image.

    Args:
        rows: :func:`score_box_masks` rows with a ``prompt_class`` key (:func:`analyze_grid` with
            ``boxes="labels"``).
        classes: foreground classes (the rows' ``iou_<c>`` columns).

    Returns:
        ``{"<prompted>": {"boxes": n, "iou_<c>": {"mean": m, "median": md}}}``; a class absent from every image
        of a prompted class's boxes is left out.
    """
    by_class: dict[str, list[dict]] = {}
    for row in rows:
        by_class.setdefault(str(row["prompt_class"]), []).append(row)
    out: dict = {}
    for prompted, group in sorted(by_class.items()):
        entry: dict = {"boxes": len(group)}
        for c in classes:
            values = np.array([r[f"iou_{c}"] for r in group], dtype=np.float64)
            values = values[~np.isnan(values)]
            if len(values):
                entry[f"iou_{c}"] = {"mean": float(values.mean()), "median": float(np.median(values))}
        out[prompted] = entry
    return out


def analyze_grid(
    cfg, teacher, split: str = "val", limit: int = 50, progress: bool = True, boxes: str = "grid", margin: float = 0.05
) -> list[dict]:
    """:func:`score_box_masks` rows for every slice of the first ``limit`` cases of ``split`` that have labels.

    Args:
        cfg: a :class:`~semisam.config.schema.RunConfig`; its ``teacher.everything`` grid (``box_scales``,
            ``box_overlap``) is the one analysed.
        teacher: a box-prompted :class:`~semisam.teacher.engine.TeacherEngine`.
        split: ``labeled`` or ``val`` (never a training pool without labels).
        limit: cases to analyse.
        progress: a tqdm bar.
        boxes: ``grid``: the everything grid's boxes; ``labels``: one box around each labeled structure
            (:func:`label_boxes`, widened by ``margin``), rows with ``prompt_class`` added.
        margin: the label boxes' widening.

    Returns:
        Rows with ``image`` (``case`` or ``case:slice``) added. Cached embeddings are read from the run's teacher
        cache when there; missing ones are computed (and not cached).

    Raises:
        ValueError: a split other than ``labeled`` / ``val``, ``boxes`` other than ``grid`` / ``labels``, or a
            point-capable teacher (its everything mode is segment-anything's generator, not a box grid).
    """
    if split not in ("labeled", "val"):
        raise ValueError(f"the grid is scored on labeled or val images only, not {split!r}")
    if boxes not in ("grid", "labels"):
        raise ValueError(f"boxes must be 'grid' or 'labels', not {boxes!r}")
    if teacher.spec.accepts_points:
        raise ValueError(f"{teacher.spec.kind} takes points: its everything mode is segment-anything's generator")
    reader = build_reader(cfg.data)
    case_ids = [c for c in getattr(resolve_split(cfg.data, reader.case_ids()), split) if reader.has_label(c)][:limit]
    loader = CaseLoader(reader, cfg.data)
    store = CacheStore(cache_root(cfg), "embeddings")
    classes = list(range(1, cfg.data.num_classes))
    ev = cfg.teacher.everything
    rows: list[dict] = []
    for case_id in tqdm(case_ids, desc=f"box grid on {split}", disable=not progress):
        image = loader.image(case_id)
        label = np.asarray(reader.read_label(case_id))
        volume = image.ndim == 4
        slices = [image] if not volume else [image[:, k] for k in range(image.shape[1])]
        labels = [label] if not volume else list(label)
        if store.has(case_id):
            emb = torch.from_numpy(store.load(case_id)).float()
            emb = emb if emb.ndim == 4 else emb[None]
        else:
            emb = torch.cat([teacher.embed([s]).cpu() for s in slices])
        for k, (s, lab) in enumerate(zip(slices, labels, strict=True)):
            size = tuple(int(v) for v in s.shape[-2:])
            if boxes == "grid":
                prompted, prompts = None, box_grid(size, list(ev.box_scales), float(ev.box_overlap))
            else:
                prompted, prompts = label_boxes(lab, classes, margin)
                if not prompted:
                    continue
            with torch.no_grad():
                result = teacher.decode_boxes(emb[k : k + 1], [prompts], [size], [teacher.input_size(size)])[0]
            for i, row in enumerate(score_box_masks(result.logits.cpu(), result.iou.cpu(), prompts, lab, classes)):
                row["image"] = f"{case_id}:{k}" if volume else case_id
                if prompted is not None:
                    row["prompt_class"] = prompted[i]
                rows.append(row)
    return rows
