"""Contract over the whole registry: declared channels/strides equal real outputs."""

from __future__ import annotations

import pytest
import torch

from mobiledense.backbones import BACKBONES, Backbone, create_backbone, create_classifier, list_backbones

CASES = [
    (name, os_)
    for name in list_backbones()
    for os_ in BACKBONES[name].factory().supported_output_strides
]


@pytest.mark.parametrize("name,output_stride", CASES)
def test_declared_channels_and_strides_match_outputs(name: str, output_stride: int) -> None:
    torch.manual_seed(0)
    model = create_backbone(name, output_stride=output_stride) if output_stride != 32 \
        else create_backbone(name)
    assert isinstance(model, Backbone)
    x = torch.randn(2, 3, 128, 160, requires_grad=True)
    feats = model(x)
    assert set(feats) == set(model.channels), f"{name}: keys {sorted(feats)} != declared {model.strides}"
    assert max(feats) == min(output_stride, max(model.channels))
    for stride, f in feats.items():
        assert f.shape[0] == 2 and f.shape[1] == model.channels[stride], (name, stride, f.shape)
        assert f.shape[-2:] == (128 // stride, 160 // stride), (name, stride, f.shape)
        assert torch.isfinite(f).all()
    sum(f.float().mean() for f in feats.values()).backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad), \
        f"{name}: some parameters are not reached by any returned feature"


@pytest.mark.parametrize("name", list_backbones())
def test_odd_input_size(name: str) -> None:
    model = create_backbone(name).eval()
    with torch.no_grad():
        feats = model(torch.randn(1, 3, 321, 479))
    for stride, f in feats.items():
        # Each map covers the input: ceil or floor of size/stride (conv padding conventions differ).
        for got, size in zip(f.shape[-2:], (321, 479)):
            assert size // stride - 1 <= got <= -(-size // stride) + 1, (name, stride, f.shape)


@pytest.mark.parametrize("name", list_backbones())
def test_bad_input_is_a_clear_error(name: str) -> None:
    model = create_backbone(name).eval()
    with pytest.raises(ValueError, match="4-D"):
        model(torch.randn(3, 64, 64))
    with pytest.raises(ValueError, match="input channels"):
        model(torch.randn(1, 1, 64, 64))
    with pytest.raises(ValueError, match="at least"):
        model(torch.randn(1, 3, 8, 8))


@pytest.mark.parametrize("name", list_backbones())
def test_classifier_head(name: str) -> None:
    model = create_classifier(name, num_classes=10).eval()
    with torch.no_grad():
        assert model(torch.randn(2, 3, 224, 224)).shape == (2, 10)


def test_unknown_name_lists_valid_ones() -> None:
    with pytest.raises(KeyError, match="mobilenet_v3_large"):
        create_backbone("resnet50")


def test_registry_refuses_duplicates() -> None:
    from mobiledense.backbones import register_backbone

    with pytest.raises(KeyError, match="already registered"):
        register_backbone("mobilenet_v3_large", paper="x")(lambda **kw: None)


def test_unsupported_output_stride_is_refused() -> None:
    for name in list_backbones():
        supported = BACKBONES[name].factory().supported_output_strides
        if 4 not in supported:
            with pytest.raises(ValueError, match="output_stride"):
                create_backbone(name, output_stride=4)
