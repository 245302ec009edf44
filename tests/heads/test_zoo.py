"""The model registry: every public name is a registered function, and spec -> model -> checkpoint -> model.

For every registered model (and option variants: reduced tail, widths, sizes, pooling, focal
loss, smp decoders) the spec round-trips through JSON, ``create_model(spec)`` builds the same
network as the named function, and a checkpoint written with that spec is rebuilt by
``load_trained_model`` (what ``eval``, ``predict`` and ``export --checkpoint`` call) to the
same outputs.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import mobiledense.heads as heads
from mobiledense.backbones import list_backbones
from mobiledense.heads import HEADS, MODELS, ModelSpec, create_model, list_models, model_spec, register_model
from mobiledense.heads.registry import register_head
from mobiledense.tools.engine import CityscapesDataSpec, CocoDataSpec, RunSpec
from mobiledense.tools.engine.tasks import load_trained_model, save_model_checkpoint

CASES = [(name, {}) for name in list_models()] + [
    ("ssdlite320_mobilenet_v3_large", {"reduced_tail": True}),
    ("ssdlite320_mobilenet_v3_large", {"reduced_tail": True, "reduce_boxes_in_lowest_layer": True}),
    ("ssdlite_mobilenet_v3_small", {"width_mult": 0.75, "size": 256, "loss": "focal"}),
    ("ssdlite_squeezenet1_1", {"padding": "caffe", "size": (192, 256)}),
    ("lraspp_mobilenet_v3_large", {"reduced_tail": True, "pool": "paper", "train_crop": (128, 256)}),
    ("lraspp_mobilenet_v3_small", {"low_tap": "deepest", "output_stride": 32}),
    ("lraspp_shufflenet_v2_x1_0", {"pool": "paper"}),
]
SMP_CASES = [("deeplabv3plus", "mobilenet_v3_small", {}), ("fpn", "mobilenet_v2", {"width_mult": 0.5}),
             ("unet", "shufflenet_v2_x0_5", {"decoder_channels": [64, 32, 16, 16, 8]})]


def _data(task: str, tmp: Path) -> CocoDataSpec | CityscapesDataSpec:
    return CocoDataSpec(train_images=str(tmp), train_ann=str(tmp / "a.json")) if task == "det" else \
        CityscapesDataSpec(root=str(tmp))


def _outputs(model: torch.nn.Module, spec: ModelSpec) -> list[torch.Tensor]:
    torch.manual_seed(0)
    x = torch.rand(1, 3, 96, 128)
    with torch.no_grad():
        if spec.task == "det":
            out = model.head_outputs(model.transform(x)[0])[0]
            return [out["bbox_regression"], out["cls_logits"]]
        return [model(x)]


def _round_trip(spec: ModelSpec, model: torch.nn.Module, tmp_path: Path) -> None:
    assert ModelSpec.model_validate_json(spec.model_dump_json()) == spec
    ckpt = save_model_checkpoint(model, _data(spec.task, tmp_path), tmp_path / "last.pt")
    rebuilt, run = load_trained_model(ckpt)
    assert run.model == spec and rebuilt.spec == spec and type(rebuilt) is type(model)
    assert rebuilt.state_dict().keys() == model.state_dict().keys()
    for a, b in zip(_outputs(model.eval(), spec), _outputs(rebuilt, spec)):
        torch.testing.assert_close(a, b, atol=0, rtol=0)


@pytest.mark.parametrize("name,options", CASES, ids=lambda v: v if isinstance(v, str) else
                         ",".join(f"{k}={w}" for k, w in v.items()) or "default")
def test_every_registered_model_rebuilds_from_its_checkpoint(name: str, options: dict, tmp_path: Path) -> None:
    spec = model_spec(name, num_classes=4, **options)
    torch.manual_seed(0)
    model = getattr(heads, name)(num_classes=4, **options)  # the named function, as a user calls it
    assert model.spec == spec and spec.name == name
    torch.manual_seed(0)
    again = create_model(spec)
    for k, v in model.state_dict().items():
        assert torch.equal(again.state_dict()[k], v), k
    _round_trip(spec, model, tmp_path)


@pytest.mark.parametrize("arch,backbone,options", SMP_CASES, ids=[c[0] for c in SMP_CASES])
def test_smp_decoders_rebuild_from_their_checkpoint(arch: str, backbone: str, options: dict, tmp_path: Path) -> None:
    spec = heads.build_model_spec("seg", arch, backbone, 5, **options)
    assert spec.head.kind == "smp" and spec.head_name == arch
    torch.manual_seed(0)
    _round_trip(spec, create_model(spec), tmp_path)


def test_every_backbone_has_both_names_findable_in_the_source() -> None:
    import inspect

    zoo = Path(inspect.getsourcefile(heads.zoo)).read_text()
    for b in list_backbones():
        for name in (f"ssdlite_{b}", f"lraspp_{b}"):
            assert name in MODELS and f"def {name}(" in zoo, name
            assert MODELS[name].backbone == b and callable(getattr(heads, name))
    assert list_models("det") == sorted(n for n in MODELS if n.startswith("ssdlite"))


def test_registries_refuse_duplicates_and_list_valid_names() -> None:
    with pytest.raises(KeyError, match="already registered"):
        register_model(task="det", head="ssdlite", backbone="mobilenet_v2", num_classes=91)(
            heads.ssdlite_mobilenet_v2)
    with pytest.raises(KeyError, match="already registered"):
        register_head("ssdlite", task="det", spec=dict, backbone_defaults=lambda s, e: (None, {}))(lambda s, w: None)
    with pytest.raises(KeyError, match="unknown detector 'ssdlite_resnet50'; valid names: .*ssdlite_mobilenet_v2"):
        create_model("ssdlite_resnet50", task="det")
    with pytest.raises(KeyError, match="unknown seg head 'segformerx'; valid heads: lraspp, smp architectures: "):
        heads.build_model_spec("seg", "segformerx", "mobilenet_v2", 19)
    assert set(HEADS) == {"ssdlite", "lraspp", "smp", "classifier"}


def test_options_are_sorted_and_checked_before_building() -> None:
    spec = model_spec("ssdlite_mobilenet_v3_small", num_classes=3, size=200, reduced_tail=True, nms_thresh=0.5)
    assert spec.head.size == (200, 200) and spec.head.nms_thresh == 0.5 and spec.backbone.reduced_tail
    assert spec.backbone.output_stride == 32 and spec.backbone.taps == {16: "expansion"}  # what SSDLite asks
    seg = model_spec("lraspp_squeezenet1_1")
    assert seg.backbone.output_stride == 16 and seg.backbone.taps == {8: "first"}  # §6.4, from the entry
    with pytest.raises(ValueError, match="unknown option 'scor_thresh'; valid options: .*score_thresh"):
        model_spec("ssdlite_mobilenet_v2", scor_thresh=0.1)
    with pytest.raises(ValueError, match="mobilenet_v2 has no option 'reduced_tail'.*backbones with 'reduced_tail': "
                                         "mobilenet_v3_large, mobilenet_v3_small"):
        model_spec("ssdlite_mobilenet_v2", reduced_tail=True)
    with pytest.raises(ValueError, match="squeezenet1_1 has no option 'width_mult'"):
        model_spec("lraspp_squeezenet1_1", width_mult=0.5)
    with pytest.raises(ValueError, match="size must be at least 32 x 32, got \\(0, 0\\)"):
        model_spec("ssdlite_mobilenet_v2", size=0)
    with pytest.raises(ValueError, match="num_classes counts the background and must be >= 2"):
        model_spec("ssdlite_mobilenet_v2", num_classes=1)
    with pytest.raises(ValueError, match="3 class_names for 4 labels"):
        model_spec("ssdlite_mobilenet_v2", num_classes=5, class_names=("a", "b", "c"))


def test_a_spec_of_the_wrong_kind_is_refused() -> None:
    det = model_spec("ssdlite_mobilenet_v2")
    with pytest.raises(ValueError, match="head 'ssdlite' is a det head, not a 'seg' one"):
        ModelSpec(task="seg", head=det.head, num_classes=3)
    with pytest.raises(ValueError, match="a 'det' model needs 'coco' data, got 'cityscapes'"):
        RunSpec.parse(model=det, data=CityscapesDataSpec())
    with pytest.raises(TypeError, match="takes no options"):
        create_model(det, size=128)
