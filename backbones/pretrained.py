"""Pretrained weights by name: torchvision's and timm's, through their own hash-checked, cached downloads.

Nothing here copies a URL or a hash by hand. A torchvision entry points at one of its
``Weights`` enums, which carry the URL (its file name holds the sha256 prefix that
``torch.hub`` checks), the categories, the preprocessing and the published metrics. A timm
entry points at a pretrained config, and ``timm.create_model(pretrained=True)`` fetches it
through the Hugging Face hub cache. Each entry also says what our model needs in order to
hold those weights exactly (``options``, e.g. ``padding="caffe"``, ``bn_eps=1e-5``) and how
the keys map onto ours (``convert``). Every converter is checked against the source
library's own model with random weights (``tests/backbones/test_pretrained.py``).

Names: ``torchvision:<Enum>.<member>``, ``timm:<model>.<tag>``, ``url:<your name>`` (a file you
host, registered with :func:`register_weights`), and the aliases ``coco``
(the whole model; for a detector or segmenter) and ``imagenet`` (a backbone or classifier),
which resolve to the default entry of the model or backbone at hand.

Offline (as on a machine without network), a missing file is an error naming the URL, the
cache file to put it in, and how to pass a local path instead. Set ``MOBILEDENSE_WEIGHTS_MIRROR``
to a base URL to fetch the same file names from a mirror (the hash check stays).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

from torch import Tensor

__all__ = ["PretrainedWeights", "WEIGHTS", "register_weights", "list_weights", "get_weights", "resolve_weights",
           "is_weights_name", "weights_state_dict", "from_timm_positional", "OfflineError"]


class OfflineError(RuntimeError):
    """A named weight file is neither cached nor downloadable; the message says what to fetch and where."""


@dataclass(frozen=True)
class PretrainedWeights:
    """One named weight file and what our model needs to hold it.

    Attributes:
        name: ``source:reference`` (``torchvision:MobileNet_V3_Large_Weights.IMAGENET1K_V1``).
        kind: ``"model"`` (a whole detector / segmenter of ``mobiledense.heads.list_models()``)
            or ``"classifier"`` (a backbone with its ImageNet head: loads into ``create_classifier``
            and, without the head, as ``weights_backbone``).
        target: the model name (kind "model") or the backbone name (kind "classifier").
        source: ``"torchvision"``, ``"timm"``, or ``"url"`` (your own hosted file, ``file_url``).
        options: spec options our model must be built with to hold the weights exactly.
        num_classes: the classes the file was trained with (detection counts the background).
        convert: source state_dict -> ours (None: our layout already, or converted on loading).
        test: the test that proves the conversion exact.
    """

    name: str
    kind: str
    target: str
    source: str
    options: Mapping[str, Any] = field(default_factory=dict)
    num_classes: int = 1000
    convert: Callable[[dict[str, Tensor]], dict[str, Tensor]] | None = None
    test: str = "tests/backbones/test_pretrained.py"
    default: bool = False
    #: source "url": where the file is (its name must hold its sha256 prefix, as torch.hub checks).
    file_url: str | None = None

    @property
    def reference(self) -> str:
        return self.name.split(":", 1)[1]

    @property
    def metrics(self) -> dict[str, Any]:
        """The source's published figures (torchvision's ``meta["_metrics"]``; timm publishes them apart)."""
        return dict(self.torchvision_weights().meta.get("_metrics", {})) if self.source == "torchvision" else {}

    @property
    def categories(self) -> tuple[str, ...]:
        """The source's class names (detection and segmentation: background first)."""
        return tuple(self.torchvision_weights().meta.get("categories", ())) if self.source == "torchvision" else ()

    def torchvision_weights(self) -> Any:
        """The torchvision ``Weights`` member (import resolved at call time)."""
        import torchvision.models as tvm
        from torchvision.models import detection, segmentation

        enum_name, member = self.reference.rsplit(".", 1)
        for module in (tvm, detection, segmentation):
            if hasattr(module, enum_name):
                return getattr(getattr(module, enum_name), member)
        raise KeyError(f"torchvision has no weights {self.reference!r}")

    @property
    def url(self) -> str | None:
        if self.source == "url":
            return self.file_url
        if self.source == "torchvision":
            return self.torchvision_weights().url
        import timm

        cfg = timm.models.get_pretrained_cfg(self.reference)
        return (f"https://huggingface.co/{cfg.hf_hub_id}" if cfg.hf_hub_id else cfg.url) or None


WEIGHTS: dict[str, PretrainedWeights] = {}


def register_weights(entry: PretrainedWeights) -> PretrainedWeights:
    """Add an entry; duplicates are refused."""
    if entry.name in WEIGHTS:
        raise KeyError(f"weights {entry.name!r} are already registered")
    WEIGHTS[entry.name] = entry
    return entry


def list_weights(target: str | None = None) -> list[str]:
    """Registered weight names (of one model or backbone)."""
    return sorted(n for n, e in WEIGHTS.items() if target in (None, e.target))


def get_weights(name: str) -> PretrainedWeights:
    try:
        return WEIGHTS[name]
    except KeyError:
        raise KeyError(f"unknown weights {name!r}; registered: {', '.join(list_weights())}") from None


def is_weights_name(value: str | os.PathLike | None) -> bool:
    """Whether ``value`` names registered weights (an alias or ``source:ref``) rather than a local file."""
    return isinstance(value, str) and (value in ("coco", "imagenet")
                                       or value.split(":", 1)[0] in ("torchvision", "timm", "url"))


def resolve_weights(name: str, target: str, kind: str) -> PretrainedWeights:
    """The entry ``name`` stands for when loaded into ``target`` (a model or backbone name) as ``kind``.

    ``kind`` "model" takes whole-model entries (alias ``coco``); "backbone" takes classifier
    entries of that backbone (alias ``imagenet``), whose head is dropped.
    """
    want = "model" if kind == "model" else "classifier"
    if name in ("coco", "imagenet"):
        expected = "coco" if want == "model" else "imagenet"
        if name != expected:
            raise ValueError(f"weights {name!r}: use {expected!r} for a {'whole model' if want == 'model' else 'backbone'}")
        found = [e for e in WEIGHTS.values() if e.target == target and e.kind == want and e.default]
        if not found:
            have = [e.target for e in WEIGHTS.values() if e.kind == want and e.default]
            raise KeyError(f"no {name!r} weights for {target}; {name!r} exists for: {', '.join(sorted(have))}"
                           f" (registered: mobiledense weights list)")
        return found[0]
    entry = get_weights(name)
    if entry.kind != want or entry.target != target:
        raise ValueError(f"weights {name} are {entry.kind} weights of {entry.target}, not {want} weights of {target}")
    return entry


def _offline(entry: PretrainedWeights, cause: BaseException, file: Path | None) -> OfflineError:
    where = f" into {file}" if file else ""
    return OfflineError(
        f"cannot fetch weights {entry.name} ({type(cause).__name__}: {str(cause).strip().splitlines()[0][:200]}). "
        f"Download {entry.url}{where} on a machine with network (mobiledense weights download {entry.name} --to DIR), "
        "or pass the local file instead of the name (--weights FILE / --weights-backbone FILE)")


def _hub_state_dict(entry: PretrainedWeights, progress: bool) -> dict[str, Tensor]:
    import torch.hub

    url = entry.url
    mirror = os.environ.get("MOBILEDENSE_WEIGHTS_MIRROR")
    if mirror:
        url = mirror.rstrip("/") + "/" + url.rsplit("/", 1)[-1]
    file = Path(torch.hub.get_dir()) / "checkpoints" / url.rsplit("/", 1)[-1]
    try:  # torch.hub: cached file if present, else download and check the sha256 prefix of the name
        return torch.hub.load_state_dict_from_url(url, progress=progress, check_hash=True, map_location="cpu",
                                                  weights_only=True)
    except RuntimeError as e:
        if "invalid hash value" in str(e):
            raise ValueError(f"refusing {url}: its sha256 does not match the hash in its file name "
                             f"({str(e).strip()}); the file was not kept") from e
        raise
    except OSError as e:  # URLError, ConnectionError, ...
        raise _offline(entry, e, file) from e


def _timm_state_dict(entry: PretrainedWeights) -> dict[str, Tensor]:
    import timm

    try:  # timm's own download: the Hugging Face hub (cached, verified), or its URL through torch.hub
        return timm.create_model(entry.reference, pretrained=True).state_dict()
    except Exception as e:  # noqa: BLE001 - hub errors have many types; every one means: not available here
        raise _offline(entry, e, None) from e


def weights_state_dict(entry: PretrainedWeights, progress: bool = True) -> dict[str, Tensor]:
    """The entry's state_dict in our layout (downloaded on first use, cached by its library)."""
    sd = _timm_state_dict(entry) if entry.source == "timm" else _hub_state_dict(entry, progress)
    return entry.convert(sd) if entry.convert else sd


def from_timm_positional(sd: Mapping[str, Tensor], ours: Mapping[str, Tensor], name: str) -> dict[str, Tensor]:
    """Map a timm state_dict onto ours by position (the same layers in the same order, reshaped where a
    1x1 conv is our Linear); refused, naming the first difference, if the layouts are not the same."""
    theirs, mine = list(sd.items()), list(ours.items())
    if len(theirs) != len(mine):
        raise ValueError(f"timm {name} has {len(theirs)} tensors, ours {len(mine)}: not the same architecture")
    out = {}
    for (tk, tv), (ok, ov) in zip(theirs, mine):
        if tv.numel() != ov.numel():
            raise ValueError(f"timm {name} differs from ours at {tk} {tuple(tv.shape)} vs {ok} {tuple(ov.shape)}")
        out[ok] = tv.reshape(ov.shape)
    return out


# ---------------------------------------------------------------------- the entries


def _register_torchvision(reference: str, kind: str, target: str, default: bool, num_classes: int = 1000,
                          **options: Any) -> None:
    register_weights(PretrainedWeights(f"torchvision:{reference}", kind, target, "torchvision", options,
                                       num_classes, default=default))


def _timm_converter(target: str, options: Mapping[str, Any]) -> Callable[[dict[str, Tensor]], dict[str, Tensor]]:
    def convert(sd: dict[str, Tensor]) -> dict[str, Tensor]:
        from ._base import create_classifier

        ours = create_classifier(target, **options).state_dict()
        return from_timm_positional(sd, ours, target)

    return convert


def _register_timm(reference: str, target: str, default: bool, positional: bool = True, **options: Any) -> None:
    register_weights(PretrainedWeights(
        f"timm:{reference}", "classifier", target, "timm", options, 1000,
        convert=_timm_converter(target, options) if positional else None, default=default))


def _register_all() -> None:
    # torchvision builds its COCO SSDLite without an ImageNet backbone, hence with the reduced tail (3.44 M).
    _register_torchvision("SSDLite320_MobileNet_V3_Large_Weights.COCO_V1", "model", "ssdlite320_mobilenet_v3_large",
                          True, num_classes=91, reduced_tail=True)
    _register_torchvision("LRASPP_MobileNet_V3_Large_Weights.COCO_WITH_VOC_LABELS_V1", "model",
                          "lraspp_mobilenet_v3_large", True, num_classes=21)
    for ref, backbone, default, opts in (
            ("MobileNet_V2_Weights.IMAGENET1K_V1", "mobilenet_v2", False, {}),
            ("MobileNet_V2_Weights.IMAGENET1K_V2", "mobilenet_v2", True, {}),
            # torchvision's SSDLite recipe starts from V1 (its weights_backbone default): so do we.
            ("MobileNet_V3_Large_Weights.IMAGENET1K_V1", "mobilenet_v3_large", True, {}),
            ("MobileNet_V3_Large_Weights.IMAGENET1K_V2", "mobilenet_v3_large", False, {}),
            ("MobileNet_V3_Small_Weights.IMAGENET1K_V1", "mobilenet_v3_small", True, {}),
            ("ShuffleNet_V2_X0_5_Weights.IMAGENET1K_V1", "shufflenet_v2_x0_5", True, {}),
            ("ShuffleNet_V2_X1_0_Weights.IMAGENET1K_V1", "shufflenet_v2_x1_0", True, {}),
            ("ShuffleNet_V2_X1_5_Weights.IMAGENET1K_V1", "shufflenet_v2_x1_5", True, {}),
            ("ShuffleNet_V2_X2_0_Weights.IMAGENET1K_V1", "shufflenet_v2_x2_0", True, {}),
            ("SqueezeNet1_0_Weights.IMAGENET1K_V1", "squeezenet1_0", True, {"padding": "caffe"}),
            ("SqueezeNet1_1_Weights.IMAGENET1K_V1", "squeezenet1_1", True, {"padding": "caffe"})):
        _register_torchvision(ref, "classifier", backbone, default, **opts)
    # timm: where its architecture is ours up to a declared option (BN eps, activation, stem padding).
    _register_timm("mobilenetv3_large_100.ra_in1k", "mobilenet_v3_large", False, bn_eps=1e-5)
    _register_timm("mobilenetv3_small_100.lamb_in1k", "mobilenet_v3_small", False, bn_eps=1e-5)
    _register_timm("mobilenetv2_100.ra_in1k", "mobilenet_v2", False)
    _register_timm("mobilenetv1_100.ra4_e3600_r224_in1k", "mobilenet_v1", True, activation="relu6")
    # legacy_xception's keys are ours already (the family follows them): no positional mapping.
    _register_timm("legacy_xception.tf_in1k", "xception", True, positional=False, padding="valid")


_register_all()
