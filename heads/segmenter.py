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

__all__ = ["Segmenter", "Decoder", "boundary_cells", "check_image_batch", "coarse_logits", "Normalize", "IMAGENET_MEAN", "IMAGENET_STD",
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

    #: :meth:`decode` returns logits at the decoder's stride, which :meth:`forward` upsamples bilinearly.
    decodes_at_stride = True

    def decode(self, x: Tensor) -> Tensor:
        """The decoder's logits (N, C, h, w) at its output stride, before the final upsampling."""
        check_image_batch(x, "Segmenter")
        return self.decoder(self.backbone(self.normalize(x)))

    def forward(self, x: Tensor) -> Tensor:
        return F.interpolate(self.decode(x), size=x.shape[-2:], mode="bilinear", align_corners=False)

    def labels(self, x: Tensor, size: tuple[int, int] | None = None, dtype: torch.dtype = torch.int64) -> Tensor:
        """Class ids (N, H, W): ``forward(x).argmax(1)`` when ``size`` is None (the input's size), else of
        the logits upsampled once from the decoder to ``size``, interpolated only near class boundaries
        (:func:`upsampled_argmax`)."""
        return upsampled_argmax(self.decode(x), tuple(size or x.shape[-2:]), dtype=dtype)


def coarse_logits(model: nn.Module, x: Tensor) -> Tensor:
    """The logits a label map of ``model`` on ``x`` is upsampled from: the decoder's (``model.decode``,
    at its stride) when the model has one (``decodes_at_stride``), else ``model(x)``. Labels at any
    size are then ``upsampled_argmax(coarse_logits(model, x), size)``: one bilinear upsampling."""
    return model.decode(x) if getattr(model, "decodes_at_stride", False) else model(x)


def upsampled_argmax(logits: Tensor, size: tuple[int, int], max_elements: int = 2**24,
                     dtype: torch.dtype = torch.int64) -> Tensor:
    """``F.interpolate(logits, size, mode="bilinear").argmax(1)``, interpolating only where it can matter.

    A bilinear output pixel is a convex combination of its 2x2 source pixels; when all four
    have the same argmax ``k`` (``k`` scores above every other class at each of them), so does
    the combination. So the labels are the low-resolution argmax, looked up, everywhere but
    near class boundaries; there the logits are interpolated (PyTorch's ``align_corners=False``
    source coordinates and weights: rows for every output row, cheap at the source width, then
    columns only at those pixels) and argmaxed. The result equals the one-shot path up to float
    rounding (a near-tie between two classes). When most source cells lie on a boundary (noise,
    untrained weights) every class channel is upsampled instead, which is then faster.

    Rows go in strips of at most ``max_elements`` values of the dense path: labels of an
    8000x8000 photo from 19-class logits would need 4.9 GB of float32 logits at full size.

    Args:
        logits: (N, C, h, w). size: output (H, W). dtype: of the labels (``uint8`` for up to 256
            classes: an eighth of int64's memory at full size).
    """
    n, c, h, w = logits.shape
    height, width = size
    if (h, w) == (height, width):
        return _argmax1(logits).to(dtype)
    device = logits.device
    i0, i1, wy = _source_index(h, height, device)
    j0, j1, wx = _source_index(w, width, device)
    low = _argmax1(logits)  # (N, h, w)
    disagree = boundary_cells(low)
    dense = disagree.float().mean().item() > _DENSE_FRACTION
    if dense and n * c * height * width <= max_elements:
        return _argmax1(F.interpolate(logits, size=size, mode="bilinear", align_corners=False)).to(dtype)
    out = torch.empty((n, height, width), dtype=dtype, device=device)
    rows = max(1, max_elements // max(1, n * c * width))
    by_class = None if dense else logits.transpose(0, 1).float()  # (C, N, h, w): rows interpolate per class
    low = low.to(dtype)
    for y0 in range(0, height, rows):
        ys = slice(y0, min(y0 + rows, height))
        if dense:
            out[:, ys] = _argmax1(_interpolate_rows(logits, i0[ys], i1[ys], wy[ys], width))
            continue
        r0 = i0[ys]
        labels = low.index_select(1, r0).index_select(2, j0)
        b, py, px = torch.nonzero(disagree.index_select(1, r0).index_select(2, j0), as_tuple=True)
        if len(b):
            # Rows: (C, N * rows * w) at the source width; then the two columns of each pixel.
            vertical = torch.lerp(by_class[:, :, r0], by_class[:, :, i1[ys]], wy[ys].view(1, 1, -1, 1))
            vertical = vertical.reshape(c, -1)
            at = (b * (ys.stop - ys.start) + py) * w
            left, right_ = vertical.index_select(1, at + j0[px]), vertical.index_select(1, at + j1[px])
            labels[b, py, px] = torch.lerp(left, right_, wx[px]).max(0).indices.to(dtype)
        out[:, ys] = labels
    return out


def boundary_cells(labels: Tensor) -> Tensor:
    """(N, h, w) bool: the 2x2 cells of an (N, h, w) label map (clamped at the last row / column, as bilinear
    sources are) whose labels disagree: where :func:`upsampled_argmax` interpolates."""
    h, w = labels.shape[-2:]
    down, right = (torch.arange(1, k + 1, device=labels.device).clamp(max=k - 1) for k in (h, w))
    below = labels[:, down]
    return (labels != labels[:, :, right]) | (labels != below) | (labels != below[:, :, right])


def _argmax1(x: Tensor) -> Tensor:
    """``x.argmax(1)`` (first maximum on ties), as ``x.max(1).indices``: PyTorch's CPU argmax over a
    non-innermost dimension of NCHW logits is ~8x slower than its max (94 vs 12 ms at 19x512x1024)."""
    return x.max(1).indices


#: :func:`upsampled_argmax` upsamples every class channel when more source cells than this lie on a boundary
#: (measured on 2 cores, 19 classes, 64x128 -> 512x1024: the boundary-only path takes 12 ms at 16 % of the
#: cells, the dense one 17-20 ms at any; they cross near 22 %; Cityscapes labels at stride 8 have 12-21 %).
_DENSE_FRACTION = 0.25


def _source_index(in_size: int, out_size: int, device: torch.device) -> tuple[Tensor, Tensor, Tensor]:
    """PyTorch's bilinear ``align_corners=False`` sources of ``out_size`` outputs: (index0, index1, weight1)."""
    scale = torch.tensor(in_size / out_size, dtype=torch.float32)
    src = ((torch.arange(out_size, dtype=torch.float32) + 0.5) * scale - 0.5).clamp(min=0)
    i0 = src.long().clamp(max=in_size - 1)
    i1 = (i0 + 1).clamp(max=in_size - 1)
    weight = (src - i0).clamp(0, 1)
    return i0.to(device), i1.to(device), weight.to(device)


def _interpolate_rows(logits: Tensor, i0: Tensor, i1: Tensor, wy: Tensor, width: int) -> Tensor:
    """Bilinear rows ``i0``/``i1`` (weight ``wy``) of ``logits``, columns by ``F.interpolate``: (N, C, rows, width)."""
    lam = wy.view(1, 1, -1, 1)
    strip = logits[:, :, i0] * (1 - lam) + logits[:, :, i1] * lam
    return F.interpolate(strip, size=(len(i0), width), mode="bilinear", align_corners=False)
