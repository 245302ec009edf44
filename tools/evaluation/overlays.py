"""Overlays: predictions drawn on the images (OpenCV).

Detections (:func:`draw_detections`): one box per detection and a ``name score`` tag placed
where it collides with no other tag and stays inside the image (above the box, else inside
it, else below, ...); with ``ground_truth`` the annotated boxes are drawn in a panel beside
the predictions, the same class in the same colour on both sides. The result is BGR, ready
for ``cv2.imwrite``.

Segmentation (:func:`segmentation_overlay`, :func:`segmentation_colour`): the palette blended
over the photo with every region's outline drawn at full opacity (a dark class such as
"building" over a grey facade changes the pixels little at any opacity; its outline stays
visible), and a legend strip below the image: a swatch, the name and the pixel share of every
class present, largest first. These return RGB.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import cv2
import numpy as np

__all__ = ["draw_detections", "place_labels", "detection_panels", "blend_segmentation",
           "segmentation_overlay", "segmentation_colour",
           "segmentation_legend", "region_outlines", "classification_tile"]

_FONT = cv2.FONT_HERSHEY_SIMPLEX


def _colour(label: int) -> tuple[int, int, int]:
    rng = np.random.default_rng(label * 7919 + 17)
    return tuple(int(c) for c in rng.integers(64, 256, 3))


def _text_colour(bg: Sequence[int]) -> tuple[int, int, int]:
    """Black on light backgrounds, white on dark ones (ITU-R 601 luma)."""
    b, g, r = (float(c) for c in bg[:3])  # BGR
    return (0, 0, 0) if 0.299 * r + 0.587 * g + 0.114 * b >= 128 else (255, 255, 255)


def _overlap(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> int:
    w = min(a[2], b[2]) - max(a[0], b[0])
    h = min(a[3], b[3]) - max(a[1], b[1])
    return max(w, 0) * max(h, 0)


def place_labels(boxes: np.ndarray, sizes: Sequence[tuple[int, int]], height: int, width: int,
                 max_overlap: float = 0.1) -> list[tuple[int, int, int, int] | None]:
    """Where each box's tag goes: ``(x0, y0, x1, y1)`` rectangles inside the image.

    Tags are placed in the order given (put the most confident first). Each tries, in turn:
    above the box's top-left corner, inside it, below the bottom-left corner, inside the
    bottom-left, then the same at the right edge, then stacked one or two tag heights further
    away, each shifted into the image; the first place that overlaps no tag already placed
    wins, else the one overlapping least. A tag that would still cover more than
    ``max_overlap`` of its own area is left out (``None``): in a crowd the box stays, in its
    class's colour, rather than a pile of unreadable tags.
    """
    placed: list[tuple[int, int, int, int]] = []
    tags: list[tuple[int, int, int, int] | None] = []
    for (x1, y1, x2, y2), (tw, th) in zip(np.asarray(boxes, dtype=np.float64).round().astype(int), sizes):
        tw, th = min(tw, width), min(th, height)
        spots = [(x1, y1 - th), (x1, y1), (x1, y2), (x1, y2 - th),
                 (x2 - tw, y1 - th), (x2 - tw, y1), (x2 - tw, y2), (x2 - tw, y2 - th)]
        spots += [(x, y1 + k * th) for k in (-2, -3, 1, 2) for x in (x1, x2 - tw)]  # stacked further off
        best, best_cost = None, None
        for x, y in spots:
            x, y = min(max(x, 0), width - tw), min(max(y, 0), height - th)
            rect = (x, y, x + tw, y + th)
            cost = sum(_overlap(rect, p) for p in placed)
            if best_cost is None or cost < best_cost:
                best, best_cost = rect, cost
            if cost == 0:
                break
        tags.append(best if best_cost <= max_overlap * tw * th else None)
        if tags[-1] is not None:
            placed.append(best)
    return tags


def _draw_boxes(out: np.ndarray, boxes: np.ndarray, labels: np.ndarray, scores: np.ndarray | None,
                names: Mapping[int, str]) -> None:
    """Boxes and their tags onto the BGR image ``out`` (in place); tags last, so no box line crosses one."""
    h, w = out.shape[:2]
    thick = max(1, round(max(h, w) / 500))
    scale = max(0.45, 0.4 * thick)
    order = np.argsort(-scores, kind="stable") if scores is not None else np.arange(len(boxes))
    boxes, labels = np.asarray(boxes).reshape(-1, 4)[order], np.asarray(labels)[order]
    texts = [names.get(int(lab), str(int(lab))) + ("" if scores is None else f" {scores[i]:.2f}")
             for lab, i in zip(labels, order)]
    sizes = []
    for text in texts:
        (tw, th), base = cv2.getTextSize(text, _FONT, scale, 1)
        sizes.append((tw + 4, th + base + 4))
    for (x1, y1, x2, y2), label in zip(boxes.round().astype(int), labels):
        cv2.rectangle(out, (int(x1), int(y1)), (int(x2), int(y2)), _colour(int(label)), thick)
    for rect, text, label in zip(place_labels(boxes, sizes, h, w), texts, labels):
        if rect is None:
            continue
        x0, y0, x1, y1 = rect
        colour = _colour(int(label))
        cv2.rectangle(out, (x0, y0), (x1 - 1, y1 - 1), colour, -1)
        (_, th), base = cv2.getTextSize(text, _FONT, scale, 1)
        cv2.putText(out, text, (x0 + 2, y0 + 2 + th), _FONT, scale, _text_colour(colour), 1, cv2.LINE_AA)


def _title_bar(panel: np.ndarray, title: str) -> np.ndarray:
    w = panel.shape[1]
    scale = max(0.5, w / 1000)
    (_, th), base = cv2.getTextSize("Ag()>=", _FONT, scale, 1)  # one bar height for every title of this width
    bar = np.full((th + base + 12, w, 3), 255, np.uint8)
    scale *= min(1.0, (w - 12) / cv2.getTextSize(title, _FONT, scale, 1)[0][0])  # the title fits the panel
    cv2.putText(bar, title, (6, 6 + th), _FONT, scale, (0, 0, 0), 1, cv2.LINE_AA)
    return np.vstack([bar, panel])


def draw_detections(image_rgb: np.ndarray, boxes: np.ndarray, labels: np.ndarray, scores: np.ndarray,
                    names: Mapping[int, str], ground_truth: tuple[np.ndarray, np.ndarray] | None = None,
                    score_thresh: float | None = None, min_size: int = 0) -> np.ndarray:
    """Boxes with ``name score`` tags on a BGR copy of the image (for ``cv2.imwrite``).

    ``ground_truth=(boxes, labels)`` (xyxy pixels, same label space as ``labels``) puts a
    "ground truth" panel left of a "predictions" panel, each under a title bar with its count.
    An image whose longer side is under ``min_size`` is enlarged to it first (boxes with it),
    so that tags stay legible on thumbnails.
    """
    h, w = image_rgb.shape[:2]
    f = min_size / max(h, w) if max(h, w) < min_size else 1.0
    pred = cv2.cvtColor(np.ascontiguousarray(image_rgb), cv2.COLOR_RGB2BGR)
    if f != 1.0:
        pred = cv2.resize(pred, (round(w * f), round(h * f)), interpolation=cv2.INTER_LINEAR)
    base = pred.copy() if ground_truth is not None else None
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    _draw_boxes(pred, np.asarray(boxes, dtype=np.float64).reshape(-1, 4) * f, labels, scores, names)
    if ground_truth is None:
        return pred
    gt_boxes, gt_labels = ground_truth
    _draw_boxes(base, np.asarray(gt_boxes, dtype=np.float64).reshape(-1, 4) * f, gt_labels, None, names)
    thr = "" if score_thresh is None else f" >= {score_thresh:.2f}"
    left = _title_bar(base, f"ground truth ({len(np.asarray(gt_labels).reshape(-1))})")
    right = _title_bar(pred, f"predictions{thr} ({len(scores)})")
    gap = np.full((left.shape[0], max(4, pred.shape[1] // 100), 3), 255, np.uint8)
    return np.hstack([left, gap, right])


def blend_segmentation(image_rgb: np.ndarray, colour_rgb: np.ndarray, alpha: float) -> np.ndarray:
    """The palette image blended over the photo with opacity ``alpha`` (RGB uint8, no float copy of the image)."""
    return cv2.addWeighted(image_rgb, 1.0 - alpha, colour_rgb, alpha, 0.0)


def region_outlines(label_map: np.ndarray, thickness: int = 1) -> np.ndarray:
    """Boolean mask of the pixels on a boundary between two classes (``thickness`` px wide)."""
    m = np.asarray(label_map)
    edge = np.zeros(m.shape, dtype=np.uint8)
    edge[:, 1:] |= m[:, 1:] != m[:, :-1]
    edge[1:, :] |= m[1:, :] != m[:-1, :]
    if thickness > 1:
        edge = cv2.dilate(edge, np.ones((thickness, thickness), np.uint8))
    return edge.astype(bool)


def _palette(colours: np.ndarray | None) -> np.ndarray:
    if colours is not None:
        return np.asarray(colours, dtype=np.uint8)
    from mobiledense.datasets.cityscapes_labels import TRAIN_ID_COLORS

    return TRAIN_ID_COLORS


def _names(names: Sequence[str] | None) -> Sequence[str]:
    if names is not None:
        return names
    from mobiledense.datasets.cityscapes_labels import CLASS_NAMES

    return CLASS_NAMES


def _colourise(label_map: np.ndarray, palette: np.ndarray, ignore_index: int = 255) -> np.ndarray:
    lut = np.zeros((256, 3), np.uint8)  # ignore and unknown ids: black, as the official colour PNGs
    lut[: len(palette)] = palette
    lut[ignore_index] = 0
    return lut[np.asarray(label_map, dtype=np.uint8)]


def segmentation_legend(label_map: np.ndarray, width: int, names: Sequence[str] | None = None,
                        colours: np.ndarray | None = None, ignore_index: int = 255) -> np.ndarray:
    """A white RGB strip ``width`` px wide: swatch, name and pixel share of each class present.

    Classes are listed largest first and wrap onto as many rows as needed; ignored pixels
    (``ignore_index``, black in the colour image) get an "ignored" entry when present.
    """
    names, palette = _names(names), _palette(colours)
    ids, counts = np.unique(np.asarray(label_map), return_counts=True)
    total = max(int(counts.sum()), 1)
    entries = []
    for i, c in sorted(zip(ids.tolist(), counts.tolist()), key=lambda t: -t[1]):
        if i == ignore_index:
            entries.append(("ignored", (0, 0, 0), c))
        elif i < len(names):
            entries.append((names[i], tuple(int(v) for v in palette[i]), c))
        else:
            entries.append((f"class {i}", (0, 0, 0), c))
    scale = max(0.45, width / 1600)
    (_, th), base = cv2.getTextSize("Ag", _FONT, scale, 1)
    sw = th + base + 4  # swatch side
    pad = max(6, sw // 2)
    row_h = sw + pad
    cells, x, rows = [], pad, 0
    for name, colour, c in entries:
        text = f"{name} {100 * c / total:.1f}%" if c / total >= 0.001 else f"{name} <0.1%"
        tw = cv2.getTextSize(text, _FONT, scale, 1)[0][0]
        cell_w = sw + 4 + tw + 2 * pad
        if x + cell_w > width and x > pad:
            x, rows = pad, rows + 1
        cells.append((x, rows, text, colour))
        x += cell_w
    strip = np.full(((rows + 1) * row_h + pad, width, 3), 255, np.uint8)
    for x, r, text, colour in cells:
        y = pad + r * row_h
        cv2.rectangle(strip, (x, y), (x + sw - 1, y + sw - 1), colour, -1)
        cv2.rectangle(strip, (x, y), (x + sw - 1, y + sw - 1), (0, 0, 0), 1)  # a border: dark swatches stay visible
        cv2.putText(strip, text, (x + sw + 4, y + th + 2), _FONT, scale, (0, 0, 0), 1, cv2.LINE_AA)
    return strip


def segmentation_colour(label_map: np.ndarray, names: Sequence[str] | None = None, colours: np.ndarray | None = None,
                        legend: bool = True, ignore_index: int = 255) -> np.ndarray:
    """The palette image of ``label_map`` (RGB), with the legend strip below unless ``legend=False``."""
    colour = _colourise(label_map, _palette(colours), ignore_index)
    if not legend:
        return colour
    return np.vstack([colour, segmentation_legend(label_map, colour.shape[1], names, colours, ignore_index)])


def segmentation_overlay(image_rgb: np.ndarray, label_map: np.ndarray, alpha: float = 0.5,
                         names: Sequence[str] | None = None, colours: np.ndarray | None = None,
                         outline: bool = True, legend: bool = True, ignore_index: int = 255) -> np.ndarray:
    """The palette blended over the photo (opacity ``alpha``), region outlines in white at full opacity
    (1 px per 1024 px of width), and the legend strip below (RGB)."""
    if image_rgb.shape[:2] != np.asarray(label_map).shape[:2]:
        raise ValueError(f"image {image_rgb.shape[:2]} and label map {np.asarray(label_map).shape[:2]} differ in size")
    out = blend_segmentation(image_rgb, _colourise(label_map, _palette(colours), ignore_index), alpha)
    if outline:
        out[region_outlines(label_map, max(1, round(out.shape[1] / 1024)))] = 255
    if not legend:
        return out
    return np.vstack([out, segmentation_legend(label_map, out.shape[1], names, colours, ignore_index)])


def detection_panels(dataset: Any, results: Sequence[Mapping[str, Any]], count: int, score_thresh: float = 0.3,
                     min_size: int = 480) -> Iterator[tuple[Path, np.ndarray]]:
    """``(image path, BGR image)`` for the first ``count`` images of a :class:`CocoDetection` set:
    its ground truth left of the detections in ``results`` (official COCO results format, the
    set's category ids) scoring at least ``score_thresh``. Images are drawn at least
    ``min_size`` px on their longer side (thumbnails enlarged)."""
    by_image: dict[int, list[Mapping[str, Any]]] = {}
    for r in results:
        by_image.setdefault(int(r["image_id"]), []).append(r)
    names = dict(dataset.category_names)
    to_label = dataset.category_id_to_label
    for i in range(min(count, len(dataset))):
        target = dataset.raw_target(i)
        dets = [r for r in by_image.get(target["image_id"], []) if r["score"] >= score_thresh]
        boxes = np.array([[x, y, x + w, y + h] for x, y, w, h in (r["bbox"] for r in dets)],
                         dtype=np.float64).reshape(-1, 4)
        labels = np.array([to_label.get(int(r["category_id"]), -1) for r in dets], dtype=np.int64)
        scores = np.array([r["score"] for r in dets], dtype=np.float64)
        image = dataset.load_image(i)
        yield dataset.image_path(i), draw_detections(image, boxes, labels, scores, names,
                                                     ground_truth=(target["boxes"], target["labels"]),
                                                     score_thresh=score_thresh, min_size=min_size)


def classification_tile(image_rgb: np.ndarray, probs: np.ndarray, names: Sequence[str], label: int | None = None,
                        min_size: int = 192, top: int = 3) -> np.ndarray:
    """The image (enlarged to ``min_size`` px on its longer side when smaller) above its ``top`` classes with
    their probabilities; the first line is green when it is ``label``, red when not (RGB uint8). The tile is
    as wide as its longest line: a narrow image is centred on white, no text is cut."""
    h, w = image_rgb.shape[:2]
    f = min_size / max(h, w) if max(h, w) < min_size else 1.0
    img = cv2.resize(image_rgb, (round(w * f), round(h * f)), interpolation=cv2.INTER_NEAREST) if f != 1 else image_rgb
    order = np.argsort(-np.asarray(probs))[:top]
    scale = max(0.45, img.shape[1] / 450)
    (_, th), base = cv2.getTextSize("Ag", _FONT, scale, 1)
    line = th + base + 6
    lines = [f"{names[i]} {probs[i]:.2f}" for i in order]
    if label is not None and int(order[0]) != label:
        lines.append(f"true: {names[label]}")
    width = max(img.shape[1], max(cv2.getTextSize(t, _FONT, scale, 1)[0][0] for t in lines) + 8)
    bar = np.full((line * len(lines) + 6, width, 3), 255, np.uint8)
    for k, text in enumerate(lines):
        colour = (0, 0, 0)
        if k == 0 and label is not None:
            colour = (0, 140, 0) if int(order[0]) == label else (200, 0, 0)
        cv2.putText(bar, text, (4, 4 + k * line + th), _FONT, scale, colour, 1, cv2.LINE_AA)
    top_part = np.full((img.shape[0], width, 3), 255, np.uint8)  # a narrow image is centred above its text
    x0 = (width - img.shape[1]) // 2
    top_part[:, x0:x0 + img.shape[1]] = img
    return np.vstack([top_part, bar])
