"""The one backbone contract, the flat registry and the classifier wrapper.

Every backbone maps an image batch to multi-scale features keyed by stride::

    feats = backbone(x)          # {2: ..., 4: ..., 8: ..., 16: ..., 32: ...}
    backbone.channels[16]        # declared channels of feats[16]

When a stage is dilated (``output_stride`` 16 or 8), several stages share one
stride; the dict holds the *deepest* feature at each stride, so ``feats[16]``
of a MobileNetV3 at ``output_stride=16`` is the last 1x1 conv (960 channels),
exactly what LR-ASPP reads.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Mapping

import torch
from torch import Tensor, nn

__all__ = [
    "Backbone",
    "SequentialBackbone",
    "ImageClassifier",
    "BACKBONES",
    "register_backbone",
    "create_backbone",
    "create_classifier",
    "list_backbones",
    "plan_dilation",
    "load_state_dict_file",
    "count_params",
    "count_madds",
]


class Backbone(nn.Module):
    """Base class of every feature extractor.

    Subclasses set ``self.channels`` (stride -> channels of the feature returned
    at that stride), ``self.output_stride`` and implement ``forward`` returning a
    ``dict[int, Tensor]`` with exactly the keys of ``channels``.  They also
    implement :meth:`classifier_head`, which maps the deepest feature to logits.
    """

    channels: dict[int, int]
    output_stride: int
    #: ``output_stride`` values the architecture supports (dilation of late stages).
    supported_output_strides: tuple[int, ...] = (32,)
    #: Multiple that input height/width must be a multiple of for the strides to
    #: be exact; other sizes still run (convs floor/ceil) but maps are not aligned.
    size_divisor: int = 32

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


@dataclass(frozen=True)
class BackboneEntry:
    name: str
    factory: Callable[..., Backbone]
    paper: str
    #: torchvision classifier builder with the same architecture, if any.
    torchvision: str | None = None


BACKBONES: dict[str, BackboneEntry] = {}


def register_backbone(
    name: str, *, paper: str, torchvision: str | None = None
) -> Callable[[Callable[..., Backbone]], Callable[..., Backbone]]:
    """Decorator that adds a factory to the flat registry; duplicates are refused."""

    def wrap(factory: Callable[..., Backbone]) -> Callable[..., Backbone]:
        if name in BACKBONES:
            raise KeyError(f"backbone {name!r} is already registered by {BACKBONES[name].factory}")
        BACKBONES[name] = BackboneEntry(name, factory, paper, torchvision)
        return factory

    return wrap


def list_backbones() -> list[str]:
    return sorted(BACKBONES)


def _entry(name: str) -> BackboneEntry:
    try:
        return BACKBONES[name]
    except KeyError:
        raise KeyError(
            f"unknown backbone {name!r}; valid names: {', '.join(list_backbones())}"
        ) from None


def create_backbone(name: str, *, weights: str | Path | None = None, **kwargs) -> Backbone:
    """Build a registered backbone, e.g. ``create_backbone("mobilenet_v3_large", output_stride=16)``.

    Args:
        name: registry name (see :func:`list_backbones`).
        weights: optional local path of a state_dict for the backbone (our key
            names, or a torchvision classifier checkpoint: both are accepted).
        **kwargs: architecture options of the family (``width_mult``,
            ``output_stride``, ``tap``, ...).
    """
    model = _entry(name).factory(**kwargs)
    if weights is not None:
        sd = load_state_dict_file(weights)
        sd = _strip_to_backbone(sd, model)
        model.load_state_dict(sd)
    return model


def create_classifier(
    name: str, *, num_classes: int = 1000, weights: str | Path | None = None, **kwargs
) -> ImageClassifier:
    """Build ``ImageClassifier(create_backbone(name, **kwargs), num_classes)``.

    ``weights`` may be one of our classifier checkpoints or a torchvision
    classifier state_dict of the same architecture (keys are converted).
    """
    model = ImageClassifier(_entry(name).factory(**kwargs), num_classes)
    if weights is not None:
        sd = load_state_dict_file(weights)
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


def load_state_dict_file(path: str | Path) -> dict[str, Tensor]:
    """Load a local weights file safely (``weights_only=True``).

    Accepts a bare state_dict or a training checkpoint with a ``model`` /
    ``state_dict`` entry. Refuses pickled code with a clear error.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights file not found: {path}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - re-raised with the file name
        raise ValueError(
            f"cannot load weights from {path}: {e.__class__.__name__}: {str(e).splitlines()[0]} "
            "(only plain tensor state_dicts are accepted; pickled objects are refused)"
        ) from e
    if isinstance(obj, Mapping):
        for key in ("model", "state_dict", "model_ema"):
            if key in obj and isinstance(obj[key], Mapping):
                obj = obj[key]
                break
    if not isinstance(obj, Mapping) or not all(isinstance(v, Tensor) for v in obj.values()):
        raise ValueError(f"{path} does not hold a state_dict of tensors")
    return dict(obj)


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


class SequentialBackbone(Backbone):
    """A backbone that is a chain of layers, tapped at the deepest layer of each stride.

    Subclasses build their modules (named as in the family's reference code,
    so checkpoints map by prefix), then call :meth:`_init_taps` with the
    stride of each layer returned by :meth:`feature_layers`.
    """

    def feature_layers(self) -> list[nn.Module]:
        raise NotImplementedError

    def _init_taps(self, layer_strides: list[int], layer_channels: list[int]) -> None:
        """Record, per stride, the index of the deepest layer producing it."""
        self._layer_strides, self._layer_channels = list(layer_strides), list(layer_channels)
        self.tap_first_at(())

    def tap_first_at(self, strides: Iterable[int]) -> "SequentialBackbone":
        """Return, at each stride in ``strides``, the FIRST layer reaching it instead of the deepest.

        This is the strided block's own output (torchvision's "C2" for LR-ASPP's
        low-level branch reads the first stride-8 block of MobileNetV3). Returns self.
        """
        first = set(strides)
        unknown = first - set(self._layer_strides)
        if unknown:
            raise ValueError(f"{type(self).__name__} has no layers at strides {sorted(unknown)}; "
                             f"strides are {sorted(set(self._layer_strides))}")
        taps: dict[int, int] = {}
        for i, s in enumerate(self._layer_strides):
            if s not in first or s not in taps:
                taps[s] = i
        self._taps = taps
        self.first_taps = tuple(sorted(first))
        old = getattr(self, "channels", {})
        extra = {16: old[16]} if getattr(self, "tap", None) == "expansion" and 16 in old else {}
        self.channels = {s: self._layer_channels[i] for s, i in taps.items()} | extra
        self._tap_at = {i: s for s, i in taps.items()}
        return self

    def forward(self, x: Tensor) -> dict[int, Tensor]:
        self.check_input(x)
        out: dict[int, Tensor] = {}
        for i, layer in enumerate(self.feature_layers()):
            x = layer(x)
            if i in self._tap_at:
                out[self._tap_at[i]] = x
        return out
