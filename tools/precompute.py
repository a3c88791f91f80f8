#!/usr/bin/env python
"""Run the frozen SAM teacher offline: image embeddings and prior maps for every case, cached once.

Priors are computed when the config's student takes them (priors.enabled=true): with priors.source=everything
SAMAug's two maps, with priors.source=embeddings the embedding priors (a PCA of the embeddings fitted on up to
256 training images, its components over every case of the requested splits, and
embedding_priors_preview.png beside the cache). Otherwise only the image embeddings that pseudo-labels (and,
with --refine, test-time refinement) decode on.

The cache goes to <teacher.cache_dir>/<data.name>/<teacher.kind>/ with a manifest naming the teacher (kind,
checkpoint sha256, preprocessing); a cache made by another teacher is rebuilt, finished cases are skipped, so an
interrupted run resumes where it stopped. Training with priors.enabled=true reads the priors from there.
Beside the cache it writes priors_summary.json (masks per image, share of images with empty priors, and for
labeled/val cases the best prior mask's IoU/Dice per class) and priors_preview.png (a few images with their two
prior channels); it warns when more than 10 % of the images got no mask.

Examples:
  python tools/precompute.py --config configs/kvasir/10_semisam.yaml
  python tools/precompute.py --config configs/kvasir/10_supervised.yaml --limit 20          # a CPU trial
  python tools/precompute.py --config configs/kvasir/10_supervised.yaml priors.enabled=true \
      priors.source=embeddings          # the teacher's embeddings as the student's input (train with the same)
  python tools/precompute.py --config configs/acdc/7_supervised.yaml teacher.kind=sam_vit_b \\
      teacher.checkpoint=/models/sam_vit_b_01ec64.pth
  python tools/precompute.py --config C --export runs/kvasir_samaug   # priors as extra image channels
  torchrun --nproc_per_node=4 tools/precompute.py --config C   # cases shared among 4 processes (GPUs)
"""

from semisam.cli import add_common_arguments, config_from_args, run_main, setup_logging, tool_parser


def main() -> None:
    parser = tool_parser(__doc__)
    add_common_arguments(parser)
    parser.add_argument(
        "--splits", default="labeled,unlabeled,val,test", help="comma-separated splits to process (default: all)"
    )
    parser.add_argument("--limit", type=int, help="at most N cases per split (a subset for a quick trial)")
    parser.add_argument(
        "--export",
        metavar="DIR",
        help="also write the augmented inputs for other frameworks: an nnU-Net raw data set with the priors as "
        "channels _0001/_0002 (nnunet data), or PNG stacks {case}_0000/_0001/_0002.png (2D data)",
    )
    parser.add_argument(
        "--embeddings-only", action="store_true", help="skip the prior maps even if priors.enabled=true"
    )
    parser.add_argument(
        "--refine", action="store_true", help="also keep the val and test embeddings (tools/evaluate.py --refine)"
    )
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args()
    setup_logging(args.log_level)
    from semisam import distributed
    from semisam.teacher.precompute import offline_pass, precompute

    cfg = config_from_args(args)
    splits = [s.strip() for s in args.splits.split(",") if s.strip()]
    priors, keep = offline_pass(cfg, args.embeddings_only, args.refine)
    if not priors:  # nothing to compute for a split whose embeddings are not kept
        splits = [s for s in splits if s in keep]
    with distributed.session(cfg.teacher.device):  # under torchrun: each rank computes its share of the cases
        report = precompute(
            cfg,
            splits=splits,
            limit=args.limit,
            progress=not args.no_progress,
            priors=priors,
            keep_embeddings_of=keep,
        )
        if not distributed.is_main():
            return
    print(
        f"teacher cache: {report.root}\n"
        f"computed {len(report.computed)} cases ({report.images} images) in {report.seconds:.1f} s "
        f"({report.seconds_per_image:.3f} s per image); {report.skipped} cases were already cached"
    )
    if report.summary is not None:
        from semisam.teacher.precompute import PREVIEW_NAME, SUMMARY_NAME

        summary = report.summary
        print(
            f"prior quality of the {summary['images']} images computed: "
            f"{summary['masks_per_image']['mean']:.2f} masks per image, {100 * summary['empty_share']:.1f} % empty"
        )
        for name, c in summary["classes"].items():
            print(
                f"  {name}: best-mask IoU {c['best_iou_mean']:.3f} (Dice {c['best_dice_mean']:.3f}, "
                f"IoU >= 0.5 on {100 * c['share_best_iou_ge_0.5']:.0f} % of {c['images']} labeled/val images)"
            )
        print(f"summary: {report.root / SUMMARY_NAME}; preview: {report.root / PREVIEW_NAME}")
    if args.export:
        from semisam.teacher.export import export_augmented

        out = export_augmented(cfg, args.export, splits=splits, limit=args.limit)
        print(f"exported augmented inputs to {out}")


if __name__ == "__main__":
    run_main(main)
