"""Image classification: the backbone's own classifier head, registered as the ``classifier`` head.

``create_model(build_model_spec("cls", "classifier", "mobilenet_v3_large", 1000))`` is
:func:`~mobiledense.backbones.create_classifier`'s network (torchvision-exact layers and keys:
``backbone.*``, ``head.*``) with the ImageNet normalisation inside, so, as the segmenters do,
it takes RGB in [0, 1]. Its ``backbone.*`` tensors are exactly what ``--weights-backbone``
of a detector or segmenter loads.
"""

from __future__ import annotations

from pathlib import Path

from torch import Tensor

from mobiledense.backbones import BackboneEntry, ImageClassifier, create_backbone

from .registry import backbone_kwargs, register_head
from .segmenter import Normalize
from .spec import ClassifierSpec, ModelSpec

__all__ = ["Classifier", "build_classifier", "classifier_weights"]


class Classifier(ImageClassifier):
    """``head(backbone(normalize(x))[deepest])``: logits ``(N, num_classes)`` of RGB images in [0, 1]."""

    def __init__(self, backbone, num_classes: int, normalize: bool = True) -> None:  # noqa: ANN001
        super().__init__(backbone, num_classes)
        self.normalize = Normalize() if normalize else None  # no state: the keys stay torchvision's

    def forward(self, x: Tensor) -> Tensor:
        return super().forward(self.normalize(x) if self.normalize is not None else x)


def classifier_weights(sd: dict) -> dict:
    """A torchvision / timm-converted classifier state_dict (``features.*``, ``classifier.*`` / ``fc.*``)
    in our keys (``backbone.*``, ``head.*``); ours passes unchanged."""
    if any(k.startswith(("backbone.", "head.")) for k in sd):
        return dict(sd)
    return {("head." if k.split(".")[0] in ("classifier", "fc") else "backbone.") + k: v for k, v in sd.items()}


def _classifier_defaults(spec: ModelSpec, entry: BackboneEntry) -> tuple[int | None, dict[int, str]]:
    return max(entry.output_strides), {}  # the native stride: what the classifier was designed at


@register_head("classifier", task="cls", spec=ClassifierSpec, backbone_defaults=_classifier_defaults,
               convert=classifier_weights)
def build_classifier(spec: ModelSpec, weights_backbone: str | Path | None = None) -> Classifier:
    """The classifier of a resolved ``cls`` spec (``weights_backbone``: the backbone's starting weights)."""
    b = spec.backbone
    net = create_backbone(b.name, weights=weights_backbone, **backbone_kwargs(b))
    return Classifier(net, spec.num_classes, spec.head.normalize)
