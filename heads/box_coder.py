"""SSD box coder: boxes <-> (dx, dy, dw, dh) offsets from default boxes.

SSD (arXiv 1512.02325) eq. 2 regresses the centre offset relative to the
default box size and the log of the size ratio; the "variances" (0.1, 0.2) of
the SSD/TF code are the weights (10, 10, 5, 5) here (1/0.1, 1/0.2). Formulas and
operation order are torchvision's ``det_utils.BoxCoder``, vectorised over any
leading batch dimensions, so outputs are bit-for-bit equal
(``tests/heads/test_box_coder.py``).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = ["BoxCoder"]


def _centre_size(boxes: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    w = boxes[..., 2] - boxes[..., 0]
    h = boxes[..., 3] - boxes[..., 1]
    return boxes[..., 0] + 0.5 * w, boxes[..., 1] + 0.5 * h, w, h


class BoxCoder:
    """Encode xyxy boxes as offsets from xyxy anchors and back.

    Args:
        weights: multipliers of (dx, dy, dw, dh); SSD uses (10, 10, 5, 5).
        bbox_xform_clip: upper clamp of dw/dh before ``exp`` (torchvision's log(1000/16)).
    """

    def __init__(
        self,
        weights: tuple[float, float, float, float] = (10.0, 10.0, 5.0, 5.0),
        bbox_xform_clip: float = math.log(1000.0 / 16),
    ) -> None:
        self.weights = tuple(float(w) for w in weights)
        self.bbox_xform_clip = bbox_xform_clip

    def encode(self, boxes: Tensor, anchors: Tensor) -> Tensor:
        """Offsets (..., 4) that move ``anchors`` onto ``boxes`` (shapes broadcast)."""
        wx, wy, ww, wh = self.weights
        ax, ay, aw, ah = _centre_size(anchors)
        gx, gy, gw, gh = _centre_size(boxes)
        dx, dy = wx * (gx - ax) / aw, wy * (gy - ay) / ah
        return torch.stack((dx, dy, ww * torch.log(gw / aw), wh * torch.log(gh / ah)), dim=-1)

    def decode(self, deltas: Tensor, anchors: Tensor) -> Tensor:
        """xyxy boxes (..., 4) from offsets ``deltas`` (..., 4) and ``anchors`` (broadcastable)."""
        anchors = anchors.to(deltas.dtype)
        wx, wy, ww, wh = self.weights
        ax, ay, aw, ah = _centre_size(anchors)
        dx, dy = deltas[..., 0] / wx, deltas[..., 1] / wy
        dw = torch.clamp(deltas[..., 2] / ww, max=self.bbox_xform_clip)
        dh = torch.clamp(deltas[..., 3] / wh, max=self.bbox_xform_clip)
        cx, cy = dx * aw + ax, dy * ah + ay
        half_w, half_h = 0.5 * (torch.exp(dw) * aw), 0.5 * (torch.exp(dh) * ah)
        return torch.stack((cx - half_w, cy - half_h, cx + half_w, cy + half_h), dim=-1)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(weights={self.weights}, bbox_xform_clip={self.bbox_xform_clip:.4f})"
