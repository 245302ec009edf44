"""Lite Reduced Atrous Spatial Pyramid Pooling (LR-ASPP).

Howard et al., "Searching for MobileNetV3", ICCV 2019, arXiv 1905.02244, §6.4 and
Fig. 10. Module names follow torchvision's ``LRASPPHead`` (``cbr``, ``scale``,
``low_classifier``, ``high_classifier``), so its checkpoints load through
:func:`lraspp_from_torchvision`.
"""

from __future__ import annotations

from typing import Any, Callable, Literal, Mapping

import torch.nn.functional as F
from torch import Tensor, nn

from mobiledense.backbones import BACKBONES, Backbone, create_backbone, list_backbones, load_state_dict_file

from .segmenter import Segmenter

__all__ = [
    "LRASPPHead",
    "LargeKernelAvgPool",
    "PAPER_TRAIN_CROP",
    "PAPER_POOL_STRIDE",
    "create_segmenter",
    "lraspp_from_torchvision",
    "lraspp_mobilenet_v3_large",
    "lraspp_mobilenet_v3_small",
    "list_segmenters",
    "get_segmenter_factory",
]

PoolMode = Literal["global", "paper"]

#: Training crop the paper's pooling window spans: Fig. 10's 49x49 kernel on the
#: stride-16 map is ceil(769 / 16); 769x769 is the ``image_pooling_crop_size`` of
#: the authors' TF DeepLab Cityscapes recipe for MobileNetV3.
PAPER_TRAIN_CROP = (769, 769)
#: Fig. 10's pooling stride (rows, cols), in pixels of the high-level feature map
#: (1x4 gate cells on a 1024x2048 frame). The TF recipe's ``image_pooling_stride``
#: is (4, 5): same aspect, 4x denser; pass ``pool_stride=(4, 5)`` to follow it.
PAPER_POOL_STRIDE = (16, 20)


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


def create_segmenter(
    backbone: str, num_classes: int = 19, *, inter_channels: int = 128, pool: PoolMode = "global",
    train_crop: tuple[int, int] = PAPER_TRAIN_CROP, pool_stride: tuple[int, int] = PAPER_POOL_STRIDE,
    output_stride: int | None = None, low_tap: str = "first", normalize: bool = True,
    weights: str | None = None, backbone_weights: str | None = None, **backbone_kwargs,
) -> Segmenter:
    """LR-ASPP on any registered backbone: low = ``feats[8]``, high = deepest feature.

    Args:
        backbone: registry name (``mobiledense.backbones.list_backbones()``).
        num_classes: output classes (19 Cityscapes trainIds).
        inter_channels: LR-ASPP width (128, Table 7).
        pool: ``"global"`` (torchvision) or ``"paper"`` (Fig. 10 large-kernel pooling).
        train_crop: (H, W) training crop; with ``pool="paper"`` the kernel is
            ``ceil(train_crop / high_stride)`` = the whole high map of a training crop
            (49x49 for the default 769x769 at stride 16, as in Fig. 10).
        pool_stride: stride of that pooling, in high-map pixels ((16, 20), Fig. 10).
        output_stride: backbone output stride; default 16 (§6.4) where supported, else the
            backbone's own.
        low_tap: ``"first"`` reads the low branch from the first stride-8 block, as
            torchvision does ("C2", so its checkpoints give identical outputs);
            ``"deepest"`` from the last stride-8 block (the contract's default tap).
        normalize: ImageNet normalisation inside the model (inputs in [0, 1]).
        weights: local checkpoint of the whole model (ours, or torchvision's LR-ASPP keys).
        backbone_weights: local ImageNet checkpoint of the backbone only.
        **backbone_kwargs: family options (``width_mult``, ``reduced_tail`` ...).
    """
    if backbone not in BACKBONES:
        raise KeyError(f"unknown backbone {backbone!r}; valid names: {', '.join(list_backbones())}")
    if output_stride is None:
        probe = create_backbone(backbone, **backbone_kwargs)
        output_stride = 16 if 16 in probe.supported_output_strides else probe.output_stride
    net: Backbone = create_backbone(backbone, weights=backbone_weights, output_stride=output_stride,
                                    **backbone_kwargs)
    if low_tap not in ("first", "deepest"):
        raise ValueError(f"low_tap must be 'first' or 'deepest', got {low_tap!r}")
    if low_tap == "first" and 8 in net.channels:
        net.tap_first_at((8,))
    low, high = 8, max(net.channels)
    if low not in net.channels or high <= low:
        raise ValueError(
            f"LR-ASPP reads feats[8] and a deeper feature; backbone {backbone!r} at "
            f"output_stride={output_stride} returns strides {net.strides} (use output_stride 16 or 32)"
        )
    kernel = (-(-train_crop[0] // high), -(-train_crop[1] // high))
    head = LRASPPHead(net.channels[low], net.channels[high], num_classes, inter_channels,
                      low_stride=low, high_stride=high, pool=pool, pool_kernel=kernel,
                      pool_stride=pool_stride)
    model = Segmenter(net, head, num_classes, normalize=normalize)
    if weights is not None:
        sd = load_state_dict_file(weights)
        model.load_state_dict(lraspp_from_torchvision(sd) if any(k.startswith("classifier.") for k in sd) else sd)
    return model


def lraspp_from_torchvision(state_dict: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Map torchvision ``LRASPP`` keys to :class:`Segmenter` keys.

    torchvision wraps ``mobilenet_v3_large(dilated=True).features`` in an
    ``IntermediateLayerGetter`` (``backbone.<i>.*``) and names the head
    ``classifier``; here they are ``backbone.features.<i>.*`` and ``decoder.*``.
    """
    out = {}
    for k, v in state_dict.items():
        if k.startswith("backbone."):
            out["backbone.features." + k[len("backbone."):]] = v
        elif k.startswith("classifier."):
            out["decoder." + k[len("classifier."):]] = v
        else:
            raise KeyError(f"unexpected key {k!r} in a torchvision LR-ASPP state_dict (aux heads are not supported)")
    return out


def lraspp_mobilenet_v3_large(num_classes: int = 19, reduced_tail: bool = False, width_mult: float = 1.0,
                              pool: PoolMode = "global", **kwargs) -> Segmenter:
    """§6.4's LR-ASPP on MobileNetV3-Large; ``reduced_tail=True`` is Table 7's "RF2"."""
    return create_segmenter("mobilenet_v3_large", num_classes, reduced_tail=reduced_tail,
                            width_mult=width_mult, pool=pool, **kwargs)


def lraspp_mobilenet_v3_small(num_classes: int = 19, reduced_tail: bool = False, width_mult: float = 1.0,
                              pool: PoolMode = "global", **kwargs) -> Segmenter:
    """§6.4's LR-ASPP on MobileNetV3-Small (Table 7, bottom rows)."""
    return create_segmenter("mobilenet_v3_small", num_classes, reduced_tail=reduced_tail,
                            width_mult=width_mult, pool=pool, **kwargs)


_NAMED = {"lraspp_mobilenet_v3_large": lraspp_mobilenet_v3_large,
          "lraspp_mobilenet_v3_small": lraspp_mobilenet_v3_small}


def list_segmenters() -> list[str]:
    """``lraspp_<backbone>`` for every registered backbone."""
    return sorted("lraspp_" + name for name in list_backbones())


def get_segmenter_factory(name: str) -> Callable[..., Segmenter]:
    """The factory of ``lraspp_<backbone>``; the KeyError lists the valid names."""
    if name not in list_segmenters():
        raise KeyError(f"unknown segmenter {name!r}; valid names: {', '.join(list_segmenters())}")
    if name in _NAMED:
        return _NAMED[name]
    backbone = name[len("lraspp_"):]

    def factory(num_classes: int = 19, **kwargs: Any) -> Segmenter:
        return create_segmenter(backbone, num_classes, **kwargs)

    factory.__name__ = factory.__qualname__ = name
    factory.__doc__ = f"LR-ASPP on the registered backbone {backbone!r} (see :func:`create_segmenter`)."
    return factory


def __getattr__(name: str) -> Callable[..., Segmenter]:
    """``lraspp_<backbone>`` factories for every registered backbone (PEP 562)."""
    if name.startswith("lraspp_") and name in list_segmenters():
        return get_segmenter_factory(name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
