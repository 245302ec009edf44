"""Pascal VOC XML and YOLO txt detection annotations -> COCO-format dicts (then :class:`CocoDetection`).

Layouts read::

    VOC:  root/Annotations/<id>.xml, root/JPEGImages/<id>.jpg, root/ImageSets/Main/<split>.txt (optional)
    YOLO: root/images/<split>/**/<name>.<ext>, root/labels/<split>/**/<name>.txt  (or root/<split>/{images,labels})
          class names: root/data.yaml ``names:`` (list or {index: name}) or a classes.txt (one name a line)

Conventions, chosen to match detectron2 / torchvision and documented in the README:

* VOC boxes are 1-based inclusive pixel indices: ``(xmin=1, xmax=W)`` covers the whole image. As detectron2's
  ``load_voc_instances`` (``bbox[0] -= 1; bbox[1] -= 1``) they become ``x0 = xmin - 1``, ``x1 = xmax``, so the COCO
  box is ``[xmin - 1, ymin - 1, xmax - xmin + 1, ymax - ymin + 1]``.
* VOC ``difficult=1`` objects become ``iscrowd=1`` (``difficult="ignore"``, the default): :class:`CocoDetection`
  leaves them out of the training targets and pycocotools ignores detections matched to them, as the VOC protocol
  does. pycocotools matches a crowd box by intersection over the *detection's* area (not IoU), so a detection
  lying inside a difficult box is ignored even when much smaller: AP differs slightly from the VOC devkit.
  ``"keep"`` trains and scores them as normal objects (detectron2's choice), ``"drop"`` removes them.
* YOLO lines are ``class cx cy w h`` normalised to [0, 1]; pixels are ``x0 = (cx - w/2) * W`` etc.
* Image sizes come from the image file header (stored orientation, EXIF ignored as in :mod:`.io`); a VOC ``<size>``
  that disagrees with the image is an error. Boxes may leave the image by at most 1 px (VOC) or ``tolerance``
  (YOLO, normalised); they are then clipped to it and counted in ``info["clipped_boxes"]``; beyond, an error.
* Categories get ids 1..K in class order. Images get ids 1..N in file order; ``file_name`` is relative to the
  images folder, returned as ``info["images_root"]`` (pass it to ``train det --train-images``).

Every problem raises :class:`AnnotationFormatError` naming the file (and line or object) at fault.
"""

from __future__ import annotations

import json
import math
import os
import xml.etree.ElementTree as ET
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .io import write_text_atomic

__all__ = ["VOC_CLASSES", "IMAGE_SUFFIXES", "AnnotationFormatError", "voc_to_coco", "yolo_to_coco",
           "read_class_names", "write_coco_json", "coco_counts"]

#: The 20 Pascal VOC classes in the devkit's (alphabetical) order.
VOC_CLASSES = ("aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
               "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train",
               "tvmonitor")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
DIFFICULT = ("ignore", "keep", "drop")
_VOC_TOLERANCE_PX = 1.0


class AnnotationFormatError(ValueError):
    """A VOC / YOLO annotation (or the image it refers to) is malformed or inconsistent."""


@dataclass
class _Box:
    name: str | int
    xyxy: tuple[float, float, float, float]  # pixels, COCO continuous coordinates
    crowd: int
    where: str


# ----------------------------------------------------------------------------------------------- shared helpers
def _image_size(path: Path) -> tuple[int, int]:
    """(width, height) from the file header, without decoding the pixels."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            return int(im.width), int(im.height)
    except FileNotFoundError:
        raise
    except Exception as e:  # PIL raises many types for a bad file
        raise AnnotationFormatError(f"{path}: cannot read the image header ({type(e).__name__}: {e})") from e


def _find_image(folder: Path, stem: str, hint: str | None = None) -> Path | None:
    """``folder/stem.<ext>`` for the usual image suffixes (either case), else ``folder/hint``."""
    for suffix in IMAGE_SUFFIXES:
        for s in (suffix, suffix.upper()):
            if (folder / f"{stem}{s}").is_file():
                return folder / f"{stem}{s}"
    if hint and (folder / hint).is_file():
        return folder / hint
    return None


def _clip(xyxy: tuple[float, float, float, float], w: int, h: int, tol: float, where: str
          ) -> tuple[tuple[float, float, float, float], bool]:
    x0, y0, x1, y1 = xyxy
    if x0 < -tol or y0 < -tol or x1 > w + tol or y1 > h + tol:
        raise AnnotationFormatError(
            f"{where}: box x0,y0,x1,y1 = {x0:g},{y0:g},{x1:g},{y1:g} (pixels) leaves the {w}x{h} image by more "
            f"than {tol:g} px; is the image, the size or the coordinate convention wrong?")
    out = (min(max(x0, 0.0), w), min(max(y0, 0.0), h), min(max(x1, 0.0), w), min(max(y1, 0.0), h))
    return out, out != (x0, y0, x1, y1)


def _coco_dict(images: list[dict], boxes: list[list[_Box]], names: Sequence[str], info: dict[str, Any]
               ) -> dict[str, Any]:
    """Assemble images (with width/height/file_name), per-image boxes and the class list into COCO."""
    index = {n: i for i, n in enumerate(names)}
    anns = []
    for img, img_boxes in zip(images, boxes):
        for b in img_boxes:
            cat = b.name if isinstance(b.name, int) else index.get(b.name)
            if cat is None:
                raise AnnotationFormatError(
                    f"{b.where}: class name {b.name!r} is not in the class list ({len(names)} names: "
                    f"{', '.join(names[:20])}{'...' if len(names) > 20 else ''})")
            x0, y0, x1, y1 = b.xyxy
            bw, bh = x1 - x0, y1 - y0
            anns.append({"id": len(anns) + 1, "image_id": img["id"], "category_id": cat + 1,
                         "bbox": [round(x0, 4), round(y0, 4), round(bw, 4), round(bh, 4)],
                         "area": round(bw * bh, 4), "iscrowd": b.crowd})
    return {"info": info, "images": images, "annotations": anns,
            "categories": [{"id": i + 1, "name": n, "supercategory": "object"} for i, n in enumerate(names)]}


def _check_names(names: Sequence[Any], source: str) -> list[str]:
    names = [str(n).strip() if isinstance(n, (str, int, float)) else n for n in names]
    bad = [n for n in names if not isinstance(n, str) or not n]
    if bad:
        raise AnnotationFormatError(f"{source}: class names must be non-empty strings, got {bad[0]!r}")
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise AnnotationFormatError(f"{source}: duplicate class name(s) {dup}")
    if not names:
        raise AnnotationFormatError(f"{source}: the class list is empty")
    return names


def read_class_names(source: str | os.PathLike | Sequence[str] | Mapping[int, str]) -> list[str]:
    """Class names from a list, an ``{index: name}`` dict, a data.yaml (``names:``), a json list or a txt file.

    Raises:
        AnnotationFormatError: naming the file, for a missing ``names`` key, gaps in the indices, duplicates...
    """
    if isinstance(source, Mapping):
        return _names_from_mapping(source, "names")
    if not isinstance(source, (str, os.PathLike)):
        return _check_names(list(source), "names")
    path = Path(source)
    if not path.is_file():
        raise FileNotFoundError(f"class list not found: {path}")
    text = path.read_text(encoding="utf-8")
    if path.suffix.lower() in (".yaml", ".yml"):
        import yaml

        try:
            cfg = yaml.safe_load(text)
        except yaml.YAMLError as e:
            raise AnnotationFormatError(f"{path}: malformed YAML ({e})") from e
        if not isinstance(cfg, dict) or "names" not in cfg:
            raise AnnotationFormatError(f"{path}: no 'names:' key (expected a list or {{index: name}} of classes)")
        names = cfg["names"]
        names = _names_from_mapping(names, str(path)) if isinstance(names, dict) else _check_names(names, str(path))
        if "nc" in cfg and cfg["nc"] != len(names):
            raise AnnotationFormatError(f"{path}: nc: {cfg['nc']} but 'names' has {len(names)} entries")
        return names
    if path.suffix.lower() == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise AnnotationFormatError(f"{path}: not valid JSON ({e})") from e
        if not isinstance(data, list):
            raise AnnotationFormatError(f"{path}: expected a JSON list of class names")
        return _check_names([d.get("name") if isinstance(d, dict) else d for d in data], str(path))
    return _check_names([line.strip() for line in text.splitlines() if line.strip()], str(path))


def _names_from_mapping(names: Mapping[Any, Any], source: str) -> list[str]:
    try:
        items = sorted((int(k), v) for k, v in names.items())
    except (TypeError, ValueError) as e:
        raise AnnotationFormatError(f"{source}: 'names' keys must be class indices 0..K-1 ({e})") from e
    if [k for k, _ in items] != list(range(len(items))):
        raise AnnotationFormatError(f"{source}: 'names' indices must be 0..{len(items) - 1} without gaps, "
                                    f"got {[k for k, _ in items]}")
    return _check_names([v for _, v in items], source)


def write_coco_json(data: dict[str, Any], path: str | os.PathLike) -> Path:
    """Write a COCO dict as compact JSON, atomically (a killed run leaves the old file or the new one)."""
    return write_text_atomic(json.dumps(data, separators=(",", ":")), path)


def coco_counts(data: dict[str, Any]) -> dict[str, int]:
    """images, objects, classes, ignored (``iscrowd=1``) and clipped boxes of a converted dict."""
    anns = data["annotations"]
    return {"images": len(data["images"]), "objects": len(anns), "classes": len(data["categories"]),
            "ignored": sum(a["iscrowd"] for a in anns),
            "clipped": int(data.get("info", {}).get("clipped_boxes", 0))}


# ----------------------------------------------------------------------------------------------------------- VOC
def _text(node: ET.Element, tag: str, where: str, required: bool = True) -> str | None:
    child = node.find(tag)
    if child is None or child.text is None or not child.text.strip():
        if required:
            raise AnnotationFormatError(f"{where}: missing <{tag}>")
        return None
    return child.text.strip()


def _number(node: ET.Element, tag: str, where: str) -> float:
    text = _text(node, tag, where)
    try:
        v = float(text)
    except ValueError:
        raise AnnotationFormatError(f"{where}: <{tag}> is not a number: {text!r}") from None
    if not math.isfinite(v):
        raise AnnotationFormatError(f"{where}: <{tag}> is not finite: {text!r}")
    return v


def _parse_voc_xml(path: Path) -> tuple[ET.Element, list[tuple[str, int, tuple[float, ...], str]]]:
    """The XML root and its objects as (name, difficult, (xmin, ymin, xmax, ymax) as written, where)."""
    try:
        root = ET.parse(path).getroot()
    except ET.ParseError as e:
        raise AnnotationFormatError(f"{path}: malformed XML ({e})") from e
    if root.tag != "annotation":
        raise AnnotationFormatError(f"{path}: root element is <{root.tag}>, expected <annotation> (Pascal VOC)")
    objects = []
    for k, obj in enumerate(root.findall("object")):
        where = f"{path}: object {k}"
        name = _text(obj, "name", where)
        diff = _text(obj, "difficult", where, required=False) or "0"
        if diff not in ("0", "1"):
            raise AnnotationFormatError(f"{where} ({name}): <difficult> must be 0 or 1, got {diff!r}")
        box = obj.find("bndbox")
        if box is None:
            raise AnnotationFormatError(f"{where} ({name}): missing <bndbox>")
        coords = tuple(_number(box, t, f"{where} ({name})") for t in ("xmin", "ymin", "xmax", "ymax"))
        if coords[2] < coords[0] or coords[3] < coords[1]:
            raise AnnotationFormatError(f"{where} ({name}): xmax < xmin or ymax < ymin in {coords} "
                                        "(VOC boxes are xmin, ymin, xmax, ymax, 1-based inclusive)")
        objects.append((name, int(diff), coords, f"{where} ({name})"))
    return root, objects


def _voc_ids(root: Path, split: str | None) -> list[str]:
    ann_dir = root / "Annotations"
    if split is None:
        return sorted(p.stem for p in ann_dir.glob("*.xml"))
    split_file = root / "ImageSets" / "Main" / f"{split}.txt"
    if not split_file.is_file():
        have = sorted(p.stem for p in split_file.parent.glob("*.txt") if "_" not in p.stem)
        raise FileNotFoundError(f"split file {split_file} not found (found splits {have}); "
                                "pass split=None (--split all) to read every Annotations/*.xml")
    ids = [line.split()[0] for line in split_file.read_text(encoding="utf-8").splitlines() if line.strip()]
    for n, i in enumerate(ids):
        if not (ann_dir / f"{i}.xml").is_file():
            raise FileNotFoundError(f"{split_file} line {n + 1}: {ann_dir / (i + '.xml')} does not exist")
    return ids


def voc_to_coco(root: str | os.PathLike, split: str | None = None, classes: Sequence[str] | None = None,
                difficult: str = "ignore") -> dict[str, Any]:
    """Read a Pascal VOC tree into a COCO-format dict (see the module docstring for the conventions).

    Args:
        root: folder with ``Annotations/`` and ``JPEGImages/`` (e.g. ``VOCdevkit/VOC2012``).
        split: ``ImageSets/Main/<split>.txt`` lists the images; None reads every ``Annotations/*.xml``.
        classes: the class list (category ids 1..K in this order); an object whose name is not in it is an
            error. None: the sorted names found in every XML of ``Annotations/`` (the whole tree, so every split
            of one root gets the same ids; for VOC itself this is :data:`VOC_CLASSES`).
        difficult: ``"ignore"`` (iscrowd=1), ``"keep"`` (normal objects) or ``"drop"``.
    """
    if difficult not in DIFFICULT:
        raise ValueError(f"difficult must be one of {DIFFICULT}, got {difficult!r}")
    root = Path(root)
    for sub in ("Annotations", "JPEGImages"):
        if not (root / sub).is_dir():
            raise FileNotFoundError(f"{root} has no {sub}/ folder; expected a Pascal VOC tree "
                                    "root/Annotations/*.xml, root/JPEGImages/*.jpg")
    ids = _voc_ids(root, split)
    if not ids:
        raise FileNotFoundError(f"no annotation files in {root / 'Annotations'}" + (f" for split {split!r}"
                                                                                    if split else ""))
    parsed = {i: _parse_voc_xml(root / "Annotations" / f"{i}.xml") for i in ids}
    if classes is None:
        others = (p for p in (root / "Annotations").glob("*.xml") if p.stem not in parsed)
        found = {o[0] for _, objs in parsed.values() for o in objs}
        found |= {o[0] for p in others for o in _parse_voc_xml(p)[1]}
        names = sorted(found)
    else:
        names = _check_names(classes, "classes")
    images, boxes, clipped = [], [], 0
    for i in ids:
        xml_path = root / "Annotations" / f"{i}.xml"
        tree, objects = parsed[i]
        image = _find_image(root / "JPEGImages", i, _text(tree, "filename", str(xml_path), required=False))
        if image is None:
            raise AnnotationFormatError(f"{xml_path}: no image for this annotation file (expected "
                                        f"{root / 'JPEGImages' / (i + '.jpg')})")
        w, h = _image_size(image)
        size = tree.find("size")
        if size is not None and (_text(size, "width", "", False) or "0") not in ("0", "0.0"):
            xw, xh = _number(size, "width", str(xml_path)), _number(size, "height", str(xml_path))
            if (xw, xh) != (w, h):
                raise AnnotationFormatError(f"{xml_path}: <size> says {xw:g}x{xh:g} (WxH) but {image} is {w}x{h}")
        img_boxes = []
        for name, diff, (xmin, ymin, xmax, ymax), where in objects:
            if diff and difficult == "drop":
                continue
            xyxy, was_clipped = _clip((xmin - 1.0, ymin - 1.0, xmax, ymax), w, h, _VOC_TOLERANCE_PX, where)
            clipped += was_clipped
            img_boxes.append(_Box(name, xyxy, int(diff and difficult == "ignore"), where))
        images.append({"id": len(images) + 1, "file_name": image.name, "width": w, "height": h})
        boxes.append(img_boxes)
    info = {"description": f"Pascal VOC {root} ({split or 'all'})", "source_format": "voc",
            "images_root": str(root / "JPEGImages"), "split": split, "difficult": difficult,
            "clipped_boxes": clipped}
    return _coco_dict(images, boxes, names, info)


# ---------------------------------------------------------------------------------------------------------- YOLO
def _yolo_dirs(root: Path, split: str) -> tuple[Path, Path]:
    for images, labels in ((root / "images" / split, root / "labels" / split),
                           (root / split / "images", root / split / "labels")):
        if images.is_dir():
            return images, labels
    have = sorted(p.name for p in (root / "images").iterdir() if p.is_dir()) if (root / "images").is_dir() else []
    raise FileNotFoundError(f"no image folder {root / 'images' / split} (or {root / split / 'images'}); "
                            f"found splits {have}; expected root/images/<split>/ and root/labels/<split>/")


def _default_names(root: Path, labels: Path) -> list[str]:
    yamls = [p for p in sorted(root.glob("*.y*ml")) if "names" in p.read_text(encoding="utf-8")]
    if len(yamls) > 1:
        raise AnnotationFormatError(f"{root}: several YAML files with 'names' ({[p.name for p in yamls]}); "
                                    "pass the one to use (names=..., --names FILE)")
    for path in yamls + [root / "classes.txt", labels / "classes.txt", labels.parent / "classes.txt"]:
        if path.is_file():
            return read_class_names(path)
    raise FileNotFoundError(f"no class names for {root}: put a data.yaml with 'names:' or a classes.txt in it, or "
                            "pass names=... (--names data.yaml|classes.txt)")


def _parse_yolo_line(line: str, where: str, num_classes: int, tol: float
                     ) -> tuple[int, tuple[float, float, float, float]]:
    parts = line.split()
    if len(parts) != 5:
        extra = "; polygon (segment) and keypoint labels are not supported" if len(parts) > 5 else ""
        raise AnnotationFormatError(f"{where}: {len(parts)} values, expected 5 (class cx cy w h){extra}: {line!r}")
    try:
        values = [float(p) for p in parts]
    except ValueError:
        raise AnnotationFormatError(f"{where}: not 5 numbers: {line!r}") from None
    if not all(math.isfinite(v) for v in values):
        raise AnnotationFormatError(f"{where}: non-finite value in {line!r}")
    if not values[0].is_integer():
        raise AnnotationFormatError(f"{where}: class index {parts[0]!r} is not an integer")
    cls, (cx, cy, bw, bh) = int(values[0]), values[1:]
    if not 0 <= cls < num_classes:
        raise AnnotationFormatError(f"{where}: unknown class index {cls} (the class list has {num_classes} "
                                    f"names: 0..{num_classes - 1})")
    if bw <= 0 or bh <= 0:
        raise AnnotationFormatError(f"{where}: box width and height must be > 0, got w={bw:g} h={bh:g}")
    corners = (cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2)
    if min(cx, cy, *corners) < -tol or max(cx, cy, bw, bh, *corners) > 1 + tol:
        raise AnnotationFormatError(
            f"{where}: coordinates must be normalised to [0, 1] (tolerance {tol:g}); got cx cy w h = {cx:g} {cy:g} "
            f"{bw:g} {bh:g} (box corners {', '.join(f'{c:g}' for c in corners)}); pixel coordinates?")
    return cls, corners


def yolo_to_coco(root: str | os.PathLike, split: str,
                 names: str | os.PathLike | Sequence[str] | Mapping[int, str] | None = None,
                 tolerance: float = 1e-3) -> dict[str, Any]:
    """Read a YOLO (Ultralytics / darknet txt) tree into a COCO-format dict.

    Args:
        root: folder with ``images/<split>/`` and ``labels/<split>/`` (or Roboflow's ``<split>/{images,labels}``).
        split: the split folder name ("train", "val", ...).
        names: class names, or a data.yaml / classes.txt holding them; None: ``root/*.yaml`` with ``names:``,
            else a ``classes.txt`` in ``root`` or beside the labels.
        tolerance: how far (normalised units) values and box corners may leave [0, 1]; then clipped.

    Images without a label file (or with an empty one) are kept without objects; a label file without its
    image is an error.
    """
    root = Path(root)
    images_dir, labels_dir = _yolo_dirs(root, split)
    names = read_class_names(names) if names is not None else _default_names(root, labels_dir)
    found: dict[Path, Path] = {}
    for p in sorted(images_dir.rglob("*")):
        if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file():
            key = p.relative_to(images_dir).with_suffix("")
            if key in found:
                raise AnnotationFormatError(f"{p} and {found[key]} share the label file "
                                            f"{labels_dir / key.with_suffix('.txt')}; rename one of them")
            found[key] = p
    if not found:
        raise FileNotFoundError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in {images_dir}")
    labels = sorted(labels_dir.rglob("*.txt")) if labels_dir.is_dir() else []
    for txt in labels:
        key = txt.relative_to(labels_dir).with_suffix("")
        if key not in found and txt.name != "classes.txt":
            raise AnnotationFormatError(f"{txt}: label file without an image (expected "
                                        f"{images_dir / key}.jpg or another of {', '.join(IMAGE_SUFFIXES)})")
    images, boxes, clipped = [], [], 0
    for key, image in found.items():
        w, h = _image_size(image)
        txt = labels_dir / key.with_suffix(".txt")
        img_boxes = []
        lines = txt.read_text(encoding="utf-8").splitlines() if txt.is_file() else []
        for n, line in enumerate(lines):
            if not line.strip():
                continue
            where = f"{txt} line {n + 1}"
            cls, (x0, y0, x1, y1) = _parse_yolo_line(line, where, len(names), tolerance)
            xyxy, was_clipped = _clip((x0 * w, y0 * h, x1 * w, y1 * h), w, h, tolerance * max(w, h), where)
            clipped += was_clipped
            img_boxes.append(_Box(cls, xyxy, 0, where))
        images.append({"id": len(images) + 1, "file_name": image.relative_to(images_dir).as_posix(),
                       "width": w, "height": h})
        boxes.append(img_boxes)
    info = {"description": f"YOLO {root} ({split})", "source_format": "yolo", "images_root": str(images_dir),
            "split": split, "clipped_boxes": clipped}
    return _coco_dict(images, boxes, names, info)
