"""``mobiledense convert voc|yolo``: Pascal VOC XML / YOLO txt detection data -> one COCO-format json.

Examples::

    mobiledense convert voc VOCdevkit/VOC2012 --split train --out voc_train.json
    mobiledense convert yolo data/my_yolo --split val --names data/my_yolo/data.yaml --out my_val.json

The json loads with pycocotools and :class:`~mobiledense.datasets.CocoDetection`; the command prints the images
folder to pass as ``train det --train-images`` (or ``--val-images``) beside ``--train-ann`` (``--val-ann``).
Conventions (VOC 1-based boxes, difficult -> iscrowd, clipping): :mod:`mobiledense.datasets.voc_yolo`.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("format", choices=("voc", "yolo"), help="layout of ROOT")
    parser.add_argument("root", type=Path, help="voc: folder with Annotations/ and JPEGImages/; "
                                                "yolo: folder with images/<split>/ and labels/<split>/")
    parser.add_argument("--split", default=None,
                        help="voc: ImageSets/Main/<split>.txt ('all' or none: every Annotations/*.xml); "
                             "yolo: the split folder (required)")
    parser.add_argument("--out", type=Path, required=True, help="COCO json to write")
    parser.add_argument("--names", "--classes", dest="names", default=None,
                        help="class list (ids 1..K in its order): data.yaml with names:, classes.txt, a json list, "
                             "or comma-separated names; default voc: the sorted names of every XML; yolo: ROOT's "
                             "data.yaml / classes.txt")
    parser.add_argument("--difficult", choices=("ignore", "keep", "drop"), default="ignore",
                        help="voc: difficult objects become iscrowd=1 (ignored in training and by COCOeval), "
                             "normal objects, or are left out")
    parser.add_argument("--tolerance", type=float, default=1e-3,
                        help="yolo: how far normalised coordinates may leave [0, 1] before it is an error")


def _names(value: str | None) -> list[str] | None:
    from mobiledense.datasets.voc_yolo import read_class_names

    if value is None:
        return None
    if Path(value).is_file():
        return read_class_names(value)
    if "/" in value or Path(value).suffix.lower() in (".yaml", ".yml", ".txt", ".json"):
        raise FileNotFoundError(f"--names {value}: no such file (give a data.yaml / classes.txt / json, or "
                                "comma-separated names)")
    return read_class_names(value.split(","))


def run(args: argparse.Namespace) -> int:
    from mobiledense.datasets.voc_yolo import coco_counts, voc_to_coco, write_coco_json, yolo_to_coco

    names = _names(args.names)
    if args.format == "voc":
        split = None if args.split in (None, "all") else args.split
        data = voc_to_coco(args.root, split, classes=names, difficult=args.difficult)
    else:
        if not args.split:
            raise ValueError("convert yolo needs --split (the folder under images/ and labels/, e.g. train)")
        data = yolo_to_coco(args.root, args.split, names=names, tolerance=args.tolerance)
    path = write_coco_json(data, args.out)
    n = coco_counts(data)
    images_root = data["info"]["images_root"]
    ignored = f", {n['ignored']} difficult (iscrowd=1, ignored)" if args.format == "voc" else ""
    print(f"wrote {path}: {n['images']} images, {n['objects']} objects{ignored}, {n['classes']} classes, "
          f"{n['clipped']} box(es) clipped to their image")
    print(f"  classes: {', '.join(c['name'] for c in data['categories'])}")
    print(f"  images root: {images_root}")
    print(f"  train with: mobiledense train det --train-images {images_root} --train-ann {path} ...")
    return 0
