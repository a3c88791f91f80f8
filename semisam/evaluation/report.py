"""Evaluation reports: ``summary.json`` (nnU-Net-shaped), ``metrics_per_case.csv`` and a text table for logs.

Both files are written atomically (temporary file in the same folder, then ``os.replace``), so a reader never
sees half a report. NaN (a structure absent from both reference and prediction) is written as JSON ``null``
and as an empty CSV cell.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
from pathlib import Path
from typing import Any

from semisam.evaluation.metrics import METRIC_NAMES, MetricAccumulator
from semisam.utils import atomic_write_text

logger = logging.getLogger("semisam")

SUMMARY_FILE = "summary.json"
PER_CASE_FILE = "metrics_per_case.csv"
_HEADERS = {"dice": "Dice", "iou": "IoU", "hd95": "HD95", "asd": "ASD"}


def _nan_to_none(obj: Any) -> Any:
    """A copy of a JSON-like structure with every NaN/inf float replaced by ``None``."""
    if isinstance(obj, dict):
        return {str(k): _nan_to_none(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_nan_to_none(v) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def _csv_value(value: float) -> str:
    return "" if value is None or math.isnan(value) else repr(float(value))


def per_case_csv(summary: dict) -> str:
    """The per-case table as CSV text: one row per case and foreground class.

    Columns: ``case, class, class_name`` then one column per metric of the summary (``dice, iou, hd95, asd``
    by default); distances in the summary's units; NaN as an empty cell.
    """
    metrics = [m for m in summary.get("metrics", METRIC_NAMES)]
    names = summary.get("class_names", {})
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["case", "class", "class_name", *metrics])
    for entry in summary["metric_per_case"]:
        for cls, values in entry["metrics"].items():
            row = [entry["case"], cls, names.get(str(cls), str(cls))]
            writer.writerow(row + [_csv_value(values.get(m, math.nan)) for m in metrics])
    return buf.getvalue()


def write_summary(out_dir: Path, summary: dict) -> None:
    """Write ``summary`` as ``out_dir/summary.json`` (atomically; NaN as ``null``), creating the folder."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    text = json.dumps(_nan_to_none(summary), indent=2, allow_nan=False)
    atomic_write_text(out_dir / SUMMARY_FILE, text + "\n")


def write_report(out_dir: Path, acc: MetricAccumulator) -> dict:
    """Write ``summary.json`` and ``metrics_per_case.csv`` for the cases in ``acc`` into ``out_dir``.

    Args:
        out_dir: folder (created if missing).
        acc: a filled :class:`~semisam.evaluation.metrics.MetricAccumulator`.

    Returns:
        the summary dict (:meth:`MetricAccumulator.summary`, NaN kept as float NaN in memory).
    """
    out_dir = Path(out_dir)
    summary = acc.summary()
    write_summary(out_dir, summary)
    atomic_write_text(out_dir / PER_CASE_FILE, per_case_csv(summary))
    logger.info("wrote %s and %s (%d cases) to %s", SUMMARY_FILE, PER_CASE_FILE, summary["num_cases"], out_dir)
    return summary


def _fmt(value: float | None, digits: int) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return f"{value:.{digits}f}"


def format_summary(summary: dict) -> str:
    """A small aligned text table of the per-class means and the foreground mean.

    Accepts the dict of :meth:`MetricAccumulator.summary` or one read back from ``summary.json`` (``null``
    for NaN). Dice and IoU with 4 decimals, distances with 2 and their units in the header.
    """
    metrics = list(summary.get("metrics", METRIC_NAMES))
    units = summary.get("units", {})
    names = summary.get("class_names", {})
    headers = ["class"] + [f"{_HEADERS[m]} ({units[m]})" if m in units else _HEADERS[m] for m in metrics]
    rows = []
    for cls, values in summary["mean"].items():
        label = names.get(str(cls), f"class_{cls}")
        rows.append([label] + [_fmt(values.get(m), 2 if m in units else 4) for m in metrics])
    fg = summary.get("foreground_mean", {})
    rows.append(["mean (fg)"] + [_fmt(fg.get(m), 2 if m in units else 4) for m in metrics])
    widths = [max(len(r[i]) for r in [headers, *rows]) for i in range(len(headers))]

    def line(cells: list[str]) -> str:
        return "  ".join([cells[0].ljust(widths[0])] + [c.rjust(w) for c, w in zip(cells[1:], widths[1:], strict=True)])

    rule = "-" * len(line(headers))
    out = [f"{summary.get('num_cases', '?')} cases", line(headers), rule]
    out += [line(r) for r in rows[:-1]] + [rule, line(rows[-1])]
    return "\n".join(out)
