"""SegFolder on real Cityscapes frames: index, colour and palette-mode masks give CityscapesSegmentation's samples."""

from __future__ import annotations

import json
import os
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from mobiledense.datasets.cityscapes import CityscapesSegmentation
from mobiledense.datasets.cityscapes_labels import CLASS_NAMES, TRAIN_ID_COLORS
from mobiledense.datasets.seg_folder import SegFolder, read_seg_classes
from mobiledense.datasets.seg_transforms import build_seg_transforms
from PIL import Image

FRAMES = 2
VOID = (0, 0, 0)  # no Cityscapes trainId is black


def _colour(train_ids: np.ndarray) -> np.ndarray:
    rgb = np.zeros((*train_ids.shape, 3), np.uint8)
    rgb[:] = VOID
    valid = train_ids != 255
    rgb[valid] = TRAIN_ID_COLORS[train_ids[valid]]
    return rgb


@pytest.fixture(scope="module")
def city(cityscapes_dir: Path) -> CityscapesSegmentation:
    return CityscapesSegmentation(cityscapes_dir, "train")


@pytest.fixture(scope="module")
def folders(city: CityscapesSegmentation, tmp_path_factory) -> dict[str, Path]:
    """The first frames as three SegFolders: index (labelTrainIds PNGs), RGB colour, and palette-mode PNGs."""
    roots = {k: tmp_path_factory.mktemp(k) for k in ("index", "color", "palette")}
    json.dump(list(CLASS_NAMES), (roots["index"] / "classes.json").open("w"))
    coloured = [{"name": n, "color": [int(c) for c in TRAIN_ID_COLORS[i]]} for i, n in enumerate(CLASS_NAMES)]
    json.dump(coloured + [{"name": "void", "color": list(VOID), "ignore": True}],
              (roots["color"] / "classes.json").open("w"))
    json.dump(coloured, (roots["palette"] / "classes.json").open("w"))
    for frame in city.frames[:FRAMES]:
        for root in roots.values():
            (root / "images" / "train").mkdir(parents=True, exist_ok=True)
            (root / "masks" / "train").mkdir(parents=True, exist_ok=True)
            os.symlink(frame.image, root / "images" / "train" / f"{frame.stem}.png")
        train_ids_png = frame.label.with_name(frame.label.name.replace("labelIds", "labelTrainIds"))
        os.symlink(train_ids_png, roots["index"] / "masks" / "train" / f"{frame.stem}.png")
        train_ids = cv2.imread(str(train_ids_png), cv2.IMREAD_UNCHANGED)
        cv2.imwrite(str(roots["color"] / "masks" / "train" / f"{frame.stem}.png"),
                    cv2.cvtColor(_colour(train_ids), cv2.COLOR_RGB2BGR))
        pal = Image.fromarray(train_ids, mode="L").convert("P")
        pal.putpalette(np.concatenate([TRAIN_ID_COLORS.ravel(), np.zeros(3 * (256 - 19), np.uint8)]).tolist())
        pal.putdata(train_ids.ravel().tolist())
        pal.save(roots["palette"] / "masks" / "train" / f"{frame.stem}.png")
    return roots


@pytest.mark.parametrize("kind", ["index", "color", "palette"])
def test_samples_equal_cityscapes_segmentation(folders: dict[str, Path], city: CityscapesSegmentation,
                                               kind: str) -> None:
    ds = SegFolder(folders[kind], "train")
    assert len(ds) == FRAMES and ds.num_classes == 19 and ds.class_names == tuple(CLASS_NAMES)
    assert ds.ignore_index == 255 and [f.stem for f in ds.frames] == [f.stem for f in city.frames[:FRAMES]]
    if kind == "palette":
        assert Image.open(ds.frames[0].label).mode == "P"
    for i in range(FRAMES):
        (img, mask), (want_img, want_mask) = ds[i], city[i]
        assert img.dtype == want_img.dtype == torch.float32 and mask.dtype == want_mask.dtype == torch.int64
        assert torch.equal(img, want_img) and torch.equal(mask, want_mask)
        assert (mask == 255).any()  # the ignore pixels survive every format


def test_same_transforms_interface(folders: dict[str, Path], cityscapes_dir: Path) -> None:
    tf = build_seg_transforms(False, base_size=(256, 512), eval_scale=0.5)
    ds = SegFolder(folders["color"], "train", transforms=tf)
    city = CityscapesSegmentation(cityscapes_dir, "train", transforms=tf)
    (img, mask), (want_img, want_mask) = ds[1], city[1]
    assert img.shape == (3, 128, 256) and torch.equal(img, want_img) and torch.equal(mask, want_mask)
    train = SegFolder(folders["index"], "train", transforms=build_seg_transforms(True, crop_size=(64, 128),
                                                                                 base_size=(128, 256)))
    img, mask = train[0]
    assert img.shape == (3, 64, 128) and mask.shape == (64, 128)


# ------------------------------------------------------------------------------------------------- error paths
def _small(city: CityscapesSegmentation, root: Path, classes) -> tuple[Path, Path, np.ndarray]:
    """One real frame cropped to 128x256 as images/train/f.png + its trainIds."""
    img = city.load_image(0)[384:512, 768:1024]
    mask = city.load_label(0)[384:512, 768:1024]
    (root / "images" / "train").mkdir(parents=True)
    (root / "masks" / "train").mkdir(parents=True)
    cv2.imwrite(str(root / "images" / "train" / "f.png"), cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
    (root / "classes.json").write_text(json.dumps(classes))
    return root / "images" / "train" / "f.png", root / "masks" / "train" / "f.png", mask


def test_mask_errors_name_the_file(city: CityscapesSegmentation, tmp_path: Path) -> None:
    image, mask_path, mask = _small(city, tmp_path, list(CLASS_NAMES))
    cv2.imwrite(str(mask_path), mask[:, :200])
    with pytest.raises(ValueError, match=r"size mismatch.*256x128.*200x128") as e:
        SegFolder(tmp_path, "train")[0]
    assert str(image) in str(e.value) and str(mask_path) in str(e.value)

    bad = mask.copy()
    bad[0, :3] = 19
    cv2.imwrite(str(mask_path), bad)
    with pytest.raises(ValueError, match=r"mask values \[19\] are not class indices 0..18 or 255") as e:
        SegFolder(tmp_path, "train")[0]
    assert str(mask_path) in str(e.value)

    rgb = _colour(mask)
    rgb[5, 5] = (1, 2, 3)
    cv2.imwrite(str(mask_path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    with pytest.raises(ValueError, match=r"colour mask, but the class list has no colours") as e:
        SegFolder(tmp_path, "train")[0]
    assert str(mask_path) in str(e.value)
    coloured = [{"name": n, "color": TRAIN_ID_COLORS[i].tolist()} for i, n in enumerate(CLASS_NAMES)]
    ds = SegFolder(tmp_path, "train", classes=coloured + [{"name": "void", "color": [0, 0, 0], "ignore": True}])
    with pytest.raises(ValueError, match=r"1 pixel\(s\) have colours not in the palette: \(1, 2, 3\) \(1 px\)") as e:
        ds[0]
    assert str(mask_path) in str(e.value)
    with pytest.raises(ValueError, match=r"colours not in the palette: \(0, 0, 0\)"):  # void unknown without entry
        SegFolder(tmp_path, "train", classes=coloured)[0]
    rgb[5, 5] = _colour(mask)[5, 5]
    cv2.imwrite(str(mask_path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    assert np.array_equal(ds.load_label(0), mask)
    with pytest.raises(ValueError, match="cannot be read as mask_format='index'") as e:
        SegFolder(tmp_path, "train", classes=coloured, mask_format="index")[0]
    assert str(mask_path) in str(e.value)


def test_layout_and_class_list_errors(city: CityscapesSegmentation, tmp_path: Path) -> None:
    image, mask_path, _ = _small(city, tmp_path, list(CLASS_NAMES))
    with pytest.raises(FileNotFoundError, match="have no mask") as e:
        SegFolder(tmp_path, "train")
    assert str(image) in str(e.value) and str(mask_path) in str(e.value)
    with pytest.raises(FileNotFoundError, match=r"found splits \['train'\]"):
        SegFolder(tmp_path, "val")
    cv2.imwrite(str(mask_path), np.zeros((128, 256), np.uint8))
    orphan = mask_path.with_name("g.png")
    cv2.imwrite(str(orphan), np.zeros((128, 256), np.uint8))
    with pytest.raises(FileNotFoundError, match="have no image") as e:
        SegFolder(tmp_path, "train")
    assert str(orphan) in str(e.value)
    orphan.unlink()
    assert len(SegFolder(tmp_path, "train")) == 1
    (tmp_path / "classes.json").unlink()
    with pytest.raises(FileNotFoundError, match="classes.json not found"):
        SegFolder(tmp_path, "train")
    bad = tmp_path / "bad.json"
    for content, pattern in ([[{"name": "a", "color": [0, 0, 0]}, {"name": "b"}], "for every class or for none"],
                             [["a", "a"], r"duplicate class name\(s\) \['a'\]"],
                             [[{"name": "a", "color": [0, 0, 300]}], r"\[r, g, b\] in 0..255"]):
        bad.write_text(json.dumps(content))
        with pytest.raises(ValueError, match=pattern) as e:
            read_seg_classes(bad)
        assert str(bad) in str(e.value)


def test_train_and_eval_seg_on_a_folder_layout(folders: dict[str, Path], tmp_path: Path) -> None:
    """``train seg --layout folder``: the colour-mask folder trains, evaluates (no Cityscapes-only iIoU) and
    ``eval seg --checkpoint`` alone reproduces the run's mIoU; its own class names, not Cityscapes' categories."""
    import csv

    from mobiledense.tools.cli import main
    from mobiledense.tools.engine import RunSpec

    root = folders["color"]
    out = tmp_path / "run"
    assert main(["train", "seg", "--layout", "folder", "--data-root", str(root), "--val-split", "train",
                 "--backbone", "mobilenet_v3_small", "--crop", "64", "128", "--base-size", "128", "256",
                 "--epochs", "1", "--batch-size", "2", "--workers", "0", "--no-progress",
                 "--output-dir", str(out)]) == 0
    spec = RunSpec.load(out / "config.json")
    assert spec.data.layout == "folder" and spec.data.root == str(root) and spec.model.num_classes == 19
    with (out / "log.csv").open() as f:
        row = list(csv.DictReader(f))[-1]
    assert "iIoU" not in row and 0 <= float(row["mIoU"]) <= 1
    assert main(["eval", "seg", "--checkpoint", str(out / "checkpoints" / "last.pt"), "--no-progress",
                 "--workers", "0", "--output-dir", str(tmp_path / "eval")]) == 0
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert metrics["mIoU"] == pytest.approx(float(row["mIoU"]), abs=1e-9)
    with pytest.raises(ValueError, match="layout folder needs root"):
        from mobiledense.tools.engine import CityscapesDataSpec

        CityscapesDataSpec(layout="folder")
