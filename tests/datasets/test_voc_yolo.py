"""VOC XML / YOLO txt -> COCO: real COCO val2017 annotations written out by an independent writer, read back."""

from __future__ import annotations

import contextlib
import io
import json
import os
from collections import defaultdict
from pathlib import Path
from xml.sax.saxutils import escape

import numpy as np
import pytest
from mobiledense.datasets.coco import CocoDetection
from mobiledense.datasets.voc_yolo import (
    AnnotationFormatError,
    read_class_names,
    voc_to_coco,
    write_coco_json,
    yolo_to_coco,
)
from mobiledense.tools.cli import main
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval


@pytest.fixture(scope="module")
def coco_gt(coco_dir: Path) -> dict:
    return json.loads((coco_dir / "annotations" / "instances_val2017.json").read_text())


def _link(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    os.symlink(src, dst)


def _voc_xml(img: dict, objects: list[tuple[str, int, tuple[int, int, int, int]]]) -> str:
    """Plain string formatting, independent of the reader's xml.etree."""
    objs = "".join(
        f"<object><name>{escape(n)}</name><pose>Unspecified</pose><truncated>0</truncated>"
        f"<difficult>{d}</difficult><bndbox><xmin>{b[0]}</xmin><ymin>{b[1]}</ymin><xmax>{b[2]}</xmax>"
        f"<ymax>{b[3]}</ymax></bndbox></object>\n" for n, d, b in objects)
    return (f"<annotation><folder>VOC</folder><filename>{img['file_name']}</filename><size><width>{img['width']}"
            f"</width><height>{img['height']}</height><depth>3</depth></size>\n{objs}</annotation>\n")


def _voc_box(bbox: list[float]) -> tuple[int, int, int, int]:
    """COCO [x, y, w, h] -> VOC 1-based inclusive integers."""
    x, y, w, h = bbox
    xmin, ymin = round(x) + 1, round(y) + 1
    return xmin, ymin, max(round(x + w), xmin), max(round(y + h), ymin)


@pytest.fixture(scope="module")
def voc_root(coco_dir: Path, coco_gt: dict, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("voc")
    cats = {c["id"]: c["name"] for c in coco_gt["categories"]}
    per_image = defaultdict(list)
    for a in coco_gt["annotations"]:
        per_image[a["image_id"]].append((cats[a["category_id"]], a["iscrowd"], _voc_box(a["bbox"])))
    (root / "Annotations").mkdir()
    for img in coco_gt["images"]:
        stem = Path(img["file_name"]).stem
        (root / "Annotations" / f"{stem}.xml").write_text(_voc_xml(img, per_image[img["id"]]))
        _link(coco_dir / "images" / "val2017" / img["file_name"], root / "JPEGImages" / img["file_name"])
    stems = [Path(i["file_name"]).stem for i in coco_gt["images"]]
    (root / "ImageSets" / "Main").mkdir(parents=True)
    (root / "ImageSets" / "Main" / "train.txt").write_text("\n".join(stems[:30]) + "\n")
    (root / "ImageSets" / "Main" / "val.txt").write_text("\n".join(stems[30:]) + "\n")
    return root


def _yolo_lines(img: dict, anns: list[dict], index: dict[int, int]) -> str:
    lines = []
    for a in anns:
        x, y, w, h = a["bbox"]
        cx, cy = (x + w / 2) / img["width"], (y + h / 2) / img["height"]
        lines.append(f"{index[a['category_id']]} {cx:.6f} {cy:.6f} {w / img['width']:.6f} {h / img['height']:.6f}")
    return "\n".join(lines) + ("\n" if lines else "")


@pytest.fixture(scope="module")
def yolo_root(coco_dir: Path, coco_gt: dict, tmp_path_factory) -> Path:
    """COCO val2017 as YOLO: crowd boxes left out (YOLO has none); one image without a label file."""
    root = tmp_path_factory.mktemp("yolo")
    index = {c["id"]: i for i, c in enumerate(sorted(coco_gt["categories"], key=lambda c: c["id"]))}
    names = {i: c["name"] for i, c in enumerate(sorted(coco_gt["categories"], key=lambda c: c["id"]))}
    (root / "data.yaml").write_text("path: .\ntrain: images/train\nval: images/val\nnames:\n"
                                    + "".join(f"  {i}: {n}\n" for i, n in names.items()))
    per_image = defaultdict(list)
    for a in coco_gt["annotations"]:
        if not a["iscrowd"]:
            per_image[a["image_id"]].append(a)
    (root / "labels" / "val").mkdir(parents=True)
    for k, img in enumerate(coco_gt["images"]):
        _link(coco_dir / "images" / "val2017" / img["file_name"], root / "images" / "val" / img["file_name"])
        if k != 3:
            txt = root / "labels" / "val" / f"{Path(img['file_name']).stem}.txt"
            txt.write_text(_yolo_lines(img, per_image[img["id"]], index))
    return root


def _by_file(data: dict) -> dict[str, list[tuple[str, int, list[float]]]]:
    cats = {c["id"]: c["name"] for c in data["categories"]}
    files = {i["id"]: i["file_name"] for i in data["images"]}
    out: dict[str, list] = {f: [] for f in files.values()}
    for a in data["annotations"]:
        out[files[a["image_id"]]].append((cats[a["category_id"]], a["iscrowd"], a["bbox"]))
    return {f: sorted(v, key=lambda t: (t[0], t[1], t[2])) for f, v in out.items()}


def _assert_same_boxes(got: dict, want: dict, atol: float, crowd: bool = True) -> None:
    """Same files, same (class, crowd) multiset per file, each wanted box paired with its nearest converted one."""
    a, b = _by_file(got), _by_file(want)
    if not crowd:
        b = {f: [t for t in v if not t[1]] for f, v in b.items()}
    assert set(a) == set(b)
    for f in b:
        assert sorted(t[:2] for t in a[f]) == sorted(t[:2] for t in b[f]), f
        left = list(a[f])
        for name, c, (x, y, w, h) in b[f]:
            cands = [t for t in left if t[:2] == (name, c)]
            err = [max(abs(u - v) for u, v in zip((x, y, x + w, y + h), (p, q, p + r, q + s)))
                   for _, _, (p, q, r, s) in cands]
            k = int(np.argmin(err))
            assert err[k] <= atol, (f, name, (x, y, w, h), cands[k])
            left.remove(cands[k])


def _ap_of_original_boxes(converted: Path, coco_gt: dict) -> np.ndarray:
    """COCOeval stats of the original non-crowd GT boxes, as detections, against the converted GT."""
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(converted))
        name_to_id = {c["name"]: c["id"] for c in gt.dataset["categories"]}
        file_to_id = {i["file_name"]: i["id"] for i in gt.dataset["images"]}
        cats = {c["id"]: c["name"] for c in coco_gt["categories"]}
        files = {i["id"]: i["file_name"] for i in coco_gt["images"]}
        dets = [{"image_id": file_to_id[files[a["image_id"]]], "category_id": name_to_id[cats[a["category_id"]]],
                 "bbox": a["bbox"], "score": 1.0} for a in coco_gt["annotations"] if not a["iscrowd"]]
        ev = COCOeval(gt, gt.loadRes(dets), "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return ev.stats


def test_voc_round_trip_equals_the_coco_annotations(voc_root: Path, coco_gt: dict, tmp_path: Path) -> None:
    data = voc_to_coco(voc_root)
    assert len(data["images"]) == 50 and len(data["annotations"]) == len(coco_gt["annotations"])
    names = sorted({c["name"] for c in coco_gt["categories"]
                    if any(a["category_id"] == c["id"] for a in coco_gt["annotations"])})
    assert [c["name"] for c in data["categories"]] == names and [c["id"] for c in data["categories"]] == \
        list(range(1, len(names) + 1))
    sizes = {i["file_name"]: (i["width"], i["height"]) for i in coco_gt["images"]}
    assert {i["file_name"]: (i["width"], i["height"]) for i in data["images"]} == sizes
    _assert_same_boxes(data, coco_gt, atol=1.0)  # integer VOC pixels: corners within rounding (+1 px for slivers)
    # exactly detectron2's convention: x0 = xmin - 1, w = xmax - xmin + 1 (an off-by-one would fail here)
    exact = [a | {"bbox": [b[0] - 1, b[1] - 1, b[2] - b[0] + 1, b[3] - b[1] + 1]}
             for a in coco_gt["annotations"] for b in [_voc_box(a["bbox"])]]
    _assert_same_boxes(data, coco_gt | {"annotations": exact}, atol=1e-9)
    assert sum(a["iscrowd"] for a in data["annotations"]) == 5  # crowd written as difficult -> ignored again
    assert data["info"]["images_root"] == str(voc_root / "JPEGImages")

    path = write_coco_json(data, tmp_path / "voc.json")
    stats = _ap_of_original_boxes(path, coco_gt)
    assert stats[1] == pytest.approx(1.0, abs=1e-6)  # AP50
    assert stats[0] > 0.95  # AP .50:.95 (0.968): the +-0.5 px rounding of VOC's integer pixels on tiny boxes
    ds = CocoDetection(data["info"]["images_root"], path)
    assert len(ds) == 50 and ds.num_crowd_skipped == 5 and ds.box_stats["dropped"] == 0
    image, target = ds[0]
    assert tuple(image.shape[1:]) == target["orig_size"]


def test_voc_splits_share_one_class_list_and_difficult_policies(voc_root: Path) -> None:
    train, val = voc_to_coco(voc_root, "train"), voc_to_coco(voc_root, "val")
    assert len(train["images"]) == 30 and len(val["images"]) == 20
    assert train["categories"] == val["categories"]  # from every XML of the tree, not the split's
    kept = voc_to_coco(voc_root, "train", difficult="keep")
    dropped = voc_to_coco(voc_root, "train", difficult="drop")
    n_diff = sum(a["iscrowd"] for a in train["annotations"])
    assert n_diff > 0 and not any(a["iscrowd"] for a in kept["annotations"])
    assert len(kept["annotations"]) == len(train["annotations"]) == len(dropped["annotations"]) + n_diff
    with pytest.raises(FileNotFoundError, match=r"test\.txt.*found splits \['train', 'val'\]"):
        voc_to_coco(voc_root, "test")


def test_yolo_round_trip_equals_the_coco_annotations(yolo_root: Path, coco_gt: dict, tmp_path: Path) -> None:
    data = yolo_to_coco(yolo_root, "val")
    assert len(data["images"]) == 50 and len(data["categories"]) == 80
    assert [c["name"] for c in data["categories"]] == [c["name"] for c in sorted(coco_gt["categories"],
                                                                                   key=lambda c: c["id"])]
    _assert_same_boxes(data, coco_gt | {"annotations": [a for a in coco_gt["annotations"]
                                                        if a["image_id"] != coco_gt["images"][3]["id"]]},
                       atol=0.01, crowd=False)  # 6 decimals of the normalised values
    assert not any(a["iscrowd"] for a in data["annotations"])
    path = write_coco_json(data, tmp_path / "yolo.json")
    # image 3 has no label file here: drop its boxes from the "detections" to score the rest exactly
    gt = coco_gt | {"annotations": [a for a in coco_gt["annotations"] if a["image_id"] != coco_gt["images"][3]["id"]]}
    stats = _ap_of_original_boxes(path, gt)
    assert stats[0] == pytest.approx(1.0, abs=1e-6)
    assert len(CocoDetection(data["info"]["images_root"], path)) == 50
    # the class list from a list, a classes.txt or the data.yaml gives the same result
    names = [c["name"] for c in data["categories"]]
    (tmp_path / "classes.txt").write_text("\n".join(names) + "\n")
    assert yolo_to_coco(yolo_root, "val", names=tmp_path / "classes.txt") == data
    assert read_class_names(yolo_root / "data.yaml") == names


def test_convert_cli_writes_a_json_that_pycocotools_and_cocodetection_load(voc_root: Path, yolo_root: Path,
                                                                           tmp_path: Path, capsys) -> None:
    out = tmp_path / "voc_train.json"
    assert main(["convert", "voc", str(voc_root), "--split", "train", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    data = json.loads(out.read_text())
    ignored = sum(a["iscrowd"] for a in data["annotations"])
    assert f"30 images, {len(data['annotations'])} objects, {ignored} difficult" in text
    assert f"images root: {voc_root / 'JPEGImages'}" in text and "--train-images" in text
    with contextlib.redirect_stdout(io.StringIO()):
        assert len(COCO(str(out)).getImgIds()) == 30
    out = tmp_path / "yolo_val.json"
    assert main(["convert", "yolo", str(yolo_root), "--split", "val", "--names", str(yolo_root / "data.yaml"),
                 "--out", str(out)]) == 0
    assert "50 images" in capsys.readouterr().out
    assert len(CocoDetection(yolo_root / "images" / "val", out)) == 50
    assert main(["convert", "yolo", str(yolo_root), "--split", "nope", "--out", str(out)]) == 2
    assert "found splits ['val']" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------------- error paths
@pytest.fixture()
def one_image(coco_dir: Path, coco_gt: dict) -> tuple[Path, dict]:
    img = coco_gt["images"][0]  # 640x427
    return coco_dir / "images" / "val2017" / img["file_name"], img


def _voc_tree(tmp_path: Path, one_image, xml: str, link: bool = True) -> Path:
    src, _ = one_image
    (tmp_path / "Annotations").mkdir()
    (tmp_path / "JPEGImages").mkdir()
    (tmp_path / "Annotations" / f"{src.stem}.xml").write_text(xml)
    if link:
        _link(src, tmp_path / "JPEGImages" / src.name)
    return tmp_path / "Annotations" / f"{src.stem}.xml"


@pytest.mark.parametrize("case, pattern", [
    ("malformed", "malformed XML"),
    ("no_image", "no image for this annotation file"),
    ("outside", "leaves the 640x427 image"),
    ("inverted", "xmax < xmin"),
    ("size", "<size> says 600x427"),
    ("not_a_number", "<xmax> is not a number"),
    ("unknown_name", "class name 'zebra' is not in the class list"),
])
def test_voc_errors_name_the_file(tmp_path: Path, one_image, case: str, pattern: str) -> None:
    img = one_image[1]
    objects = {"outside": [("person", 0, (1, 1, 700, 50))], "inverted": [("person", 0, (50, 1, 40, 50))]}
    xml = _voc_xml(img | ({"width": 600} if case == "size" else {}),
                   objects.get(case, [("person", 0, (10, 10, 50, 50)), ("zebra", 1, (1, 1, 640, 427))]))
    if case == "malformed":
        xml = xml.replace("</annotation>", "")
    if case == "not_a_number":
        xml = xml.replace("<xmax>50</xmax>", "<xmax>5O</xmax>", 1)
    path = _voc_tree(tmp_path, one_image, xml, link=case != "no_image")
    with pytest.raises(AnnotationFormatError, match=pattern) as e:
        voc_to_coco(tmp_path, classes=["person", "dog"] if case == "unknown_name" else None)
    assert str(path) in str(e.value)


def test_voc_whole_image_box_is_the_whole_image(tmp_path: Path, one_image) -> None:
    """(xmin=1, xmax=W) covers the image: [0, 0, W, H] (detectron2's convention); xmin=0 is clipped."""
    img = one_image[1]
    _voc_tree(tmp_path, one_image, _voc_xml(img, [("a", 0, (1, 1, 640, 427)), ("b", 0, (0, 0, 10, 10))]))
    data = voc_to_coco(tmp_path)
    assert [a["bbox"] for a in data["annotations"]] == [[0, 0, 640, 427], [0, 0, 10, 10]]
    assert data["info"]["clipped_boxes"] == 1


def _yolo_tree(tmp_path: Path, one_image, text: str | None, names=("person", "dog")) -> Path:
    src, _ = one_image
    _link(src, tmp_path / "images" / "train" / src.name)
    (tmp_path / "labels" / "train").mkdir(parents=True)
    (tmp_path / "classes.txt").write_text("\n".join(names) + "\n")
    txt = tmp_path / "labels" / "train" / f"{src.stem}.txt"
    if text is not None:
        txt.write_text(text)
    return txt


@pytest.mark.parametrize("text, pattern", [
    ("0 0.5 0.5 0.2\n", r"line 1: 4 values, expected 5"),
    ("0 0.5 0.5 0.2 0.2\n1 0.1 0.2 0.3 0.4 0.5 0.6 0.7\n", r"line 2: 8 values.*polygon"),
    ("0 0.5 0.5 0.2 x\n", r"line 1: not 5 numbers"),
    ("0 320 213 64 42\n", r"normalised to \[0, 1\].*pixel coordinates"),
    ("0 0.95 0.5 0.2 0.2\n", r"normalised to \[0, 1\]"),
    ("2 0.5 0.5 0.2 0.2\n", r"unknown class index 2 \(the class list has 2 names"),
    ("1.5 0.5 0.5 0.2 0.2\n", r"class index '1.5' is not an integer"),
    ("0 0.5 0.5 0 0.2\n", r"width and height must be > 0"),
])
def test_yolo_label_errors_name_the_file_and_line(tmp_path: Path, one_image, text: str, pattern: str) -> None:
    txt = _yolo_tree(tmp_path, one_image, text)
    with pytest.raises(AnnotationFormatError, match=pattern) as e:
        yolo_to_coco(tmp_path, "train")
    assert str(txt) in str(e.value)


def test_yolo_label_without_image_and_class_list_errors(tmp_path: Path, one_image) -> None:
    _yolo_tree(tmp_path, one_image, "0 0.5 0.5 0.2 0.2\n")
    orphan = tmp_path / "labels" / "train" / "gone.txt"
    orphan.write_text("0 0.5 0.5 0.2 0.2\n")
    with pytest.raises(AnnotationFormatError, match="label file without an image") as e:
        yolo_to_coco(tmp_path, "train")
    assert str(orphan) in str(e.value)
    orphan.unlink()
    data = yolo_to_coco(tmp_path, "train")  # classes.txt found in the root
    assert data["annotations"][0]["bbox"] == pytest.approx([256.0, 170.8, 128.0, 85.4])
    bad = tmp_path / "bad.yaml"
    bad.write_text("names:\n  0: person\n  2: dog\n")
    with pytest.raises(AnnotationFormatError, match="without gaps") as e:
        yolo_to_coco(tmp_path, "train", names=bad)
    assert str(bad) in str(e.value)
    (tmp_path / "dup.txt").write_text("person\nperson\n")
    with pytest.raises(AnnotationFormatError, match=r"dup\.txt: duplicate class name"):
        yolo_to_coco(tmp_path, "train", names=tmp_path / "dup.txt")


def test_train_det_reads_a_voc_tree_directly_and_eval_reproduces_it(voc_root: Path, tmp_path: Path) -> None:
    """``train det --layout voc --root DIR``: the splits become COCO jsons in the run folder, recorded in the
    spec, so ``eval det --checkpoint`` alone reproduces the run's mAP."""
    import csv

    from mobiledense.tools.cli import main
    from mobiledense.tools.engine import RunSpec

    out = tmp_path / "run"
    assert main(["train", "det", "--layout", "voc", "--root", str(voc_root), "--model", "ssdlite_mobilenet_v3_small",
                 "--size", "96", "--epochs", "1", "--batch-size", "8", "--workers", "0", "--eval-every", "1",
                 "--no-progress", "--output-dir", str(out)]) == 0
    spec = RunSpec.load(out / "config.json")
    d = spec.data
    assert (d.layout, d.root, d.train_split, d.val_split) == ("voc", str(voc_root), "train", "val")
    assert d.train_ann == str(out / "data" / "voc_train.json") and d.train_images == str(voc_root / "JPEGImages")
    converted = json.loads(Path(d.val_ann).read_text())
    expected = voc_to_coco(voc_root, "val")
    assert converted["images"] == expected["images"] and converted["annotations"] == expected["annotations"]
    assert spec.model.class_names == tuple(c["name"] for c in expected["categories"])  # the tree's class list
    with (out / "log.csv").open() as f:
        trained_map = float(list(csv.DictReader(f))[-1]["mAP"])
    assert main(["eval", "det", "--checkpoint", str(out / "checkpoints" / "last.pt"), "--overlays", "0",
                 "--no-progress", "--output-dir", str(tmp_path / "eval")]) == 0
    assert json.loads((tmp_path / "eval" / "metrics.json").read_text())["stats"]["AP"] == pytest.approx(trained_map)


def test_yolo_layout_prepares_coco_jsons_with_one_class_list(yolo_root: Path, tmp_path: Path) -> None:
    from mobiledense.tools.engine import CocoDataSpec
    from mobiledense.tools.engine.tasks import DetectionTask

    data = DetectionTask.prepare(CocoDataSpec(layout="yolo", root=str(yolo_root), train_split="val",
                                              val_split="none"), tmp_path / "synthetic")
    assert data.val_ann is None and Path(data.train_ann) == tmp_path / "data" / "yolo_val.json"
    assert json.loads(Path(data.train_ann).read_text())["categories"] == yolo_to_coco(yolo_root, "val")["categories"]
    with pytest.raises(ValueError, match="layout voc needs root"):
        CocoDataSpec(layout="voc")
    with pytest.raises(ValueError, match="root / train_split / val_split / names are for layout voc or yolo"):
        CocoDataSpec(root=str(yolo_root))
