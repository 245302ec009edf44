"""Backbone zoo: every network returns ``dict[stride, Tensor]`` and declares ``channels``."""

from ._base import (
    BACKBONES,
    TAP_KINDS,
    Backbone,
    BackboneEntry,
    ExpansionTappable,
    ImageClassifier,
    SequentialBackbone,
    count_madds,
    count_params,
    create_backbone,
    create_classifier,
    get_backbone_entry,
    list_backbones,
    CHECKSUM_KEY,
    load_file_safely,
    load_state_dict_file,
    summarize_load_error,
    tensor_checksum,
    register_backbone,
)
from . import mobilenetv1  # noqa: F401
from . import mobilenetv2  # noqa: F401
from . import mobilenetv3  # noqa: F401  (registers its factories)
from . import shufflenet  # noqa: F401
from . import squeezenet  # noqa: F401
from . import xception  # noqa: F401
from . import pretrained  # noqa: F401  (the named weights)

__all__ = [
    "BACKBONES",
    "TAP_KINDS",
    "Backbone",
    "BackboneEntry",
    "ExpansionTappable",
    "ImageClassifier",
    "SequentialBackbone",
    "count_madds",
    "count_params",
    "create_backbone",
    "create_classifier",
    "get_backbone_entry",
    "list_backbones",
    "CHECKSUM_KEY",
    "load_file_safely",
    "load_state_dict_file",
    "summarize_load_error",
    "tensor_checksum",
    "register_backbone",
]
