"""``mobiledense eval cls``: top-1 / top-5 / per-class accuracy of a trained classifier, with reports.

Everything comes from the checkpoint's run spec (backbone, classes, input size and resize, the
val data); ``--data`` evaluates another ImageFolder root (its class folders must be among the
checkpoint's classes) or CIFAR-10 folder (its test batch), ``--split train`` the run's own
training images. Writes ``metrics.json``, ``per_class_accuracy.png`` and ``confusion_matrix.png``.
"""

from __future__ import annotations

import argparse
import json
import logging
import math

from .common import add_inference_arguments, say_override


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", required=True, help="mobiledense training checkpoint (runs/cls/checkpoints/"
                                                            "best.pt)")
    parser.add_argument("--data", help="ImageFolder root or CIFAR-10 folder to evaluate (default: the run's val data)")
    parser.add_argument("--split", choices=("val", "train"), default="val",
                        help="val (default) or the run's own training images (eval transforms)")
    parser.add_argument("--no-ema", action="store_true", help="use the raw weights even if EMA weights exist")
    parser.add_argument("--batch-size", type=int, help="images per forward (default: max(the run's batch, 32))")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--output-dir", help="default: eval/ beside the checkpoint's run (runs/cls/eval)")
    parser.add_argument("--no-progress", action="store_true")
    add_inference_arguments(parser)


def run(args: argparse.Namespace) -> int:
    from mobiledense.datasets.io import write_text_atomic
    from mobiledense.heads.inference import inference_model

    from .common import output_folder, select_device
    from .engine.tasks import ClassificationTask, load_trained_model
    from .evaluation.reports import plot_confusion_matrix, plot_per_class_bars

    out = output_folder(args.output_dir, args.checkpoint, "eval", "runs/cls/eval")
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if args.batch_size is not None and args.batch_size < 1:
        raise ValueError(f"--batch-size must be >= 1, got {args.batch_size}")
    model, spec = load_trained_model(args.checkpoint, "cls", prefer_ema=not args.no_ema)
    task = ClassificationTask(spec)
    if args.data is not None:
        say_override("--data", args.data, spec.data.val)
    if args.data is not None:
        dataset = task.val_set(args.data)
    elif args.split == "train":
        dataset = task.val_set(spec.data.train) if spec.data.layout == "imagefolder" else task._dataset(
            spec.data.train, "train", train=False)
    else:
        dataset = task.val_set()
    if dataset is None:
        raise ValueError(f"{args.checkpoint}: the run had no val data; pass --data DIR or --split train")
    device = select_device(args.device)
    _, metrics = task.evaluate(inference_model(model, device, args.eager), dataset, device=device,
                               workers=args.workers, progress=not args.no_progress, batch_size=args.batch_size)
    out.mkdir(parents=True, exist_ok=True)
    flat = metrics.as_dict()
    flat = {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in flat.items()}
    write_text_atomic(json.dumps({"checkpoint": str(args.checkpoint), "model": spec.model.describe(),
                                  "data": str(getattr(dataset, "root", "")), **flat}, indent=2), out / "metrics.json")
    names = list(metrics.class_names)
    plot_per_class_bars(names, list(metrics.per_class), out / "per_class_accuracy.png", "top-1 accuracy per class")
    plot_confusion_matrix(metrics.confusion, names, out / "confusion_matrix.png", unit="images")
    print(metrics.summary())
    print(f"\nwrote {out}/metrics.json, per_class_accuracy.png, confusion_matrix.png")
    return 0
