"""``mobiledense compare``: every backbone x {SSDLite, LR-ASPP, smp decoders}, one recipe, one report.

Examples::

    mobiledense compare --backbones mobilenet_v3_small shufflenet_v2_x0_5   # synthetic data, CPU minutes
    mobiledense compare --seg-heads lraspp deeplabv3plus fpn --output-dir runs/compare_all
    mobiledense compare --frozen-backbone --weights-backbone weights/ --output-dir runs/probe
    mobiledense compare --report-only --output-dir runs/compare          # redraw tables and plots

Interrupted? Run the same command again: stored cells are skipped and the cell that
was cut short resumes from its last epoch checkpoint.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

log = logging.getLogger("mobiledense.compare")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from .comparison import DataSpec, Measurement, Recipe

    r, d, m = Recipe(), DataSpec(), Measurement()
    cells = parser.add_argument_group("cells")
    cells.add_argument("--tasks", nargs="+", choices=("det", "seg"), default=["det", "seg"])
    cells.add_argument("--backbones", nargs="+", metavar="NAME", help="registered backbones (default: all)")
    cells.add_argument("--seg-heads", nargs="+", default=["lraspp", "deeplabv3plus"], metavar="HEAD",
                       help="lraspp and/or smp architectures (deeplabv3plus, fpn, unet ...); default: "
                            "lraspp deeplabv3plus")
    recipe = parser.add_argument_group("recipe (identical for every cell; stored in OUTPUT_DIR/compare.json)")
    recipe.add_argument("--epochs", type=int, default=r.epochs)
    recipe.add_argument("--max-steps-per-epoch", type=int, default=r.max_steps_per_epoch, help="0 = whole epochs")
    recipe.add_argument("--batch-size", type=int, default=r.batch_size)
    recipe.add_argument("--det-lr", type=float, default=r.det_lr, help="AdamW learning rate, detection")
    recipe.add_argument("--seg-lr", type=float, default=r.seg_lr, help="AdamW learning rate, segmentation")
    recipe.add_argument("--size", type=int, default=r.det_size, help="detection input side")
    recipe.add_argument("--seg-size", type=int, nargs=2, default=list(r.seg_size), metavar=("H", "W"),
                        help="segmentation frame/crop size")
    recipe.add_argument("--seed", type=int, default=r.seed)
    recipe.add_argument("--frozen-backbone", action="store_true",
                        help="train heads only: backbone requires_grad=False, its BN in eval mode (probe)")
    recipe.add_argument("--weights-backbone", metavar="DIR",
                        help="folder of local backbone weights <backbone>.pth/.pt: ImageNet files or `train cls` "
                             "checkpoints (their recorded top-1 becomes the upstream column); missing: random init")
    data = parser.add_argument_group("data (default: synthetic sets written once in OUTPUT_DIR/data)")
    for split in ("train", "val"):
        data.add_argument(f"--det-{split}-images", help=f"folder of the {split} images (COCO file_name root)")
        data.add_argument(f"--det-{split}-ann", help=f"COCO-format {split} annotations json")
    data.add_argument("--seg-root", help="Cityscapes-layout root (leftImg8bit/, gtFine/)")
    data.add_argument("--seg-train-split", default=d.seg_train_split)
    data.add_argument("--seg-val-split", default=d.seg_val_split,
                      help="split scored for mIoU (needs leftImg8bit images)")
    data.add_argument("--synthetic-images", type=int, default=d.synthetic_images,
                      help="synthetic detection images (20%% val)")
    data.add_argument("--synthetic-frames", type=int, default=d.synthetic_frames,
                      help="synthetic segmentation train frames (val: a quarter)")
    run = parser.add_argument_group("run")
    run.add_argument("--output-dir", default="runs/compare")
    run.add_argument("--latency-runs", type=int, default=m.latency_runs)
    run.add_argument("--latency-warmup", type=int, default=m.latency_warmup)
    run.add_argument("--latency-threads", type=int, default=m.latency_threads, help="torch threads while timing")
    run.add_argument("--threads", type=int, help="torch threads for training/evaluation (default: torch's)")
    run.add_argument("--workers", type=int, default=0,
                     help="DataLoader workers for training (0: main process; enough for the synthetic sets)")
    run.add_argument("--jobs", type=int, default=1,
                     help="cells trained at once, each in its own process (threads split between them, local "
                          "GPUs handed out round-robin); default 1")
    run.add_argument("--cell", nargs="+", metavar="KEY",
                     help="run only these cells (e.g. det__ssdlite__mobilenet_v2): one job per cell on a cluster")
    run.add_argument("--list-cells", action="store_true", help="print the cell keys of the matrix and exit")
    run.add_argument("--retry-failed", action="store_true", help="run cells stored as failed again")
    run.add_argument("--keep-checkpoints", action="store_true", help="keep each cell's checkpoints when done")
    run.add_argument("--report-only", action="store_true", help="rewrite the report from stored cells")
    run.add_argument("--no-progress", action="store_true")


def _path(p: str | None) -> str | None:
    return str(Path(p).resolve()) if p else None


def run(args: argparse.Namespace) -> int:
    import torch

    from . import comparison as cmp
    from .engine import configure_logging

    configure_logging()
    out = Path(args.output_dir)
    if args.report_only:
        lock_file = out / "compare.json"
        if not lock_file.is_file():
            raise FileNotFoundError(f"{lock_file} not found: --report-only needs a folder a comparison wrote")
        cmp.write_report(cmp.ResultStore(out / "cells").all(), out, json.loads(lock_file.read_text()))
        print((out / "results.md").read_text())
        return 0
    cells = cmp.make_cells(args.tasks, args.backbones, args.seg_heads)
    if args.list_cells:
        print("\n".join(c.key for c in cells))
        return 0
    if args.cell:
        keys = {c.key: c for c in cells}
        unknown = [k for k in args.cell if k not in keys]
        if unknown:
            raise ValueError(f"--cell {' '.join(unknown)}: not in the matrix; its cells: {', '.join(keys)}")
        cells = [keys[k] for k in args.cell]
    recipe = cmp.Recipe(
        epochs=args.epochs, max_steps_per_epoch=args.max_steps_per_epoch, batch_size=args.batch_size,
        det_lr=args.det_lr, seg_lr=args.seg_lr, det_size=args.size, seg_size=tuple(args.seg_size),
        frozen_backbone=args.frozen_backbone, weights_backbone=_path(args.weights_backbone), seed=args.seed)
    recipe.train_config("det")  # validates the numbers, naming the bad field
    data = cmp.DataSpec(
        det_train_images=_path(args.det_train_images), det_train_ann=_path(args.det_train_ann),
        det_val_images=_path(args.det_val_images), det_val_ann=_path(args.det_val_ann),
        seg_root=_path(args.seg_root), seg_train_split=args.seg_train_split, seg_val_split=args.seg_val_split,
        synthetic_images=args.synthetic_images, synthetic_frames=args.synthetic_frames)
    measurement = cmp.Measurement(args.latency_runs, args.latency_warmup, args.latency_threads)
    cmp.lock_recipe(out, recipe, data)  # a folder holds one recipe: refuse mixing before any work
    if args.threads:
        torch.set_num_threads(args.threads)
    log.info("%d cells -> %s", len(cells), out)
    if args.jobs < 1:
        raise ValueError(f"--jobs must be >= 1, got {args.jobs}")
    summary = cmp.run_comparison(cells, recipe, data, out, measurement, workers=args.workers, jobs=args.jobs,
                                 retry_failed=args.retry_failed, keep_checkpoints=args.keep_checkpoints,
                                 progress=not args.no_progress)
    print((out / "results.md").read_text())
    log.info("ran %d, skipped %d (stored), failed %d; report: %s", len(summary["ran"]), len(summary["skipped"]),
             len(summary["failed"]), out / "results.md")
    return 0


__all__ = ["add_arguments", "run"]
