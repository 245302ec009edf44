"""``mobiledense eval det``: COCO mAP of a trained detector, with reports.

Writes to ``--output-dir``: ``results.json`` (official COCO results format,
original category ids), ``metrics.json`` (12 stats + per-class AP),
``pr_curves.png`` and ``per_class_ap.png``.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from .common import add_inference_arguments

log = logging.getLogger("mobiledense.eval")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    src = parser.add_argument_group("model (a training checkpoint, or --model + --weights)")
    src.add_argument("--checkpoint", help="mobiledense training checkpoint (e.g. runs/det/checkpoints/last.pt)")
    src.add_argument("--model", help="detector name, with --weights (a raw state_dict, ours or torchvision's)")
    src.add_argument("--weights", help="local state_dict file for --model")
    src.add_argument("--num-classes", type=int, default=91, help="with --model (default 91, torchvision COCO)")
    src.add_argument("--label-mapping", choices=("contiguous", "category_id"), default="category_id",
                     help="with --model: how its labels map to category ids (torchvision: category_id)")
    src.add_argument("--no-ema", action="store_true", help="use the raw weights even if EMA weights exist")
    parser.add_argument("--val-images", required=True, help="folder of the images")
    parser.add_argument("--val-ann", required=True, help="COCO-format annotations json")
    parser.add_argument("--backend", choices=("auto", "pycocotools", "faster_coco_eval"), default="auto",
                        help="auto = faster-coco-eval when installed (same numbers, faster)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--output-dir", default="runs/det/eval")
    parser.add_argument("--no-progress", action="store_true")
    add_inference_arguments(parser)


def load_detector(args: argparse.Namespace) -> tuple[object, dict[int, int] | None]:
    """The model and its label -> category id mapping (None: the dataset's own)."""
    from .common import load_trained_model

    if args.checkpoint:
        model, info = load_trained_model(args.checkpoint, "det", prefer_ema=not args.no_ema)
        return model, {int(k): int(v) for k, v in info["label_to_category_id"].items()}
    if not (args.model and args.weights):
        raise SystemExit("error: give --checkpoint, or --model NAME --weights FILE")
    from mobiledense.heads import create_detector

    from .common import summarize_load_error

    try:
        model = create_detector(args.model, num_classes=args.num_classes, weights=args.weights).eval()
    except RuntimeError as e:  # load_state_dict: another architecture or another number of classes
        raise ValueError(f"--weights {args.weights} do not fit --model {args.model} with --num-classes "
                         f"{args.num_classes}: {summarize_load_error(e)}. Pass the detector name and the "
                         "number of classes (incl. background) the weights were trained with") from e
    return model, None


def run(args: argparse.Namespace) -> int:
    from mobiledense.datasets import CocoDetection

    from .common import inference_model, select_device
    from .evaluation import evaluate_detector
    from .evaluation.reports import plot_per_class_bars, plot_pr_curves

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    model, mapping = load_detector(args)
    dataset = CocoDetection(args.val_images, args.val_ann,
                            label_mapping=args.label_mapping if mapping is None else "contiguous")
    if len(dataset) == 0:
        raise ValueError(f"{args.val_ann} lists no images: nothing to evaluate")
    if mapping is not None:
        unknown = sorted(set(mapping.values()) - set(dataset.coco.cats))
        if unknown:
            raise SystemExit(f"error: the model predicts category ids {unknown} that {args.val_ann} does not define")
    device = select_device(args.device)
    result, detections = evaluate_detector(
        inference_model(model, device, args.eager), dataset, batch_size=args.batch_size, workers=args.workers,
        device=device, progress=not args.no_progress, label_to_category_id=mapping, backend=args.backend)
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    from .evaluation.coco import write_coco_results

    write_coco_results(detections, out / "results.json")
    result.to_json(out / "metrics.json")
    named = [c for c in result.per_class if c.num_gt > 0]
    if named:
        plot_pr_curves(result, out / "pr_curves.png")
        plot_per_class_bars([c.name for c in named], [c.ap for c in named], out / "per_class_ap.png",
                            "AP@[.5:.95] per class")
    else:
        log.warning("%s has no ground-truth boxes: COCO metrics are undefined and no plots are drawn",
                    args.val_ann)
    print(result.summary(per_class=True))
    print(f"\nwrote {out}/results.json, metrics.json" + (", pr_curves.png, per_class_ap.png" if named else "")
          + f" ({result.backend}, {result.seconds:.2f} s)")
    return 0
