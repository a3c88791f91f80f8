#!/usr/bin/env python
"""Cost of each training method's step: forwards, loss, backward and optimiser step on random batches.

The benchmark protocol's configs of each method variant (``semisam.benchmark.protocols``) at the given scale, one
step timed without the data pipeline, the median of ``--steps`` steps after ``--warmup``; prints a Markdown table
with each method's time and its ratio to ``supervised`` (paste it into docs/BENCHMARKS.md with the command,
machine and commit). Set ``OMP_NUM_THREADS`` to fix the threads; timing on a shared machine varies.

Examples:
  OMP_NUM_THREADS=1 python tools/benchmark_methods.py --protocol kvasir-10
  python tools/benchmark_methods.py --protocol acdc-3 --methods supervised,mean_teacher,unimatch --steps 10
"""

from semisam.cli import run_main, setup_logging, tool_parser


def main() -> None:
    from semisam.benchmark.protocols import PROTOCOLS, SCALES

    parser = tool_parser(__doc__)
    parser.add_argument("--protocol", required=True, choices=list(PROTOCOLS))
    parser.add_argument("--scale", default="cpu", choices=list(SCALES))
    parser.add_argument("--methods", default="supervised,mean_teacher,unimatch,fixmatch,bcp")
    parser.add_argument("--steps", type=int, default=4, help="timed steps per method (default 4)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps first (default 2)")
    parser.add_argument("--log-level", default="WARNING")
    args = parser.parse_args()
    setup_logging(args.log_level)
    import tempfile
    from pathlib import Path

    import torch

    from semisam.benchmark.protocols import get_protocol, get_scale, get_variant
    from semisam.benchmark.runner import build_run_config
    from semisam.benchmark.throughput import method_step_seconds

    protocol, scale = get_protocol(args.protocol), get_scale(args.scale)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in [m.strip() for m in args.methods.split(",") if m.strip()]:
            cfg = build_run_config(protocol, get_variant(name), scale, 0, Path(tmp))
            rows.append((name, method_step_seconds(cfg, args.steps, args.warmup)))
    base = dict(rows).get("supervised")
    print(f"\n{protocol.name}, scale {scale.name}, {torch.get_num_threads()} threads\n")
    print("| method | s per step | x supervised |\n|---|---|---|")
    for name, seconds in rows:
        ratio = f"{seconds / base:.1f}" if base else "n/a"
        print(f"| {name} | {seconds:.3f} | {ratio} |")


if __name__ == "__main__":
    run_main(main)
