"""Our backbones as segmentation-models-pytorch (smp 0.6) encoders.

smp resolves ``encoder_name`` through the plain dict ``smp.encoders.encoders``
at call time, so :func:`register_smp_encoders` adds one entry per registered
backbone, named ``"mobiledense-<backbone>"``, and then every smp architecture
takes it by name::

    register_smp_encoders()
    smp.create_model("deeplabv3plus", encoder_name="mobiledense-mobilenet_v3_large",
                     encoder_weights=None, classes=19)

smp ignores extra encoder kwargs for non-timm encoders, so family options
(``width_mult``, ``reduced_tail``) and local backbone weights go through
:func:`create_smp_model`, which also wraps the model in our Segmenter API.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import segmentation_models_pytorch.encoders as smp_encoders
import torch
import torch.nn.functional as F
from segmentation_models_pytorch.encoders._base import EncoderMixin
from segmentation_models_pytorch.encoders._utils import patch_first_conv
from torch import Tensor, nn

from mobiledense.backbones import Backbone, create_backbone, get_backbone_entry, list_backbones

from .registry import backbone_kwargs as spec_backbone_kwargs
from .registry import build_model_spec, create_model
from .segmenter import Normalize, check_image_batch, upsampled_argmax
from .spec import ModelSpec

__all__ = ["SMP_PREFIX", "SmpEncoder", "SmpSegmenter", "build_smp_segmenter", "create_smp_model",
           "register_smp_encoders"]

SMP_PREFIX = "mobiledense-"


class SmpEncoder(nn.Module, EncoderMixin):
    """smp encoder contract over a :class:`Backbone`.

    ``forward`` returns ``[x, f(2), f(4), f(8), f(16), f(32)][: depth + 1]`` with
    ``f(s) = feats[min(s, output_stride)]``: when dilated, the stages at or past
    the output stride all get the deepest map (our dict keeps only the deepest
    map per stride; DeepLabV3(+) reads only the last one and ``f(4)``). A
    zero-channel tensor stands in where the backbone has no map of a stride, as
    smp does for ``mit_b*``. With ``depth`` < 5 the deeper layers still run (the
    backbone contract has no early exit) and their maps are dropped.

    Args:
        backbone_name: registry name.
        depth: number of smp stages (1..5).
        output_stride: 32, or 16 / 8 via dilation (smp's ``make_dilated``).
        backbone_kwargs: family options passed to ``create_backbone``.
    """

    _is_torch_scriptable = False  # backbones return dict[int, Tensor] through Python control flow
    _is_torch_exportable = True
    _is_torch_compilable = True

    def __init__(self, backbone_name: str, depth: int = 5, output_stride: int = 32,
                 backbone_kwargs: dict[str, Any] | None = None) -> None:
        nn.Module.__init__(self)
        if not 1 <= depth <= 5:
            raise ValueError(f"SmpEncoder depth must be in 1..5, got {depth}")
        self._name, self._kwargs = backbone_name, dict(backbone_kwargs or {})
        self._depth, self._in_channels = depth, 3
        self.backbone: Backbone = self._build(output_stride)
        self._set_output_stride(output_stride)

    def _build(self, output_stride: int) -> Backbone:
        # Explicit even for 32: a backbone without a stride-32 map (SqueezeNet) says what it supports.
        return create_backbone(self._name, output_stride=output_stride, **self._kwargs)

    def _set_output_stride(self, output_stride: int) -> None:
        self._output_stride = output_stride
        self._out_channels = [self._in_channels] + [self._channels_at(i) for i in range(1, self._depth + 1)]

    def _channels_at(self, i: int) -> int:
        """Channels of smp stage ``i``: ``feats[min(2**i, output_stride)]``; 0 for a placeholder."""
        return self.backbone.channels.get(min(2 ** i, self._output_stride), 0)

    def make_dilated(self, output_stride: int) -> None:
        """Rebuild the backbone at ``output_stride`` and keep its weights (dilation adds none)."""
        if output_stride == self._output_stride:
            return
        supported = get_backbone_entry(self._name).output_strides
        if output_stride not in supported:
            raise ValueError(f"{SMP_PREFIX}{self._name} supports output_stride in {supported}, "
                             f"got {output_stride}")
        new = self._build(output_stride)
        if self._in_channels != 3:
            patch_first_conv(new, self._in_channels, pretrained=False)
            new.in_chans = self._in_channels
        new.load_state_dict(self.backbone.state_dict())
        self.backbone = new
        self._set_output_stride(output_stride)

    def set_in_channels(self, in_channels: int, pretrained: bool = True) -> None:
        super().set_in_channels(in_channels, pretrained)
        self.backbone.in_chans = in_channels

    def get_stages(self) -> dict[int, list[nn.Module]]:
        raise NotImplementedError("SmpEncoder dilates by rebuilding the backbone (make_dilated)")

    def forward(self, x: Tensor) -> list[Tensor]:
        feats = self.backbone(x)
        (n, _, h, w), out = x.shape, [x]
        for i in range(1, self._depth + 1):
            s = min(2 ** i, self._output_stride)
            if s in feats:
                out.append(feats[s])
            else:  # the backbone has no map of this stride: zero channels, as smp's mix_transformer
                out.append(x.new_empty((n, 0, -(-h // s), -(-w // s))))
        return out


def register_smp_encoders() -> list[str]:
    """Add ``"mobiledense-<name>"`` to smp's encoder table for every registered backbone.

    Idempotent; call again after registering new backbones. No ``pretrained_settings``:
    pass ``encoder_weights=None`` (load local weights with :func:`create_smp_model`).
    """
    names = []
    for name in list_backbones():
        names.append(_register(name, {}))
    return names


def _register(name: str, backbone_kwargs: dict[str, Any]) -> str:
    key = SMP_PREFIX + name
    if backbone_kwargs:
        key += "[" + ",".join(f"{k}={v!r}" for k, v in sorted(backbone_kwargs.items())) + "]"
    smp_encoders.encoders[key] = {  # looked up at call time: smp may have replaced the dict
        "encoder": SmpEncoder,
        "pretrained_settings": {},
        "params": {"backbone_name": name, "backbone_kwargs": dict(backbone_kwargs)},
    }
    return key


class SmpSegmenter(nn.Module):
    """An smp model behind our Segmenter API: float [0, 1] in, logits at input size out.

    Normalises with ImageNet statistics, zero-pads (the mean colour after
    normalisation) bottom/right to a multiple of the encoder's output stride, as
    smp requires, and crops the logits back.
    """

    def __init__(self, model: nn.Module, num_classes: int, normalize: bool = True) -> None:
        super().__init__()
        self.model = model
        self.num_classes = num_classes
        self.normalize = Normalize() if normalize else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        check_image_batch(x, "SmpSegmenter")
        h, w = x.shape[-2:]
        d = self.model.encoder.output_stride
        x = F.pad(self.normalize(x), (0, -w % d, 0, -h % d))
        return self.model(x)[..., :h, :w]

    def labels(self, x: Tensor, size: tuple[int, int] | None = None, dtype: torch.dtype = torch.int64) -> Tensor:
        """Class ids (N, H, W): ``forward(x).argmax(1)``, or at ``size`` (:func:`upsampled_argmax`)."""
        return upsampled_argmax(self(x), tuple(size or x.shape[-2:]), dtype=dtype)


def build_smp_segmenter(spec: ModelSpec, weights_backbone: str | Path | None = None) -> SmpSegmenter:
    """``smp.create_model(arch, encoder_name="mobiledense-<backbone>")`` of a resolved spec, in our
    Segmenter API (use :func:`~mobiledense.heads.create_model`, which resolves it)."""
    import segmentation_models_pytorch as smp

    h, b = spec.head, spec.backbone
    kwargs = {k: v for k, v in spec_backbone_kwargs(b).items() if k not in ("output_stride", "taps")}
    if weights_backbone is not None:
        kwargs["weights"] = str(weights_backbone)
    name = _register(b.name, kwargs)
    model = smp.create_model(h.arch, encoder_name=name, encoder_weights=None, classes=spec.num_classes,
                             **h.options)
    return SmpSegmenter(model, spec.num_classes, normalize=h.normalize)


def create_smp_model(arch: str, backbone: str, num_classes: int = 19, *, normalize: bool = True,
                     weights_backbone: str | Path | None = None, backbone_kwargs: dict[str, Any] | None = None,
                     **smp_kwargs: Any) -> SmpSegmenter:
    """An smp architecture over one of our backbones, e.g. ``create_smp_model("deeplabv3plus", "mobilenet_v2")``.

    Args:
        arch: smp architecture (``"deeplabv3plus"``, ``"fpn"``, ``"unet"`` ...).
        backbone: registry name.
        num_classes: output classes.
        normalize: ImageNet normalisation inside (inputs in [0, 1]).
        weights_backbone: local backbone checkpoint (``create_backbone(weights=...)``).
        backbone_kwargs: family options (``width_mult``, ``reduced_tail`` ...), checked
            against the backbone's registry entry before anything is built.
        **smp_kwargs: architecture options (``encoder_depth``, ``encoder_output_stride``,
            ``decoder_channels`` ...).
    """
    spec = build_model_spec("seg", arch, backbone, num_classes, normalize=normalize,
                            backbone_kwargs=backbone_kwargs, **smp_kwargs)
    return create_model(spec, weights_backbone=weights_backbone)
