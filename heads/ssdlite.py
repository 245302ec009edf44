"""SSDLite building blocks: the prediction head, the extra feature layers, and the parts builder.

SSDLite is SSD with every regular convolution of the prediction layers replaced by
a separable one (MobileNetV2 paper, arXiv 1801.04381, §6.2); MobileNetV3 (arXiv
1905.02244, §6.3) attaches it to the expansion layer of the last stride-16 block
(C4) and to the last 1x1 conv (C5), then adds the extra layers below. Module names
and initialisation follow torchvision's ``models/detection/ssdlite.py`` so its
checkpoints map onto ours by prefix (see :func:`~mobiledense.heads.convert.from_torchvision_ssdlite`).
:func:`ssdlite_parts` makes the extra layers, default boxes and head from a
backbone's declared channels, for :class:`~mobiledense.heads.detector.SSDLite`.
"""

from __future__ import annotations

import math
from functools import partial
from typing import Callable, Sequence

import torch
from torch import Tensor, nn
from torchvision.ops.misc import Conv2dNormActivation

from mobiledense.backbones import Backbone

from .anchors import DefaultBoxes

__all__ = [
    "BatchNorm",
    "FOCAL_PRIOR_BIAS",
    "prediction_block",
    "extra_block",
    "extra_blocks",
    "extra_channels",
    "feature_strides",
    "ScoringHead",
    "SSDLiteHead",
    "normal_init",
    "ssdlite_parts",
]

#: torchvision's ssdlite320_mobilenet_v3_large norm layer (TF Object Detection API numbers).
BatchNorm = partial(nn.BatchNorm2d, eps=0.001, momentum=0.03)

#: Extra-layer depths before the width multiplier (MobileNetV2 §6.2 / TF ``ssdlite`` configs).
EXTRA_DEPTHS: tuple[int, ...] = (512, 256, 256, 128)

#: Initial class bias for focal loss: the foreground prior 0.01 of RetinaNet (arXiv 1708.02002, §4.1).
FOCAL_PRIOR_BIAS = -math.log((1 - 0.01) / 0.01)


def prediction_block(in_ch: int, out_ch: int,
                     norm_layer: Callable[..., nn.Module] = BatchNorm) -> nn.Sequential:
    """3x3 depthwise + BN + ReLU6, then a 1x1 conv with bias to the predictions."""
    return nn.Sequential(
        Conv2dNormActivation(in_ch, in_ch, 3, groups=in_ch, norm_layer=norm_layer, activation_layer=nn.ReLU6),
        nn.Conv2d(in_ch, out_ch, 1),
    )


def extra_block(in_ch: int, out_ch: int, norm_layer: Callable[..., nn.Module] = BatchNorm) -> nn.Sequential:
    """1x1 to ``out_ch // 2`` -> 3x3 depthwise stride 2 -> 1x1 to ``out_ch``; BN + ReLU6 after each."""
    mid = out_ch // 2
    conv = partial(Conv2dNormActivation, norm_layer=norm_layer, activation_layer=nn.ReLU6)
    return nn.Sequential(conv(in_ch, mid, 1), conv(mid, mid, 3, stride=2, groups=mid), conv(mid, out_ch, 1))


def extra_blocks(
    in_ch: int,
    width_mult: float = 1.0,
    min_depth: int = 16,
    norm_layer: Callable[..., nn.Module] = BatchNorm,
    depths: Sequence[int] = EXTRA_DEPTHS,
) -> nn.ModuleList:
    """The 4 extra layers on top of C5 (strides 64, 128, 256, 512), ``max(min_depth, d * width)`` wide."""
    out = [max(min_depth, int(d * width_mult)) for d in depths]
    blocks = nn.ModuleList(extra_block(i, o, norm_layer) for i, o in zip([in_ch] + out[:-1], out))
    normal_init(blocks)
    return blocks


def extra_channels(extra: nn.ModuleList) -> list[int]:
    """Output channels of each extra layer (its last ``Conv2dNormActivation``)."""
    return [block[-1].out_channels for block in extra]


def normal_init(module: nn.Module, std: float = 0.03) -> None:
    """Every conv ~ N(0, std), biases 0: torchvision's ``_normal_init`` (TF ``truncated_normal`` 0.03)."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.normal_(m.weight, mean=0.0, std=std)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


class ScoringHead(nn.Module):
    """One prediction block per level; (N, B*K, H, W) maps -> one (N, sum HWB, K) tensor."""

    def __init__(self, module_list: nn.ModuleList, num_columns: int) -> None:
        super().__init__()
        self.module_list = module_list
        self.num_columns = num_columns

    def forward(self, features: Sequence[Tensor]) -> Tensor:
        if len(features) != len(self.module_list):
            raise ValueError(f"head has {len(self.module_list)} levels, got {len(features)} feature maps")
        outs = []
        for x, block in zip(features, self.module_list):
            y = block(x)
            n, _, h, w = y.shape
            # (N, B*K, H, W) -> (N, H, W, B, K) -> (N, HWB, K): location-major, as DefaultBoxes.
            y = y.view(n, -1, self.num_columns, h, w).permute(0, 3, 4, 1, 2)
            outs.append(y.reshape(n, -1, self.num_columns))
        return torch.cat(outs, dim=1)


class SSDLiteHead(nn.Module):
    """Classification and box-regression heads over all levels (separable predictors).

    Args:
        in_channels: channels of each feature map.
        num_anchors: default boxes per location of each level.
        num_classes: classes including background (index 0).
        norm_layer: BN factory of the depthwise convs.
        cls_bias: initial bias of the classification convs (0; the focal-loss prior
            ``-log((1 - 0.01) / 0.01)`` of RetinaNet §4.1 when training with focal loss).
    """

    def __init__(
        self,
        in_channels: Sequence[int],
        num_anchors: Sequence[int],
        num_classes: int,
        norm_layer: Callable[..., nn.Module] = BatchNorm,
        cls_bias: float = 0.0,
    ) -> None:
        super().__init__()
        if len(in_channels) != len(num_anchors):
            raise ValueError(f"{len(in_channels)} feature maps but anchors for {len(num_anchors)} levels")
        self.in_channels, self.num_anchors, self.num_classes = list(in_channels), list(num_anchors), num_classes
        levels = list(zip(in_channels, num_anchors))
        cls = nn.ModuleList(prediction_block(c, num_classes * b, norm_layer) for c, b in levels)
        reg = nn.ModuleList(prediction_block(c, 4 * b, norm_layer) for c, b in levels)
        normal_init(cls)
        normal_init(reg)
        for block in cls:
            nn.init.constant_(block[1].bias, cls_bias)
        self.classification_head = ScoringHead(cls, num_classes)
        self.regression_head = ScoringHead(reg, 4)

    def forward(self, features: Sequence[Tensor]) -> dict[str, Tensor]:
        return {
            "bbox_regression": self.regression_head(features),
            "cls_logits": self.classification_head(features),
        }


def feature_strides(backbone: Backbone) -> tuple[int, int]:
    """(C4, C5) strides: the backbone's deepest stride and half of it; it must be undilated."""
    name = type(backbone).__name__
    channels = getattr(backbone, "channels", None)
    if not channels:
        raise ValueError(f"SSDLite needs a Backbone with declared channels; {name} has none")
    native = max(getattr(backbone, "supported_output_strides", (backbone.output_stride,)))
    if backbone.output_stride != native:
        raise ValueError(f"SSDLite needs an undilated backbone: build {name} with output_stride={native} "
                         f"(got output_stride={backbone.output_stride})")
    c5 = max(channels)
    if c5 // 2 not in channels:
        raise ValueError(
            f"SSDLite reads strides {c5 // 2} and {c5}, but {name}.channels has {sorted(channels)}")
    return c5 // 2, c5


def ssdlite_parts(
    backbone: Backbone, num_classes: int, *, width_mult: float = 1.0, min_depth: int = 16,
    norm_layer: Callable[..., nn.Module] = BatchNorm, min_ratio: float = 0.2, max_ratio: float = 0.95,
    reduce_boxes_in_lowest_layer: bool = False, cls_bias: float = 0.0,
) -> tuple[nn.ModuleList, DefaultBoxes, SSDLiteHead]:
    """The extra layers, default boxes and head of SSDLite on ``backbone``, from its declared channels.

    Six levels: C4 and C5 (:func:`feature_strides`), then 4 extra layers; ratios {2, 3}
    everywhere (MobileNetV2 §6.2, torchvision's ``ssdlite320_mobilenet_v3_large``).

    Args:
        backbone: an undilated backbone (its ``channels`` are read, nothing is run).
        num_classes: classes including the background.
        width_mult / min_depth: extra-layer depths ``max(min_depth, d * width_mult)``.
        norm_layer: BN of the head and extra layers (eps 1e-3, momentum 0.03).
        min_ratio / max_ratio / reduce_boxes_in_lowest_layer: :class:`DefaultBoxes` options.
        cls_bias: initial class bias (:data:`FOCAL_PRIOR_BIAS` for focal loss).

    Returns:
        ``(extra, anchor_generator, head)``, the arguments of ``SSDLite`` after the backbone.
    """
    c4, c5 = feature_strides(backbone)
    extra = extra_blocks(backbone.channels[c5], width_mult, min_depth, norm_layer)
    anchors = DefaultBoxes(((2, 3),) * (2 + len(extra)), min_ratio, max_ratio,
                           reduce_boxes_in_lowest_layer=reduce_boxes_in_lowest_layer)
    in_channels = [backbone.channels[c4], backbone.channels[c5], *extra_channels(extra)]
    head = SSDLiteHead(in_channels, anchors.num_anchors_per_location(), num_classes, norm_layer, cls_bias)
    return extra, anchors, head
