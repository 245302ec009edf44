"""mobiledense.heads: SSDLite detection (MobileNetV3 paper §6.3) and segmentation heads.

Detection: ``create_detector(name, num_classes)`` / ``list_detectors()``, the
named factories (``ssdlite320_mobilenet_v3_large``, ``ssdlite_<backbone>`` for
every registered backbone) and the pure units (default boxes, box coder,
matcher, losses) the :class:`SSDLite` meta-architecture is made of.
"""

from . import detector as _detector
from .anchors import DefaultBoxes
from .box_coder import BoxCoder
from .detector import (
    SSDLite,
    build_ssdlite,
    create_detector,
    detector_madds,
    from_torchvision_ssdlite,
    get_detector_factory,
    list_detectors,
    select_detections,
    ssdlite320_mobilenet_v3_large,
    ssdlite_mobilenet_v2,
    ssdlite_mobilenet_v3_small,
)
from .losses import focal_multibox_loss, hard_negative_mask, multibox_loss
from .matcher import SSDMatcher
from .ssdlite import SSDLiteHead, extra_blocks

__all__ = [
    "BoxCoder",
    "DefaultBoxes",
    "SSDLite",
    "SSDLiteHead",
    "SSDMatcher",
    "build_ssdlite",
    "create_detector",
    "detector_madds",
    "extra_blocks",
    "focal_multibox_loss",
    "from_torchvision_ssdlite",
    "get_detector_factory",
    "hard_negative_mask",
    "list_detectors",
    "multibox_loss",
    "select_detections",
    "ssdlite320_mobilenet_v3_large",
    "ssdlite_mobilenet_v2",
    "ssdlite_mobilenet_v3_small",
]


def __getattr__(name: str):
    """``ssdlite_<backbone>`` for every registered backbone, resolved at call time (PEP 562)."""
    return getattr(_detector, name)
