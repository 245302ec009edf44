"""LR-ASPP (MobileNetV3 paper §6.4): torchvision parity, every backbone, paper pooling, MAdds."""

from __future__ import annotations

import io
import warnings

import pytest
import torch
from torch import nn
from torchvision.models.segmentation import lraspp_mobilenet_v3_large as tv_lraspp

from mobiledense.backbones import count_madds, count_params, list_backbones
import mobiledense.heads as heads
from mobiledense.heads import (
    create_model,
    create_segmenter,
    list_models,
    lraspp_from_torchvision,
    lraspp_mobilenet_v3_large,
    lraspp_mobilenet_v3_small,
)
from mobiledense.heads.lraspp import PAPER_POOL_STRIDE, PAPER_TRAIN_CROP, LargeKernelAvgPool, LRASPPHead
from mobiledense.heads.segmenter import IMAGENET_MEAN, IMAGENET_STD, Segmenter


def _randomize_bn(model: nn.Module) -> None:
    """Non-trivial BN statistics, so that a wrong layer order or tap cannot hide."""
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.2, 0.2)


def _tv_normalize(x: torch.Tensor) -> torch.Tensor:
    mean, std = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return (x - mean) / std


@pytest.fixture(scope="module")
def tv_and_ours() -> tuple[nn.Module, Segmenter]:
    torch.manual_seed(0)
    tv = tv_lraspp(weights=None, weights_backbone=None, num_classes=19).eval()
    _randomize_bn(tv)
    ours = lraspp_mobilenet_v3_large(num_classes=19).eval()
    ours.load_state_dict(lraspp_from_torchvision(tv.state_dict()))  # strict: every key maps
    return tv, ours


@pytest.mark.parametrize("size", [(128, 160), (97, 131)])
def test_matches_torchvision(tv_and_ours, size: tuple[int, int]) -> None:
    """Same weights, same output as stock torchvision (low branch = first stride-8 block)."""
    tv, ours = tv_and_ours
    x = torch.rand(2, 3, *size)
    with torch.no_grad():
        expected, got = tv(_tv_normalize(x))["out"], ours(x)
    assert got.shape == (2, 19, *size)
    assert expected.abs().max() > 0.1
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)


def test_low_tap_deepest_reads_the_last_stride8_block(tv_and_ours) -> None:
    """``low_tap="deepest"`` equals torchvision with its low tap moved to features[6]."""
    tv, _ = tv_and_ours
    ours = create_segmenter("mobilenet_v3_large", 19, low_tap="deepest").eval()
    ours.load_state_dict(lraspp_from_torchvision(tv.state_dict()))
    x = torch.rand(1, 3, 97, 131)
    tv_layers = dict(tv.backbone.return_layers)
    try:
        tv.backbone.return_layers = {"6": "low", "16": "high"}
        with torch.no_grad():
            expected, got = tv(_tv_normalize(x))["out"], ours(x)
    finally:
        tv.backbone.return_layers = tv_layers
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)
    with pytest.raises(ValueError, match="low_tap"):
        create_segmenter("mobilenet_v3_large", 19, low_tap="middle")


def test_param_count_equals_torchvision() -> None:
    tv = tv_lraspp(weights=None, weights_backbone=None, num_classes=19)
    assert count_params(lraspp_mobilenet_v3_large(19)) == count_params(tv)


def test_torchvision_mapping_refuses_unknown_keys() -> None:
    with pytest.raises(KeyError, match="aux"):
        lraspp_from_torchvision({"aux_classifier.0.weight": torch.zeros(1)})


@pytest.mark.parametrize("name", list_backbones())
def test_every_backbone_trains_at_odd_size(name: str) -> None:
    torch.manual_seed(0)
    model = create_segmenter(name, num_classes=5)
    head, bb = model.decoder, model.backbone
    assert head.low_stride == 8 and head.high_stride == max(bb.channels)
    assert head.high_stride == (16 if 16 in bb.supported_output_strides else 32)
    x = torch.rand(2, 3, 97, 131, requires_grad=True)
    out = model(x)
    assert out.shape == (2, 5, 97, 131)
    out.logsumexp(1).mean().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert not missing, f"{name}: parameters without gradient: {missing[:5]}"


def test_named_factories_cover_the_registry() -> None:
    assert list_models("seg") == sorted(f"lraspp_{n}" for n in list_backbones())
    for name in list_models("seg"):
        assert callable(getattr(heads, name))
    model = create_model("lraspp_mobilenet_v3_small", num_classes=3)
    assert model.num_classes == 3 and model.decoder.high_classifier.out_channels == 3
    with pytest.raises(KeyError, match="unknown segmenter 'lraspp_resnet50'; valid names: .*lraspp_mobilenet_v3_large"):
        create_model("lraspp_resnet50", task="seg")
    with pytest.raises(KeyError, match="mobilenet_v3_large"):
        create_segmenter("resnet50")


def test_backbone_is_built_once_from_the_registry_entry(monkeypatch) -> None:
    """The output stride comes from the entry and the low tap is ``taps={8: "first"}``: one build, no probe."""
    from mobiledense.backbones import BACKBONES

    calls = []
    entry = BACKBONES["mobilenet_v3_small"]

    def counting(**kwargs):
        calls.append(kwargs)
        return entry.factory(**kwargs)

    monkeypatch.setitem(BACKBONES, "mobilenet_v3_small", type(entry)(entry.name, counting, entry.paper,
                                                                     family=entry.family))
    model = create_segmenter("mobilenet_v3_small", 3, width_mult=0.75)
    assert calls == [{"output_stride": 16, "taps": {8: "first"}, "width_mult": 0.75}]
    assert model.backbone.taps[8] == "first" and model.backbone.output_stride == 16
    calls.clear()
    create_segmenter("mobilenet_v3_small", 3, low_tap="deepest")
    assert calls == [{"output_stride": 16}]


def test_an_option_the_backbone_lacks_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="mobilenet_v2 has no option 'reduced_tail'; its options: width_mult"):
        create_segmenter("mobilenet_v2", 3, reduced_tail=True)
    with pytest.raises(ValueError, match=r"squeezenet1_1 supports output_stride in \(16,\), got 32"):
        create_segmenter("squeezenet1_1", 3, output_stride=32)


def test_reduced_tail_and_width() -> None:
    """Table 7's RF2 halves the last stage: the high branch reads 480 channels."""
    rf2 = lraspp_mobilenet_v3_large(reduced_tail=True)
    assert rf2.decoder.cbr[0].in_channels == 480 and rf2.decoder.scale[1].in_channels == 480
    assert rf2.backbone.output_stride == 16
    slim = lraspp_mobilenet_v3_small(width_mult=0.75, inter_channels=64)
    assert slim.decoder.cbr[0].out_channels == 64
    assert slim.decoder.low_classifier.in_channels == slim.backbone.channels[8]


def test_output_stride_8_is_refused() -> None:
    with pytest.raises(ValueError, match="feats\\[8\\] and a deeper feature"):
        create_segmenter("mobilenet_v3_small", output_stride=8)


def test_output_stride_32_reads_stride_32() -> None:
    model = create_segmenter("mobilenet_v3_small", num_classes=4, output_stride=32).eval()
    assert model.decoder.high_stride == 32
    with torch.no_grad():
        assert model(torch.rand(1, 3, 97, 131)).shape == (1, 4, 97, 131)


def test_bad_input_is_a_clear_error() -> None:
    model = lraspp_mobilenet_v3_small().eval()
    with pytest.raises(ValueError, match="4-D.*unsqueeze"):
        model(torch.rand(3, 64, 64))
    with pytest.raises(ValueError, match="3 input channels"):
        model(torch.rand(1, 1, 64, 64))
    with pytest.raises(TypeError, match="float"):
        model(torch.zeros(1, 3, 64, 64, dtype=torch.uint8))


def test_normalize_flag() -> None:
    torch.manual_seed(0)
    a = lraspp_mobilenet_v3_small(num_classes=3).eval()
    b = lraspp_mobilenet_v3_small(num_classes=3, normalize=False).eval()
    b.load_state_dict(a.state_dict())
    assert not any(k.startswith("normalize.") for k in a.state_dict())  # buffers not persistent
    x = torch.rand(1, 3, 64, 96)
    with torch.no_grad():
        torch.testing.assert_close(a(x), b(_tv_normalize(x)))


# ----------------------------------------------------------------------- paper pooling


def test_large_kernel_pool_is_a_valid_average_pool() -> None:
    pool = LargeKernelAvgPool((49, 49), PAPER_POOL_STRIDE)
    x = torch.randn(1, 2, 64, 128)  # the stride-16 map of a 1024x2048 frame
    y = pool(x)
    assert y.shape == (1, 2, 1, 4)  # Fig. 10: 49x49 window, stride (16, 20)
    for j in range(4):
        torch.testing.assert_close(y[..., 0, j], x[..., :49, 20 * j:20 * j + 49].mean((-2, -1)))
    small = torch.randn(1, 2, 9, 30)  # smaller than the kernel: clamps to the map, i.e. global
    torch.testing.assert_close(pool(small)[..., 0, :], small[..., :, :30].mean((-2, -1)).unsqueeze(-1))


def test_paper_kernel_from_training_crop() -> None:
    model = lraspp_mobilenet_v3_small(pool="paper")
    assert model.decoder.scale[0].kernel == (49, 49)  # ceil(769 / 16), Fig. 10
    assert model.decoder.scale[0].stride == PAPER_POOL_STRIDE
    model = lraspp_mobilenet_v3_small(pool="paper", train_crop=(512, 1024))
    assert model.decoder.scale[0].kernel == (32, 64)


def test_paper_pool_is_global_at_the_training_crop() -> None:
    """At the default 769x769 crop the window covers the whole map: same output as pool='global'."""
    torch.manual_seed(0)
    glob = lraspp_mobilenet_v3_small(num_classes=4).eval()
    paper = lraspp_mobilenet_v3_small(num_classes=4, pool="paper").eval()
    paper.load_state_dict(glob.state_dict())  # both modes share every weight
    x = torch.rand(1, 3, *PAPER_TRAIN_CROP)
    with torch.no_grad():
        torch.testing.assert_close(paper(x), glob(x), atol=1e-5, rtol=1e-5)


def test_paper_pool_is_local_beyond_the_crop() -> None:
    torch.manual_seed(0)
    kw = dict(low_stride=8, high_stride=16)
    glob = LRASPPHead(8, 16, 3, 8, **kw).eval()
    paper = LRASPPHead(8, 16, 3, 8, pool="paper", pool_kernel=(4, 4), pool_stride=(4, 4), **kw).eval()
    paper.load_state_dict(glob.state_dict())
    high = torch.randn(1, 16, 8, 16)
    high[..., 8:] += 3.0  # right half differs: a local gate must differ from the global one
    feats = {8: torch.randn(1, 8, 16, 32), 16: high}
    with torch.no_grad():
        assert paper.scale(high).shape == (1, 8, 2, 4)
        out_p, out_g = paper(feats), glob(feats)
    assert out_p.shape == out_g.shape == (1, 3, 16, 32)
    assert not torch.allclose(out_p, out_g, atol=1e-3)


@pytest.mark.parametrize("size", [(97, 131), (256, 512)])
def test_paper_pool_trains_at_other_sizes(size: tuple[int, int]) -> None:
    model = lraspp_mobilenet_v3_small(num_classes=3, pool="paper", train_crop=(65, 65))
    x = torch.rand(2, 3, *size)
    out = model(x)
    assert out.shape == (2, 3, *size)
    out.mean().backward()
    assert model.decoder.scale[1].weight.grad is not None


def test_bad_pool_is_refused() -> None:
    with pytest.raises(ValueError, match="'global' or 'paper'"):
        lraspp_mobilenet_v3_small(pool="max")


def test_paper_pool_exports_to_onnx() -> None:
    ort = pytest.importorskip("onnxruntime")
    model = lraspp_mobilenet_v3_small(num_classes=3, pool="paper", train_crop=(65, 65),
                                      pool_stride=(2, 2)).eval()
    x = torch.rand(1, 3, 128, 192)
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (x,), buf, dynamo=False, opset_version=17,
                          input_names=["image"], output_names=["logits"])
    got = ort.InferenceSession(buf.getvalue()).run(None, {"image": x.numpy()})[0]
    with torch.no_grad():
        torch.testing.assert_close(torch.from_numpy(got), model(x), atol=1e-4, rtol=1e-4)


# ----------------------------------------------------------------------- checkpoints


def test_loads_torchvision_and_own_checkpoints(tmp_path, tv_and_ours) -> None:
    tv, ours = tv_and_ours
    torch.save(tv.state_dict(), tmp_path / "tv.pth")
    torch.save({"model": ours.state_dict()}, tmp_path / "ours.pth")
    for path in ("tv.pth", "ours.pth"):
        loaded = lraspp_mobilenet_v3_large(weights=str(tmp_path / path))
        for k, v in ours.state_dict().items():
            torch.testing.assert_close(loaded.state_dict()[k], v, msg=f"{path}: {k}")


def test_weights_backbone(tmp_path) -> None:
    from mobiledense.backbones import create_backbone

    bb = create_backbone("mobilenet_v3_small")
    torch.save(bb.state_dict(), tmp_path / "bb.pth")
    model = lraspp_mobilenet_v3_small(weights_backbone=str(tmp_path / "bb.pth"))
    for k, v in bb.state_dict().items():
        torch.testing.assert_close(model.backbone.state_dict()[k], v)
    with pytest.raises(ValueError, match="unknown option 'backbone_weights'"):  # one name: torchvision's
        lraspp_mobilenet_v3_small(backbone_weights=str(tmp_path / "bb.pth"))


# ----------------------------------------------------------------------- cost (Table 7)


def test_decoder_madds_match_the_formula() -> None:
    c_low, c_high, inter, k = 40, 960, 128, 19
    head = LRASPPHead(c_low, c_high, k, inter)
    feats = {8: torch.randn(1, c_low, 16, 24), 16: torch.randn(1, c_high, 8, 12)}
    expected = 8 * 12 * c_high * inter + c_high * inter + 16 * 24 * (c_low + inter) * k
    assert count_madds(head, feats) == expected


def test_madds_are_linear_in_pixels_and_match_table7() -> None:
    """MAdds = a + b * pixels (per-image terms: SE and gate FCs); fitted on two small inputs,
    checked on a third, extrapolated to 1024x2048: V3-Large RF2 with 128 channels is within
    3% of Table 7's 9.74B (we count 9.92B; see README for the differences)."""
    model = lraspp_mobilenet_v3_large(reduced_tail=True)
    sizes = [(64, 128), (128, 256), (192, 384)]
    m = [count_madds(model, torch.rand(1, 3, h, w)) for h, w in sizes]
    p = [h * w for h, w in sizes]
    b = (m[1] - m[0]) / (p[1] - p[0])
    a = m[0] - b * p[0]
    assert a > 0 and abs(a + b * p[2] - m[2]) / m[2] < 1e-6
    at_paper_size = a + b * 1024 * 2048
    assert abs(at_paper_size / 9.74e9 - 1) < 0.03, at_paper_size
