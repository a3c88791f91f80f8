#!/usr/bin/env python
"""Measure the teacher's pseudo-labels against the held-back labels of unlabeled training images.

Takes a trained student (its EMA weights if the checkpoint has them: what a semisam refresh uses), builds prompts
from its predictions on the first N unlabeled images, decodes them with the frozen teacher (embeddings are
computed and cached first if missing), rectifies, and reports foreground Dice of: the teacher's label before
rectification, the rectified pseudo-label on the pixels it keeps, the model on those pixels and on all pixels,
and the share of pixels kept. Writes <out>/pseudo_label_scores.json and pseudo_labels.png.

With --compare-teachers (and teacher.adapt=decoder): per class, the published teacher, the adapted one and the
student on the same pixels of those images (every class asked, no calibration), pooled Dice against the held-back
labels, into <out>/teacher_comparison.json.

Example:
  python tools/analyze_pseudo_labels.py --checkpoint runs/kvasir10_sup_cpu/checkpoints/best.pt --limit 30
  python tools/analyze_pseudo_labels.py --checkpoint runs/acdc3/checkpoints/best.pt --compare-teachers \
      teacher.adapt=decoder
"""

import json
from pathlib import Path

from semisam.cli import OVERRIDES_HELP, run_main, setup_logging, tool_parser


def main() -> None:
    parser = tool_parser(__doc__)
    parser.add_argument("--checkpoint", required=True, help="a student checkpoint written by tools/train.py")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help=OVERRIDES_HELP)
    parser.add_argument("--limit", type=int, default=30, help="unlabeled (and calibration) images to use")
    parser.add_argument("--weights", choices=["auto", "model", "ema"], default="auto")
    parser.add_argument("--output", help="output folder (default: <run>/pseudo_label_analysis)")
    parser.add_argument(
        "--compare-teachers",
        action="store_true",
        help="per class: published teacher vs adapted teacher (teacher.adapt=decoder) vs student on the same pixels",
    )
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    args = parser.parse_args()
    setup_logging(args.log_level)
    from semisam.evaluation.figures import save_prediction_figure
    from semisam.pseudolabel.analysis import analyze_pseudo_labels, compare_teachers
    from semisam.student.checkpoint import load_student
    from semisam.utils import atomic_write_text

    path = Path(args.checkpoint)
    student = load_student(path, overrides=args.overrides, weights=args.weights)
    cfg = student.config
    out = Path(args.output) if args.output else path.parent.parent / "pseudo_label_analysis"
    if args.compare_teachers:
        comparison = compare_teachers(cfg, student.model, args.limit, student.device)
        atomic_write_text(out / "teacher_comparison.json", json.dumps(comparison, indent=2))
        for name, row in comparison.items():
            if isinstance(row, dict):
                print(f"{name}: " + ", ".join(f"{who} {dice:.3f}" for who, dice in row.items()))
        print(f"wrote {out / 'teacher_comparison.json'} ({comparison['images']} pool images)")
        return
    scores, examples = analyze_pseudo_labels(cfg, student.model, args.limit, student.device)
    scores["weights"] = student.weights
    atomic_write_text(out / "pseudo_label_scores.json", json.dumps(scores, indent=2))
    shown = examples[:4]
    save_prediction_figure(
        out / "pseudo_labels.png",
        [image for image, _, _ in shown],
        [ref for _, _, ref in shown],
        [r.rectified.label * (r.rectified.weight > 0) for _, r, _ in shown],
        [f"pool image {i + 1}" for i in range(len(shown))],
        cfg.data.num_classes,
        class_names=cfg.data.class_names or None,
        columns=("held-back label", "pseudo-label (ignored: unmarked)"),
    )
    print(json.dumps({k: v for k, v in scores.items() if not isinstance(v, dict)}, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    run_main(main)
