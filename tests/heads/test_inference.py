"""Speed paths give the plain computation's outputs: fused/channels-last models, post-processing, matching."""

from __future__ import annotations

import copy
import io
import pickle
import zlib
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.detection._utils import BoxCoder as TVBoxCoder
from torchvision.models.detection.ssd import SSD
from torchvision.ops import batched_nms, box_iou

from mobiledense.backbones import create_classifier
from mobiledense.heads import (
    BoxCoder,
    FusedConv2d,
    InferenceOnlyError,
    batched_nms_topn,
    fold_batchnorm,
    optimize_for_inference,
    select_detections,
    ssdlite320_mobilenet_v3_large,
)
from mobiledense.heads import postprocess as postprocess_module
from mobiledense.heads.inference import (
    NATIVE_1X1_MAX_NUMEL,
    ONEDNN_1X1_MIN_MACS,
    PACKED_SHAPES_KEPT,
    onednn_available,
)
from mobiledense.heads import lraspp_mobilenet_v3_large
from mobiledense.tools.benchmark import calibrate_, compare_detections


def _bn_count(model: nn.Module) -> int:
    return sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())


# --------------------------------------------------------------------------- fused models


@pytest.fixture(scope="module")
def detector() -> nn.Module:
    torch.manual_seed(0)
    model = ssdlite320_mobilenet_v3_large(num_classes=11, size=192)
    x = torch.rand(4, 3, 192, 192, generator=torch.Generator().manual_seed(1)) * 2 - 1  # as normalised
    calibrate_(model, lambda m: m.head_outputs(x))
    for block in model.head.classification_head.module_list:  # a trained-like background logit
        block[1].bias.data.view(-1, 11)[:, 0] += 4.0
    return model.eval()


def test_detector_fused_equals_unfused(detector) -> None:
    fast = optimize_for_inference(detector)
    assert fast.folded_batchnorms == _bn_count(detector) and _bn_count(fast) == 0
    assert fast.fused_activations > 50
    g = torch.Generator().manual_seed(2)
    batch = torch.rand(2, 3, 192, 192, generator=g) * 2 - 1
    images = [torch.rand(3, 150, 200, generator=g), torch.rand(3, 240, 180, generator=g)]
    with torch.no_grad():
        (b0, s0), (b1, s1) = detector.dense_predictions(batch), fast.dense_predictions(batch)
        assert s0.std() > 0.01, "vacuous: flat scores"
        # float32 rounding differences, grown through ~25 random layers; a wrong fusion is O(0.1).
        torch.testing.assert_close(s1, s0, atol=1e-4, rtol=1e-3)
        torch.testing.assert_close(b1, b0, atol=1e-2, rtol=1e-4)
        check = compare_detections(detector(images), fast(images))
    assert check["passed"] and check["detections"] > 50, check


def test_segmenter_fused_equals_unfused() -> None:
    torch.manual_seed(0)
    model = lraspp_mobilenet_v3_large(num_classes=5)
    calibrate_(model, lambda m: m(torch.rand(4, 3, 128, 160)))
    fast = optimize_for_inference(model)
    assert _bn_count(fast) == 0
    x = torch.rand(2, 3, 80, 112)
    with torch.no_grad():
        expected, got = model(x), fast(x)
    assert expected.abs().max() > 1.0
    torch.testing.assert_close(got, expected, atol=2e-4, rtol=1e-4)
    assert got.is_contiguous(memory_format=torch.channels_last)  # documented: NHWC layout, same values


# Xception: BN after SeparableConv2d's pointwise and `self.skipbn(self.skip(x))`; SqueezeNet: no BN.
@pytest.mark.parametrize("name,kwargs", [("mobilenet_v2", {}), ("shufflenet_v2_x0_5", {}),
                                         ("xception", {}), ("squeezenet1_1", {}), ("mobilenet_v1", {})])
def test_classifier_fused_equals_unfused(name: str, kwargs: dict) -> None:
    torch.manual_seed(0)
    model = create_classifier(name, num_classes=10, **kwargs)
    calibrate_(model, lambda m: m(torch.randn(4, 3, 96, 96)))
    fast = optimize_for_inference(model, example_inputs=(torch.zeros(1, 3, 96, 96),))
    assert fast.folded_batchnorms == _bn_count(model) and _bn_count(fast) == 0
    x = torch.randn(2, 3, 96, 128)
    with torch.no_grad():
        expected, got = model(x), fast(x)
    assert expected.std() > 0.1
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)


def test_original_model_is_untouched_and_copy_is_eval_only(detector) -> None:
    detector.train()
    before = {k: v.clone() for k, v in detector.state_dict().items()}
    fast = optimize_for_inference(detector)
    assert detector.training and _bn_count(detector) > 0
    assert all(torch.equal(before[k], v) for k, v in detector.state_dict().items())
    assert not fast.training and not any(p.requires_grad for p in fast.parameters())
    assert fast.size == detector.size and fast.num_classes == detector.num_classes
    image = [torch.rand(3, 64, 64)]
    fast.train()
    with pytest.raises(InferenceOnlyError, match="optimize_for_inference"):
        fast(image, [{"boxes": torch.tensor([[0.0, 0.0, 9.0, 9.0]]), "labels": torch.tensor([1])}])
    with torch.no_grad():
        assert len(fast.eval()(image)) == 1
    copy = pickle.loads(pickle.dumps(fast))  # still a plain, picklable module (e.g. for workers)
    with torch.no_grad():
        torch.testing.assert_close(copy(image)[0]["scores"], fast(image)[0]["scores"])
    detector.eval()


class _ReluBeforeBN(nn.Module):
    """conv -> in-place ReLU -> BN: the BN does NOT read the conv output, it must stay."""

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.bn = nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4)
        self.shared = nn.Conv2d(4, 4, 1)
        self.bn2 = nn.BatchNorm2d(4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.bn(torch.relu_(self.conv(x)))
        return self.bn2(self.shared(x)) + self.shared(x)  # a conv called twice must not be folded


def test_fold_skips_what_is_not_conv_then_bn() -> None:
    torch.manual_seed(0)
    model = _ReluBeforeBN()
    calibrate_(model, lambda m: m(torch.randn(2, 3, 8, 8)))
    folded = optimize_for_inference(model, example_inputs=(torch.zeros(1, 3, 8, 8),))
    assert folded.folded_batchnorms == 0 and _bn_count(folded) == 2
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(folded(x), model(x), atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="eval"):
        fold_batchnorm(model.train())


@pytest.fixture(params=[1, 2], ids=["1-thread", "2-threads"])
def threads(request):  # noqa: ANN001, ANN201
    before = torch.get_num_threads()
    torch.set_num_threads(request.param)
    yield request.param
    torch.set_num_threads(before)


@pytest.mark.skipif(not onednn_available(), reason="oneDNN fused convolution kernel not available")
@pytest.mark.parametrize("n,cin,cout,k,groups,hw,act", [
    (2, 64, 128, 1, 1, 24, nn.Hardswish()),  # large 1x1: oneDNN
    (2, 8, 8, 1, 1, 4, nn.ReLU()),  # small 1x1, batch 2: PyTorch's path on one thread only
    (1, 120, 32, 1, 1, 1, nn.ReLU()),  # an SE block's 1x1 on a 1x1 map: PyTorch's path
    (1, 80, 96, 1, 1, 20, None),  # batch 1, above PyTorch's native cut-off: oneDNN on 2 threads
    (2, 32, 32, 3, 32, 10, nn.ReLU6()),  # depthwise
    (2, 16, 24, 3, 1, 9, nn.Hardsigmoid()),
    (1, 24, 48, 1, 3, 8, nn.ReLU()),  # grouped 1x1 (ShuffleNetV1)
])
def test_fused_conv_paths_agree(n: int, cin: int, cout: int, k: int, groups: int, hw: int, act: nn.Module | None,
                                threads: int) -> None:
    torch.manual_seed(0)
    conv = nn.Conv2d(cin, cout, k, padding=k // 2, groups=groups)
    fused = FusedConv2d(conv, act, channels_last=True)
    x = torch.randn(n, cin, hw, hw)
    with torch.no_grad():
        expected = conv(x) if act is None else act(conv(x))
        torch.testing.assert_close(fused(x), expected, atol=1e-4, rtol=1e-4)
        uses_onednn = fused._onednn(x.contiguous(memory_format=torch.channels_last))
    if k != 1:
        assert uses_onednn
    elif threads == 1:
        assert uses_onednn == (n * hw * hw * cin * cout // groups >= ONEDNN_1X1_MIN_MACS)
    else:
        assert uses_onednn == (n > 1 or groups > 1 or x.numel() > NATIVE_1X1_MAX_NUMEL)
    assert bool(fused._packed) == uses_onednn  # oneDNN calls use prepacked weights
    # Autograd falls back to the plain path: gradients flow.
    xg = x.clone().requires_grad_(True)
    fused(xg).sum().backward()
    assert xg.grad is not None and xg.grad.abs().sum() > 0


@pytest.mark.skipif(not onednn_available(), reason="oneDNN fused convolution kernel not available")
def test_prepacked_weights_follow_the_weight_and_the_input_shape() -> None:
    torch.manual_seed(0)
    fused = FusedConv2d(nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), channels_last=True)
    with torch.no_grad():
        for hw in range(6, 6 + PACKED_SHAPES_KEPT + 2):  # more shapes than kept: the oldest is dropped
            x = torch.randn(1, 16, hw, hw)
            torch.testing.assert_close(fused(x), F.relu(F.conv2d(x, fused.weight, fused.bias, padding=1)))
        assert len(fused._packed) == PACKED_SHAPES_KEPT and (1, 16, 6, 6) not in fused._packed
        fused.weight.mul_(0.5)  # a new weight must never run with the old packing
        torch.testing.assert_close(fused(x), F.relu(F.conv2d(x, fused.weight, fused.bias, padding=1)))
        assert list(fused._packed) == [tuple(x.shape)]
    twin = copy.deepcopy(fused)  # the MKLDNN cache is dropped, not copied (it cannot be)
    buffer = io.BytesIO()
    torch.save(fused, buffer)
    assert twin._packed == {} and buffer.tell() > 0
    with torch.no_grad():
        torch.testing.assert_close(twin(x), fused(x))


# --------------------------------------------------------------------------- post-processing


def _tv_postprocess(logits: torch.Tensor, reg: torch.Tensor, anchors: torch.Tensor, score_thresh: float,
                    topk: int, per_img: int) -> list[dict]:
    fake = SimpleNamespace(box_coder=TVBoxCoder((10.0, 10.0, 5.0, 5.0)), score_thresh=score_thresh,
                           topk_candidates=topk, nms_thresh=0.55, detections_per_img=per_img)
    return SSD.postprocess_detections(fake, {"cls_logits": logits, "bbox_regression": reg},
                                      [anchors] * len(logits), [(320, 320)] * len(logits))


def _anchors(n: int, g: torch.Generator) -> torch.Tensor:
    xy = torch.rand(n, 2, generator=g) * 280
    return torch.cat([xy, xy + 8 + torch.rand(n, 2, generator=g) * 80], dim=1)


#: regime -> prefix sizes ``select_detections`` must try ("all": every candidate in one pass).
REGIMES = {"dense": [1200], "moderate": ["all"], "growth": [80, 320], "small_output": [80]}


@pytest.mark.parametrize("regime", list(REGIMES))
def test_select_detections_regimes_equal_torchvision(regime: str, monkeypatch) -> None:
    """Every path of the prefix algorithm (one pass, growth, all-valid stop) against torchvision."""
    tried = []
    best = postprocess_module._best_candidates

    def spy(scores, above, m, num_above):
        tried.append("all" if m == num_above else m)
        return best(scores, above, m, num_above)

    monkeypatch.setattr(postprocess_module, "_best_candidates", spy)
    g = torch.Generator().manual_seed(zlib.crc32(regime.encode()) % 1000)  # stable (hash() varies per process)
    a, k = 1500, 21
    anchors = _anchors(a, g)
    logits = torch.randn(1, a, k, generator=g) * 1.5
    topk, per_img, thresh = 300, 300, 0.001
    if regime == "moderate":  # a few thousand candidates: sorted in one pass
        logits[..., 0] += 7.0
    elif regime == "growth":  # 2 classes, overlapping boxes: NMS leaves < per_img, the prefix grows
        anchors = torch.tensor([100.0, 100.0, 150.0, 150.0]) + torch.randn(a, 4, generator=g) * 4
        logits[..., 1:] -= 30.0
        logits[..., 3] += 31.0
        logits[..., 7] += 31.0
        topk, per_img = 100, 20
    elif regime == "small_output":
        topk, per_img, thresh = 50, 20, 0.02
    reg = torch.randn(1, a, 4, generator=g) * 0.3
    expected = _tv_postprocess(logits, reg, anchors, thresh, topk, per_img)[0]
    scores = logits.softmax(-1)[0, :, 1:]
    boxes = BoxCoder().decode(reg[0], anchors).clamp(0, 320)
    got = select_detections(boxes, scores, thresh, topk, 0.55, per_img)
    assert len(expected["scores"]) > 2
    assert torch.equal(got["labels"], expected["labels"])
    torch.testing.assert_close(got["scores"], expected["scores"], rtol=0, atol=0)
    torch.testing.assert_close(got["boxes"], expected["boxes"], rtol=0, atol=1e-5)
    assert tried == REGIMES[regime]


def test_batched_nms_topn_equals_batched_nms() -> None:
    g = torch.Generator().manual_seed(5)
    boxes = _anchors(3000, g) - 40  # negative coordinates too: the class offsets must still separate
    scores, order = torch.rand(3000, generator=g).sort(descending=True)
    boxes, labels = boxes[order], torch.randint(0, 4, (3000,), generator=g)
    for max_keep in (5, 100, 3000):
        expected = batched_nms(boxes.double(), scores.double(), labels, 0.5)[:max_keep]
        assert torch.equal(batched_nms_topn(boxes, scores, labels, 0.5, max_keep), expected)
    assert batched_nms_topn(boxes[:0], scores[:0], labels[:0], 0.5, 10).shape == (0,)


# --------------------------------------------------------------------------- batched matching


def test_batched_match_equals_per_image_matching(detector) -> None:
    anchors = detector.anchor_generator([(12, 12), (6, 6), (3, 3), (2, 2), (1, 1), (1, 1)], (192, 192))
    g = torch.Generator().manual_seed(3)
    targets = []
    for n in (3, 0, 17, 1):
        xy = torch.rand(n, 2, generator=g) * 150
        targets.append({"boxes": torch.cat([xy, xy + 4 + torch.rand(n, 2, generator=g) * 90], 1),
                        "labels": torch.randint(1, 11, (n,), generator=g)})
    targets[2]["boxes"][5] = targets[2]["boxes"][4]  # two GTs with the same best anchor
    cls_t, box_t = detector.match(anchors, targets)
    for i, t in enumerate(targets):
        matches = detector.matcher(box_iou(t["boxes"], anchors))
        fg = matches >= 0
        assert torch.equal(cls_t[i][fg], t["labels"][matches[fg]]) and (cls_t[i][~fg] == 0).all()
        expected = detector.box_coder.encode(t["boxes"][matches[fg]], anchors[fg])
        assert torch.equal(box_t[i][fg], expected) and (box_t[i][~fg] == 0).all()
    assert (cls_t[1] == 0).all() and (cls_t > 0).sum() > 20
    empty = detector.match(anchors, [targets[1]])
    assert empty[0].shape == (1, len(anchors)) and not empty[0].any()
