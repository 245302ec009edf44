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
    parser.add_argument("--scale", type=float, default=1.0, help="resize images by this before inference")
    parser.add_argument("--alpha", type=float, default=0.5, help="overlay opacity")
    parser.add_argument("--output-dir", default="runs/seg/predict")
    add_inference_arguments(parser)


def run(args: argparse.Namespace) -> int:
    import cv2
    import torch
    import torch.nn.functional as F
    from tqdm import tqdm

    from mobiledense.datasets import read_image_rgb
    from mobiledense.datasets.cityscapes_labels import colorize_train_ids, train_ids_to_label_ids

    from .common import inference_model, list_images, load_trained_model, select_device

    files = list_images(args.inputs)
    model, _ = load_trained_model(args.checkpoint, "seg")
    device = select_device(args.device)
    model = inference_model(model, device, args.eager)
    out = Path(args.output_dir)
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
            x = torch.from_numpy(image).permute(2, 0, 1)[None].to(device).float().div_(255)
            if args.scale != 1.0:
                x = F.interpolate(x, scale_factor=args.scale, mode="bilinear", align_corners=False)
            logits = model(x)
            pred = F.interpolate(logits, size=(h, w), mode="bilinear", align_corners=False).argmax(1)[0]
            train_ids = pred.to(torch.uint8).cpu().numpy()
            colour = colorize_train_ids(train_ids)
            overlay = (image * (1 - args.alpha) + colour * args.alpha).astype("uint8")
            cv2.imwrite(str(out / f"{path.stem}_labelIds.png"), train_ids_to_label_ids(train_ids))
            cv2.imwrite(str(out / f"{path.stem}_color.png"), cv2.cvtColor(colour, cv2.COLOR_RGB2BGR))
            cv2.imwrite(str(out / f"{path.stem}_overlay.png"), cv2.cvtColor(overlay, cv2.COLOR_RGB2BGR))
    print(f"{len(files) - failed} images -> {out}/ (*_labelIds.png, *_color.png, *_overlay.png)")
    if failed:
        print(f"error: {failed} of {len(files)} images could not be read (see the warnings above)", file=sys.stderr)
    return 1 if failed else 0
