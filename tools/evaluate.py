#!/usr/bin/env python
"""Evaluate a trained student on a held-out split.

Writes <out>/summary.json (nnU-Net-like: metric_per_case, mean, foreground_mean), metrics_per_case.csv and PNG
figures, with Dice, IoU, HD95 and ASD per class. Volumes are predicted slice by slice and scored in 3D.
Distances are in mm when the data set stores spacing, otherwise in pixels/voxels (the summary says which).

With --refine, the frozen teacher refines the student's predictions (test-time UR-SAM): prompts from the
student's prediction, perturbed, decoded, rectified against the student's probabilities; the classes it refines
are calibrated on the val split (refine.* keys). The folder (default <run>/eval_<split>_refined) then holds both
the refined and the student-alone scores, per class and per case, and refinement.png (image, student, refined,
uncertainty, reference for the cases that gain most and least). Embeddings of the scored and val cases are
computed into the teacher cache first if missing.

Examples:
  python tools/evaluate.py --checkpoint runs/acdc7_sup/checkpoints/best.pt
  python tools/evaluate.py --checkpoint runs/k10_semisam/checkpoints/best.pt --refine
  python tools/evaluate.py --checkpoint runs/acdc7_sup/checkpoints/best.pt --split val
  python tools/evaluate.py --checkpoint best.pt --config configs/acdc/7_supervised.yaml data.root=/data/ACDC
"""

from semisam.cli import OVERRIDES_HELP, run_main, setup_logging, tool_parser


def main() -> None:
    parser = tool_parser(__doc__)
    parser.add_argument("--checkpoint", required=True, help="checkpoint written by tools/train.py (best.pt / last.pt)")
    parser.add_argument(
        "--config",
        action="append",
        help="take data and eval settings from this config instead of the checkpoint's",
    )
    parser.add_argument("overrides", nargs="*", metavar="key=value", help=OVERRIDES_HELP)
    parser.add_argument("--split", default="test", choices=["test", "val", "labeled", "unlabeled"])
    parser.add_argument("--weights", default="model", choices=["model", "ema"], help="student or its EMA")
    parser.add_argument("--output", help="output folder (default: <run>/eval_<split>, or eval_<split>_refined)")
    parser.add_argument(
        "--refine", action="store_true", help="also refine the predictions with the frozen teacher (see above)"
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar (for logs of batch jobs)")
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    args = parser.parse_args()
    setup_logging(args.log_level)
    from semisam.evaluation.report import format_summary
    from semisam.evaluation.runner import evaluate_checkpoint

    evaluate = evaluate_checkpoint
    if args.refine:
        from semisam.pseudolabel.refine import evaluate_refined as evaluate
    summary = evaluate(
        args.checkpoint, args.split, args.output, args.config, args.overrides, args.weights, not args.no_progress
    )
    if args.refine:
        print("student alone:\n" + format_summary({**summary, **summary["student"]}))
        print("refined by the teacher (classes " + str(summary["refinement"]["refined_classes"]) + "):")
    print(format_summary(summary))


if __name__ == "__main__":
    run_main(main)
