"""Contract over the whole registry: declared channels/strides/taps/options equal what models do."""

from __future__ import annotations

import inspect
import re

import pytest
import torch

from mobiledense.backbones import BACKBONES, Backbone, create_backbone, create_classifier, list_backbones
from mobiledense.backbones._base import TAP_KINDS, UNIVERSAL_OPTIONS


def _tap_cases(name: str) -> list[dict]:
    """One build per declared tap kind other than the default, at the native output stride."""
    entry = BACKBONES[name]
    native = max(entry.output_strides)
    where = {"first": 8, "expansion": native // 2}  # expansion: SSDLite's C4
    return [{"taps": {where[kind]: kind}} for kind in entry.taps if kind != "deepest"]


CASES = [
    (name, {"output_stride": os_} if os_ != 32 else {})
    for name in list_backbones()
    for os_ in BACKBONES[name].output_strides
] + [(name, kwargs) for name in list_backbones() for kwargs in _tap_cases(name)]


@pytest.mark.parametrize("name,kwargs", CASES, ids=lambda v: str(v) if isinstance(v, dict) else v)
def test_declared_channels_and_strides_match_outputs(name: str, kwargs: dict) -> None:
    torch.manual_seed(0)
    model = create_backbone(name, **kwargs)
    output_stride = kwargs.get("output_stride", max(BACKBONES[name].output_strides))
    assert isinstance(model, Backbone) and model.output_stride == output_stride
    assert all(model.taps[s] == kind for s, kind in kwargs.get("taps", {}).items())
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
        register_backbone("mobilenet_v3_large", paper="x", family=Backbone)(lambda **kw: None)


def test_unsupported_output_stride_is_refused() -> None:
    for name in list_backbones():
        supported = BACKBONES[name].output_strides
        if 4 not in supported:
            message = f"{name} supports output_stride in {supported}, got 4"
            with pytest.raises(ValueError, match=re.escape(message)):
                create_backbone(name, output_stride=4)


# --------------------------------------------------------------------------- declared capabilities


@pytest.mark.parametrize("name", list_backbones())
def test_entry_declares_what_the_family_accepts(name: str) -> None:
    """The entry's options/output strides/taps are the family's, and the factory takes each of them."""
    entry = BACKBONES[name]
    assert entry.output_strides == entry.family.supported_output_strides
    assert entry.taps == entry.family.supported_taps and "deepest" in entry.taps
    assert set(entry.taps) <= set(TAP_KINDS)
    params = inspect.signature(entry.family.__init__).parameters
    for option in entry.options + UNIVERSAL_OPTIONS:
        assert option in params, f"{name} declares {option!r}, which {entry.family.__name__} does not take"
        model = create_backbone(name, **{option: params[option].default})  # the factory passes it on
        assert type(model) is entry.family
    # Constructor parameters left out of ``options`` are fixed by the factory: refused by name.
    for param in set(params) - set(entry.options + UNIVERSAL_OPTIONS) - {"self"}:
        with pytest.raises(ValueError, match=f"{name} has no option {param!r}; its options: "):
            create_backbone(name, **{param: params[param].default})


@pytest.mark.parametrize("name", list_backbones())
def test_undeclared_taps_and_strides_are_refused(name: str) -> None:
    entry = BACKBONES[name]
    for kind in set(TAP_KINDS) - set(entry.taps):
        with pytest.raises(ValueError, match=re.escape(f"{name} supports taps {entry.taps}, got {kind!r}")):
            create_backbone(name, taps={8: kind})
    for os_ in {4, 8, 16, 32, 64} - set(entry.output_strides):
        with pytest.raises(ValueError, match=f"{name} supports output_stride"):
            create_backbone(name, output_stride=os_)
    with pytest.raises(ValueError, match=f"{name} has no option 'no_such_option'; its options: .*taps"):
        create_backbone(name, no_such_option=1)


def test_nothing_is_built_to_refuse_a_request(monkeypatch) -> None:
    """Validation reads the registry entry: the factory is never called for a refused request."""
    calls = []
    entry = BACKBONES["mobilenet_v2"]
    monkeypatch.setitem(BACKBONES, "mobilenet_v2", type(entry)(
        entry.name, lambda **kw: calls.append(kw), entry.paper, family=entry.family))
    for bad in ({"reduced_tail": True}, {"output_stride": 4}, {"taps": {16: "c4"}}):
        with pytest.raises(ValueError):
            create_backbone("mobilenet_v2", **bad)
    assert calls == []


@pytest.mark.parametrize("name", list_backbones())
def test_first_taps_are_the_first_layer_reaching_each_stride(name: str) -> None:
    """``taps={s: "first"}`` at every stride = the layers run by hand, stopped where the map first is 1/s."""
    torch.manual_seed(0)
    strides = create_backbone(name).strides
    model = create_backbone(name, taps={s: "first" for s in strides}).eval()
    x = torch.randn(1, 3, 64, 96)
    expected, y = {}, x
    with torch.no_grad():
        feats = model(x)
        for layer in model.feature_layers():
            y = layer(y)
            expected.setdefault(96 // y.shape[-1], y.clone())  # clone: a later in-place ReLU must not alter it
    assert set(feats) == set(strides)
    for s in strides:
        torch.testing.assert_close(feats[s], expected[s], atol=0, rtol=0, msg=f"{name} stride {s}")


def test_freeze_keeps_the_backbone_fixed_whatever_train_says() -> None:
    """``Backbone.freeze()`` (a probe's fixed extractor): no gradients, BN statistics untouched by forwards."""
    model = torch.nn.Sequential(create_backbone("mobilenet_v3_small"))
    backbone = model[0].freeze()
    model.train()  # what the trainer calls every epoch
    assert backbone.frozen and not backbone.training and not any(p.requires_grad for p in backbone.parameters())
    before = {k: v.clone() for k, v in backbone.state_dict().items()}
    backbone(torch.rand(2, 3, 64, 64))
    assert all(torch.equal(before[k], v) for k, v in backbone.state_dict().items())  # running stats too
