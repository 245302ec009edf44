"""mobiledense.heads: SSDLite detection (MobileNetV3 paper §6.3) and segmentation heads.

Detection: ``create_detector(name, num_classes)`` / ``list_detectors()``, the
named factories (``ssdlite320_mobilenet_v3_large``, ``ssdlite_<backbone>`` for
every registered backbone) and the pure units (default boxes, box coder,
matcher, losses) the :class:`SSDLite` meta-architecture is made of.
Inference: ``optimize_for_inference(model)`` (BN folding, fused conv + activation,
channels-last; :mod:`mobiledense.heads.inference`).
"""

from . import detector as _detector
from .anchors import DefaultBoxes
from .box_coder import BoxCoder
from .detector import (
    SSDLite,
    batched_nms_topn,
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
from .inference import (
    FusedConv2d,
    InferenceOnlyError,
    fold_batchnorm,
    fuse_conv_activations,
    optimize_for_inference,
)
from .losses import focal_multibox_loss, hard_negative_mask, multibox_loss
from .matcher import SSDMatcher
from .ssdlite import SSDLiteHead, extra_blocks
from . import lraspp as _lraspp
from .lraspp import (
    LargeKernelAvgPool,
    LRASPPHead,
    create_segmenter,
    get_segmenter_factory,
    list_segmenters,
    lraspp_from_torchvision,
    lraspp_mobilenet_v3_large,
    lraspp_mobilenet_v3_small,
)
from .segmenter import Normalize, Segmenter

# smp (and through it timm / huggingface_hub) costs seconds to import: loaded on first use.
_LAZY = {
    "build_seg_loss": "seg_losses", "SegLoss": "seg_losses", "SEG_LOSSES": "seg_losses",
    "register_smp_encoders": "smp_encoders", "create_smp_model": "smp_encoders",
    "SmpEncoder": "smp_encoders", "SmpSegmenter": "smp_encoders",
}

__all__ = [
    "BoxCoder",
    "DefaultBoxes",
    "FusedConv2d",
    "InferenceOnlyError",
    "SSDLite",
    "SSDLiteHead",
    "SSDMatcher",
    "batched_nms_topn",
    "build_ssdlite",
    "create_detector",
    "detector_madds",
    "extra_blocks",
    "focal_multibox_loss",
    "fold_batchnorm",
    "fuse_conv_activations",
    "from_torchvision_ssdlite",
    "get_detector_factory",
    "hard_negative_mask",
    "list_detectors",
    "multibox_loss",
    "optimize_for_inference",
    "select_detections",
    "ssdlite320_mobilenet_v3_large",
    "ssdlite_mobilenet_v2",
    "ssdlite_mobilenet_v3_small",
    "LargeKernelAvgPool",
    "LRASPPHead",
    "Normalize",
    "Segmenter",
    "create_segmenter",
    "get_segmenter_factory",
    "list_segmenters",
    "lraspp_from_torchvision",
    "lraspp_mobilenet_v3_large",
    "lraspp_mobilenet_v3_small",
    *_LAZY,
]


def __getattr__(name: str):
    """Lazy smp names, and ``ssdlite_<backbone>`` / ``lraspp_<backbone>`` for every registered
    backbone, resolved at call time (PEP 562)."""
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    if name.startswith("lraspp_"):
        return getattr(_lraspp, name)
    return getattr(_detector, name)
