"""Typed, frozen model specs: what a network is, serialisable, rebuilt by ``create_model``.

A :class:`ModelSpec` names the task, the backbone and its options, the head and its options,
the classes and (for detection) the original category ids. It is pure data (pydantic, JSON
round-trip, unknown fields refused), so a checkpoint that stores it can be rebuilt by
:func:`mobiledense.heads.create_model` in any later process, with nothing re-guessed::

    spec = model_spec("ssdlite320_mobilenet_v3_large", num_classes=7, reduced_tail=True)
    model = create_model(spec)
    ModelSpec.model_validate_json(spec.model_dump_json()) == spec   # True

Fields a head chooses by itself (the backbone's output stride and taps) are ``None`` in a
spec written by hand and filled in by :func:`~mobiledense.heads.registry.resolve`; the spec a
built model carries (``model.spec``) and every checkpoint stores is the resolved one.
"""

from __future__ import annotations

from typing import Annotated, Any, ClassVar, Literal, TypeVar, Union

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

__all__ = [
    "Spec",
    "BackboneSpec",
    "SSDLiteSpec",
    "LRASPPSpec",
    "SmpSpec",
    "ClassifierSpec",
    "HeadSpec",
    "ModelSpec",
    "TapKind",
    "format_validation_error",
]

S = TypeVar("S", bound="Spec")
TapKind = Literal["deepest", "first", "expansion"]
Pair = tuple[int, int]

#: Training crop the paper's LR-ASPP pooling window spans: Fig. 10's 49x49 kernel on the
#: stride-16 map is ceil(769 / 16); 769x769 is the ``image_pooling_crop_size`` of the
#: authors' TF DeepLab Cityscapes recipe for MobileNetV3.
PAPER_TRAIN_CROP = (769, 769)
#: Fig. 10's pooling stride (rows, cols), in pixels of the high-level feature map (1x4 gate
#: cells on a 1024x2048 frame). The TF recipe's ``image_pooling_stride`` is (4, 5): same
#: aspect, 4x denser; pass ``pool_stride=(4, 5)`` to follow it.
PAPER_POOL_STRIDE = (16, 20)
#: JSON scalars: what family / smp options may hold (they are written to config.json).
Scalar = Union[bool, int, float, str, None]


class Spec(BaseModel):
    """Base of every spec: frozen, unknown fields refused, one-line errors, a validated :meth:`replace`."""

    model_config = ConfigDict(frozen=True, extra="forbid", validate_default=True, allow_inf_nan=False)
    #: What the spec is called in error messages ("invalid <what>: ...").
    what: ClassVar[str] = "spec"

    @classmethod
    def parse(cls: type[S], **values: Any) -> S:
        """Build from ``values``; a ValueError names every invalid field (``lr must be > 0, got -1.0``)."""
        try:
            return cls(**values)
        except ValidationError as e:
            raise ValueError(format_validation_error(e, cls.what)) from None

    def replace(self: S, **changes: Any) -> S:
        """A copy with ``changes`` applied and validated again (``model_copy`` does not validate)."""
        return type(self).parse(**{**self.model_dump(), **changes})


def _describe(error: dict[str, Any]) -> str:
    """One pydantic error as ``field must be > 0, got -1``."""
    loc = ".".join(str(p) for p in error["loc"] if not str(p).startswith("function-"))
    kind, ctx, got = error["type"], error.get("ctx", {}), error.get("input")
    bounds = {"greater_than": "> {gt}", "greater_than_equal": ">= {ge}", "less_than": "< {lt}",
              "less_than_equal": "<= {le}"}
    if kind in bounds:
        ctx = {k: int(v) if isinstance(v, float) and v.is_integer() else v for k, v in ctx.items()}
        return f"{loc} must be {bounds[kind].format(**ctx)}, got {got!r}"
    if kind == "literal_error":
        return f"{loc} must be {ctx.get('expected')}, got {got!r}"
    if kind == "extra_forbidden":
        return f"unknown field {loc!r}"
    if kind == "missing":
        return f"{loc} is required"
    if kind in ("value_error", "assertion_error"):
        return (f"{loc}: " if loc else "") + str(ctx.get("error", error["msg"]))
    return f"{loc}: {error['msg'].lower()}, got {got!r}"


def format_validation_error(e: ValidationError, what: str) -> str:
    """Every problem of a :class:`ValidationError` in one line: ``invalid <what>: a must be > 0, got 0; ...``."""
    return f"invalid {what}: " + "; ".join(dict.fromkeys(_describe(err) for err in e.errors()))


class BackboneSpec(Spec):
    """A registered backbone and its options (``mobiledense.backbones.BACKBONES[name]`` declares which apply)."""

    what: ClassVar[str] = "backbone spec"

    name: str = Field("mobilenet_v3_large", description="registered backbone (mobiledense backbones)")
    width_mult: float = Field(1.0, gt=0, description="channel multiplier (families with a width option)")
    reduced_tail: bool = Field(False, description="MobileNetV3: halve the last stage (paper §6.3)")
    output_stride: int | None = Field(None, description="32, or 16 / 8 by dilation; None: the head's choice")
    taps: dict[int, TapKind] | None = Field(None, description="per stride: deepest / first / expansion layer; "
                                                               "None: the head's choice")
    options: dict[str, Scalar] = Field(default_factory=dict,
                                       description="other family options, e.g. {'padding': 'caffe'}")


class SSDLiteSpec(Spec):
    """SSDLite (MobileNetV3 paper §6.3): input size, default boxes, loss and post-processing."""

    kind: Literal["ssdlite"] = "ssdlite"
    size: Pair = Field((320, 320), description="input (h, w); images are resized to it")
    loss: Literal["multibox", "focal"] = "multibox"
    reduce_boxes_in_lowest_layer: bool = Field(False, description="3 boxes on the first level (TF OD API)")
    min_depth: int = Field(16, ge=1, description="smallest extra-layer depth (after the width multiplier)")
    min_ratio: float = Field(0.2, gt=0, lt=1)
    max_ratio: float = Field(0.95, gt=0, le=1)
    image_mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    image_std: tuple[float, float, float] = (0.5, 0.5, 0.5)
    score_thresh: float = Field(0.001, ge=0, le=1)
    nms_thresh: float = Field(0.55, gt=0, le=1)
    detections_per_img: int = Field(300, ge=1)
    topk_candidates: int = Field(300, ge=1)
    iou_thresh: float = Field(0.5, gt=0, le=1)
    neg_to_pos_ratio: float = Field(3.0, gt=0)
    focal_alpha: float = Field(0.25, gt=0, lt=1)
    focal_gamma: float = Field(2.0, ge=0)

    @model_validator(mode="before")
    @classmethod
    def _square(cls, data: Any) -> Any:
        if isinstance(data, dict) and isinstance(data.get("size"), int):
            data = {**data, "size": (data["size"], data["size"])}
        return data

    @model_validator(mode="after")
    def _check(self) -> "SSDLiteSpec":
        if min(self.size) < 32:
            raise ValueError(f"size must be at least 32 x 32, got {self.size}")
        if self.min_ratio >= self.max_ratio:
            raise ValueError(f"min_ratio {self.min_ratio} must be below max_ratio {self.max_ratio}")
        return self


class LRASPPSpec(Spec):
    """LR-ASPP (MobileNetV3 paper §6.4, Fig. 10)."""

    kind: Literal["lraspp"] = "lraspp"
    pool: Literal["global", "paper"] = Field("global", description="global (torchvision) or the paper's "
                                                                   "49x49 large-kernel pooling")
    inter_channels: int = Field(128, ge=1)
    train_crop: Pair = Field(PAPER_TRAIN_CROP, description="crop the paper's pooling kernel spans (pool='paper')")
    pool_stride: Pair = PAPER_POOL_STRIDE
    low_tap: Literal["first", "deepest"] = Field("first", description="low branch: first (torchvision) or last "
                                                                      "stride-8 block")
    normalize: bool = Field(True, description="ImageNet normalisation inside the model")


class SmpSpec(Spec):
    """A segmentation-models-pytorch decoder over one of our backbones."""

    kind: Literal["smp"] = "smp"
    arch: str = Field(description="smp architecture: deeplabv3plus, fpn, unet, ...")
    options: dict[str, Scalar | list[int]] = Field(default_factory=dict,
                                                   description="smp.create_model options (decoder_channels ...)")
    normalize: bool = True


class ClassifierSpec(Spec):
    """The backbone's own ImageNet-style classifier head (``create_classifier``, torchvision-exact keys)."""

    kind: Literal["classifier"] = "classifier"
    normalize: bool = Field(True, description="ImageNet normalisation inside the model (inputs: RGB in [0, 1])")


HeadSpec = Annotated[Union[SSDLiteSpec, LRASPPSpec, SmpSpec, ClassifierSpec], Field(discriminator="kind")]
#: The task each head kind serves.
HEAD_TASK = {"ssdlite": "det", "lraspp": "seg", "smp": "seg", "classifier": "cls"}


class ModelSpec(Spec):
    """A whole network: task, backbone, head, classes.

    ``class_names`` name the labels the model predicts: for detection labels 1..K-1 (0 is the
    background), with ``category_ids`` their original dataset ids; for segmentation labels
    0..K-1, as for classification. Empty tuples when unknown (a model built from a name alone).
    """

    what: ClassVar[str] = "model spec"

    name: str | None = Field(None, description="registered model name it came from (informational)")
    task: Literal["det", "seg", "cls"]
    backbone: BackboneSpec = BackboneSpec()
    head: HeadSpec
    num_classes: int = Field(ge=1, description="outputs; detection counts the background")
    class_names: tuple[str, ...] = ()
    category_ids: tuple[int, ...] = ()

    @model_validator(mode="after")
    def _check(self) -> "ModelSpec":
        det = self.head.kind == "ssdlite"
        if HEAD_TASK[self.head.kind] != self.task:
            raise ValueError(f"head {self.head.kind!r} is a {HEAD_TASK[self.head.kind]} head, "
                             f"not a {self.task!r} one")
        if det and self.num_classes < 2:
            raise ValueError(f"num_classes counts the background and must be >= 2, got {self.num_classes}")
        labels = self.num_classes - 1 if det else self.num_classes
        if self.class_names and len(self.class_names) != labels:
            raise ValueError(f"{len(self.class_names)} class_names for {labels} labels "
                             f"(num_classes={self.num_classes}{', background excluded' if det else ''})")
        if self.category_ids and (not det or len(self.category_ids) != labels):
            raise ValueError(f"category_ids need a detector and one id per label ({labels}), "
                             f"got {len(self.category_ids)}")
        return self

    @property
    def head_name(self) -> str:
        """``ssdlite``, ``lraspp`` or the smp architecture."""
        return self.head.arch if isinstance(self.head, SmpSpec) else self.head.kind

    @property
    def input_size(self) -> Pair | None:
        """The detector's input size; None for segmenters (any size)."""
        return self.head.size if isinstance(self.head, SSDLiteSpec) else None

    def label_to_category_id(self) -> dict[int, int]:
        """Detection label -> original category id (identity when the ids are unknown)."""
        ids = self.category_ids or tuple(range(1, self.num_classes))
        return {i + 1: int(c) for i, c in enumerate(ids)}

    def describe(self) -> str:
        """Short human name, e.g. ``ssdlite/mobilenet_v3_large(reduced_tail)``."""
        b = self.backbone
        opts = [k for k, v in (("reduced_tail", b.reduced_tail),) if v]
        opts += [f"width {b.width_mult:g}"] if b.width_mult != 1.0 else []
        return f"{self.head_name}/{b.name}" + (f"({', '.join(opts)})" if opts else "")
