"""SSDLite building blocks: the prediction head and the extra feature layers.

SSDLite is SSD with every regular convolution of the prediction layers replaced by
a separable one (MobileNetV2 paper, arXiv 1801.04381, §6.2); MobileNetV3 (arXiv
1905.02244, §6.3) attaches it to the expansion layer of the last stride-16 block
(C4) and to the last 1x1 conv (C5), then adds the extra layers below. Module names
and initialisation follow torchvision's ``models/detection/ssdlite.py`` so its
checkpoints map onto ours by prefix (see :func:`~mobiledense.heads.detector.from_torchvision_ssdlite`).
"""

from __future__ import annotations

from functools import partial
from typing import Callable, Sequence

import torch
from torch import Tensor, nn
from torchvision.ops.misc import Conv2dNormActivation

__all__ = [
    "BatchNorm",
    "prediction_block",
    "extra_block",
    "extra_blocks",
    "ScoringHead",
    "SSDLiteHead",
    "normal_init",
]

#: torchvision's ssdlite320_mobilenet_v3_large norm layer (TF Object Detection API numbers).
BatchNorm = partial(nn.BatchNorm2d, eps=0.001, momentum=0.03)

#: Extra-layer depths before the width multiplier (MobileNetV2 §6.2 / TF ``ssdlite`` configs).
EXTRA_DEPTHS: tuple[int, ...] = (512, 256, 256, 128)


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
