"""SqueezeNet 1.0 and 1.1.

Iandola et al., "SqueezeNet: AlexNet-level accuracy with 50x fewer parameters
and <0.5MB model size", arXiv 1602.07360 (Table 1). Version 1.1 comes from the
official repository's changelog (forresti/SqueezeNet, "SqueezeNet_v1.1"): a
3x3/2 conv1 with 64 filters and max-pools moved earlier, 2.4x less computation.

Module names follow torchvision's ``squeezenet1_*`` (``features.N``,
``classifier.N``) so its checkpoints load with a prefix mapping only.

SqueezeNet has three max-pools after a stride-2 conv1: its deepest feature
is at stride **16** (13x13 for a 224 input in the paper), so the backbone
returns strides 2, 4, 8, 16 and supports ``output_stride=16`` only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import torch
from torch import Tensor, nn

from ._base import SequentialBackbone, check_output_stride, register_backbone

__all__ = ["SqueezeNet", "Fire", "FireRow", "SqueezeNetSpec", "SPECS"]


@dataclass(frozen=True)
class FireRow:
    """One Fire module (Fig. 1, Table 1): squeeze 1x1, then expand 1x1 and 3x3 (concatenated)."""

    squeeze: int
    expand1x1: int
    expand3x3: int
    pool_before: bool = False  # a 3x3/2 max-pool precedes the module (stride doubles)

    @property
    def out_ch(self) -> int:
        return self.expand1x1 + self.expand3x3


@dataclass(frozen=True)
class SqueezeNetSpec:
    stem_ch: int
    stem_kernel: int  # conv1, stride 2
    fires: tuple[FireRow, ...]


F = FireRow
SPECS: dict[str, SqueezeNetSpec] = {
    # Table 1: conv1 96 7x7/2; max-pools after conv1, fire4 and fire8.
    "1_0": SqueezeNetSpec(96, 7, (
        F(16, 64, 64, pool_before=True),    # fire2, stride 4
        F(16, 64, 64),                      # fire3
        F(32, 128, 128),                    # fire4
        F(32, 128, 128, pool_before=True),  # fire5, stride 8
        F(48, 192, 192),                    # fire6
        F(48, 192, 192),                    # fire7
        F(64, 256, 256),                    # fire8
        F(64, 256, 256, pool_before=True),  # fire9, stride 16
    )),
    # v1.1 changelog: conv1 64 3x3/2; max-pools after conv1, fire3 and fire5.
    "1_1": SqueezeNetSpec(64, 3, (
        F(16, 64, 64, pool_before=True),    # fire2, stride 4
        F(16, 64, 64),                      # fire3
        F(32, 128, 128, pool_before=True),  # fire4, stride 8
        F(32, 128, 128),                    # fire5
        F(48, 192, 192, pool_before=True),  # fire6, stride 16
        F(48, 192, 192),                    # fire7
        F(64, 256, 256),                    # fire8
        F(64, 256, 256),                    # fire9
    )),
}
del F


class Fire(nn.Module):
    """Fire module (§3.2): ReLU after the squeeze and after both expand convs."""

    def __init__(self, in_ch: int, row: FireRow) -> None:
        super().__init__()
        self.squeeze = nn.Conv2d(in_ch, row.squeeze, 1)
        self.squeeze_activation = nn.ReLU(inplace=True)
        self.expand1x1 = nn.Conv2d(row.squeeze, row.expand1x1, 1)
        self.expand1x1_activation = nn.ReLU(inplace=True)
        self.expand3x3 = nn.Conv2d(row.squeeze, row.expand3x3, 3, padding=1)
        self.expand3x3_activation = nn.ReLU(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        x = self.squeeze_activation(self.squeeze(x))
        return torch.cat((self.expand1x1_activation(self.expand1x1(x)),
                          self.expand3x3_activation(self.expand3x3(x))), 1)


class SqueezeNet(SequentialBackbone):
    """SqueezeNet feature extractor: stride-16 feature = fire9 output (512 channels).

    Args:
        version: ``"1_0"`` (paper Table 1) or ``"1_1"`` (official v1.1).
        padding: ``"same"`` (default) pads conv1 by ``k // 2`` and the max-pools by 1
            so every map is exactly input/stride (the backbone contract);
            ``"caffe"`` is the released Caffe model and torchvision's port:
            unpadded conv1 and ceil-mode pools (111/55/27/13 maps at 224). Both
            have the same weights; use ``"caffe"`` for torchvision-identical logits.
        output_stride: 16 only (the network's native stride).
        taps: per stride, ``"deepest"`` (default) or ``"first"`` (see
            :class:`~mobiledense.backbones.SequentialBackbone`).
        dropout: dropout before conv10 in the classifier head (§3.3: 50%).
    """

    supported_output_strides = (16,)
    supported_taps = ("deepest", "first")
    options = ("padding", "dropout")  # version: one factory each
    size_divisor = 16

    def __init__(self, version: str = "1_1", padding: str = "same", output_stride: int = 16,
                 taps: Mapping[int, str] | None = None, dropout: float = 0.5) -> None:
        super().__init__()
        if version not in SPECS:
            raise ValueError(f"SqueezeNet version must be one of {tuple(SPECS)}, got {version!r}")
        if padding not in ("same", "caffe"):
            raise ValueError(f"SqueezeNet padding must be 'same' or 'caffe', got {padding!r}")
        check_output_stride(f"squeezenet{version}", output_stride, self.supported_output_strides)
        spec = SPECS[version]
        self.version, self.padding, self.dropout = version, padding, dropout
        self.output_stride = output_stride
        same = padding == "same"

        layers: list[nn.Module] = [
            nn.Conv2d(3, spec.stem_ch, spec.stem_kernel, 2, spec.stem_kernel // 2 if same else 0),
            nn.ReLU(inplace=True),
        ]
        strides, channels, stride, in_ch = [2, 2], [spec.stem_ch] * 2, 2, spec.stem_ch
        for row in spec.fires:
            if row.pool_before:
                layers.append(nn.MaxPool2d(3, 2, padding=1) if same else nn.MaxPool2d(3, 2, ceil_mode=True))
                stride *= 2
                strides.append(stride)
                channels.append(in_ch)
            layers.append(Fire(in_ch, row))
            in_ch = row.out_ch
            strides.append(stride)
            channels.append(in_ch)
        self.features = nn.Sequential(*layers)
        self._init_taps(strides, channels, taps)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_uniform_(m.weight)
                nn.init.zeros_(m.bias)

    def feature_layers(self) -> list[nn.Module]:
        return list(self.features)

    def classifier_head(self, num_classes: int) -> nn.Module:
        return ClassifierHead(self.out_channels, num_classes, self.dropout)


class ClassifierHead(nn.Module):
    """Table 1's last rows: dropout -> conv10 (1x1, one map per class) -> ReLU -> global avg pool."""

    def __init__(self, in_ch: int, num_classes: int, dropout: float = 0.5) -> None:
        super().__init__()
        conv10 = nn.Conv2d(in_ch, num_classes, 1)
        nn.init.normal_(conv10.weight, 0, 0.01)
        nn.init.zeros_(conv10.bias)
        self.classifier = nn.Sequential(nn.Dropout(dropout), conv10, nn.ReLU(inplace=True),
                                        nn.AdaptiveAvgPool2d(1))

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(x).flatten(1)


@register_backbone("squeezenet1_0", paper="arXiv:1602.07360", torchvision="squeezenet1_0",
                   family=SqueezeNet)
def squeezenet1_0(**kwargs) -> SqueezeNet:
    return SqueezeNet("1_0", **kwargs)


@register_backbone("squeezenet1_1", paper="arXiv:1602.07360", torchvision="squeezenet1_1",
                   family=SqueezeNet)
def squeezenet1_1(**kwargs) -> SqueezeNet:
    return SqueezeNet("1_1", **kwargs)
