#!/usr/bin/env python
"""Teacher throughput: images/s for embedding, everything mode and decoding K perturbed boxes per image, for the
batched engine and for a naive SamPredictor loop (one image and one prompt at a time, fp32), with their ratio.

Images: the first N test images of the configured data set (--config), or the generated phantom without one.
Prints a Markdown table (paste it into docs/BENCHMARKS.md with the command, machine and commit) and writes JSON.

Examples:
  python tools/benchmark_teacher.py --kinds litemedsam --images 4
  python tools/benchmark_teacher.py --config configs/kvasir/10_supervised.yaml --kinds litemedsam \\
      --precisions fp32,bf16 --images 32 --boxes 10          # on a GPU
  OMP_NUM_THREADS=1 taskset -c 0 python tools/benchmark_teacher.py --stages --images 10 --split val \\
      --config configs/kvasir/10_semisam.yaml --config configs/benchmark/cpu_kvasir.yaml
      # the offline pass (tools/precompute.py) in seconds per image by stage: read, encoder, everything, priors, save

With --stages, the images are the first N of --split (default val) at their original size, one at a time, as the
precompute tool sees them; the table gives seconds per image of each stage (see
semisam.teacher.benchmark.precompute_stage_times).
"""

import json
from pathlib import Path

from semisam.cli import OVERRIDES_HELP, run_main, setup_logging, tool_parser

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = tool_parser(__doc__)
    parser.add_argument("--config", action="append", help="run config whose data set provides the images")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help=OVERRIDES_HELP)
    parser.add_argument("--kinds", default="litemedsam", help="teacher kinds, comma-separated (+ 'tiny' for tests)")
    parser.add_argument("--precisions", default="auto", help="comma-separated: auto, fp32, fp16, bf16")
    parser.add_argument("--images", type=int, default=4, help="images to time (default 4)")
    parser.add_argument("--boxes", type=int, default=10, help="perturbed boxes per image for decoding (default 10)")
    parser.add_argument("--no-everything", action="store_true", help="skip the everything-mode timing")
    parser.add_argument("--stages", action="store_true", help="time the offline pass by stage instead (2D data)")
    parser.add_argument("--split", default="val", help="with --stages: the split whose first N cases are timed")
    parser.add_argument(
        "--agreement",
        action="store_true",
        help="instead: each --precisions against the first on the first N --split images with their label boxes "
        "(mask IoU, GT-box Dice per class, embedding seconds per image and relative error)",
    )
    parser.add_argument("--label", default="", help="with --stages: a name for the row (e.g. a commit)")
    parser.add_argument("--output", default="runs/benchmark_teacher.json", help="JSON results file")
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    args = parser.parse_args()
    setup_logging(args.log_level)
    import platform

    import torch

    from semisam.config.loader import load_config
    from semisam.data.cases import CaseLoader
    from semisam.data.readers import build_reader
    from semisam.data.splits import resolve_split
    from semisam.teacher.benchmark import benchmark_teacher, format_rows
    from semisam.teacher.engine import build_teacher, cpu_has_native_bf16
    from semisam.teacher.models import build_tiny_sam, tiny_spec
    from semisam.utils import atomic_write_text

    if args.config:
        cfg = load_config(args.config, args.overrides)
    else:
        from semisam.data.phantom import make_phantom

        cfg = load_config(ROOT / "configs/demo.yaml", ["data.root=runs/benchmark_phantom", *args.overrides])
        make_phantom(
            Path(cfg.data.root),
            num_cases=max(40, args.images),
            size=256,
            seed=0,
            num_val=4,
            num_test=max(4, args.images),
        )
    reader = build_reader(cfg.data)
    split = resolve_split(cfg.data, reader.case_ids())
    loader = CaseLoader(reader, cfg.data)
    if args.stages:
        import tempfile

        from semisam.teacher.benchmark import format_stage_rows, precompute_stage_times

        teacher = build_teacher(cfg.teacher)
        case_ids = list(getattr(split, args.split))[: args.images]
        with tempfile.TemporaryDirectory() as tmp:
            row = precompute_stage_times(teacher, loader, case_ids, cfg, tmp)
        row.update(label=args.label or cfg.data.name, data=cfg.data.name, split=args.split)
        print(
            f"\n{row['images']} {args.split} images of {cfg.data.name} (after 1 warm-up), CPU seconds per image, "
            f"{platform.processor() or platform.machine()}, torch {torch.__version__}, "
            f"{torch.get_num_threads()} threads\n\n{format_stage_rows([row])}"
        )
        atomic_write_text(Path(args.output), json.dumps({"stages": row, "data": cfg.data.name}, indent=2))
        return
    if args.agreement:
        from semisam.teacher.benchmark import precision_agreement
        from semisam.teacher.grid_analysis import label_boxes

        images, labels = [], []
        for case_id in getattr(split, args.split):
            image = loader.image(case_id)
            slices = [-1] if image.ndim == 3 else range(image.shape[1])
            for k in slices:
                im, lab = loader.image_slice(case_id, k), loader.label_slice(case_id, k)
                if (lab > 0).any():
                    images.append(im)
                    labels.append(lab)
            if len(images) >= args.images:
                break
        images, labels = images[: args.images], labels[: args.images]
        boxes = [label_boxes(lab, range(1, cfg.data.num_classes)) for lab in labels]
        teachers = {}
        for precision in args.precisions.split(","):
            tcfg = cfg.teacher
            tcfg.precision = precision
            teachers[precision] = build_teacher(tcfg)
        rows = precision_agreement(teachers, images, labels, boxes)
        print(
            f"\n{len(images)} {args.split} images of {cfg.data.name} with label boxes, "
            f"{platform.processor() or platform.machine()}, torch {torch.__version__}, {torch.get_num_threads()} "
            f"threads, native CPU bf16: {cpu_has_native_bf16()}\n"
        )
        print(json.dumps(rows, indent=2))
        atomic_write_text(Path(args.output), json.dumps({"agreement": rows, "data": cfg.data.name}, indent=2))
        return
    images = []
    for case_id in split.test or split.val or split.labeled:
        image = loader.image(case_id)
        images += [image] if image.ndim == 3 else [image[:, k] for k in range(image.shape[1])]
        if len(images) >= args.images:
            break
    images = images[: args.images]
    rows = []
    for kind in args.kinds.split(","):
        for precision in args.precisions.split(","):
            tcfg = cfg.teacher
            tcfg.precision = precision
            if kind == "tiny":
                teacher = build_teacher(tcfg, sam=build_tiny_sam(), spec=tiny_spec())
            else:
                tcfg.kind = kind
                teacher = build_teacher(tcfg)
            row = benchmark_teacher(teacher, images, cfg, args.boxes, everything=not args.no_everything)
            row.update(
                teacher=kind,
                precision=str(teacher.dtype or "fp32").replace("torch.", ""),
                device=torch.cuda.get_device_name(0) if teacher.device.type == "cuda" else "cpu",
            )
            rows.append(row)
            print(format_rows(rows[-1:]).splitlines()[-1], flush=True)
    table = format_rows(rows)
    print(
        f"\n{len(images)} images of {cfg.data.name}, {args.boxes} boxes per image, "
        f"{platform.processor() or platform.machine()}, "
        f"torch {torch.__version__}, {torch.get_num_threads()} threads\n\n{table}"
    )
    atomic_write_text(Path(args.output), json.dumps({"rows": rows, "data": cfg.data.name}, indent=2))


if __name__ == "__main__":
    run_main(main)
