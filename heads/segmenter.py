"""``Segmenter``: backbone + dense decoder, images in [0, 1] in, logits at input size out.

The wrapper owns what every segmentation model shares (input checks, ImageNet
normalisation, the final bilinear upsampling), so decoders stay small: a decoder
maps the backbone's ``dict[stride, Tensor]`` to logits at some stride.
"""

from __future__ import annotations

from typing import Protocol

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mobiledense.backbones import Backbone

__all__ = ["Segmenter", "Decoder", "check_image_batch", "Normalize", "IMAGENET_MEAN", "IMAGENET_STD",
           "upsampled_argmax"]

#: ImageNet statistics of RGB images in [0, 1] (torchvision's classifier preset).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def check_image_batch(x: Tensor, owner: str) -> None:
    """Raise an error that says what to fix for a malformed image batch."""
    if not isinstance(x, Tensor):
        raise TypeError(f"{owner} expects a Tensor batch, got {type(x).__name__}")
    if x.dim() != 4:
        raise ValueError(
            f"{owner} expects a 4-D batch (N, 3, H, W), got shape {tuple(x.shape)}"
            + ("; add a batch dimension with x.unsqueeze(0)" if x.dim() == 3 else "")
        )
    if x.shape[1] != 3:
        raise ValueError(f"{owner} expects 3 input channels (RGB, NCHW), got {x.shape[1]} "
                         f"(shape {tuple(x.shape)})")
    if not x.is_floating_point():
        raise TypeError(f"{owner} expects float images in [0, 1], got dtype {x.dtype}; "
                        "convert with x.float() / 255")


class Normalize(nn.Module):
    """``(x - mean) / std`` with ImageNet statistics, for float RGB in [0, 1]."""

    def __init__(self, mean: tuple[float, ...] = IMAGENET_MEAN, std: tuple[float, ...] = IMAGENET_STD) -> None:
        super().__init__()
        # Not persistent: checkpoints hold only learnt weights (torchvision key parity).
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1), persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        return (x - self.mean.to(x.dtype)) / self.std.to(x.dtype)


class Decoder(Protocol):
    """What :class:`Segmenter` needs from a decoder (any ``nn.Module`` with this call)."""

    def __call__(self, feats: dict[int, Tensor]) -> Tensor: ...


class Segmenter(nn.Module):
    """Semantic segmentation model: ``upsample(decoder(backbone(normalize(x))))``.

    Args:
        backbone: a :class:`~mobiledense.backbones.Backbone` (``forward -> dict[stride, Tensor]``).
        decoder: module mapping the feature dict to ``(N, num_classes, h, w)`` logits.
        num_classes: number of output channels (19 for Cityscapes trainIds).
        normalize: subtract the ImageNet mean and divide by the std inside the
            model, so callers feed float RGB in [0, 1] (set False if the data
            pipeline already normalises).

    ``forward(x)`` takes ``(N, 3, H, W)`` float images and returns
    ``(N, num_classes, H, W)`` logits, bilinearly upsampled to the input size.
    """

    def __init__(self, backbone: Backbone, decoder: nn.Module, num_classes: int,
                 normalize: bool = True) -> None:
        super().__init__()
        self.backbone = backbone
        self.decoder = decoder
        self.num_classes = num_classes
        self.normalize = Normalize() if normalize else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        check_image_batch(x, "Segmenter")
        size = x.shape[-2:]
        logits = self.decoder(self.backbone(self.normalize(x)))
        return F.interpolate(logits, size=size, mode="bilinear", align_corners=False)


def upsampled_argmax(logits: Tensor, size: tuple[int, int], max_elements: int = 2**24,
                     dtype: torch.dtype = torch.int64) -> Tensor:
    """``F.interpolate(logits, size, bilinear).argmax(1)`` in row strips of at most ``max_elements`` values.

    Labels of an 8000x8000 photo from 19-class logits would need 4.9 GB of float32 at full
    size; strip by strip the peak stays ~64 MB. Rows are interpolated with PyTorch's own
    ``align_corners=False`` source coordinates, columns by ``F.interpolate`` itself, so the
    result equals the one-shot path up to float rounding (a rare argmax tie). Outputs that fit
    ``max_elements`` take the one-shot path.

    Args:
        logits: (N, C, h, w). size: output (H, W). dtype: of the labels (``uint8`` for up to 256
            classes: an eighth of int64's memory at full size).
    """
    n, c, h, w = logits.shape
    height, width = size
    if n * c * height * width <= max_elements:
        return F.interpolate(logits, size=size, mode="bilinear", align_corners=False).argmax(1).to(dtype)
    rows = max(1, max_elements // (n * c * width))
    out = torch.empty((n, height, width), dtype=dtype, device=logits.device)
    scale = h / height
    for y0 in range(0, height, rows):
        y = torch.arange(y0, min(y0 + rows, height), device=logits.device, dtype=torch.float32)
        src = ((y + 0.5) * scale - 0.5).clamp(min=0)
        i0 = src.long().clamp(max=h - 1)
        i1 = (i0 + 1).clamp(max=h - 1)
        lam = (src - i0).view(1, 1, -1, 1)
        strip = logits[:, :, i0] * (1 - lam) + logits[:, :, i1] * lam  # (N, C, rows, w)
        strip = F.interpolate(strip, size=(len(y), width), mode="bilinear", align_corners=False)
        out[:, y0:y0 + len(y)] = strip.argmax(1)
    return out
