"""The model registries and the one builder: ``create_model(spec)``.

Two flat registries, filled by decorators that refuse duplicates:

* :data:`HEADS` maps a head kind (``ssdlite``, ``lraspp``, ``smp``) to its task, its typed
  options (:mod:`~mobiledense.heads.spec`), what it asks of the backbone (output stride,
  taps: read from the backbone's registry entry, never probed) and its builder. Each head
  module registers its own builder (``@register_head``).
* :data:`MODELS` maps every public model name (``ssdlite320_mobilenet_v3_large``,
  ``ssdlite_<backbone>``, ``lraspp_<backbone>``, all written out in :mod:`.zoo`) to the
  spec it stands for.

Every tool goes name or spec -> :class:`ModelSpec` -> :func:`create_model`; the model it
returns carries its resolved spec as ``model.spec``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

from pydantic import ValidationError
from torch import nn

from mobiledense.backbones import BackboneEntry, get_backbone_entry, load_state_dict_file
from mobiledense.backbones.pretrained import (PretrainedWeights, is_weights_name, resolve_weights,
                                              weights_state_dict)
from mobiledense.backbones._base import UNIVERSAL_OPTIONS

from .spec import BackboneSpec, ModelSpec, SmpSpec, format_validation_error

__all__ = ["HEADS", "MODELS", "HeadEntry", "ModelEntry", "register_head", "register_model", "get_model_entry",
           "list_models", "build_model_spec", "model_spec", "resolve", "create_model", "backbone_kwargs",
           "model_task", "with_weights", "model_weights", "model_state_dict", "load_for_finetuning",
           "CLASS_LAYER_WORDS"]

Builder = Callable[[ModelSpec, "str | Path | None"], nn.Module]
_TASK_WORD = {"det": "detector", "seg": "segmenter", "cls": "classifier", None: "model"}


@dataclass(frozen=True)
class HeadEntry:
    """A head: its task, options, what it needs from the backbone, its builder and weight converter."""

    kind: str
    task: str
    spec: type
    #: ``(model spec, backbone entry) -> (output_stride, taps)`` the head asks for.
    backbone_defaults: Callable[[ModelSpec, BackboneEntry], tuple[int | None, dict[int, str]]]
    build: Builder
    #: Foreign state_dict -> ours (torchvision layouts), applied by ``create_model(weights=...)``.
    convert: Callable[[dict], dict] | None = None


HEADS: dict[str, HeadEntry] = {}


def register_head(kind: str, *, task: str, spec: type,
                  backbone_defaults: Callable[[ModelSpec, BackboneEntry], tuple[int | None, dict[int, str]]],
                  convert: Callable[[dict], dict] | None = None) -> Callable[[Builder], Builder]:
    """Decorator registering ``build(spec, weights_backbone) -> nn.Module`` as the builder of ``kind``."""

    def wrap(build: Builder) -> Builder:
        if kind in HEADS:
            raise KeyError(f"head {kind!r} is already registered by {HEADS[kind].build}")
        HEADS[kind] = HeadEntry(kind, task, spec, backbone_defaults, build, convert)
        return build

    return wrap


@dataclass(frozen=True)
class ModelEntry:
    """A public model name and the spec it stands for."""

    name: str
    task: str
    head: str
    backbone: str
    factory: Callable[..., nn.Module]
    num_classes: int
    defaults: Mapping[str, Any] = field(default_factory=dict)


MODELS: dict[str, ModelEntry] = {}


def register_model(*, task: str, head: str, backbone: str, num_classes: int,
                   **defaults: Any) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Decorator registering a named factory (its function name) with the spec defaults it stands for."""

    def wrap(factory: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        name = factory.__name__
        if name in MODELS:
            raise KeyError(f"model {name!r} is already registered by {MODELS[name].factory}")
        MODELS[name] = ModelEntry(name, task, head, backbone, factory, num_classes, dict(defaults))
        return factory

    return wrap


def list_models(task: str | None = None) -> list[str]:
    """Registered model names (of one task: ``"det"`` or ``"seg"``)."""
    return sorted(n for n, e in MODELS.items() if task in (None, e.task))


def get_model_entry(name: str, task: str | None = None) -> ModelEntry:
    """The entry of ``name``; the KeyError lists the valid names (of ``task``)."""
    entry = MODELS.get(name)
    if entry is None or task not in (None, entry.task):
        raise KeyError(f"unknown {_TASK_WORD[task]} {name!r}; valid names: {', '.join(list_models(task))}")
    return entry


def model_task(name: str) -> str:
    """``"det"`` or ``"seg"``: the task of a registered model name."""
    return get_model_entry(name).task


def _smp_architectures() -> list[str]:
    import segmentation_models_pytorch as smp  # seconds to import: only when an smp head is named

    return sorted(smp.MODEL_ARCHITECTURES_MAPPING)


def _head_kind(task: str, head: str) -> str:
    if head in HEADS:
        if HEADS[head].task != task:
            raise ValueError(f"head {head!r} is a {HEADS[head].task!r} head, not a {task!r} one")
        return head
    if task == "seg" and head in _smp_architectures():
        return "smp"
    ours = [k for k, e in HEADS.items() if e.task == task and k != "smp"]
    smp = ", smp architectures: " + ", ".join(_smp_architectures()) if task == "seg" else ""
    raise KeyError(f"unknown {task} head {head!r}; valid heads: {', '.join(ours)}{smp}")


_BACKBONE_FIELDS = set(BackboneSpec.model_fields) - {"name", "options"}


def build_model_spec(task: str, head: str, backbone: str, num_classes: int, *, name: str | None = None,
                     **options: Any) -> ModelSpec:
    """A resolved :class:`ModelSpec` from a head name, a backbone name and flat options.

    Options are sorted by where they belong: backbone fields (``width_mult``,
    ``reduced_tail``, ``output_stride``, ``taps``), the head's fields (``size``, ``loss``,
    ``pool`` ...), ``class_names`` / ``category_ids``, the family's own options (``padding``
    ...); ``backbone_kwargs`` (a dict) adds backbone ones. Anything else is refused, naming
    what is valid. ``head`` is ``ssdlite``, ``lraspp`` or an smp architecture.
    """
    kind = _head_kind(task, head)
    entry = get_backbone_entry(backbone)
    head_fields = set(HEADS[kind].spec.model_fields) - {"kind"}
    extra = options.pop("backbone_kwargs", None) or {}
    options = {**options, **extra}
    b: dict[str, Any] = {"name": backbone, "options": {}}
    h: dict[str, Any] = {"arch": head} if kind == "smp" else {}
    top: dict[str, Any] = {}
    for key, value in options.items():
        if key in _BACKBONE_FIELDS:
            b[key] = value
        elif key in head_fields:
            h[key] = value
        elif key in ("class_names", "category_ids"):
            top[key] = value
        elif key in entry.options and key not in ("norm_layer",):
            b["options"][key] = value
        elif kind == "smp":
            if key == "aux_params" and value is not None:
                raise ValueError("smp heads return logits only (Segmenter API); for an auxiliary classification "
                                 "head call smp.create_model after register_smp_encoders()")
            h.setdefault("options", {})[key] = value  # smp.create_model's own options
        else:
            valid = sorted(_BACKBONE_FIELDS | head_fields | {o for o in entry.options if o != "norm_layer"})
            raise ValueError(f"{name or head + '_' + backbone}: unknown option {key!r}; valid options: "
                             f"{', '.join(valid)}")
    try:
        spec = ModelSpec(name=name, task=task, backbone=BackboneSpec(**b), head={"kind": kind, **h},
                         num_classes=num_classes, **top)
    except ValidationError as e:
        raise ValueError(format_validation_error(e, f"{name or kind} options")) from None
    return resolve(spec)


def model_spec(name: str, num_classes: int | None = None, *, task: str | None = None, **options: Any) -> ModelSpec:
    """The resolved spec of a registered model name, with ``options`` on top of its defaults."""
    e = get_model_entry(name, task)
    return build_model_spec(e.task, e.head, e.backbone, num_classes or e.num_classes, name=name,
                            **{**e.defaults, **options})


def backbone_kwargs(b: BackboneSpec) -> dict[str, Any]:
    """``create_backbone`` keywords of a backbone spec (defaults left out)."""
    kw: dict[str, Any] = dict(b.options)
    if b.width_mult != 1.0:
        kw["width_mult"] = b.width_mult
    if b.reduced_tail:
        kw["reduced_tail"] = True
    if b.output_stride is not None:
        kw["output_stride"] = b.output_stride
    if b.taps:
        kw["taps"] = dict(b.taps)
    return kw


def resolve(spec: ModelSpec) -> ModelSpec:
    """``spec`` with what its head asks of the backbone filled in, checked against the backbone's entry.

    A backbone option the family does not have (``reduced_tail`` on MobileNetV2, a width
    on SqueezeNet) is a ValueError naming the family's options, before anything is built.
    """
    b = spec.backbone
    entry = get_backbone_entry(b.name)
    for flag, present in (("width_mult", b.width_mult != 1.0), ("reduced_tail", b.reduced_tail)):
        if present and flag not in entry.options:
            having = [n for n, e in _backbone_entries() if flag in e.options]
            raise ValueError(f"{b.name} has no option {flag!r}; its options: "
                             f"{', '.join(entry.options + UNIVERSAL_OPTIONS)} (backbones with {flag!r}: "
                             f"{', '.join(having)})")
    output_stride, taps = HEADS[spec.head.kind].backbone_defaults(spec, entry)
    b = b.replace(output_stride=b.output_stride if b.output_stride is not None else output_stride,
                  taps=b.taps if b.taps is not None else taps)
    entry.check_kwargs(backbone_kwargs(b))
    return spec if b == spec.backbone else spec.replace(backbone=b)


def _backbone_entries() -> list[tuple[str, BackboneEntry]]:
    from mobiledense.backbones import BACKBONES

    return sorted(BACKBONES.items())


def _with_options(spec: ModelSpec, entry: PretrainedWeights) -> ModelSpec:
    """``spec`` with the backbone options ``entry`` was trained with; a different value given is refused."""
    b = spec.backbone
    fields, options = {}, dict(b.options)
    for key, value in entry.options.items():
        current = getattr(b, key) if key in _BACKBONE_FIELDS else options.get(key)
        if current is not None and current != value and not (key in _BACKBONE_FIELDS and
                                                              current == BackboneSpec.model_fields[key].default):
            raise ValueError(f"weights {entry.name} need {key}={value!r} (they were trained so); the model has "
                             f"{current!r}")
        (fields if key in _BACKBONE_FIELDS else options).__setitem__(key, value)
    return spec.replace(backbone=b.replace(options=options, **fields)) if entry.options else spec


def with_weights(spec: ModelSpec, weights: Any = None, weights_backbone: Any = None) -> ModelSpec:
    """``spec`` as named weights need it: the options their backbone was trained with (SqueezeNet's
    ``padding="caffe"``, timm's ``bn_eps=1e-5`` ...), so the spec a checkpoint stores rebuilds the same net."""
    if is_weights_name(weights_backbone):
        spec = _with_options(spec, resolve_weights(str(weights_backbone), spec.backbone.name, "backbone"))
    if is_weights_name(weights):
        spec = _with_options(spec, model_weights(spec, str(weights)))
    return spec


def model_weights(spec: ModelSpec, name: str) -> PretrainedWeights:
    """The whole-model entry ``name`` (``coco``, ``torchvision:...``) stands for, for the model of ``spec``.

    A classifier's whole-model weights are its backbone's ImageNet classifier entries (``imagenet``,
    ``torchvision:MobileNet_V3_Large_Weights.IMAGENET1K_V1``, ``timm:...``)."""
    if spec.task == "cls":
        return resolve_weights(name, spec.backbone.name, "backbone")
    if spec.name is None:
        raise ValueError(f"weights {name!r} are named for a registered model; this spec has no name "
                         "(build it with model_spec(NAME, ...))")
    return resolve_weights(name, spec.name, "model")


def model_state_dict(spec: ModelSpec, weights: str | Path | Mapping[str, Any]) -> dict[str, Any]:
    """A whole-model state_dict in our layout: a registered name (downloaded, converted), a local file
    (ours or torchvision's layout) or a state_dict."""
    head = HEADS[spec.head.kind]
    if isinstance(weights, Mapping):
        sd = dict(weights)
    elif is_weights_name(weights):
        sd = weights_state_dict(model_weights(spec, str(weights)))
    else:
        sd = load_state_dict_file(weights)
    return head.convert(sd) if head.convert else sd


def _class_names(entry: PretrainedWeights, task: str) -> dict[str, Any]:
    """class_names / category_ids of a torchvision whole-model entry (detection: ids are the labels)."""
    names = entry.categories
    if not names:
        return {}
    if task == "det":
        return {"class_names": tuple(names[1:]), "category_ids": tuple(range(1, len(names)))}
    return {"class_names": tuple(names)}


def create_model(spec: ModelSpec | str, *, num_classes: int | None = None, task: str | None = None,
                 weights: str | Path | None = None, weights_backbone: str | Path | None = None,
                 **options: Any) -> nn.Module:
    """Build the network of ``spec`` (a :class:`ModelSpec`, or a registered name with ``options``).

    Args:
        spec: the spec, or a name of :func:`list_models` (``task`` then checks its task).
        num_classes: with a name: outputs (detection counts the background); default the name's, or
            that of the named ``weights``.
        weights: the whole model: a local state_dict file (ours, or the torchvision layout of its
            head, converted) or a registered name (``"coco"``, ``"torchvision:..."``; downloaded
            by torchvision's hash-checked cache). Loaded with ``weights_only=True``.
        weights_backbone: the backbone: a local file or a registered name (``"imagenet"``,
            ``"torchvision:..."``, ``"timm:..."``).
        **options: with a name: spec options on top of its defaults (:func:`build_model_spec`).

    Returns:
        The model, with its resolved spec as ``model.spec``.
    """
    if isinstance(spec, str):
        named = is_weights_name(weights)
        entry = resolve_weights(str(weights), spec, "model") if named else None
        spec = model_spec(spec, num_classes or (entry.num_classes if entry else None), task=task, **options)
        if entry is not None and spec.num_classes == entry.num_classes and not spec.class_names:
            spec = spec.replace(**_class_names(entry, spec.task))
    elif options or num_classes is not None:
        raise TypeError("create_model(spec) takes no options: change the spec (spec.replace(...)) instead")
    spec = resolve(with_weights(spec, weights, weights_backbone))
    if is_weights_name(weights) and model_weights(spec, str(weights)).num_classes != spec.num_classes:
        entry = model_weights(spec, str(weights))
        raise ValueError(f"weights {entry.name} have {entry.num_classes} classes, the model {spec.num_classes}: "
                         "to start from them with other classes, fine-tune (train det|seg --weights NAME "
                         "re-initialises the class layers)")
    head = HEADS[spec.head.kind]
    model = head.build(spec, weights_backbone)
    if weights is not None:
        model.load_state_dict(model_state_dict(spec, weights))
    model.spec = spec
    return model


#: The layers whose shape follows the number of classes (re-initialised when fine-tuning to other classes).
CLASS_LAYER_WORDS = ("classification_head", "classifier", "segmentation_head")


def load_for_finetuning(model: nn.Module, weights: str | Path | Mapping[str, Any]) -> list[str]:
    """Load whole-model ``weights`` into ``model`` except the class-count dependent layers; returns those.

    Every other tensor must fit (same key, same shape): weights of another architecture are
    refused naming the first mismatches. The skipped layers keep the model's fresh init
    (for SSDLite the classification convs, for LR-ASPP the two classifiers).
    """
    from mobiledense.backbones import summarize_load_error

    sd, own = model_state_dict(model.spec, weights), model.state_dict()
    cls = model.spec.task == "cls"  # a classifier's class layers: every head tensor whose shape differs
    skipped = [k for k, v in sd.items() if k in own and own[k].shape != v.shape
               and (any(w in k for w in CLASS_LAYER_WORDS) or (cls and k.startswith("head.")))]
    kept = {k: v for k, v in sd.items() if k not in skipped}
    try:
        model.load_state_dict({**{k: own[k] for k in skipped}, **kept})
    except RuntimeError as e:
        raise ValueError(f"weights {weights if isinstance(weights, (str, Path)) else ''} do not fit "
                         f"{model.spec.describe()}: {summarize_load_error(e)}") from e
    return skipped


# ---------------------------------------------------------------------- smp heads (imported lazily)


def _smp_defaults(spec: ModelSpec, entry: BackboneEntry) -> tuple[int | None, dict[int, str]]:
    return None, {}  # smp dilates the encoder itself (make_dilated)


@register_head("smp", task="seg", spec=SmpSpec, backbone_defaults=_smp_defaults)
def _build_smp(spec: ModelSpec, weights_backbone: str | Path | None) -> nn.Module:
    from .smp_encoders import build_smp_segmenter  # smp costs seconds to import: only when used

    return build_smp_segmenter(spec, weights_backbone)

