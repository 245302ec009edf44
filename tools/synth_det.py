"""``mobiledense synth det``: write the synthetic COCO-format shapes dataset."""

from __future__ import annotations

import argparse
import time


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", required=True, help="output folder (images/{train,val}, annotations/)")
    parser.add_argument("--num-images", type=int, default=200, help="images in total (train + val)")
    parser.add_argument("--seed", type=int, default=0, help="same seed -> byte-identical dataset")
    parser.add_argument("--num-classes", type=int, default=6, help="(shape, colour) classes, 1..36")
    parser.add_argument("--min-size", type=int, default=256, help="smallest image height/width")
    parser.add_argument("--max-size", type=int, default=384, help="largest image height/width")
    parser.add_argument("--val-fraction", type=float, default=0.2, help="fraction of images in the val split")
    parser.add_argument("--max-objects", type=int, default=4, help="objects per image: 1..max")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace the images/ and annotations/ of an existing dataset in --out")


def run(args: argparse.Namespace) -> int:
    from mobiledense.datasets.synthetic import make_synthetic_coco

    start = time.perf_counter()
    splits = make_synthetic_coco(
        args.out,
        num_images=args.num_images,
        size_range=(args.min_size, args.max_size),
        num_classes=args.num_classes,
        seed=args.seed,
        val_fraction=args.val_fraction,
        max_objects=args.max_objects,
        overwrite=args.overwrite,
    )
    print(f"wrote {args.num_images} images in {time.perf_counter() - start:.1f} s")
    for split, (image_dir, ann_file) in splits.items():
        print(f"  {split:<5} images: {image_dir}  annotations: {ann_file}")
    return 0
