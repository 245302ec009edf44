"""ExecuTorch export (XNNPACK): fp32 / int8 ``.pte`` programs match PyTorch; metadata sidecar; bf16 refused."""

from __future__ import annotations

import json
import sys

import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("executorch", reason="ExecuTorch is optional (pip install executorch); its export is not tested")

from mobiledense.heads import lraspp_mobilenet_v3_small, ssdlite_mobilenet_v3_small  # noqa: E402
from mobiledense.tools.benchmark import calibrate_detector_  # noqa: E402
from mobiledense.tools.deploy import executorch as et  # noqa: E402
from mobiledense.tools.deploy.checks import check_artifact  # noqa: E402
from mobiledense.tools.deploy.executorch import ExecuTorchModel, export_executorch  # noqa: E402

SEG_SIZE = (64, 128)


def _colour_blocks(n: int, g: torch.Generator, size: tuple[int, int] = SEG_SIZE) -> tuple[torch.Tensor, torch.Tensor]:
    """Noisy images of 16x16 blocks of pure red / green / blue; the label of a pixel is its block's colour."""
    h, w = size
    labels = torch.randint(0, 3, (n, 1, h // 16, w // 16), generator=g).float()
    labels = F.interpolate(labels, size=size, mode="nearest")[:, 0].long()
    images = F.one_hot(labels, 3).permute(0, 3, 1, 2).float() * 0.7 + 0.15
    return (images + 0.1 * torch.randn(images.shape, generator=g)).clamp(0, 1), labels


@pytest.fixture(scope="module")
def segmenter() -> torch.nn.Module:
    """A small LR-ASPP trained (a few dozen steps) to segment colour blocks: weights that int8 can keep."""
    torch.manual_seed(0)
    model = lraspp_mobilenet_v3_small(num_classes=3)
    g = torch.Generator().manual_seed(0)
    opt = torch.optim.Adam(model.parameters(), 3e-3)
    model.train()
    for _ in range(25):
        x, y = _colour_blocks(4, g)
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    x, y = _colour_blocks(4, g)
    with torch.no_grad():
        assert (model(x).argmax(1) == y).float().mean() > 0.8  # it learned the task
    return model


@pytest.fixture(scope="module")
def detector() -> torch.nn.Module:
    torch.manual_seed(0)
    model = ssdlite_mobilenet_v3_small(num_classes=4, size=128)
    calibrate_detector_(model)  # trained-like: background dominates
    model.score_thresh = 0.01
    return model.eval()


@pytest.fixture(scope="module")
def seg_fp32(segmenter, tmp_path_factory):
    return export_executorch(segmenter, tmp_path_factory.mktemp("et") / "seg", size=SEG_SIZE)


@pytest.fixture(scope="module")
def det_fp32(detector, tmp_path_factory):
    return export_executorch(detector, tmp_path_factory.mktemp("et") / "det.pte")


def test_segmenter_fp32_matches_pytorch(segmenter, seg_fp32) -> None:
    assert seg_fp32.suffix == ".pte" and seg_fp32.is_file()
    engine = ExecuTorchModel(seg_fp32, threads=1)
    g = torch.Generator().manual_seed(5)
    x = _colour_blocks(2, g)[0]
    with torch.no_grad():
        expected = segmenter(x)
    got = engine(x)  # a batch of 2 runs image by image
    assert got.shape == expected.shape == (2, 3, *SEG_SIZE)
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)
    check = check_artifact(segmenter, engine, [x[:1], x[1:]], "fp32")
    assert check["passed"] and check["agreement"] > 0.999, check
    # Another size is resized to the program's input and the logits back.
    assert engine(torch.rand(1, 3, 48, 100, generator=g)).shape == (1, 3, 48, 100)


def test_detector_fp32_matches_pytorch(detector, det_fp32) -> None:
    engine = ExecuTorchModel(det_fp32, threads=1)
    assert engine.task == "det" and engine.size == (128, 128) and engine.input_size == (128, 128)
    g = torch.Generator().manual_seed(3)
    x = torch.rand(1, 3, 128, 128, generator=g)
    with torch.no_grad():
        boxes, scores = detector.dense_predictions(detector.transform(x)[0])
    got_boxes, got_scores = engine.raw(x)
    torch.testing.assert_close(got_scores, scores, atol=2e-4, rtol=1e-3)
    torch.testing.assert_close(got_boxes, boxes, atol=1e-2, rtol=1e-4)
    # Another input size: resized to the model size as the PyTorch detector does itself.
    images = [x, torch.rand(1, 3, 150, 210, generator=g)]
    check = check_artifact(detector, engine, images, "fp32")
    assert check["passed"] and check["detections"] > 20, check


def test_metadata_sidecar(detector, det_fp32, seg_fp32) -> None:
    meta = json.loads(et.metadata_path(det_fp32).read_text())
    assert et.metadata_path(det_fp32).name == "det.pte.json"
    assert all(isinstance(v, str) for v in meta.values())
    assert meta["mobiledense_task"] == "det" and meta["precision"] == "fp32" and meta["num_classes"] == "4"
    assert json.loads(meta["input_size"]) == [128, 128] == json.loads(meta["size"])
    assert meta["engine"] == "executorch" and meta["delegate"] == "xnnpack"
    assert json.loads(meta["score_thresh"]) == detector.score_thresh
    seg = ExecuTorchModel(seg_fp32).metadata
    assert seg["mobiledense_task"] == "seg" and json.loads(seg["input_size"]) == list(SEG_SIZE) and "size" not in seg
    et.metadata_path(seg_fp32).rename(seg_fp32.with_suffix(".bak"))
    try:
        with pytest.raises(FileNotFoundError, match="seg.pte.json"):
            ExecuTorchModel(seg_fp32)
    finally:
        seg_fp32.with_suffix(".bak").rename(et.metadata_path(seg_fp32))


def test_int8_segmenter_agrees(segmenter, seg_fp32, tmp_path) -> None:
    g = torch.Generator().manual_seed(7)
    calibration = [_colour_blocks(1, g)[0] for _ in range(8)]
    path = export_executorch(segmenter, tmp_path / "seg_int8.pte", "int8", calibration=calibration, size=SEG_SIZE)
    assert path.stat().st_size < 0.5 * seg_fp32.stat().st_size  # int8 weights
    engine = ExecuTorchModel(path)
    assert engine.precision == "int8" and json.loads(engine.metadata["quantized_modules"]) == ["*"]
    check = check_artifact(segmenter, engine, [_colour_blocks(1, g)[0] for _ in range(3)], "int8")
    assert check["passed"] and check["agreement"] >= 0.9, check


def test_refusals(segmenter, tmp_path, monkeypatch) -> None:
    with pytest.raises(ValueError, match="no bf16 convolution kernels"):
        export_executorch(segmenter, tmp_path / "m.pte", "bf16")
    with pytest.raises(ValueError, match="int8 needs calibration images"):
        export_executorch(segmenter, tmp_path / "m.pte", "int8")
    with pytest.raises(ValueError, match="precision must be one of fp32, int8"):
        export_executorch(segmenter, tmp_path / "m.pte", "fp16")
    with pytest.raises(ValueError, match="size must be"):
        export_executorch(segmenter, tmp_path / "m.pte", size=(0, 64))
    assert not (tmp_path / "m.pte").exists()
    (tmp_path / "m.onnx").write_bytes(b"")
    with pytest.raises(ValueError, match="not m.onnx"):
        ExecuTorchModel(tmp_path / "m.onnx")
    monkeypatch.setitem(sys.modules, "executorch.exir", None)  # as if ExecuTorch were not installed
    with pytest.raises(ImportError, match="pip install executorch"):
        export_executorch(segmenter, tmp_path / "m.pte")
