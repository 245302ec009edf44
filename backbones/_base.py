"""The one backbone contract, the flat registry and the classifier wrapper.

Every backbone maps an image batch to multi-scale features keyed by stride::

    feats = backbone(x)          # {2: ..., 4: ..., 8: ..., 16: ..., 32: ...}
    backbone.channels[16]        # declared channels of feats[16]

When a stage is dilated (``output_stride`` 16 or 8), several stages share one
stride; the dict holds the *deepest* feature at each stride, so ``feats[16]``
of a MobileNetV3 at ``output_stride=16`` is the last 1x1 conv (960 channels),
exactly what LR-ASPP reads. The constructor option ``taps`` (stride -> kind)
chooses another layer per stride (:class:`SequentialBackbone`)::

    create_backbone("mobilenet_v3_large", taps={8: "first"})      # LR-ASPP's low branch
    create_backbone("mobilenet_v3_large", taps={16: "expansion"})  # SSDLite's C4

Each family declares what it supports (``supported_output_strides``,
``supported_taps``, ``options``); :func:`create_backbone` checks a request
against the registry entry before building anything.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Protocol, runtime_checkable

import torch
from torch import Tensor, nn

__all__ = [
    "Backbone",
    "SequentialBackbone",
    "ImageClassifier",
    "BACKBONES",
    "BackboneEntry",
    "ExpansionTappable",
    "TAP_KINDS",
    "UNIVERSAL_OPTIONS",
    "register_backbone",
    "get_backbone_entry",
    "create_backbone",
    "create_classifier",
    "list_backbones",
    "plan_dilation",
    "load_state_dict_file",
    "load_file_safely",
    "tensor_checksum",
    "CHECKSUM_KEY",
    "summarize_load_error",
    "count_params",
    "count_madds",
]


class Backbone(nn.Module):
    """Base class of every feature extractor.

    Subclasses set ``self.channels`` (stride -> channels of the feature returned
    at that stride), ``self.output_stride`` and implement ``forward`` returning a
    ``dict[int, Tensor]`` with exactly the keys of ``channels``.  They also
    implement :meth:`classifier_head`, which maps the deepest feature to logits.
    The class attributes below declare what the family's constructor accepts;
    the registry reads them, so a request is checked without building a model.
    """

    channels: dict[int, int]
    output_stride: int
    #: ``output_stride`` values the architecture supports (dilation of late stages).
    supported_output_strides: tuple[int, ...] = (32,)
    #: Tap kinds (:data:`TAP_KINDS`) the constructor's ``taps`` accepts.
    supported_taps: tuple[str, ...] = ("deepest",)
    #: Constructor keywords a user may set through the registry, besides
    #: :data:`UNIVERSAL_OPTIONS` (those fixed by the registered factories are not listed).
    options: tuple[str, ...] = ()
    #: Multiple that input height/width must be a multiple of for the strides to
    #: be exact; other sizes still run (convs floor/ceil) but maps are not aligned.
    size_divisor: int = 32

    #: Set by :meth:`freeze`: ``train()`` then keeps the backbone in eval mode.
    frozen: bool = False

    def freeze(self) -> "Backbone":
        """A fixed feature extractor (smp's ``freeze_encoder``): no gradients, and BN statistics and
        dropout stay in eval mode whatever ``model.train()`` says, so the weights stay bit-identical."""
        for p in self.parameters():
            p.requires_grad_(False)
        self.frozen = True
        return self.train(False)

    def train(self, mode: bool = True) -> "Backbone":
        return super().train(mode and not self.frozen)

    @property
    def strides(self) -> list[int]:
        return sorted(self.channels)

    @property
    def out_channels(self) -> int:
        """Channels of the deepest feature (the one the classifier head reads)."""
        return self.channels[max(self.channels)]

    def classifier_head(self, num_classes: int) -> nn.Module:
        raise NotImplementedError

    def check_input(self, x: Tensor) -> None:
        """Raise a ValueError that says what to fix for a malformed batch."""
        if not isinstance(x, Tensor):
            raise TypeError(f"{type(self).__name__} expects a Tensor, got {type(x).__name__}")
        if x.dim() != 4:
            raise ValueError(
                f"{type(self).__name__} expects a 4-D batch (N, 3, H, W), got shape {tuple(x.shape)}"
                + ("; add a batch dimension with x.unsqueeze(0)" if x.dim() == 3 else "")
            )
        if x.shape[1] != self.in_chans:
            raise ValueError(
                f"{type(self).__name__} expects {self.in_chans} input channels, got {x.shape[1]} "
                f"(shape {tuple(x.shape)}); images must be RGB in NCHW layout"
            )
        if min(x.shape[-2:]) < self.min_size:
            raise ValueError(
                f"{type(self).__name__} needs inputs of at least {self.min_size}x{self.min_size} "
                f"pixels, got {tuple(x.shape[-2:])}"
            )

    in_chans: int = 3
    #: Smallest input side that still yields a non-empty deepest feature map.
    min_size: int = 32


class ImageClassifier(nn.Module):
    """ImageNet-style classifier: ``head(backbone(x)[deepest stride])``."""

    def __init__(self, backbone: Backbone, num_classes: int = 1000) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = backbone.classifier_head(num_classes)
        self.num_classes = num_classes

    def forward(self, x: Tensor) -> Tensor:
        feats = self.backbone(x)
        return self.head(feats[max(feats)])


# --------------------------------------------------------------------------- registry


#: What ``taps`` may ask for at a stride ``s``: the deepest layer at ``s`` (the default),
#: the first layer reaching ``s``, or the 1x1 expansion inside the block taking ``s`` to ``2s``.
TAP_KINDS: tuple[str, ...] = ("deepest", "first", "expansion")
#: Options every registered backbone takes (the contract), besides its family's ``options``.
UNIVERSAL_OPTIONS: tuple[str, ...] = ("output_stride", "taps")


@dataclass(frozen=True)
class BackboneEntry:
    """A registered factory and the family class that declares what it supports."""

    name: str
    factory: Callable[..., Backbone]
    paper: str
    #: torchvision classifier builder with the same architecture, if any.
    torchvision: str | None = None
    family: type[Backbone] = field(kw_only=True)

    @property
    def output_strides(self) -> tuple[int, ...]:
        """``output_stride`` values the family supports."""
        return tuple(self.family.supported_output_strides)

    @property
    def taps(self) -> tuple[str, ...]:
        """Tap kinds the family's ``taps`` option accepts."""
        return tuple(self.family.supported_taps)

    @property
    def options(self) -> tuple[str, ...]:
        """The family's own constructor options (``width_mult``, ...), without the universal ones."""
        return tuple(self.family.options)

    def check_kwargs(self, kwargs: Mapping[str, Any]) -> None:
        """Raise a ValueError naming what is supported for an option, output stride or tap kind
        the family does not have; nothing is built."""
        valid = self.options + UNIVERSAL_OPTIONS
        for key in kwargs:
            if key not in valid:
                raise ValueError(f"{self.name} has no option {key!r}; its options: {', '.join(valid)}")
        if "output_stride" in kwargs:
            check_output_stride(self.name, kwargs["output_stride"], self.output_strides)
        check_taps(self.name, kwargs.get("taps"), self.taps)


BACKBONES: dict[str, BackboneEntry] = {}


def register_backbone(
    name: str, *, paper: str, torchvision: str | None = None, family: type[Backbone]
) -> Callable[[Callable[..., Backbone]], Callable[..., Backbone]]:
    """Decorator that adds a factory to the flat registry; duplicates are refused.

    Args:
        name: registry name.
        paper: where the architecture comes from (``"arXiv:1905.02244"``).
        torchvision: torchvision classifier builder of the same architecture, if any.
        family: the class the factory builds; its ``supported_output_strides``,
            ``supported_taps`` and ``options`` are the entry's.
    """

    def wrap(factory: Callable[..., Backbone]) -> Callable[..., Backbone]:
        if name in BACKBONES:
            raise KeyError(f"backbone {name!r} is already registered by {BACKBONES[name].factory}")
        BACKBONES[name] = BackboneEntry(name, factory, paper, torchvision, family=family)
        return factory

    return wrap


def list_backbones() -> list[str]:
    return sorted(BACKBONES)


def get_backbone_entry(name: str) -> BackboneEntry:
    """The registry entry of ``name``; the KeyError lists the valid names."""
    try:
        return BACKBONES[name]
    except KeyError:
        raise KeyError(
            f"unknown backbone {name!r}; valid names: {', '.join(list_backbones())}"
        ) from None


def _build(name: str, kwargs: Mapping[str, Any]) -> Backbone:
    entry = get_backbone_entry(name)
    entry.check_kwargs(kwargs)
    return entry.factory(**kwargs)


def _weights(weights: str | Path | Mapping[str, Tensor], name: str, kwargs: dict[str, Any]) -> dict[str, Tensor]:
    """A state_dict from a local file, a registered weight name (``imagenet``, ``torchvision:...``,
    ``timm:...``: downloaded by its library) or a state_dict. A named entry's options (e.g.
    ``padding="caffe"``) are added to ``kwargs``; one given otherwise is refused."""
    if isinstance(weights, Mapping):
        return dict(weights)
    from .pretrained import is_weights_name, resolve_weights, weights_state_dict

    if not is_weights_name(weights):
        return load_state_dict_file(weights)
    entry = resolve_weights(str(weights), name, "backbone")
    for key, value in entry.options.items():
        if key in kwargs and kwargs[key] != value:
            raise ValueError(f"weights {entry.name} need {key}={value!r} (they were trained so), got {kwargs[key]!r}")
        kwargs.setdefault(key, value)
    return weights_state_dict(entry)


def create_backbone(name: str, *, weights: str | Path | Mapping[str, Tensor] | None = None,
                    **kwargs: Any) -> Backbone:
    """Build a registered backbone, e.g. ``create_backbone("mobilenet_v3_large", output_stride=16)``.

    Args:
        name: registry name (see :func:`list_backbones`).
        weights: a local file (our keys, or a torchvision classifier checkpoint), a registered
            name (``"imagenet"``, ``"torchvision:MobileNet_V3_Large_Weights.IMAGENET1K_V1"``,
            ``"timm:..."``; :mod:`mobiledense.backbones.pretrained`) or a state_dict.
        **kwargs: ``output_stride``, ``taps`` and the family's ``options``
            (``width_mult``, ...), checked against the registry entry first.
    """
    sd = None if weights is None else _weights(weights, name, kwargs)
    model = _build(name, kwargs)
    if sd is not None:
        try:
            model.load_state_dict(_strip_to_backbone(sd, model))
        except RuntimeError as e:  # another architecture or width: name the file and the first mismatches
            what = weights if isinstance(weights, (str, Path)) else "the state_dict"
            raise ValueError(f"{what}: its weights do not fit backbone {name} {kwargs or ''}: "
                             f"{summarize_load_error(e)}") from e
    return model


def create_classifier(
    name: str, *, num_classes: int = 1000, weights: str | Path | Mapping[str, Tensor] | None = None, **kwargs: Any
) -> ImageClassifier:
    """Build ``ImageClassifier(create_backbone(name, **kwargs), num_classes)``.

    ``weights``: one of our classifier checkpoints, a torchvision classifier state_dict of the
    same architecture (keys are converted), or a registered name (``"imagenet"``, ...).
    """
    sd = None if weights is None else _weights(weights, name, kwargs)
    model = ImageClassifier(_build(name, kwargs), num_classes)
    if sd is not None:
        if not any(k.startswith("backbone.") for k in sd):
            sd = from_torchvision(sd, model)
        model.load_state_dict(sd)
    return model


def from_torchvision(sd: Mapping[str, Tensor], model: ImageClassifier) -> dict[str, Tensor]:
    """Convert a torchvision classifier state_dict to ``ImageClassifier`` keys.

    The mapping is by prefix: torchvision's feature modules (``features.*``,
    ``conv1.*``, ``stage2.*`` ...) live under ``backbone.`` with the same
    names, its classifier modules (``classifier.*``, ``fc.*``) under ``head.``.
    """
    head_keys = {k.split(".")[0] for k in model.head.state_dict()}
    out = {}
    for k, v in sd.items():
        top = k.split(".")[0]
        out[("head." if top in head_keys else "backbone.") + k] = v
    return out


def _strip_to_backbone(sd: Mapping[str, Tensor], model: Backbone) -> dict[str, Tensor]:
    """Accept a backbone, an ImageClassifier or a torchvision classifier state_dict."""
    own = set(model.state_dict())
    if set(sd) <= own:
        return dict(sd)
    if any(k.startswith("backbone.") for k in sd):
        return {k[len("backbone."):]: v for k, v in sd.items() if k.startswith("backbone.")}
    return {k: v for k, v in sd.items() if k in own}  # torchvision: drop the classifier


#: Key of the tensor checksum that checkpoints carry (``tensor_checksum``), verified by ``load_file_safely``.
CHECKSUM_KEY = "checksum"


def tensor_checksum(obj: Any) -> str:
    """blake2b of every tensor's bytes (and the other leaves' ``repr``) of a nested dict/list, in key order.

    Stored under :data:`CHECKSUM_KEY` when a checkpoint is written and compared when it is read,
    so a flipped byte in a tensor is found instead of evaluated.
    """
    h = hashlib.blake2b(digest_size=16)

    def walk(o: Any, where: str) -> None:
        if isinstance(o, Tensor):
            t = o.detach().cpu().contiguous().reshape(-1)
            h.update(f"{where}:{o.dtype}:{tuple(o.shape)}".encode())
            h.update(t.view(torch.uint8).numpy())
        elif isinstance(o, Mapping):
            for k in sorted(o, key=str):
                if not (where == "" and k == CHECKSUM_KEY):
                    walk(o[k], f"{where}/{k}")
        elif isinstance(o, (list, tuple)):
            for i, v in enumerate(o):
                walk(v, f"{where}/{i}")
        else:
            h.update(f"{where}={o!r}".encode())

    walk(obj, "")
    return h.hexdigest()


_CORRUPT = ("PytorchStreamReader", "central directory", "invalid header", "archive is corrupted", "file too short",
            "unexpected EOF", "Ran out of input", "truncated")


def load_file_safely(path: str | Path, what: str = "weights file", map_location: Any = "cpu") -> Any:
    """``torch.load(path, weights_only=True)`` with an error that says what is wrong with the file.

    Missing, empty (an interrupted write), truncated or corrupt (a damaged copy; also a
    checksum that does not match the tensors), or holding pickled objects other than tensors
    (refused: a file that needs arbitrary unpickling may contain code).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} not found: {path}")
    if path.stat().st_size == 0:
        raise ValueError(f"{path} is empty (0 bytes): it was not written completely; delete it")
    try:
        obj = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # noqa: BLE001 - re-raised with the file name and the diagnosis
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        if any(s in str(e) for s in _CORRUPT) or isinstance(e, EOFError):
            raise ValueError(f"{path} is truncated or corrupt ({type(e).__name__}: {first}): an interrupted "
                             "write or a damaged copy") from e
        raise ValueError(
            f"refusing to load {path}: not a plain tensor file ({type(e).__name__}: {first}). Only "
            "weights_only-loadable files are accepted (pickled objects are refused): a file that needs "
            "arbitrary unpickling may contain code.") from e
    if isinstance(obj, Mapping) and CHECKSUM_KEY in obj and obj[CHECKSUM_KEY] != tensor_checksum(obj):
        raise ValueError(f"{path} is corrupt: its tensors do not match the checksum written with them (a flipped "
                         "or lost byte: a damaged disk or copy); use another copy or an older checkpoint")
    return obj


def load_state_dict_file(path: str | Path) -> dict[str, Tensor]:
    """Load a local weights file safely (:func:`load_file_safely`).

    Accepts a bare state_dict or a training checkpoint: its ``model_ema`` entry when it kept an
    EMA (the weights its evaluations and ``eval`` report, as torchvision's reference publishes
    the EMA), else ``model`` / ``state_dict``. Refuses pickled code with a clear error.
    """
    obj = load_file_safely(path, "weights file")
    if isinstance(obj, Mapping):
        for key in ("model_ema", "model", "state_dict"):
            if key in obj and isinstance(obj[key], Mapping):
                obj = obj[key]
                break
    if not isinstance(obj, Mapping) or not all(isinstance(v, Tensor) for v in obj.values()):
        raise ValueError(f"{path} does not hold a state_dict of tensors")
    return dict(obj)


def summarize_load_error(e: BaseException, max_items: int = 3) -> str:
    """The gist of a ``load_state_dict`` RuntimeError: a few missing/unexpected/size-mismatch items.

    torch lists every offending key; for a checkpoint of another architecture that is hundreds of
    lines, of which the first few tell what is wrong.
    """
    parts = []
    for line in str(e).splitlines()[1:] or str(e).splitlines():
        line = line.strip()
        if line.startswith(("Missing key(s)", "Unexpected key(s)")):
            head, _, keys = line.partition(": ")
            names = [k.strip(' ".') for k in keys.split(",") if k.strip(' ".')]
            more = f" and {len(names) - max_items} more" if len(names) > max_items else ""
            parts.append(f"{head.lower()} {', '.join(names[:max_items])}{more}")
        elif line.startswith("size mismatch") and sum("size mismatch" in p for p in parts) < max_items:
            parts.append(line.rstrip("."))
    return "; ".join(parts) or str(e).strip().splitlines()[0]


# --------------------------------------------------------------------------- helpers


def plan_dilation(strides: Iterable[int], output_stride: int) -> list[tuple[int, int]]:
    """Turn per-layer strides into (stride, dilation) pairs for a target output stride.

    Layers that would take the running stride past ``output_stride`` keep
    stride 1 and multiply the dilation instead (DeepLab, arXiv 1706.05587 §3.1).
    As in torchvision's MobileNetV3 ``dilated=True``, the first layer of a
    dilated stage already uses the new dilation.
    """
    plan, current, dilation = [], 1, 1
    for s in strides:
        if current * s > output_stride:
            dilation *= s
            s = 1
        current *= s
        plan.append((s, dilation))
    return plan


def check_output_stride(name: str, output_stride: int, supported: Iterable[int]) -> None:
    supported = tuple(supported)
    if output_stride not in supported:
        raise ValueError(
            f"{name} supports output_stride in {supported}, got {output_stride}"
        )


def check_stem_stride(name: str, stem_stride: int) -> int:
    """The stem conv's stride: 2 (ImageNet) or 1 (the CIFAR adaptation); anything else is refused."""
    if stem_stride not in (1, 2):
        raise ValueError(f"{name} stem_stride must be 2 (the paper's) or 1 (small inputs such as CIFAR's "
                         f"32x32), got {stem_stride!r}")
    return stem_stride


def check_taps(owner: str, taps: Mapping[int, str] | None, supported: Iterable[str]) -> None:
    """Refuse a ``taps`` that is not a stride -> kind mapping of supported kinds."""
    if taps is None:
        return
    supported = tuple(supported)
    if not isinstance(taps, Mapping):
        raise ValueError(f"{owner} taps must map strides to kinds, e.g. {{16: 'expansion'}}; got {taps!r}")
    for stride, kind in taps.items():
        if kind not in supported:
            raise ValueError(f"{owner} supports taps {supported}, got {kind!r} at stride {stride}")


def make_divisible(v: float, divisor: int = 8, min_value: int | None = None) -> int:
    """Round channels to a multiple of ``divisor`` without dropping below 90% (MobileNetV2 code)."""
    min_value = min_value or divisor
    new_v = max(min_value, int(v + divisor / 2) // divisor * divisor)
    if new_v < 0.9 * v:
        new_v += divisor
    return new_v


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def count_madds(model: nn.Module, *inputs: Tensor) -> int:
    """Multiply-adds of one forward pass, as papers count them.

    Uses PyTorch's own ``torch.utils.flop_counter.FlopCounterMode`` (conv,
    linear/matmul, ... ; elementwise ops are not counted, as in the papers)
    and halves its FLOPs (one multiply-add = 2 FLOPs).
    """
    from torch.utils.flop_counter import FlopCounterMode

    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model(*inputs)
    finally:
        model.train(was_training)
    return counter.get_total_flops() // 2


@runtime_checkable
class ExpansionTappable(Protocol):
    """A layer whose 1x1 expansion output can be returned (MobileNetV2 §6.2, MobileNetV3 §6.3)."""

    expansion_channels: int

    def split_expansion(self) -> tuple[nn.Module, nn.Module]:
        """``(expansion, rest)`` with ``rest(expansion(x)) == layer(x)``; a ValueError if there is none."""
        ...


class SequentialBackbone(Backbone):
    """A backbone that is a chain of layers, tapped at one layer per stride.

    Subclasses build their modules (named as in the family's reference code,
    so checkpoints map by prefix), then call :meth:`_init_taps` with the
    stride and channels of each layer returned by :meth:`feature_layers` and
    the constructor's ``taps``: per stride, ``"deepest"`` (default),
    ``"first"`` (the strided block's own output: torchvision's LR-ASPP low
    branch) or ``"expansion"`` (the expansion of the block taking the net from
    that stride to twice it: SSDLite's C4 at 16; that block must be strided,
    not dilated, and an :class:`ExpansionTappable`).
    """

    supported_taps: tuple[str, ...] = ("deepest", "first")
    #: The kind tapped at each stride, as resolved by :meth:`_init_taps`.
    taps: dict[int, str]

    def feature_layers(self) -> list[nn.Module]:
        raise NotImplementedError

    def _init_taps(self, layer_strides: list[int], layer_channels: list[int],
                   taps: Mapping[int, str] | None = None) -> None:
        """Resolve ``taps`` to layer indices and declare ``channels`` (stride -> channels)."""
        name = type(self).__name__
        check_taps(name, taps, self.supported_taps)
        strides = sorted(set(layer_strides))
        unknown = sorted(set(taps or {}) - set(strides))
        if unknown:
            raise ValueError(f"{name} has no layers at strides {unknown}; strides are {strides}")
        self.taps = {s: (taps or {}).get(s, "deepest") for s in strides}
        self._tap_at: dict[int, int] = {}  # layer index -> stride of its output
        self._expansion_at: dict[int, int] = {}  # layer index -> stride of its expansion
        self.channels = {}
        for s, kind in self.taps.items():
            if kind == "expansion":
                i = self._expansion_layer(layer_strides, s)
                self._expansion_at[i] = s
                self.channels[s] = self.feature_layers()[i].expansion_channels
            else:
                at = [i for i, t in enumerate(layer_strides) if t == s]
                i = at[0] if kind == "first" else at[-1]
                self._tap_at[i] = s
                self.channels[s] = layer_channels[i]
        # A tapped output the next layer overwrites in place (SqueezeNet: conv1 -> ReLU(inplace)) is copied.
        layers = self.feature_layers()
        self._copy_at = {i for i in self._tap_at
                         if i + 1 < len(layers) and getattr(layers[i + 1], "inplace", False)}

    def _expansion_layer(self, layer_strides: list[int], stride: int) -> int:
        """Index of the strided block taking the net from ``stride`` to ``2 * stride``."""
        name = type(self).__name__
        for i, s in enumerate(layer_strides):
            if s == 2 * stride and (layer_strides[i - 1] if i else 1) == stride:
                layer = self.feature_layers()[i]
                where = f"{name} taps={{{stride}: 'expansion'}}: layer {i} ({type(layer).__name__})"
                if not isinstance(layer, ExpansionTappable):
                    raise ValueError(f"{where} has no expansion to tap")
                try:
                    layer.split_expansion()  # raises if this block has none
                except ValueError as e:
                    raise ValueError(f"{where}: {e}") from None
                return i
        raise ValueError(
            f"{name} taps={{{stride}: 'expansion'}} reads the strided block that takes the net to stride "
            f"{2 * stride}, but at output_stride={self.output_stride} no block does (it is dilated); "
            f"it needs output_stride={2 * stride} or more")

    def forward(self, x: Tensor) -> dict[int, Tensor]:
        self.check_input(x)
        out: dict[int, Tensor] = {}
        for i, layer in enumerate(self.feature_layers()):
            if i in self._expansion_at:
                # Split at call time: optimize_for_inference may have replaced the submodules.
                expansion, rest = layer.split_expansion()
                x = expansion(x)
                out[self._expansion_at[i]] = x
                x = rest(x)
            else:
                x = layer(x)
            if i in self._tap_at:
                out[self._tap_at[i]] = x.clone() if i in self._copy_at else x
        return out
