#!/usr/bin/env python
"""Train a semisam student.

Examples:
  python tools/train.py --config configs/acdc/7_supervised.yaml
  python tools/train.py --config configs/kvasir/10_mean_teacher.yaml data.root=../shared/data/Kvasir-SEG \\
      schedule.iterations=2000 output_dir=runs/kvasir10_mt

The run directory (output_dir) receives config.yaml, environment.json, checkpoints/{last,best}.pt,
tensorboard/ and metrics.csv. Running the same command again resumes from checkpoints/last.pt.

Methods (method.name): supervised, mean_teacher, unimatch, bcp, semisam_rounds, semisam_online.
semisam_rounds (configs/method/semisam.yaml, semisam's default): self-training rounds. Round 0 trains the backbone
(method.backbone: supervised by default, unimatch or bcp) on the labeled images, then each round labels the
unlabeled pool through the teacher and trains on labeled + the most reliable pseudo-labeled images; the run
directory holds round_0/, round_1/, ... and the last round's checkpoints/:
  python tools/train.py --config configs/kvasir/10_semisam.yaml
semisam_online: the teacher's pseudo-labels refreshed during one run of the backbone (mean_teacher by default):
  python tools/train.py --config configs/kvasir/10_semisam.yaml method.name=semisam_online
(The old spellings method.name=semisam with pseudo_labels.mode=rounds|online, or pseudo_labels.enabled=false,
still load, with a deprecation warning.)

Several GPUs (one process each, DistributedDataParallel; schedule.batch_size is per process):
  torchrun --nproc_per_node=4 tools/train.py --config configs/acdc/7_mean_teacher.yaml
"""

from semisam.cli import add_common_arguments, config_from_args, run_main, setup_logging, tool_parser


def main() -> None:
    parser = tool_parser(__doc__)
    add_common_arguments(parser)
    parser.add_argument("--no-progress", action="store_true", help="no progress bar (for logs of batch jobs)")
    args = parser.parse_args()
    setup_logging(args.log_level)
    from semisam import distributed
    from semisam.workflow.train import train

    cfg = config_from_args(args)
    with distributed.session(cfg.device):  # joins torchrun's process group, if there is one
        result = train(cfg, progress=not args.no_progress)
        if distributed.is_main():
            print(
                f"done: {result.iterations} iterations, best val Dice {result.best_metric:.4f} at "
                f"{result.best_iteration}; evaluate with: "
                f"python tools/evaluate.py --checkpoint {result.checkpoint}"
            )


if __name__ == "__main__":
    run_main(main)
