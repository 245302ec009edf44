"""Synthetic COCO shapes: deterministic, real COCO fields, loads through CocoDetection."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import numpy as np
import pytest
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from mobiledense.datasets import CocoDetection, build_det_transforms, make_synthetic_coco
from mobiledense.datasets.synthetic import class_table


@pytest.fixture(scope="module")
def synth(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, Path]]:
    return make_synthetic_coco(tmp_path_factory.mktemp("synth"), num_images=20, seed=7)


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_deterministic_for_a_seed(tmp_path: Path) -> None:
    for name, seed in (("a", 3), ("b", 3), ("c", 4)):
        make_synthetic_coco(tmp_path / name, num_images=6, seed=seed, size_range=(96, 128))
    a, b, c = (_files(tmp_path / n) for n in "abc")
    assert len(a) == 6 + 2 and a == b
    assert a.keys() == c.keys() and all(a[k] != c[k] for k in a)
    # an image depends only on (seed, index), not on how many images are written
    make_synthetic_coco(tmp_path / "d", num_images=3, seed=3, size_range=(96, 128), val_fraction=0.0)
    assert _files(tmp_path / "d")["images/train/000001.jpg"] == a["images/train/000001.jpg"]


def test_real_coco_fields_and_splits(synth: dict[str, tuple[Path, Path]]) -> None:
    train, val = (json.loads(synth[s][1].read_text()) for s in ("train", "val"))
    assert len(train["images"]) == 16 and len(val["images"]) == 4
    ids = [im["id"] for im in train["images"] + val["images"]]
    assert len(set(ids)) == 20
    assert [c["name"] for c in train["categories"]][:3] == ["red ellipse", "green rectangle", "blue triangle"]
    for data in (train, val):
        images = {im["id"]: im for im in data["images"]}
        for ann in data["annotations"]:
            assert set(ann) >= {"id", "image_id", "category_id", "bbox", "area", "iscrowd", "segmentation"}
            x, y, w, h = ann["bbox"]
            im = images[ann["image_id"]]
            assert 0 <= x and 0 <= y and x + w <= im["width"] and y + h <= im["height"]
            short = min(im["width"], im["height"])
            assert 0.15 * short - 0.5 <= np.sqrt(w * h) <= 0.5 * short + 0.5  # object_scale (0.15, 0.5)
            poly = np.array(ann["segmentation"][0]).reshape(-1, 2)
            np.testing.assert_allclose([*poly.min(0), *(poly.max(0) - poly.min(0))], ann["bbox"], atol=0.02)
            assert 0 < ann["area"] <= w * h + 0.1 and ann["iscrowd"] == 0


def test_loads_through_coco_detection_and_transforms(synth: dict[str, tuple[Path, Path]]) -> None:
    ds = CocoDetection(*synth["train"], transforms=build_det_transforms("ssdlite", 128, train=True))
    data = json.loads(synth["train"][1].read_text())
    assert ds.num_classes == 7 and ds.category_names[6] == "cyan cross"
    assert ds.box_stats["kept"] == len(data["annotations"]) and ds.box_stats["dropped"] == 0
    for i in range(len(ds)):
        image, target = ds[i]
        assert image.shape == (3, 128, 128) and len(target["boxes"]) >= 1


def test_boxes_are_tight_on_the_drawn_pixels(synth: dict[str, tuple[Path, Path]]) -> None:
    ds = CocoDetection(*synth["train"])
    for i in range(len(ds)):
        image = ds.load_image(i).astype(int)
        vivid = image.max(-1) - image.min(-1) > 100  # shapes are saturated, backgrounds muted
        for box, label in zip(ds.raw_target(i)["boxes"], ds.raw_target(i)["labels"]):
            x1, y1, x2, y2 = np.floor(box[:2]).astype(int).tolist() + np.ceil(box[2:]).astype(int).tolist()
            ys, xs = np.nonzero(vivid[y1:y2, x1:x2])
            assert len(ys) > 0.25 * (x2 - x1) * (y2 - y1), (i, label)
            # the drawn shape reaches every side of its box (anti-aliased sharp tips: a few px)
            gaps = [xs.min(), ys.min(), x2 - x1 - 1 - xs.max(), y2 - y1 - 1 - ys.max()]
            assert max(gaps) <= 6, (i, label, gaps)


def test_gt_as_detections_scores_ap_one(synth: dict[str, tuple[Path, Path]]) -> None:
    """The json works with pycocotools end to end (area, iscrowd, categories)."""
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(synth["train"][1]))
        dets = [{"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"], "score": 1.0}
                for a in gt.dataset["annotations"]]
        ev = COCOeval(gt, gt.loadRes(dets), "bbox")
        ev.evaluate(), ev.accumulate(), ev.summarize()
    assert ev.stats[0] == pytest.approx(1.0)


def test_class_table() -> None:
    table = class_table(36)
    assert len(set(table)) == 36
    first = class_table(6)
    assert len({s for s, _ in first}) == 6 and len({c for _, c in first}) == 6
    with pytest.raises(ValueError, match="num_classes must be in 1..36"):
        class_table(37)


def test_cli(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from mobiledense.tools.cli import main

    rc = main(["synth", "det", "--out", str(tmp_path / "s"), "--num-images", "5", "--seed", "2",
               "--min-size", "64", "--max-size", "96"])
    assert rc == 0 and "wrote 5 images" in capsys.readouterr().out
    assert len(json.loads((tmp_path / "s/annotations/instances_train.json").read_text())["images"]) == 4
    assert len(list((tmp_path / "s/images/val").glob("*.jpg"))) == 1
