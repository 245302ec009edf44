"""MultiBox loss equals torchvision's SSD.compute_loss; 3:1 hard negatives; focal option."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from torchvision.models.detection._utils import BoxCoder as TVBoxCoder
from torchvision.models.detection.ssd import SSD
from torchvision.ops import sigmoid_focal_loss

from mobiledense.heads import BoxCoder, SSDMatcher, focal_multibox_loss, hard_negative_mask, multibox_loss

NUM_CLASSES, A = 7, 300


def _problem(seed: int):
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(A, 2, generator=g) * 200
    anchors = torch.cat([xy, xy + 20 + torch.rand(A, 2, generator=g) * 60], dim=1)
    targets = []
    for n in (3, 0, 5):  # the middle image has no objects
        idx = torch.randperm(A, generator=g)[:n]
        boxes = anchors[idx] + torch.randn(n, 4, generator=g) * 3
        targets.append({"boxes": boxes, "labels": torch.randint(1, NUM_CLASSES, (n,), generator=g)})
    head = {"cls_logits": torch.randn(3, A, NUM_CLASSES, generator=g),
            "bbox_regression": torch.randn(3, A, 4, generator=g)}
    return anchors, targets, head


def _our_targets(anchors, targets):
    coder, matcher = BoxCoder(), SSDMatcher(0.5)
    cls_t = torch.zeros(len(targets), A, dtype=torch.int64)
    box_t = torch.zeros(len(targets), A, 4)
    matched = []
    for i, t in enumerate(targets):
        m = matcher.match_boxes(t["boxes"], anchors)
        fg = m >= 0
        cls_t[i, fg] = t["labels"][m[fg]]
        box_t[i, fg] = coder.encode(t["boxes"][m[fg]], anchors[fg])
        matched.append(m)
    return cls_t, box_t, matched


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_multibox_equals_torchvision_compute_loss(seed: int) -> None:
    anchors, targets, head = _problem(seed)
    cls_t, box_t, matched = _our_targets(anchors, targets)
    fake_ssd = SimpleNamespace(box_coder=TVBoxCoder((10.0, 10.0, 5.0, 5.0)), neg_to_pos_ratio=3.0)
    expected = SSD.compute_loss(fake_ssd, targets, head, [anchors] * 3, matched)
    got = multibox_loss(head["cls_logits"], head["bbox_regression"], cls_t, box_t, neg_to_pos_ratio=3.0)
    for k in ("bbox_regression", "classification"):
        torch.testing.assert_close(got[k], expected[k], rtol=1e-6, atol=1e-6)


def test_hard_negatives_are_three_per_positive_and_the_hardest() -> None:
    g = torch.Generator().manual_seed(0)
    loss = torch.rand(2, 100, generator=g)
    fg = torch.zeros(2, 100, dtype=torch.bool)
    fg[0, [3, 50, 70]] = True  # 3 positives -> 9 negatives; image 1 has none -> 0 negatives
    mask = hard_negative_mask(loss, fg, 3.0)
    assert mask[0].sum() == 9 and mask[1].sum() == 0
    assert not (mask & fg).any()
    neg = loss[0].masked_fill(fg[0], -1)
    assert set(mask[0].nonzero().squeeze(1).tolist()) == set(neg.topk(9).indices.tolist())
    assert hard_negative_mask(loss, fg, 1.0)[0].sum() == 3


def test_no_objects_anywhere_gives_zero_loss() -> None:
    logits, reg = torch.randn(2, 50, 5), torch.randn(2, 50, 4)
    losses = multibox_loss(logits, reg, torch.zeros(2, 50, dtype=torch.int64), torch.zeros(2, 50, 4))
    assert losses["classification"] == 0 and losses["bbox_regression"] == 0


def test_focal_loss_numbers_and_gradient() -> None:
    anchors, targets, head = _problem(3)
    cls_t, box_t, _ = _our_targets(anchors, targets)
    logits = head["cls_logits"].requires_grad_()
    got = focal_multibox_loss(logits, head["bbox_regression"], cls_t, box_t, alpha=0.25, gamma=2.0)
    num_fg = int((cls_t > 0).sum())
    one_hot = torch.nn.functional.one_hot(cls_t, NUM_CLASSES)[..., 1:].float()
    expected = sigmoid_focal_loss(logits[..., 1:], one_hot, 0.25, 2.0, reduction="sum") / num_fg
    torch.testing.assert_close(got["classification"], expected)
    reference = multibox_loss(head["cls_logits"], head["bbox_regression"], cls_t, box_t)
    torch.testing.assert_close(got["bbox_regression"], reference["bbox_regression"])
    got["classification"].backward()
    assert logits.grad[..., 0].abs().sum() == 0  # background column unused
    assert logits.grad[..., 1:].abs().sum() > 0
