"""Scoring the everything grid box by box, and whether the teacher's scores pick out a structure's mask."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest
import torch

from semisam.teacher.grid_analysis import analyze_grid, label_box_summary, label_boxes, rank_rules, score_box_masks

from .conftest import REPO


def _logits(masks: list[np.ndarray], inside: list[float]) -> torch.Tensor:
    """Logits that are ``inside[i]`` on mask i and -5 elsewhere."""
    return torch.stack([torch.where(torch.from_numpy(m), v, -5.0) for m, v in zip(masks, inside, strict=True)])


def test_box_masks_are_scored_per_class_with_the_teachers_scores():
    label = np.zeros((10, 20), dtype=np.int64)
    label[2:6, 2:6] = 1  # 16 pixels of class 1; class 2 absent
    exact = label == 1
    half = np.zeros_like(exact)
    half[2:6, 2:4] = True  # 8 pixels inside the structure
    empty = np.zeros_like(exact)
    logits = _logits([exact, half, empty], [4.0, 0.5, 1.0])
    boxes = torch.tensor([[0, 0, 10, 10], [0, 0, 5, 5], [10, 0, 20, 10]], dtype=torch.float32)
    rows = score_box_masks(logits, torch.tensor([0.9, 0.8, 0.7]), boxes, label, [1, 2])
    assert [r["box"] for r in rows] == [0, 1, 2]
    assert [r["box_side"] for r in rows] == [0.5, 0.25, 0.5]
    assert rows[0]["iou_1"] == 1.0 and rows[1]["iou_1"] == 0.5 and rows[2]["iou_1"] == 0.0
    assert all(math.isnan(r["iou_2"]) for r in rows)
    assert rows[0]["area"] == 16 / 200 and rows[2]["area"] == 0.0
    assert rows[0]["mean_logit"] == 4.0 and rows[2]["mean_logit"] == 0.0
    # logits of 0.5 on the mask: thresholded at +1 nothing is left, so the mask is unstable
    assert rows[0]["stability_score"] == 1.0 and rows[1]["stability_score"] == 0.0
    assert rows[1]["predicted_iou"] == pytest.approx(0.8)
    with pytest.raises(ValueError, match="do not describe the same N boxes"):
        score_box_masks(logits, torch.tensor([0.9, 0.8]), boxes, label, [1])


def test_rank_rules_ask_whether_the_top_scored_masks_are_the_structures():
    rows = []
    # image a: the structure's mask has the highest predicted IoU but the lowest mean logit
    for box, (iou, pred, logit) in enumerate([(0.9, 0.95, 1.0), (0.1, 0.5, 5.0), (0.0, 0.4, 4.0)]):
        rows.append({"image": "a", "box": box, "iou_1": iou, "predicted_iou": pred, "mean_logit": logit})
    # image b: no mask reaches 0.5; class 1 only (class 2 absent everywhere: nan)
    for box, (iou, pred, logit) in enumerate([(0.3, 0.9, 1.0), (0.2, 0.8, 2.0), (0.4, 0.1, 3.0)]):
        rows.append({"image": "b", "box": box, "iou_1": iou, "predicted_iou": pred, "mean_logit": logit})
    for r in rows:
        r["iou_2"] = math.nan
    out = rank_rules(rows, [1, 2], ks=(1, 3), scores=("predicted_iou", "mean_logit"))
    assert out["images"] == 2 and out["boxes_per_image"] == 3.0
    assert "2" not in out["classes"]
    c1 = out["classes"]["1"]
    assert c1["images"] == 2 and c1["good_mask_share"] == pytest.approx(1 / 6)
    assert c1["all"] == {"best_iou": pytest.approx(0.65), "good_share": 0.5}
    assert c1["predicted_iou@1"] == {"best_iou": pytest.approx(0.6), "good_share": 0.5}
    assert c1["mean_logit@1"] == {"best_iou": pytest.approx(0.25), "good_share": 0.0}
    assert c1["mean_logit@3"] == c1["all"]  # every mask kept


def test_analyze_grid_scores_every_box_of_labeled_images(phantom_root, tmp_path):
    from semisam.config.loader import load_config
    from semisam.teacher.engine import build_teacher
    from semisam.teacher.models import build_tiny_sam, tiny_spec

    cfg = load_config(
        REPO / "configs/demo.yaml",
        [f"data.root={phantom_root}", f"teacher.cache_dir={tmp_path / 'cache'}", "teacher.everything.box_scales=[0.5]"],
    )
    spec = replace(tiny_spec(), kind="tiny_box", accepts_points=False)
    teacher = build_teacher(cfg.teacher, sam=build_tiny_sam(seed=0), spec=spec)
    rows = analyze_grid(cfg, teacher, "val", limit=3, progress=False)
    assert len({r["image"] for r in rows}) == 3
    assert len(rows) == 3 * 9  # the 3x3 grid of half-size boxes on every image
    assert all(set(r) >= {"predicted_iou", "stability_score", "mean_logit", "iou_1", "iou_3"} for r in rows)
    summary = rank_rules(rows, [1, 2, 3])
    assert summary["boxes_per_image"] == 9.0 and set(summary["classes"]) <= {"1", "2", "3"}
    with pytest.raises(ValueError, match="labeled or val images only"):
        analyze_grid(cfg, teacher, "unlabeled")
    point_teacher = build_teacher(cfg.teacher, sam=build_tiny_sam(seed=0), spec=tiny_spec())
    with pytest.raises(ValueError, match="takes points"):
        analyze_grid(cfg, point_teacher, "val")


def test_label_boxes_frame_each_structure_with_a_margin():
    label = np.zeros((20, 30), dtype=np.int64)
    label[4:8, 10:20] = 2  # rows 4-7, columns 10-19
    label[0:20, 0:2] = 3  # touches the image's edges
    present, boxes = label_boxes(label, [1, 2, 3], margin=0.1)
    assert present == [2, 3]  # class 1 is absent: no box
    assert boxes.tolist()[0] == pytest.approx([9.0, 3.6, 21.0, 8.4])  # 10 x 4 px, widened by 1 and 0.4 px
    assert boxes.tolist()[1] == pytest.approx([0.0, 0.0, 2.2, 20.0])  # clipped to the image


def test_label_box_summary_says_what_each_structures_box_returns():
    nan = math.nan
    rows = [  # a ring's box returning the cavity inside it, on two images; the cavity's box returning itself
        {"prompt_class": 1, "iou_1": 0.05, "iou_2": 0.85},
        {"prompt_class": 1, "iou_1": 0.15, "iou_2": 0.75},
        {"prompt_class": 2, "iou_1": 0.0, "iou_2": 0.9},
        {"prompt_class": 2, "iou_1": nan, "iou_2": 0.7},  # no ring on that image
    ]
    table = label_box_summary(rows, [1, 2])
    assert table["1"]["boxes"] == 2
    assert table["1"]["iou_1"]["mean"] == pytest.approx(0.10) and table["1"]["iou_2"]["mean"] == pytest.approx(0.80)
    assert table["2"]["iou_1"] == {"mean": 0.0, "median": 0.0}  # the nan row does not count
    assert table["2"]["iou_2"]["median"] == pytest.approx(0.8)


def test_analyze_grid_with_label_boxes_prompts_each_structure_once(phantom_root, tmp_path):
    from semisam.config.loader import load_config
    from semisam.teacher.engine import build_teacher
    from semisam.teacher.models import build_tiny_sam, tiny_spec

    cfg = load_config(REPO / "configs/demo.yaml", [f"data.root={phantom_root}", f"teacher.cache_dir={tmp_path}"])
    spec = replace(tiny_spec(), kind="tiny_box", accepts_points=False)
    teacher = build_teacher(cfg.teacher, sam=build_tiny_sam(seed=0), spec=spec)
    rows = analyze_grid(cfg, teacher, "val", limit=2, progress=False, boxes="labels")
    images = {r["image"] for r in rows}
    assert len(images) == 2
    for image in images:  # one row per class present on the image, in class order
        assert [r["prompt_class"] for r in rows if r["image"] == image] == [1, 2, 3]
    with pytest.raises(ValueError, match="'grid' or 'labels'"):
        analyze_grid(cfg, teacher, "val", boxes="points")
