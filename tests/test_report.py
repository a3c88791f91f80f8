"""Evaluation reports (summary.json, per-case CSV, text table) and figures."""

from __future__ import annotations

import csv
import json
import math
import struct

import numpy as np
import pytest

from semisam.evaluation.figures import (
    CELL_INCHES,
    DPI,
    LEGEND_INCHES,
    save_metric_bar_figure,
    save_prediction_figure,
)
from semisam.evaluation.metrics import MetricAccumulator
from semisam.evaluation.report import PER_CASE_FILE, SUMMARY_FILE, format_summary, write_report


def square(rows=(2, 6), cols=(2, 6), label=1, into=None):
    out = np.zeros((8, 8), dtype=np.int64) if into is None else into
    out[rows[0] : rows[1], cols[0] : cols[1]] = label
    return out


@pytest.fixture
def acc():
    """Case a: RV perfect, LV absent from both (NaN). Case b: RV shifted one row (Dice 0.75), LV missed."""
    acc = MetricAccumulator(3, class_names=["background", "RV", "LV"])
    ref = square()
    acc.add("a", ref.copy(), ref)
    ref_b = square()
    square(rows=(6, 8), cols=(0, 2), label=2, into=ref_b)
    acc.add("b", square(rows=(3, 7)), ref_b)
    return acc


def png_size(path):
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])  # width, height


def test_summary_json_round_trip_with_null_for_nan(tmp_path, acc):
    summary = write_report(tmp_path / "eval", acc)
    text = (tmp_path / "eval" / SUMMARY_FILE).read_text()
    assert ": null" in text
    assert text.startswith("{\n  ")  # pretty-printed

    def no_bare_nan(token):  # NaN / Infinity tokens are not JSON
        raise AssertionError(f"bare {token} in summary.json")

    loaded = json.loads(text, parse_constant=no_bare_nan)
    assert loaded["num_cases"] == 2
    assert loaded["class_names"] == {"1": "RV", "2": "LV"}
    assert loaded["units"] == {"hd95": "pixels", "asd": "pixels"}
    assert loaded["mean"]["1"]["dice"] == pytest.approx(0.875)
    assert loaded["foreground_mean"]["dice"] == pytest.approx(0.4375)
    case_a = loaded["metric_per_case"][0]
    assert case_a["case"] == "a"
    assert case_a["metrics"]["2"] == {"dice": None, "iou": None, "hd95": None, "asd": None}
    assert case_a["metrics"]["1"]["dice"] == 1.0
    # the returned summary is the in-memory one (NaN as float)
    assert math.isnan(summary["metric_per_case"][0]["metrics"]["2"]["dice"])
    for cls in ("1", "2"):
        assert summary["mean"][cls] == pytest.approx(loaded["mean"][cls])
    # nothing left behind but the two reports
    assert sorted(p.name for p in (tmp_path / "eval").iterdir()) == sorted([SUMMARY_FILE, PER_CASE_FILE])


def test_per_case_csv_rows(tmp_path, acc):
    write_report(tmp_path, acc)
    with open(tmp_path / PER_CASE_FILE, newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["case", "class", "class_name", "dice", "iou", "hd95", "asd"]
    assert [(r["case"], r["class"], r["class_name"]) for r in rows] == [
        ("a", "1", "RV"), ("a", "2", "LV"), ("b", "1", "RV"), ("b", "2", "LV"),
    ]  # fmt: skip
    assert rows[1]["dice"] == "" and rows[1]["hd95"] == ""  # NaN -> empty cell
    assert float(rows[2]["dice"]) == pytest.approx(0.75)
    assert float(rows[2]["iou"]) == pytest.approx(0.6)
    assert float(rows[2]["hd95"]) == pytest.approx(1.0)
    assert float(rows[2]["asd"]) == pytest.approx(0.5)
    assert float(rows[3]["dice"]) == 0.0
    assert float(rows[3]["hd95"]) == pytest.approx(math.sqrt(128))


def test_report_overwrites_atomically(tmp_path, acc):
    write_report(tmp_path, acc)
    acc.add("c", square(), square())
    write_report(tmp_path, acc)
    assert json.loads((tmp_path / SUMMARY_FILE).read_text())["num_cases"] == 3
    assert len((tmp_path / PER_CASE_FILE).read_text().strip().splitlines()) == 1 + 3 * 2
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_format_summary_table(tmp_path, acc):
    write_report(tmp_path, acc)
    for summary in (acc.summary(), json.loads((tmp_path / SUMMARY_FILE).read_text())):
        table = format_summary(summary)
        lines = table.splitlines()
        assert lines[0] == "2 cases"
        assert "Dice" in lines[1] and "IoU" in lines[1] and "HD95 (pixels)" in lines[1] and "ASD (pixels)" in lines[1]
        rv = next(line for line in lines if line.startswith("RV"))
        assert rv.split()[1:] == ["0.8750", "0.8000", "0.50", "0.25"]
        assert any(line.startswith("LV") for line in lines)
        assert lines[-1].startswith("mean (fg)") and "0.4375" in lines[-1]
        table_lines = [line for line in lines[1:] if not line.startswith("-")]
        assert len({len(line) for line in table_lines}) == 1  # aligned columns


def test_format_summary_with_mm_and_nan():
    acc = MetricAccumulator(3, metrics=("dice", "hd95"), units="mm")
    ref = square()
    acc.add("a", ref, ref, spacing=(1.0, 1.0))
    table = format_summary(acc.summary())
    assert "HD95 (mm)" in table and "IoU" not in table
    assert "n/a" in next(line for line in table.splitlines() if line.startswith("class_2"))


def test_prediction_figure_is_png_with_grid_proportions(tmp_path):
    rng = np.random.default_rng(0)
    ref = square()
    square(rows=(6, 8), cols=(0, 2), label=2, into=ref)
    pred = square(rows=(3, 7))
    gray = rng.normal(5.0, 3.0, size=(1, 8, 8)).astype(np.float32)
    rgb = rng.uniform(-1, 1, size=(3, 8, 8)).astype(np.float32)
    path = tmp_path / "figs" / "pred.png"
    save_prediction_figure(
        path,
        [gray, rgb],
        [ref, None],
        [pred, pred],
        ["case a", "case b"],
        num_classes=3,
        class_names=["bg", "RV", "LV"],
    )
    assert path.stat().st_size > 1000
    width, height = png_size(path)
    assert (width, height) == (round(3 * CELL_INCHES * DPI), round((2 * CELL_INCHES + LEGEND_INCHES) * DPI))
    one = tmp_path / "one.png"
    save_prediction_figure(one, [gray], [ref], [pred], ["a"], num_classes=3)
    w1, h1 = png_size(one)
    assert w1 == width and h1 < height  # one row fewer
    assert width / h1 == pytest.approx(3 * CELL_INCHES / (CELL_INCHES + LEGEND_INCHES), rel=0.01)
    assert not [p for p in tmp_path.rglob("*.tmp")]


def test_prediction_figure_validates_inputs(tmp_path):
    img = np.zeros((1, 8, 8), np.float32)
    lab = np.zeros((8, 8), np.int64)
    with pytest.raises(ValueError, match="equal lengths"):
        save_prediction_figure(tmp_path / "x.png", [img], [lab], [lab, lab], ["a"], 2)
    with pytest.raises(ValueError, match="shape"):
        save_prediction_figure(tmp_path / "x.png", [img], [lab], [np.zeros((4, 4), np.int64)], ["a"], 2)
    assert not (tmp_path / "x.png").exists()


def test_metric_bar_figure(tmp_path, acc):
    path = tmp_path / "dice.png"
    save_metric_bar_figure(path, acc.summary())
    width, height = png_size(path)
    assert path.stat().st_size > 1000 and width > 0 and height > 0
    with pytest.raises(ValueError, match="Dice"):
        save_metric_bar_figure(tmp_path / "no.png", {"metrics": ["hd95"], "mean": {}})
