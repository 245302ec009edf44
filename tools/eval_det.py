"""``mobiledense eval det``: COCO mAP of a trained detector, with reports.

With ``--checkpoint`` everything comes from the checkpoint's run spec: the model, its input
size and normalisation, the val images and annotations, the label -> category id mapping;
``--val-images`` / ``--val-ann`` evaluate other data (said in the log), whose categories must
be the checkpoint's (mapped by name when only the ids differ). Writes to ``--output-dir``:
``results.json`` (official COCO results format, original category ids), ``metrics.json``
(12 stats + per-class AP), ``pr_curves.png`` and ``per_class_ap.png``.
"""

from __future__ import annotations

import argparse
import logging
from typing import Any

from .common import add_inference_arguments, say_override

log = logging.getLogger("mobiledense.eval")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    src = parser.add_argument_group("model (a training checkpoint, or --model + --weights)")
    src.add_argument("--checkpoint", help="mobiledense training checkpoint (e.g. runs/det/checkpoints/best.pt)")
    src.add_argument("--model", help="detector name, with --weights (a raw state_dict, ours or torchvision's)")
    src.add_argument("--weights", help="local state_dict file for --model")
    src.add_argument("--num-classes", type=int, default=91, help="with --model (default 91, torchvision COCO)")
    src.add_argument("--label-mapping", choices=("contiguous", "category_id"), default="category_id",
                     help="with --model: how its labels map to category ids (torchvision: category_id)")
    src.add_argument("--no-ema", action="store_true", help="use the raw weights even if EMA weights exist")
    src.add_argument("--results", help="score this COCO results json instead of running a model (any toolkit's: "
                                       "[{image_id, category_id, bbox, score}]), with --ann")
    src.add_argument("--iou-type", choices=("bbox", "segm"), default="bbox",
                     help="with --results: boxes (default) or masks (results with 'segmentation')")
    parser.add_argument("--val-images", help="folder of the images (default: the run's val images)")
    parser.add_argument("--val-ann", "--ann", dest="val_ann",
                        help="COCO-format annotations json (default: the run's val json)")
    parser.add_argument("--backend", choices=("auto", "pycocotools", "faster_coco_eval"), default="auto",
                        help="auto = faster-coco-eval when installed (same numbers, faster)")
    parser.add_argument("--batch-size", type=int, help="images per forward (default: the run's batch size, 8 with "
                                                       "--model)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--output-dir", help="default: eval/ beside the checkpoint's run (runs/det/eval)")
    parser.add_argument("--overlays", type=int, default=8, metavar="N",
                        help="draw the first N images, ground truth beside detections, to OUTPUT/overlays/ "
                             "(default 8; 0: none)")
    parser.add_argument("--overlay-score", type=float, default=0.3,
                        help="detections drawn in the overlays score at least this (default 0.3)")
    parser.add_argument("--no-progress", action="store_true")
    add_inference_arguments(parser)


def load_detector(args: argparse.Namespace) -> tuple[Any, Any]:
    """The model and its run spec (None for ``--model`` + ``--weights``); ``--artifact``: the exported model."""
    from .common import load_deployed

    return load_deployed(args, "det", lambda: _load_pytorch(args))


def _load_pytorch(args: argparse.Namespace) -> tuple[Any, Any]:
    from .engine.tasks import load_trained_model, summarize_load_error

    if args.checkpoint:
        return load_trained_model(args.checkpoint, "det", prefer_ema=not args.no_ema)
    if not (args.model and args.weights):
        raise ValueError("give --checkpoint, --model NAME --weights FILE, or --artifact FILE (mobiledense export)")
    from mobiledense.heads import create_model

    try:
        model = create_model(args.model, task="det", num_classes=args.num_classes, weights=args.weights).eval()
    except RuntimeError as e:  # load_state_dict: another architecture or another number of classes
        raise ValueError(f"--weights {args.weights} do not fit --model {args.model} with --num-classes "
                         f"{args.num_classes}: {summarize_load_error(e)}. Pass the detector name and the "
                         "number of classes (incl. background) the weights were trained with") from e
    return model, None


#: The PNGs of an evaluation with ground truth.
REPORTS = ("pr_curves.png", "per_class_pr.png", "per_class_ap.png", "size_breakdown.png")


def write_reports(result: Any, out: Any, ann_file: Any) -> bool:
    """The report PNGs (:data:`REPORTS`) of ``result`` into ``out``; False (and a warning) without ground truth."""
    from .evaluation.reports import plot_per_class_bars, plot_per_class_pr, plot_pr_curves, plot_size_breakdown

    named = [c for c in result.per_class if c.num_gt > 0]
    if not named:
        log.warning("%s has no ground-truth objects: COCO metrics are undefined and no plots are drawn", ann_file)
        return False
    plot_pr_curves(result, out / "pr_curves.png")
    plot_per_class_pr(result, out / "per_class_pr.png")
    plot_per_class_bars([c.name for c in named], [c.ap for c in named], out / "per_class_ap.png",
                        "AP@[.5:.95] per class")
    plot_size_breakdown(result, out / "size_breakdown.png")
    return True


def _score_results_file(args: argparse.Namespace, out: Any) -> int:
    """``--results FILE --ann ANN``: the COCO protocol on a results file, no model."""
    from .evaluation.coco import evaluate_coco

    if args.checkpoint or args.model:
        raise ValueError("--results scores a results file: give it with --ann, without --checkpoint/--model")
    if not args.val_ann:
        raise ValueError("--results needs --ann ANN.json (the ground truth the results refer to)")
    result = evaluate_coco(args.val_ann, args.results, args.iou_type, backend=args.backend)
    out.mkdir(parents=True, exist_ok=True)
    result.to_json(out / "metrics.json")
    named = write_reports(result, out, args.val_ann)
    print(result.summary(per_class=True))
    print(f"\nwrote {out}/metrics.json" + (f", {', '.join(REPORTS)}" if named else "")
          + f" ({result.backend}, {result.seconds:.2f} s)")
    return 0


def run(args: argparse.Namespace) -> int:
    from mobiledense.datasets import CocoDetection
    from mobiledense.heads.inference import inference_model

    from .common import output_folder, select_device
    from .engine.tasks import DetectionTask, match_categories
    from .evaluation import evaluate_detector
    from .evaluation.coco import write_coco_results
    from .evaluation.overlays import detection_panels
    from mobiledense.datasets.io import write_image

    out = output_folder(args.output_dir, args.checkpoint, "eval", "runs/det/eval")
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if args.results:
        return _score_results_file(args, out)
    model, spec = load_detector(args)
    if spec is not None:
        say_override("--val-images", args.val_images, spec.data.val_images)
        say_override("--val-ann", args.val_ann, spec.data.val_ann)
        dataset = DetectionTask(spec).val_set(args.val_images, args.val_ann)
        if dataset is None:
            raise ValueError(f"{args.checkpoint}: the run had no val set; pass --val-images and --val-ann")
        if len(dataset) == 0:
            raise ValueError(f"{dataset.ann_file} lists no images: nothing to evaluate")
        mapping = match_categories(spec.model, dataset, dataset.ann_file)
    else:
        if not (args.val_ann and args.val_images):
            raise ValueError("--model/--weights need --val-images and --val-ann (a checkpoint knows its own)")
        dataset = CocoDetection(args.val_images, args.val_ann, label_mapping=args.label_mapping)
        mapping = None
    if len(dataset) == 0:
        raise ValueError(f"{dataset.ann_file} lists no images: nothing to evaluate")
    device = select_device(args.device)
    batch_size = args.batch_size if args.batch_size is not None else (spec.recipe.batch_size if spec else 8)
    if batch_size < 1:
        raise ValueError(f"--batch-size must be >= 1, got {batch_size}")
    if args.overlays < 0 or not 0 <= args.overlay_score <= 1:
        raise ValueError(f"--overlays must be >= 0 (got {args.overlays}) and --overlay-score in [0, 1] "
                         f"(got {args.overlay_score})")
    result, detections = evaluate_detector(
        inference_model(model, device, args.eager), dataset, batch_size=batch_size, workers=args.workers,
        device=device, progress=not args.no_progress, label_to_category_id=mapping, backend=args.backend)
    out.mkdir(parents=True, exist_ok=True)
    write_coco_results(detections, out / "results.json")
    result.to_json(out / "metrics.json")
    named = write_reports(result, out, dataset.ann_file)
    drawn = 0
    if args.overlays:
        (out / "overlays").mkdir(exist_ok=True)
        for path, panel in detection_panels(dataset, detections, args.overlays, args.overlay_score):
            write_image(out / "overlays" / f"{path.stem}.png", panel)
            drawn += 1
    print(result.summary(per_class=True))
    print(f"\nwrote {out}/results.json, metrics.json" + (f", {', '.join(REPORTS)}" if named else "")
          + (f", {drawn} overlays/ (ground truth | detections >= {args.overlay_score:g})" if drawn else "")
          + f" ({result.backend}, {result.seconds:.2f} s)")
    return 0
