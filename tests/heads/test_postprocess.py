"""Post-processing: equals torchvision's SSD.postprocess_detections; threshold / top-k / limit."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from torchvision.models.detection._utils import BoxCoder as TVBoxCoder
from torchvision.models.detection.ssd import SSD

from mobiledense.heads import BoxCoder, select_detections


def _boxes(n: int, g: torch.Generator) -> torch.Tensor:
    xy = torch.rand(n, 2, generator=g) * 250
    return torch.cat([xy, xy + 10 + torch.rand(n, 2, generator=g) * 60], dim=1)


@pytest.mark.parametrize("score_thresh,topk,per_img", [(0.001, 300, 300), (0.05, 20, 50), (0.2, 5, 7)])
def test_equal_to_torchvision(score_thresh: float, topk: int, per_img: int) -> None:
    g = torch.Generator().manual_seed(0)
    anchors = _boxes(500, g)
    head = {"cls_logits": torch.randn(2, 500, 6, generator=g) * 2,
            "bbox_regression": torch.randn(2, 500, 4, generator=g) * 0.5}
    fake = SimpleNamespace(box_coder=TVBoxCoder((10.0, 10.0, 5.0, 5.0)), score_thresh=score_thresh,
                           topk_candidates=topk, nms_thresh=0.55, detections_per_img=per_img)
    expected = SSD.postprocess_detections(fake, head, [anchors, anchors], [(320, 320), (320, 320)])
    scores = head["cls_logits"].softmax(-1)[..., 1:]
    boxes = BoxCoder().decode(head["bbox_regression"], anchors).clamp(0, 320)
    for i, e in enumerate(expected):
        got = select_detections(boxes[i], scores[i], score_thresh, topk, 0.55, per_img)
        assert len(e["scores"]) > 0
        assert torch.equal(got["labels"], e["labels"])  # both ordered by decreasing score
        torch.testing.assert_close(got["scores"], e["scores"], rtol=0, atol=0)
        torch.testing.assert_close(got["boxes"], e["boxes"], rtol=0, atol=1e-5)


def test_score_threshold_topk_and_limit() -> None:
    g = torch.Generator().manual_seed(1)
    boxes = torch.cat([torch.arange(40.0)[:, None] * 100, torch.zeros(40, 1)], 1).repeat(1, 2)
    boxes[:, 2:] += 50  # 40 disjoint boxes: NMS removes nothing
    scores = torch.rand(40, 3, generator=g)
    out = select_detections(boxes, scores, 0.5, 1000, 0.5, 1000)
    assert len(out["scores"]) == int((scores > 0.5).sum()) and (out["scores"] > 0.5).all()
    assert out["labels"].min() >= 1 and out["labels"].max() <= 3
    assert (out["scores"][:-1] >= out["scores"][1:]).all()
    out = select_detections(boxes, scores, 0.0, 4, 0.5, 1000)  # top 4 per class
    assert torch.bincount(out["labels"]).tolist() == [0, 4, 4, 4]
    assert torch.equal(out["scores"][out["labels"] == 2], scores[:, 1].topk(4).values)
    assert len(select_detections(boxes, scores, 0.0, 1000, 0.5, 10)["scores"]) == 10


def test_nms_is_per_class() -> None:
    boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0], [0.0, 0.0, 10.0, 10.5]])
    scores = torch.tensor([[0.9, 0.1], [0.8, 0.7]])
    out = select_detections(boxes, scores, 0.05, 10, 0.5, 10)
    # Same-class overlaps are suppressed (0.8 by 0.9, 0.1 by 0.7); across classes both stay.
    assert out["labels"].tolist() == [1, 2]
    torch.testing.assert_close(out["scores"], torch.tensor([0.9, 0.7]))
    torch.testing.assert_close(out["boxes"], boxes)


def test_nothing_above_threshold() -> None:
    out = select_detections(torch.zeros(5, 4), torch.full((5, 3), 0.01), 0.5, 10, 0.5, 10)
    assert out["boxes"].shape == (0, 4) and out["labels"].dtype == torch.int64
