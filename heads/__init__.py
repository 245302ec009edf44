"""mobiledense.heads: SSDLite detection (MobileNetV3 paper §6.3), LR-ASPP (§6.4), smp segmentation heads
and the backbones' own classifiers (:mod:`.classifier`).

Models: a typed :class:`~mobiledense.heads.spec.ModelSpec` and ONE builder,
:func:`create_model` (:mod:`.registry`): ``create_model(spec)`` or
``create_model("ssdlite320_mobilenet_v3_large", num_classes=91)``; every public name is a
registered function in :mod:`.zoo` (``list_models()``). The SSD meta-architecture
:class:`SSDLite` takes its parts (backbone, extra layers, default boxes, head:
:func:`ssdlite_parts`) and owns the pure units (box coder, matcher, losses,
:mod:`.postprocess`); torchvision checkpoints map onto ours with :mod:`.convert`.
Inference: ``optimize_for_inference(model)`` (BN folding, fused conv + activation,
channels-last; :mod:`.inference`).
"""

from .spec import BackboneSpec, ClassifierSpec, LRASPPSpec, ModelSpec, SmpSpec, SSDLiteSpec
from .registry import (
    HEADS,
    MODELS,
    build_model_spec,
    create_model,
    get_model_entry,
    list_models,
    model_spec,
    model_task,
    register_head,
    register_model,
    resolve,
)
from .anchors import DefaultBoxes
from .box_coder import BoxCoder
from .convert import from_torchvision_ssdlite, lraspp_from_torchvision, lraspp_to_torchvision
from .detector import SSDLite, build_ssdlite, create_detector, detector_madds
from .inference import (
    FusedConv2d,
    InferenceOnlyError,
    fold_batchnorm,
    fuse_conv_activations,
    inference_model,
    optimize_for_inference,
)
from .losses import focal_multibox_loss, hard_negative_mask, multibox_loss
from .matcher import SSDMatcher
from .postprocess import batched_nms_topn, select_detections
from .ssdlite import FOCAL_PRIOR_BIAS, SSDLiteHead, extra_blocks, ssdlite_parts
from .lraspp import LargeKernelAvgPool, LRASPPHead, create_segmenter
from .classifier import Classifier, build_classifier
from .segmenter import Normalize, Segmenter
from .zoo import *  # noqa: F401,F403 - the registered model functions
from .zoo import __all__ as _ZOO

# smp (and through it timm / huggingface_hub) costs seconds to import: loaded on first use.
_LAZY = {
    "build_seg_loss": "seg_losses", "SegLoss": "seg_losses", "SEG_LOSSES": "seg_losses",
    "register_smp_encoders": "smp_encoders", "create_smp_model": "smp_encoders",
    "SmpEncoder": "smp_encoders", "SmpSegmenter": "smp_encoders",
}

__all__ = [
    "BackboneSpec",
    "BoxCoder",
    "Classifier",
    "ClassifierSpec",
    "DefaultBoxes",
    "FOCAL_PRIOR_BIAS",
    "FusedConv2d",
    "HEADS",
    "InferenceOnlyError",
    "LRASPPHead",
    "LRASPPSpec",
    "LargeKernelAvgPool",
    "MODELS",
    "ModelSpec",
    "Normalize",
    "SSDLite",
    "SSDLiteHead",
    "SSDLiteSpec",
    "SSDMatcher",
    "Segmenter",
    "SmpSpec",
    "batched_nms_topn",
    "build_classifier",
    "build_model_spec",
    "build_ssdlite",
    "create_detector",
    "create_model",
    "create_segmenter",
    "detector_madds",
    "extra_blocks",
    "focal_multibox_loss",
    "fold_batchnorm",
    "from_torchvision_ssdlite",
    "fuse_conv_activations",
    "get_model_entry",
    "hard_negative_mask",
    "inference_model",
    "list_models",
    "lraspp_from_torchvision",
    "lraspp_to_torchvision",
    "model_spec",
    "model_task",
    "multibox_loss",
    "optimize_for_inference",
    "register_head",
    "register_model",
    "resolve",
    "select_detections",
    "ssdlite_parts",
    *_ZOO,
    *_LAZY,
]


def __getattr__(name: str):
    """The smp names, imported on first use (PEP 562)."""
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
