"""Backbone zoo: every network returns ``dict[stride, Tensor]`` and declares ``channels``."""

from ._base import (
    BACKBONES,
    Backbone,
    ImageClassifier,
    SequentialBackbone,
    count_madds,
    count_params,
    create_backbone,
    create_classifier,
    list_backbones,
    load_state_dict_file,
    register_backbone,
)
from . import mobilenetv1  # noqa: F401
from . import mobilenetv2  # noqa: F401
from . import mobilenetv3  # noqa: F401  (registers its factories)
from . import shufflenet  # noqa: F401
from . import squeezenet  # noqa: F401
from . import xception  # noqa: F401

__all__ = [
    "BACKBONES",
    "Backbone",
    "ImageClassifier",
    "SequentialBackbone",
    "count_madds",
    "count_params",
    "create_backbone",
    "create_classifier",
    "list_backbones",
    "load_state_dict_file",
    "register_backbone",
]
