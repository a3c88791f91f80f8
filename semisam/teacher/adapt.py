"""The teacher adapted to the task (``teacher.adapt=decoder``): its mask decoder trained on the labeled images.

The published teacher is a generalist: from a student's imprecise boxes it loses 10-15 Dice points on polyps, and
it fills the myocardium's ring (its box holds the cavity). Here, before anything asks the teacher, its **mask
decoder** and a :class:`~semisam.teacher.engine.ClassPromptEmbedding` (so that it knows which class a box asks
for) are trained on the **labeled images only**, from the cached image embeddings: the image encoder and the
prompt encoder never change (the embeddings stay the cache's). The prompts are boxes from the labels' connected
components, perturbed the way a student's boxes miss (``teacher.adaptation``: grown, shrunk, corners moved); the
loss is Dice + BCE at the decoder's own resolution. The decoder kept is the one with the best mean validation
Dice over the classes (the val split's labels, boxes perturbed by ``teacher.adaptation.jitter`` with a fixed
seed),
evaluated at step 0 (the published decoder, so adapting can never select a worse one) and ``EVALUATIONS`` times.

The result is a small checkpoint, ``<cache>/adapted_decoders/<key>/decoder.pt``, with ``adaptation.json``
(``{"classes": {name: {"frozen": Dice, "adapted": Dice}}, "seconds": s, ...}``), ``adaptation.png`` (val
images: label, published and adapted masks from the same perturbed boxes) and TensorBoard scalars beside it.
``key`` hashes the identity: the teacher (kind, checkpoint sha256, preprocessing, dtype), the data
normalisation and classes, the labeled and val ids, the settings and the seed. The same identity reuses the
file (a resumed run, another method of a benchmark with the same seed); any change adapts again. Written
atomically. The teacher's users run on rank 0 only (pseudo-labels, refinement), and so does the adaptation.

Box coordinates follow :mod:`semisam.teacher.engine`: XYXY pixel edges of the original image.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle
from monai.losses import DiceLoss
from scipy import ndimage
from torch.utils.tensorboard import SummaryWriter
from tqdm import tqdm

from semisam.config.schema import ConfigError, RunConfig
from semisam.data.cases import CaseLoader, Item
from semisam.data.dataset import expand_to_slices
from semisam.data.readers import CaseReader, build_reader
from semisam.data.splits import resolve_split
from semisam.teacher.boxes import component_box, perturb_box
from semisam.teacher.cache import cache_root
from semisam.teacher.engine import ClassPromptEmbedding, SamTeacher, build_teacher
from semisam.teacher.precompute import precompute
from semisam.teacher.stores import identity_of, open_embedding_store
from semisam.utils import atomic_torch_save, atomic_write_bytes, atomic_write_text

logger = logging.getLogger("semisam")

ADAPTATION_VERSION = 1  # bump when the adaptation's rule changes: it invalidates adapted decoders
ADAPTED_DIR = "adapted_decoders"
EVALUATIONS = 6  # validation passes after step 0, evenly spaced over the steps
VAL_IMAGES = 48  # val images (with foreground) scored, evenly spaced over the val split's slices
VAL_SEED = 0  # the val boxes' perturbation: the same boxes for every seed, published and adapted decoder
FIGURE_IMAGES = 4
_EIGHT_CONNECTED = np.ones((3, 3), dtype=bool)


@dataclass
class BoxTarget:
    """One label component and its box: what the decoder is asked and should answer.

    Attributes:
        item: index of its image in :attr:`AdaptationData.items`.
        class_index: its class (``1..K-1``).
        box: float32 ``(4,)`` XYXY: the component's tight box grown by ``pseudo_labels.box_margin``.
        component: bool ``(H, W)`` at the image's original size (scoring), or ``None``.
        target: float16 ``(4e, 4e)`` the component's coverage of each low-resolution cell of the padded input
            frame (training), or ``None``.
    """

    item: int
    class_index: int
    box: np.ndarray
    component: np.ndarray | None = None
    target: torch.Tensor | None = None


@dataclass
class AdaptationData:
    """Images (their cached embeddings) and the box targets on them."""

    items: list[Item] = field(default_factory=list)
    embeddings: list[torch.Tensor] = field(default_factory=list)  # float16 (256, e, e) each
    sizes: list[tuple[int, int]] = field(default_factory=list)  # original (H, W)
    targets: list[BoxTarget] = field(default_factory=list)

    def by_class(self) -> dict[int, list[int]]:
        """Target indices per class."""
        out: dict[int, list[int]] = {}
        for i, t in enumerate(self.targets):
            out.setdefault(t.class_index, []).append(i)
        return out


@dataclass
class AdaptationResult:
    """The adapted (frozen) teacher, its ``adaptation.json`` content and the folder it lives in."""

    teacher: SamTeacher
    report: dict
    directory: Path


# ----------------------------------------------------------------------------------------------------------------
# identity and storage
# ----------------------------------------------------------------------------------------------------------------


def _ids_sha256(ids: Sequence[str]) -> str:
    return hashlib.sha256("\n".join(sorted(ids)).encode()).hexdigest()


def adaptation_identity(cfg: RunConfig, teacher: SamTeacher, labeled: Sequence[str], val: Sequence[str]) -> dict:
    """Everything the adapted decoder depends on; equal identities give equal decoders."""
    pl, d = cfg.pseudo_labels, cfg.data
    return {
        "version": ADAPTATION_VERSION,
        "teacher": identity_of(teacher.frozen),
        "data": {
            "name": d.name,
            "modality": d.modality,
            "clip_percentiles": list(d.clip_percentiles),
            "num_classes": d.num_classes,
        },
        "labeled_ids_sha256": _ids_sha256(labeled),
        "val_ids_sha256": _ids_sha256(val),
        "settings": {
            **asdict(cfg.teacher.adaptation),
            "box_margin": pl.box_margin,
            "min_area": pl.min_area,
            "min_area_fraction": pl.min_area_fraction,
        },
        "seed": cfg.seed,
        # the decoder knows the class a box asks for (a class-blind one: Myo 0.63 against 0.71, docs/RESULTS.md)
        "class_aware": True,
    }


def adaptation_directory(cfg: RunConfig, identity: dict) -> Path:
    """``<cache>/adapted_decoders/<first 16 hex digits of the identity's sha256>``."""
    key = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]
    return cache_root(cfg) / ADAPTED_DIR / key


def _load(path: Path, teacher: SamTeacher, identity: dict) -> AdaptationResult | None:
    """The adapted teacher stored at ``path`` if it exists and was made with ``identity``."""
    if not path.exists():
        return None
    state = torch.load(path, map_location="cpu", weights_only=True)
    if state.get("identity") != identity:
        logger.warning("%s was adapted with another identity; adapting again", path)
        return None
    adapted = teacher.frozen.with_decoder(state["mask_decoder"], _embedding_from(state), identity)
    adapted.adaptation_scores = state["report"]["classes"]
    return AdaptationResult(adapted, state["report"], path.parent)


def build_run_teacher(cfg: RunConfig, teacher: SamTeacher | None = None, progress: bool = True) -> SamTeacher:
    """The teacher a run asks: ``teacher`` (default: :func:`~semisam.teacher.engine.build_teacher`) as published
    with ``teacher.adapt=none``; with ``decoder``, adapted to this run's labeled images (read back when an
    identical adaptation exists, trained otherwise: :func:`adapt_teacher`). Every user of the teacher's decodes
    (pseudo-labels, calibration, refinement, analysis) gets its teacher here."""
    base = teacher or build_teacher(cfg.teacher)
    if cfg.teacher.adapt == "none":
        return base.frozen
    return adapt_teacher(cfg, base, progress=progress).teacher


def adapt_teacher(cfg: RunConfig, teacher: SamTeacher, progress: bool = True) -> AdaptationResult:
    """The decoder of ``teacher`` adapted to ``cfg``'s labeled images, read back or trained (see the module)."""
    reader = build_reader(cfg.data)
    split = resolve_split(cfg.data, reader.case_ids())
    if not split.val:
        raise ConfigError(
            f"teacher.adapt=decoder selects the adapted decoder on the val split; data set {cfg.data.name!r} has no "
            "val cases (data.split.val / val_fraction)"
        )
    identity = adaptation_identity(cfg, teacher, split.labeled, split.val)
    if teacher.adaptation == identity:
        return AdaptationResult(teacher, {}, adaptation_directory(cfg, identity))
    directory = adaptation_directory(cfg, identity)
    path = directory / "decoder.pt"
    result = _load(path, teacher, identity)
    if result is None:
        result = _adapt(cfg, teacher.frozen, reader, split.labeled, split.val, identity, directory, progress)
    logger.info("teacher: adapted decoder %s (%s)", path, _summary_line(result.report))
    return result


def _summary_line(report: dict) -> str:
    return ", ".join(f"{name} {v['frozen']:.3f} -> {v['adapted']:.3f}" for name, v in report.get("classes", {}).items())


# ----------------------------------------------------------------------------------------------------------------
# data
# ----------------------------------------------------------------------------------------------------------------


def _components(label: np.ndarray, class_index: int, cfg: RunConfig) -> list[np.ndarray]:
    """The 8-connected components of class ``class_index`` of at least the pseudo-labels' smallest area."""
    region = label == class_index
    if not region.any():
        return []
    labels, count = ndimage.label(region, structure=_EIGHT_CONNECTED)
    areas = np.bincount(labels.ravel(), minlength=count + 1)[1:]
    smallest = max(cfg.pseudo_labels.min_area, cfg.pseudo_labels.min_area_fraction * region.size)
    return [labels == i + 1 for i in np.argsort(-areas, kind="stable") if areas[i] >= smallest]


def low_res_target(teacher: SamTeacher, component: np.ndarray) -> torch.Tensor:
    """float16 ``(4e, 4e)``: bool ``(H, W)`` ``component`` carried into the decoder's low-resolution frame, the
    inverse of ``Sam.postprocess_masks`` (resized to the input size, zero-padded to the encoder's square,
    area-averaged to ``4e``)."""
    height, width = teacher.input_size(component.shape)
    x = torch.from_numpy(component.astype(np.float32))[None, None]
    x = F.interpolate(x, (height, width), mode="bilinear", align_corners=False, antialias=True)
    size = teacher.spec.encoder_size
    x = F.pad(x, (0, size - width, 0, size - height))
    low = 4 * teacher.embedding_shape[-1]
    if size != low:
        x = F.interpolate(x, (low, low), mode="area")
    return x[0, 0].clamp(0, 1).half()


def _collect(
    cfg: RunConfig,
    teacher: SamTeacher,
    loader: CaseLoader,
    store,
    items: Sequence[Item],
    training: bool,
) -> AdaptationData:
    """The embeddings and box targets of the ``items`` that have foreground (labels read through ``loader``)."""
    data = AdaptationData()
    volume_case, volume = None, None
    for case_id, k in items:
        label = loader.label_slice(case_id, k)
        targets = [(c, comp) for c in range(1, cfg.data.num_classes) for comp in _components(np.asarray(label), c, cfg)]
        if not targets:
            continue
        if volume_case != case_id:
            volume_case, volume = case_id, store.load(case_id)
        embedding = volume if k < 0 else volume[k]
        index = len(data.items)
        data.items.append((case_id, k))
        data.embeddings.append(torch.from_numpy(np.asarray(embedding, dtype=np.float16)))
        data.sizes.append((int(label.shape[-2]), int(label.shape[-1])))
        for c, comp in targets:
            box = component_box(comp, cfg.pseudo_labels.box_margin)
            if training:
                data.targets.append(BoxTarget(index, c, box, target=low_res_target(teacher, comp)))
            else:
                data.targets.append(BoxTarget(index, c, box, component=comp))
    loader.clear()
    return data


def _val_items(reader: CaseReader, loader: CaseLoader, val: Sequence[str]) -> list[Item]:
    """Up to ``VAL_IMAGES`` val slices with foreground, evenly spaced."""
    items = [item for item in expand_to_slices(reader, val) if np.any(loader.label_slice(*item) > 0)]
    loader.clear()
    if len(items) <= VAL_IMAGES:
        return items
    return [items[i] for i in np.linspace(0, len(items) - 1, VAL_IMAGES).round().astype(int)]


# ----------------------------------------------------------------------------------------------------------------
# training and scoring
# ----------------------------------------------------------------------------------------------------------------


def _val_boxes(data: AdaptationData, jitter: float) -> list[np.ndarray]:
    """The val targets' boxes, each perturbed once by ``jitter`` (seed ``VAL_SEED``)."""
    rng = np.random.default_rng(VAL_SEED)
    return [perturb_box(t.box, data.sizes[t.item], rng, jitter) for t in data.targets]


@torch.no_grad()
def score(teacher: SamTeacher, data: AdaptationData, boxes: Sequence[np.ndarray]) -> tuple[dict[int, float], list]:
    """Per class, the mean Dice of the teacher's masks from ``boxes`` (one per target of ``data``) against the
    targets' components at the original size; also the masks themselves (bool ``(H, W)``, target order)."""
    per_class: dict[int, list[float]] = {}
    masks: list[np.ndarray | None] = [None] * len(data.targets)
    by_item: dict[int, list[int]] = {}
    for i, t in enumerate(data.targets):
        by_item.setdefault(t.item, []).append(i)
    order = sorted(by_item)
    for start in range(0, len(order), 8):
        chunk = order[start : start + 8]
        results = teacher.decode_boxes(
            torch.stack([data.embeddings[i] for i in chunk]),
            [np.stack([boxes[j] for j in by_item[i]]) for i in chunk],
            [data.sizes[i] for i in chunk],
            [teacher.input_size(data.sizes[i]) for i in chunk],
            classes=[[data.targets[j].class_index for j in by_item[i]] for i in chunk],
            batch_size=32,
        )
        for i, result in zip(chunk, results, strict=True):
            for j, logits in zip(by_item[i], result.logits, strict=True):
                mask = (logits > 0).cpu().numpy()
                truth = data.targets[j].component
                dice = 2 * np.logical_and(mask, truth).sum() / max(mask.sum() + truth.sum(), 1)
                per_class.setdefault(data.targets[j].class_index, []).append(float(dice))
                masks[j] = mask
    return {c: float(np.mean(v)) for c, v in sorted(per_class.items())}, masks


def _format(scores: dict[int, float], names: Sequence[str]) -> str:
    return ", ".join(f"{names[c]} {v:.3f}" for c, v in scores.items())


def _mean(scores: dict[int, float]) -> float:
    return float(np.mean(list(scores.values()))) if scores else float("nan")


class _Trainer:
    """The decoder's training: a working copy of the teacher, its optimiser and the batches it draws."""

    def __init__(self, cfg: RunConfig, frozen: SamTeacher, data: AdaptationData) -> None:
        a = cfg.teacher.adaptation
        self.cfg, self.data, self.settings = cfg, data, a
        embedding = ClassPromptEmbedding(cfg.data.num_classes, frozen.embedding_shape[0])
        self.teacher = frozen.with_decoder(None, embedding)
        modules = [self.teacher.model.mask_decoder, self.teacher.class_embedding]
        self.parameters = [p for m in modules for p in m.parameters()]
        for p in self.parameters:
            p.requires_grad_(True)
        self.optimizer = torch.optim.AdamW(self.parameters, lr=a.lr)
        self.scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(self.optimizer, a.steps)
        self.dice = DiceLoss(sigmoid=True)
        self.rng = np.random.default_rng([cfg.seed, 28])
        self.by_class = data.by_class()
        self.classes = sorted(self.by_class)

    def state(self) -> dict:
        """The trainable weights, copied to the CPU."""
        t = self.teacher
        return {
            name: {k: v.detach().cpu().clone() for k, v in module.state_dict().items()}
            for name, module in (("mask_decoder", t.model.mask_decoder), ("class_embedding", t.class_embedding))
        }

    def step(self) -> float:
        """One optimiser step on a class-balanced batch of perturbed boxes; returns the loss."""
        a, rng, teacher = self.settings, self.rng, self.teacher
        classes = [int(rng.choice(self.classes)) for _ in range(a.batch_size)]  # class-balanced
        picked = [self.data.targets[int(rng.choice(self.by_class[c]))] for c in classes]
        boxes = torch.cat(
            [
                teacher.transform_boxes(
                    perturb_box(t.box, self.data.sizes[t.item], rng, a.jitter, (1 - a.shrink, 1 + a.grow))[None],
                    self.data.sizes[t.item],
                )
                for t in picked
            ]
        )
        embeddings = torch.stack([self.data.embeddings[t.item] for t in picked]).to(teacher.device, torch.float32)
        classes = torch.tensor([t.class_index for t in picked], device=teacher.device)
        target = torch.stack([t.target for t in picked])[:, None].to(teacher.device, torch.float32)
        logits, _ = teacher.decode_low_res(embeddings, boxes, None, False, classes)
        loss = self.dice(logits, target) + F.binary_cross_entropy_with_logits(logits, target)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self.scheduler.step()
        return float(loss.detach())


def _adapt(
    cfg: RunConfig,
    frozen: SamTeacher,
    reader: CaseReader,
    labeled: Sequence[str],
    val: Sequence[str],
    identity: dict,
    directory: Path,
    progress: bool,
) -> AdaptationResult:
    """Train, select on val, write ``decoder.pt``, ``adaptation.json``, ``adaptation.png`` and the scalars."""
    tic = time.perf_counter()
    splits = ["labeled", "val"]  # this process alone, whatever torchrun's group
    precompute(
        cfg, frozen, splits=splits, progress=progress, priors=False, keep_embeddings_of=splits, rank=0, world_size=1
    )
    store = open_embedding_store(cfg, frozen, sorted({*labeled, *val}))
    loader = CaseLoader(reader, cfg.data)
    train = _collect(cfg, frozen, loader, store, expand_to_slices(reader, labeled), training=True)
    if not train.targets:
        raise ConfigError(
            "teacher.adapt=decoder: no labeled image has a foreground component of at least "
            f"pseudo_labels.min_area={cfg.pseudo_labels.min_area} pixels to train the decoder on"
        )
    held_out = _collect(cfg, frozen, loader, store, _val_items(reader, loader, val), training=False)
    val_boxes = _val_boxes(held_out, cfg.teacher.adaptation.jitter)
    trainer = _Trainer(cfg, frozen, train)
    names = cfg.data.class_names or [str(k) for k in range(cfg.data.num_classes)]
    frozen_scores, _ = score(trainer.teacher, held_out, val_boxes)
    steps = cfg.teacher.adaptation.steps
    checkpoints = {round(steps * i / EVALUATIONS) for i in range(1, EVALUATIONS + 1)}
    best = (_mean(frozen_scores), 0, trainer.state(), frozen_scores)
    history = [{"step": 0, "val_dice": {names[c]: v for c, v in frozen_scores.items()}}]
    directory.mkdir(parents=True, exist_ok=True)
    writer = SummaryWriter(str(directory / "tensorboard"))
    logger.info(
        "teacher.adapt=decoder: %d steps on %d boxes of %d labeled images; val %d boxes of %d images; published "
        "decoder: %s",
        steps,
        len(train.targets),
        len(train.items),
        len(held_out.targets),
        len(held_out.items),
        _format(frozen_scores, names),
    )
    bar = tqdm(range(1, steps + 1), desc="adapt teacher", disable=not progress)
    for step in bar:
        loss = trainer.step()
        writer.add_scalar("adapt/loss", loss, step)
        writer.add_scalar("adapt/lr", trainer.scheduler.get_last_lr()[0], step)
        if step in checkpoints:
            scores, _ = score(trainer.teacher, held_out, val_boxes)
            history.append({"step": step, "val_dice": {names[c]: v for c, v in scores.items()}})
            writer.add_scalar("adapt/val_dice", _mean(scores), step)
            for c, v in scores.items():
                writer.add_scalar(f"adapt/val_dice_{names[c]}", v, step)
            bar.set_postfix(loss=f"{loss:.3f}", val=f"{_mean(scores):.3f}")
            logger.info("adapt step %d/%d: loss %.3f, val Dice %s", step, steps, loss, _format(scores, names))
            if _mean(scores) > best[0]:
                best = (_mean(scores), step, trainer.state(), scores)
    writer.close()
    _, best_step, state, best_scores = best
    adapted = frozen.with_decoder(state["mask_decoder"], _embedding_from(state), identity)
    report = {
        "classes": {names[c]: {"frozen": frozen_scores[c], "adapted": best_scores[c]} for c in frozen_scores},
        "seconds": time.perf_counter() - tic,
        "best_step": best_step,
        "steps": steps,
        "labeled_images": len(train.items),
        "labeled_boxes": len(train.targets),
        "val_images": len(held_out.items),
        "val_boxes": len(held_out.targets),
        "history": history,
        "identity": identity,
    }
    adapted.adaptation_scores = report["classes"]
    atomic_torch_save({"identity": identity, **state, "report": report}, directory / "decoder.pt")
    atomic_write_text(directory / "adaptation.json", json.dumps(report, indent=2))
    _write_figure(directory / "adaptation.png", loader, held_out, val_boxes, frozen, adapted, names)
    return AdaptationResult(adapted, report, directory)


def _embedding_from(state: dict) -> ClassPromptEmbedding:
    """The :class:`ClassPromptEmbedding` stored in a ``decoder.pt`` state."""
    num_classes, dim = state["class_embedding"]["embedding.weight"].shape
    embedding = ClassPromptEmbedding(num_classes, dim)
    embedding.load_state_dict(state["class_embedding"])
    return embedding


def _write_figure(
    path: Path,
    loader: CaseLoader,
    data: AdaptationData,
    boxes: Sequence[np.ndarray],
    frozen: SamTeacher,
    adapted: SamTeacher,
    names: Sequence[str],
) -> None:
    """Up to ``FIGURE_IMAGES`` val images: the label's components, then the published and the adapted decoder's
    masks from the same perturbed boxes (drawn), each mask in its class's colour."""
    picked = [int(i) for i in np.linspace(0, len(data.items) - 1, min(FIGURE_IMAGES, len(data.items))).round()]
    keep = [j for j, t in enumerate(data.targets) if t.item in picked]
    subset = AdaptationData(data.items, data.embeddings, data.sizes, [data.targets[j] for j in keep])
    sub_boxes = [boxes[j] for j in keep]
    _, frozen_masks = score(frozen, subset, sub_boxes)
    _, adapted_masks = score(adapted, subset, sub_boxes)
    colours = np.array([(0, 0, 0), (0.9, 0.1, 0.3), (0.24, 0.7, 0.3), (0.26, 0.39, 0.85), (1, 0.88, 0.1)])
    fig = Figure(figsize=(9, 3 * len(picked)))
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(picked), 3, squeeze=False)
    for row, item in zip(axes, picked, strict=True):
        image = loader.image_slice(*data.items[item])
        shown = image[0] if image.shape[0] == 1 else image[:3].mean(axis=0)
        for col, (title, masks) in enumerate(
            (("label", None), ("published decoder", frozen_masks), ("adapted decoder", adapted_masks))
        ):
            overlay = np.repeat(shown[..., None], 3, axis=-1).astype(np.float32)
            for j, t in enumerate(subset.targets):
                if t.item != item:
                    continue
                mask = t.component if masks is None else masks[j]
                colour = colours[1 + (t.class_index - 1) % (len(colours) - 1)]
                overlay[mask] = 0.5 * overlay[mask] + 0.5 * colour
                if masks is not None:
                    x0, y0, x1, y1 = sub_boxes[j]
                    row[col].add_patch(Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, color=colour, lw=1))
            row[col].imshow(np.clip(overlay, 0, 1))
            row[col].set_title(f"{data.items[item][0][:24]}: {title}" if col == 0 else title, fontsize=8)
            row[col].axis("off")
    fig.suptitle("val: " + ", ".join(f"{n} = colour {k}" for k, n in enumerate(names) if k), fontsize=8)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=80)
    atomic_write_bytes(path, buffer.getvalue())
    loader.clear()
