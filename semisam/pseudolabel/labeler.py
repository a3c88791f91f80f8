"""Auto-prompt pseudo-labels from the frozen teacher, rectified by its own uncertainty: the pipeline and its bank.

One refresh, for a set of 2D items (slices) of unlabeled images:

1. the EMA model predicts class probabilities on the un-augmented image (at its original size);
2. :func:`~semisam.pseudolabel.prompts.prompts_from_probabilities` turns them into one prompt set per foreground
   class the teacher is trusted with — from the model's probabilities only: this pipeline never receives a
   label, and unlabeled items are read through a path that never opens one;
3. each prompt and its ``perturbations`` jittered copies are decoded by the teacher on the cached image
   embeddings, all prompts of a batch of images in batched decoder calls;
4. per class, inside its prompt boxes, the mean of the K+1 sigmoid maps and its uncertainty
   (:mod:`semisam.pseudolabel.rectify`); several components of one class combine by pixel-wise maximum of their
   means (the uncertainty of the component that gives the maximum); outside every box of the class the teacher
   was not asked, and the class's evidence there is the model's own (a predicted object left without a prompt
   is not "certainly background");
5. classes the teacher is not trusted with, or was not asked about (no component to prompt), contribute the
   model's own probabilities and uncertainty instead — an unprompted class is not "certainly absent";
6. the classes fuse into one label map, and :func:`~semisam.pseudolabel.rectify.rectify` keeps what the teacher is
   sure of, takes the model's label where the teacher is unsure but the model is confident, and ignores the rest.

The same pipeline on held-out labeled images (prompts still from the model) calibrates per-class trust against
their labels, each class judged on its own decodes (:meth:`PseudoLabeler.calibrate`).
"""

from __future__ import annotations

import io
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from semisam.config.schema import RunConfig
from semisam.data.cases import CaseLoader, Item
from semisam.data.fusion import fuse_priors
from semisam.evaluation.inference import predict_probabilities
from semisam.pseudolabel.prompts import ClassPrompt, perturb_prompts, prompts_from_probabilities
from semisam.pseudolabel.rectify import (
    SOURCE_TEACHER,
    ClassEvidence,
    DiceCounts,
    Rectified,
    dice_per_class,
    evidence_from_model,
    fuse_classes,
    mean_and_uncertainty,
    output_label,
    rectify,
    trust_decisions,
)
from semisam.pseudolabel.reliability import (
    ImageReliability,
    decode_agreement,
    image_reliability,
    image_teacher_agreement,
)
from semisam.teacher.cache import CacheStore
from semisam.utils import atomic_write_bytes

logger = logging.getLogger("semisam")

# what a trust calibration scores: the teacher's own certain pixels (pseudo-labels), or the whole output (refinement)
CALIBRATION_SCOPES = ("teacher_pixels", "output")


@dataclass
class BankEntry:
    """The pseudo-label of one item at its original size: ``label`` uint8 (H, W), ``weight`` float16 (H, W) in
    [0, 1], ``uncertainty`` float16 (H, W) in [0, 1], ``source`` uint8 (H, W) (0 ignored, 1 teacher, 2 model)."""

    label: np.ndarray
    weight: np.ndarray
    uncertainty: np.ndarray
    source: np.ndarray

    @classmethod
    def from_rectified(cls, r: Rectified) -> BankEntry:
        return cls(
            r.label.astype(np.uint8),
            r.weight.astype(np.float16),
            r.uncertainty.astype(np.float16),
            r.source.astype(np.uint8),
        )


@dataclass
class PseudoLabelBank:
    """Pseudo-labels of the unlabeled items, keyed by item index, as of ``iteration``; saved atomically so that a
    resumed run trains on the same bank. ``first_iteration``: the iteration of the run's first bank (the
    pseudo-label loss ramps from there); ``trusted``: the per-class trust it was made with."""

    iteration: int = -1
    entries: dict[int, BankEntry] = field(default_factory=dict)
    trusted: dict[int, bool] = field(default_factory=dict)
    first_iteration: int = -1

    def save(self, path: Path) -> None:
        arrays: dict[str, np.ndarray] = {
            "iteration": np.array(self.iteration),
            "first_iteration": np.array(self.first_iteration),
            "trusted_classes": np.array(sorted(self.trusted), dtype=np.int64),
            "trusted_flags": np.array([self.trusted[k] for k in sorted(self.trusted)], dtype=bool),
        }
        for index, e in self.entries.items():
            arrays[f"label_{index}"] = e.label
            arrays[f"weight_{index}"] = e.weight
            arrays[f"uncertainty_{index}"] = e.uncertainty
            arrays[f"source_{index}"] = e.source
        buf = io.BytesIO()
        np.savez(buf, **arrays)
        atomic_write_bytes(path, buf.getvalue())

    @classmethod
    def load(cls, path: Path) -> PseudoLabelBank:
        with np.load(path, allow_pickle=False) as data:
            bank = cls(iteration=int(data["iteration"]))
            # banks written before first_iteration existed: their own iteration is the best known start
            bank.first_iteration = int(data["first_iteration"]) if "first_iteration" in data.files else bank.iteration
            bank.trusted = {
                int(k): bool(v) for k, v in zip(data["trusted_classes"], data["trusted_flags"], strict=True)
            }
            for key in data.files:
                if key.startswith("label_"):
                    i = int(key.split("_", 1)[1])
                    bank.entries[i] = BankEntry(
                        data[f"label_{i}"], data[f"weight_{i}"], data[f"uncertainty_{i}"], data[f"source_{i}"]
                    )
        return bank


@dataclass
class PseudoLabelResult:
    """One item's outcome: the rectified pseudo-label, the fused label before rectification (int64 (H, W)), the
    model's probabilities (K, H, W) the prompts came from, the number of prompts decoded (0: the teacher was not
    asked), and per prompted class the bool (H, W) region its prompt boxes cover (where the class's evidence is
    the teacher's; elsewhere it is the model's)."""

    rectified: Rectified
    teacher_label: np.ndarray
    model_probs: np.ndarray
    prompts: int = 0
    covered: dict[int, np.ndarray] = field(default_factory=dict)
    # agreement of the teacher's perturbed decodes (:mod:`semisam.pseudolabel.reliability`); NaN: no prompt
    teacher_agreement: float = math.nan

    def reliability(self) -> ImageReliability:
        """The image-level reliability signals of this pseudo-label."""
        return image_reliability(self.teacher_agreement, self.teacher_label, self.model_probs)


@dataclass
class RefreshStats:
    """Fractions of pixels by source, and the mean uncertainty, over one refresh.

    ``certain``: the fused evidence is certain there (the teacher's for trusted, prompted classes; the model's
    own for the others); ``model fallback``: uncertain evidence but a confident model; ``ignored``: weight 0."""

    images: int = 0
    pixels: int = 0
    ignored: int = 0
    teacher: int = 0
    model: int = 0
    uncertainty_sum: float = 0.0
    prompts: int = 0

    def add(self, r: Rectified, prompts: int) -> None:
        self.images += 1
        self.pixels += r.source.size
        self.ignored += int((r.source == 0).sum())
        self.teacher += int((r.source == 1).sum())
        self.model += int((r.source == 2).sum())
        self.uncertainty_sum += float(r.uncertainty.sum())
        self.prompts += prompts

    def scalars(self) -> dict[str, float]:
        n = max(1, self.pixels)
        return {
            "pseudo/fraction_ignored": self.ignored / n,
            "pseudo/fraction_certain": self.teacher / n,
            "pseudo/fraction_model_fallback": self.model / n,
            "pseudo/mean_uncertainty": self.uncertainty_sum / n,
            "pseudo/prompts_per_image": self.prompts / max(1, self.images),
        }


class PseudoLabeler:
    """Runs the pipeline above for items of one data set, on a built teacher and the embedding cache."""

    def __init__(
        self,
        cfg: RunConfig,
        teacher,
        loader: CaseLoader,
        embeddings: CacheStore,
        priors: CacheStore | None,
        device: torch.device,
        seed: int = 0,
    ) -> None:
        self.cfg = cfg
        self.teacher = teacher
        self.loader = loader
        self.embeddings = embeddings
        self.priors = priors
        self.device = device
        self.seed = seed
        self._embedding_case: str | None = None
        self._embedding_array = np.empty(0, np.float32)

    # ---------------------------------------------------------------- inputs
    def _embedding(self, case_id: str, slice_index: int) -> torch.Tensor:
        if case_id != self._embedding_case:
            self._embedding_case, self._embedding_array = case_id, self.embeddings.load(case_id)
        array = self._embedding_array if slice_index < 0 else self._embedding_array[slice_index]
        return torch.from_numpy(np.ascontiguousarray(array))

    @torch.no_grad()
    def model_probabilities(self, model: torch.nn.Module, items: Sequence[Item]) -> list[np.ndarray]:
        """The model's softmax (K, H, W) on each item's un-augmented image, at the image's own size; items of the
        same size go through the model as one batch."""
        inputs = []
        for case_id, slice_index in items:
            image = torch.from_numpy(self.loader.image_slice(case_id, slice_index))
            if self.priors is not None:
                prior = torch.from_numpy(self.loader.priors_slice(case_id, slice_index))
                image = fuse_priors(image[None], prior[None], self.cfg.priors.fusion)[0]
            inputs.append(image)
        out: list[np.ndarray | None] = [None] * len(items)
        by_size: dict[tuple[int, ...], list[int]] = {}
        for i, image in enumerate(inputs):
            by_size.setdefault(tuple(image.shape), []).append(i)
        for group in by_size.values():
            batch = torch.stack([inputs[i] for i in group]).to(self.device)
            probs = predict_probabilities(model, batch, self.cfg.data.image_size, self.cfg.eval.inference)
            for i, p in zip(group, probs.float().cpu().numpy(), strict=True):
                out[i] = p
        return out  # type: ignore[return-value]

    # ---------------------------------------------------------------- core
    def _prompt_sets(self, probs: np.ndarray, classes: Sequence[int], rng: np.random.Generator):
        """Prompts of one image: for each prompt, the original followed by its perturbations."""
        pl = self.cfg.pseudo_labels
        size = probs.shape[-2:]
        sets: list[tuple[ClassPrompt, list[ClassPrompt]]] = []
        for prompt in prompts_from_probabilities(probs, pl, classes=classes):
            sets.append((prompt, [prompt, *perturb_prompts(prompt, pl.perturbations, pl.jitter, size, rng)]))
        return sets

    def _decode(self, items: Sequence[Item], prompt_sets: list[list]) -> list[list[np.ndarray]]:
        """Teacher foreground probabilities (N, H, W) per prompt set, for every item."""
        teacher = self.teacher
        sizes = [tuple(int(s) for s in self.loader.image_slice(c, k).shape[-2:]) for c, k in items]
        with_prompts = [i for i, sets in enumerate(prompt_sets) if sets]
        if not with_prompts:
            return [[] for _ in items]
        embeddings = torch.stack([self._embedding(*items[i]) for i in with_prompts])
        boxes, points, labels, classes = [], [], [], []
        use_points = teacher.spec.accepts_points
        for i in with_prompts:
            flat = [p for _, group in prompt_sets[i] for p in group]
            boxes.append(torch.from_numpy(np.stack([p.box for p in flat]).astype(np.float32)))
            classes.append(np.asarray([p.class_index for p in flat], dtype=np.int64))
            if use_points:
                pts, lbs = zip(*(_point_prompt(p) for p in flat), strict=True)
                points.append(torch.from_numpy(np.stack(pts)))
                labels.append(torch.from_numpy(np.stack(lbs)))
        results = teacher.decode_boxes(
            embeddings,
            boxes,
            [sizes[i] for i in with_prompts],
            [teacher.input_size(sizes[i]) for i in with_prompts],
            points=points if use_points else None,
            point_labels=labels if use_points else None,
            classes=classes,
        )
        out: list[list[np.ndarray]] = [[] for _ in items]
        for i, result in zip(with_prompts, results, strict=True):
            probs = torch.sigmoid(result.logits.float()).cpu().numpy()
            start = 0
            for _, group in prompt_sets[i]:
                out[i].append(probs[start : start + len(group)])
                start += len(group)
        return out

    def _decoded(
        self, model: torch.nn.Module, items: Sequence[Item], classes: Sequence[int], seed: int, batch_size: int
    ):
        """Per item, in order: the model's probabilities (K, H, W), its prompt sets for ``classes`` and the
        teacher's decodes of each set (:meth:`_decode`). The model is put in eval mode meanwhile."""
        was_training = model.training
        model.eval()
        try:
            for start in range(0, len(items), batch_size):
                chunk = items[start : start + batch_size]
                probs = self.model_probabilities(model, chunk)
                rngs = [np.random.default_rng([seed, start + j]) for j in range(len(chunk))]
                prompt_sets = [self._prompt_sets(p, classes, rng) for p, rng in zip(probs, rngs, strict=True)]
                decoded = self._decode(chunk, prompt_sets)
                yield from zip(probs, prompt_sets, decoded, strict=True)
        finally:
            model.train(was_training)

    def _result(self, probs: np.ndarray, sets: list, maps: list[np.ndarray]) -> PseudoLabelResult:
        """Steps 4-6 of the pipeline on one item: the teacher's evidence for the classes of ``sets`` (decoded as
        ``maps``), the model's for every other class, fused and rectified."""
        pl = self.cfg.pseudo_labels
        evidence, covered = _class_evidence(sets, maps, probs, pl.uncertainty)
        # classes the teacher was not asked about (untrusted, or no prompt because the model predicts no
        # component) keep the model's own doubt instead of counting as certainly absent
        prompted = {prompt.class_index for prompt, _ in sets}
        evidence += [evidence_from_model(probs, k) for k in range(1, self.cfg.data.num_classes) if k not in prompted]
        label, uncertainty = fuse_classes(evidence, probs.shape[-2:])
        if not sets:  # the teacher was asked nothing: every pixel rests on the model's confidence alone
            uncertainty = np.ones_like(uncertainty)
        r = rectify(label, uncertainty, probs, pl.uncertainty_threshold, pl.model_confidence, pl.uncertainty_weighting)
        agreement = image_teacher_agreement([decode_agreement(m) for m in maps])
        return PseudoLabelResult(r, label, probs, sum(len(g) for _, g in sets), covered, agreement)

    def label(
        self, model: torch.nn.Module, items: Sequence[Item], trusted: dict[int, bool], seed: int, batch_size: int = 8
    ) -> tuple[list[PseudoLabelResult], RefreshStats]:
        """Rectified pseudo-labels of ``items`` (with the teacher's label before rectification and the model's
        probabilities), and the refresh's statistics. The teacher is asked about the classes ``trusted`` does
        not map to ``False``."""
        teacher_classes = [k for k in range(1, self.cfg.data.num_classes) if trusted.get(k, True)]
        stats = RefreshStats()
        results: list[PseudoLabelResult] = []
        for probs, sets, maps in self._decoded(model, items, teacher_classes, seed, batch_size):
            result = self._result(probs, sets, maps)
            results.append(result)
            stats.add(result.rectified, result.prompts)
        return results, stats

    def calibrate(
        self,
        model: torch.nn.Module,
        items: Sequence[Item],
        labels: Sequence[np.ndarray],
        seed: int,
        previous: dict[int, bool] | None = None,
        scope: str = "teacher_pixels",
        margin: float | None = None,
        noise_sigmas: float | None = None,
    ) -> tuple[dict[int, bool], dict[str, float], float]:
        """Per-class trust from held-out labeled items (:func:`~semisam.pseudolabel.rectify.trust_decisions`), and
        the model's own foreground Dice there (the refresh's check that its prompts are worth decoding).

        The prompts come from the model's predictions, as on unlabeled images; the labels only score. **Each class
        is judged on its own decodes**: for class ``k`` the pseudo-label is made as if ``k`` were the only class
        the teacher is trusted with (the model's evidence for every other class), and it is scored on the
        teacher's own pixels, inside ``k``'s prompt boxes where the rectified label is the teacher's certain answer
        (source 1): the teacher's label there and the model's argmax there, each against the labels. Judged with
        every class trusted at once, another class's decode could contest ``k``'s pixels (on ACDC the myocardium's
        box returns the LV cavity) and ``k`` would be judged on the pixels left over. ``previous``: the decisions
        in force (kept when the difference is inside the noise band; default: the teacher for every class).

        Args:
            items: held-out labeled items (never training labels: the student has memorised those).
            labels: their int64 (H, W) label maps, in the same order.

        Returns:
            ``(trusted, scalars, model_dice)``: ``{class: trust the teacher}``, TensorBoard scalars, and the
            model's mean foreground Dice over all pixels of the items (NaN if no class occurs anywhere).
        """
        pl = self.cfg.pseudo_labels
        if scope not in CALIBRATION_SCOPES:
            raise ValueError(f"scope={scope!r} is not one of {', '.join(CALIBRATION_SCOPES)}")
        everyone = dict.fromkeys(range(1, self.cfg.data.num_classes), True)
        stats, model_dice = self._calibration_counts(model, items, labels, seed, scope)
        decisions = trust_decisions(
            stats["teacher"],
            stats["model"],
            everyone if previous is None else previous,
            pl.trust_margin if margin is None else margin,
            pl.trust_noise_sigmas if noise_sigmas is None else noise_sigmas,
            seed,
        )
        scalars = self._report_calibration(decisions, scope, len(items))
        model_mean = _nanmean([_nanmean(v) for v in model_dice.values()])
        scalars["calibration/model_dice_mean"] = model_mean
        return {k: d.trusted for k, d in decisions.items()}, scalars, model_mean

    def _calibration_counts(
        self, model: torch.nn.Module, items: Sequence[Item], labels: Sequence[np.ndarray], seed: int, scope: str
    ) -> tuple[dict[str, dict[int, DiceCounts]], dict[int, list[float]]]:
        """Per side (``teacher``, ``model``) and class, the Dice counts of every item on the pixels the scope
        judges (:meth:`calibrate`); and per class the model's own Dice on every item over all pixels."""
        num_classes = self.cfg.data.num_classes
        classes = list(range(1, num_classes))
        counts: dict[str, dict[int, list[tuple[float, float, float]]]] = {"teacher": {}, "model": {}}
        model_dice: dict[int, list[float]] = {k: [] for k in classes}
        decoded = self._decoded(model, items, classes, seed, batch_size=8)
        for (probs, sets, maps), ref in zip(decoded, labels, strict=True):
            model_label = probs.argmax(0)
            for k in classes:
                own_sets = [i for i, (prompt, _) in enumerate(sets) if prompt.class_index == k]
                res = self._result(probs, [sets[i] for i in own_sets], [maps[i] for i in own_sets])
                own, refined = _judged_pixels(res, probs, k, scope, ref.shape)
                truth = (ref == k) & own
                for side, pred in (("teacher", refined == k), ("model", model_label == k)):
                    pred = pred & own
                    row = (float((pred & truth).sum()), float(pred.sum() + truth.sum()), float(own.sum()))
                    counts[side].setdefault(k, []).append(row)
            for k, v in dice_per_class(model_label, ref, num_classes).items():
                model_dice[k].append(v)
        stats = {
            side: {k: DiceCounts(*np.asarray(rows, dtype=np.float64).reshape(-1, 3).T) for k, rows in per.items()}
            for side, per in counts.items()
        }
        return stats, model_dice

    def _report_calibration(self, decisions: dict, scope: str, images: int) -> dict[str, float]:
        """TensorBoard scalars of the decisions, and one log line that says each class's decision and why."""
        names = self.cfg.data.class_names
        scalars: dict[str, float] = {}
        lines = []
        side, where = ("refined", "pixels") if scope == "output" else ("teacher", "teacher pixels")
        for k, d in decisions.items():
            name = names[k] if names else str(k)
            scalars[f"calibration/teacher_dice_{name}"] = d.teacher_dice
            scalars[f"calibration/model_dice_{name}"] = d.model_dice
            scalars[f"calibration/trust_band_{name}"] = d.band
            scalars[f"calibration/trusted_{name}"] = float(d.trusted)
            lines.append(
                f"{name}: {side} {d.teacher_dice:.3f} vs model {d.model_dice:.3f} on {d.pixels} {where} "
                f"(band {d.band:.3f}) -> {'teacher' if d.trusted else 'model'} ({d.reason})"
            )
        logger.info("trust calibration on %d held-out images: %s", images, "; ".join(lines))
        return scalars


def _judged_pixels(
    res: PseudoLabelResult, probs: np.ndarray, k: int, scope: str, shape: tuple[int, ...]
) -> tuple[np.ndarray, np.ndarray]:
    """The pixels a calibration judges class ``k`` on, and the label it judges there: the whole output
    (``scope="output"``), or the teacher's own certain pixels inside ``k``'s prompt boxes (the pseudo-label)."""
    if scope == "output":
        return np.ones(shape, dtype=bool), output_label(res.rectified, probs)
    teacher_sure = res.rectified.source == SOURCE_TEACHER
    own = teacher_sure & res.covered[k] if k in res.covered else np.zeros_like(teacher_sure)
    return own, res.rectified.label


def spread(items: Sequence[Item], count: int) -> list[Item]:
    """``count`` items spread evenly over ``items`` (all of them if there are fewer), in order: slices from every
    case of a volume split rather than the first case's slices."""
    if count >= len(items):
        return list(items)
    if count <= 0:
        return []
    picks = np.unique(np.linspace(0, len(items) - 1, count).round().astype(int))
    return [items[i] for i in picks]


def _point_prompt(prompt: ClassPrompt) -> tuple[np.ndarray, np.ndarray]:
    """(P, 2) XY points and (P,) labels of a prompt: the positive point, then its negatives."""
    points = [prompt.point[None]] if prompt.point is not None else []
    labels = [np.ones(len(points), np.float32)]
    if prompt.negative_points is not None and len(prompt.negative_points):
        points.append(prompt.negative_points)
        labels.append(np.zeros(len(prompt.negative_points), np.float32))
    return np.concatenate(points).astype(np.float32), np.concatenate(labels)


def boxes_cover(boxes: Sequence[np.ndarray], shape: tuple[int, int]) -> np.ndarray:
    """Bool ``(H, W)``: the pixels whose centre ``(c + 0.5, r + 0.5)`` lies in at least one of ``boxes`` (float
    ``(4,)`` XYXY pixel-edge boxes, :mod:`semisam.pseudolabel.prompts`)."""
    height, width = int(shape[0]), int(shape[1])
    cover = np.zeros((height, width), dtype=bool)
    centres_x, centres_y = np.arange(width) + 0.5, np.arange(height) + 0.5
    for x0, y0, x1, y1 in (np.asarray(b, dtype=np.float64) for b in boxes):
        rows = (centres_y >= y0) & (centres_y < y1)
        cols = (centres_x >= x0) & (centres_x < x1)
        cover |= rows[:, None] & cols[None, :]
    return cover


def _class_evidence(
    sets, maps: list[np.ndarray], model_probs: np.ndarray, kind: str
) -> tuple[list[ClassEvidence], dict[int, np.ndarray]]:
    """Per prompted class: its evidence and the region the teacher was asked about.

    Inside the union of the class's prompt boxes (originals and perturbations): the mean and uncertainty of its
    prompt sets' decodes; several components of one class combine by the pixel-wise maximum of their means (with
    the uncertainty of the component giving it). **Outside** every box the teacher was not asked about the
    class, so its near-zero answer there is no evidence of absence: the class's evidence there is the model's
    own (:func:`~semisam.pseudolabel.rectify.evidence_from_model`). Otherwise a predicted object left without a
    prompt (``components: largest``, or below ``min_area``) would become certain background, and the student
    would be taught to erase what it found.

    Returns:
        the evidence (one per prompted class), and per prompted class the bool ``(H, W)`` region its prompts cover.
    """
    shape = model_probs.shape[-2:]
    by_class: dict[int, ClassEvidence] = {}
    covered: dict[int, np.ndarray] = {}
    for (prompt, group), decodes in zip(sets, maps, strict=True):
        mean, uncertainty = mean_and_uncertainty(decodes, kind)
        k = prompt.class_index
        cover = boxes_cover([p.box for p in group], shape)
        if k not in by_class:
            by_class[k], covered[k] = ClassEvidence(k, mean, uncertainty), cover
        else:
            old = by_class[k]
            take = mean > old.mean
            by_class[k] = ClassEvidence(k, np.where(take, mean, old.mean), np.where(take, uncertainty, old.uncertainty))
            covered[k] = covered[k] | cover
    evidence = []
    for k, e in by_class.items():
        model = evidence_from_model(model_probs, k)
        inside = covered[k]
        evidence.append(
            ClassEvidence(
                k,
                np.where(inside, e.mean, model.mean).astype(np.float32),
                np.where(inside, e.uncertainty, model.uncertainty).astype(np.float32),
            )
        )
    return evidence, covered


def _nanmean(values: Sequence[float]) -> float:
    arr = np.asarray(values, dtype=np.float64)
    return float(np.nanmean(arr)) if arr.size and not np.all(np.isnan(arr)) else float("nan")


def _fg_dice(pred: np.ndarray, ref: np.ndarray, num_classes: int) -> float:
    return _nanmean(list(dice_per_class(pred, ref, num_classes).values()))


def score_against_labels(results: Sequence[PseudoLabelResult], refs: Sequence[np.ndarray], num_classes: int) -> dict:
    """How good pseudo-labels are, against held-back labels (an analysis: never used in training).

    Per image, foreground-mean Dice of: the teacher's fused label before rectification (all pixels); the rectified
    pseudo-label on the pixels it keeps; the model's own prediction on those same pixels and on all pixels. Then
    the mean over images; ``coverage`` is the mean fraction of pixels kept.
    """
    rows = {"teacher_before_rectification": [], "rectified_on_kept": [], "model_on_kept": [], "model_all": []}
    coverage = []
    for res, ref in zip(results, refs, strict=True):
        model_label = res.model_probs.argmax(0)
        keep = res.rectified.weight > 0
        coverage.append(float(keep.mean()))
        rows["teacher_before_rectification"].append(_fg_dice(res.teacher_label, ref, num_classes))
        rows["model_all"].append(_fg_dice(model_label, ref, num_classes))
        if keep.any():
            kept_ref = ref[keep][None]
            rows["rectified_on_kept"].append(_fg_dice(res.rectified.label[keep][None], kept_ref, num_classes))
            rows["model_on_kept"].append(_fg_dice(model_label[keep][None], kept_ref, num_classes))
    out = {f"dice_{k}": _nanmean(v) for k, v in rows.items()}
    out["coverage"] = _nanmean(coverage)
    out["images"] = len(coverage)
    prompted = [i for i, res in enumerate(results) if res.prompts > 0]
    out["images_with_prompts"] = len(prompted)
    if prompted and len(prompted) < len(results):  # the same scores on the images the teacher was asked about
        sub = score_against_labels([results[i] for i in prompted], [refs[i] for i in prompted], num_classes)
        out.update({f"{k}_prompted_images": v for k, v in sub.items() if k.startswith(("dice", "coverage"))})
    return out
