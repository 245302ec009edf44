"""Segmentation losses by name: cross-entropy and smp's Dice, Focal and Lovasz, summable.

``build_seg_loss("ce+0.5*dice")`` returns a module computing
``CE + 0.5 * Dice`` on ``(N, C, H, W)`` logits and ``(N, H, W)`` int64 masks,
ignoring pixels labelled ``ignore_index`` (255 = Cityscapes void) in every term.
"""

from __future__ import annotations

from typing import Callable

from segmentation_models_pytorch.losses import DiceLoss, FocalLoss, LovaszLoss
from torch import Tensor, nn

__all__ = ["SEG_LOSSES", "SegLoss", "build_seg_loss"]

#: name -> factory(ignore_index); smp losses in "multiclass" mode (softmax over C).
SEG_LOSSES: dict[str, Callable[[int], nn.Module]] = {
    "ce": lambda ignore: nn.CrossEntropyLoss(ignore_index=ignore),
    "dice": lambda ignore: DiceLoss("multiclass", ignore_index=ignore, from_logits=True),
    # smp's multiclass focal loss is one-vs-rest sigmoid focal loss, averaged over classes.
    "focal": lambda ignore: FocalLoss("multiclass", ignore_index=ignore),
    "lovasz": lambda ignore: LovaszLoss("multiclass", ignore_index=ignore),
}


class SegLoss(nn.Module):
    """Weighted sum of named loss terms over pixels whose label is not ``ignore_index``.

    Logits are cast to float32 (Lovasz sorting and Dice sums are fragile in
    fp16). A batch with no labelled pixel gives a zero loss that still
    back-propagates (CE alone would return NaN).
    """

    def __init__(self, terms: dict[str, tuple[float, nn.Module]], ignore_index: int = 255) -> None:
        super().__init__()
        self.weights = {name: w for name, (w, _) in terms.items()}
        self.terms = nn.ModuleDict({name: loss for name, (_, loss) in terms.items()})
        self.ignore_index = ignore_index

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        if logits.dim() != 4 or target.shape != (logits.shape[0], *logits.shape[2:]):
            raise ValueError(
                f"SegLoss expects logits (N, C, H, W) and target (N, H, W) of the same size, got "
                f"{tuple(logits.shape)} and {tuple(target.shape)}; upsample logits to the mask size"
            )
        if target.dtype.is_floating_point:
            raise TypeError(f"SegLoss target must hold integer class ids, got dtype {target.dtype}")
        logits, target = logits.float(), target.long()
        if not (target != self.ignore_index).any():
            return logits.sum() * 0.0
        return sum(self.weights[n] * loss(logits, target) for n, loss in self.terms.items())

    def extra_repr(self) -> str:
        return " + ".join(f"{w:g}*{n}" for n, w in self.weights.items()) + f", ignore_index={self.ignore_index}"


def build_seg_loss(spec: str = "ce", ignore_index: int = 255) -> SegLoss:
    """Build a :class:`SegLoss` from ``"name"`` or ``"name+w*name+..."``.

    Args:
        spec: terms joined by ``+``, each ``name`` or ``weight*name`` with names
            from :data:`SEG_LOSSES` (``ce``, ``dice``, ``focal``, ``lovasz``),
            e.g. ``"ce+dice"`` or ``"ce+0.5*lovasz"``.
        ignore_index: label excluded from every term (255 for Cityscapes trainIds).
    """
    terms: dict[str, tuple[float, nn.Module]] = {}
    for part in spec.replace(" ", "").lower().split("+"):
        weight, _, name = part.rpartition("*")
        if name not in SEG_LOSSES:
            raise ValueError(f"unknown loss {name!r} in {spec!r}; valid names: {', '.join(SEG_LOSSES)}")
        if name in terms:
            raise ValueError(f"loss {name!r} appears twice in {spec!r}; give it one weight instead")
        try:
            w = float(weight) if weight else 1.0
        except ValueError:
            raise ValueError(f"bad weight {weight!r} in {spec!r}; write e.g. 'ce+0.5*dice'") from None
        terms[name] = (w, SEG_LOSSES[name](ignore_index))
    return SegLoss(terms, ignore_index)
