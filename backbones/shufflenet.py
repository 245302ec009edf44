"""ShuffleNet V1 and V2.

V1: Zhang et al., "ShuffleNet: An Extremely Efficient Convolutional Neural
Network for Mobile Devices", CVPR 2018, arXiv 1707.01083 (Table 1).
V2: Ma et al., "ShuffleNet V2: Practical Guidelines for Efficient CNN
Architecture Design", ECCV 2018, arXiv 1807.11164 (Table 5).

Module names follow torchvision's ``shufflenet_v2_*`` (``conv1``, ``maxpool``,
``stage2``-``stage4``, ``conv5``; head ``fc``) so its checkpoints load with a
prefix mapping only. V1 (no torchvision model) uses the same names.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Mapping

import torch
from torch import Tensor, nn

from ._base import (
    SequentialBackbone,
    check_output_stride,
    make_divisible,
    plan_dilation,
    register_backbone,
)

__all__ = [
    "ShuffleNetV1", "ShuffleNetV2", "ShuffleV1Unit", "ShuffleV2Unit", "ChannelShuffle",
    "StageRow", "channel_shuffle", "V1_CHANNELS", "V2_CHANNELS",
]


def channel_shuffle(x: Tensor, groups: int) -> Tensor:
    """V1 §3.1 / Fig. 1c: reshape channels to (groups, n), transpose, flatten.

    Only reshape/transpose, so it exports to ONNX as Reshape + Transpose.
    """
    return x.unflatten(1, (groups, -1)).transpose(1, 2).flatten(1, 2)


class ChannelShuffle(nn.Module):
    def __init__(self, groups: int) -> None:
        super().__init__()
        self.groups = groups

    def forward(self, x: Tensor) -> Tensor:
        return channel_shuffle(x, self.groups)

    def extra_repr(self) -> str:
        return f"groups={self.groups}"


@dataclass(frozen=True)
class StageRow:
    """One stage row of V1 Table 1 / V2 Table 5: ``repeats`` units, the first with stride 2."""

    name: str  # module name, as in torchvision
    out_ch: int
    repeats: int


STEM = 24  # Conv1: 3x3/2, 24 channels, then MaxPool 3x3/2 (both tables)

# V1 Table 1: output channels of Stage2-4 for g = 1, 2, 3, 4, 8 (complexity ~140 MFLOPs at 1x).
V1_CHANNELS: dict[int, tuple[int, int, int]] = {
    1: (144, 288, 576),
    2: (200, 400, 800),
    3: (240, 480, 960),
    4: (272, 544, 1088),
    8: (384, 768, 1536),
}

# V2 Table 5: output channels of Stage2-4 and Conv5 per width (0.5x, 1x, 1.5x, 2x).
V2_CHANNELS: dict[float, tuple[int, int, int, int]] = {
    0.5: (48, 96, 192, 1024),
    1.0: (116, 232, 464, 1024),
    1.5: (176, 352, 704, 1024),
    2.0: (244, 488, 976, 2048),
}


def _rows(c2: int, c3: int, c4: int) -> list[StageRow]:
    """Both tables: 4, 8, 4 units per stage."""
    return [
        StageRow("stage2", c2, 4),  # stride 8
        StageRow("stage3", c3, 8),  # stride 16
        StageRow("stage4", c4, 4),  # stride 32
    ]


def _conv_bn_relu(in_ch: int, out_ch: int, kernel: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(in_ch, out_ch, kernel, stride, kernel // 2, bias=False),
                         nn.BatchNorm2d(out_ch), nn.ReLU(inplace=True))


def _depthwise(ch: int, stride: int, dilation: int) -> nn.Conv2d:
    return nn.Conv2d(ch, ch, 3, stride, dilation, dilation, groups=ch, bias=False)


class ShuffleV1Unit(nn.Module):
    """V1 Fig. 2b (stride 1: add) and Fig. 2c (stride 2: 3x3 avg-pool shortcut, concat).

    1x1 GConv-BN-ReLU -> shuffle -> 3x3 DWConv-BN -> 1x1 GConv-BN, ReLU after the join.
    No ReLU after the depthwise conv (§3.2); bottleneck = 1/4 of the output (§3.3).
    """

    def __init__(self, in_ch: int, out_ch: int, groups: int, stride: int, dilation: int,
                 downsample: bool, group_first: bool = True) -> None:
        super().__init__()
        mid = out_ch // 4
        branch_out = out_ch - in_ch if downsample else out_ch  # concat adds the shortcut's channels
        first = groups if group_first else 1
        for what, n in (("bottleneck", mid), ("residual branch", branch_out)):
            if n % groups:
                raise ValueError(f"ShuffleNetV1 unit {in_ch}->{out_ch}: {what} channels {n} are not "
                                 f"divisible by groups={groups}; pick another width_mult")
        if not downsample and in_ch != out_ch:
            raise ValueError(f"ShuffleNetV1 stride-1 unit needs in_ch == out_ch, got {in_ch}->{out_ch}")
        self.downsample = downsample
        self.branch = nn.Sequential(
            nn.Conv2d(in_ch, mid, 1, groups=first, bias=False), nn.BatchNorm2d(mid), nn.ReLU(inplace=True),
            ChannelShuffle(first) if first > 1 else nn.Identity(),
            _depthwise(mid, stride, dilation), nn.BatchNorm2d(mid),
            nn.Conv2d(mid, branch_out, 1, groups=groups, bias=False), nn.BatchNorm2d(branch_out),
        )
        # Dilated (stride-1) downsampling units keep their pooled shortcut, unstrided.
        self.shortcut = nn.AvgPool2d(3, stride, 1) if downsample else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        y, s = self.branch(x), self.shortcut(x)
        return torch.relu(torch.cat((s, y), 1) if self.downsample else s + y)


class ShuffleV2Unit(nn.Module):
    """V2 Fig. 3c (channel split, identity half) and Fig. 3d (down-sampling unit), then shuffle.

    ``downsample`` is the unit type (Fig. 3d): it keeps both branches even when
    dilation turned its stride into 1, so the weights do not depend on ``output_stride``.
    """

    def __init__(self, in_ch: int, out_ch: int, stride: int, dilation: int, downsample: bool) -> None:
        super().__init__()
        branch = out_ch // 2
        if not downsample and in_ch != out_ch:
            raise ValueError(f"ShuffleNetV2 basic unit needs in_ch == out_ch, got {in_ch}->{out_ch}")
        self.downsample = downsample
        if downsample:
            self.branch1 = nn.Sequential(
                _depthwise(in_ch, stride, dilation), nn.BatchNorm2d(in_ch),
                nn.Conv2d(in_ch, branch, 1, bias=False), nn.BatchNorm2d(branch), nn.ReLU(inplace=True),
            )
        self.branch2 = nn.Sequential(
            nn.Conv2d(in_ch if downsample else branch, branch, 1, bias=False), nn.BatchNorm2d(branch),
            nn.ReLU(inplace=True),
            _depthwise(branch, stride, dilation), nn.BatchNorm2d(branch),
            nn.Conv2d(branch, branch, 1, bias=False), nn.BatchNorm2d(branch), nn.ReLU(inplace=True),
        )

    def forward(self, x: Tensor) -> Tensor:
        if self.downsample:
            out = torch.cat((self.branch1(x), self.branch2(x)), 1)
        else:
            x1, x2 = x.chunk(2, dim=1)
            out = torch.cat((x1, self.branch2(x2)), 1)
        return channel_shuffle(out, 2)


class _ShuffleNet(SequentialBackbone):
    """Conv1 -> MaxPool -> Stage2..4 (-> Conv5): the layout shared by both tables."""

    supported_output_strides = (8, 16, 32)
    supported_taps = ("deepest", "first")

    def _build(self, rows: list[StageRow], output_stride: int,
               make_unit: Callable[[int, int, int, int, bool, int], nn.Module],
               last_conv: int | None, taps: Mapping[int, str] | None) -> None:
        check_output_stride(type(self).__name__, output_stride, self.supported_output_strides)
        self.output_stride = output_stride
        stem = self.stem_channels
        self.conv1 = _conv_bn_relu(3, stem, 3, 2)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        unit_strides = [2 if i == 0 else 1 for row in rows for i in range(row.repeats)]
        plan = iter(plan_dilation([4] + unit_strides, output_stride)[1:])  # after the stride-4 stem
        self._names = ["conv1", "maxpool"]
        strides, channels, in_ch = [2, 4], [stem, stem], stem
        for k, row in enumerate(rows):
            units, stage_plan = [], [next(plan) for _ in range(row.repeats)]
            for i, (s, d) in enumerate(stage_plan):
                units.append(make_unit(in_ch, row.out_ch, s, d, i == 0, k))
                in_ch = row.out_ch
            setattr(self, row.name, nn.Sequential(*units))
            self._names.append(row.name)
            strides.append(strides[-1] * math.prod(s for s, _ in stage_plan))
            channels.append(row.out_ch)
        if last_conv is not None:
            self.conv5 = _conv_bn_relu(in_ch, last_conv, 1)
            self._names.append("conv5")
            strides.append(strides[-1])
            channels.append(last_conv)
        self._init_taps(strides, channels, taps)
        _init_weights(self)

    def feature_layers(self) -> list[nn.Module]:
        return [getattr(self, name) for name in self._names]

    def classifier_head(self, num_classes: int) -> nn.Module:
        return ClassifierHead(self.out_channels, num_classes)


class ShuffleNetV1(_ShuffleNet):
    """ShuffleNet V1 feature extractor: stride-32 feature = Stage4 output (960 ch for g=3, 1x).

    Args:
        groups: group number g of the pointwise convs (Table 1: 1, 2, 3, 4, 8).
        width_mult: the paper's "ShuffleNet s x" (§3.3), e.g. 0.5; channels are rounded
            to multiples of 4g (stages) and g (stem) so every group conv divides.
        output_stride: 32, 16 or 8; late stages are dilated instead of strided.
        taps: per stride, ``"deepest"`` (default) or ``"first"`` (see
            :class:`~mobiledense.backbones.SequentialBackbone`).
    """

    options = ("width_mult",)  # groups: one factory per Table 1 column

    def __init__(self, groups: int = 3, width_mult: float = 1.0, output_stride: int = 32,
                 taps: Mapping[int, str] | None = None) -> None:
        super().__init__()
        if groups not in V1_CHANNELS:
            raise ValueError(f"ShuffleNetV1 groups must be one of {tuple(V1_CHANNELS)} (Table 1), "
                             f"got {groups}")
        if width_mult <= 0:
            raise ValueError(f"ShuffleNetV1 width_mult must be positive, got {width_mult}")
        self.groups, self.width_mult = groups, width_mult
        self.stem_channels = make_divisible(STEM * width_mult, groups)
        rows = _rows(*(make_divisible(c * width_mult, 4 * groups) for c in V1_CHANNELS[groups]))

        def unit(in_ch: int, out_ch: int, s: int, d: int, first: bool, stage: int) -> nn.Module:
            # §3.3: Stage2's first pointwise conv is not grouped (only 24 input channels).
            return ShuffleV1Unit(in_ch, out_ch, groups, s, d, downsample=first,
                                 group_first=not (first and stage == 0))

        self._build(rows, output_stride, unit, last_conv=None, taps=taps)


class ShuffleNetV2(_ShuffleNet):
    """ShuffleNet V2 feature extractor: stride-32 feature = Conv5 (1024 ch; 2048 for 2x).

    Args:
        width_mult: 0.5, 1.0, 1.5 or 2.0 (Table 5).
        output_stride: 32, 16 or 8; the depthwise convs of late stages are dilated.
        taps: per stride, ``"deepest"`` (default) or ``"first"``.
    """

    options = ()  # width_mult: one factory per Table 5 column

    def __init__(self, width_mult: float = 1.0, output_stride: int = 32,
                 taps: Mapping[int, str] | None = None) -> None:
        super().__init__()
        if width_mult not in V2_CHANNELS:
            raise ValueError(f"ShuffleNetV2 width_mult must be one of {tuple(V2_CHANNELS)} (Table 5), "
                             f"got {width_mult}")
        self.width_mult, self.stem_channels = width_mult, STEM
        *stages, last = V2_CHANNELS[width_mult]

        def unit(in_ch: int, out_ch: int, s: int, d: int, first: bool, stage: int) -> nn.Module:
            return ShuffleV2Unit(in_ch, out_ch, s, d, downsample=first)

        self._build(_rows(*stages), output_stride, unit, last_conv=last, taps=taps)


class ClassifierHead(nn.Module):
    """Last rows of both tables: global average pool -> FC (module ``fc`` as in torchvision)."""

    def __init__(self, in_ch: int, num_classes: int) -> None:
        super().__init__()
        self.fc = nn.Linear(in_ch, num_classes)
        nn.init.normal_(self.fc.weight, 0, 0.01)
        nn.init.zeros_(self.fc.bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(x.mean((2, 3)))


def _init_weights(model: nn.Module) -> None:
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


@register_backbone("shufflenet_v1_g3", paper="arXiv:1707.01083", family=ShuffleNetV1)
def shufflenet_v1_g3(**kwargs) -> ShuffleNetV1:
    return ShuffleNetV1(groups=3, **kwargs)


@register_backbone("shufflenet_v1_g8", paper="arXiv:1707.01083", family=ShuffleNetV1)
def shufflenet_v1_g8(**kwargs) -> ShuffleNetV1:
    return ShuffleNetV1(groups=8, **kwargs)


@register_backbone("shufflenet_v2_x0_5", paper="arXiv:1807.11164", torchvision="shufflenet_v2_x0_5",
                   family=ShuffleNetV2)
def shufflenet_v2_x0_5(**kwargs) -> ShuffleNetV2:
    return ShuffleNetV2(0.5, **kwargs)


@register_backbone("shufflenet_v2_x1_0", paper="arXiv:1807.11164", torchvision="shufflenet_v2_x1_0",
                   family=ShuffleNetV2)
def shufflenet_v2_x1_0(**kwargs) -> ShuffleNetV2:
    return ShuffleNetV2(1.0, **kwargs)


@register_backbone("shufflenet_v2_x1_5", paper="arXiv:1807.11164", torchvision="shufflenet_v2_x1_5",
                   family=ShuffleNetV2)
def shufflenet_v2_x1_5(**kwargs) -> ShuffleNetV2:
    return ShuffleNetV2(1.5, **kwargs)


@register_backbone("shufflenet_v2_x2_0", paper="arXiv:1807.11164", torchvision="shufflenet_v2_x2_0",
                   family=ShuffleNetV2)
def shufflenet_v2_x2_0(**kwargs) -> ShuffleNetV2:
    return ShuffleNetV2(2.0, **kwargs)
