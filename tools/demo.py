#!/usr/bin/env python
"""The end-to-end demo on the embedded default data: no download, minutes on 2 CPU cores.

Generates the seeded synthetic phantom (semisam.data.phantom) under runs/demo/data, runs the frozen LiteMedSAM
teacher offline (embeddings + SAMAug prior maps, cached in runs/demo/cache), trains a U-Net student with semisam
(8 labeled images, 12 unlabeled, priors as input channels, self-training rounds on rectified auto-prompt
pseudo-labels; configs/demo.yaml),
evaluates the best checkpoint on the phantom's test split, prints the summary and writes
runs/demo/run/eval_test/{summary.json,metrics_per_case.csv,predictions.png}.
Run it again to resume/reuse what is there; `make clean` removes it.
"""

from pathlib import Path

from semisam.cli import OVERRIDES_HELP, run_main, setup_logging, tool_parser

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = tool_parser(__doc__)
    parser.add_argument("overrides", nargs="*", metavar="key=value", help=OVERRIDES_HELP)
    parser.add_argument("--cases", type=int, default=120, help="phantom images to generate (default 120)")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args()
    setup_logging()
    from semisam.config.loader import load_config
    from semisam.data.phantom import make_phantom
    from semisam.evaluation.report import format_summary
    from semisam.evaluation.runner import evaluate_checkpoint
    from semisam.workflow.train import train

    cfg = load_config(ROOT / "configs" / "demo.yaml", args.overrides)
    data_root = Path(cfg.data.root)
    if not (data_root / "splits.json").exists():
        make_phantom(
            data_root,
            num_cases=args.cases,
            size=cfg.data.image_size[0],
            seed=0,
            layout="folder",
            num_val=6,  # the teacher's offline pass is most of the demo's time: every val/test image costs
            num_test=8,  # an encoder pass and 9 box decodes for its priors (docs/RESULTS.md: demo timing)
        )
    from semisam.teacher.engine import build_teacher
    from semisam.teacher.precompute import precompute

    teacher = build_teacher(cfg.teacher)
    report = precompute(
        cfg, teacher=teacher, splits=["labeled", "unlabeled", "val", "test"], progress=not args.no_progress
    )
    print(f"teacher cache: {report.root} ({len(report.computed)} cases computed, {report.skipped} reused)")
    result = train(cfg, progress=not args.no_progress, teacher=teacher)
    summary = evaluate_checkpoint(result.checkpoint, "test", progress=not args.no_progress)
    out = result.run_dir / "eval_test"
    print(format_summary(summary))
    print(
        f"\nsummary: {out / 'summary.json'}\nfigure:  {out / 'predictions.png'}\n"
        f"TensorBoard: tensorboard --logdir {result.run_dir}"
    )


if __name__ == "__main__":
    run_main(main)
