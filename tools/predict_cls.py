"""``mobiledense predict cls``: images or folders -> top-k classes (JSON Lines) + labelled PNG tiles.

Each image goes through the run's evaluation pipeline (shorter side resized, centre crop).
``predictions.jsonl`` holds one line per image (``file``, ``top``: the ``--top-k`` classes with
their probabilities); ``tiles/<image>.png`` shows the image above its top classes. An image
that cannot be read gets an ``error`` line and the exit status is then 1.
"""

from __future__ import annotations

import argparse
import json
import sys

from .common import add_inference_arguments


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("inputs", nargs="+", help="image files and/or folders (searched recursively)")
    parser.add_argument("--checkpoint", required=True, help="mobiledense training checkpoint")
    parser.add_argument("--top-k", type=int, default=5, help="classes listed per image (default 5)")
    parser.add_argument("--output-dir", help="default: predict/ beside the checkpoint's run (runs/cls/predict)")
    parser.add_argument("--no-tiles", action="store_true", help="only write predictions.jsonl")
    add_inference_arguments(parser)


def run(args: argparse.Namespace) -> int:
    import cv2
    import numpy as np

    from mobiledense.datasets.io import replace_atomically, write_image
    from mobiledense.heads.inference import inference_model

    from .common import list_images, output_folder, read_images, select_device
    from .engine.tasks import ClassificationTask, load_trained_model
    from .evaluation.overlays import classification_tile

    out = output_folder(args.output_dir, args.checkpoint, "predict", "runs/cls/predict")
    if args.top_k < 1:
        raise ValueError(f"--top-k must be >= 1, got {args.top_k}")
    files = list_images(args.inputs)
    model, spec = load_trained_model(args.checkpoint, "cls")
    names = spec.model.class_names or tuple(str(i) for i in range(spec.model.num_classes))
    device = select_device(args.device)
    model = inference_model(model, device, args.eager)
    task = ClassificationTask(spec)
    if not args.no_tiles:
        (out / "tiles").mkdir(parents=True, exist_ok=True)
    failed = [0]

    def write(f) -> None:  # noqa: ANN001
        for path, image, error in read_images(files, "classify"):
            if image is None:
                failed[0] += 1
                f.write(json.dumps({"file": str(path), "error": error}) + "\n")
                continue
            probs = task.predict(model, image, device)
            order = np.argsort(-probs)[: args.top_k]
            f.write(json.dumps({"file": str(path), "top": [{"class": names[i], "index": int(i),
                                                            "prob": round(float(probs[i]), 5)} for i in order]}) + "\n")
            if not args.no_tiles:
                tile = classification_tile(image, probs, names, top=min(3, args.top_k), min_size=256)
                write_image(out / "tiles" / f"{path.stem}.png", cv2.cvtColor(tile, cv2.COLOR_RGB2BGR))

    out.mkdir(parents=True, exist_ok=True)
    replace_atomically(out / "predictions.jsonl", write)
    print(f"{len(files) - failed[0]} images -> {out}/predictions.jsonl" + ("" if args.no_tiles else f", {out}/tiles/"))
    if failed[0]:
        print(f"error: {failed[0]} of {len(files)} images could not be read (see their error lines)", file=sys.stderr)
    return 1 if failed[0] else 0
