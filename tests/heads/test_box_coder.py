"""Box coder: equal to torchvision's BoxCoder, exact round trip, batched decode."""

from __future__ import annotations

import math

import pytest
import torch
from torchvision.models.detection._utils import BoxCoder as TVBoxCoder

from mobiledense.heads import BoxCoder


def _boxes(n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(n, 2, generator=g) * 300
    wh = torch.rand(n, 2, generator=g) * 200 + 1
    return torch.cat([xy, xy + wh], dim=1)


def test_encode_decode_equal_torchvision() -> None:
    gt, anchors = _boxes(500, 0), _boxes(500, 1)
    ours, tv = BoxCoder((10.0, 10.0, 5.0, 5.0)), TVBoxCoder(weights=(10.0, 10.0, 5.0, 5.0))
    codes = ours.encode(gt, anchors)
    torch.testing.assert_close(codes, tv.encode_single(gt, anchors), rtol=0, atol=0)
    deltas = torch.randn(500, 4, generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(ours.decode(deltas, anchors), tv.decode_single(deltas, anchors), rtol=0, atol=0)


def test_round_trip() -> None:
    # Size ratios within the decode clamp (exp(log(1000/16)) = 62.5x).
    anchors = _boxes(200, 4)
    g = torch.Generator().manual_seed(3)
    centre = (anchors[:, :2] + anchors[:, 2:]) / 2 + torch.randn(200, 2, generator=g) * 20
    wh = (anchors[:, 2:] - anchors[:, :2]) * torch.empty(200, 2).uniform_(0.2, 5.0, generator=g)
    gt = torch.cat([centre - wh / 2, centre + wh / 2], dim=1)
    coder = BoxCoder()
    torch.testing.assert_close(coder.decode(coder.encode(gt, anchors), anchors), gt, rtol=1e-5, atol=1e-3)
    # Zero offsets decode to the anchors themselves.
    torch.testing.assert_close(coder.decode(torch.zeros(200, 4), anchors), anchors, rtol=1e-6, atol=1e-4)


def test_weights_scale_the_codes() -> None:
    gt, anchors = _boxes(50, 5), _boxes(50, 6)
    unit = BoxCoder((1.0, 1.0, 1.0, 1.0)).encode(gt, anchors)
    torch.testing.assert_close(BoxCoder().encode(gt, anchors), unit * torch.tensor([10.0, 10.0, 5.0, 5.0]))


def test_batched_decode_equals_per_image() -> None:
    anchors = _boxes(100, 7)
    deltas = torch.randn(3, 100, 4, generator=torch.Generator().manual_seed(8))
    coder = BoxCoder()
    batched = coder.decode(deltas, anchors)
    assert batched.shape == (3, 100, 4)
    for i in range(3):
        torch.testing.assert_close(batched[i], coder.decode(deltas[i], anchors), rtol=0, atol=0)


def test_size_offsets_are_clamped() -> None:
    anchors = torch.tensor([[0.0, 0.0, 10.0, 10.0]])
    huge = torch.tensor([[0.0, 0.0, 1e4, 1e4]])
    box = BoxCoder().decode(huge, anchors)[0]
    assert torch.isfinite(box).all()
    assert (box[2] - box[0]).item() == pytest.approx(10 * 1000 / 16, rel=1e-5)


def test_default_clip_is_torchvisions() -> None:
    assert BoxCoder().bbox_xform_clip == math.log(1000.0 / 16)
