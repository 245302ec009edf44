"""``mobiledense predict seg``: images or folders -> label PNGs + colour overlays.

Per image: ``<stem>_labelIds.png`` (official Cityscapes label ids),
``<stem>_color.png`` (official palette) and ``<stem>_overlay.png`` (palette
blended over the photo, each region outlined in white). Both PNGs for people
carry a legend strip below the image (swatch, name and pixel share of every
class present); ``--no-legend`` writes them at the image's own size, pixel for
pixel. One image is in memory at a time. An image that cannot be read is
reported and skipped; the exit status is then 1.
"""

from __future__ import annotations

import argparse
import sys

from .common import add_inference_arguments


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("inputs", nargs="+", help="image files and/or folders (searched recursively)")
    parser.add_argument("--checkpoint", required=True, help="mobiledense training checkpoint")
    parser.add_argument("--scale", type=float,
                        help="resize images by this factor before inference (default: to the run's eval "
                             "resolution, base size x eval scale, keeping each image's aspect ratio)")
    parser.add_argument("--alpha", type=float, default=0.5, help="overlay opacity in [0, 1] (default 0.5)")
    parser.add_argument("--no-legend", action="store_true",
                        help="no legend strip under the colour and overlay PNGs (they keep the image's size)")
    parser.add_argument("--no-outline", action="store_true", help="no white region outlines in the overlay")
    parser.add_argument("--output-dir", help="default: predict/ beside the checkpoint's run (runs/seg/predict)")
    add_inference_arguments(parser)


def run(args: argparse.Namespace) -> int:
    import cv2

    from mobiledense.datasets.cityscapes_labels import train_ids_to_label_ids
    from mobiledense.datasets.io import write_image
    from mobiledense.heads.inference import inference_model

    from .common import output_folder, list_images, read_images, select_device
    from .engine.tasks import SegmentationTask, load_trained_model
    from .evaluation.overlays import segmentation_colour, segmentation_overlay

    out = output_folder(args.output_dir, args.checkpoint, "predict", "runs/seg/predict")
    bad = [msg for ok, msg in ((0 <= args.alpha <= 1, f"--alpha must be in [0, 1], got {args.alpha}"),
                               (args.scale is None or args.scale > 0, f"--scale must be > 0, got {args.scale}"))
           if not ok]
    if bad:
        raise ValueError("; ".join(bad))
    files = list_images(args.inputs)
    model, spec = load_trained_model(args.checkpoint, "seg")
    if args.scale is not None:
        base = spec.data.base_size or spec.data.crop
        print(f"--scale {args.scale:g} overrides the run's eval resolution ({base[0]}x{base[1]} x "
              f"{spec.data.eval_scale:g})")
    device = select_device(args.device)
    model = inference_model(model, device, args.eager)
    task = SegmentationTask(spec)
    out.mkdir(parents=True, exist_ok=True)
    failed = 0
    for path, image, _ in read_images(files, "segment"):
        if image is not None:
            try:
                train_ids = task.predict(model, image, device, args.scale)
            except ValueError as e:  # e.g. an image too small for the network at the size asked
                image = None
                print(f"warning: skipping {path}: {e}", file=sys.stderr)
        if image is None:
            failed += 1
            continue
        write_image(out / f"{path.stem}_labelIds.png", train_ids_to_label_ids(train_ids))
        names = spec.model.class_names or None
        legend = not args.no_legend
        overlay = segmentation_overlay(image, train_ids, args.alpha, names, outline=not args.no_outline,
                                       legend=legend)
        del image  # large photos: at most three image-sized buffers alive (converted in place below)
        colour = segmentation_colour(train_ids, names, legend=legend)
        write_image(out / f"{path.stem}_color.png", cv2.cvtColor(colour, cv2.COLOR_RGB2BGR, dst=colour))
        write_image(out / f"{path.stem}_overlay.png", cv2.cvtColor(overlay, cv2.COLOR_RGB2BGR, dst=overlay))
    print(f"{len(files) - failed} images -> {out}/ (*_labelIds.png, *_color.png, *_overlay.png)")
    if failed:
        print(f"error: {failed} of {len(files)} images could not be read or segmented (see the warnings above)",
              file=sys.stderr)
    return 1 if failed else 0
