"""Lite Reduced Atrous Spatial Pyramid Pooling (LR-ASPP).

Howard et al., "Searching for MobileNetV3", ICCV 2019, arXiv 1905.02244, §6.4 and
Fig. 10. Module names follow torchvision's ``LRASPPHead`` (``cbr``, ``scale``,
``low_classifier``, ``high_classifier``), so its checkpoints load through
:func:`~mobiledense.heads.convert.lraspp_from_torchvision`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, Mapping

import torch.nn.functional as F
from torch import Tensor, nn

from mobiledense.backbones import Backbone, BackboneEntry, create_backbone

from .convert import lraspp_weights
from .registry import backbone_kwargs, build_model_spec, create_model, register_head
from .segmenter import Segmenter
from .spec import PAPER_POOL_STRIDE, PAPER_TRAIN_CROP, LRASPPSpec, ModelSpec

__all__ = ["LRASPPHead", "LargeKernelAvgPool", "PAPER_TRAIN_CROP", "PAPER_POOL_STRIDE", "build_lraspp_model",
           "create_segmenter"]

PoolMode = Literal["global", "paper"]


class LargeKernelAvgPool(nn.Module):
    """Fig. 10's "49x49 avg pool, stride (16, 20)": a VALID average pool, not a global one.

    The kernel covers the whole feature map of the training crop, so training
    sees exactly global pooling, while at a larger test size (full 1024x2048
    Cityscapes frames) each gate value still pools a crop-sized window: train and
    test statistics agree (the reason DeepLab's ``image_pooling_crop_size``
    exists). Where the map is smaller than the kernel, the kernel shrinks to the
    map (global pooling along that side) instead of failing.
    """

    def __init__(self, kernel: tuple[int, int], stride: tuple[int, int]) -> None:
        super().__init__()
        self.kernel, self.stride = tuple(kernel), tuple(stride)

    def forward(self, x: Tensor) -> Tensor:
        kernel = (min(self.kernel[0], x.shape[-2]), min(self.kernel[1], x.shape[-1]))
        return F.avg_pool2d(x, kernel, self.stride)

    def extra_repr(self) -> str:
        return f"kernel={self.kernel}, stride={self.stride}"


class LRASPPHead(nn.Module):
    """Fig. 10: ``low_cls(low) + high_cls(up(cbr(high) * sigmoid(conv(pool(high)))))``.

    Args:
        low_channels, high_channels: channels of ``feats[low_stride]`` / ``feats[high_stride]``.
        num_classes: output channels.
        inter_channels: width of the high branch (128 in the paper's Table 7).
        low_stride, high_stride: feature strides read (8 and 16 in the paper).
        pool: ``"global"`` (torchvision: ``AdaptiveAvgPool2d(1)``) or ``"paper"``
            (:class:`LargeKernelAvgPool` + bilinear upsampling of the gate).
        pool_kernel, pool_stride: window of ``pool="paper"``, in feature-map pixels.

    Returns logits at ``low_stride``; both pooling modes share the same weights.
    """

    def __init__(self, low_channels: int, high_channels: int, num_classes: int,
                 inter_channels: int = 128, *, low_stride: int = 8, high_stride: int = 16,
                 pool: PoolMode = "global", pool_kernel: tuple[int, int] | None = None,
                 pool_stride: tuple[int, int] = PAPER_POOL_STRIDE) -> None:
        super().__init__()
        if pool == "global":
            pooling: nn.Module = nn.AdaptiveAvgPool2d(1)
        elif pool == "paper":
            if pool_kernel is None:
                raise ValueError("LRASPPHead(pool='paper') needs pool_kernel (see create_segmenter's train_crop)")
            pooling = LargeKernelAvgPool(pool_kernel, pool_stride)
        else:
            raise ValueError(f"LRASPPHead pool must be 'global' or 'paper', got {pool!r}")
        self.low_stride, self.high_stride, self.pool = low_stride, high_stride, pool
        self.cbr = nn.Sequential(
            nn.Conv2d(high_channels, inter_channels, 1, bias=False),
            nn.BatchNorm2d(inter_channels),
            nn.ReLU(inplace=True),
        )
        self.scale = nn.Sequential(pooling, nn.Conv2d(high_channels, inter_channels, 1, bias=False), nn.Sigmoid())
        self.low_classifier = nn.Conv2d(low_channels, num_classes, 1)
        self.high_classifier = nn.Conv2d(inter_channels, num_classes, 1)

    def forward(self, feats: Mapping[int, Tensor]) -> Tensor:
        low, high = feats[self.low_stride], feats[self.high_stride]
        x = self.cbr(high)
        gate = self.scale(high)
        if self.pool == "paper":
            gate = F.interpolate(gate, size=x.shape[-2:], mode="bilinear", align_corners=False)
        x = F.interpolate(x * gate, size=low.shape[-2:], mode="bilinear", align_corners=False)
        return self.low_classifier(low) + self.high_classifier(x)


def _lraspp_defaults(spec: ModelSpec, entry: BackboneEntry) -> tuple[int, dict[int, str]]:
    """Output stride 16 (§6.4) where the family declares it, else its native one; the low-branch tap."""
    output_stride = 16 if 16 in entry.output_strides else max(entry.output_strides)
    return output_stride, ({8: "first"} if spec.head.low_tap == "first" else {})


@register_head("lraspp", task="seg", spec=LRASPPSpec, backbone_defaults=_lraspp_defaults, convert=lraspp_weights)
def build_lraspp_model(spec: ModelSpec, weights_backbone: str | Path | None = None) -> Segmenter:
    """LR-ASPP of a resolved spec: low = ``feats[8]``, high = the deepest feature.

    ``low_tap="first"`` reads the low branch from the first stride-8 block
    (``taps={8: "first"}``), as torchvision does ("C2", so its checkpoints give identical
    outputs); ``"deepest"`` from the last one. With ``pool="paper"`` the pooling kernel is
    ``ceil(train_crop / high_stride)``: the whole high map of a training crop (49x49 for
    769x769 at stride 16, Fig. 10).
    """
    h, b = spec.head, spec.backbone
    net: Backbone = create_backbone(b.name, weights=weights_backbone, **backbone_kwargs(b))
    low, high = 8, max(net.channels)
    if low not in net.channels or high <= low:
        raise ValueError(
            f"LR-ASPP reads feats[8] and a deeper feature; backbone {b.name!r} at "
            f"output_stride={b.output_stride} returns strides {net.strides} (use output_stride 16 or 32)"
        )
    kernel = (-(-h.train_crop[0] // high), -(-h.train_crop[1] // high))
    head = LRASPPHead(net.channels[low], net.channels[high], spec.num_classes, h.inter_channels,
                      low_stride=low, high_stride=high, pool=h.pool, pool_kernel=kernel, pool_stride=h.pool_stride)
    return Segmenter(net, head, spec.num_classes, normalize=h.normalize)


def create_segmenter(backbone: str, num_classes: int = 19, *, weights: str | Path | None = None,
                     weights_backbone: str | Path | None = None, **options: Any) -> Segmenter:
    """LR-ASPP on any registered backbone, e.g. ``create_segmenter("shufflenet_v2_x1_0", 19, pool="paper")``.

    ``options`` are spec options (:func:`~mobiledense.heads.build_model_spec`): backbone ones
    (``width_mult``, ``reduced_tail``, ``output_stride`` ...) and
    :class:`~mobiledense.heads.spec.LRASPPSpec` fields (``pool``, ``train_crop``, ``low_tap`` ...).
    ``weights``: the whole model (ours, or torchvision's LR-ASPP keys); ``weights_backbone``:
    a local ImageNet checkpoint of the backbone.
    """
    spec = build_model_spec("seg", "lraspp", backbone, num_classes, **options)
    return create_model(spec, weights=weights, weights_backbone=weights_backbone)
