"""Deployment: ONNX (fp32, int8 QDQ) and OpenVINO (fp32, bf16, int8 NNCF) artifacts of detectors and segmenters.

The weights are calibrated (He-initialised, BN statistics measured; the detector's scores
background-dominated, as after training), not trained: fp32 artifacts must reproduce PyTorch's
graph outputs, bf16 / int8 ones must stay close in relative RMS error (argmax / detection
agreement needs trained weights, which ``export`` checks at export time and README's table
reports). ``eval --artifact`` must score an fp32 artifact as PyTorch scores the checkpoint.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from mobiledense.datasets import CocoDetection, make_synthetic_coco
from mobiledense.heads import create_model, lraspp_mobilenet_v3_large, model_spec
from mobiledense.tools.benchmark import calibrate_, calibrate_detector_
from mobiledense.tools.cli import main
from mobiledense.tools.engine import CityscapesDataSpec, CocoDataSpec
from mobiledense.tools.engine.tasks import DetectionTask, load_trained_model, save_model_checkpoint

pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")
pytest.importorskip("openvino", reason="OpenVINO is not installed (pip install -e '.[deploy]')")
pytest.importorskip("nncf", reason="NNCF is not installed (pip install -e '.[deploy]')")

from mobiledense.tools.deploy.calibration import calibration_images, spaced  # noqa: E402
from mobiledense.tools.deploy.checks import check_artifact, compare_detections, match_detections  # noqa: E402
from mobiledense.tools.deploy.engines import EngineModel, load_engine  # noqa: E402
from mobiledense.tools.deploy.formats import REFUSED, check_combination, export_artifact, format_of  # noqa: E402


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict[str, tuple[Path, Path]]:
    return make_synthetic_coco(tmp_path_factory.mktemp("shapes"), num_images=12, size_range=(96, 160),
                               val_fraction=0.5, seed=3)


@pytest.fixture(scope="module")
def det_checkpoint(data, tmp_path_factory) -> Path:
    (images, ann), (val_images, val_ann) = data["train"], data["val"]
    classes = DetectionTask.class_info(CocoDetection(images, ann))
    torch.manual_seed(0)
    model = create_model(model_spec("ssdlite_mobilenet_v3_small", size=128, **classes))
    calibrate_detector_(model)  # background dominates, as after training
    spec = CocoDataSpec(train_images=str(images), train_ann=str(ann), val_images=str(val_images), val_ann=str(val_ann))
    return save_model_checkpoint(model, spec, tmp_path_factory.mktemp("det") / "last.pt")


@pytest.fixture(scope="module")
def segmenter() -> torch.nn.Module:
    torch.manual_seed(0)
    model = lraspp_mobilenet_v3_large(num_classes=7)
    calibrate_(model, lambda m: m(torch.rand(4, 3, 128, 160, generator=torch.Generator().manual_seed(4))))
    return model.eval()


def _images(n: int, h: int, w: int, seed: int) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.rand(1, 3, h, w, generator=g) for _ in range(n)]


def test_formats_say_why_a_combination_cannot_exist() -> None:
    assert format_of("m.xml") == "openvino" and format_of("m.pte") == "executorch" and format_of("m.onnx") == "onnx"
    assert format_of("m.onnx", "openvino") == "openvino"
    for fmt, precision in REFUSED:
        with pytest.raises(ValueError, match=f"--format {fmt} --precision {precision} is not offered: .*kernels"):
            check_combination(fmt, precision)
    check_combination("openvino", "bf16")
    with pytest.raises(ValueError, match="precision must be one of fp32, int8, got 'fp16'"):
        check_combination("onnx", "fp16")
    with pytest.raises(ValueError, match="int8 needs calibration images"):
        check_combination("openvino", "int8", [], exporting=True)
    with pytest.raises(ValueError, match="writes a .xml file"):
        export_artifact(torch.nn.Identity(), "m.onnx", "openvino")
    with pytest.raises(ValueError, match="int8 needs calibration images"):
        export_artifact(lraspp_mobilenet_v3_large(num_classes=3).eval(), "/nonexistent/m.onnx", "onnx", "int8")


def test_match_detections_counts_both_directions() -> None:
    a = {"boxes": torch.tensor([[0.0, 0, 10, 10], [20, 20, 40, 40]]), "scores": torch.tensor([0.9, 0.5]),
         "labels": torch.tensor([1, 2])}
    shifted = {"boxes": a["boxes"] + 1, "scores": a["scores"] - 0.01, "labels": a["labels"]}
    assert match_detections([a], [shifted])["agreement"] == 1.0
    wrong_label = {**shifted, "labels": torch.tensor([1, 1])}
    extra = {"boxes": torch.cat([shifted["boxes"], torch.tensor([[50.0, 50, 60, 60]])]),
             "scores": torch.tensor([0.89, 0.49, 0.3]), "labels": torch.tensor([1, 2, 3])}
    assert match_detections([a], [wrong_label])["agreement"] == 0.5
    assert match_detections([a], [extra])["agreement"] == pytest.approx(2 / 3)  # the extra box is unmatched
    low = {**extra, "scores": torch.tensor([0.89, 0.49, 0.05])}  # ... unless it scores under the floor
    assert match_detections([a], [low])["agreement"] == 1.0


def test_segmenter_artifacts_per_format_and_precision(segmenter, tmp_path) -> None:
    cal, images = _images(6, 128, 160, 5), _images(2, 96, 200, 6)  # checked at another size than calibrated
    bounds = {"fp32": 1e-4, "bf16": 0.12, "int8": 0.45}  # relative RMS error of the logits (see module doc)
    for fmt, suffix in (("onnx", ".onnx"), ("openvino", ".xml")):
        for precision, bound in bounds.items():
            if (fmt, precision) in REFUSED:
                continue
            path = export_artifact(segmenter, tmp_path / f"seg_{precision}{suffix}", fmt, precision, calibration=cal)
            engine = load_engine(path, threads=1)
            assert isinstance(engine, EngineModel) and engine.task == "seg" and engine.precision == precision
            meta = engine.metadata
            assert meta["num_classes"] == "7" and json.loads(meta["mean"]) == pytest.approx([0.485, 0.456, 0.406])
            result = check_artifact(segmenter, engine, images, precision)
            assert result["relative_rmse"] < bound, (fmt, precision, result)
            if precision == "fp32":
                assert result["passed"] and result["agreement"] > 0.999, result
            else:  # it is quantized / rounded: not the fp32 function
                assert result["relative_rmse"] > 1e-3, (fmt, precision, result)
            with torch.inference_mode():
                assert engine(images[0]).shape == (1, 7, 96, 200)


def test_int8_onnx_is_qdq_with_the_detector_tail_float(det_checkpoint, tmp_path) -> None:
    import onnx

    model, spec = load_trained_model(det_checkpoint)
    cal = calibration_images(spec=spec, count=4)
    assert len(cal) == 4 and cal[0].shape == (1, 3, 128, 128) and 0 <= cal[0].min() < cal[0].max() <= 1
    path = export_artifact(model, tmp_path / "det.onnx", "onnx", "int8", calibration=cal, run_spec=spec.to_dict())
    graph = onnx.load(str(path)).graph
    ops = {n.op_type for n in graph.node}
    assert {"QuantizeLinear", "DequantizeLinear", "Conv"} <= ops
    quantized_inputs = {i for n in graph.node if n.op_type == "DequantizeLinear" for i in n.output}
    convs = [n for n in graph.node if n.op_type == "Conv"]
    assert all(n.input[0] in quantized_inputs for n in convs)  # every convolution reads int8 activations
    softmax = [n for n in graph.node if n.op_type == "Softmax"]
    assert softmax and all(not n.input[0].endswith("DequantizeLinear_Output") for n in softmax)
    assert all(n.input[0] not in quantized_inputs for n in softmax)  # box decoding and softmax stay float
    engine = load_engine(path, threads=1)
    assert engine.run_spec_json() == spec.to_dict() and engine.precision == "int8"
    assert engine.class_names == spec.model.class_names and engine.size == (128, 128)


def test_openvino_detector_bf16_int8_and_metadata(det_checkpoint, tmp_path) -> None:
    from mobiledense.tools.deploy.openvino import OpenVinoModel, cpu_capabilities

    model, spec = load_trained_model(det_checkpoint)
    cal = calibration_images(spec=spec, count=6)
    images = _images(3, 150, 210, 7)
    for precision, bound in (("fp32", 1e-4), ("bf16", 0.2), ("int8", 0.7)):
        path = export_artifact(model, tmp_path / f"det_{precision}.xml", "openvino", precision, calibration=cal,
                               run_spec=spec.to_dict())
        assert path.with_suffix(".bin").is_file()
        engine = load_engine(path, threads=1)
        assert isinstance(engine, OpenVinoModel) and engine.precision == precision
        assert engine.run_spec_json() == spec.to_dict() and engine.score_thresh == model.score_thresh
        result = check_artifact(model, engine, images, precision)
        assert result["relative_rmse"] < bound, (precision, result)
        if precision == "fp32":
            assert result["passed"] and result["agreement"] > 0.9 and result["max_box_diff"] < 5e-3 * result["box_scale"], result
        bf16_cpu = "BF16" in cpu_capabilities()
        assert engine.inference_precision == ("bf16" if precision == "bf16" and bf16_cpu else "f32")
    with pytest.raises(ValueError, match="int8 is in the weights"):
        OpenVinoModel(tmp_path / "det_int8.xml", precision="fp32")
    # Images of any size share one static compilation at the model size: the detections of the dynamic IR.
    static, dynamic = (OpenVinoModel(tmp_path / "det_fp32.xml", threads=1, static_shapes=s) for s in (True, False))
    sized = [torch.rand(1, 3, 150, 210), torch.rand(1, 3, 90, 300)]
    with torch.inference_mode():
        for x in sized:
            torch.testing.assert_close(static.raw(torch.nn.functional.interpolate(
                x, size=(128, 128), mode="bilinear", align_corners=False))[1], dynamic.raw(x)[1], atol=1e-3, rtol=0)
            assert compare_detections(dynamic(x), static(x))["passed"]
    assert list(static._compiled) == [(1, 3, 128, 128)] and list(dynamic._compiled) == [()]


def test_export_cli_openvino_int8_then_eval_and_predict_the_artifact(det_checkpoint, data, tmp_path,
                                                                     capsys) -> None:
    xml = tmp_path / "det.xml"
    code = main(["export", "--checkpoint", str(det_checkpoint), "--output", str(xml), "--precision", "int8",
                 "--calib-count", "4", "--min-agreement", "0", "--repeats", "1", "--threads", "1"])
    text = capsys.readouterr().out
    assert code == 0, text
    assert "calibrating on 4 images" in text and "openvino int8 vs PyTorch fp32 on 8 val images of the run" in text
    assert "OpenVINO CPU:" in text and "latency batch 1" in text
    # Random weights: the default int8 agreement (0.9) is out of reach, and the export says so.
    assert main(["export", "--checkpoint", str(det_checkpoint), "--output", str(xml), "--precision", "int8",
                 "--calib-count", "4", "--repeats", "0", "--threads", "1"]) == 1
    assert "differs from PyTorch beyond the tolerance" in capsys.readouterr().out
    # An fp32 artifact is scored exactly as PyTorch scores the checkpoint, with no data flag (its run spec).
    onnx_path = tmp_path / "det.onnx"
    assert main(["export", "--checkpoint", str(det_checkpoint), "--output", str(onnx_path), "--repeats", "0"]) == 0
    stats = {}
    for name, flags in (("pytorch", ["--checkpoint", str(det_checkpoint)]), ("onnx", ["--artifact", str(onnx_path)])):
        assert main(["eval", "det", *flags, "--no-progress", "--overlays", "0", "--workers", "0", "--output-dir",
                     str(tmp_path / name)]) == 0
        stats[name] = json.loads((tmp_path / name / "metrics.json").read_text())["stats"]
    assert stats["pytorch"]["AR100"] > 0
    for key, value in stats["pytorch"].items():
        assert stats["onnx"][key] == pytest.approx(value, abs=1e-4), key
    capsys.readouterr()
    out = tmp_path / "pred"
    assert main(["predict", "det", str(data["val"][0]), "--artifact", str(onnx_path), "--score-thresh", "0.05",
                 "--no-overlay", "--output-dir", str(out)]) == 0
    rows = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert len(rows) == 6 and sum(len(r["detections"]) for r in rows) > 0
    assert rows[0]["detections"][0]["name"] in DetectionTask.class_info(CocoDetection(*data["train"]))["class_names"]


def test_eval_and_predict_refuse_wrong_engine_flags(det_checkpoint, segmenter, tmp_path, capsys) -> None:
    onnx_path = export_artifact(segmenter, tmp_path / "seg.onnx", "onnx")
    assert main(["eval", "det", "--artifact", str(onnx_path)]) == 2
    assert "is a 'seg' model, not 'det'" in capsys.readouterr().err
    assert main(["eval", "det", "--checkpoint", str(det_checkpoint), "--engine", "openvino"]) == 2
    assert "--engine openvino runs an exported model: give --artifact FILE" in capsys.readouterr().err
    assert main(["eval", "seg", "--artifact", str(onnx_path), "--engine", "openvino"]) == 2
    assert "OpenVINO IR (.xml" in capsys.readouterr().err
    assert main(["eval", "seg", "--artifact", str(onnx_path)]) == 2  # exported without a run: no data known
    assert "carries no run spec" in capsys.readouterr().err
    assert main(["export", "--model", "lraspp_mobilenet_v3_small", "--output", str(tmp_path / "m.onnx"),
                 "--precision", "bf16"]) == 2
    assert "--format onnx --precision bf16 is not offered: onnxruntime's CPU provider" in capsys.readouterr().err


def test_eval_seg_scores_an_openvino_artifact_as_pytorch(segmenter, tmp_path) -> None:
    from mobiledense.datasets.synthetic_seg import make_synthetic_cityscapes

    root = make_synthetic_cityscapes(tmp_path / "city", num_train=2, num_val=2, size=(96, 192), seed=0)
    seg = lraspp_mobilenet_v3_large(num_classes=19)
    calibrate_(seg, lambda m: m(torch.rand(2, 3, 96, 192)))
    ckpt = save_model_checkpoint(seg.eval(), CityscapesDataSpec(root=str(root), crop=(96, 192)), tmp_path / "last.pt")
    xml = tmp_path / "seg.xml"
    assert main(["export", "--checkpoint", str(ckpt), "--output", str(xml), "--repeats", "0"]) == 0
    miou = {}
    for name, flags in (("pytorch", ["--checkpoint", str(ckpt)]), ("openvino", ["--artifact", str(xml)])):
        assert main(["eval", "seg", *flags, "--no-progress", "--workers", "0", "--output-dir",
                     str(tmp_path / name)]) == 0
        miou[name] = json.loads((tmp_path / name / "metrics.json").read_text())
    assert miou["openvino"]["engine"] == "openvino" and miou["pytorch"]["engine"] == "pytorch"
    assert miou["openvino"]["mIoU"] == pytest.approx(miou["pytorch"]["mIoU"], abs=1e-4)
    assert miou["openvino"]["pixel_acc"] == pytest.approx(miou["pytorch"]["pixel_acc"], abs=1e-4)
    # predict seg draws the artifact's label maps as it draws the checkpoint's.
    import cv2

    frames = sorted((root / "leftImg8bit" / "val").rglob("*.png"))
    maps = {}
    for name, flags in (("pytorch", ["--checkpoint", str(ckpt)]), ("openvino", ["--artifact", str(xml)])):
        assert main(["predict", "seg", *map(str, frames), *flags, "--output-dir", str(tmp_path / f"p_{name}")]) == 0
        maps[name] = [cv2.imread(str(p), cv2.IMREAD_UNCHANGED)
                      for p in sorted((tmp_path / f"p_{name}").glob("*_labelIds.png"))]
    assert len(maps["openvino"]) == len(maps["pytorch"]) == len(frames) == 2
    for a, b in zip(maps["openvino"], maps["pytorch"]):
        assert a.shape == b.shape == (96, 192) and (a == b).mean() > 0.999


def test_calibration_images_from_a_folder_are_spread_and_resized(tmp_path) -> None:
    import cv2
    import numpy as np

    for i in range(5):
        cv2.imwrite(str(tmp_path / f"{i}.png"), np.full((40, 60, 3), 50 * i, np.uint8))
    (tmp_path / "bad.jpg").write_bytes(b"not a jpeg")
    assert spaced(10, 3) == [0, 4, 9] and spaced(2, 5) == [0, 1]
    with pytest.raises(ValueError, match="cannot read .*bad.jpg"):
        calibration_images(folder=tmp_path, count=6)
    (tmp_path / "bad.jpg").unlink()
    images = calibration_images(folder=tmp_path, count=3, size=(32, 48))
    assert [tuple(x.shape) for x in images] == [(1, 3, 32, 48)] * 3
    assert [round(float(x.mean()) * 255) for x in images] == [0, 100, 200]
    with pytest.raises(ValueError, match="int8 needs calibration images"):
        calibration_images()


def test_openvino_leaves_a_signal_stack_python_handlers_fit_in(segmenter, tmp_path) -> None:
    """OpenVINO installs a 20 KB sigaltstack when it compiles; with AMX state a Python handler (SIGCHLD of a
    DataLoader worker) overflowed it and killed the process (seen: eval --artifact after a bf16 run)."""
    import ctypes
    import sys

    from mobiledense.tools.deploy.openvino import SIGNAL_STACK_BYTES, OpenVinoModel

    if not sys.platform.startswith("linux"):
        pytest.skip("sigaltstack is checked on Linux")

    class StackT(ctypes.Structure):
        _fields_ = [("ss_sp", ctypes.c_void_p), ("ss_flags", ctypes.c_int), ("ss_size", ctypes.c_size_t)]

    path = export_artifact(segmenter, tmp_path / "seg.xml", "openvino", "bf16")
    for shape in ((64, 96), (96, 64)):  # every compilation (one per input shape) installs a new one
        with torch.inference_mode():
            OpenVinoModel(path, threads=1)(torch.rand(1, 3, *shape))
        current = StackT()
        assert ctypes.CDLL(None).sigaltstack(None, ctypes.byref(current)) == 0
        assert current.ss_flags & 2 or current.ss_size >= SIGNAL_STACK_BYTES, current.ss_size
    from torch.utils.data import DataLoader

    assert sum(len(b) for b in DataLoader(list(range(6)), batch_size=2, num_workers=2)) == 6  # SIGCHLD survived


def test_dropped_artifacts_are_freed_in_the_parent_not_in_a_forked_worker(segmenter, tmp_path) -> None:
    """A DataLoader worker that collected an inherited OpenVINO model hung for ever in its thread pool's
    destructor (the pool's threads exist only in the parent): models are freed when dropped (no
    reference cycle), and once an artifact is loaded the parent collects its garbage before every fork."""
    import gc
    import os
    import weakref

    from mobiledense.tools.deploy.openvino import OpenVinoModel

    path = export_artifact(segmenter, tmp_path / "seg.xml", "openvino", "fp32")
    model = OpenVinoModel(path, threads=1)
    with torch.inference_mode():
        model(torch.rand(1, 3, 64, 96))
    ref = weakref.ref(model)
    gc.disable()
    try:
        del model
        assert ref() is None, "an OpenVinoModel outlived its last reference (a reference cycle)"

        freed_in: list[int] = []

        class Cyclic:
            def __init__(self) -> None:
                self.me = self

            def __del__(self) -> None:
                freed_in.append(os.getpid())

        Cyclic()  # unreachable, only a collection frees it
        pid = os.fork()
        if pid == 0:
            os._exit(0)
        os.waitpid(pid, 0)
        assert freed_in == [os.getpid()], "garbage was not collected in the parent before the fork"
    finally:
        gc.enable()

