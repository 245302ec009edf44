"""torchvision checkpoints onto our keys: SSDLite and LR-ASPP.

Our modules keep torchvision's names wherever the layout allows (backbones,
heads); these functions only move the prefixes torchvision's wrappers add
(``IntermediateLayerGetter``, its SSDLite split of MobileNetV3 at C4).
Golden tests: ``tests/heads/test_torchvision_equivalence.py``, ``test_lraspp.py``.
"""

from __future__ import annotations

from typing import Mapping

from torch import Tensor

__all__ = ["from_torchvision_ssdlite", "lraspp_from_torchvision", "lraspp_weights", "ssdlite_weights"]


def from_torchvision_ssdlite(sd: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Map a torchvision ``ssdlite320_mobilenet_v3_large`` state_dict onto our keys.

    torchvision splits its MobileNetV3 at C4 (``c4``, the last strided block):
    ``backbone.features.0 = features[:c4] + features[c4].block[0]`` (up to the
    expansion) and ``backbone.features.1 = features[c4].block[1:] + features[c4+1:]``.
    Ours keeps ``features`` whole and taps the expansion inside the block, so

    * ``backbone.features.0.{i}.*`` (i < c4) -> ``backbone.features.{i}.*``
    * ``backbone.features.0.{c4}.*`` -> ``backbone.features.{c4}.block.0.*``
    * ``backbone.features.1.0.{j}.*`` -> ``backbone.features.{c4}.block.{j}.*`` (a sliced
      ``nn.Sequential`` keeps its keys, so ``j`` starts at 1)
    * ``backbone.features.1.{k}.*`` (k >= 1) -> ``backbone.features.{c4+k}.*``
    * ``backbone.extra.*`` -> ``extra.*``; ``head.*`` is unchanged.

    ``c4`` is read from the keys (the last index under ``backbone.features.0``).
    """
    first = [k.split(".") for k in sd if k.startswith("backbone.features.0.")]
    if not first:
        raise ValueError("not a torchvision SSDLite state_dict: no 'backbone.features.0.*' keys")
    c4 = max(int(p[3]) for p in first)
    out = {}
    for key, value in sd.items():
        p = key.split(".")
        if key.startswith("backbone.features.0."):
            i, rest = int(p[3]), p[4:]
            new = [str(i)] + rest if i < c4 else [str(c4), "block", "0"] + rest
            key = ".".join(["backbone", "features"] + new)
        elif key.startswith("backbone.features.1."):
            k, rest = int(p[3]), p[4:]
            new = [str(c4), "block"] + rest if k == 0 else [str(c4 + k)] + rest
            key = ".".join(["backbone", "features"] + new)
        elif key.startswith("backbone.extra."):
            key = key[len("backbone."):]
        out[key] = value
    return out


def lraspp_from_torchvision(state_dict: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Map torchvision ``LRASPP`` keys to :class:`Segmenter` keys.

    torchvision wraps ``mobilenet_v3_large(dilated=True).features`` in an
    ``IntermediateLayerGetter`` (``backbone.<i>.*``) and names the head
    ``classifier``; here they are ``backbone.features.<i>.*`` and ``decoder.*``.
    """
    return _renamed(state_dict, _LRASPP_PREFIXES, " in a torchvision LR-ASPP state_dict (aux heads are not supported)")


def lraspp_to_torchvision(state_dict: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Map :class:`Segmenter` keys (``backbone.features.*``, ``decoder.*``) back to torchvision ``LRASPP`` keys:
    the inverse of :func:`lraspp_from_torchvision`, for an LR-ASPP built in torchvision's layout."""
    return _renamed(state_dict, tuple((ours, theirs) for theirs, ours in _LRASPP_PREFIXES),
                    ": not an LR-ASPP over a MobileNetV3 backbone in torchvision's layout")


#: (torchvision prefix, our prefix) of an LR-ASPP state_dict.
_LRASPP_PREFIXES = (("backbone.", "backbone.features."), ("classifier.", "decoder."))


def _renamed(state_dict: Mapping[str, Tensor], prefixes: tuple[tuple[str, str], ...], what: str) -> dict[str, Tensor]:
    """Keys with their first matching ``(old, new)`` prefix replaced; a KeyError naming a key no prefix matches."""
    out = {}
    for k, v in state_dict.items():
        old, new = next(((o, n) for o, n in prefixes if k.startswith(o)), (None, None))
        if old is None:
            raise KeyError(f"unexpected key {k!r}{what}")
        out[new + k[len(old):]] = v
    return out


def ssdlite_weights(sd: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """A detector state_dict in our layout: torchvision's (``backbone.extra.*`` keys) converted, ours as is."""
    return from_torchvision_ssdlite(sd) if any(k.startswith("backbone.extra.") for k in sd) else dict(sd)


def lraspp_weights(sd: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """An LR-ASPP state_dict in our layout: torchvision's (``classifier.*`` keys) converted, ours as is."""
    return lraspp_from_torchvision(sd) if any(k.startswith("classifier.") for k in sd) else dict(sd)
