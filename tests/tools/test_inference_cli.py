"""``eval``/``predict`` run :func:`optimize_for_inference` on CPU; ``--eager`` runs the model as trained.

Both must give the same detections, metrics and label maps (up to float rounding). The
weights are calibrated (He-initialised, BN statistics measured, background-dominated
scores, as a trained detector has), so a wrong fusion would show and near-ties do not.
"""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from mobiledense.datasets import CocoDetection, make_synthetic_coco
from mobiledense.heads import create_model, create_segmenter, inference_model, model_spec
from mobiledense.tools.benchmark import calibrate_, compare_detections
from mobiledense.tools.cli import main
from mobiledense.tools.engine import CityscapesDataSpec, CocoDataSpec
from mobiledense.tools.engine.tasks import DetectionTask, save_model_checkpoint



@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict[str, tuple[Path, Path]]:
    return make_synthetic_coco(tmp_path_factory.mktemp("shapes"), num_images=10, size_range=(96, 160),
                               val_fraction=0.5, seed=1)


@pytest.fixture(scope="module")
def det_checkpoint(data, tmp_path_factory) -> Path:
    (images, ann), (val_images, val_ann) = data["train"], data["val"]
    classes = DetectionTask.class_info(CocoDetection(images, ann))
    torch.manual_seed(0)
    model = create_model(model_spec("ssdlite_mobilenet_v3_small", size=128, **classes))
    k = model.num_classes
    x = torch.rand(4, 3, 128, 128, generator=torch.Generator().manual_seed(1)) * 2 - 1
    calibrate_(model, lambda m: m.head_outputs(x))
    for block in model.head.classification_head.module_list:
        block[1].bias.data.view(-1, k)[:, 0] += 3.0  # background dominates, as after training
    spec = CocoDataSpec(train_images=str(images), train_ann=str(ann), val_images=str(val_images), val_ann=str(val_ann))
    return save_model_checkpoint(model, spec, tmp_path_factory.mktemp("det") / "last.pt")


def _detections(out: Path) -> list[dict[str, torch.Tensor]]:
    rows = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    return [{"boxes": torch.tensor([d["box_xyxy"] for d in r["detections"]]).reshape(-1, 4),
             "scores": torch.tensor([d["score"] for d in r["detections"]]),
             "labels": torch.tensor([d["label"] for d in r["detections"]], dtype=torch.int64)} for r in rows]


def test_predict_det_fast_path_equals_eager(data, det_checkpoint, tmp_path: Path) -> None:
    images = data["val"][0]
    for flag in ([], ["--eager"]):
        out = tmp_path / ("eager" if flag else "fast")
        assert main(["predict", "det", str(images), "--checkpoint", str(det_checkpoint), "--score-thresh", "0.05",
                     "--device", "cpu", "--no-overlay", "--output-dir", str(out), *flag]) == 0
    fast, eager = _detections(tmp_path / "fast"), _detections(tmp_path / "eager")
    # Float rounding of the folded weights (~1e-5 in scores; up to ~1.2e-4 seen on AMD EPYC kernels) plus the JSON rounding (1e-5 / 1e-2 px).
    check = compare_detections(eager, fast, score_atol=5e-4, box_atol=0.05)
    assert check["passed"] and check["detections"] > 10 and check["max_score_diff"] > 0, check


def test_eval_det_fast_path_gives_the_same_metrics(data, det_checkpoint, tmp_path: Path) -> None:
    images, ann = data["val"]
    stats = []
    for flag in ([], ["--eager"]):
        out = tmp_path / ("eager" if flag else "fast")
        assert main(["eval", "det", "--checkpoint", str(det_checkpoint), "--val-images", str(images),
                     "--val-ann", str(ann), "--device", "cpu", "--no-progress", "--output-dir", str(out), *flag]) == 0
        stats.append(json.loads((out / "metrics.json").read_text())["stats"])
    assert stats[0].keys() == stats[1].keys() and stats[0]["AR100"] > 0
    assert np.allclose(list(stats[0].values()), list(stats[1].values()), atol=1e-6), stats


def test_inference_model_is_optimised_on_cpu_only_without_eager() -> None:
    model = create_segmenter("mobilenet_v3_small", 5, pool="global")
    fast = inference_model(model, torch.device("cpu"))
    assert getattr(fast, "optimized_for_inference", False) and fast is not model and not model.training
    assert inference_model(model, torch.device("cpu"), eager=True) is model
    x = torch.rand(1, 3, 96, 128)
    with torch.inference_mode():
        torch.testing.assert_close(fast(x), model(x), atol=1e-4, rtol=1e-4)


def test_predict_seg_fast_path_equals_eager(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = create_segmenter("mobilenet_v3_small", 19, pool="global")
    calibrate_(model, lambda m: m(torch.rand(2, 3, 128, 160)))
    # crop = base size = the images' size: the run's eval resolution is the images' own
    ckpt = save_model_checkpoint(model, CityscapesDataSpec(root=str(tmp_path), crop=(96, 192)), tmp_path / "last.pt")
    rng = np.random.default_rng(0)
    (tmp_path / "in").mkdir()
    for i in range(2):
        cv2.imwrite(str(tmp_path / "in" / f"f{i}.png"), rng.integers(0, 256, (96, 192, 3), dtype=np.uint8))
    maps = {}
    for name, flag in (("fast", []), ("eager", ["--eager"])):
        assert main(["predict", "seg", str(tmp_path / "in"), "--checkpoint", str(ckpt), "--device", "cpu",
                     "--output-dir", str(tmp_path / name), *flag]) == 0
        maps[name] = sorted((tmp_path / name).rglob("*labelIds*.png"))
    assert len(maps["fast"]) == len(maps["eager"]) == 2
    for a, b in zip(maps["fast"], maps["eager"]):
        la, lb = cv2.imread(str(a), cv2.IMREAD_UNCHANGED), cv2.imread(str(b), cv2.IMREAD_UNCHANGED)
        assert la.shape == (96, 192) and (la == lb).mean() > 0.999  # argmax of equal logits (float rounding)
