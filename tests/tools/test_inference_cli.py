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
from mobiledense.tools.benchmark import calibrate_, calibrate_detector_, compare_detections
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
    calibrate_detector_(model)  # background dominates, as after training
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


def test_eval_det_draws_the_ground_truth_beside_the_detections(data, det_checkpoint, tmp_path: Path) -> None:
    from mobiledense.tools.evaluation.overlays import _colour

    images, ann = data["val"]
    out = tmp_path / "eval"
    assert main(["eval", "det", "--checkpoint", str(det_checkpoint), "--device", "cpu", "--no-progress",
                 "--overlays", "3", "--overlay-score", "0.05", "--output-dir", str(out)]) == 0
    dataset = CocoDetection(images, ann)
    pngs = sorted((out / "overlays").glob("*.png"))
    assert [p.stem for p in pngs] == sorted(dataset.image_path(i).stem for i in range(3))
    for i in range(3):
        panel = cv2.imread(str(out / "overlays" / f"{dataset.image_path(i).stem}.png"))
        h, w = dataset.load_image(i).shape[:2]
        f = 480 / max(h, w)  # thumbnails are drawn enlarged to 480 px
        h, w = round(h * f), round(w * f)
        gap = panel.shape[1] - 2 * w
        assert 4 <= gap <= 16 and panel.shape[0] > h  # [ground truth | gap | detections] under title bars
        left = panel[panel.shape[0] - h:, :w]
        target = dataset.raw_target(i)
        assert len(target["labels"]) > 0
        for (x1, y1, x2, y2), label in zip((target["boxes"] * f).round().astype(int), target["labels"]):
            side = left[min(max(y1, 0), h - 1) + 1: min(y2, h), min(max(x1, 0), w - 1)]  # the box's left side
            assert (side == _colour(int(label))).all(-1).mean() > 0.5  # mostly its line (a tag may cover some)
    with pytest.raises(SystemExit):  # argparse: --overlays is an int
        main(["eval", "det", "--checkpoint", str(det_checkpoint), "--overlays", "x"])


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


def test_predict_seg_writes_colour_and_overlay_pngs_with_a_legend(tmp_path: Path) -> None:
    from mobiledense.datasets.cityscapes_labels import TRAIN_ID_COLORS, colorize_train_ids, label_ids_to_train_ids

    torch.manual_seed(0)
    model = create_segmenter("mobilenet_v3_small", 19, pool="global")
    calibrate_(model, lambda m: m(torch.rand(2, 3, 128, 160)))
    ckpt = save_model_checkpoint(model, CityscapesDataSpec(root=str(tmp_path), crop=(96, 192)), tmp_path / "last.pt")
    (tmp_path / "in").mkdir()
    cv2.imwrite(str(tmp_path / "in" / "f.png"), np.random.default_rng(0).integers(0, 256, (96, 192, 3), np.uint8))
    for name, flag in (("legend", []), ("plain", ["--no-legend", "--no-outline"])):
        assert main(["predict", "seg", str(tmp_path / "in"), "--checkpoint", str(ckpt), "--device", "cpu",
                     "--output-dir", str(tmp_path / name), *flag]) == 0
    train_ids = label_ids_to_train_ids(cv2.imread(str(tmp_path / "legend" / "f_labelIds.png"), cv2.IMREAD_UNCHANGED))
    colour = cv2.imread(str(tmp_path / "legend" / "f_color.png"))[..., ::-1]
    overlay = cv2.imread(str(tmp_path / "legend" / "f_overlay.png"))[..., ::-1]
    assert colour.shape[0] > 96 and colour.shape[1] == 192 and overlay.shape == colour.shape
    np.testing.assert_array_equal(colour[:96], colorize_train_ids(train_ids))
    strip = colour[96:]
    for cls in range(19):
        n = int((strip == TRAIN_ID_COLORS[cls]).all(-1).sum())
        assert (n > 30) if (train_ids == cls).any() else (n < 10), cls  # a swatch per class predicted
    assert (overlay[:96] == 255).all(-1).sum() > 0  # region outlines
    plain = cv2.imread(str(tmp_path / "plain" / "f_color.png"))[..., ::-1]
    np.testing.assert_array_equal(plain, colorize_train_ids(train_ids))  # --no-legend: the image's own size
    assert cv2.imread(str(tmp_path / "plain" / "f_overlay.png")).shape == (96, 192, 3)
