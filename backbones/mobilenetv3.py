"""MobileNetV3-Large and -Small.

Howard et al., "Searching for MobileNetV3", ICCV 2019, arXiv 1905.02244.
Module names follow torchvision's ``mobilenet_v3_*`` so its checkpoints load
with a prefix mapping only (``features.*`` -> ``backbone.features.*``).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Callable, Mapping

from torch import Tensor, nn
from torchvision.ops.misc import Conv2dNormActivation, SqueezeExcitation

from ._base import (
    SequentialBackbone,
    check_output_stride,
    check_stem_stride,
    make_divisible,
    plan_dilation,
    register_backbone,
)

__all__ = ["MobileNetV3", "InvertedResidual", "BlockRow"]

# Paper §5.1 / torchvision: BN eps 1e-3 (the TF default the paper trained with).
BatchNorm = partial(nn.BatchNorm2d, eps=0.001, momentum=0.01)


@dataclass(frozen=True)
class BlockRow:
    """One bneck row of the paper's Tables 1-2."""

    in_ch: int
    kernel: int
    expanded: int
    out_ch: int
    se: bool
    act: str  # "RE" (ReLU) or "HS" (h-swish)
    stride: int

    def scaled(self, width_mult: float) -> "BlockRow":
        c = lambda v: make_divisible(v * width_mult, 8)  # noqa: E731
        return BlockRow(c(self.in_ch), self.kernel, c(self.expanded), c(self.out_ch),
                        self.se, self.act, self.stride)


def _large(r: int) -> list[BlockRow]:
    """Table 1. ``r`` = 2 halves the last stage (reduced tail, §6.3)."""
    B = BlockRow
    return [
        B(16, 3, 16, 16, False, "RE", 1),             # stride 2
        B(16, 3, 64, 24, False, "RE", 2),             # stride 4
        B(24, 3, 72, 24, False, "RE", 1),
        B(24, 5, 72, 40, True, "RE", 2),              # stride 8
        B(40, 5, 120, 40, True, "RE", 1),
        B(40, 5, 120, 40, True, "RE", 1),
        B(40, 3, 240, 80, False, "HS", 2),            # stride 16
        B(80, 3, 200, 80, False, "HS", 1),
        B(80, 3, 184, 80, False, "HS", 1),
        B(80, 3, 184, 80, False, "HS", 1),
        B(80, 3, 480, 112, True, "HS", 1),
        B(112, 3, 672, 112, True, "HS", 1),
        B(112, 5, 672, 160 // r, True, "HS", 2),      # stride 32 (C4 tap = its expansion)
        B(160 // r, 5, 960 // r, 160 // r, True, "HS", 1),
        B(160 // r, 5, 960 // r, 160 // r, True, "HS", 1),
    ]


def _small(r: int) -> list[BlockRow]:
    """Table 2."""
    B = BlockRow
    return [
        B(16, 3, 16, 16, True, "RE", 2),              # stride 4
        B(16, 3, 72, 24, False, "RE", 2),             # stride 8
        B(24, 3, 88, 24, False, "RE", 1),
        B(24, 5, 96, 40, True, "HS", 2),              # stride 16
        B(40, 5, 240, 40, True, "HS", 1),
        B(40, 5, 240, 40, True, "HS", 1),
        B(40, 5, 120, 48, True, "HS", 1),
        B(48, 5, 144, 48, True, "HS", 1),
        B(48, 5, 288, 96 // r, True, "HS", 2),        # stride 32 (C4 tap = its expansion)
        B(96 // r, 5, 576 // r, 96 // r, True, "HS", 1),
        B(96 // r, 5, 576 // r, 96 // r, True, "HS", 1),
    ]


def _act(name: str) -> Callable[..., nn.Module]:
    return nn.Hardswish if name == "HS" else nn.ReLU


class InvertedResidual(nn.Module):
    """MobileNetV3 bneck: 1x1 expand -> kxk depthwise -> SE -> 1x1 project (linear)."""

    def __init__(self, row: BlockRow, stride: int, dilation: int,
                 norm_layer: Callable[..., nn.Module] = BatchNorm) -> None:
        super().__init__()
        self.use_res_connect = stride == 1 and row.in_ch == row.out_ch
        act = _act(row.act)
        layers: list[nn.Module] = []
        if row.expanded != row.in_ch:
            layers.append(Conv2dNormActivation(row.in_ch, row.expanded, 1,
                                               norm_layer=norm_layer, activation_layer=act))
        layers.append(Conv2dNormActivation(row.expanded, row.expanded, row.kernel, stride,
                                           dilation=dilation, groups=row.expanded,
                                           norm_layer=norm_layer, activation_layer=act))
        if row.se:
            # §5.3: squeeze to 1/4 of the expansion, hard-sigmoid gate.
            squeeze = make_divisible(row.expanded // 4, 8)
            layers.append(SqueezeExcitation(row.expanded, squeeze, scale_activation=nn.Hardsigmoid))
        layers.append(Conv2dNormActivation(row.expanded, row.out_ch, 1,
                                           norm_layer=norm_layer, activation_layer=None))
        self.block = nn.Sequential(*layers)
        self.has_expansion = row.expanded != row.in_ch
        self.expansion_channels = row.expanded

    def split_expansion(self) -> tuple[nn.Module, nn.Module]:
        """(1x1 expansion, depthwise + SE + projection): the expansion is SSDLite's C4 (§6.3)."""
        if not self.has_expansion or self.use_res_connect:
            raise ValueError("only a strided block with an expansion layer (expanded != in_ch) "
                             "can be split at its expansion")
        return self.block[0], self.block[1:]

    def forward(self, x: Tensor) -> Tensor:
        y = self.block(x)
        return x + y if self.use_res_connect else y


class MobileNetV3(SequentialBackbone):
    """MobileNetV3 feature extractor.

    Args:
        arch: ``"large"`` or ``"small"``.
        width_mult: channel multiplier (paper §6.1.2: 0.35 ... 1.25).
        reduced_tail: halve the channels of the last stage (paper §6.3, "RF2").
        output_stride: 32, 16 or 8; late stages are dilated instead of strided
            (16 is what LR-ASPP uses, paper §6.4).
        taps: per stride, ``"deepest"`` (default), ``"first"`` or ``"expansion"`` (see
            :class:`~mobiledense.backbones.SequentialBackbone`). ``{16: "expansion"}``
            returns at stride 16 the expansion layer of the first stride-32 block:
            SSDLite's C4 (paper §6.3); ``{8: "first"}`` the first stride-8 block, which
            LR-ASPP's low branch reads in torchvision. Expansion taps need that block strided.
        norm_layer: BatchNorm factory (default eps 1e-3, momentum 0.01).
        bn_eps: overrides the BatchNorm eps (1e-5 for timm's ``mobilenetv3_*`` weights).
        dropout: dropout of the classifier head.
        stem_stride: stride of the first conv, 2 (the paper's) or 1: the CIFAR adaptation
            (32x32 inputs keep a 2x2 deepest map instead of 1x1, as CIFAR ports of
            MobileNet do); every declared stride halves, the weights are the same shapes.
    """

    supported_output_strides = (8, 16, 32)
    supported_taps = ("deepest", "first", "expansion")
    options = ("width_mult", "reduced_tail", "norm_layer", "bn_eps", "dropout", "stem_stride")  # arch: one factory each

    def __init__(self, arch: str = "large", width_mult: float = 1.0, reduced_tail: bool = False,
                 output_stride: int = 32, taps: Mapping[int, str] | None = None,
                 norm_layer: Callable[..., nn.Module] = BatchNorm, bn_eps: float | None = None,
                 dropout: float = 0.2, stem_stride: int = 2) -> None:
        super().__init__()
        if bn_eps is not None:  # timm trains its MobileNetV3s with PyTorch's default 1e-5
            norm_layer = partial(norm_layer, eps=bn_eps)
        if arch not in ("large", "small"):
            raise ValueError(f"MobileNetV3 arch must be 'large' or 'small', got {arch!r}")
        check_output_stride(f"mobilenet_v3_{arch}", output_stride, self.supported_output_strides)
        r = 2 if reduced_tail else 1
        rows = [row.scaled(width_mult) for row in (_large(r) if arch == "large" else _small(r))]
        self.arch, self.output_stride, self.dropout = arch, output_stride, dropout
        self.last_channel = make_divisible((1280 if arch == "large" else 1024) // r * width_mult, 8)

        plan = plan_dilation([check_stem_stride(f"mobilenet_v3_{arch}", stem_stride)] + [row.stride for row in rows]
                             + [1], output_stride)
        stem = rows[0].in_ch
        last = 6 * rows[-1].out_ch
        layers: list[nn.Module] = [
            Conv2dNormActivation(3, stem, 3, plan[0][0], norm_layer=norm_layer, activation_layer=nn.Hardswish)
        ]
        for row, (s, d) in zip(rows, plan[1:-1]):
            layers.append(InvertedResidual(row, s, d, norm_layer))
        layers.append(Conv2dNormActivation(rows[-1].out_ch, last, 1, norm_layer=norm_layer,
                                           activation_layer=nn.Hardswish))
        self.features = nn.Sequential(*layers)

        strides, cur = [], 1
        for s, _ in plan:
            cur *= s
            strides.append(cur)
        self._init_taps(strides, [stem] + [row.out_ch for row in rows] + [last], taps)
        if plan[0][0] == 1:  # stem_stride 1: every stride halves
            self.size_divisor, self.min_size = type(self).size_divisor // 2, type(self).min_size // 2
        _init_weights(self)

    def feature_layers(self) -> list[nn.Module]:
        return list(self.features)

    def classifier_head(self, num_classes: int) -> nn.Module:
        return ClassifierHead(self.out_channels, self.last_channel, num_classes, self.dropout)


class ClassifierHead(nn.Module):
    """Pool -> 1x1 (as Linear) -> h-swish -> dropout -> Linear (paper Fig. 5, efficient last stage)."""

    def __init__(self, in_ch: int, hidden: int, num_classes: int, dropout: float) -> None:
        super().__init__()
        self.classifier = nn.Sequential(
            nn.Linear(in_ch, hidden), nn.Hardswish(), nn.Dropout(dropout), nn.Linear(hidden, num_classes)
        )
        for m in self.classifier:
            if isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.zeros_(m.bias)

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


@register_backbone("mobilenet_v3_large", paper="arXiv:1905.02244", torchvision="mobilenet_v3_large",
                   family=MobileNetV3)
def mobilenet_v3_large(**kwargs) -> MobileNetV3:
    return MobileNetV3("large", **kwargs)


@register_backbone("mobilenet_v3_small", paper="arXiv:1905.02244", torchvision="mobilenet_v3_small",
                   family=MobileNetV3)
def mobilenet_v3_small(**kwargs) -> MobileNetV3:
    return MobileNetV3("small", **kwargs)
