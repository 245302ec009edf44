"""SSD training losses: MultiBox with hard-negative mining, or sigmoid focal loss.

Inputs are batched over all anchors: ``cls_logits`` (N, A, C) with class 0 the
background, ``bbox_regression`` (N, A, 4), ``cls_targets`` (N, A) int64 (0 for
background anchors, the matched label otherwise) and ``box_targets`` (N, A, 4)
(encoded offsets, read only at foreground anchors). Both losses are normalised by
the number of foreground anchors in the batch (at least 1).
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor
from torchvision.ops import sigmoid_focal_loss

__all__ = ["hard_negative_mask", "multibox_loss", "focal_multibox_loss"]


def hard_negative_mask(cls_loss: Tensor, foreground: Tensor, neg_to_pos_ratio: float = 3.0) -> Tensor:
    """(N, A) mask of the ``ratio x #positives`` highest-loss negatives of each image.

    SSD §2.2 "Hard negative mining": negatives are sorted by confidence loss and the
    top ones kept so that negatives:positives is at most 3:1. Same ranking as
    torchvision's ``SSD.compute_loss``, including its edge case: an image with more
    than ``A / (1 + ratio)`` positives also ranks some positives (loss set to -inf,
    so last) and counts them again; a no-object image contributes no negatives.
    """
    num_negative = neg_to_pos_ratio * foreground.sum(1, keepdim=True)
    negative_loss = cls_loss.clone()
    negative_loss[foreground] = -float("inf")
    rank = negative_loss.sort(1, descending=True)[1].sort(1)[1]
    return rank < num_negative


def _regression_loss(bbox_regression: Tensor, box_targets: Tensor, foreground: Tensor, n: int) -> Tensor:
    return F.smooth_l1_loss(bbox_regression[foreground], box_targets[foreground], reduction="sum") / n


def multibox_loss(
    cls_logits: Tensor,
    bbox_regression: Tensor,
    cls_targets: Tensor,
    box_targets: Tensor,
    neg_to_pos_ratio: float = 3.0,
) -> dict[str, Tensor]:
    """SSD eq. 1: softmax cross-entropy on positives + mined negatives, smooth-L1 on positives.

    Returns ``{"bbox_regression", "classification"}``, each summed over the batch and
    divided by the number of foreground anchors: the numbers of torchvision's
    ``SSD.compute_loss`` (``tests/heads/test_losses.py``).
    """
    foreground = cls_targets > 0
    n = max(1, int(foreground.sum()))
    num_classes = cls_logits.shape[-1]
    cls_loss = F.cross_entropy(
        cls_logits.reshape(-1, num_classes), cls_targets.reshape(-1), reduction="none"
    ).view(cls_targets.shape)
    background = hard_negative_mask(cls_loss, foreground, neg_to_pos_ratio)
    return {
        "bbox_regression": _regression_loss(bbox_regression, box_targets, foreground, n),
        "classification": (cls_loss[foreground].sum() + cls_loss[background].sum()) / n,
    }


def focal_multibox_loss(
    cls_logits: Tensor,
    bbox_regression: Tensor,
    cls_targets: Tensor,
    box_targets: Tensor,
    alpha: float = 0.25,
    gamma: float = 2.0,
) -> dict[str, Tensor]:
    """Sigmoid focal loss (Lin et al., RetinaNet, arXiv 1708.02002 eq. 5) over all anchors.

    Classes 1..C-1 are independent sigmoids with one-hot targets (a background anchor
    has all zeros); logit column 0 is not used, so a detector trained with this loss
    scores with ``sigmoid`` instead of ``softmax``. No negative mining: the focal term
    down-weights the easy negatives. ``torchvision.ops.sigmoid_focal_loss`` does the maths.
    """
    foreground = cls_targets > 0
    n = max(1, int(foreground.sum()))
    one_hot = F.one_hot(cls_targets, cls_logits.shape[-1])[..., 1:].to(cls_logits.dtype)
    cls = sigmoid_focal_loss(cls_logits[..., 1:], one_hot, alpha=alpha, gamma=gamma, reduction="sum")
    return {
        "bbox_regression": _regression_loss(bbox_regression, box_targets, foreground, n),
        "classification": cls / n,
    }
