"""PNG figures of predictions and of per-class Dice, drawn with matplotlib's object API (Agg canvas).

No ``pyplot`` and no global backend switch: each figure is a standalone :class:`matplotlib.figure.Figure`,
so drawing works headless and in threads, and leaves other matplotlib users alone. Files are written to a
temporary file in the destination folder and moved into place with ``os.replace``.
"""

from __future__ import annotations

import io
import logging
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import to_rgb
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from semisam.evaluation.metrics import case_metrics
from semisam.utils import atomic_write_bytes

logger = logging.getLogger("semisam")

# Fixed colours for foreground classes 1, 2, 3, ...; later classes cycle through the same list.
CLASS_COLOURS = (
    "#e6194b",  # red
    "#3cb44b",  # green
    "#4363d8",  # blue
    "#ffe119",  # yellow
    "#f58231",  # orange
    "#911eb4",  # purple
    "#42d4f4",  # cyan
    "#f032e6",  # magenta
    "#bfef45",  # lime
    "#9a6324",  # brown
)
CELL_INCHES = 3.0  # each panel of the prediction grid is a CELL_INCHES square
LEGEND_INCHES = 0.6  # strip below the grid for the class legend
DPI = 100


def class_colour(label: int) -> tuple[float, float, float]:
    """RGB in [0, 1] of foreground class ``label`` (>= 1)."""
    return to_rgb(CLASS_COLOURS[(label - 1) % len(CLASS_COLOURS)])


def _display_image(image: np.ndarray, image_channels: int | None) -> np.ndarray:
    """float (C, H, W) or (H, W), any range -> float (H, W, 3) in [0, 1], min-max scaled over shown channels.

    The first ``image_channels`` channels are the image (1: grayscale, 3: RGB); extra channels (e.g. SAMAug
    priors) are not shown. By default 3 channels or more are read as RGB, fewer as grayscale.
    """
    arr = np.asarray(image, dtype=np.float64)
    if arr.ndim == 2:
        arr = arr[None]
    if arr.ndim != 3:
        raise ValueError(f"image must be (C, H, W) or (H, W); got shape {arr.shape}")
    channels = image_channels if image_channels is not None else (3 if arr.shape[0] >= 3 else 1)
    if channels not in (1, 3) or channels > arr.shape[0]:
        raise ValueError(f"image_channels={channels} must be 1 or 3 and <= C={arr.shape[0]}")
    shown = arr[:channels]
    finite = np.isfinite(shown)
    lo = shown[finite].min() if finite.any() else 0.0
    hi = shown[finite].max() if finite.any() else 0.0
    scaled = np.where(finite, (shown - lo) / (hi - lo) if hi > lo else 0.0, 0.0)
    rgb = np.repeat(scaled, 3, axis=0) if channels == 1 else scaled
    return np.moveaxis(rgb, 0, -1)


def _overlay(base: np.ndarray, labels: np.ndarray, num_classes: int, alpha: float = 0.5) -> np.ndarray:
    """Blend each foreground class of ``labels`` (H, W) onto ``base`` (H, W, 3) in its fixed colour."""
    out = base.copy()
    for c in range(1, num_classes):
        mask = labels == c
        if mask.any():
            out[mask] = (1 - alpha) * out[mask] + alpha * np.asarray(class_colour(c))
    return out


def save_figure(fig: Figure, path: Path) -> None:
    """Render ``fig`` as a PNG (``DPI`` dots per inch) and write it to ``path`` atomically."""
    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI)
    atomic_write_bytes(Path(path), buf.getvalue())


def _dice_text(pred: np.ndarray, ref: np.ndarray, num_classes: int, names: Sequence[str]) -> str:
    scores = case_metrics(pred, ref, num_classes, metrics=("dice",))
    parts = [f"{names[c - 1]} {v['dice']:.2f}" for c, v in scores.items() if not math.isnan(v["dice"])]
    finite = [v["dice"] for v in scores.values() if not math.isnan(v["dice"])]
    if not finite:
        return "Dice n/a"
    mean = f"Dice {np.mean(finite):.3f}"
    return mean if len(parts) <= 1 else f"{mean}\n{', '.join(parts)}"


def save_prediction_figure(
    path: Path,
    images: list[np.ndarray],
    refs: list[np.ndarray | None],
    preds: list[np.ndarray],
    titles: list[str],
    num_classes: int,
    class_names: Sequence[str] | None = None,
    image_channels: int | None = None,
    columns: tuple[str, str] = ("reference", "prediction"),
) -> None:
    """A PNG grid, one row per case: image, reference overlay, prediction overlay.

    Args:
        path: destination ``.png``.
        images: per case float (C, H, W) (or (H, W)) in any range, min-max scaled for display; see
            ``image_channels``.
        refs: per case integer (H, W) reference label map, or ``None`` (the panel then says so).
        preds: per case integer (H, W) predicted label map.
        titles: per case row title (e.g. the case id).
        num_classes: classes including background; class ``c`` is drawn in ``CLASS_COLOURS[c - 1]``.
        class_names: for the legend, all classes (background first) or foreground only; default ``class_c``.
        image_channels: how many leading channels are the image (1 gray, 3 RGB); default 3 if C >= 3 else 1.
        columns: the names of the second and third panels (e.g. ``("student", "pseudo-label")``).

    The prediction panel's title gives the case's mean foreground Dice (and per class with several classes)
    when a reference is given. The figure is ``3 * CELL_INCHES`` wide and ``rows * CELL_INCHES +
    LEGEND_INCHES`` high, at ``DPI`` dots per inch.
    """
    n = len(images)
    if n == 0:
        raise ValueError("save_prediction_figure needs at least one case")
    if not (len(refs) == len(preds) == len(titles) == n):
        raise ValueError(
            f"images/refs/preds/titles must have equal lengths; got {n}, {len(refs)}, {len(preds)}, {len(titles)}"
        )
    if num_classes < 2:
        raise ValueError(f"num_classes={num_classes} must be >= 2")
    fg = _foreground_names(class_names, num_classes)

    width, height = 3 * CELL_INCHES, n * CELL_INCHES + LEGEND_INCHES
    fig = Figure(figsize=(width, height), dpi=DPI)
    bottom = LEGEND_INCHES / height
    grid = fig.add_gridspec(
        n, 3, left=0.01, right=0.99, top=1 - 0.4 / height, bottom=bottom + 0.01, hspace=0.2, wspace=0.03
    )
    for i, (image, ref, pred, title) in enumerate(zip(images, refs, preds, titles, strict=True)):
        axes = [fig.add_subplot(grid[i, j]) for j in range(3)]
        _draw_prediction_row(axes, image, ref, pred, title, num_classes, fg, image_channels, columns)
    _add_class_legend(fig, fg, num_classes)
    save_figure(fig, path)
    logger.debug("wrote prediction figure %s (%d cases)", path, n)


def _foreground_names(class_names: Sequence[str] | None, num_classes: int) -> list[str]:
    """The ``num_classes - 1`` foreground names for the legend: from ``class_names`` (every class, background
    first, or the foreground ones only), default ``class_<c>``."""
    fg = [f"class_{c}" for c in range(1, num_classes)]
    if class_names:
        if len(class_names) == num_classes:
            fg = [str(s) for s in class_names[1:]]
        elif len(class_names) == num_classes - 1:
            fg = [str(s) for s in class_names]
        else:
            raise ValueError(f"{len(class_names)} class_names for num_classes={num_classes}")
    return fg


def _draw_prediction_row(
    axes: list,
    image: np.ndarray,
    ref: np.ndarray | None,
    pred: np.ndarray,
    title: str,
    num_classes: int,
    fg: Sequence[str],
    image_channels: int | None,
    columns: tuple[str, str],
) -> None:
    """One case's three panels of :func:`save_prediction_figure` on ``axes``: the image (float (C, H, W) or
    (H, W)), the reference overlay (or "no reference"), the prediction overlay titled with its Dice; ``ref`` and
    ``pred`` are integer (H, W) label maps of the image's size."""
    base = _display_image(image, image_channels)
    pred = np.asarray(pred)
    if pred.shape != base.shape[:2]:
        raise ValueError(f"case {title!r}: pred shape {pred.shape} != image shape {base.shape[:2]}")
    axes[0].imshow(base, interpolation="nearest")
    axes[0].set_title(str(title), fontsize=9)
    if ref is not None:
        ref = np.asarray(ref)
        if ref.shape != pred.shape:
            raise ValueError(f"case {title!r}: ref shape {ref.shape} != pred shape {pred.shape}")
        axes[1].imshow(_overlay(base, ref, num_classes), interpolation="nearest")
        axes[1].set_title(columns[0], fontsize=9)
        pred_title = f"{columns[1]}: {_dice_text(pred, ref, num_classes, fg)}"
    else:
        axes[1].imshow(base * 0.3, interpolation="nearest")
        axes[1].text(0.5, 0.5, "no reference", ha="center", va="center", color="white", transform=axes[1].transAxes)
        axes[1].set_title(columns[0], fontsize=9)
        pred_title = columns[1]
    axes[2].imshow(_overlay(base, pred, num_classes), interpolation="nearest")
    axes[2].set_title(pred_title, fontsize=8 if "\n" in pred_title else 9)
    for ax in axes:
        ax.set_axis_off()


def _add_class_legend(fig: Figure, fg: Sequence[str], num_classes: int) -> None:
    """The legend strip at the bottom: one patch per foreground class in its fixed colour, named ``fg[c - 1]``."""
    handles = [Patch(color=class_colour(c), label=fg[c - 1]) for c in range(1, num_classes)]
    fig.legend(handles=handles, loc="lower center", ncol=min(len(handles), 6), frameon=False, fontsize=9)


def save_metric_bar_figure(path: Path, summary: dict) -> None:
    """A PNG bar chart of the mean Dice per foreground class, with the foreground mean as a dashed line.

    Args:
        path: destination ``.png``.
        summary: the dict of :meth:`MetricAccumulator.summary` (or read back from ``summary.json``); must
            contain Dice. Classes without a finite mean Dice are drawn as empty bars marked ``n/a``.
    """
    if "dice" not in summary.get("metrics", ["dice"]):
        raise ValueError("the summary has no Dice to plot")
    classes = list(summary["mean"].keys())
    names = [summary.get("class_names", {}).get(str(c), f"class_{c}") for c in classes]
    values = [summary["mean"][c].get("dice") for c in classes]
    heights = [v if v is not None and not math.isnan(v) else 0.0 for v in values]

    fig = Figure(figsize=(max(4.0, 1.0 + 0.9 * len(classes)), 3.5), dpi=DPI)
    ax = fig.add_subplot(1, 1, 1)
    xs = np.arange(len(classes))
    bars = ax.bar(xs, heights, color=[class_colour(int(c)) for c in classes], edgecolor="black")
    for bar, v in zip(bars, values, strict=True):
        text = "n/a" if v is None or math.isnan(v) else f"{v:.3f}"
        ax.annotate(
            text,
            (bar.get_x() + bar.get_width() / 2, bar.get_height()),
            ha="center",
            va="bottom",
            fontsize=8,
            xytext=(0, 2),
            textcoords="offset points",
        )
    fg = summary.get("foreground_mean", {}).get("dice")
    if fg is not None and not math.isnan(fg):
        ax.axhline(fg, color="gray", linestyle="--", linewidth=1, label=f"foreground mean {fg:.3f}")
        ax.legend(loc="lower right", fontsize=8)
    ax.set_xticks(xs, names)
    ax.set_ylim(0, 1.08)
    ax.set_ylabel("Dice")
    ax.set_title(f"Mean Dice per class ({summary.get('num_cases', '?')} cases)", fontsize=10)
    fig.tight_layout()
    save_figure(fig, path)
    logger.debug("wrote Dice bar figure %s", path)


REFINEMENT_COLUMNS = ("image", "student", "refined", "uncertainty", "reference")


def save_refinement_figure(
    path: Path,
    rows: Sequence[dict],
    num_classes: int,
    class_names: Sequence[str] | None = None,
    image_channels: int | None = None,
) -> None:
    """A PNG grid of test-time refinement, one row per case: image, student, refined, the teacher's uncertainty,
    reference.

    Args:
        rows: per case a dict with ``image`` float (C, H, W), ``student`` / ``refined`` / ``reference`` integer
            (H, W) label maps, ``uncertainty`` float (H, W) in [0, 1] and ``title`` (e.g. the case and its gain).
        num_classes, class_names, image_channels: as :func:`save_prediction_figure`.

    The student and refined panels carry their Dice against the reference.
    """
    if not rows:
        raise ValueError("save_refinement_figure needs at least one case")
    fg = [f"class_{c}" for c in range(1, num_classes)]
    if class_names:
        fg = [str(s) for s in (class_names[1:] if len(class_names) == num_classes else class_names)]
    cols = len(REFINEMENT_COLUMNS)
    width, height = cols * CELL_INCHES, len(rows) * CELL_INCHES + LEGEND_INCHES
    fig = Figure(figsize=(width, height), dpi=DPI)
    grid = fig.add_gridspec(
        len(rows), cols, left=0.01, right=0.99, top=1 - 0.4 / height, bottom=LEGEND_INCHES / height + 0.01,
        hspace=0.25, wspace=0.03,
    )  # fmt: skip
    for i, row in enumerate(rows):
        base = _display_image(row["image"], image_channels)
        ref = np.asarray(row["reference"])
        axes = [fig.add_subplot(grid[i, j]) for j in range(cols)]
        axes[0].imshow(base, interpolation="nearest")
        axes[0].set_title(str(row.get("title", "")), fontsize=8)
        for ax, name in zip(axes[1:3], ("student", "refined"), strict=True):
            pred = np.asarray(row[name])
            ax.imshow(_overlay(base, pred, num_classes), interpolation="nearest")
            text = f"{name}: {_dice_text(pred, ref, num_classes, fg)}"
            ax.set_title(text, fontsize=7 if "\n" in text else 8)
        shown = axes[3].imshow(np.asarray(row["uncertainty"]), cmap="magma", vmin=0.0, vmax=1.0)
        axes[3].set_title("teacher uncertainty", fontsize=8)
        fig.colorbar(shown, ax=axes[3], fraction=0.046, pad=0.02)
        axes[4].imshow(_overlay(base, ref, num_classes), interpolation="nearest")
        axes[4].set_title("reference", fontsize=8)
        for ax in axes:
            ax.set_axis_off()
    _add_class_legend(fig, fg, num_classes)
    save_figure(fig, path)
