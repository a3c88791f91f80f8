#!/usr/bin/env python
"""Adapt the teacher to the task on its own: train its mask decoder on the labeled images (teacher.adapt=decoder).

The image encoder stays frozen (the embeddings come from the teacher cache, computed here if missing); the mask
decoder and a per-class prompt embedding learn from boxes of the labeled images' label components, perturbed the
way a student's boxes miss (teacher.adaptation.*). The decoder kept is the one with the best val Dice, step 0 (the
published decoder) included. Training runs (tools/train.py with teacher.adapt=decoder) do the same on their own,
and reuse what this tool wrote when the identity (teacher, labeled and val ids, settings, seed) is the same.

Writes <teacher.cache_dir>/<data.name>/<teacher.kind>/adapted_decoders/<key>/:
  decoder.pt        the adapted decoder and class embedding, with its identity
  adaptation.json   {"classes": {"<name>": {"frozen": <val Dice>, "adapted": <val Dice>}}, "seconds": s, ...}
  adaptation.png    val images: label, published and adapted masks from the same perturbed boxes
  tensorboard/      loss, learning rate and val Dice per class
and prints one line per class last.

Examples:
  python tools/adapt_teacher.py --config configs/kvasir/10_semisam.yaml
  python tools/adapt_teacher.py --config configs/acdc/3_semisam.yaml teacher.adaptation.steps=600 seed=1
"""

from semisam.cli import add_common_arguments, config_from_args, run_main, setup_logging, tool_parser


def main() -> None:
    parser = tool_parser(__doc__)
    add_common_arguments(parser)
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args()
    setup_logging(args.log_level)
    from semisam.teacher.adapt import adapt_teacher
    from semisam.teacher.engine import build_teacher

    cfg = config_from_args(args)
    result = adapt_teacher(cfg, build_teacher(cfg.teacher), progress=not args.no_progress)
    report = result.report
    print(f"adapted decoder: {result.directory}")
    if "seconds" in report:
        print(f"{report['seconds'] / 60:.1f} min, best val Dice at step {report['best_step']} of {report['steps']}")
    for name, scores in report["classes"].items():
        print(f"{name}: val Dice {scores['frozen']:.3f} published -> {scores['adapted']:.3f} adapted")


if __name__ == "__main__":
    run_main(main)
