"""``mobiledense eval seg``: Cityscapes mIoU of a trained segmenter, with reports.

Numbers are those of cityscapesScripts' ``evalPixelLevelSemanticLabeling``
(tested). Writes ``metrics.json``, ``per_class_iou.png``, ``confusion_matrix.png``
and, with ``--save-predictions``, labelId PNGs in the official submission format.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

from .common import add_inference_arguments


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", required=True, help="mobiledense training checkpoint")
    parser.add_argument("--data-root", required=True, help="Cityscapes root (leftImg8bit/, gtFine/)")
    parser.add_argument("--split", default="val")
    parser.add_argument("--base-size", type=int, nargs=2, default=None, metavar=("H", "W"),
                        help="resize frames to this before --eval-scale (default: their own size)")
    parser.add_argument("--eval-scale", type=float, default=1.0, help="1.0 full resolution, 0.5 half")
    parser.add_argument("--no-ema", action="store_true", help="use raw weights even if EMA weights exist")
    parser.add_argument("--save-predictions", action="store_true",
                        help="write labelId PNGs (official submission format) to OUTPUT/predictions/")
    parser.add_argument("--output-dir", default="runs/seg/eval")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--no-progress", action="store_true")
    add_inference_arguments(parser)


def run(args: argparse.Namespace) -> int:
    import cv2

    from mobiledense.datasets.cityscapes import CityscapesSegmentation
    from mobiledense.datasets.cityscapes_labels import train_ids_to_label_ids
    from mobiledense.datasets.seg_transforms import build_seg_transforms

    from .common import inference_model, load_trained_model, select_device
    from .evaluation import evaluate_segmenter
    from .evaluation.reports import plot_confusion_matrix, plot_per_class_bars

    model, info = load_trained_model(args.checkpoint, "seg", prefer_ema=not args.no_ema)
    tf = build_seg_transforms(False, base_size=tuple(args.base_size) if args.base_size else None,
                              eval_scale=args.eval_scale)
    dataset = CityscapesSegmentation(args.data_root, args.split, transforms=tf)
    out = Path(args.output_dir)
    pred_dir = out / "predictions"
    if args.save_predictions:
        pred_dir.mkdir(parents=True, exist_ok=True)

    def save(i: int, pred) -> None:  # noqa: ANN001
        name = f"{dataset.frames[i].stem}_leftImg8bit.png"
        cv2.imwrite(str(pred_dir / name), train_ids_to_label_ids(pred.numpy().astype("uint8")))

    device = select_device(args.device)
    metrics = evaluate_segmenter(inference_model(model, device, args.eager), dataset, device=device,
                                 workers=args.workers, progress=not args.no_progress,
                                 on_prediction=save if args.save_predictions else None)
    out.mkdir(parents=True, exist_ok=True)
    flat = {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in metrics.as_dict().items()}
    (out / "metrics.json").write_text(json.dumps(
        {"checkpoint": str(args.checkpoint), "model": info["model"], "split": args.split,
         "frames": len(dataset), "eval_scale": args.eval_scale, **flat}, indent=2))
    plot_per_class_bars(list(metrics.class_names), list(metrics.iou), out / "per_class_iou.png", "IoU per class")
    plot_confusion_matrix(metrics.confusion, list(metrics.class_names), out / "confusion_matrix.png")
    print(metrics.summary())
    print(f"\nwrote {out}/metrics.json, per_class_iou.png, confusion_matrix.png"
          + (f", {len(dataset)} label PNGs in {pred_dir}" if args.save_predictions else ""))
    return 0
