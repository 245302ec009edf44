"""Golden test: our SSDLite equals torchvision's ssdlite320_mobilenet_v3_large with the same weights."""

from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn

from mobiledense.heads import from_torchvision_ssdlite, ssdlite320_mobilenet_v3_large


def _randomise(model: nn.Module) -> None:
    """Make eval outputs depend on the input and be far from uniform.

    torchvision's N(0, 0.03) init makes the random network's features nearly
    constant (every anchor of a level gets the same score, ties everywhere), so
    convs get He init and BN statistics / class logits are spread.
    """
    g = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            fan_out = m.out_channels * m.kernel_size[0] * m.kernel_size[1] // m.groups
            m.weight.data.normal_(0, (2.0 / fan_out) ** 0.5, generator=g)
        elif isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(m.num_features, generator=g) * 0.1)
    for block in model.head.classification_head.module_list:
        block[1].weight.data.normal_(0, 0.03, generator=g)
        block[1].bias.data.normal_(0, 0.5, generator=g)
    for block in model.head.regression_head.module_list:
        block[1].weight.data.normal_(0, 0.01, generator=g)


@pytest.fixture(scope="module")
def pair():
    torch.manual_seed(0)
    tv = torchvision.models.detection.ssdlite320_mobilenet_v3_large(weights=None, weights_backbone=None)
    with torch.no_grad():
        _randomise(tv)
    ours = ssdlite320_mobilenet_v3_large(num_classes=91, reduced_tail=True)  # torchvision's no-pretrain default
    ours.load_state_dict(from_torchvision_ssdlite(tv.state_dict()))
    return tv, ours


def _images() -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(2)
    return [torch.rand(3, h, w, generator=g) for h, w in [(320, 320), (240, 427), (500, 375)]]


def _sorted(det: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    key = det["labels"].double() * 10 + det["scores"].double()  # scores < 1: by label, then score
    order = key.argsort(descending=True)
    return {k: v[order] for k, v in det.items()}


def test_same_parameter_count_and_keys(pair) -> None:
    tv, ours = pair
    assert sum(p.numel() for p in ours.parameters()) == sum(p.numel() for p in tv.parameters()) == 3_440_060
    assert len(ours.state_dict()) == len(tv.state_dict())


@pytest.mark.parametrize("score_thresh", [0.001, 0.05])
def test_same_detections(pair, score_thresh: float) -> None:
    tv, ours = pair
    tv.eval().score_thresh = score_thresh
    ours.eval().score_thresh = score_thresh
    images = _images()
    with torch.no_grad():
        expected, got = tv(images), ours(images)
    for e, o, im in zip(expected, got, images):
        assert len(e["boxes"]) > 20, "test is vacuous: too few detections"
        assert e["labels"].unique().numel() > 5, "test is vacuous: one class dominates"
        e, o = _sorted(e), _sorted(o)
        assert torch.equal(e["labels"], o["labels"])
        torch.testing.assert_close(o["scores"], e["scores"], atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(o["boxes"], e["boxes"], atol=1e-4, rtol=1e-4)
        assert o["boxes"][:, 2].max() <= im.shape[2] + 1e-3 and o["boxes"][:, 3].max() <= im.shape[1] + 1e-3


def test_same_detections_batched_tensor_input(pair) -> None:
    tv, ours = pair
    tv.eval().score_thresh = ours.eval().score_thresh = 0.05
    batch = torch.rand(2, 3, 256, 384, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        expected, got = tv(list(batch)), ours(batch)
    for e, o in zip(expected, got):
        e, o = _sorted(e), _sorted(o)
        assert torch.equal(e["labels"], o["labels"])
        torch.testing.assert_close(o["boxes"], e["boxes"], atol=1e-4, rtol=1e-4)


def test_same_training_losses(pair) -> None:
    tv, ours = pair
    tv.train(), ours.train()
    images = _images()
    targets = [
        {"boxes": torch.tensor([[10.0, 20.0, 200.0, 180.0], [150.0, 30.0, 310.0, 300.0]]),
         "labels": torch.tensor([1, 18])},
        {"boxes": torch.tensor([[0.0, 0.0, 420.0, 239.0], [5.0, 5.0, 40.0, 30.0], [100.0, 100.0, 160.0, 200.0]]),
         "labels": torch.tensor([3, 90, 3])},
        {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)},  # no objects
    ]
    expected = tv(images, targets)
    got = ours(images, targets)
    assert set(got) == set(expected) == {"bbox_regression", "classification"}
    for k in expected:
        torch.testing.assert_close(got[k], expected[k], atol=1e-5, rtol=1e-5)
        assert got[k] > 0
    # Same gradients on the head (loss -> head weights) up to float noise.
    (expected["bbox_regression"] + expected["classification"]).backward()
    (got["bbox_regression"] + got["classification"]).backward()
    g_tv = tv.head.classification_head.module_list[0][1].weight.grad
    g_ours = ours.head.classification_head.module_list[0][1].weight.grad
    torch.testing.assert_close(g_ours, g_tv, atol=1e-5, rtol=1e-4)
