"""ShuffleNet V1/V2, SqueezeNet, Xception: golden tests, paper budgets, channel shuffle, dilation."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch
import torchvision
from torch import nn
from torchvision.models.shufflenetv2 import channel_shuffle as tv_channel_shuffle

from mobiledense.backbones import (
    ImageClassifier,
    count_madds,
    count_params,
    create_backbone,
    create_classifier,
)
from mobiledense.backbones.shufflenet import ChannelShuffle, ShuffleNetV1, ShuffleNetV2, channel_shuffle


def _calibrate_bn(model: nn.Module, seed: int = 0) -> nn.Module:
    """Random BN affine + running statistics measured on a random batch, then eval mode.

    Measured statistics keep activations O(1) through deep stacks (Xception has 36
    BN layers), so a wrong layer changes the output by O(1), far above the tolerance;
    random affine parameters make a mis-mapped BN key visible too.
    """
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.reset_running_stats()
            m.momentum = None  # cumulative average: exactly the batch statistics
            m.weight.data.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(m.num_features, generator=g) * 0.1)
    model.train()
    with torch.no_grad():
        model(torch.randn(2, 3, 96, 96, generator=g))
    return model.eval()


def _assert_same(got: torch.Tensor, expected: torch.Tensor, atol: float = 1e-5) -> None:
    assert expected.std() > 0.1, f"reference output too flat to compare (std {expected.std():.2e})"
    torch.testing.assert_close(got, expected, atol=atol, rtol=0)


def _saved(tmp_path: Path, model: nn.Module, name: str) -> Path:
    path = tmp_path / f"{name}.pth"
    torch.save(model.state_dict(), path)
    return path


def _torchvision_file(tmp_path: Path, builder: str) -> tuple[nn.Module, Path]:
    """A randomly initialised torchvision classifier (eval mode) and its state_dict file."""
    torch.manual_seed(0)
    tv = _calibrate_bn(getattr(torchvision.models, builder)(weights=None)).eval()
    return tv, _saved(tmp_path, tv, builder)


# --------------------------------------------------------------------------- channel shuffle


def test_channel_shuffle_interleaves_groups() -> None:
    x = torch.arange(6.0).view(1, 6, 1, 1)
    # V1 Fig. 1c: channels (g, n) -> (n, g): one channel from each group in turn.
    assert channel_shuffle(x, 2).flatten().tolist() == [0, 3, 1, 4, 2, 5]
    assert channel_shuffle(x, 3).flatten().tolist() == [0, 2, 4, 1, 3, 5]
    y = torch.randn(2, 12, 3, 5)
    for g in (2, 3, 4):
        torch.testing.assert_close(channel_shuffle(y, g), tv_channel_shuffle(y, g), atol=0, rtol=0)
        # Shuffling with g then with the group size n is the identity (transpose twice).
        torch.testing.assert_close(channel_shuffle(channel_shuffle(y, g), 12 // g), y, atol=0, rtol=0)
    assert "groups=3" in repr(ChannelShuffle(3))


def test_shufflenet_exports_to_onnx_with_dynamic_size(tmp_path) -> None:
    ort = pytest.importorskip("onnxruntime")
    model = create_classifier("shufflenet_v2_x0_5", num_classes=10).eval()
    path = tmp_path / "shufflenet.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (torch.randn(1, 3, 64, 64),), str(path), dynamo=False,
                          input_names=["x"], output_names=["logits"],
                          dynamic_axes={"x": {0: "n", 2: "h", 3: "w"}})
    x = torch.randn(2, 3, 96, 128)  # another size than the traced one: shapes are not baked in
    got = ort.InferenceSession(str(path)).run(None, {"x": x.numpy()})[0]
    with torch.no_grad():
        torch.testing.assert_close(torch.from_numpy(got), model(x), atol=1e-4, rtol=1e-4)


# --------------------------------------------------------------------------- golden tests


EQUIVALENT = [
    ("shufflenet_v2_x0_5", {}),
    ("shufflenet_v2_x1_0", {}),
    ("shufflenet_v2_x1_5", {}),
    ("shufflenet_v2_x2_0", {}),
    # torchvision's SqueezeNet is the Caffe release: unpadded conv1, ceil-mode pools.
    ("squeezenet1_0", {"padding": "caffe"}),
    ("squeezenet1_1", {"padding": "caffe"}),
]


@pytest.mark.parametrize("name,kwargs", EQUIVALENT, ids=[e[0] for e in EQUIVALENT])
def test_torchvision_classifier_checkpoint_gives_identical_logits(tmp_path, name, kwargs) -> None:
    tv, path = _torchvision_file(tmp_path, name)
    ours = create_classifier(name, weights=path, **kwargs).eval()
    x = torch.randn(2, 3, 96, 128)
    with torch.no_grad():
        expected, got = tv(x), ours(x)
    assert got.shape == (2, 1000)
    _assert_same(got, expected)


def test_shufflenet_v2_taps_are_torchvision_modules(tmp_path) -> None:
    tv, path = _torchvision_file(tmp_path, "shufflenet_v2_x1_0")
    ours = create_backbone("shufflenet_v2_x1_0", weights=path).eval()
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        feats, y, golden = ours(x), x, {}
        for stride, module in zip((2, 4, 8, 16, 0, 32), ("conv1", "maxpool", "stage2", "stage3",
                                                         "stage4", "conv5")):
            y = getattr(tv, module)(y)
            golden[stride] = y
    assert ours.channels == {2: 24, 4: 24, 8: 116, 16: 232, 32: 1024}
    for stride in (2, 4, 8, 16, 32):
        _assert_same(feats[stride], golden[stride])


def test_squeezenet_taps_and_padding_modes(tmp_path) -> None:
    tv, path = _torchvision_file(tmp_path, "squeezenet1_1")
    caffe = create_backbone("squeezenet1_1", weights=path, padding="caffe").eval()
    same = create_backbone("squeezenet1_1", weights=path).eval()  # same weights, padded layout
    assert caffe.channels == same.channels == {2: 64, 4: 128, 8: 256, 16: 512}
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        _assert_same(caffe(x)[16], tv.features(x))
        sizes = {s: tuple(f.shape[-2:]) for s, f in same(x).items()}
    # Paper Table 1 / Caffe give 111-55-27-13; "same" padding gives exact strides.
    assert sizes == {2: (112, 112), 4: (56, 56), 8: (28, 28), 16: (14, 14)}
    with pytest.raises(ValueError, match="output_stride"):
        create_backbone("squeezenet1_1", output_stride=32)
    with pytest.raises(ValueError, match="'same' or 'caffe'"):
        create_backbone("squeezenet1_0", padding="valid")


def test_xception_matches_keras_port_in_timm(tmp_path) -> None:
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    ref = _calibrate_bn(timm.create_model("legacy_xception", pretrained=False, num_classes=10)).eval()
    path = _saved(tmp_path, ref, "legacy_xception")
    ours = create_classifier("xception", num_classes=10, weights=path, padding="valid").eval()
    x = torch.randn(1, 3, 71, 71)  # Keras' smallest input
    with torch.no_grad():
        _assert_same(ours(x), ref(x), atol=1e-4)


# --------------------------------------------------------------------------- paper budgets


def _measure(name: str, **kwargs) -> tuple[int, int]:
    model = create_classifier(name, **kwargs)
    return count_params(model), count_madds(model, torch.randn(1, 3, 224, 224))


BUDGETS = [
    # name, kwargs, params, MAdds at 224, source. Params include BN scales/shifts, as the
    # authors' code counts (torchvision: 2,278,604 for ShuffleNetV2 1x).
    ("shufflenet_v2_x0_5", {}, 1.4e6, 41e6, "V2 Table 5"),
    ("shufflenet_v2_x1_0", {}, 2.3e6, 146e6, "V2 Table 5"),
    ("shufflenet_v2_x1_5", {}, 3.5e6, 299e6, "V2 Table 5"),
    ("shufflenet_v2_x2_0", {}, 7.4e6, 591e6, "V2 Table 5"),
    # V1 params are not in the paper; the authors' release (megvii-model/ShuffleNet-Series
    # README) lists 1.9M/138M (g3), 2.4M/138M (g8), 0.7M/38M (0.5x g3), 1.0M/40M (0.5x g8).
    ("shufflenet_v1_g3", {}, 1.9e6, 138e6, "ShuffleNet-Series README"),
    ("shufflenet_v1_g8", {}, 2.4e6, 138e6, "ShuffleNet-Series README"),
    ("shufflenet_v1_g3", {"width_mult": 0.5}, 0.7e6, 38e6, "ShuffleNet-Series README"),
    ("shufflenet_v1_g8", {"width_mult": 0.5}, 1.0e6, 40e6, "ShuffleNet-Series README"),
    # SqueezeNet 1.1: "1.2M / ~350M": torchvision lists 1,235,496 params and 0.349 GMACs for
    # the Caffe layout (ours: 349.2M); "same" padding has 14x14 maps instead of 13x13 (~387M).
    ("squeezenet1_1", {"padding": "caffe"}, 1.235e6, 350e6, "torchvision SqueezeNet1_1_Weights"),
]


@pytest.mark.parametrize("name,kwargs,params,madds,source", BUDGETS,
                         ids=[f"{b[0]}{'-' + str(b[1]) if b[1] else ''}" for b in BUDGETS])
def test_params_and_madds_match_reference(name, kwargs, params, madds, source) -> None:
    got_p, got_m = _measure(name, **kwargs)
    msg = (f"{name} {kwargs}: measured {got_p / 1e6:.3f}M params, {got_m / 1e6:.1f}M MAdds; "
           f"{source}: {params / 1e6}M / {madds / 1e6:.0f}M")
    assert got_p == pytest.approx(params, rel=0.03), msg
    assert got_m == pytest.approx(madds, rel=0.03), msg


@pytest.mark.parametrize("groups,madds", [(1, 143e6), (2, 140e6), (3, 137e6), (4, 133e6), (8, 137e6)])
def test_shufflenet_v1_complexity_matches_table1(groups, madds) -> None:
    """V1 Table 1, "Complexity" row at 1x (MFLOPs = multiply-adds), one column per group number."""
    got = count_madds(ImageClassifier(ShuffleNetV1(groups)), torch.randn(1, 3, 224, 224))
    msg = f"g={groups}: {got / 1e6:.1f}M MAdds vs Table 1 {madds / 1e6:.0f}M"
    assert got == pytest.approx(madds, rel=0.03), msg


def test_squeezenet_reference_counts() -> None:
    p10, m10 = _measure("squeezenet1_0", padding="caffe")
    p11, m11 = _measure("squeezenet1_1", padding="caffe")
    assert p10 == 1_248_424  # paper Table 1, "# parameter before pruning" total
    meta = torchvision.models.SqueezeNet1_1_Weights.IMAGENET1K_V1.meta
    assert p11 == meta["num_params"]
    assert m11 == pytest.approx(meta["_ops"] * 1e9, rel=0.01)
    # v1.1 changelog: "2.4x less computation than SqueezeNet v1.0".
    assert m10 / m11 == pytest.approx(2.4, rel=0.03)


def test_xception_params_match_table3() -> None:
    # Table 3: 22,855,952 parameters (BN scales/shifts included, as Keras' trainable count).
    assert count_params(create_classifier("xception")) == 22_855_952


# --------------------------------------------------------------------------- architecture details


def test_shufflenet_v1_first_pointwise_of_stage2_is_not_grouped() -> None:
    model = create_backbone("shufflenet_v1_g3")
    assert model.channels == {2: 24, 4: 24, 8: 240, 16: 480, 32: 960}
    first = model.stage2[0].branch
    assert first[0].groups == 1 and isinstance(first[3], nn.Identity)  # §3.3
    for unit in (model.stage2[1], model.stage3[0], model.stage4[3]):
        assert unit.branch[0].groups == 3 and isinstance(unit.branch[3], ChannelShuffle)
    assert all(u.branch[-2].groups == 3 for s in (model.stage2, model.stage3) for u in s)
    # Stride-2 units concatenate the pooled input: branch outputs 240 - 24 channels.
    assert model.stage2[0].branch[-2].out_channels == 216


def test_width_and_group_errors_name_the_valid_values() -> None:
    with pytest.raises(ValueError, match=r"\(0.5, 1.0, 1.5, 2.0\)"):
        ShuffleNetV2(width_mult=0.75)
    with pytest.raises(ValueError, match=r"groups must be one of \(1, 2, 3, 4, 8\)"):
        ShuffleNetV1(groups=5)
    with pytest.raises(ValueError, match="width_mult must be positive"):
        create_backbone("shufflenet_v1_g8", width_mult=0)


# --------------------------------------------------------------------------- dilation


def _dilations(model: nn.Module, prefix: str) -> set[tuple[int, int]]:
    return {(m.stride[0], m.dilation[0]) for n, m in model.named_modules()
            if n.startswith(prefix) and isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3)}


@pytest.mark.parametrize("name", ["shufflenet_v2_x0_5", "shufflenet_v1_g3"])
def test_shufflenet_dilation_keeps_resolution_and_weights(name) -> None:
    ref = create_backbone(name)
    os8 = create_backbone(name, output_stride=8)
    assert _dilations(os8, "stage2") == {(2, 1), (1, 1)}
    assert _dilations(os8, "stage3") == {(1, 2)} and _dilations(os8, "stage4") == {(1, 4)}
    # Same parameters at every output stride: a checkpoint trained at 32 loads at 8.
    os8.load_state_dict(ref.state_dict())
    for os_ in (16, 8):
        model = create_backbone(name, output_stride=os_).eval()
        with torch.no_grad():
            feats = model(torch.randn(1, 3, 64, 96))
        assert max(feats) == os_
        assert feats[os_].shape == (1, ref.out_channels, 64 // os_, 96 // os_)


def test_xception_dilation_is_exact_atrous_conversion() -> None:
    """Removing a stride and dilating what follows (DeepLab) samples the same function densely:
    the stride-32 map is every 2nd (4th) pixel of the output_stride 16 (8) map."""
    torch.manual_seed(0)
    ref = _calibrate_bn(create_backbone("xception")).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        coarse = ref(x)[32]
        for os_ in (16, 8):
            model = create_backbone("xception", output_stride=os_).eval()
            model.load_state_dict(ref.state_dict())
            dense = model(x)[os_]
            step = 32 // os_
            assert dense.shape == (1, 2048, 64 // os_, 64 // os_)
            _assert_same(dense[..., ::step, ::step], coarse, atol=1e-4)
