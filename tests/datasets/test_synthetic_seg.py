"""Synthetic Cityscapes-layout generator: deterministic, official layout, loadable, not colour-trivial."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from mobiledense.datasets.cityscapes import CityscapesSegmentation
from mobiledense.datasets.cityscapes_labels import LABEL_ID_TO_TRAIN_ID, VALID_LABEL_IDS
from mobiledense.datasets.synthetic_seg import SYNTHETIC_CITIES, make_synthetic_cityscapes
from mobiledense.tools.cli import main as cli_main

SIZE = (64, 128)


@pytest.fixture(scope="module")
def synth(tmp_path_factory) -> Path:
    return make_synthetic_cityscapes(tmp_path_factory.mktemp("synth"), num_train=6, num_val=4, size=SIZE, seed=0)


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*.png"))}


def test_official_layout_and_names(synth):
    for split, count in (("train", 6), ("val", 4)):
        images = sorted((synth / "leftImg8bit" / split).glob("*/*_leftImg8bit.png"))
        assert len(images) == count
        assert {p.parent.name for p in images} == set(SYNTHETIC_CITIES[split])
        for img in images:
            stem = img.name[: -len("_leftImg8bit.png")]
            city, seq, frame = stem.split("_")
            assert city == img.parent.name and len(seq) == 6 and frame == "000019"
            for kind in ("labelIds", "labelTrainIds"):
                assert (synth / "gtFine" / split / city / f"{stem}_gtFine_{kind}.png").is_file()
    manifest = json.loads((synth / "synthetic_seg.json").read_text())
    assert manifest["size"] == list(SIZE) and manifest["complete"] is True


def test_loads_through_cityscapes_dataset(synth):
    for split in ("train", "val"):
        ds = CityscapesSegmentation(synth, split)
        shipped = CityscapesSegmentation(synth, split, target_type="labelTrainIds")
        for i in range(len(ds)):
            image, mask = ds[i]
            assert image.shape == (3, *SIZE) and mask.shape == SIZE
            assert (shipped[i][1] == mask).all()  # labelTrainIds files = labelIds through the table


def test_uses_real_label_ids_including_ignored_ones(synth):
    ids = set()
    for p in synth.rglob("*_gtFine_labelIds.png"):
        ids |= set(np.unique(cv2.imread(str(p), cv2.IMREAD_UNCHANGED)).tolist())
    assert ids <= set(VALID_LABEL_IDS)
    assert {7, 8, 11, 17, 21, 23, 24, 26} <= ids  # road sidewalk building pole vegetation sky person car
    assert any(LABEL_ID_TO_TRAIN_ID[i] == 255 for i in ids)  # unlabeled/ego vehicle/static/parking


def test_deterministic_by_seed(tmp_path, synth):
    again = make_synthetic_cityscapes(tmp_path / "a", num_train=6, num_val=4, size=SIZE, seed=0)
    assert _files(again) == _files(synth)
    other = make_synthetic_cityscapes(tmp_path / "b", num_train=6, num_val=4, size=SIZE, seed=1)
    assert _files(other).keys() == _files(synth).keys() and _files(other) != _files(synth)


def test_frames_do_not_depend_on_count(tmp_path, synth):
    fewer = _files(make_synthetic_cityscapes(tmp_path, num_train=2, num_val=1, size=SIZE, seed=0))
    full = _files(synth)
    assert len(fewer) == 9 and all(full[k] == v for k, v in fewer.items())


def test_rerun_is_noop_and_conflicts_need_overwrite(tmp_path):
    root = make_synthetic_cityscapes(tmp_path, num_train=2, num_val=1, size=SIZE)
    stamp = (root / "synthetic_seg.json").stat().st_mtime_ns
    make_synthetic_cityscapes(tmp_path, num_train=2, num_val=1, size=SIZE)
    assert (root / "synthetic_seg.json").stat().st_mtime_ns == stamp
    with pytest.raises(FileExistsError, match="overwrite"):
        make_synthetic_cityscapes(tmp_path, num_train=1, num_val=1, size=SIZE)
    make_synthetic_cityscapes(tmp_path, num_train=1, num_val=1, size=SIZE, overwrite=True)
    assert len(list(root.rglob("*_leftImg8bit.png"))) == 2  # no stale frames left behind


def test_interrupted_run_is_redone(tmp_path):
    root = make_synthetic_cityscapes(tmp_path, num_train=2, num_val=1, size=SIZE)
    manifest = root / "synthetic_seg.json"
    manifest.write_text(json.dumps({**json.loads(manifest.read_text()), "complete": False}))
    next(root.rglob("*_leftImg8bit.png")).unlink()  # as if killed mid-way
    make_synthetic_cityscapes(tmp_path, num_train=2, num_val=1, size=SIZE)
    assert len(list(root.rglob("*_leftImg8bit.png"))) == 3
    assert json.loads(manifest.read_text())["complete"] is True


def test_colour_alone_does_not_solve_it(synth):
    # A nearest-class-mean RGB classifier must fail: classes share colours, so shape/context matter.
    train, val = CityscapesSegmentation(synth, "train"), CityscapesSegmentation(synth, "val")

    def pixels(ds):
        x = np.concatenate([ds.load_image(i).reshape(-1, 3) for i in range(len(ds))]).astype(np.float32)
        return x, np.concatenate([ds.load_label(i).reshape(-1) for i in range(len(ds))])

    (x, y), (xv, yv) = pixels(train), pixels(val)
    classes = np.array([c for c in range(19) if (y == c).any()])
    means = np.stack([x[y == c].mean(0) for c in classes])
    keep = yv != 255
    pred = classes[((xv[keep, None] - means[None]) ** 2).sum(-1).argmin(1)]
    assert len(classes) >= 10 and (pred == yv[keep]).mean() < 0.5


def test_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="size"):
        make_synthetic_cityscapes(tmp_path, size=(16, 16))
    with pytest.raises(ValueError, match="num_train"):
        make_synthetic_cityscapes(tmp_path, num_train=-1)


def test_cli_writes_dataset(tmp_path, capsys):
    out = tmp_path / "cli"
    assert cli_main(["synth", "seg", "--out", str(out), "--num-train", "2", "--num-val", "1",
                     "--size", "64", "128", "--seed", "0"]) == 0
    assert "train 2, val 1 frames of 128x64" in capsys.readouterr().out
    assert len(CityscapesSegmentation(out, "train")) == 2 and len(CityscapesSegmentation(out, "val")) == 1


def test_cli_reports_conflicts_without_traceback(tmp_path, capsys):
    args = ["synth", "seg", "--out", str(tmp_path), "--num-train", "1", "--num-val", "1", "--size", "64", "128"]
    assert cli_main(args) == 0
    assert cli_main([*args, "--seed", "1"]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert cli_main([*args, "--seed", "1", "--overwrite"]) == 0
