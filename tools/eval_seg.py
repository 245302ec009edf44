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
import time

from .common import add_inference_arguments, say_override


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", help="mobiledense training checkpoint (or --artifact FILE)")
    parser.add_argument("--data-root", help="Cityscapes root (leftImg8bit/, gtFine/); default: the run's")
    parser.add_argument("--split", help="default: the run's val split")
    parser.add_argument("--base-size", type=int, nargs=2, default=None, metavar=("H", "W"),
                        help="resize frames to this before --eval-scale (default: the run's)")
    parser.add_argument("--eval-scale", type=float, help="1.0 full resolution, 0.5 half (default: the run's)")
    parser.add_argument("--no-ema", action="store_true", help="use raw weights even if EMA weights exist")
    parser.add_argument("--mode", nargs="+", default=["whole"], choices=("whole", "slide", "tta", "slide+tta"),
                        help="inference: whole frame (default, what training evaluates), slide (windows of --crop "
                             "every --stride), tta (--scales x flip, probabilities averaged), slide+tta; several "
                             "modes are scored one after the other and tabulated")
    parser.add_argument("--crop", type=int, nargs=2, metavar=("H", "W"),
                        help="slide window (default: the run's training crop)")
    parser.add_argument("--stride", type=int, nargs=2, metavar=("H", "W"),
                        help="slide step (default: 2/3 of the window, MMSegmentation's 341x682 for 512x1024)")
    parser.add_argument("--scales", type=float, nargs="+", default=[0.5, 0.75, 1.0, 1.25, 1.5, 1.75],
                        help="tta resize factors of the eval frame (default: MMSegmentation's)")
    parser.add_argument("--no-flip", action="store_true", help="tta without the mirrored passes")
    parser.add_argument("--save-predictions", action="store_true",
                        help="write labelId PNGs (official submission format; --layout folder runs: class-index "
                             "PNGs named as the masks) to OUTPUT/predictions/")
    parser.add_argument("--output-dir", help="default: eval/ beside the checkpoint's run (runs/seg/eval)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--no-progress", action="store_true")
    add_inference_arguments(parser)


def run(args: argparse.Namespace) -> int:

    from mobiledense.datasets.cityscapes_labels import train_ids_to_label_ids
    from mobiledense.datasets.io import write_image, write_text_atomic
    from mobiledense.heads.inference import inference_model

    from .common import load_deployed, output_folder, select_device
    from .engine.tasks import SegmentationTask, load_trained_model
    from .evaluation.reports import plot_confusion_matrix, plot_per_class_bars
    from .evaluation.seg_inference import inference_mode

    out = output_folder(args.output_dir, args.checkpoint, "eval", "runs/seg/eval")
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if not (args.checkpoint or args.artifact):
        raise ValueError("give --checkpoint FILE (a training checkpoint) or --artifact FILE (mobiledense export)")
    model, spec = load_deployed(args, "seg",
                                lambda: load_trained_model(args.checkpoint, "seg", prefer_ema=not args.no_ema))
    if spec is None:
        raise ValueError("--artifact carries no run spec (it was exported with --model, not --checkpoint): give "
                         "--checkpoint too, for the data and resolution")
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
        if data.layout == "folder":  # class-index PNGs named as the masks
            path = pred_dir / f"{dataset.frames[i].stem}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            write_image(path, pred.numpy().astype("uint8"))
            return
        name = f"{dataset.frames[i].stem}_leftImg8bit.png"
        write_image(pred_dir / name, train_ids_to_label_ids(pred.numpy().astype("uint8")))

    device = select_device(args.device)
    net = inference_model(model, device, args.eager)
    crop = tuple(args.crop) if args.crop else tuple(data.crop)
    stride = tuple(args.stride) if args.stride else (max(1, round(crop[0] * 2 / 3)), max(1, round(crop[1] * 2 / 3)))
    modes: dict[str, dict] = {}
    metrics = None
    for i, mode in enumerate(dict.fromkeys(args.mode)):
        wrapped = inference_mode(net, mode, crop=crop, stride=stride, scales=args.scales, flip=not args.no_flip)
        t0 = time.perf_counter()
        _, m = SegmentationTask(spec).evaluate(wrapped, dataset, device=device, workers=args.workers,
                                               progress=not args.no_progress,
                                               on_prediction=save if args.save_predictions and i == 0 else None)
        modes[mode] = {"mIoU": m.miou, "iIoU": m.iiou if m.iiou_per_class is not None else None,
                       "pixel_acc": m.pixel_acc, "category_mIoU": m.category_miou,
                       "seconds_per_frame": (time.perf_counter() - t0) / max(len(dataset), 1),
                       **({"crop": list(crop), "stride": list(stride)} if "slide" in mode else {}),
                       **({"scales": list(args.scales), "flip": not args.no_flip} if "tta" in mode else {})}
        metrics = metrics or m  # the reports are the first mode's
    assert metrics is not None
    out.mkdir(parents=True, exist_ok=True)
    flat = {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in metrics.as_dict().items()}
    write_text_atomic(json.dumps(
        {"checkpoint": str(args.checkpoint), "artifact": args.artifact,
         "engine": getattr(model, "engine", "pytorch"), "model": spec.model.describe(), "split": dataset.split,
         "frames": len(dataset), "eval_scale": args.eval_scale or spec.data.eval_scale, "mode": args.mode[0], **flat,
         "modes": modes}, indent=2, default=lambda v: None), out / "metrics.json")
    plot_per_class_bars(list(metrics.class_names), list(metrics.iou), out / "per_class_iou.png", "IoU per class")
    plot_confusion_matrix(metrics.confusion, list(metrics.class_names), out / "confusion_matrix.png")
    print(metrics.summary())
    if len(modes) > 1 or args.mode[0] != "whole":
        print("\nmode        mIoU    iIoU    pixel acc   s/frame")
        for mode, r in modes.items():
            iiou = "   n/a" if r["iIoU"] is None else f"{r['iIoU']:.4f}"
            print(f"{mode:<10} {r['mIoU']:.4f}  {iiou}  {r['pixel_acc']:.4f}     {r['seconds_per_frame']:.3f}")
    print(f"\nwrote {out}/metrics.json, per_class_iou.png, confusion_matrix.png"
          + (f", {len(dataset)} label PNGs in {pred_dir}" if args.save_predictions else ""))
    return 0
