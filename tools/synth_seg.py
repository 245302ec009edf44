"""``mobiledense synth seg``: write a synthetic Cityscapes-layout segmentation dataset."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", required=True, help="dataset root to create (leftImg8bit/, gtFine/)")
    parser.add_argument("--num-train", type=int, default=200, help="frames in the train split")
    parser.add_argument("--num-val", type=int, default=50, help="frames in the val split")
    parser.add_argument("--size", type=int, nargs=2, default=(256, 512), metavar=("H", "W"),
                        help="frame height and width")
    parser.add_argument("--seed", type=int, default=0, help="the dataset is a pure function of the seed")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace leftImg8bit/ and gtFine/ of a different dataset already in --out")


def run(args: argparse.Namespace) -> int:
    import sys
    import time

    from mobiledense.datasets.synthetic_seg import make_synthetic_cityscapes

    start = time.perf_counter()
    try:
        root = make_synthetic_cityscapes(args.out, num_train=args.num_train, num_val=args.num_val,
                                         size=tuple(args.size), seed=args.seed, overwrite=args.overwrite)
    except (FileExistsError, ValueError) as e:  # a message that says what to fix, no traceback
        print(f"mobiledense synth seg: error: {e}", file=sys.stderr)
        return 2
    h, w = args.size
    print(f"synthetic Cityscapes layout in {root}: train {args.num_train}, val {args.num_val} frames "
          f"of {w}x{h} ({time.perf_counter() - start:.1f} s)")
    return 0
