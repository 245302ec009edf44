"""MobileNetV1: depthwise separable convolutions.

Howard et al., "MobileNets: Efficient Convolutional Neural Networks for Mobile
Vision Applications", arXiv 1704.04861. torchvision has no MobileNetV1, so the
module names are our own: ``features.0`` is the stem, ``features.N.{dw,pw}``
the depthwise separable blocks, ``fc`` the classifier.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Mapping

from torch import Tensor, nn
from torchvision.ops.misc import Conv2dNormActivation

from ._base import (
    SequentialBackbone,
    check_output_stride,
    check_stem_stride,
    make_divisible,
    plan_dilation,
    register_backbone,
)

__all__ = ["MobileNetV1", "DepthwiseSeparable", "BlockRow", "BLOCKS"]


@dataclass(frozen=True)
class BlockRow:
    """One "Conv dw / s + Conv 1x1" pair of the paper's Table 1."""

    out_ch: int  # channels of the pointwise conv (before the width multiplier)
    stride: int  # stride of the depthwise conv


# Table 1 (after the 3x3 stride-2 stem with 32 channels). The table's second
# to last depthwise row reads "s2" but its 7x7 input and output show stride 1,
# which is what the reference TF-slim code uses.
BLOCKS: tuple[BlockRow, ...] = (
    BlockRow(64, 1),      # stride 2
    BlockRow(128, 2),     # stride 4
    BlockRow(128, 1),
    BlockRow(256, 2),     # stride 8
    BlockRow(256, 1),
    BlockRow(512, 2),     # stride 16
    *[BlockRow(512, 1)] * 5,
    BlockRow(1024, 2),    # stride 32
    BlockRow(1024, 1),
)


class DepthwiseSeparable(nn.Module):
    """Fig. 3 right: 3x3 depthwise conv -> BN -> ReLU -> 1x1 conv -> BN -> ReLU."""

    def __init__(self, in_ch: int, out_ch: int, stride: int, dilation: int = 1,
                 norm_layer: Callable[..., nn.Module] = nn.BatchNorm2d,
                 act: Callable[..., nn.Module] = nn.ReLU) -> None:
        super().__init__()
        self.dw = Conv2dNormActivation(in_ch, in_ch, 3, stride, dilation=dilation, groups=in_ch,
                                       norm_layer=norm_layer, activation_layer=act)
        self.pw = Conv2dNormActivation(in_ch, out_ch, 1, norm_layer=norm_layer, activation_layer=act)

    def forward(self, x: Tensor) -> Tensor:
        return self.pw(self.dw(x))


class MobileNetV1(SequentialBackbone):
    """MobileNetV1 feature extractor.

    Args:
        width_mult: the width multiplier alpha of §3.3 (0.25, 0.5, 0.75, 1.0 in
            Table 6); channels are rounded to multiples of 8.
        output_stride: 32, 16 or 8; late stages are dilated instead of strided.
        taps: per stride, ``"deepest"`` (default) or ``"first"`` (see
            :class:`~mobiledense.backbones.SequentialBackbone`).
        norm_layer: BatchNorm factory (default ``nn.BatchNorm2d``).
        dropout: dropout before the classifier (0 by default: the paper uses
            little regularisation for small models, §3.2).
        activation: ``"relu"`` (the paper's) or ``"relu6"`` (the TF / timm implementations').
        stem_stride: stride of the first conv, 2 (the paper's) or 1: the CIFAR adaptation
            (32x32 inputs keep a 2x2 deepest map instead of 1x1, as CIFAR ports of
            MobileNet do); every declared stride halves, the weights are the same shapes.
    """

    supported_output_strides = (8, 16, 32)
    supported_taps = ("deepest", "first")
    options = ("width_mult", "norm_layer", "dropout", "activation", "stem_stride")

    def __init__(self, width_mult: float = 1.0, output_stride: int = 32,
                 taps: Mapping[int, str] | None = None,
                 norm_layer: Callable[..., nn.Module] = nn.BatchNorm2d, dropout: float = 0.0,
                 activation: str = "relu", stem_stride: int = 2) -> None:
        super().__init__()
        if width_mult <= 0:
            raise ValueError(f"MobileNetV1 width_mult must be positive, got {width_mult}")
        if activation not in ("relu", "relu6"):
            raise ValueError(f"MobileNetV1 activation must be 'relu' or 'relu6', got {activation!r}")
        act = nn.ReLU6 if activation == "relu6" else nn.ReLU
        check_output_stride("mobilenet_v1", output_stride, self.supported_output_strides)
        self.width_mult, self.output_stride, self.dropout = width_mult, output_stride, dropout

        stem = make_divisible(32 * width_mult, 8)
        outs = [make_divisible(row.out_ch * width_mult, 8) for row in BLOCKS]
        plan = plan_dilation([check_stem_stride("mobilenet_v1", stem_stride)] + [row.stride for row in BLOCKS],
                             output_stride)
        layers: list[nn.Module] = [
            Conv2dNormActivation(3, stem, 3, plan[0][0], norm_layer=norm_layer, activation_layer=act)
        ]
        for in_ch, out_ch, (s, d) in zip([stem] + outs[:-1], outs, plan[1:]):
            layers.append(DepthwiseSeparable(in_ch, out_ch, s, d, norm_layer, act))
        self.features = nn.Sequential(*layers)

        strides, cur = [], 1
        for s, _ in plan:
            cur *= s
            strides.append(cur)
        self._init_taps(strides, [stem] + outs, taps)
        if plan[0][0] == 1:  # stem_stride 1: every stride halves
            self.size_divisor, self.min_size = type(self).size_divisor // 2, type(self).min_size // 2
        _init_weights(self)

    def feature_layers(self) -> list[nn.Module]:
        return list(self.features)

    def classifier_head(self, num_classes: int) -> nn.Module:
        return ClassifierHead(self.out_channels, num_classes, self.dropout)


class ClassifierHead(nn.Module):
    """Table 1's last rows: global average pool -> FC (softmax is left to the loss)."""

    def __init__(self, in_ch: int, num_classes: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(in_ch, num_classes)
        nn.init.normal_(self.fc.weight, 0, 0.01)
        nn.init.zeros_(self.fc.bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.dropout(x.mean((2, 3))))


def _init_weights(model: nn.Module) -> None:
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


@register_backbone("mobilenet_v1", paper="arXiv:1704.04861", family=MobileNetV1)
def mobilenet_v1(**kwargs) -> MobileNetV1:
    return MobileNetV1(**kwargs)
