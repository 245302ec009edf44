"""Our backbones as segmentation-models-pytorch encoders (``mobiledense-<name>``)."""

from __future__ import annotations

import pytest
import segmentation_models_pytorch as smp
import torch
from torch import Tensor

from mobiledense.backbones import BACKBONES, Backbone, create_backbone, list_backbones
from mobiledense.backbones._base import BackboneEntry
from mobiledense.heads.segmenter import Normalize
from mobiledense.heads.smp_encoders import SMP_PREFIX, create_smp_model, register_smp_encoders

OTHER_FAMILY = next(n for n in list_backbones() if not n.startswith("mobilenet_v3"))

CASES = [
    (name, os_)
    for name in list_backbones()
    for os_ in sorted(set(BACKBONES[name].output_strides) & {8, 16, 32})
]


def test_register_is_idempotent_and_covers_the_registry() -> None:
    first = register_smp_encoders()
    assert register_smp_encoders() == first == [SMP_PREFIX + n for n in list_backbones()]
    assert all(name in smp.encoders.get_encoder_names() for name in first)


@pytest.mark.parametrize("name,output_stride", CASES)
def test_encoder_contract(name: str, output_stride: int) -> None:
    """smp's contract: depth+1 maps, ``out_channels`` match, map i at stride min(2**i, os)."""
    register_smp_encoders()
    enc = smp.encoders.get_encoder(SMP_PREFIX + name, depth=5, weights=None, output_stride=output_stride)
    assert enc.output_stride == output_stride
    x = torch.rand(1, 3, 64, 96)
    with torch.no_grad():
        feats = enc(x)
    assert len(feats) == 6 and feats[0] is x
    assert [f.shape[1] for f in feats] == list(enc.out_channels)
    for i, f in enumerate(feats[1:], 1):
        s = min(2 ** i, output_stride)
        assert f.shape[-2:] == (64 // s, 96 // s), (name, i, f.shape)
    assert enc.out_channels[-1] == enc.backbone.channels[max(enc.backbone.channels)]


ARCHS = [("deeplabv3plus", {}), ("fpn", {}), ("unet", {"decoder_channels": (64, 32, 16, 16, 8)})]


@pytest.mark.parametrize("backbone", ["mobilenet_v3_large", OTHER_FAMILY])
@pytest.mark.parametrize("arch,kwargs", ARCHS)
def test_smp_architectures_train(arch: str, kwargs: dict, backbone: str) -> None:
    register_smp_encoders()
    torch.manual_seed(0)
    model = smp.create_model(arch, encoder_name=SMP_PREFIX + backbone, encoder_weights=None,
                             classes=19, **kwargs)
    if arch == "deeplabv3plus":  # dilated to output stride 16 through smp's make_dilated contract
        assert model.encoder.output_stride == 16 and model.encoder.backbone.output_stride == 16
    x = torch.rand(2, 3, 64, 96)
    out = model(x)
    assert out.shape == (2, 19, 64, 96)
    out.logsumexp(1).mean().backward()
    assert all(p.grad is not None for p in model.encoder.parameters())


def test_make_dilated_keeps_weights_and_in_channels() -> None:
    register_smp_encoders()
    enc = smp.encoders.get_encoder(SMP_PREFIX + "mobilenet_v3_small", in_channels=4, weights=None)
    before = {k: v.clone() for k, v in enc.state_dict().items()}
    enc.make_dilated(16)
    assert enc.output_stride == 16 and enc.out_channels[4] == enc.out_channels[5] == 576
    for k, v in enc.state_dict().items():
        torch.testing.assert_close(v, before[k], msg=k)
    feats = enc(torch.rand(1, 4, 64, 64))
    assert feats[-1].shape[-2:] == (4, 4)
    with pytest.raises(ValueError, match="supports output_stride"):
        enc.make_dilated(4)


def test_imagenet_weights_are_refused_clearly() -> None:
    register_smp_encoders()
    with pytest.raises(KeyError, match="Available options are: \\[\\]"):
        smp.Unet(SMP_PREFIX + "mobilenet_v3_small")  # smp's default encoder_weights="imagenet"


def test_create_smp_model_follows_the_segmenter_api(tmp_path) -> None:
    torch.manual_seed(0)
    bb = create_backbone("mobilenet_v3_large", width_mult=0.5, reduced_tail=True)
    torch.save(bb.state_dict(), tmp_path / "bb.pth")
    model = create_smp_model("deeplabv3plus", "mobilenet_v3_large", num_classes=7,
                             weights_backbone=tmp_path / "bb.pth",
                             backbone_kwargs={"width_mult": 0.5, "reduced_tail": True}).eval()
    enc = model.model.encoder
    assert enc.out_channels[-1] == bb.channels[32] and model.num_classes == 7
    for k, v in bb.state_dict().items():  # loaded, then dilated with the weights kept
        torch.testing.assert_close(enc.backbone.state_dict()[k], v)
    x = torch.rand(1, 3, 97, 131)
    with torch.no_grad():
        out = model(x)
        # By hand: normalise, zero-pad to a multiple of 16, crop the logits.
        padded = torch.nn.functional.pad(Normalize()(x), (0, 13, 0, 15))
        torch.testing.assert_close(out, model.model(padded)[..., :97, :131])
    assert out.shape == (1, 7, 97, 131)
    with pytest.raises(ValueError, match="3 input channels"):
        model(torch.rand(1, 1, 64, 64))
    with pytest.raises(KeyError, match="mobilenet_v3_large"):
        create_smp_model("fpn", "resnet50")
    with pytest.raises(ValueError, match="logits only"):
        create_smp_model("fpn", "mobilenet_v3_small", aux_params={"classes": 3})
    with pytest.raises(ValueError, match="mobilenet_v2 has no option 'reduced_tail'; its options: width_mult"):
        create_smp_model("fpn", "mobilenet_v2", backbone_kwargs={"reduced_tail": True})


class _Stride4Stem(Backbone):
    """A backbone with no stride-2 map: smp gets a zero-channel placeholder there."""

    supported_output_strides = (32,)

    def __init__(self, output_stride: int = 32) -> None:
        super().__init__()
        self.output_stride = output_stride
        self.channels = {4: 8, 8: 16, 16: 24, 32: 32}
        chans = [3, 8, 16, 24, 32]
        self.stages = torch.nn.ModuleList(
            torch.nn.Conv2d(chans[i], chans[i + 1], 3, 4 if i == 0 else 2, 1) for i in range(4)
        )

    def forward(self, x: Tensor) -> dict[int, Tensor]:
        out = {}
        for stride, stage in zip((4, 8, 16, 32), self.stages):
            x = stage(x)
            out[stride] = x
        return out


def test_missing_stride_is_a_zero_channel_placeholder(monkeypatch) -> None:
    monkeypatch.setitem(BACKBONES, "toy_s4", BackboneEntry("toy_s4", _Stride4Stem, paper="test", family=_Stride4Stem))
    monkeypatch.setattr(smp.encoders, "encoders", dict(smp.encoders.encoders))
    register_smp_encoders()
    for arch in ("fpn", "unet"):
        model = smp.create_model(arch, encoder_name=SMP_PREFIX + "toy_s4", encoder_weights=None, classes=2)
        assert model.encoder.out_channels == [3, 0, 8, 16, 24, 32]
        feats = model.encoder(torch.rand(1, 3, 64, 96))
        assert feats[1].shape == (1, 0, 32, 48)
        assert model(torch.rand(1, 3, 64, 96)).shape == (1, 2, 64, 96)
