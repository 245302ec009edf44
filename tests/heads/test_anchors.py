"""Default boxes equal torchvision's DefaultBoxGenerator; TF's reduced lowest layer."""

from __future__ import annotations

import math

import pytest
import torch
from torchvision.models.detection.anchor_utils import DefaultBoxGenerator
from torchvision.models.detection.image_list import ImageList

from mobiledense.heads import DefaultBoxes


def _grids(h: int, w: int) -> list[tuple[int, int]]:
    """SSDLite grids: strides 16 and 32, then four stride-2 3x3 convs (padding 1)."""
    grids = [(math.ceil(h / 16), math.ceil(w / 16)), (math.ceil(h / 32), math.ceil(w / 32))]
    for _ in range(4):
        gh, gw = grids[-1]
        grids.append(((gh - 1) // 2 + 1, (gw - 1) // 2 + 1))
    return grids


@pytest.mark.parametrize("size", [(320, 320), (512, 512), (640, 640), (320, 480)])
def test_equal_to_torchvision(size: tuple[int, int]) -> None:
    grids = _grids(*size)
    tv = DefaultBoxGenerator([[2, 3] for _ in range(6)], min_ratio=0.2, max_ratio=0.95)
    feats = [torch.zeros(1, 1, *g) for g in grids]
    expected = tv(ImageList(torch.zeros(2, 3, *size), [size, size]), feats)
    ours = DefaultBoxes()
    got = ours(grids, size)
    assert ours.scales == pytest.approx(tv.scales)
    assert ours.num_anchors_per_location() == tv.num_anchors_per_location() == [6] * 6
    assert got.shape == (sum(6 * gh * gw for gh, gw in grids), 4)
    torch.testing.assert_close(got, expected[0], rtol=0, atol=1e-5)


def test_scales_and_first_level_boxes() -> None:
    boxes = DefaultBoxes()
    assert boxes.scales == pytest.approx([0.2, 0.35, 0.5, 0.65, 0.8, 0.95, 1.0])
    # Level 0 at 320x320 with a 20x20 grid: the first location is centred at (8, 8).
    first = boxes([(20, 20)] + [(1, 1)] * 5, (320, 320))[:6]
    centres = (first[:, :2] + first[:, 2:]) / 2
    torch.testing.assert_close(centres, torch.full((6, 2), 8.0))
    wh = first[:, 2:] - first[:, :2]
    s, s1 = 0.2 * 320, math.sqrt(0.2 * 0.35) * 320
    r2, r3 = math.sqrt(2), math.sqrt(3)
    expected = torch.tensor([[s, s], [s1, s1], [s * r2, s / r2], [s / r2, s * r2], [s * r3, s / r3], [s / r3, s * r3]])
    torch.testing.assert_close(wh, expected.float())


def test_clip_limits_sizes_to_the_image() -> None:
    boxes = DefaultBoxes()
    wh = torch.cat(boxes.wh)
    assert wh.max() <= 1.0  # last level: 0.95 * sqrt(3) > 1 is clipped
    assert DefaultBoxes(clip=False).wh[-1].max() == pytest.approx(0.95 * math.sqrt(3))


def test_reduce_boxes_in_lowest_layer() -> None:
    boxes = DefaultBoxes(reduce_boxes_in_lowest_layer=True)
    assert boxes.num_anchors_per_location() == [3, 6, 6, 6, 6, 6]
    r = math.sqrt(2)
    torch.testing.assert_close(boxes.wh[0], torch.tensor([[0.1, 0.1], [0.2 * r, 0.2 / r], [0.2 / r, 0.2 * r]]))
    grids = _grids(320, 320)
    assert len(boxes(grids, (320, 320))) == 3 * 400 + 6 * (100 + 25 + 9 + 4 + 1)


def test_cache_follows_shape_and_dtype() -> None:
    boxes = DefaultBoxes()
    a = boxes(_grids(320, 320), (320, 320))
    assert boxes(_grids(320, 320), (320, 320)) is a
    b = boxes(_grids(512, 512), (512, 512))
    assert len(b) > len(a)
    assert boxes(_grids(320, 320), (320, 320), dtype=torch.float64).dtype == torch.float64


def test_level_count_mismatch_is_an_error() -> None:
    with pytest.raises(ValueError, match="6 levels but got 2"):
        DefaultBoxes()([(20, 20), (10, 10)], (320, 320))
    with pytest.raises(ValueError, match="min_ratio"):
        DefaultBoxes(min_ratio=0.9, max_ratio=0.2)
