"""Overlays: predictions drawn on the images (OpenCV, BGR arrays ready for ``cv2.imwrite``)."""

from __future__ import annotations

import cv2
import numpy as np

__all__ = ["draw_detections", "blend_segmentation"]


def _colour(label: int) -> tuple[int, int, int]:
    rng = np.random.default_rng(label * 7919 + 17)
    return tuple(int(c) for c in rng.integers(64, 256, 3))


def draw_detections(image_rgb: np.ndarray, boxes: np.ndarray, labels: np.ndarray, scores: np.ndarray,
                    names: dict[int, str]) -> np.ndarray:
    """Boxes with ``name score`` tags drawn on a BGR copy of the image (for cv2.imwrite)."""
    out = cv2.cvtColor(image_rgb, cv2.COLOR_RGB2BGR)
    thick = max(1, round(max(out.shape[:2]) / 400))
    for (x1, y1, x2, y2), label, score in zip(boxes.round().astype(int), labels, scores):
        colour = _colour(int(label))
        cv2.rectangle(out, (x1, y1), (x2, y2), colour, thick)
        text = f"{names.get(int(label), str(int(label)))} {score:.2f}"
        (tw, th), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, 0.4 * thick, 1)
        top = max(y1 - th - base - 2, 0)
        cv2.rectangle(out, (x1, top), (x1 + tw + 2, top + th + base + 2), colour, -1)
        cv2.putText(out, text, (x1 + 1, top + th + 1), cv2.FONT_HERSHEY_SIMPLEX, 0.4 * thick, (0, 0, 0), 1,
                    cv2.LINE_AA)
    return out


def blend_segmentation(image_rgb: np.ndarray, colour_rgb: np.ndarray, alpha: float) -> np.ndarray:
    """The palette image blended over the photo with opacity ``alpha`` (RGB uint8, no float copy of the image)."""
    return cv2.addWeighted(image_rgb, 1.0 - alpha, colour_rgb, alpha, 0.0)
