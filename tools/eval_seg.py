"""``mobiledense eval seg``: Cityscapes mIoU of a trained segmenter, with reports.

Everything comes from the checkpoint's run spec (data root, val split, base size, eval
scale): with no other flag the numbers are the training run's own final evaluation. Flags
given evaluate something else and say so. Numbers are those of cityscapesScripts'
``evalPixelLevelSemanticLabeling`` (tested). Writes ``metrics.json``, ``per_class_iou.png``,
``confusion_matrix.png`` and, with ``--save-predictions``, labelId PNGs in the official
submission format.
"""

from __future__ import annotations

import argparse
import json
import logging
import math

from .common import add_inference_arguments, say_override


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", required=True, help="mobiledense training checkpoint")
    parser.add_argument("--data-root", help="Cityscapes root (leftImg8bit/, gtFine/); default: the run's")
    parser.add_argument("--split", help="default: the run's val split")
    parser.add_argument("--base-size", type=int, nargs=2, default=None, metavar=("H", "W"),
                        help="resize frames to this before --eval-scale (default: the run's)")
    parser.add_argument("--eval-scale", type=float, help="1.0 full resolution, 0.5 half (default: the run's)")
    parser.add_argument("--no-ema", action="store_true", help="use raw weights even if EMA weights exist")
    parser.add_argument("--save-predictions", action="store_true",
                        help="write labelId PNGs (official submission format) to OUTPUT/predictions/")
    parser.add_argument("--output-dir", help="default: eval/ beside the checkpoint's run (runs/seg/eval)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--no-progress", action="store_true")
    add_inference_arguments(parser)


def run(args: argparse.Namespace) -> int:

    from mobiledense.datasets.cityscapes_labels import train_ids_to_label_ids
    from mobiledense.datasets.io import write_image, write_text_atomic
    from mobiledense.heads.inference import inference_model

    from .common import output_folder, select_device
    from .engine.tasks import SegmentationTask, load_trained_model
    from .evaluation.reports import plot_confusion_matrix, plot_per_class_bars

    out = output_folder(args.output_dir, args.checkpoint, "eval", "runs/seg/eval")
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    model, spec = load_trained_model(args.checkpoint, "seg", prefer_ema=not args.no_ema)
    data = spec.data
    for flag, value, stored in (("--data-root", args.data_root, data.root), ("--split", args.split, data.val_split),
                                ("--base-size", tuple(args.base_size) if args.base_size else None, data.base_size),
                                ("--eval-scale", args.eval_scale, data.eval_scale)):
        say_override(flag, value, stored)
    dataset = SegmentationTask(spec).val_set(args.data_root, args.split, args.base_size, args.eval_scale)
    if dataset is None:
        raise ValueError(f"{args.checkpoint}: the run had no val split; pass --split (and --data-root)")
    if spec.model.class_names and tuple(dataset.class_names) != spec.model.class_names:
        raise ValueError(f"{dataset.root}: its classes {list(dataset.class_names)[:5]}... differ from the "
                         f"checkpoint's {list(spec.model.class_names)[:5]}...")
    pred_dir = out / "predictions"
    if args.save_predictions:
        pred_dir.mkdir(parents=True, exist_ok=True)

    def save(i: int, pred) -> None:  # noqa: ANN001
        name = f"{dataset.frames[i].stem}_leftImg8bit.png"
        write_image(pred_dir / name, train_ids_to_label_ids(pred.numpy().astype("uint8")))

    device = select_device(args.device)
    _, metrics = SegmentationTask(spec).evaluate(inference_model(model, device, args.eager), dataset,
                                                 device=device, workers=args.workers, progress=not args.no_progress,
                                                 on_prediction=save if args.save_predictions else None)
    out.mkdir(parents=True, exist_ok=True)
    flat = {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in metrics.as_dict().items()}
    write_text_atomic(json.dumps(
        {"checkpoint": str(args.checkpoint), "model": spec.model.describe(), "split": dataset.split,
         "frames": len(dataset), "eval_scale": args.eval_scale or spec.data.eval_scale, **flat}, indent=2),
        out / "metrics.json")
    plot_per_class_bars(list(metrics.class_names), list(metrics.iou), out / "per_class_iou.png", "IoU per class")
    plot_confusion_matrix(metrics.confusion, list(metrics.class_names), out / "confusion_matrix.png")
    print(metrics.summary())
    print(f"\nwrote {out}/metrics.json, per_class_iou.png, confusion_matrix.png"
          + (f", {len(dataset)} label PNGs in {pred_dir}" if args.save_predictions else ""))
    return 0
