"""Xception: depthwise separable convolutions with residual connections.

Chollet, "Xception: Deep Learning with Depthwise Separable Convolutions",
CVPR 2017, arXiv 1610.02357 (Fig. 5): entry flow, middle flow repeated 8
times, exit flow; 22,855,952 parameters (Table 3).

This is the plain architecture of Fig. 5 (max-pool downsampling), not the
"aligned" Xception of DeepLabV3+. Module names follow the Keras-ported PyTorch
model (Cadene / timm ``legacy_xception``: ``conv1``, ``bn1``, ``block1``-``block12``,
``conv3``, ``bn4``, ..., head ``fc``), so its checkpoints load by prefix mapping.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

from torch import Tensor, nn

from ._base import SequentialBackbone, check_output_stride, plan_dilation, register_backbone

__all__ = ["Xception", "Block", "BlockRow", "SeparableConv2d", "BLOCKS", "EXIT_CONVS"]


@dataclass(frozen=True)
class BlockRow:
    """One residual block of Fig. 5: [ReLU -> SeparableConv -> BN] per entry of ``convs``."""

    convs: tuple[int, ...]  # output channels of the 3x3 separable convs
    stride: int  # 2: ends with a 3x3/2 max-pool, shortcut = 1x1/2 conv + BN; 1: identity shortcut
    relu_first: bool = True  # block1 directly follows the stem's ReLU


B = BlockRow
BLOCKS: tuple[BlockRow, ...] = (
    # Entry flow (after the stem: conv 32 3x3/2, conv 64 3x3, stride 2)
    B((128, 128), 2, relu_first=False),  # block1, stride 4
    B((256, 256), 2),                    # block2, stride 8
    B((728, 728), 2),                    # block3, stride 16
    # Middle flow, "repeated eight times"
    *(B((728, 728, 728), 1) for _ in range(8)),  # block4-block11
    # Exit flow
    B((728, 1024), 2),                   # block12, stride 32
)
del B
EXIT_CONVS = (1536, 2048)  # SeparableConv -> BN -> ReLU twice, then global average pool


class SeparableConv2d(nn.Module):
    """Depthwise 3x3 then pointwise 1x1, with no non-linearity in between (§4.7)."""

    def __init__(self, in_ch: int, out_ch: int, dilation: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, in_ch, 3, 1, dilation, dilation, groups=in_ch, bias=False)
        self.pointwise = nn.Conv2d(in_ch, out_ch, 1, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.pointwise(self.conv1(x))


def _max_pool(stride: int, dilation: int) -> nn.Module:
    """3x3 max-pool; at a rate > 1 (stride 1) it is dilated, padded with -inf explicitly
    because ``nn.MaxPool2d`` refuses a padding larger than half its kernel."""
    if dilation == 1:
        return nn.MaxPool2d(3, stride, padding=1)
    return nn.Sequential(nn.ConstantPad2d(dilation, float("-inf")), nn.MaxPool2d(3, 1, dilation=dilation))


class Block(nn.Module):
    """A Fig. 5 residual block.

    Args:
        stride: 1 for a strided row that ``output_stride`` turned into a dilated one.
        dilation: rate of the block's input; its separable convs and max-pool run at
            this rate (DeepLab's atrous conversion: only later blocks use the doubled rate).
    """

    def __init__(self, in_ch: int, row: BlockRow, stride: int, dilation: int) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        ch = in_ch
        for i, out in enumerate(row.convs):
            if i > 0 or row.relu_first:
                layers.append(nn.ReLU(inplace=i > 0))  # the first must keep the shortcut's input intact
            layers += [SeparableConv2d(ch, out, dilation), nn.BatchNorm2d(out)]
            ch = out
        if row.stride != 1:
            layers.append(_max_pool(stride, dilation))
        self.rep = nn.Sequential(*layers)
        if row.stride != 1 or in_ch != ch:
            self.skip: nn.Conv2d | None = nn.Conv2d(in_ch, ch, 1, stride, bias=False)
            self.skipbn = nn.BatchNorm2d(ch)
        else:
            self.skip = None

    def forward(self, x: Tensor) -> Tensor:
        shortcut = x if self.skip is None else self.skipbn(self.skip(x))
        return self.rep(x) + shortcut


class Xception(SequentialBackbone):
    """Xception feature extractor: strides 2 (stem), 4, 8 (block1/2), 16 (block11), 32 (2048 ch).

    Args:
        output_stride: 32, 16 or 8; the blocks past it keep stride 1 and their
            successors are dilated (DeepLabV3+ uses 16 for training, 8 for evaluation).
        padding: ``"same"`` (default) pads the 3x3 stem convs so every map is exactly
            input/stride; ``"valid"`` is the Keras reference (unpadded stem, 299 -> 147),
            for logits identical to Keras-ported checkpoints (timm ``legacy_xception``).
        taps: per stride, ``"deepest"`` (default) or ``"first"`` (see
            :class:`~mobiledense.backbones.SequentialBackbone`).
    """

    supported_output_strides = (8, 16, 32)
    supported_taps = ("deepest", "first")
    options = ("padding",)

    def __init__(self, output_stride: int = 32, padding: str = "same",
                 taps: Mapping[int, str] | None = None) -> None:
        super().__init__()
        check_output_stride("xception", output_stride, self.supported_output_strides)
        if padding not in ("same", "valid"):
            raise ValueError(f"Xception padding must be 'same' or 'valid', got {padding!r}")
        self.output_stride, self.padding = output_stride, padding
        pad = 1 if padding == "same" else 0
        self.conv1 = nn.Conv2d(3, 32, 3, 2, pad, bias=False)
        self.bn1 = nn.BatchNorm2d(32)
        self.act1 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(32, 64, 3, 1, pad, bias=False)
        self.bn2 = nn.BatchNorm2d(64)
        self.act2 = nn.ReLU(inplace=True)
        self._names = ["conv1", "bn1", "act1", "conv2", "bn2", "act2"]
        strides, channels = [2] * 6, [32, 32, 32, 64, 64, 64]

        plan = plan_dilation([2] + [row.stride for row in BLOCKS], output_stride)[1:]
        ch, rate = 64, 1
        for i, (row, (s, d)) in enumerate(zip(BLOCKS, plan), start=1):
            setattr(self, f"block{i}", Block(ch, row, s, rate))
            ch, rate = row.convs[-1], d
            self._names.append(f"block{i}")
            strides.append(strides[-1] * s)
            channels.append(ch)
        for i, out in enumerate(EXIT_CONVS, start=3):
            self.add_module(f"conv{i}", SeparableConv2d(ch, out, rate))
            self.add_module(f"bn{i}", nn.BatchNorm2d(out))
            self.add_module(f"act{i}", nn.ReLU(inplace=True))
            self._names += [f"conv{i}", f"bn{i}", f"act{i}"]
            strides += [strides[-1]] * 3
            channels += [out] * 3
            ch = out
        self._init_taps(strides, channels, taps)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def feature_layers(self) -> list[nn.Module]:
        return [getattr(self, name) for name in self._names]

    def classifier_head(self, num_classes: int) -> nn.Module:
        return ClassifierHead(self.out_channels, num_classes)


class ClassifierHead(nn.Module):
    """Fig. 5's last rows: global average pool -> logistic regression (module ``fc``)."""

    def __init__(self, in_ch: int, num_classes: int) -> None:
        super().__init__()
        self.fc = nn.Linear(in_ch, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(x.mean((2, 3)))


@register_backbone("xception", paper="arXiv:1610.02357", family=Xception)
def xception(**kwargs) -> Xception:
    return Xception(**kwargs)
