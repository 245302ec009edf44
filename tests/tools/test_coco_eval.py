"""COCO evaluation: reference numbers, backend agreement, results export and round trip on real data."""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from mobiledense.tools.evaluation.coco import (
    BACKEND_ATOL,
    STAT_NAMES,
    detections_to_coco_results,
    evaluate_coco,
    write_coco_results,
)

BACKENDS = ["pycocotools", "faster_coco_eval"]
PYCOCO_ONE = 1.0 / (1.0 + np.spacing(1))  # pycocotools' precision for tp=1, fp=0


def _fixture_files(d: Path, iou_type: str) -> tuple[Path, Path, list[float]]:
    expected = json.loads((d / "expected_stats.json").read_text())
    assert expected["stats_order"] == list(STAT_NAMES)
    return d / "instances_val2014_100.json", d / f"instances_val2014_fake{iou_type}100_results.json", expected[iou_type]


@pytest.mark.parametrize("iou_type", ["bbox", "segm"])
def test_pycocotools_reproduces_reference_exactly(coco_eval_fixture: Path, iou_type: str):
    gt, dets, expected = _fixture_files(coco_eval_fixture, iou_type)
    result = evaluate_coco(gt, dets, iou_type, backend="pycocotools")
    assert result.stats.tolist() == expected  # bit-exact, full precision
    assert result.backend == "pycocotools" and result.num_detections == 734 and result.num_images == 100
    assert result.as_dict()["AP"] == expected[0] and result.seconds > 0


@pytest.mark.parametrize("iou_type", ["bbox", "segm"])
def test_faster_coco_eval_agrees_to_the_documented_ulp(coco_eval_fixture: Path, iou_type: str):
    pytest.importorskip("faster_coco_eval")
    gt, dets, expected = _fixture_files(coco_eval_fixture, iou_type)
    fast = evaluate_coco(gt, dets, iou_type, backend="faster_coco_eval")
    ref = evaluate_coco(gt, dets, iou_type, backend="pycocotools")
    assert fast.backend == "faster_coco_eval"
    np.testing.assert_allclose(fast.stats, expected, rtol=0, atol=BACKEND_ATOL)
    np.testing.assert_array_equal(fast.recall, ref.recall)
    np.testing.assert_array_equal(fast.extras["scores"], ref.extras["scores"])
    # The only difference: pycocotools' tp / (tp + fp + eps) at tp + fp == 1 (module docstring).
    diff = fast.precision != ref.precision
    assert diff.any()
    assert (fast.precision[diff] == 1.0).all() and (ref.precision[diff] == PYCOCO_ONE).all()


def test_per_class_table(coco_eval_fixture: Path, tmp_path: Path):
    gt, dets, expected = _fixture_files(coco_eval_fixture, "bbox")
    result = evaluate_coco(gt, dets, "bbox", backend="pycocotools")
    assert len(result.per_class) == 80 and result.category_ids == sorted(result.category_ids)
    present = [c for c in result.per_class if c.num_gt > 0]
    absent = [c for c in result.per_class if c.num_gt == 0]
    assert all(math.isnan(c.ap) and math.isnan(c.ap50) for c in absent)
    assert not any(math.isnan(c.ap) for c in present)
    # every present class has all T x R precision entries, so the mean of class APs is the AP
    assert np.mean([c.ap for c in present]) == pytest.approx(expected[0], abs=1e-12)
    assert np.mean([c.ap50 for c in present]) == pytest.approx(expected[1], abs=1e-12)
    person = next(c for c in result.per_class if c.name == "person")
    assert person.category_id == 1 and person.num_gt > 0 and 0 < person.ap < person.ap50 <= 1
    assert "person" in result.summary(per_class=True)
    doc = json.loads(result.to_json(tmp_path / "m" / "coco.json").read_text())
    assert doc["stats"]["AP"] == expected[0] and len(doc["per_class"]) == 80
    rows = {row["name"]: row for row in doc["per_class"]}
    assert rows[absent[0].name]["ap"] is None and rows["person"]["ap"] == person.ap  # NaN -> null


def test_auto_backend_and_inputs(coco_eval_fixture: Path):
    from pycocotools.coco import COCO

    gt, dets, expected = _fixture_files(coco_eval_fixture, "bbox")
    det_list = json.loads(dets.read_text())
    snapshot = json.dumps(det_list)
    coco = COCO(str(gt))
    auto = evaluate_coco(coco, det_list, "bbox")
    try:
        import faster_coco_eval  # noqa: F401
        assert auto.backend == "faster_coco_eval"
    except ImportError:
        assert auto.backend == "pycocotools"
    np.testing.assert_allclose(auto.stats, expected, rtol=0, atol=BACKEND_ATOL)
    assert json.dumps(det_list) == snapshot  # caller's detections untouched
    assert all("ignore" not in a for a in coco.dataset["annotations"])  # caller's GT untouched
    # a subset of images: only those are evaluated
    sub = evaluate_coco(gt, [d for d in det_list if d["image_id"] in (42, 73, 74)], "bbox",
                        backend="pycocotools", image_ids=[42, 73, 74])
    assert sub.num_images == 3 and sub.stats[0] != expected[0]


def test_empty_and_invalid_detections(coco_eval_fixture: Path, tmp_path: Path):
    gt, dets, _ = _fixture_files(coco_eval_fixture, "bbox")
    for backend in BACKENDS:
        with pytest.warns(UserWarning, match="no detections"):
            result = evaluate_coco(gt, [], "bbox", backend=backend)
        assert (result.stats == 0).all()
    ok = {"image_id": 42, "category_id": 18, "bbox": [1, 2, 3, 4], "score": 0.5}
    with pytest.raises(ValueError, match=r"not among the evaluated ground-truth images: \[999999\]"):
        evaluate_coco(gt, [ok, {**ok, "image_id": 999999}], backend="pycocotools")
    with pytest.raises(ValueError, match=r"category ids \[0, 91\].*original COCO ids"):
        evaluate_coco(gt, [ok, {**ok, "category_id": 0}, {**ok, "category_id": 91}], backend="pycocotools")
    with pytest.raises(ValueError, match="lacks \\['score'\\]"):
        evaluate_coco(gt, [{k: v for k, v in ok.items() if k != "score"}], backend="pycocotools")
    with pytest.raises(ValueError, match="negative width"):
        evaluate_coco(gt, [{**ok, "bbox": [1, 2, -3, 4]}], backend="pycocotools")
    with pytest.raises(FileNotFoundError, match="missing.json"):
        evaluate_coco(tmp_path / "missing.json", [ok])
    with pytest.raises(FileNotFoundError, match="nodets.json"):
        evaluate_coco(gt, tmp_path / "nodets.json")
    with pytest.raises(ValueError, match="backend must be one of"):
        evaluate_coco(gt, [ok], backend="mmdet")


def _gt_as_predictions(coco: dict) -> tuple[list[dict], list[int], dict[int, int]]:
    cat_ids = sorted(c["id"] for c in coco["categories"])
    label_to_cat = {i + 1: c for i, c in enumerate(cat_ids)}
    cat_to_label = {c: i for i, c in label_to_cat.items()}
    by_image: dict[int, list[dict]] = {img["id"]: [] for img in coco["images"]}
    for a in coco["annotations"]:
        if not a["iscrowd"]:
            by_image[a["image_id"]].append(a)
    preds = []
    for anns in by_image.values():
        xywh = torch.tensor([a["bbox"] for a in anns], dtype=torch.float32).reshape(-1, 4)
        preds.append({"boxes": torch.cat([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], 1),  # xyxy, float32
                      "scores": torch.linspace(0.9, 0.5, len(anns)),
                      "labels": torch.tensor([cat_to_label[a["category_id"]] for a in anns], dtype=torch.int64)})
    return preds, list(by_image), label_to_cat


@pytest.mark.parametrize("backend", BACKENDS)
def test_ground_truth_round_trip_gives_ap_one(coco_dir: Path, tmp_path: Path, backend: str):
    if backend == "faster_coco_eval":
        pytest.importorskip("faster_coco_eval")
    ann_file = coco_dir / "annotations" / "instances_val2017.json"
    coco = json.loads(ann_file.read_text())
    preds, image_ids, label_to_cat = _gt_as_predictions(coco)
    sizes = [(img["height"], img["width"]) for img in coco["images"]]
    results = detections_to_coco_results(preds, image_ids, label_to_cat, orig_sizes=sizes)
    assert len(results) == sum(not a["iscrowd"] for a in coco["annotations"])
    path = write_coco_results(results, tmp_path / "out" / "results.json")
    result = evaluate_coco(ann_file, path, "bbox", backend=backend)
    for name in ("AP", "AP50", "AP75", "AR100"):
        assert result.as_dict()[name] == pytest.approx(1.0, abs=1e-12), name
    # a broken export (contiguous labels written as category ids) must not score 1
    shifted = [{**r, "category_id": label_to_cat[((list(label_to_cat.values()).index(r["category_id"]) + 1) % 80) + 1]}
               for r in results]
    assert evaluate_coco(ann_file, shifted, backend=backend).stats[0] < 0.05


def test_detections_to_coco_results_format():
    preds = [{"boxes": torch.tensor([[10.123, 20.0, 30.5, 60.25], [-5.0, -1.0, 700.0, 20.0]]),
              "scores": torch.tensor([0.912345678, 0.1]), "labels": torch.tensor([1, 2])},
             {"boxes": np.zeros((0, 4)), "scores": np.zeros(0), "labels": np.zeros(0, dtype=np.int64)}]
    sizes = [(torch.tensor(480), torch.tensor(640)), (10, 10)]  # ints or 0-d tensors (targets' orig_size)
    out = detections_to_coco_results(preds, [7, 8], {1: 1, 2: 90}, orig_sizes=sizes)
    assert out == [
        {"image_id": 7, "category_id": 1, "bbox": [10.12, 20.0, 20.38, 40.25], "score": 0.91235},
        {"image_id": 7, "category_id": 90, "bbox": [0.0, 0.0, 640.0, 20.0], "score": 0.1},  # clipped
    ]
    assert all(type(v) is float for v in out[0]["bbox"]) and json.dumps(out)
    with pytest.raises(ValueError, match=r"labels \[0\].*background"):
        detections_to_coco_results([{**preds[0], "labels": torch.tensor([0, 1])}], [7], {1: 1, 2: 90})
    with pytest.raises(ValueError, match="x2 >= x1"):
        detections_to_coco_results([{**preds[0], "boxes": torch.tensor([[5.0, 0, 1, 1], [0, 0, 1, 1]])}], [7],
                                   {1: 1, 2: 90})
    with pytest.raises(ValueError, match="2 predictions but 1 image ids"):
        detections_to_coco_results(preds, [7], {1: 1, 2: 90})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert detections_to_coco_results([], [], {1: 1}) == []


def test_eval_det_scores_any_results_file_with_its_reports(coco_eval_fixture: Path, tmp_path: Path, capsys):
    """``eval det --results FILE --ann ANN``: the reference numbers exactly, plus PR, per-class and size PNGs."""
    import cv2

    from mobiledense.tools.cli import main
    from mobiledense.tools.evaluation.reports import class_pr_curves

    gt, dets, expected = _fixture_files(coco_eval_fixture, "bbox")
    out = tmp_path / "eval"
    assert main(["eval", "det", "--results", str(dets), "--ann", str(gt), "--backend", "pycocotools",
                 "--output-dir", str(out)]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert list(metrics["stats"].values()) == expected  # bit-exact: any toolkit's results, our report
    assert "AP50" in capsys.readouterr().out
    for name in ("pr_curves.png", "per_class_pr.png", "per_class_ap.png", "size_breakdown.png"):
        img = cv2.imread(str(out / name))
        assert img is not None and img.shape[0] > 300 and img.std() > 10, name
    result = evaluate_coco(gt, dets, "bbox", backend="pycocotools")
    gt_json = json.loads(Path(gt).read_text())
    areas = [a["area"] for a in gt_json["annotations"] if not a["iscrowd"]]
    assert result.extras["gt_per_area"] == {"small": sum(a < 32 ** 2 for a in areas),
                                            "medium": sum(32 ** 2 <= a < 96 ** 2 for a in areas),
                                            "large": sum(a >= 96 ** 2 for a in areas)}
    for k, c in enumerate(result.per_class):  # each panel's curves average to the class's AP and AP50
        if c.num_gt:
            curves = class_pr_curves(result, k)
            assert curves["0.50:0.95"].mean() == pytest.approx(c.ap) and curves["0.50"].mean() == pytest.approx(c.ap50)
    segm_gt, segm_dets, segm_expected = _fixture_files(coco_eval_fixture, "segm")
    assert main(["eval", "det", "--results", str(segm_dets), "--ann", str(segm_gt), "--iou-type", "segm",
                 "--backend", "pycocotools", "--output-dir", str(tmp_path / "segm")]) == 0
    assert list(json.loads((tmp_path / "segm" / "metrics.json").read_text())["stats"].values()) == segm_expected
    assert main(["eval", "det", "--results", str(dets), "--output-dir", str(tmp_path / "x")]) == 2
    assert "--results needs --ann" in capsys.readouterr().err
    bad = json.loads(Path(dets).read_text())
    bad[0]["image_id"] = 999999999
    (tmp_path / "bad.json").write_text(json.dumps(bad))
    assert main(["eval", "det", "--results", str(tmp_path / "bad.json"), "--ann", str(gt), "--output-dir",
                 str(tmp_path / "y")]) == 2
    assert "999999999" in capsys.readouterr().err
