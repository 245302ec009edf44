"""SSD matching strategy (arXiv 1512.02325 §2.2 "Matching strategy").

Every default box whose best Jaccard overlap with a ground-truth box is at
least ``iou_thresh`` (0.5) is matched to that box; in addition each ground-truth
box is matched to the default box it overlaps most, so no object is left without
a positive. Same semantics as torchvision's ``det_utils.SSDMatcher``
(``tests/heads/test_matcher.py`` compares the two).
"""

from __future__ import annotations

import torch
from torch import Tensor
from torchvision.ops import box_iou

__all__ = ["SSDMatcher"]


class SSDMatcher:
    """Assign to every anchor the index of its ground-truth box, or ``BACKGROUND`` (-1).

    Args:
        iou_thresh: minimum IoU for a match; IoU exactly equal to it matches.
    """

    BACKGROUND = -1

    def __init__(self, iou_thresh: float = 0.5) -> None:
        if not 0.0 <= iou_thresh <= 1.0:
            raise ValueError(f"iou_thresh must be in [0, 1], got {iou_thresh}")
        self.iou_thresh = iou_thresh

    def __call__(self, iou: Tensor) -> Tensor:
        """Match from a (G, A) IoU matrix (ground truth x anchors) to an (A,) int64 index."""
        if iou.dim() != 2:
            raise ValueError(
                f"SSDMatcher expects a (num_gt, num_anchors) matrix, got shape {tuple(iou.shape)}")
        if iou.shape[0] == 0:  # an image without objects: every anchor is background
            return torch.full((iou.shape[1],), self.BACKGROUND, dtype=torch.int64, device=iou.device)
        best_iou, matches = iou.max(dim=0)
        matches[best_iou < self.iou_thresh] = self.BACKGROUND
        # Each ground truth keeps its best anchor, even below the threshold (a later
        # ground truth wins an anchor that is the best of two, as in torchvision).
        _, best_anchor = iou.max(dim=1)
        matches[best_anchor] = torch.arange(iou.shape[0], dtype=torch.int64, device=iou.device)
        return matches

    def match_batch(self, iou: Tensor, valid: Tensor) -> Tensor:
        """:meth:`__call__` on every image of a padded batch at once.

        Args:
            iou: (N, G, A) IoU of each image's ground truth (padded to G rows) with the anchors.
            valid: (N, G) bool, True for real ground-truth rows (padding never matches).

        Returns the (N, A) int64 matches; equal, image by image, to :meth:`__call__` on the
        image's real rows (same reductions, and the same "later ground truth wins" order).
        """
        n, g, a = iou.shape
        if g == 0:
            return torch.full((n, a), self.BACKGROUND, dtype=torch.int64, device=iou.device)
        iou = iou.masked_fill(~valid[..., None], -1.0)  # below any real IoU: padding never wins
        best_iou, matches = iou.max(dim=1)
        matches[best_iou < self.iou_thresh] = self.BACKGROUND
        _, best_anchor = iou.max(dim=2)  # (N, G)
        img, gt = torch.nonzero(valid, as_tuple=True)  # image-major, then increasing gt index
        matches[img, best_anchor[img, gt]] = gt
        return matches

    def match_boxes(self, gt_boxes: Tensor, anchors: Tensor) -> Tensor:
        """:meth:`__call__` on ``box_iou(gt_boxes, anchors)`` (both xyxy)."""
        return self(box_iou(gt_boxes, anchors))

    def __repr__(self) -> str:
        return f"{type(self).__name__}(iou_thresh={self.iou_thresh})"
