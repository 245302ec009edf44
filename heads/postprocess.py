"""SSD post-processing: per-class score threshold and top-k, class-wise NMS, best detections.

The detections of torchvision's ``SSD.postprocess_detections`` (Liu et al., arXiv
1512.02325, §3.7: confidence 0.01, NMS at 0.45 per class, top 200; torchvision's SSDLite:
0.001, 0.55, 300), computed without a loop over classes and on a prefix of
the best candidates (``tests/heads/test_postprocess.py``, ``test_inference.py``).
"""

from __future__ import annotations

import torch
from torch import Tensor
from torchvision.ops import nms

__all__ = ["select_detections", "batched_nms_topn"]


def select_detections(
    boxes: Tensor, scores: Tensor, score_thresh: float, topk_candidates: int, nms_thresh: float,
    detections_per_img: int,
) -> dict[str, Tensor]:
    """torchvision's SSD post-processing of one image, without a loop over classes.

    Per class (column ``j`` of ``scores`` is label ``j + 1``): keep scores above
    ``score_thresh``, then the ``topk_candidates`` best; then class-wise NMS and the
    ``detections_per_img`` best overall, by decreasing score: the detections of
    torchvision's ``SSD.postprocess_detections``.

    Only the best candidates can reach the output, so when there are many (an untrained
    network puts nearly every (anchor, class) pair above 0.001) the work is done on a
    prefix: the ``m`` best scores of the image (one ``topk``), ranked within their class
    to apply the per-class top-k (exact: every better candidate of the same class is in
    the prefix), then NMS (:func:`batched_nms_topn`). NMS keeps or drops a box by looking
    only at better boxes, so once the prefix yields ``detections_per_img`` survivors, or
    holds every candidate that passes the per-class top-k, the rest cannot change the
    output; otherwise ``m`` grows 4x.

    Args:
        boxes: (A, 4) decoded xyxy boxes. scores: (A, K) foreground class scores.
    """
    num_classes = scores.shape[1]
    above = scores > score_thresh
    per_class = above.sum(0)
    num_above = int(per_class.sum())
    k = min(topk_candidates, scores.shape[0])
    if k <= 0 or num_above == 0 or detections_per_img <= 0:
        empty = torch.zeros(0, dtype=torch.int64, device=scores.device)
        return {"boxes": boxes.new_zeros((0, 4)), "scores": scores.new_zeros(0), "labels": empty}
    num_valid = int(per_class.clamp(max=k).sum())  # candidates that pass the per-class top-k
    m = num_above if num_above <= 64 * detections_per_img else 4 * detections_per_img
    while True:
        cand, anchor_idx, cls_idx = _best_candidates(scores, above, m, num_above)
        by_class = cls_idx.argsort(stable=True)  # grouped by class, best first
        counts = torch.bincount(cls_idx, minlength=num_classes)
        rank = torch.empty_like(cls_idx)
        rank[by_class] = torch.arange(m, device=cls_idx.device) - (counts.cumsum(0) - counts)[cls_idx[by_class]]
        ok = rank < k
        sel_boxes, sel_scores, labels = boxes[anchor_idx[ok]], cand[ok], cls_idx[ok] + 1
        keep = batched_nms_topn(sel_boxes, sel_scores, labels, nms_thresh, detections_per_img)
        if len(keep) >= detections_per_img or m == num_above or len(sel_scores) == num_valid:
            return {"boxes": sel_boxes[keep], "scores": sel_scores[keep], "labels": labels[keep]}
        m = num_above if 8 * m >= num_above else 4 * m


def _best_candidates(scores: Tensor, above: Tensor, m: int, num_above: int) -> tuple[Tensor, Tensor, Tensor]:
    """(score, anchor, class) of the ``m`` best entries of ``scores`` above the threshold, best first."""
    if m < num_above:
        cand, idx = scores.reshape(-1).topk(m)
        return cand, idx // scores.shape[1], idx % scores.shape[1]
    anchor_idx, cls_idx = torch.nonzero(above, as_tuple=True)
    cand = scores[anchor_idx, cls_idx]
    order = cand.argsort(descending=True, stable=True)
    return cand[order], anchor_idx[order], cls_idx[order]


def batched_nms_topn(boxes: Tensor, scores: Tensor, labels: Tensor, iou_thresh: float, max_keep: int) -> Tensor:
    """``torchvision.ops.batched_nms(boxes, scores, labels, iou_thresh)[:max_keep]`` for sorted input.

    ``scores`` must be sorted in decreasing order. Greedy NMS keeps or drops a box by
    looking only at higher-scored boxes, so NMS on a prefix of the candidates decides
    that prefix exactly as NMS on all of them would; once a prefix yields ``max_keep``
    survivors the rest cannot enter the output. The prefix starts at ``4 * max_keep``
    and grows 4x until it does (or covers everything). Classes are kept apart with
    per-class coordinate offsets computed in float64, where they are exact (float32
    offsets, as in ``batched_nms``'s own trick, round box sides by up to ~1e-3 px).
    """
    n = len(boxes)
    if n == 0 or max_keep <= 0:
        return torch.zeros(0, dtype=torch.int64, device=boxes.device)
    b = boxes.double()
    b = b - b.min()
    b = b + (labels.double() * (b.max() + 1.0))[:, None]
    s = scores.double()
    m = min(n, 4 * max_keep)
    while True:
        keep = nms(b[:m], s[:m], iou_thresh)
        if len(keep) >= max_keep or m == n:
            return keep[:max_keep]
        m = min(n, 4 * m)
