#!/usr/bin/env python
"""Training throughput: tools/train.py's loop against a plain in-memory loop of the same model and batch.

Both train the configured student on the configured labeled images for the same number of steps; the figure is
labeled images per second (median over 10-step windows after a warm-up) and the ratio semisam / plain. The
plain loop is what a user would write by hand: images held as one tensor, random flips, the same loss and
AdamW. Prints a Markdown table (paste it into docs/BENCHMARKS.md with the command, machine and commit).

Examples:
  python tools/benchmark_throughput.py --config configs/kvasir/10_supervised.yaml --config configs/schedule/cpu.yaml
  python tools/benchmark_throughput.py --config configs/acdc/3_supervised.yaml --config configs/schedule/cpu.yaml \\
      --steps 100 --repeats 3
"""

from semisam.cli import add_common_arguments, config_from_args, run_main, setup_logging, tool_parser


def main() -> None:
    parser = tool_parser(__doc__)
    add_common_arguments(parser)
    parser.add_argument("--steps", type=int, default=60, help="timed steps per loop (default 60)")
    parser.add_argument("--warmup", type=int, default=10, help="untimed steps first (default 10)")
    parser.add_argument("--repeats", type=int, default=1, help="alternate the two loops this many times")
    args = parser.parse_args()
    setup_logging(args.log_level)
    import platform

    import torch

    from semisam.benchmark.throughput import plain_loop, project_loop

    cfg = config_from_args(args)
    rows = []
    for _ in range(args.repeats):
        rows.append(project_loop(cfg, args.steps, args.warmup))
        rows.append(plain_loop(cfg, args.steps, args.warmup))
    print(
        f"\n{cfg.data.name}, {cfg.student.arch} {list(cfg.student.features)}, batch {cfg.schedule.batch_size} at "
        f"{cfg.data.image_size[0]}x{cfg.data.image_size[1]}, method {cfg.method.name}; "
        f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads\n"
    )
    print("| loop | images/s | s/step | windows | spread |\n|---|---|---|---|---|")
    for r in rows:
        print(f"| {r.loop} | {r.images_per_s:.1f} | {r.seconds_per_step:.3f} | {r.windows} | {100 * r.spread:.0f} % |")
    ours = [r.images_per_s for r in rows if r.loop == "semisam"]
    plain = [r.images_per_s for r in rows if r.loop == "plain"]
    print(f"\nratio semisam / plain: {sum(ours) / len(ours) / (sum(plain) / len(plain)):.2f}")


if __name__ == "__main__":
    run_main(main)
