"""SSD matcher: torchvision's SSDMatcher semantics, every GT matched, threshold boundary."""

from __future__ import annotations

import pytest
import torch
from torchvision.models.detection._utils import SSDMatcher as TVSSDMatcher

from mobiledense.heads import DefaultBoxes, SSDMatcher


@pytest.mark.parametrize("num_gt", [1, 3, 17])
def test_equal_to_torchvision(num_gt: int) -> None:
    g = torch.Generator().manual_seed(num_gt)
    iou = torch.rand(num_gt, 400, generator=g) ** 3  # mostly low, some above 0.5
    expected = TVSSDMatcher(0.5)(iou.clone())
    got = SSDMatcher(0.5)(iou.clone())
    assert torch.equal(got, expected)
    assert ((got >= 0) | (got == SSDMatcher.BACKGROUND)).all()


def test_every_ground_truth_gets_an_anchor() -> None:
    anchors = DefaultBoxes()([(20, 20), (10, 10), (5, 5), (3, 3), (2, 2), (1, 1)], (320, 320))
    gt = torch.tensor([[0.0, 0.0, 4.0, 4.0],          # far smaller than any default box
                       [100.0, 100.0, 103.0, 190.0],  # a thin sliver
                       [0.0, 0.0, 320.0, 320.0],
                       [150.0, 150.0, 170.0, 170.0]])
    matches = SSDMatcher(0.5).match_boxes(gt, anchors)
    assert set(matches[matches >= 0].tolist()) == {0, 1, 2, 3}
    # The two first boxes overlap nothing above 0.5: exactly their best anchor is matched.
    assert (matches == 0).sum() == 1 and (matches == 1).sum() == 1


def test_threshold_is_inclusive_and_below_is_background() -> None:
    iou = torch.tensor([[0.5, 0.49999, 0.9, 0.1]])
    matches = SSDMatcher(0.5)(iou)
    assert matches.tolist() == [0, -1, 0, -1]
    assert SSDMatcher(0.95)(iou).tolist() == [-1, -1, 0, -1]  # best anchor kept below threshold


def test_anchor_goes_to_the_best_ground_truth() -> None:
    iou = torch.tensor([[0.6, 0.7, 0.0], [0.8, 0.55, 0.0]])
    assert SSDMatcher(0.5)(iou).tolist() == [1, 0, -1]


def test_no_ground_truth_means_all_background() -> None:
    matches = SSDMatcher()(torch.zeros(0, 10))
    assert matches.tolist() == [-1] * 10 and matches.dtype == torch.int64


def test_bad_inputs() -> None:
    with pytest.raises(ValueError, match="num_gt, num_anchors"):
        SSDMatcher()(torch.zeros(10))
    with pytest.raises(ValueError, match="iou_thresh"):
        SSDMatcher(1.5)
