"""Report writers produce real, readable PNGs."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from mobiledense.datasets.cityscapes_labels import CLASS_NAMES
from mobiledense.tools.evaluation.coco import evaluate_coco
from mobiledense.tools.evaluation.reports import plot_confusion_matrix, plot_per_class_bars, plot_pr_curves, pr_curves


def _read_png(path: Path, min_h: int, min_w: int) -> np.ndarray:
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    img = cv2.imread(str(path), cv2.IMREAD_COLOR)
    assert img is not None and img.shape[0] >= min_h and img.shape[1] >= min_w
    assert img.std() > 10  # something was drawn, not a blank canvas
    return img


@pytest.fixture(scope="module")
def coco_result(coco_eval_fixture: Path):
    d = coco_eval_fixture
    return evaluate_coco(d / "instances_val2014_100.json", d / "instances_val2014_fakebbox100_results.json",
                         backend="pycocotools")


def test_pr_curves(coco_result, tmp_path: Path):
    curves = pr_curves(coco_result)
    assert set(curves) == {"0.50", "0.75", "0.50:0.95"} and all(c.shape == (101,) for c in curves.values())
    for key, stat in (("0.50", 1), ("0.75", 2), ("0.50:0.95", 0)):
        assert curves[key].mean() == pytest.approx(coco_result.stats[stat], abs=1e-12)
        assert (np.diff(curves[key]) <= 1e-12).all()  # interpolated precision never rises with recall
    _read_png(plot_pr_curves(coco_result, tmp_path / "sub" / "pr.png"), 400, 500)


def test_per_class_bars(coco_result, tmp_path: Path):
    rows = coco_result.per_class
    path = plot_per_class_bars([c.name for c in rows], [c.ap for c in rows], tmp_path / "ap.png", "bbox AP")
    _read_png(path, 80 * 25, 600)  # 80 classes, NaN rows included
    with pytest.raises(ValueError, match="2 names but 1 values"):
        plot_per_class_bars(["a", "b"], [0.5], tmp_path / "x.png", "t")


def test_confusion_matrix(tmp_path: Path):
    rng = np.random.default_rng(0)
    conf = np.concatenate([rng.integers(0, 50, (19, 19)) + 1000 * np.eye(19, dtype=np.int64),
                           rng.integers(0, 50, (19, 1))], 1)  # (K, K + 1): last column = void
    _read_png(plot_confusion_matrix(conf, CLASS_NAMES, tmp_path / "cm.png"), 500, 500)
    _read_png(plot_confusion_matrix(conf[:, :19], CLASS_NAMES, tmp_path / "cm_raw.png", normalize=False), 500, 500)
    with pytest.raises(ValueError, match="does not fit 3 names"):
        plot_confusion_matrix(conf, ["a", "b", "c"], tmp_path / "bad.png")
    with pytest.raises(ValueError, match="end in .png"):
        plot_confusion_matrix(conf, CLASS_NAMES, tmp_path / "cm.jpg")
