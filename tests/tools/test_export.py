"""``mobiledense export``: ONNX graphs of LR-ASPP and SSDLite match PyTorch on onnxruntime."""

from __future__ import annotations

import pytest
import torch

from mobiledense.heads import ssdlite320_mobilenet_v3_large
from mobiledense.heads import lraspp_mobilenet_v3_large
from mobiledense.tools.benchmark import calibrate_, calibrate_detector_, compare_detections
from mobiledense.tools.cli import main
from mobiledense.tools.engine import CityscapesDataSpec
from mobiledense.tools.engine.tasks import save_model_checkpoint

ort = pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")

from mobiledense.tools.deploy import OnnxDetector, compare_with_pytorch, export_onnx, ort_session  # noqa: E402
from mobiledense.tools.deploy.runtime import OnnxModel  # noqa: E402


@pytest.fixture(scope="module")
def detector() -> torch.nn.Module:
    torch.manual_seed(0)
    model = ssdlite320_mobilenet_v3_large(num_classes=6, size=192)
    calibrate_detector_(model)  # trained-like: background dominates
    model.score_thresh = 0.01
    return model.eval()


def test_segmenter_onnx_matches_pytorch_at_another_size_and_batch(tmp_path) -> None:
    torch.manual_seed(0)
    model = lraspp_mobilenet_v3_large(num_classes=7)
    calibrate_(model, lambda m: m(torch.rand(4, 3, 128, 160)))
    path = export_onnx(model, tmp_path / "lraspp.onnx")
    x = torch.rand(3, 3, 96, 200, generator=torch.Generator().manual_seed(2))  # traced at 2x128x160
    session = ort_session(path, threads=1)
    got = torch.from_numpy(session.run(None, {"images": x.numpy()})[0])
    with torch.no_grad():
        expected, decoded = model(x), model.decode(x)
    # The graph stops at the decoder's stride (8); its wrapper upsamples as the model does.
    assert got.shape == decoded.shape == (3, 7, 12, 25) and expected.abs().max() > 1.0
    assert session.get_modelmeta().custom_metadata_map["logits"] == "decoder"
    assert [d.dim_param for d in onnx.load(str(path)).graph.output[0].type.tensor_type.shape.dim] == [
        "batch", "", "height/stride", "width/stride"]
    torch.testing.assert_close(got, decoded, atol=2e-4, rtol=1e-4)
    with torch.inference_mode():
        wrapped = OnnxModel(path, threads=1)
        torch.testing.assert_close(wrapped(x), expected, atol=2e-4, rtol=1e-4)
        assert (wrapped.labels(x) == expected.argmax(1)).float().mean() > 0.999  # random weights: a few near-ties
    diffs = compare_with_pytorch(model, path, x[:1], threads=1)
    assert diffs["logits"] < 2e-4 < diffs["logits_scale"]
    # --full-logits: the final upsampling in the graph, for applications that run the graph alone.
    full = export_onnx(model, tmp_path / "full.onnx", full_logits=True)
    session = ort_session(full, threads=1)
    assert session.get_modelmeta().custom_metadata_map["logits"] == "input"
    torch.testing.assert_close(torch.from_numpy(session.run(None, {"images": x.numpy()})[0]), expected,
                               atol=2e-4, rtol=1e-4)


def test_detector_onnx_gives_the_same_detections(detector, tmp_path) -> None:
    path = export_onnx(detector, tmp_path / "ssdlite.onnx")
    onnx_det = OnnxDetector(path, threads=1)
    assert onnx_det.size == (192, 192) and onnx_det.score_thresh == 0.01 and onnx_det.detections_per_img == 300
    g = torch.Generator().manual_seed(3)
    batch = torch.rand(3, 3, 150, 210, generator=g)  # another batch and size than traced (2 x 224 x 256)
    with torch.no_grad():
        boxes, scores = detector.dense_predictions(detector.transform(batch)[0])
        expected = detector(batch)
    got_boxes, got_scores = onnx_det.raw(batch)
    assert got_scores.shape == scores.shape == (3, len(got_boxes[0]), 5)
    torch.testing.assert_close(got_scores, scores, atol=2e-4, rtol=1e-3)
    torch.testing.assert_close(got_boxes, boxes, atol=1e-2, rtol=1e-4)
    check = compare_detections(expected, onnx_det(batch))
    assert check["passed"] and check["detections"] > 20, check
    # A list of images of different sizes runs each at its own size.
    images = [torch.rand(3, 100, 140, generator=g), torch.rand(3, 192, 192, generator=g)]
    with torch.no_grad():
        check = compare_detections(detector(images), onnx_det(images))
        assert check["passed"], check


def test_onnx_detector_refuses_a_segmenter_file(tmp_path) -> None:
    path = export_onnx(lraspp_mobilenet_v3_large(num_classes=3).eval(), tmp_path / "seg.onnx")
    with pytest.raises(ValueError, match="not a detector"):
        OnnxDetector(path)


def test_export_cli(tmp_path, capsys) -> None:
    out = tmp_path / "lraspp.onnx"
    code = main(["export", "--model", "lraspp_mobilenet_v3_small", "--num-classes", "4", "--output", str(out),
                 "--check-size", "64", "96", "--repeats", "1", "--threads", "1"])
    text = capsys.readouterr().out
    assert code == 0 and out.is_file()
    assert "onnxruntime vs PyTorch on random images, max |diff|: logits" in text and "latency batch 1" in text
    assert main(["export", "--model", "resnet50", "--output", str(out)]) == 2
    assert "unknown model 'resnet50'; valid names: lraspp_mobilenet_v1" in capsys.readouterr().err


def test_export_cli_from_a_training_checkpoint(tmp_path, capsys) -> None:
    model = lraspp_mobilenet_v3_large(num_classes=4).eval()
    ckpt = tmp_path / "last.pt"
    save_model_checkpoint(model, CityscapesDataSpec(root=str(tmp_path)), ckpt)
    out = tmp_path / "m.onnx"
    assert main(["export", "--checkpoint", str(ckpt), "--output", str(out), "--check-size", "64", "96",
                 "--repeats", "0"]) == 0
    assert out.is_file() and "logits" in capsys.readouterr().out
    torch.save({"model": model.state_dict()}, ckpt)
    assert main(["export", "--checkpoint", str(ckpt), "--output", str(out)]) == 2
    assert "has no run spec" in capsys.readouterr().err


def test_export_cli_names_invalid_options(tmp_path, capsys) -> None:
    out = tmp_path / "m.onnx"
    assert main(["export", "--model", "lraspp_mobilenet_v3_small", "--output", str(out), "--opset", "9",
                 "--atol", "-1"]) == 2
    err = capsys.readouterr().err
    assert "--opset must be >= 11, got 9" in err and "--atol must be >= 0, got -1.0" in err and not out.exists()
