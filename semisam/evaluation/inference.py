"""Predicting whole cases with a 2D student: slice by slice for volumes, stacked back to 3D.

Two modes (``eval.inference``):

- ``resize`` (the SSL4MIS protocol): each slice is resized to the training size, predicted, and the class
  probabilities are resized back (bilinearly) to the slice's own size before the argmax;
- ``sliding_window``: MONAI's sliding-window inference at native resolution with the training size as window
  (for images larger than what the student was trained on).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from monai.inferers import sliding_window_inference

from semisam.config.schema import DataConfig, EvalConfig, PriorsConfig
from semisam.data.cases import CaseLoader, PriorSource
from semisam.data.dataset import require_labels
from semisam.data.fusion import align_priors, fuse_priors, more_confident
from semisam.data.readers import CaseReader
from semisam.evaluation.metrics import MetricAccumulator


@torch.no_grad()
def predict_probabilities(
    model: Callable[[torch.Tensor], torch.Tensor],
    slices: torch.Tensor,
    image_size: Sequence[int],
    mode: str = "resize",
    overlap: float = 0.25,
) -> torch.Tensor:
    """Class probabilities for a batch of slices.

    Args:
        model: maps float (B, C, h, w) -> logits (B, K, h, w).
        slices: float (B, C, H, W), normalised, on the model's device.
        image_size: the training size (h, w) in pixels.
        mode: ``resize`` or ``sliding_window``.

    Returns:
        float32 (B, K, H, W) softmax probabilities at the slices' own size.
    """
    size = tuple(int(s) for s in image_size)
    height, width = slices.shape[-2:]
    if mode == "resize":
        resized = slices if (height, width) == size else F.interpolate(slices, size, mode="bilinear")
        probs = torch.softmax(model(resized).float(), dim=1)
        if (height, width) != size:
            probs = F.interpolate(probs, (height, width), mode="bilinear")
        return probs
    if mode == "sliding_window":
        logits = sliding_window_inference(slices, size, sw_batch_size=slices.shape[0], predictor=model, overlap=overlap)
        return torch.softmax(logits.float(), dim=1)
    raise ValueError(f"unknown inference mode {mode!r}")


def _batches(num: int, size: int) -> Iterator[slice]:
    for start in range(0, num, size):
        yield slice(start, min(num, start + size))


@torch.no_grad()
def predict_case(
    model: torch.nn.Module,
    image: np.ndarray,
    image_size: Sequence[int],
    device: torch.device,
    mode: str = "resize",
    batch_size: int = 16,
    amp_dtype: torch.dtype | None = None,
    overlap: float = 0.25,
    priors: np.ndarray | None = None,
    fusion: str = "none",
    alternate: bool = False,
) -> np.ndarray:
    """Label map of one case.

    Args:
        image: normalised float32 (C, H, W) for a 2D case or (C, D, H, W) for a volume (slices along D).
        priors: prior maps float32 (P, h, w) or (D, P, h, w) over the image's extent (resized to its (H, W)
            here), fused into the input by ``fusion`` (see :mod:`semisam.data.fusion`); ``None`` when the student
            takes none.
        alternate: SAMAug's test-time rule: predict raw and augmented inputs, keep the more confident.
    Returns:
        int64 (H, W) or (D, H, W), the argmax over classes.
    """
    volume = image.ndim == 4
    slices = np.moveaxis(image, 1, 0) if volume else image[None]  # (N, C, H, W)
    prior_slices = None if priors is None else align_priors(priors if volume else priors[None], image.shape[-2:])
    out = np.empty((slices.shape[0], *slices.shape[-2:]), dtype=np.int64)
    for part in _batches(slices.shape[0], batch_size):
        x = torch.from_numpy(np.ascontiguousarray(slices[part])).to(device)
        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            if prior_slices is None:
                probs = predict_probabilities(model, x, image_size, mode, overlap)
            else:
                p = torch.from_numpy(np.ascontiguousarray(prior_slices[part])).to(device)
                probs = predict_probabilities(model, fuse_priors(x, p, fusion), image_size, mode, overlap)
                if alternate:
                    raw = predict_probabilities(model, fuse_priors(x, None, fusion), image_size, mode, overlap)
                    probs = more_confident(raw, probs)
        out[part] = probs.argmax(dim=1).cpu().numpy()
    return out if volume else out[0]


def evaluate_cases(
    model: torch.nn.Module,
    reader: CaseReader,
    case_ids: Sequence[str],
    data_cfg: DataConfig,
    eval_cfg: EvalConfig,
    device: torch.device,
    metrics: Sequence[str],
    amp_dtype: torch.dtype | None = None,
    keep: int = 0,
    progress: bool = False,
    priors: PriorSource | None = None,
    priors_cfg: PriorsConfig | None = None,
) -> tuple[MetricAccumulator, list[dict]]:
    """Predict and score ``case_ids`` against their labels.

    ``priors`` (the teacher cache's prior store) and ``priors_cfg`` are given when the student takes SAMAug priors.

    Returns:
        the filled :class:`MetricAccumulator`, and for the first ``keep`` cases a dict with ``case_id``,
        ``image`` (C, H, W) and the ``label``/``pred`` maps of the middle slice, for figures.

    Raises:
        DataError: a case without a label (checked for every case before predicting any), or any error of the
            reader on a case's files.
    """
    from tqdm.auto import tqdm

    require_labels(reader, case_ids, "evaluated")

    was_training = model.training
    model.eval()
    loader = CaseLoader(reader, data_cfg)
    spacings = [reader.spacing(c) for c in case_ids]
    acc = MetricAccumulator(data_cfg.num_classes, data_cfg.class_names or None, metrics)
    kept: list[dict] = []
    for case_id, spacing in tqdm(list(zip(case_ids, spacings, strict=True)), desc="evaluate", disable=not progress):
        image = loader.image(case_id)
        loader.clear()
        pred = predict_case(
            model,
            image,
            data_cfg.image_size,
            device,
            eval_cfg.inference,
            eval_cfg.batch_size,
            amp_dtype,
            eval_cfg.sw_overlap,
            priors=None if priors is None else priors.load(case_id),
            fusion=priors_cfg.fusion if priors_cfg else "none",
            alternate=bool(priors_cfg and priors_cfg.alternate),
        )
        label = reader.read_label(case_id)
        acc.add(case_id, pred, label, spacing)
        if len(kept) < keep:
            if image.ndim == 4:  # show the slice with the most foreground
                k = int(np.argmax((label > 0).reshape(label.shape[0], -1).sum(1)))
                kept.append({"case_id": case_id, "image": image[:, k], "label": label[k], "pred": pred[k]})
            else:
                kept.append({"case_id": case_id, "image": image, "label": label, "pred": pred})
    model.train(was_training)
    return acc, kept
