"""Segmentation inference modes: whole image, sliding window, multi-scale + flip test-time augmentation.

Wrappers around a segmenter ``model(x) -> (N, K, H, W)`` logits at the input size, so the
evaluators and tools take them in its place:

* :class:`SlidingWindow`: MMSegmentation's ``slide`` mode. Windows of ``crop`` every ``stride``
  cover the image (the last row/column of windows is shifted back to end at the border, as in
  ``EncoderDecoder.slide_inference``); each window's logits are added where it lies and every
  pixel is divided by the number of windows that saw it.
* :class:`MultiScaleFlip`: the image resized by each of ``scales`` (bilinear; antialiased when
  shrinking), optionally also mirrored; each pass (whole or sliding) is resized back to the input
  size and its softmax averaged, as MMSegmentation's ``SegTTAModel`` averages probabilities.
  Output: averaged probabilities (argmax like logits).

:func:`inference_mode` builds the wrapper a mode name asks for.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["SlidingWindow", "MultiScaleFlip", "inference_mode", "slide_windows", "MODES", "DEFAULT_TTA_SCALES"]

MODES = ("whole", "slide", "tta", "slide+tta")
#: MMSegmentation's Cityscapes TTA ratios.
DEFAULT_TTA_SCALES = (0.5, 0.75, 1.0, 1.25, 1.5, 1.75)


def _pair(v: int | Sequence[int], name: str) -> tuple[int, int]:
    h, w = (v, v) if isinstance(v, int) else tuple(int(x) for x in v)
    if h < 1 or w < 1:
        raise ValueError(f"{name} must be positive, got {v}")
    return h, w


def slide_windows(h: int, w: int, crop: tuple[int, int], stride: tuple[int, int]) -> list[tuple[int, int, int, int]]:
    """``(y1, y2, x1, x2)`` of every window, in MMSegmentation's order and placement."""
    (hc, wc), (hs, ws) = crop, stride
    h_grids = max(h - hc + hs - 1, 0) // hs + 1
    w_grids = max(w - wc + ws - 1, 0) // ws + 1
    out = []
    for hi in range(h_grids):
        for wi in range(w_grids):
            y1, x1 = hi * hs, wi * ws
            y2, x2 = min(y1 + hc, h), min(x1 + wc, w)
            y1, x1 = max(y2 - hc, 0), max(x2 - wc, 0)
            out.append((y1, y2, x1, x2))
    return out


class SlidingWindow(nn.Module):
    """``model`` over ``crop`` windows every ``stride`` pixels, logits averaged where windows overlap.

    ``batch`` windows go through the network at once (all of one image have the same size unless
    the image is smaller than ``crop``, when the single window is the image itself).
    """

    def __init__(self, model: nn.Module, crop: int | Sequence[int], stride: int | Sequence[int] | None = None,
                 batch: int = 4) -> None:
        super().__init__()
        self.model = model
        self.crop = _pair(crop, "crop")
        self.stride = _pair(stride, "stride") if stride is not None else (
            max(1, round(self.crop[0] * 2 / 3)), max(1, round(self.crop[1] * 2 / 3)))
        if self.stride[0] > self.crop[0] or self.stride[1] > self.crop[1]:
            raise ValueError(f"stride {self.stride} larger than the crop {self.crop} would leave pixels unseen")
        self.batch = max(1, int(batch))
        self.num_classes = getattr(model, "num_classes", None)

    def forward(self, x: Tensor) -> Tensor:
        n, _, h, w = x.shape
        windows = slide_windows(h, w, self.crop, self.stride)
        out: Tensor | None = None
        count = x.new_zeros(1, 1, h, w)
        for y1, y2, x1, x2 in windows:
            count[..., y1:y2, x1:x2] += 1
        for i in range(n):
            img = x[i:i + 1]
            for k in range(0, len(windows), self.batch):
                chunk = windows[k:k + self.batch]
                logits = self.model(torch.cat([img[..., y1:y2, x1:x2] for y1, y2, x1, x2 in chunk]))
                if out is None:
                    out = x.new_zeros(n, logits.shape[1], h, w)
                for j, (y1, y2, x1, x2) in enumerate(chunk):
                    out[i, :, y1:y2, x1:x2] += logits[j]
        assert out is not None
        return out / count


class MultiScaleFlip(nn.Module):
    """Average of ``softmax(model(resize(x, s)))`` (and of the mirrored image, mirrored back) over ``scales``,
    each resized back to the input size before the softmax."""

    def __init__(self, model: nn.Module, scales: Sequence[float] = DEFAULT_TTA_SCALES, flip: bool = True) -> None:
        super().__init__()
        if not scales or any(s <= 0 for s in scales):
            raise ValueError(f"scales must be positive numbers, got {list(scales)}")
        self.model, self.scales, self.flip = model, tuple(float(s) for s in scales), bool(flip)
        self.num_classes = getattr(model, "num_classes", None)

    def forward(self, x: Tensor) -> Tensor:
        h, w = x.shape[-2:]
        total: Tensor | None = None
        passes = 0
        for s in self.scales:
            size = (max(1, round(h * s)), max(1, round(w * s)))
            xs = x if size == (h, w) else F.interpolate(x, size=size, mode="bilinear", align_corners=False,
                                                         antialias=s < 1)
            for flipped in ((False, True) if self.flip else (False,)):
                logits = self.model(xs.flip(-1) if flipped else xs)
                if flipped:
                    logits = logits.flip(-1)
                if logits.shape[-2:] != (h, w):
                    logits = F.interpolate(logits, size=(h, w), mode="bilinear", align_corners=False)
                probs = logits.float().softmax(1)
                total = probs if total is None else total + probs
                passes += 1
        assert total is not None
        return total / passes


def inference_mode(model: nn.Module, mode: str = "whole", *, crop: int | Sequence[int] | None = None,
                   stride: int | Sequence[int] | None = None, scales: Sequence[float] = DEFAULT_TTA_SCALES,
                   flip: bool = True) -> nn.Module:
    """``model`` for ``mode``: ``whole`` (as is), ``slide`` (needs ``crop``), ``tta``, ``slide+tta``."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
    if mode == "whole":
        return model
    inner = model
    if "slide" in mode:
        if crop is None:
            raise ValueError("slide mode needs a crop size (the run's training crop by default)")
        inner = SlidingWindow(model, crop, stride)
    return MultiScaleFlip(inner, scales, flip) if "tta" in mode else inner
