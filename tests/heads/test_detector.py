"""SSDLite detector: API, every registered backbone, sizes, errors, weights, paper Table 6 numbers."""

from __future__ import annotations

import pytest
import torch
import torchvision

import mobiledense.heads as heads
from mobiledense.backbones import BACKBONES, count_params, create_backbone, list_backbones
from mobiledense.heads import (
    DefaultBoxes,
    SSDLite,
    SSDLiteHead,
    build_ssdlite,
    create_detector,
    detector_madds,
    extra_blocks,
    list_models,
    model_spec,
    ssdlite320_mobilenet_v3_large,
    ssdlite_parts,
)


def _target(boxes: list[list[float]], labels: list[int]) -> dict[str, torch.Tensor]:
    return {"boxes": torch.tensor(boxes, dtype=torch.float32), "labels": torch.tensor(labels)}


@pytest.fixture(scope="module")
def small() -> SSDLite:
    torch.manual_seed(0)
    return create_detector("ssdlite_mobilenet_v3_small", num_classes=5).eval()


# ----------------------------------------------------------------- registry


def test_a_detector_per_registered_backbone() -> None:
    names = list_models("det")
    assert "ssdlite320_mobilenet_v3_large" in names
    assert {f"ssdlite_{b}" for b in list_backbones()} <= set(names)
    for b in list_backbones():
        assert callable(getattr(heads, f"ssdlite_{b}"))


@pytest.mark.parametrize("name", list_models("det"))
def test_every_detector_trains_and_predicts_at_320(name: str) -> None:
    torch.manual_seed(0)
    model = create_detector(name, num_classes=4)
    c4, c5 = model.strides
    assert c5 == max(model.backbone.channels) and c4 == c5 // 2 and c5 in (16, 32)
    assert model.head.classification_head.module_list[0][0][0].in_channels == model.backbone.channels[c4]
    assert model.extra[0][0][0].in_channels == model.backbone.channels[c5]
    # Families that declare an expansion tap get C4 = expansion layer (§6.3); the others their deepest C4.
    tap = "expansion" if "expansion" in type(model.backbone).supported_taps else "deepest"
    assert model.backbone.taps[c4] == tap
    model.train()  # batch of 2: the 1x1 last level needs > 1 value per BN channel in training
    losses = model([torch.rand(3, 200, 260), torch.rand(3, 120, 100)],
                   [_target([[20, 30, 120, 150], [100, 10, 250, 190]], [1, 3]), _target([[5, 5, 90, 60]], [2])])
    assert set(losses) == {"bbox_regression", "classification"}
    assert all(torch.isfinite(v) and v > 0 for v in losses.values())
    sum(losses.values()).backward()
    for part in (model.head.regression_head, model.head.classification_head, model.extra, model.backbone):
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in part.parameters()), type(part)
    model.eval()
    with torch.no_grad():
        (det,) = model([torch.rand(3, 200, 260)])
    assert set(det) == {"boxes", "scores", "labels"}
    assert det["boxes"].shape[1] == 4 and len(det["boxes"]) == len(det["scores"]) == len(det["labels"])
    assert 0 < len(det["boxes"]) <= 300 and det["labels"].dtype == torch.int64
    assert det["labels"].min() >= 1 and det["labels"].max() <= 3
    assert det["boxes"][:, 0::2].max() <= 260 + 1e-3 and det["boxes"][:, 1::2].max() <= 200 + 1e-3


def test_unknown_name_lists_valid_ones() -> None:
    with pytest.raises(KeyError, match="ssdlite_mobilenet_v3_large"):
        create_detector("ssdlite_resnet50")
    with pytest.raises(AttributeError):
        heads.ssdlite_resnet50  # noqa: B018


# ----------------------------------------------------------------- sizes and outputs


@pytest.mark.parametrize("size", [512, 640, (320, 480)])
def test_other_input_sizes(size) -> None:
    torch.manual_seed(0)
    model = create_detector("ssdlite_mobilenet_v3_small", num_classes=3, size=size).eval()
    h, w = (size, size) if isinstance(size, int) else size
    batch, _, _ = model.transform([torch.rand(3, 100, 150)])
    assert batch.shape == (1, 3, h, w)
    outputs, anchors = model.head_outputs(batch)
    assert outputs["cls_logits"].shape == (1, len(anchors), 3)
    assert len(anchors) == 6 * sum(-(-h // s) * -(-w // s) for s in (16, 32)) + 6 * sum(
        m.shape[-2] * m.shape[-1] for m in model.features(batch)[2:])
    with torch.no_grad():
        (det,) = model([torch.rand(3, 100, 150)])
    assert det["boxes"][:, 2].max() <= 150 + 1e-3 and det["boxes"][:, 3].max() <= 100 + 1e-3


def test_boxes_are_mapped_back_to_the_original_size(small: SSDLite) -> None:
    image = torch.rand(3, 160, 480)
    resized = torch.nn.functional.interpolate(image[None], size=(320, 320), mode="bilinear", align_corners=False)
    with torch.no_grad():
        (orig,) = small([image])
        (same,) = small(resized)  # (N, 3, H, W) batch already at 320: no resize
    scale = torch.tensor([480 / 320, 160 / 320, 480 / 320, 160 / 320])
    assert len(orig["boxes"]) > 10
    torch.testing.assert_close(orig["boxes"][:10], same["boxes"][:10] * scale, atol=1e-2, rtol=1e-4)
    torch.testing.assert_close(orig["scores"][:10], same["scores"][:10], atol=1e-4, rtol=1e-4)


def test_transform_normalises_and_scales_targets(small: SSDLite) -> None:
    batch, targets, sizes = small.transform([torch.ones(3, 100, 200)], [_target([[10, 20, 110, 70]], [2])])
    assert sizes == [(100, 200)]
    torch.testing.assert_close(batch, torch.ones(1, 3, 320, 320))  # (1 - 0.5) / 0.5
    torch.testing.assert_close(targets[0]["boxes"], torch.tensor([[16.0, 64.0, 176.0, 224.0]]))


def test_postprocess_settings_are_used(small: SSDLite) -> None:
    image = [torch.rand(3, 320, 320)]
    small.detections_per_img = 7
    with torch.no_grad():
        assert len(small(image)[0]["boxes"]) == 7
        small.detections_per_img, small.score_thresh = 300, 0.9999
        assert len(small(image)[0]["boxes"]) == 0
    small.score_thresh = 0.001


def test_empty_image_targets_train(small: SSDLite) -> None:
    small.train()
    try:
        empty = {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)}
        losses = small(torch.rand(2, 3, 64, 64), [empty, empty])
    finally:
        small.eval()
    assert losses["bbox_regression"] == 0 and losses["classification"] == 0


def test_focal_loss_option() -> None:
    torch.manual_seed(0)
    model = create_detector("ssdlite_mobilenet_v3_small", num_classes=4, loss="focal")
    bias = model.head.classification_head.module_list[0][1].bias
    assert torch.allclose(bias, torch.full_like(bias, -4.59512), atol=1e-4)  # RetinaNet prior 0.01
    losses = model.train()(torch.rand(2, 3, 96, 96), [_target([[10, 10, 60, 80]], [2])] * 2)
    assert all(torch.isfinite(v) and v > 0 for v in losses.values())
    with torch.no_grad():
        (det,) = model.eval()([torch.rand(3, 96, 96)])
    assert len(det["scores"]) and det["scores"].max() < 0.05  # sigmoid scores start near the prior


# ----------------------------------------------------------------- errors


def test_bad_images_are_clear_errors(small: SSDLite) -> None:
    with pytest.raises(ValueError, match=r"wrap a single image as \[image\]"):
        small(torch.rand(3, 64, 64))
    with pytest.raises(ValueError, match=r"image 1: expected a \(3, H, W\) RGB tensor, got \(1, 64, 64\)"):
        small([torch.rand(3, 64, 64), torch.rand(1, 64, 64)])
    with pytest.raises(ValueError, match="image 0: expected float"):
        small([torch.zeros(3, 64, 64, dtype=torch.uint8)])
    with pytest.raises(ValueError, match="empty list"):
        small([])


def test_bad_targets_are_clear_errors(small: SSDLite) -> None:
    small.train()
    ims = [torch.rand(3, 64, 64), torch.rand(3, 64, 64)]
    ok = _target([[1, 1, 30, 30]], [1])
    try:
        with pytest.raises(ValueError, match="needs targets"):
            small(ims)
        with pytest.raises(ValueError, match="2 images but 1 targets"):
            small(ims, [ok])
        with pytest.raises(ValueError, match=r"target 1: 'boxes' must be a float \(N, 4\)"):
            small(ims, [ok, _target([[1, 1, 30, 30, 0]], [1])])
        with pytest.raises(ValueError, match=r"target 0: label 5 out of range; labels must be in 1..4"):
            small(ims, [_target([[1, 1, 30, 30]], [5]), ok])
        with pytest.raises(ValueError, match="target 1: label 0 out of range"):
            small(ims, [ok, _target([[1, 1, 30, 30]], [0])])
        with pytest.raises(ValueError, match=r"target 1: box 1 \[5.0, 5.0, 5.0, 20.0\] is degenerate"):
            small(ims, [ok, _target([[1, 1, 30, 30], [5, 5, 5, 20]], [1, 2])])
        with pytest.raises(ValueError, match="target 0: 'labels' must be an int64"):
            small(ims, [{"boxes": ok["boxes"], "labels": torch.tensor([1.0])}, ok])
    finally:
        small.eval()


def test_dilated_backbone_is_refused() -> None:
    with pytest.raises(ValueError, match="undilated backbone: build MobileNetV3 with output_stride=32"):
        ssdlite_parts(create_backbone("mobilenet_v3_small", output_stride=16), num_classes=3)
    backbone = create_backbone("mobilenet_v3_small")
    with pytest.raises(ValueError, match="num_classes"):
        SSDLite(backbone, *ssdlite_parts(backbone, 3), num_classes=1)
    with pytest.raises(ValueError, match="dilated.*needs output_stride=32"):  # C4's expansion tap is gone
        create_detector("ssdlite_mobilenet_v3_small", num_classes=3, backbone_kwargs={"output_stride": 16})


# ----------------------------------------------------------------- parts


def test_ssdlite_takes_its_parts() -> None:
    """``SSDLite(backbone, extra, anchor_generator, head, ...)`` = ``build_ssdlite``, same keys and values."""
    torch.manual_seed(0)
    built = build_ssdlite("mobilenet_v3_small", 4, size=256).eval()
    torch.manual_seed(0)
    spec = model_spec("ssdlite_mobilenet_v3_small", num_classes=4, size=256)
    backbone = create_backbone("mobilenet_v3_small", norm_layer=heads.ssdlite.BatchNorm,
                               **heads.registry.backbone_kwargs(spec.backbone))
    heads.ssdlite.normal_init(backbone)
    extra, anchors, head = ssdlite_parts(backbone, 4)
    model = SSDLite(backbone, extra, anchors, head, 4, size=256).eval()
    assert model.backbone is backbone and model.extra is extra and model.anchor_generator is anchors
    assert model.head is head and model.size == (256, 256)
    assert list(model.state_dict()) == list(built.state_dict())
    for k, v in built.state_dict().items():
        assert torch.equal(model.state_dict()[k], v), k
    x = torch.rand(1, 3, 256, 256)
    with torch.no_grad():
        torch.testing.assert_close(model.dense_predictions(x), built.dense_predictions(x), atol=0, rtol=0)


def test_mismatched_parts_are_refused() -> None:
    backbone = create_backbone("mobilenet_v3_small", taps={16: "expansion"})
    extra, anchors, head = ssdlite_parts(backbone, 4)
    with pytest.raises(ValueError, match="anchor_generator has 5 levels but there are 6 feature maps"):
        SSDLite(backbone, extra, DefaultBoxes(((2, 3),) * 5), head, 4)
    with pytest.raises(ValueError, match=r"head predicts \[6, 6, 6, 6, 6, 6\] boxes per location"):
        SSDLite(backbone, extra, DefaultBoxes(reduce_boxes_in_lowest_layer=True), head, 4)
    with pytest.raises(ValueError, match=r"head expects \[96, 576, .*\] channels but the feature maps have "
                                         r"\[288, 576"):
        SSDLite(backbone, extra, anchors, SSDLiteHead([96, 576, 512, 256, 256, 128], [6] * 6, 4), 4)
    with pytest.raises(ValueError, match="head predicts 4 classes but num_classes=5"):
        SSDLite(backbone, extra, anchors, head, 5)
    with pytest.raises(ValueError, match=r"6 levels but there are 5 feature maps \(2 backbone levels \+ 3"):
        SSDLite(backbone, extra_blocks(576, depths=(512, 256, 256)), anchors, head, 4)


def test_backbone_options_come_from_the_registry(monkeypatch) -> None:
    """C4 = expansion and BN(1e-3, 0.03) only where the entry declares them; built once, no retries."""
    def backbone(name: str, **options) -> tuple[int, dict[int, str]]:
        b = model_spec(name, **options).backbone
        return b.output_stride, b.taps

    assert backbone("ssdlite_mobilenet_v2") == (32, {16: "expansion"})
    assert backbone("ssdlite_mobilenet_v1") == (32, {})
    assert backbone("ssdlite_squeezenet1_1") == (16, {})  # stride 16: levels 8 and 16, no tap
    assert backbone("ssdlite_mobilenet_v2", taps={}) == (32, {})
    calls = []
    entry = BACKBONES["mobilenet_v1"]

    def counting(**kwargs):
        calls.append(kwargs)
        return entry.factory(**kwargs)

    monkeypatch.setitem(BACKBONES, "mobilenet_v1", type(entry)(entry.name, counting, entry.paper,
                                                               family=entry.family))
    model = create_detector("ssdlite_mobilenet_v1", num_classes=3)
    assert calls == [{"output_stride": 32, "norm_layer": heads.ssdlite.BatchNorm}]
    assert model.backbone.features[0][1].eps == 1e-3 and model.backbone.taps[16] == "deepest"


@pytest.mark.parametrize("name", ["ssdlite_mobilenet_v2", "ssdlite_mobilenet_v1", "ssdlite_xception"])
def test_an_option_the_backbone_lacks_is_a_value_error(name: str) -> None:
    """``--reduced-tail`` on a family without it: a ValueError naming the family's options, no TypeError."""
    backbone = name[len("ssdlite_"):]
    options = ", ".join(BACKBONES[backbone].options)
    with pytest.raises(ValueError, match=f"{backbone} has no option 'reduced_tail'; its options: {options}"):
        create_detector(name, num_classes=3, reduced_tail=True)
    with pytest.raises(ValueError, match=f"{backbone} has no option 'reduced_tail'"):
        create_detector(name, num_classes=3, backbone_kwargs={"reduced_tail": True})


# ----------------------------------------------------------------- weights


def test_weights_round_trip_and_torchvision_checkpoint(tmp_path) -> None:
    torch.manual_seed(0)
    model = ssdlite320_mobilenet_v3_large(num_classes=3, reduced_tail=True).eval()
    torch.save(model.state_dict(), tmp_path / "ours.pt")
    again = ssdlite320_mobilenet_v3_large(num_classes=3, reduced_tail=True, weights=tmp_path / "ours.pt")
    for k, v in model.state_dict().items():
        assert torch.equal(v, again.state_dict()[k]), k
    tv = torchvision.models.detection.ssdlite320_mobilenet_v3_large(weights=None, weights_backbone=None,
                                                                    num_classes=3)
    torch.save(tv.state_dict(), tmp_path / "tv.pt")
    from_tv = create_detector("ssdlite320_mobilenet_v3_large", num_classes=3, reduced_tail=True,
                              weights=tmp_path / "tv.pt")
    assert torch.equal(from_tv.extra[0][0][0].weight, tv.backbone.extra[0][0][0].weight)


# ----------------------------------------------------------------- paper Table 6


@pytest.mark.parametrize("reduced_tail,paper_params,paper_madds", [(False, 4.97e6, 0.62e9), (True, 3.22e6, 0.51e9)])
def test_table6_params_and_madds_with_tf_anchors(reduced_tail: bool, paper_params: float, paper_madds: float) -> None:
    """Paper Table 6 (MobileNetV3 + SSDLite, 320x320, COCO 91 classes) within 5%.

    The paper's models come from the TF Object Detection API, whose SSDLite puts 3
    boxes (not 6) on the first level (``reduce_boxes_in_lowest_layer``); measured:
    5.01M / 0.613B (paper 4.97M / 0.62B) and 3.25M / 0.507B (paper 3.22M / 0.51B).
    """
    model = ssdlite320_mobilenet_v3_large(91, reduced_tail=reduced_tail, reduce_boxes_in_lowest_layer=True)
    assert count_params(model) == pytest.approx(paper_params, rel=0.05)
    assert detector_madds(model) == pytest.approx(paper_madds, rel=0.05)


def test_torchvision_configuration_numbers() -> None:
    """torchvision's SSDLite (6 boxes everywhere): 3,440,060 params, 0.583 G "ops" (its docs).

    The 6 boxes on the 20x20 C4 level add a 672 -> 6 x 95 1x1 conv, +73M MAdds and
    +0.19M params over the paper's TF configuration: that is the whole difference.
    """
    model = ssdlite320_mobilenet_v3_large(91, reduced_tail=True)
    assert count_params(model) == 3_440_060
    assert detector_madds(model) == pytest.approx(0.583e9, rel=0.01)
    assert detector_madds(model, 640) == pytest.approx(4 * detector_madds(model), rel=0.05)
