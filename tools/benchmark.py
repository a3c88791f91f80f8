#!/usr/bin/env python
"""Run a benchmark protocol end to end: teacher cache, every method trained, each scored on the test split.

Protocols: acdc-3, acdc-7 (ACDC, SSL4MIS protocol: first 68 / 136 slices of train_slices.list labeled, best
checkpoint on val.list, the 40 test volumes scored in 3D), kvasir-5, kvasir-10 (Kvasir-SEG splits.json
labeled_5pct / labeled_10pct, best on val, scored on test).
Methods (--methods: variants of semisam.benchmark.protocols.VARIANTS, each a method.name and its overrides):
supervised, supervised_priors, supervised_samaug, mean_teacher, unimatch, fixmatch, bcp, semisam (self-training
rounds, method.name=semisam_rounds: the default), semisam_rounds_pl, semisam_rounds_priors, semisam_rounds_pool_pl,
semisam_rounds2_pl, semisam_unimatch, semisam_bcp (rounds on a backbone), semisam_pl, semisam_online (method.name=
semisam_online: refreshed during one mean-teacher run), semisam_priors (mean teacher + priors, no pseudo-labels).
Scales: cpu (1500 AdamW steps at 128x128 with the residual instance-norm UNet, a reduced unlabeled pool:
configs/benchmark/cpu_*.yaml and configs/schedule/cpu.yaml) and full (the literature's schedule, for a GPU).
Seeds: three by default (--seeds); the table gives mean ± sample std over them, per method and class.

Every method gets the same student, schedule, split, seed and budget; the teacher cache is computed once. Writes
<out>/results.md, results.json and dice.png, and keeps each run's config, checkpoints and eval_test/summary.json.
Started again, it skips finished runs and resumes an interrupted one.

Examples:
  python tools/benchmark.py --protocol kvasir-10 --scale cpu --methods supervised,semisam
  python tools/benchmark.py --protocol acdc-3 --scale cpu --methods supervised,unimatch,bcp
  python tools/benchmark.py --protocol acdc-7 --scale full --seeds 0,1,2 data.num_workers=16
"""

import shlex
import sys

from semisam.cli import run_main, setup_logging, tool_parser

# Seed noise at the cpu scale is several Dice points, so one seed proves nothing: a table is mean ± std over these.
DEFAULT_SEEDS = (0, 1, 2)


def parse_seeds(text: str) -> list[int]:
    """``--seeds`` as a list of integers; ConfigError (one line, exit status 2) on anything else."""
    from semisam.config.schema import ConfigError

    try:
        return [int(s) for s in text.split(",") if s.strip()]
    except ValueError as err:
        raise ConfigError(f"--seeds must be comma-separated integers, got {text!r}") from err


def build_parser():
    """The tool's argument parser (the tests read its real defaults)."""
    from semisam.benchmark.protocols import PROTOCOLS, SCALES, VARIANTS

    default_seeds = ",".join(str(s) for s in DEFAULT_SEEDS)
    parser = tool_parser(__doc__)
    parser.add_argument("--protocol", required=True, choices=list(PROTOCOLS))
    parser.add_argument("--scale", default="cpu", choices=list(SCALES))
    parser.add_argument(
        "--methods", default=",".join(VARIANTS), help="comma-separated, run in this order (default: every variant)"
    )
    parser.add_argument(
        "--seeds",
        default=default_seeds,
        help=f"comma-separated seeds; the table gives mean ± std over them (default {default_seeds}: seed noise at "
        "the cpu scale is several Dice points, so one seed proves nothing)",
    )
    parser.add_argument(
        "--refine",
        action="store_true",
        help="also score every run refined by the teacher at test time (column 'Dice refined', a per-class table)",
    )
    parser.add_argument("--out", help="benchmark folder (default: runs/benchmark/<protocol>_<scale>)")
    parser.add_argument("--no-progress", action="store_true")
    parser.add_argument("--log-level", default="INFO")
    parser.add_argument("overrides", nargs="*", help="key=value applied to every run, e.g. data.root=/data/ACDC")
    return parser


def main() -> None:
    args = build_parser().parse_args()
    setup_logging(args.log_level)

    from semisam.benchmark.protocols import get_protocol, get_scale, get_variant
    from semisam.benchmark.runner import BenchmarkRunner

    seeds = parse_seeds(args.seeds)
    methods = [get_variant(m.strip()) for m in args.methods.split(",") if m.strip()]
    runner = BenchmarkRunner(
        get_protocol(args.protocol),
        get_scale(args.scale),
        methods,
        seeds,
        args.out or f"runs/benchmark/{args.protocol}_{args.scale}",
        args.overrides,
        progress=not args.no_progress,
        refine=args.refine,
    )
    results = runner.run(command=shlex.join(["python", "tools/benchmark.py", *sys.argv[1:]]))
    print((runner.out_dir / "results.md").read_text())
    print(f"wrote {runner.out_dir}/results.md, results.json, dice.png ({len(results['runs'])} runs)")


if __name__ == "__main__":
    run_main(main)
