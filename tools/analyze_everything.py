#!/usr/bin/env python
"""Score every box of a box-only teacher's everything grid against the labels: does the teacher single out objects?

For the first N labeled or val cases, each box of the grid (teacher.everything.box_scales / box_overlap) is decoded
on the image's embedding (the cache's if there) and its raw mask is scored against each class (IoU), with the
teacher's own scores (predicted IoU, stability, mean logit). The summary says, per class, how often the best mask
of the whole grid is the structure's (IoU >= 0.5) and how often the best of the k top-scored masks is: whether
the teacher's scores can tell the structure's mask from the rest, which SAMAug priors need. Writes
<output>/box_masks.csv and everything_analysis.json and prints the summary. Labels are read for measuring only.

With --label-boxes, each labeled structure is prompted instead with one box around it (widened by --margin): the
best box a student could give. The summary says, per prompted class, the mean IoU of the teacher's mask with each
class (e.g. a box around ACDC's myocardium returns the LV cavity): the teacher's ceiling on each structure.
Writes <output>/label_boxes.csv and label_box_analysis.json.

Example:
  python tools/analyze_everything.py --config configs/kvasir/10_supervised.yaml \\
      --config configs/benchmark/cpu_kvasir.yaml --split val --limit 80 --output runs/grid_kvasir
  python tools/analyze_everything.py --config configs/acdc/3_supervised.yaml \
      --config configs/benchmark/cpu_acdc.yaml --split val --limit 8 --label-boxes --output runs/acdc_label_boxes
"""

import csv
import json
from pathlib import Path

from semisam.cli import add_common_arguments, config_from_args, run_main, setup_logging, tool_parser


def main() -> None:
    parser = tool_parser(__doc__)
    add_common_arguments(parser)
    parser.add_argument("--split", choices=["labeled", "val"], default="val", help="cases to score (default val)")
    parser.add_argument("--limit", type=int, default=50, help="at most N cases (default 50)")
    parser.add_argument("--output", required=True, help="folder for box_masks.csv and everything_analysis.json")
    parser.add_argument("--label-boxes", action="store_true", help="one box per labeled structure, not the grid")
    parser.add_argument("--margin", type=float, default=0.05, help="label boxes widened by this share of each side")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args()
    setup_logging(args.log_level)
    from semisam.teacher.engine import build_teacher
    from semisam.teacher.grid_analysis import analyze_grid, label_box_summary, rank_rules
    from semisam.utils import atomic_write_text

    cfg = config_from_args(args)
    teacher = build_teacher(cfg.teacher)
    classes = list(range(1, cfg.data.num_classes))
    names = cfg.data.class_names or [str(c) for c in range(cfg.data.num_classes)]
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    if args.label_boxes:
        rows = analyze_grid(cfg, teacher, args.split, args.limit, not args.no_progress, "labels", args.margin)
        _write_csv(out / "label_boxes.csv", rows)
        table = label_box_summary(rows, classes)
        summary = {"split": args.split, "margin": args.margin, "prompted_classes": table}
        atomic_write_text(out / "label_box_analysis.json", json.dumps(summary, indent=2))
        for c, entry in table.items():
            ious = ", ".join(f"{names[int(k[4:])]} {v['mean']:.3f}" for k, v in entry.items() if k.startswith("iou_"))
            print(f"box around {names[int(c)]} ({entry['boxes']} boxes): mean IoU with {ious}")
        return
    rows = analyze_grid(cfg, teacher, args.split, args.limit, progress=not args.no_progress)
    summary = rank_rules(rows, classes)
    summary.update(split=args.split, box_scales=list(cfg.teacher.everything.box_scales))
    _write_csv(out / "box_masks.csv", rows)
    atomic_write_text(out / "everything_analysis.json", json.dumps(summary, indent=2))
    print(f"{summary['images']} images, {summary['boxes_per_image']:.0f} boxes each")
    for c, s in summary["classes"].items():
        print(f"{names[int(c)]}: {s['images']} images, {s['good_mask_share']:.1%} of masks with IoU >= 0.5")
        for rule, v in s.items():
            if isinstance(v, dict):
                print(f"  {rule:20s} best IoU {v['best_iou']:.3f}, IoU >= 0.5 on {v['good_share']:.0%} of images")


def _write_csv(path: Path, rows: list[dict]) -> None:
    if rows:
        with path.open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)


if __name__ == "__main__":
    run_main(main)
