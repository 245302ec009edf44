"""Every public model name, written out: SSDLite and LR-ASPP on each registered backbone.

Each function is registered (``@register_model``) with the spec it stands for, so
``list_models()`` lists it, ``model_spec(name)`` gives its :class:`~mobiledense.heads.spec.ModelSpec`
and the function itself builds it through the one builder,
:func:`~mobiledense.heads.registry.create_model`. Options (``reduced_tail``, ``width_mult``,
``size``, ``pool`` ...) go on top of the defaults; ``weights`` / ``weights_backbone`` load local
files. ``tests/heads/test_zoo.py`` checks that every backbone has both names.
"""

from __future__ import annotations

from typing import Any

from .detector import SSDLite
from .registry import create_model, register_model
from .segmenter import Segmenter

__all__ = [
    "ssdlite320_mobilenet_v3_large",
    "ssdlite_mobilenet_v1",
    "ssdlite_mobilenet_v2",
    "ssdlite_mobilenet_v3_large",
    "ssdlite_mobilenet_v3_small",
    "ssdlite_shufflenet_v1_g3",
    "ssdlite_shufflenet_v1_g8",
    "ssdlite_shufflenet_v2_x0_5",
    "ssdlite_shufflenet_v2_x1_0",
    "ssdlite_shufflenet_v2_x1_5",
    "ssdlite_shufflenet_v2_x2_0",
    "ssdlite_squeezenet1_0",
    "ssdlite_squeezenet1_1",
    "ssdlite_xception",
    "lraspp_mobilenet_v1",
    "lraspp_mobilenet_v2",
    "lraspp_mobilenet_v3_large",
    "lraspp_mobilenet_v3_small",
    "lraspp_shufflenet_v1_g3",
    "lraspp_shufflenet_v1_g8",
    "lraspp_shufflenet_v2_x0_5",
    "lraspp_shufflenet_v2_x1_0",
    "lraspp_shufflenet_v2_x1_5",
    "lraspp_shufflenet_v2_x2_0",
    "lraspp_squeezenet1_0",
    "lraspp_squeezenet1_1",
    "lraspp_xception",
]

# ---------------------------------------------------------------------- SSDLite (MobileNetV3 paper §6.3)


@register_model(task="det", head="ssdlite", backbone="mobilenet_v3_large", num_classes=91, size=320)
def ssdlite320_mobilenet_v3_large(num_classes: int = 91, **options: Any) -> SSDLite:
    """torchvision's name: SSDLite at 320x320 on MobileNetV3-Large; same outputs as torchvision's model."""
    return create_model("ssdlite320_mobilenet_v3_large", num_classes=num_classes, **options)


@register_model(task="det", head="ssdlite", backbone="mobilenet_v1", num_classes=91)
def ssdlite_mobilenet_v1(num_classes: int = 91, **options: Any) -> SSDLite:
    """SSDLite on MobileNetV1 (arXiv 1704.04861)."""
    return create_model("ssdlite_mobilenet_v1", num_classes=num_classes, **options)


@register_model(task="det", head="ssdlite", backbone="mobilenet_v2", num_classes=91)
def ssdlite_mobilenet_v2(num_classes: int = 91, **options: Any) -> SSDLite:
    """Paper Table 6 "V2" row (MobileNetV2 §6.2)."""
    return create_model("ssdlite_mobilenet_v2", num_classes=num_classes, **options)


@register_model(task="det", head="ssdlite", backbone="mobilenet_v3_large", num_classes=91)
def ssdlite_mobilenet_v3_large(num_classes: int = 91, **options: Any) -> SSDLite:
    """Paper Table 6 "V3" (``reduced_tail=True``: "V3†", the layout torchvision builds without ImageNet weights)."""
    return create_model("ssdlite_mobilenet_v3_large", num_classes=num_classes, **options)


@register_model(task="det", head="ssdlite", backbone="mobilenet_v3_small", num_classes=91)
def ssdlite_mobilenet_v3_small(num_classes: int = 91, **options: Any) -> SSDLite:
    """Paper Table 6 "V3-Small" rows (``reduced_tail=True``: "V3-Small†")."""
    return create_model("ssdlite_mobilenet_v3_small", num_classes=num_classes, **options)


@register_model(task="det", head="ssdlite", backbone="shufflenet_v1_g3", num_classes=91)
def ssdlite_shufflenet_v1_g3(num_classes: int = 91, **options: Any) -> SSDLite:
    """SSDLite on ShuffleNetV1, 3 groups (arXiv 1707.01083)."""
    return create_model("ssdlite_shufflenet_v1_g3", num_classes=num_classes, **options)


@register_model(task="det", head="ssdlite", backbone="shufflenet_v1_g8", num_classes=91)
def ssdlite_shufflenet_v1_g8(num_classes: int = 91, **options: Any) -> SSDLite:
    """SSDLite on ShuffleNetV1, 8 groups (arXiv 1707.01083)."""
    return create_model("ssdlite_shufflenet_v1_g8", num_classes=num_classes, **options)


@register_model(task="det", head="ssdlite", backbone="shufflenet_v2_x0_5", num_classes=91)
def ssdlite_shufflenet_v2_x0_5(num_classes: int = 91, **options: Any) -> SSDLite:
    """SSDLite on ShuffleNetV2 0.5x (arXiv 1807.11164)."""
    return create_model("ssdlite_shufflenet_v2_x0_5", num_classes=num_classes, **options)


@register_model(task="det", head="ssdlite", backbone="shufflenet_v2_x1_0", num_classes=91)
def ssdlite_shufflenet_v2_x1_0(num_classes: int = 91, **options: Any) -> SSDLite:
    """SSDLite on ShuffleNetV2 1.0x (arXiv 1807.11164)."""
    return create_model("ssdlite_shufflenet_v2_x1_0", num_classes=num_classes, **options)


@register_model(task="det", head="ssdlite", backbone="shufflenet_v2_x1_5", num_classes=91)
def ssdlite_shufflenet_v2_x1_5(num_classes: int = 91, **options: Any) -> SSDLite:
    """SSDLite on ShuffleNetV2 1.5x (arXiv 1807.11164)."""
    return create_model("ssdlite_shufflenet_v2_x1_5", num_classes=num_classes, **options)


@register_model(task="det", head="ssdlite", backbone="shufflenet_v2_x2_0", num_classes=91)
def ssdlite_shufflenet_v2_x2_0(num_classes: int = 91, **options: Any) -> SSDLite:
    """SSDLite on ShuffleNetV2 2.0x (arXiv 1807.11164)."""
    return create_model("ssdlite_shufflenet_v2_x2_0", num_classes=num_classes, **options)


@register_model(task="det", head="ssdlite", backbone="squeezenet1_0", num_classes=91)
def ssdlite_squeezenet1_0(num_classes: int = 91, **options: Any) -> SSDLite:
    """SSDLite on SqueezeNet 1.0 (arXiv 1602.07360; deepest stride 16: SSD levels 8 and 16)."""
    return create_model("ssdlite_squeezenet1_0", num_classes=num_classes, **options)


@register_model(task="det", head="ssdlite", backbone="squeezenet1_1", num_classes=91)
def ssdlite_squeezenet1_1(num_classes: int = 91, **options: Any) -> SSDLite:
    """SSDLite on SqueezeNet 1.1 (arXiv 1602.07360; deepest stride 16: SSD levels 8 and 16)."""
    return create_model("ssdlite_squeezenet1_1", num_classes=num_classes, **options)


@register_model(task="det", head="ssdlite", backbone="xception", num_classes=91)
def ssdlite_xception(num_classes: int = 91, **options: Any) -> SSDLite:
    """SSDLite on Xception (arXiv 1610.02357)."""
    return create_model("ssdlite_xception", num_classes=num_classes, **options)


# ---------------------------------------------------------------------- LR-ASPP (MobileNetV3 paper §6.4)


@register_model(task="seg", head="lraspp", backbone="mobilenet_v1", num_classes=19)
def lraspp_mobilenet_v1(num_classes: int = 19, **options: Any) -> Segmenter:
    """LR-ASPP on MobileNetV1 (arXiv 1704.04861)."""
    return create_model("lraspp_mobilenet_v1", num_classes=num_classes, **options)


@register_model(task="seg", head="lraspp", backbone="mobilenet_v2", num_classes=19)
def lraspp_mobilenet_v2(num_classes: int = 19, **options: Any) -> Segmenter:
    """LR-ASPP on MobileNetV2 (arXiv 1801.04381; SSDLite is its §6.2)."""
    return create_model("lraspp_mobilenet_v2", num_classes=num_classes, **options)


@register_model(task="seg", head="lraspp", backbone="mobilenet_v3_large", num_classes=19)
def lraspp_mobilenet_v3_large(num_classes: int = 19, **options: Any) -> Segmenter:
    """§6.4's LR-ASPP on MobileNetV3-Large; ``reduced_tail=True`` is Table 7's "RF2". torchvision-equal."""
    return create_model("lraspp_mobilenet_v3_large", num_classes=num_classes, **options)


@register_model(task="seg", head="lraspp", backbone="mobilenet_v3_small", num_classes=19)
def lraspp_mobilenet_v3_small(num_classes: int = 19, **options: Any) -> Segmenter:
    """§6.4's LR-ASPP on MobileNetV3-Small (Table 7, bottom rows)."""
    return create_model("lraspp_mobilenet_v3_small", num_classes=num_classes, **options)


@register_model(task="seg", head="lraspp", backbone="shufflenet_v1_g3", num_classes=19)
def lraspp_shufflenet_v1_g3(num_classes: int = 19, **options: Any) -> Segmenter:
    """LR-ASPP on ShuffleNetV1, 3 groups (arXiv 1707.01083)."""
    return create_model("lraspp_shufflenet_v1_g3", num_classes=num_classes, **options)


@register_model(task="seg", head="lraspp", backbone="shufflenet_v1_g8", num_classes=19)
def lraspp_shufflenet_v1_g8(num_classes: int = 19, **options: Any) -> Segmenter:
    """LR-ASPP on ShuffleNetV1, 8 groups (arXiv 1707.01083)."""
    return create_model("lraspp_shufflenet_v1_g8", num_classes=num_classes, **options)


@register_model(task="seg", head="lraspp", backbone="shufflenet_v2_x0_5", num_classes=19)
def lraspp_shufflenet_v2_x0_5(num_classes: int = 19, **options: Any) -> Segmenter:
    """LR-ASPP on ShuffleNetV2 0.5x (arXiv 1807.11164)."""
    return create_model("lraspp_shufflenet_v2_x0_5", num_classes=num_classes, **options)


@register_model(task="seg", head="lraspp", backbone="shufflenet_v2_x1_0", num_classes=19)
def lraspp_shufflenet_v2_x1_0(num_classes: int = 19, **options: Any) -> Segmenter:
    """LR-ASPP on ShuffleNetV2 1.0x (arXiv 1807.11164)."""
    return create_model("lraspp_shufflenet_v2_x1_0", num_classes=num_classes, **options)


@register_model(task="seg", head="lraspp", backbone="shufflenet_v2_x1_5", num_classes=19)
def lraspp_shufflenet_v2_x1_5(num_classes: int = 19, **options: Any) -> Segmenter:
    """LR-ASPP on ShuffleNetV2 1.5x (arXiv 1807.11164)."""
    return create_model("lraspp_shufflenet_v2_x1_5", num_classes=num_classes, **options)


@register_model(task="seg", head="lraspp", backbone="shufflenet_v2_x2_0", num_classes=19)
def lraspp_shufflenet_v2_x2_0(num_classes: int = 19, **options: Any) -> Segmenter:
    """LR-ASPP on ShuffleNetV2 2.0x (arXiv 1807.11164)."""
    return create_model("lraspp_shufflenet_v2_x2_0", num_classes=num_classes, **options)


@register_model(task="seg", head="lraspp", backbone="squeezenet1_0", num_classes=19)
def lraspp_squeezenet1_0(num_classes: int = 19, **options: Any) -> Segmenter:
    """LR-ASPP on SqueezeNet 1.0 (arXiv 1602.07360; deepest stride 16: SSD levels 8 and 16)."""
    return create_model("lraspp_squeezenet1_0", num_classes=num_classes, **options)


@register_model(task="seg", head="lraspp", backbone="squeezenet1_1", num_classes=19)
def lraspp_squeezenet1_1(num_classes: int = 19, **options: Any) -> Segmenter:
    """LR-ASPP on SqueezeNet 1.1 (arXiv 1602.07360; deepest stride 16: SSD levels 8 and 16)."""
    return create_model("lraspp_squeezenet1_1", num_classes=num_classes, **options)


@register_model(task="seg", head="lraspp", backbone="xception", num_classes=19)
def lraspp_xception(num_classes: int = 19, **options: Any) -> Segmenter:
    """LR-ASPP on Xception (arXiv 1610.02357)."""
    return create_model("lraspp_xception", num_classes=num_classes, **options)
