"""``mobiledense predict det``: images or folders -> boxes (JSON Lines) + overlay PNGs.

One image is in memory at a time and results are streamed to
``predictions.jsonl``, so memory stays flat however many images are given.
An image that cannot be read (missing, empty, truncated, corrupt) gets an
``{"file": ..., "error": ...}`` line instead and the run goes on; the exit
status is then 1.
"""

from __future__ import annotations

import argparse
import json
import sys


from .common import add_inference_arguments


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("inputs", nargs="+", help="image files and/or folders (searched recursively)")
    parser.add_argument("--checkpoint", help="mobiledense training checkpoint")
    parser.add_argument("--model", help="detector name, with --weights (raw state_dict)")
    parser.add_argument("--weights", help="local state_dict file for --model")
    parser.add_argument("--num-classes", type=int, default=91, help="with --model (default 91)")
    parser.add_argument("--label-mapping", choices=("contiguous", "category_id"), default="category_id",
                        help=argparse.SUPPRESS)
    parser.add_argument("--no-ema", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--score-thresh", type=float, default=0.3, help="keep detections above (default 0.3)")
    parser.add_argument("--output-dir", help="default: predict/ beside the checkpoint's run (runs/det/predict)")
    parser.add_argument("--no-overlay", action="store_true", help="only write predictions.jsonl")
    add_inference_arguments(parser)


def run(args: argparse.Namespace) -> int:


    from mobiledense.heads.inference import inference_model

    from .common import output_folder, list_images, read_images, select_device
    from mobiledense.datasets.io import replace_atomically, write_image

    from .engine.tasks import DetectionTask
    from .evaluation.overlays import draw_detections
    from .eval_det import load_detector

    out = output_folder(args.output_dir, args.checkpoint, "predict", "runs/det/predict")
    if not 0 <= args.score_thresh <= 1:
        raise ValueError(f"--score-thresh must be in [0, 1], got {args.score_thresh}")
    files = list_images(args.inputs)
    model, spec = load_detector(args)
    mapping = spec.model.label_to_category_id() if spec is not None else None
    names = {i + 1: n for i, n in enumerate(spec.model.class_names)} if spec is not None else {}
    device = select_device(args.device)
    model = inference_model(model, device, args.eager)
    model.score_thresh = min(model.score_thresh, args.score_thresh)
    (out / "overlays").mkdir(parents=True, exist_ok=True)
    counts = {"boxes": 0, "failed": 0}

    def write(f) -> None:  # noqa: ANN001 - predictions.jsonl, streamed, renamed into place at the end
        for path, image, error in read_images(files, "predict"):
            if image is None:
                counts["failed"] += 1
                f.write(json.dumps({"file": str(path), "error": error}) + "\n")
                continue
            det = DetectionTask.predict(model, image, device)
            keep = det["scores"] >= args.score_thresh
            boxes, scores, labels = det["boxes"][keep], det["scores"][keep], det["labels"][keep]
            counts["boxes"] += len(boxes)
            f.write(json.dumps({
                "file": str(path), "height": image.shape[0], "width": image.shape[1],
                "detections": [
                    {"box_xyxy": [round(float(v), 2) for v in b], "score": round(float(s), 5),
                     "label": int(lab), "name": names.get(int(lab)),
                     "category_id": (mapping or {}).get(int(lab), int(lab))}
                    for b, s, lab in zip(boxes, scores, labels)],
            }) + "\n")
            if not args.no_overlay:
                write_image(out / "overlays" / f"{path.stem}.png", draw_detections(image, boxes, labels, scores, names))

    replace_atomically(out / "predictions.jsonl", write)
    n_boxes, failed = counts["boxes"], counts["failed"]
    print(f"{len(files) - failed} images, {n_boxes} detections >= {args.score_thresh}: {out}/predictions.jsonl"
          + ("" if args.no_overlay else f", overlays in {out}/overlays/"))
    if failed:
        print(f"error: {failed} of {len(files)} images could not be read (their \"error\" lines in "
              f"{out}/predictions.jsonl say why)", file=sys.stderr)
    return 1 if failed else 0
