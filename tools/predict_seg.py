"""``mobiledense predict seg``: images or folders -> label PNGs + colour overlays.

Per image: ``<stem>_labelIds.png`` (official Cityscapes label ids),
``<stem>_color.png`` (official palette) and ``<stem>_overlay.png`` (palette
blended over the photo). One image is in memory at a time. An image that
cannot be read is reported and skipped; the exit status is then 1.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .common import add_inference_arguments


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("inputs", nargs="+", help="image files and/or folders (searched recursively)")
    parser.add_argument("--checkpoint", required=True, help="mobiledense training checkpoint")
    parser.add_argument("--scale", type=float,
                        help="resize images by this factor before inference (default: to the run's eval "
                             "resolution, base size x eval scale, keeping each image's aspect ratio)")
    parser.add_argument("--alpha", type=float, default=0.5, help="overlay opacity in [0, 1] (default 0.5)")
    parser.add_argument("--output-dir", help="default: predict/ beside the checkpoint's run (runs/seg/predict)")
    add_inference_arguments(parser)


def run(args: argparse.Namespace) -> int:
    import cv2
    import numpy as np
    import torch
    import torch.nn.functional as F
    from tqdm import tqdm

    from mobiledense.datasets import build_seg_transforms, read_image_rgb
    from mobiledense.datasets.cityscapes_labels import colorize_train_ids, train_ids_to_label_ids
    from mobiledense.heads.inference import inference_model

    from .common import default_output_dir, list_images, select_device
    from .engine.tasks import load_trained_model
    from .evaluation.overlays import blend_segmentation

    bad = [msg for ok, msg in ((0 <= args.alpha <= 1, f"--alpha must be in [0, 1], got {args.alpha}"),
                               (args.scale is None or args.scale > 0, f"--scale must be > 0, got {args.scale}"))
           if not ok]
    if bad:
        raise ValueError("; ".join(bad))
    files = list_images(args.inputs)
    model, spec = load_trained_model(args.checkpoint, "seg")
    base, eval_scale = spec.data.base_size or spec.data.crop, spec.data.eval_scale
    if args.scale is not None:
        print(f"--scale {args.scale:g} overrides the run's eval resolution ({base[0]}x{base[1]} x {eval_scale:g})")
    device = select_device(args.device)
    model = inference_model(model, device, args.eager)
    transforms: dict[tuple[int, int], object] = {}

    def resized(image):  # noqa: ANN001, ANN202 - the run's eval resize (bilinear up, area down), as eval seg
        h, w = image.shape[:2]
        f = args.scale if args.scale is not None else min(base[0] * eval_scale / h, base[1] * eval_scale / w)
        size = (max(1, round(h * f)), max(1, round(w * f)))
        if size not in transforms:
            transforms[size] = build_seg_transforms(False, base_size=size)
        return transforms[size](image, np.zeros((h, w), np.uint8))[0]

    out = Path(args.output_dir) if args.output_dir else default_output_dir(args.checkpoint, "predict",
                                                                          "runs/seg/predict")
    out.mkdir(parents=True, exist_ok=True)
    failed = 0
    with torch.inference_mode():
        for path in tqdm(files, desc="segment", unit="img"):
            try:
                image = read_image_rgb(path)
            except (OSError, ValueError) as e:  # one unreadable file must not end a long run
                failed += 1
                tqdm.write(f"warning: skipping {path}: {e}", file=sys.stderr)
                continue
            h, w = image.shape[:2]
            logits = model(resized(image)[None].to(device))
            pred = F.interpolate(logits, size=(h, w), mode="bilinear", align_corners=False).argmax(1)[0]
            train_ids = pred.to(torch.uint8).cpu().numpy()
            colour = colorize_train_ids(train_ids)
            overlay = blend_segmentation(image, colour, args.alpha)
            cv2.imwrite(str(out / f"{path.stem}_labelIds.png"), train_ids_to_label_ids(train_ids))
            cv2.imwrite(str(out / f"{path.stem}_color.png"), cv2.cvtColor(colour, cv2.COLOR_RGB2BGR))
            cv2.imwrite(str(out / f"{path.stem}_overlay.png"), cv2.cvtColor(overlay, cv2.COLOR_RGB2BGR))
    print(f"{len(files) - failed} images -> {out}/ (*_labelIds.png, *_color.png, *_overlay.png)")
    if failed:
        print(f"error: {failed} of {len(files)} images could not be read (see the warnings above)", file=sys.stderr)
    return 1 if failed else 0
