"""Per-case segmentation metrics (Dice, IoU, HD95, ASD) and their accumulation over a test set.

The numbers come from MONAI (``DiceMetric``, ``MeanIoU``, ``HausdorffDistanceMetric(percentile=95)``,
``SurfaceDistanceMetric(symmetric=True)``), run on CPU tensors; this module only prepares one-hot masks,
passes the spacing, and applies the rules for empty structures, which MONAI leaves to the caller.

Conventions:

- Inputs are integer label maps of identical shape, (H, W) for 2D cases or (D, H, W) for volumes, with labels
  in ``0 .. num_classes - 1``; 0 is background and is never scored.
- Surfaces are MONAI's: the mask voxels that its binary erosion removes. HD95 is the larger of the two
  directed 95th percentiles of surface distances; ASD is the mean of both directions' surface distances
  pooled together (symmetric).
- ``spacing`` gives one voxel size per array axis, in the same order as the array's axes (for a (D, H, W)
  volume: slice spacing, row spacing, column spacing), normally in mm. Distances are then in mm; without it
  they are in pixels (2D) or voxels (3D).

Empty structures (per class, per case; nnU-Net-like):

- reference and prediction both empty: every metric is NaN, and NaN is left out of every mean;
- exactly one of them empty (a missed structure, or a hallucinated one): Dice 0, IoU 0, and HD95 = ASD = the
  diagonal of the image extent, ``sqrt(sum((shape[i] * spacing[i]) ** 2))`` in the same units: the worst
  possible distance, so a miss is penalised instead of silently dropped from the distance means.
"""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Sequence

import numpy as np
import torch
from monai.metrics import DiceMetric, HausdorffDistanceMetric, MeanIoU, SurfaceDistanceMetric

logger = logging.getLogger("semisam")

METRIC_NAMES = ("dice", "iou", "hd95", "asd")
DISTANCE_METRICS = ("hd95", "asd")
EMPTY_RULES = (
    "reference and prediction both empty: NaN (left out of means); exactly one empty: Dice 0, IoU 0, "
    "HD95 = ASD = diagonal of the image extent"
)


def _check_metrics(metrics: Sequence[str]) -> tuple[str, ...]:
    if isinstance(metrics, str):
        metrics = (metrics,)
    names = tuple(dict.fromkeys(metrics))  # de-duplicated, in the caller's order
    if not names:
        raise ValueError("metrics must name at least one of " + ", ".join(METRIC_NAMES))
    unknown = [m for m in names if m not in METRIC_NAMES]
    if unknown:
        raise ValueError(f"unknown metric(s) {unknown}; choose from {', '.join(METRIC_NAMES)}")
    return names


def _check_num_classes(num_classes: int) -> int:
    if int(num_classes) != num_classes or num_classes < 2:
        raise ValueError(f"num_classes={num_classes!r} must be an integer >= 2 (background included)")
    return int(num_classes)


def _as_label_map(name: str, array: np.ndarray, num_classes: int) -> np.ndarray:
    """Validate one label map and return it as int64."""
    arr = np.asarray(array)
    if arr.dtype == bool:
        arr = arr.astype(np.int64)
    elif np.issubdtype(arr.dtype, np.floating):
        if not np.all(np.isfinite(arr)) or not np.array_equal(arr, np.round(arr)):
            raise ValueError(f"{name} must be an integer label map; got non-integral {arr.dtype} values")
        arr = arr.astype(np.int64)
    elif not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"{name} must be an integer label map; got dtype {arr.dtype}")
    if arr.size and (arr.min() < 0 or arr.max() >= num_classes):
        raise ValueError(
            f"{name} has labels in [{arr.min()}, {arr.max()}], outside 0..{num_classes - 1} (num_classes={num_classes})"
        )
    return arr.astype(np.int64, copy=False)


def _check_spacing(spacing: Sequence[float] | None, ndim: int) -> tuple[float, ...] | None:
    if spacing is None:
        return None
    values = tuple(float(s) for s in np.asarray(spacing, dtype=np.float64).reshape(-1))
    if len(values) != ndim:
        raise ValueError(f"spacing {spacing!r} has {len(values)} values for a {ndim}D label map")
    if not all(math.isfinite(s) and s > 0 for s in values):
        raise ValueError(f"spacing {spacing!r} must be finite and > 0 on every axis")
    return values


def image_diagonal(shape: Sequence[int], spacing: Sequence[float] | None = None) -> float:
    """The diagonal of the image extent, ``sqrt(sum((shape[i] * spacing[i]) ** 2))``: the worst distance.

    In the units of ``spacing`` (mm) when given, else in pixels/voxels.
    """
    sizes = np.asarray(shape, dtype=np.float64)
    if spacing is not None:
        sizes = sizes * np.asarray(spacing, dtype=np.float64)
    return float(np.sqrt(np.sum(sizes**2)))


def case_metrics(
    pred: np.ndarray,
    ref: np.ndarray,
    num_classes: int,
    spacing: Sequence[float] | None = None,
    metrics: Sequence[str] = METRIC_NAMES,
) -> dict[int, dict[str, float]]:
    """Score one case, class by class.

    Args:
        pred: integer label map, (H, W) or (D, H, W), labels in ``0 .. num_classes - 1``.
        ref: the reference label map, same shape and label range.
        num_classes: number of classes including background (>= 2).
        spacing: voxel size per array axis (same order as the axes), e.g. mm; ``None`` = 1 pixel/voxel.
        metrics: a subset of :data:`METRIC_NAMES`; only these are computed (distances are the slow part).

    Returns:
        ``{class: {metric: value}}`` for every foreground class ``1 .. num_classes - 1``; Dice and IoU in
        [0, 1], HD95 and ASD in the units of ``spacing`` (or pixels/voxels); NaN where both masks are empty
        (see the module docstring for the empty-structure rules).

    Raises:
        ValueError: shape mismatch, labels out of range, non-integer maps, a bad spacing or metric name.
    """
    num_classes = _check_num_classes(num_classes)
    names = _check_metrics(metrics)
    pred_arr = _as_label_map("pred", pred, num_classes)
    ref_arr = _as_label_map("ref", ref, num_classes)
    if pred_arr.shape != ref_arr.shape:
        raise ValueError(f"pred shape {pred_arr.shape} != ref shape {ref_arr.shape}")
    if pred_arr.ndim not in (2, 3):
        raise ValueError(f"label maps must be (H, W) or (D, H, W); got shape {pred_arr.shape}")
    spacing_t = _check_spacing(spacing, pred_arr.ndim)

    classes = torch.arange(1, num_classes).view(1, -1, *([1] * pred_arr.ndim))
    # one-hot foreground masks, (1, K-1, *spatial) bool
    pred_oh = torch.from_numpy(pred_arr)[None, None] == classes
    ref_oh = torch.from_numpy(ref_arr)[None, None] == classes
    pred_any = pred_oh.flatten(2).any(-1)[0].tolist()
    ref_any = ref_oh.flatten(2).any(-1)[0].tolist()
    both = [c for c in range(num_classes - 1) if pred_any[c] and ref_any[c]]

    values = _overlap_scores(pred_oh, ref_oh, names)
    values.update(_distance_scores(pred_oh, ref_oh, [m for m in names if m in DISTANCE_METRICS], both, spacing_t))
    worst = image_diagonal(pred_arr.shape, spacing_t)
    out: dict[int, dict[str, float]] = {}
    for k in range(num_classes - 1):
        if not pred_any[k] and not ref_any[k]:
            out[k + 1] = {m: math.nan for m in names}
        elif not (pred_any[k] and ref_any[k]):
            out[k + 1] = {m: (worst if m in DISTANCE_METRICS else 0.0) for m in names}
        else:
            out[k + 1] = {m: float(values[m][k]) for m in names}
    return out


def _overlap_scores(pred_oh: torch.Tensor, ref_oh: torch.Tensor, names: Sequence[str]) -> dict[str, list[float]]:
    """MONAI's Dice and IoU of the asked ones among ``names``, per foreground class: ``{metric: [K-1 values]}``
    from bool one-hot masks ``(1, K-1, *spatial)`` (the empty-structure rules are applied by the caller)."""
    values: dict[str, list[float]] = {}
    if "dice" in names:
        dice = DiceMetric(include_background=True, reduction="none", ignore_empty=True)
        values["dice"] = dice(y_pred=pred_oh.double(), y=ref_oh.double())[0].tolist()
    if "iou" in names:
        iou = MeanIoU(include_background=True, reduction="none", ignore_empty=True)
        values["iou"] = iou(y_pred=pred_oh.double(), y=ref_oh.double())[0].tolist()
    return values


def _distance_scores(
    pred_oh: torch.Tensor,
    ref_oh: torch.Tensor,
    distance_names: Sequence[str],
    both: Sequence[int],
    spacing: tuple[float, ...] | None,
) -> dict[str, list[float]]:
    """MONAI's HD95 / ASD (``distance_names``) per foreground class, ``{metric: [K-1 values]}`` from bool one-hot
    masks ``(1, K-1, *spatial)``, in the units of ``spacing`` (one value per spatial axis) or pixels/voxels.

    Only the classes in ``both`` (indices ``0..K-2`` present in both maps) are computed: MONAI would warn and
    return inf/NaN for the others, which are NaN here (the caller's empty-structure rules replace them).
    """
    nan_row = [math.nan] * pred_oh.shape[1]
    if not (distance_names and both):
        return {name: list(nan_row) for name in distance_names}
    values: dict[str, list[float]] = {}
    pred_sel, ref_sel = pred_oh[:, both], ref_oh[:, both]
    kwargs = {"spacing": list(spacing)} if spacing is not None else {}
    with warnings.catch_warnings():
        # MONAI 1.6 passes a deprecated argument to itself inside get_mask_edges
        warnings.filterwarnings("ignore", message=".*always_return_as_numpy.*", category=FutureWarning)
        for name in distance_names:
            if name == "hd95":
                metric = HausdorffDistanceMetric(include_background=True, percentile=95, reduction="none")
            else:
                metric = SurfaceDistanceMetric(include_background=True, symmetric=True, reduction="none")
            row = list(nan_row)
            for k, v in zip(both, metric(y_pred=pred_sel, y=ref_sel, **kwargs)[0].tolist(), strict=True):
                row[k] = v
            values[name] = row
    return values


def _nanmean(values: Sequence[float]) -> float:
    finite = [v for v in values if not math.isnan(v)]
    return float(np.mean(finite)) if finite else math.nan


class MetricAccumulator:
    """Accumulate-then-aggregate, like MONAI's Cumulative metrics.

    Call :meth:`add` once per case; read :meth:`per_case`, :meth:`mean`, :meth:`foreground_mean` or the
    nnU-Net-shaped :meth:`summary`. Class keys in the aggregated outputs are strings (``"1"``, ``"2"``, ...)
    so that they survive JSON.

    Args:
        num_classes: number of classes including background.
        class_names: names in label order, either for every class (background first, as in
            ``data.class_names``) or for the foreground classes only; default ``"class_1"``, ...
        metrics: a subset of :data:`METRIC_NAMES`.
        units: the distance units the caller expects. ``"mm"`` requires a spacing for every case;
            ``"pixels"``/``"voxels"`` (the default) let the data decide: mm when the cases carry a
            spacing, else pixels for 2D cases and voxels for 3D ones. Mixing cases with and without spacing
            is an error.
    """

    def __init__(
        self,
        num_classes: int,
        class_names: Sequence[str] | None = None,
        metrics: Sequence[str] = METRIC_NAMES,
        units: str = "pixels",
    ) -> None:
        self.num_classes = _check_num_classes(num_classes)
        self.metrics = _check_metrics(metrics)
        if units not in ("mm", "pixels", "voxels"):
            raise ValueError(f"units={units!r} must be 'mm', 'pixels' or 'voxels'")
        self._requested_units = units
        fg = [str(c) for c in range(1, self.num_classes)]
        if class_names is None or len(class_names) == 0:
            names = [f"class_{c}" for c in fg]
        elif len(class_names) == self.num_classes:
            names = [str(n) for n in class_names[1:]]
        elif len(class_names) == self.num_classes - 1:
            names = [str(n) for n in class_names]
        else:
            raise ValueError(
                f"{len(class_names)} class_names for num_classes={self.num_classes}: give one per class "
                f"(background first) or one per foreground class"
            )
        self.class_names: dict[str, str] = dict(zip(fg, names, strict=True))
        self._cases: list[tuple[str, dict[int, dict[str, float]]]] = []
        self._ids: set[str] = set()
        self._has_spacing: bool | None = None
        self._any_3d = False

    def __len__(self) -> int:
        return len(self._cases)

    @property
    def units(self) -> str:
        """Distance units of the accumulated values: ``"mm"``, ``"pixels"`` or ``"voxels"``."""
        if self._has_spacing is None:
            return self._requested_units
        if self._has_spacing:
            return "mm"
        return "voxels" if self._any_3d else "pixels"

    def add(
        self, case_id: str, pred: np.ndarray, ref: np.ndarray, spacing: Sequence[float] | None = None
    ) -> dict[int, dict[str, float]]:
        """Score one case (see :func:`case_metrics` for shapes and units) and keep the result.

        Raises:
            ValueError: a repeated ``case_id``, spacing given for some cases and not others, a missing spacing
                when ``units="mm"``, or any error of :func:`case_metrics`.
        """
        case_id = str(case_id)
        if case_id in self._ids:
            raise ValueError(f"case {case_id!r} was already added")
        has_spacing = spacing is not None
        if self._requested_units == "mm" and not has_spacing:
            raise ValueError(f"units='mm' but case {case_id!r} has no spacing")
        if self._has_spacing is not None and has_spacing != self._has_spacing:
            raise ValueError(
                f"case {case_id!r} {'has' if has_spacing else 'lacks'} a spacing but earlier cases "
                f"{'did not' if has_spacing else 'did'}: distances would mix mm and pixels/voxels"
            )
        result = case_metrics(pred, ref, self.num_classes, spacing, self.metrics)
        self._has_spacing = has_spacing
        self._any_3d = self._any_3d or np.ndim(pred) == 3
        self._ids.add(case_id)
        self._cases.append((case_id, result))
        logger.debug("metrics %s: %s", case_id, result)
        return result

    def per_case(self) -> list[dict]:
        """``[{"case": id, "metrics": {"1": {"dice": ..., ...}, ...}}, ...]`` in the order added; NaN kept."""
        return [
            {"case": case_id, "metrics": {str(c): dict(m) for c, m in result.items()}}
            for case_id, result in self._cases
        ]

    def mean(self) -> dict[str, dict[str, float]]:
        """Per class (keys ``"1"``, ...): the mean over cases of each metric, ignoring NaN (NaN if none)."""
        return {
            str(c): {m: _nanmean([res[c][m] for _, res in self._cases]) for m in self.metrics}
            for c in range(1, self.num_classes)
        }

    def foreground_mean(self) -> dict[str, float]:
        """The mean over foreground classes of the per-class means (the literature's average), NaN skipped."""
        means = self.mean()
        return {m: _nanmean([means[c][m] for c in means]) for m in self.metrics}

    def summary(self) -> dict:
        """An nnU-Net-shaped summary (plain Python types; NaN kept as float NaN).

        Keys: ``metric_per_case``, ``mean``, ``foreground_mean``, ``class_names``, ``metrics``, ``units``
        (per distance metric: ``"mm"``, ``"pixels"`` or ``"voxels"``), ``num_cases``, ``empty_rules``.
        """
        units = self.units
        return {
            "metric_per_case": self.per_case(),
            "mean": self.mean(),
            "foreground_mean": self.foreground_mean(),
            "class_names": dict(self.class_names),
            "metrics": list(self.metrics),
            "units": {m: units for m in self.metrics if m in DISTANCE_METRICS},
            "num_cases": len(self._cases),
            "empty_rules": EMPTY_RULES,
        }
