"""Synthetic COCO-format detection data: coloured shapes on textured backgrounds.

Each class is one (shape, colour) pair, e.g. "red ellipse" or "green rectangle";
backgrounds are desaturated gradients, stripes or blotchy low-frequency noise with
pixel noise on top, so boxes must be found from shape and colour, not from flat
contrast.  Objects never overlap and span ``object_scale`` of the shorter image
side (15-50% by default: every object then matches one of SSDLite's smallest
default boxes, scale 0.2, at IoU >= 0.5 on a 320 input).  The output is a real
COCO layout readable by :class:`~mobiledense.datasets.coco.CocoDetection`::

    out_dir/images/{train,val}/000000.jpg
    out_dir/annotations/instances_{train,val}.json

Every image is drawn from ``np.random.default_rng([seed, index])``: the same seed
gives byte-identical files, whatever ``num_images`` is.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import cv2
import numpy as np

__all__ = ["SHAPES", "COLOURS", "class_table", "make_synthetic_coco", "render_image"]

SHAPES = ("ellipse", "rectangle", "triangle", "diamond", "star", "cross")
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30), "green": (30, 190, 50), "blue": (30, 70, 230),
    "yellow": (235, 210, 20), "magenta": (210, 40, 210), "cyan": (20, 210, 220),
}


def class_table(num_classes: int) -> list[tuple[str, str]]:
    """``(shape, colour)`` per class: the first six differ in both shape and colour."""
    n_shape, names = len(SHAPES), list(COLOURS)
    if not 1 <= num_classes <= n_shape * len(names):
        raise ValueError(f"num_classes must be in 1..{n_shape * len(names)}, got {num_classes}")
    # i = a + 6b -> shape a, colour (a + b) mod 6: all 36 pairs, diagonal first.
    return [(SHAPES[i % n_shape], names[(i % n_shape + i // n_shape) % len(names)]) for i in range(num_classes)]


def _unit_polygon(shape: str) -> np.ndarray:
    """Outline of ``shape`` as (P, 2) points around the origin (any scale)."""
    t = np.linspace(0, 2 * np.pi, 33)[:-1]
    if shape == "ellipse":
        return np.stack([np.cos(t), np.sin(t)], 1)
    if shape == "rectangle":
        return np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]], float)
    if shape == "triangle":
        return np.array([[0, -1], [1, 1], [-1, 1]], float)
    if shape == "diamond":
        return np.array([[0, -1], [1, 0], [0, 1], [-1, 0]], float)
    if shape == "star":
        a = np.linspace(0, 2 * np.pi, 11)[:-1] - np.pi / 2
        r = np.where(np.arange(10) % 2 == 0, 1.0, 0.45)
        return np.stack([r * np.cos(a), r * np.sin(a)], 1)
    if shape == "cross":
        u = 1 / 3
        return np.array([[-u, -1], [u, -1], [u, -u], [1, -u], [1, u], [u, u], [u, 1], [-u, 1],
                         [-u, u], [-1, u], [-1, -u], [-u, -u]], float)
    raise ValueError(f"unknown shape {shape!r}; valid: {SHAPES}")


def _background(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """Desaturated texture (float32 HxWx3, 0-255): gradient, stripes or blotches."""
    def muted() -> np.ndarray:
        return (rng.uniform(50, 200) + rng.uniform(-25, 25, 3)).astype(np.float32)

    theta = rng.uniform(0, np.pi)
    scale = np.float32(1.0 / max(h, w))
    proj = (np.arange(w, dtype=np.float32)[None, :] * np.float32(np.cos(theta) * scale)
            + np.arange(h, dtype=np.float32)[:, None] * np.float32(np.sin(theta) * scale))
    kind = rng.integers(3)
    c0, c1 = muted(), muted()
    if kind == 0:  # linear gradient
        t = (proj - proj.min()) / max(float(np.ptp(proj)), 1e-6)
    elif kind == 1:  # stripes
        t = 0.5 + 0.5 * np.sin(np.float32(2 * np.pi * rng.uniform(4, 16)) * proj)
    else:  # low-frequency blotches
        small = rng.random((int(rng.integers(3, 9)), int(rng.integers(3, 9))), dtype=np.float32)
        t = cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC)
    t = np.clip(t, 0, 1)[..., None]
    return c0 + (c1 - c0) * t


def _place(rng: np.random.Generator, h: int, w: int, scale: tuple[float, float],
           taken: list[np.ndarray], tries: int = 30) -> np.ndarray | None:
    """A box ``(x0, y0, x1, y1)`` of side ``scale`` x short side not touching ``taken``."""
    for _ in range(tries):
        side = rng.uniform(*scale) * min(h, w)
        aspect = rng.uniform(0.6, 1.6)
        bw, bh = min(side * np.sqrt(aspect), w - 2.0), min(side / np.sqrt(aspect), h - 2.0)
        x0, y0 = rng.uniform(1, w - 1 - bw), rng.uniform(1, h - 1 - bh)
        box = np.array([x0, y0, x0 + bw, y0 + bh])
        if all(box[0] > t[2] + 2 or box[2] < t[0] - 2 or box[1] > t[3] + 2 or box[3] < t[1] - 2 for t in taken):
            return box
    return None


def render_image(
    rng: np.random.Generator,
    size: tuple[int, int],
    classes: list[tuple[str, str]],
    max_objects: int = 4,
    object_scale: tuple[float, float] = (0.15, 0.5),
) -> tuple[np.ndarray, list[dict[str, Any]]]:
    """One RGB uint8 image and its objects ``{"label" (0-based), "polygon" (P, 2), "bbox" xyxy}``."""
    h, w = size
    img = _background(rng, h, w)
    objects: list[dict[str, Any]] = []
    for _ in range(int(rng.integers(1, max_objects + 1))):
        box = _place(rng, h, w, object_scale, [o["bbox"] for o in objects])
        if box is None:
            continue
        label = int(rng.integers(len(classes)))
        shape, colour = classes[label]
        pts = _unit_polygon(shape)
        a = rng.uniform(-0.35, 0.35) if shape != "ellipse" else rng.uniform(0, np.pi)
        pts = pts @ np.array([[np.cos(a), np.sin(a)], [-np.sin(a), np.cos(a)]])
        pts = (pts - pts.min(0)) / np.ptp(pts, 0) * (box[2:] - box[:2]) + box[:2]  # tight in `box`
        fill = np.clip(np.array(COLOURS[colour]) + rng.uniform(-20, 20, 3), 0, 255)
        cv2.fillPoly(img, [np.round(pts * 16).astype(np.int32)], fill.tolist(), cv2.LINE_AA, shift=4)
        objects.append({"label": label, "polygon": pts, "bbox": box})
    # Sensor-like pixel noise, std 2-8 (uniform distribution: 5x cheaper to draw than a normal one).
    noise = rng.random(img.shape, dtype=np.float32) - np.float32(0.5)
    img += noise * np.float32(rng.uniform(2, 8) * np.sqrt(12.0))
    return np.clip(img, 0, 255).astype(np.uint8), objects


def _polygon_area(pts: np.ndarray) -> float:
    x, y = pts[:, 0], pts[:, 1]
    return float(0.5 * abs(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))))


def make_synthetic_coco(
    out_dir: str | Path,
    num_images: int = 200,
    size_range: tuple[int, int] = (256, 384),
    num_classes: int = 6,
    seed: int = 0,
    val_fraction: float = 0.2,
    max_objects: int = 4,
    object_scale: tuple[float, float] = (0.15, 0.5),
    jpeg_quality: int = 90,
    overwrite: bool = False,
) -> dict[str, tuple[Path, Path]]:
    """Write a synthetic COCO detection dataset; returns ``{split: (image_dir, ann_file)}``.

    Args:
        out_dir: output folder (created). One that already holds ``images/`` or ``annotations/`` is
            refused (stale images of a larger earlier set would stay beside the new json) unless
            ``overwrite``, which deletes both first.
        num_images: images in total; the last ``round(num_images * val_fraction)`` form "val".
        size_range: image height and width are each drawn uniformly in this range.
        num_classes: number of (shape, colour) classes, 1..36; category ids are 1..K.
        seed: everything is a function of ``seed`` and the image index.
        max_objects: 1..max_objects non-overlapping objects per image.
        object_scale: object side as a fraction of the shorter image side.
    """
    if num_images < 1 or not 0.0 <= val_fraction < 1.0 or size_range[0] < 32 or size_range[0] > size_range[1]:
        raise ValueError(f"need num_images >= 1, 0 <= val_fraction < 1, 32 <= size_range[0] <= size_range[1]; "
                         f"got {num_images}, {val_fraction}, {size_range}")
    out_dir, classes = Path(out_dir), class_table(num_classes)
    existing = [out_dir / d for d in ("images", "annotations") if (out_dir / d).exists()]
    if existing and not overwrite:
        raise FileExistsError(f"{out_dir} already holds {' and '.join(p.name + '/' for p in existing)}: writing "
                              "into it would leave stale files beside the new set; pass overwrite=True "
                              "(--overwrite) to replace them, or choose another folder")
    for path in existing:
        shutil.rmtree(path)
    n_val = int(round(num_images * val_fraction))
    splits = {"train": range(0, num_images - n_val), "val": range(num_images - n_val, num_images)}
    categories = [{"id": i + 1, "name": f"{c} {s}", "supercategory": "shape"} for i, (s, c) in enumerate(classes)]
    result, ann_id = {}, 1
    for split, indices in splits.items():
        image_dir = out_dir / "images" / split
        image_dir.mkdir(parents=True, exist_ok=True)
        images, annotations = [], []
        for index in indices:
            rng = np.random.default_rng([seed, index])
            h, w = (int(v) for v in rng.integers(size_range[0], size_range[1] + 1, 2))
            img, objects = render_image(rng, (h, w), classes, max_objects, object_scale)
            name = f"{index:06d}.jpg"
            cv2.imwrite(str(image_dir / name), cv2.cvtColor(img, cv2.COLOR_RGB2BGR),
                        [cv2.IMWRITE_JPEG_QUALITY, jpeg_quality])
            images.append({"id": index + 1, "file_name": name, "width": w, "height": h, "license": 1})
            for obj in objects:
                x0, y0, x1, y1 = (round(float(v), 2) for v in obj["bbox"])
                annotations.append({
                    "id": ann_id, "image_id": index + 1, "category_id": obj["label"] + 1,
                    "bbox": [x0, y0, round(x1 - x0, 2), round(y1 - y0, 2)],
                    "area": round(_polygon_area(obj["polygon"]), 2), "iscrowd": 0,
                    "segmentation": [[round(float(v), 2) for v in obj["polygon"].reshape(-1)]],
                })
                ann_id += 1
        data = {
            "info": {"description": f"mobiledense synthetic shapes ({split}, seed {seed})", "version": "1.0"},
            "licenses": [{"id": 1, "name": "CC0 1.0", "url": "https://creativecommons.org/publicdomain/zero/1.0/"}],
            "images": images, "annotations": annotations, "categories": categories,
        }
        ann_file = out_dir / "annotations" / f"instances_{split}.json"
        ann_file.parent.mkdir(parents=True, exist_ok=True)
        ann_file.write_text(json.dumps(data))
        result[split] = (image_dir, ann_file)
    return result
