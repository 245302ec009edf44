"""MobileNetV1/V2/V3: golden tests against torchvision, paper budgets, taps, widths, weights files."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import pytest
import torch
import torchvision
from torch import nn
from torchvision.models.detection.ssdlite import _mobilenet_extractor

from mobiledense.backbones import (
    count_madds,
    count_params,
    create_backbone,
    create_classifier,
    load_state_dict_file,
)


def _randomize_bn(model: nn.Module, seed: int = 0) -> nn.Module:
    """Random BatchNorm affine params, then running stats calibrated on random images.

    With trained-like statistics every layer sees O(1) inputs and wide affine
    params (gamma up to 2.5) drive activations past ReLU6's clip and h-swish's knees,
    so a wrong activation or a mis-mapped BN buffer changes the logits by far
    more than the test tolerance (the default init leaves logits near 1e-9).
    """
    g = torch.Generator().manual_seed(seed)
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    momenta = [m.momentum for m in bns]
    for m in bns:
        m.weight.data.copy_(torch.rand(m.num_features, generator=g) * 2 + 0.5)
        m.bias.data.copy_(torch.randn(m.num_features, generator=g))
        m.reset_running_stats()
        m.momentum = None  # cumulative average over the calibration batch
    model.train()
    with torch.no_grad():
        model(torch.randn(8, 3, 64, 64, generator=g))
    for m, momentum in zip(bns, momenta):
        m.momentum = momentum
    return model.eval()


def _torchvision_file(tmp_path: Path, builder: str, **kwargs) -> tuple[nn.Module, Path]:
    """A randomly initialised torchvision model (eval mode) and its state_dict saved to a file."""
    torch.manual_seed(0)
    tv = _randomize_bn(getattr(torchvision.models, builder)(weights=None, **kwargs)).eval()
    path = tmp_path / f"{builder}.pth"
    torch.save(tv.state_dict(), path)
    return tv, path


def _deployed_params(model: nn.Module) -> int:
    """Parameters once BatchNorm is folded into the preceding conv (how the papers count).

    TF-slim's MobileNetV2 reference lists 3.47M parameters, which is torchvision's
    3,504,872 minus its 34,112 BatchNorm scales and shifts (3,470,760); with BN
    counted the model sits 3.1% above the paper's 3.4M (Table 4).
    """
    bn = sum(p.numel() for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)
             for p in m.parameters())
    return count_params(model) - bn


# --------------------------------------------------------------------------- torchvision golden tests

EQUIVALENT = [
    ("mobilenet_v2", {}),
    ("mobilenet_v2", {"width_mult": 0.5}),
    ("mobilenet_v3_large", {}),
    ("mobilenet_v3_small", {}),
    ("mobilenet_v3_large", {"width_mult": 0.75, "reduced_tail": True}),
]


@pytest.mark.parametrize("name,kwargs", EQUIVALENT, ids=lambda v: str(v) if isinstance(v, dict) else v)
def test_torchvision_classifier_checkpoint_gives_identical_logits(tmp_path, name, kwargs) -> None:
    tv, path = _torchvision_file(tmp_path, name, num_classes=10, **kwargs)
    ours = create_classifier(name, num_classes=10, weights=path, **kwargs).eval()
    x = torch.randn(2, 3, 96, 128)
    with torch.no_grad():
        expected, got = tv(x), ours(x)
    assert expected.abs().max() > 0.1  # logits of O(1): atol 1e-5 is a real check
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize("name", ["mobilenet_v3_large", "mobilenet_v3_small"])
def test_dilated_backbone_matches_torchvision_dilated(tmp_path, name) -> None:
    tv, path = _torchvision_file(tmp_path, name, dilated=True)
    ours = create_backbone(name, output_stride=16, weights=path).eval()
    x = torch.randn(1, 3, 96, 128)
    with torch.no_grad():
        expected, got = tv.features(x), ours(x)[16]
    assert got.shape == expected.shape == (1, ours.channels[16], 6, 8)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)


def test_v2_backbone_from_torchvision_checkpoint(tmp_path) -> None:
    tv, path = _torchvision_file(tmp_path, "mobilenet_v2")
    ours = create_backbone("mobilenet_v2", weights=path).eval()
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        torch.testing.assert_close(ours(x)[32], tv.features(x), atol=1e-5, rtol=0)


# --------------------------------------------------------------------------- paper budgets


PAPER = [
    # name, kwargs, params, MAdds at 224x224, where
    ("mobilenet_v3_large", {}, 5.4e6, 219e6, "V3 Table 3"),
    ("mobilenet_v3_small", {}, 2.5e6, 56e6, "V3 Table 3"),
    ("mobilenet_v2", {}, 3.4e6, 300e6, "V2 Table 4"),
    ("mobilenet_v1", {}, 4.2e6, 569e6, "V1 Table 8"),
]


@pytest.mark.parametrize("name,kwargs,params,madds,where", PAPER, ids=[p[0] for p in PAPER])
def test_params_and_madds_match_paper(name, kwargs, params, madds, where) -> None:
    model = create_classifier(name, **kwargs)
    got_p = _deployed_params(model)
    got_m = count_madds(model, torch.randn(1, 3, 224, 224))
    msg = (f"{name} {kwargs}: measured {got_p / 1e6:.3f}M params (BN folded; "
           f"{count_params(model) / 1e6:.3f}M with BN), {got_m / 1e6:.1f}M MAdds; "
           f"paper ({where}): {params / 1e6}M / {madds / 1e6:.0f}M")
    assert got_p == pytest.approx(params, rel=0.03), msg
    assert got_m == pytest.approx(madds, rel=0.03), msg


@pytest.mark.parametrize("width,params,madds", [(0.75, 2.6e6, 325e6), (0.5, 1.3e6, 149e6),
                                                (0.25, 0.5e6, 41e6)])
def test_v1_width_multiplier_budgets_match_table6(width, params, madds) -> None:
    model = create_classifier("mobilenet_v1", width_mult=width)
    got_p = _deployed_params(model)
    got_m = count_madds(model, torch.randn(1, 3, 224, 224))
    msg = (f"width {width}: {got_p / 1e6:.3f}M params, {got_m / 1e6:.1f}M MAdds; "
           f"Table 6: {params / 1e6}M / {madds / 1e6:.0f}M")
    # Table 6 prints params with one decimal: allow that rounding.
    assert got_p == pytest.approx(params, abs=0.05e6), msg
    assert got_m == pytest.approx(madds, rel=0.03), msg


# --------------------------------------------------------------------------- taps (SSDLite C4, LR-ASPP low)


@pytest.mark.parametrize("name,expansion", [("mobilenet_v2", 576), ("mobilenet_v3_large", 672),
                                            ("mobilenet_v3_small", 288)])
def test_expansion_tap_channels_strides_and_values(tmp_path, name, expansion) -> None:
    tv, path = _torchvision_file(tmp_path, name)
    tapped = create_backbone(name, taps={16: "expansion"}, weights=path).eval()
    plain = create_backbone(name, weights=path).eval()
    assert tapped.channels[16] == expansion
    assert tapped.taps == {2: "deepest", 4: "deepest", 8: "deepest", 16: "expansion", 32: "deepest"}
    assert {s: c for s, c in tapped.channels.items() if s != 16} == \
        {s: c for s, c in plain.channels.items() if s != 16}
    x = torch.randn(1, 3, 96, 128)
    with torch.no_grad():
        feats, ref = tapped(x), plain(x)
        # Golden: where torchvision's SSDLite cuts the network (C4 = expansion of the last strided block).
        if name == "mobilenet_v2":
            c4 = [i for i, b in enumerate(tv.features) if getattr(b, "_is_cn", False)][-1]
            golden = tv.features[c4].conv[0](tv.features[:c4](x))
        else:
            golden = _mobilenet_extractor(tv, 6, nn.BatchNorm2d).eval()(x)["0"]
    assert feats[16].shape == (1, expansion, 6, 8)
    torch.testing.assert_close(feats[16], golden, atol=1e-5, rtol=0)
    for s in (2, 4, 8, 32):
        torch.testing.assert_close(feats[s], ref[s], atol=0, rtol=0)


@pytest.mark.parametrize("name", ["mobilenet_v2", "mobilenet_v3_large", "mobilenet_v3_small"])
def test_expansion_tap_refused_when_dilated(name) -> None:
    # At output_stride=16 the block that would take the net to 32 is dilated: no expansion to read.
    with pytest.raises(ValueError, match="dilated.*needs output_stride=32 or more"):
        create_backbone(name, taps={16: "expansion"}, output_stride=16)
    with pytest.raises(ValueError, match="dilated.*needs output_stride=16 or more"):
        create_backbone(name, taps={8: "expansion"}, output_stride=8)
    create_backbone(name, taps={8: "expansion"}, output_stride=16)  # the 8 -> 16 block is still strided


def test_expansion_tap_refused_where_the_block_has_no_expansion() -> None:
    # V3-Small's first bneck (Table 2: 16 -> 16, stride 2) has no 1x1 expansion.
    with pytest.raises(ValueError, match=r"taps=\{2: 'expansion'\}: layer 1 .*expansion"):
        create_backbone("mobilenet_v3_small", taps={2: "expansion"})


@pytest.mark.parametrize("name", ["mobilenet_v2", "mobilenet_v3_large"])
def test_unknown_tap_kind_and_stride_are_refused(name) -> None:
    message = f"{name} supports taps ('deepest', 'first', 'expansion'), got 'c4' at stride 16"
    with pytest.raises(ValueError, match=re.escape(message)):
        create_backbone(name, taps={16: "c4"})
    with pytest.raises(ValueError, match=r"no layers at strides \[64\]; strides are \[2, 4, 8, 16, 32\]"):
        create_backbone(name, taps={64: "first"})
    with pytest.raises(ValueError, match="taps must map strides to kinds"):
        create_backbone(name, taps="expansion")
    # The old single-purpose option is gone: one way to choose taps.
    with pytest.raises(ValueError, match=f"{name} has no option 'tap'; its options: .*taps"):
        create_backbone(name, tap="expansion")


def test_first_tap_is_torchvision_lraspp_low_branch(tmp_path) -> None:
    """``taps={8: "first"}`` = the first stride-8 block's output: torchvision's LR-ASPP "low" (features[4])."""
    tv, path = _torchvision_file(tmp_path, "mobilenet_v3_large")
    first = create_backbone("mobilenet_v3_large", taps={8: "first"}, weights=path).eval()
    deepest = create_backbone("mobilenet_v3_large", weights=path).eval()
    assert first.channels == deepest.channels  # 40 channels either way: same stage
    x = torch.randn(1, 3, 96, 128)
    with torch.no_grad():
        got, ref = first(x), deepest(x)
        torch.testing.assert_close(got[8], tv.features[:5](x), atol=1e-5, rtol=0)
        torch.testing.assert_close(ref[8], tv.features[:7](x), atol=1e-5, rtol=0)
    assert not torch.equal(got[8], ref[8])
    for s in (2, 4, 16, 32):
        torch.testing.assert_close(got[s], ref[s], atol=0, rtol=0)


def test_unknown_option_names_the_valid_ones() -> None:
    with pytest.raises(ValueError, match="mobilenet_v2 has no option 'reduced_tail'; its options: "
                                         "width_mult, norm_layer, dropout, stem_stride, output_stride, taps"):
        create_backbone("mobilenet_v2", reduced_tail=True)
    with pytest.raises(ValueError, match="mobilenet_v1 has no option 'reduced_tail'"):
        create_classifier("mobilenet_v1", reduced_tail=True)


@pytest.mark.parametrize("name", ["mobilenet_v1", "mobilenet_v2", "mobilenet_v3_large", "mobilenet_v3_small"])
def test_stem_stride_1_halves_every_stride_with_the_same_weights(name: str) -> None:
    """The CIFAR adaptation: the stem conv at stride 1, so a 32x32 image keeps a 2x2 deepest map."""
    small, full = create_backbone(name, stem_stride=1).eval(), create_backbone(name).eval()
    assert small.channels == {s // 2: c for s, c in full.channels.items()}
    assert small.features[0][0].stride == (1, 1) and full.features[0][0].stride == (2, 2)
    small.load_state_dict(full.state_dict())  # same tensors: a CIFAR backbone initialises an ImageNet-sized one
    x = torch.rand(1, 3, 32, 32)
    with torch.no_grad():
        feats = small(x)
        assert {s: tuple(f.shape[-2:]) for s, f in feats.items()} == {s: (32 // s, 32 // s) for s in small.channels}
        dense = small.features[0](x)  # the stem at stride 1 is the stride-2 stem sampled at every pixel
        torch.testing.assert_close(dense[..., ::2, ::2], full.features[0](x))
    assert small.min_size == 16
    with pytest.raises(ValueError, match="stem_stride must be 2 .* or 1 .*got 4"):
        create_backbone(name, stem_stride=4)
    with pytest.raises(ValueError, match="has no option 'stem_stride'"):
        create_backbone("shufflenet_v2_x1_0", stem_stride=1)


# --------------------------------------------------------------------------- widths and dilation


@pytest.mark.parametrize("name,kwargs,channels", [
    ("mobilenet_v1", {}, {2: 64, 4: 128, 8: 256, 16: 512, 32: 1024}),
    ("mobilenet_v1", {"width_mult": 0.5}, {2: 32, 4: 64, 8: 128, 16: 256, 32: 512}),
    ("mobilenet_v1", {"width_mult": 0.25}, {2: 16, 4: 32, 8: 64, 16: 128, 32: 256}),
    ("mobilenet_v2", {}, {2: 16, 4: 24, 8: 32, 16: 96, 32: 1280}),
    # Below 1 the last conv keeps 1280 channels; above 1 it is scaled too (V2 §6.1).
    ("mobilenet_v2", {"width_mult": 0.5}, {2: 8, 4: 16, 8: 16, 16: 48, 32: 1280}),
    ("mobilenet_v2", {"width_mult": 1.4}, {2: 24, 4: 32, 8: 48, 16: 136, 32: 1792}),
    ("mobilenet_v3_large", {"width_mult": 0.75}, {2: 16, 4: 24, 8: 32, 16: 88, 32: 720}),
])
def test_width_multiplier_channels(name, kwargs, channels) -> None:
    model = create_backbone(name, **kwargs).eval()
    assert model.channels == channels
    with torch.no_grad():
        feats = model(torch.randn(1, 3, 64, 64))
    assert {s: f.shape[1] for s, f in feats.items()} == channels


@pytest.mark.parametrize("name", ["mobilenet_v1", "mobilenet_v2"])
@pytest.mark.parametrize("output_stride", [16, 8])
def test_dilation_reuses_weights_and_keeps_early_features(name, output_stride) -> None:
    torch.manual_seed(0)
    base = _randomize_bn(create_backbone(name)).eval()
    dilated = create_backbone(name, output_stride=output_stride)
    dilated.load_state_dict(base.state_dict())  # same parameters, only strides/dilations change
    dilated.eval()
    dw = [m for m in dilated.modules() if isinstance(m, nn.Conv2d) and m.groups > 1]
    assert max(m.dilation[0] for m in dw) == 32 // output_stride
    assert all(m.stride[0] == 1 for m in dw if m.dilation[0] > 1)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        a, b = base(x), dilated(x)
    assert max(b) == output_stride and b[output_stride].shape[-2:] == (64 // output_stride,) * 2
    for s in range(1, 6):
        if 2 ** s < output_stride:
            torch.testing.assert_close(b[2 ** s], a[2 ** s], atol=0, rtol=0)


def test_invalid_width_is_refused() -> None:
    for name in ("mobilenet_v1", "mobilenet_v2"):
        with pytest.raises(ValueError, match="width_mult"):
            create_backbone(name, width_mult=0)


# --------------------------------------------------------------------------- weights files


class _Exploit:
    """Pickles to a call of ``print``: weights_only=True must refuse to run it."""

    def __reduce__(self):
        return (print, ("PWNED: pickled code ran",))


@pytest.mark.parametrize("payload", [
    {"model": {"w": torch.zeros(1)}, "args": argparse.Namespace(lr=0.1)},  # old-style training checkpoint
    {"w": torch.zeros(1), "x": _Exploit()},
], ids=["namespace", "code"])
def test_pickled_objects_are_refused(tmp_path, capsys, payload) -> None:
    path = tmp_path / "unsafe.pth"
    torch.save(payload, path)
    with pytest.raises(ValueError, match=re.escape(str(path)) + ".*pickled objects are refused"):
        create_classifier("mobilenet_v2", weights=path)
    assert "PWNED" not in capsys.readouterr().out


def test_non_tensor_values_are_refused(tmp_path) -> None:
    path = tmp_path / "notweights.pth"
    torch.save({"epoch": 3, "lr": 0.1}, path)
    with pytest.raises(ValueError, match="state_dict of tensors"):
        load_state_dict_file(path)


def test_missing_file_names_the_path(tmp_path) -> None:
    path = tmp_path / "nope" / "mobilenet_v1.pth"
    for build in (create_classifier, create_backbone):
        with pytest.raises(FileNotFoundError, match=re.escape(str(path))):
            build("mobilenet_v1", weights=path)


def test_own_checkpoint_round_trip(tmp_path) -> None:
    """V1 has no torchvision twin: our classifier checkpoint (also nested under "model") reloads exactly."""
    torch.manual_seed(0)
    model = _randomize_bn(create_classifier("mobilenet_v1", num_classes=10, width_mult=0.25)).eval()
    path = tmp_path / "ckpt.pth"
    torch.save({"model": model.state_dict(), "epoch": torch.tensor(7)}, path)
    again = create_classifier("mobilenet_v1", num_classes=10, width_mult=0.25, weights=path).eval()
    backbone = create_backbone("mobilenet_v1", width_mult=0.25, weights=path).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(again(x), model(x), atol=0, rtol=0)
        torch.testing.assert_close(backbone(x)[32], model.backbone(x)[32], atol=0, rtol=0)
