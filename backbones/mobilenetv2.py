"""MobileNetV2: inverted residuals with linear bottlenecks.

Sandler et al., "MobileNetV2: Inverted Residuals and Linear Bottlenecks",
CVPR 2018, arXiv 1801.04381. Module names follow torchvision's ``mobilenet_v2``
(``features.N.conv.*``, ``classifier.1``) so its checkpoints load with a prefix
mapping only (``features.*`` -> ``backbone.features.*``).
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

__all__ = ["MobileNetV2", "InvertedResidual", "StageRow", "STAGES"]


@dataclass(frozen=True)
class StageRow:
    """One row of the paper's Table 2: ``n`` blocks, the first with stride ``s``."""

    t: int  # expansion factor
    c: int  # output channels (before the width multiplier)
    n: int  # repeats
    s: int  # stride of the first block


# Table 2 (after the 3x3 stride-2 stem with 32 channels).
STAGES: tuple[StageRow, ...] = (
    StageRow(1, 16, 1, 1),    # stride 2
    StageRow(6, 24, 2, 2),    # stride 4
    StageRow(6, 32, 3, 2),    # stride 8
    StageRow(6, 64, 4, 2),    # stride 16
    StageRow(6, 96, 3, 1),
    StageRow(6, 160, 3, 2),   # stride 32 (first block's expansion = SSDLite's first layer, §6.2)
    StageRow(6, 320, 1, 1),
)


class InvertedResidual(nn.Module):
    """Fig. 3b / Table 1: 1x1 expand (ReLU6) -> 3x3 depthwise (ReLU6) -> 1x1 linear projection.

    The projection has no activation (linear bottleneck, §3.2); the shortcut
    joins the bottlenecks when shape is unchanged (§3.3).
    """

    def __init__(self, in_ch: int, out_ch: int, stride: int, expand_ratio: int, dilation: int = 1,
                 norm_layer: Callable[..., nn.Module] = nn.BatchNorm2d) -> None:
        super().__init__()
        hidden = int(round(in_ch * expand_ratio))
        self.use_res_connect = stride == 1 and in_ch == out_ch
        self.has_expansion = expand_ratio != 1
        layers: list[nn.Module] = []
        if self.has_expansion:
            layers.append(Conv2dNormActivation(in_ch, hidden, 1, norm_layer=norm_layer,
                                               activation_layer=nn.ReLU6))
        layers += [
            Conv2dNormActivation(hidden, hidden, 3, stride, dilation=dilation, groups=hidden,
                                 norm_layer=norm_layer, activation_layer=nn.ReLU6),
            # Kept as two modules (not Conv2dNormActivation) to match torchvision's keys.
            nn.Conv2d(hidden, out_ch, 1, bias=False),
            norm_layer(out_ch),
        ]
        self.conv = nn.Sequential(*layers)
        self.out_channels = out_ch
        self.hidden_channels = self.expansion_channels = hidden

    def split_expansion(self) -> tuple[nn.Module, nn.Module]:
        """(1x1 expansion, depthwise + projection): the expansion is SSDLite's first layer (§6.2)."""
        if not self.has_expansion or self.use_res_connect:
            raise ValueError("only a strided block with an expansion layer (t > 1) can be split "
                             "at its expansion")
        return self.conv[0], self.conv[1:]

    def forward(self, x: Tensor) -> Tensor:
        y = self.conv(x)
        return x + y if self.use_res_connect else y


class MobileNetV2(SequentialBackbone):
    """MobileNetV2 feature extractor.

    Args:
        width_mult: channel multiplier (paper §6.1: 0.35 ... 1.4). Channels are
            rounded to multiples of 8; the last 1x1 conv keeps 1280 channels for
            multipliers below 1 (§6.1, as in torchvision).
        output_stride: 32, 16 or 8; late stages are dilated instead of strided
            (16 is the DeepLabv3 setting of §6.3).
        taps: per stride, ``"deepest"`` (default), ``"first"`` or ``"expansion"`` (see
            :class:`~mobiledense.backbones.SequentialBackbone`). ``{16: "expansion"}``
            returns at stride 16 the expansion layer of the first stride-32 block (576
            channels at width 1.0): where SSDLite attaches its first layer ("the
            expansion of layer 15", §6.2). Expansion taps need that block strided.
        norm_layer: BatchNorm factory (default ``nn.BatchNorm2d``, as torchvision).
        dropout: dropout of the classifier head (0.2, as torchvision).
        stem_stride: stride of the first conv, 2 (the paper's) or 1: the CIFAR adaptation
            (32x32 inputs keep a 2x2 deepest map instead of 1x1, as CIFAR ports of
            MobileNet do); every declared stride halves, the weights are the same shapes.
    """

    supported_output_strides = (8, 16, 32)
    supported_taps = ("deepest", "first", "expansion")
    options = ("width_mult", "norm_layer", "dropout", "stem_stride")

    def __init__(self, width_mult: float = 1.0, output_stride: int = 32,
                 taps: Mapping[int, str] | None = None,
                 norm_layer: Callable[..., nn.Module] = nn.BatchNorm2d, dropout: float = 0.2,
                 stem_stride: int = 2) -> None:
        super().__init__()
        if width_mult <= 0:
            raise ValueError(f"MobileNetV2 width_mult must be positive, got {width_mult}")
        check_output_stride("mobilenet_v2", output_stride, self.supported_output_strides)
        self.width_mult, self.output_stride, self.dropout = width_mult, output_stride, dropout

        # One (in, out, stride, t) per block, strides before dilation.
        stem = make_divisible(32 * width_mult, 8)
        blocks: list[tuple[int, int, int, int]] = []
        in_ch = stem
        for row in STAGES:
            out_ch = make_divisible(row.c * width_mult, 8)
            for i in range(row.n):
                blocks.append((in_ch, out_ch, row.s if i == 0 else 1, row.t))
                in_ch = out_ch
        self.last_channel = make_divisible(1280 * max(1.0, width_mult), 8)

        plan = plan_dilation([check_stem_stride("mobilenet_v2", stem_stride)] + [b[2] for b in blocks] + [1],
                             output_stride)
        layers: list[nn.Module] = [
            Conv2dNormActivation(3, stem, 3, plan[0][0], norm_layer=norm_layer, activation_layer=nn.ReLU6)
        ]
        for (i, o, _, t), (s, d) in zip(blocks, plan[1:-1]):
            layers.append(InvertedResidual(i, o, s, t, d, norm_layer))
        layers.append(Conv2dNormActivation(in_ch, self.last_channel, 1, norm_layer=norm_layer,
                                           activation_layer=nn.ReLU6))
        self.features = nn.Sequential(*layers)

        strides, cur = [], 1
        for s, _ in plan:
            cur *= s
            strides.append(cur)
        self._init_taps(strides, [stem] + [b[1] for b in blocks] + [self.last_channel], taps)
        if plan[0][0] == 1:  # stem_stride 1: every stride halves
            self.size_divisor, self.min_size = type(self).size_divisor // 2, type(self).min_size // 2
        _init_weights(self)

    def feature_layers(self) -> list[nn.Module]:
        return list(self.features)

    def classifier_head(self, num_classes: int) -> nn.Module:
        return ClassifierHead(self.out_channels, num_classes, self.dropout)


class ClassifierHead(nn.Module):
    """Global average pool -> dropout -> Linear (Table 2's last rows; torchvision keys)."""

    def __init__(self, in_ch: int, num_classes: int, dropout: float) -> None:
        super().__init__()
        self.classifier = nn.Sequential(nn.Dropout(dropout), nn.Linear(in_ch, num_classes))
        nn.init.normal_(self.classifier[1].weight, 0, 0.01)
        nn.init.zeros_(self.classifier[1].bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(x.mean((2, 3)))


def _init_weights(model: nn.Module) -> None:
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


@register_backbone("mobilenet_v2", paper="arXiv:1801.04381", torchvision="mobilenet_v2",
                   family=MobileNetV2)
def mobilenet_v2(**kwargs) -> MobileNetV2:
    return MobileNetV2(**kwargs)
