"""CityscapesSegmentation on real frames, and a clear error for every broken layout or file."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from mobiledense.datasets.cityscapes import CityscapesSegmentation, read_label_png
from mobiledense.datasets.cityscapes_labels import VALID_LABEL_IDS
from mobiledense.datasets.io import ImageReadError


def _shipped_train_ids(label_path: Path) -> np.ndarray:
    return cv2.imread(str(label_path).replace("_labelIds.png", "_labelTrainIds.png"), cv2.IMREAD_UNCHANGED)


def test_real_train_split_lists_aachen_frames(cityscapes_dir):
    ds = CityscapesSegmentation(cityscapes_dir, "train")
    assert len(ds) == 8
    assert [f.stem for f in ds.frames] == [f"aachen_{i:06d}_000019" for i in range(8)]
    assert all(f.city == "aachen" and f.image.is_file() and f.label.is_file() for f in ds.frames)


def test_real_train_ids_equal_shipped_label_train_ids(cityscapes_dir):
    # labelTrainIds were derived from labelIds with the standard mapping: exact equality, all 8 frames.
    ds = CityscapesSegmentation(cityscapes_dir, "train")
    for i, frame in enumerate(ds.frames):
        np.testing.assert_array_equal(ds.load_label(i), _shipped_train_ids(frame.label), err_msg=frame.stem)


def test_real_sample_format_and_ignore(cityscapes_dir):
    ds = CityscapesSegmentation(cityscapes_dir, "train")
    image, mask = ds[0]
    assert image.shape == (3, 1024, 2048) and image.dtype == torch.float32
    assert 0.0 <= image.min() < image.max() <= 1.0
    assert mask.shape == (1024, 2048) and mask.dtype == torch.int64
    label_ids = torch.from_numpy(cv2.imread(str(ds.frames[0].label), cv2.IMREAD_UNCHANGED)).long()
    for void_id in (0, 1, 3, 4):  # unlabeled, ego vehicle, out of roi, static: ignored
        assert (label_ids == void_id).any() and (mask[label_ids == void_id] == 255).all()
    assert (mask[label_ids == 7] == 0).all() and (mask[label_ids == 26] == 13).all()  # road, car
    assert set(mask.unique().tolist()) <= set(range(19)) | {255}


def test_real_val_is_label_only(cityscapes_dir):
    with pytest.raises(FileNotFoundError, match="images=False"):
        CityscapesSegmentation(cityscapes_dir, "val")
    ds = CityscapesSegmentation(cityscapes_dir, "val", images=False)
    assert len(ds) == 15 and all(f.image is None and f.city == "frankfurt" for f in ds.frames)
    assert ds.load_label(0).shape == (1024, 2048)
    with pytest.raises(FileNotFoundError, match="load_label"):
        ds[0]


def test_tiny_frame_with_both_target_types(cityscapes_tiny_dir):
    ds = CityscapesSegmentation(cityscapes_tiny_dir, "val")
    image, mask = ds[0]
    assert image.shape == (3, 128, 256) and mask.shape == (128, 256)
    shipped = CityscapesSegmentation(cityscapes_tiny_dir, "val", target_type="labelTrainIds")
    # That file was resized on its own: equal except at a few boundary pixels (SOURCES.md).
    assert (shipped[0][1] != mask).sum() < 100


def test_real_instance_ids_png_is_refused_as_labels(cityscapes_tiny_dir):
    inst = next(cityscapes_tiny_dir.glob("gtFine/val/*/*_instanceIds.png"))
    with pytest.raises(ValueError, match="16-bit.*instanceIds"):
        read_label_png(inst)


# --- broken layouts and files, built in tmp_path -------------------------------------------------

def _write_frame(root: Path, stem: str = "city_000000_000019", split: str = "train", size=(8, 16),
                 label: np.ndarray | None = None, with_label: bool = True) -> tuple[Path, Path]:
    city = stem.split("_")[0]
    img_path = root / "leftImg8bit" / split / city / f"{stem}_leftImg8bit.png"
    lab_path = root / "gtFine" / split / city / f"{stem}_gtFine_labelIds.png"
    img_path.parent.mkdir(parents=True, exist_ok=True)
    lab_path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(img_path), np.full((*size, 3), 100, np.uint8))
    if with_label:
        cv2.imwrite(str(lab_path), np.full(size, 7, np.uint8) if label is None else label)
    return img_path, lab_path


def test_synthetic_layout_loads(tmp_path):
    _write_frame(tmp_path)
    image, mask = CityscapesSegmentation(tmp_path, "train")[0]
    assert image.shape == (3, 8, 16) and (mask == 0).all()


def test_missing_root_names_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist.*official layout"):
        CityscapesSegmentation(tmp_path / "nowhere")


def test_missing_gtfine_folder(tmp_path):
    img, _ = _write_frame(tmp_path)
    (tmp_path / "gtFine").rename(tmp_path / "labels")
    with pytest.raises(FileNotFoundError, match="no gtFine/ folder.*official layout"):
        CityscapesSegmentation(tmp_path)


def test_missing_images_folder(tmp_path):
    _write_frame(tmp_path)
    (tmp_path / "leftImg8bit").rename(tmp_path / "images")
    with pytest.raises(FileNotFoundError, match="leftImg8bit.*images=False"):
        CityscapesSegmentation(tmp_path)


def test_missing_split(tmp_path):
    _write_frame(tmp_path)
    with pytest.raises(FileNotFoundError, match=r"gtFine/val is missing \(found splits \['train'\]\)"):
        CityscapesSegmentation(tmp_path, "val")


def test_image_without_label_names_both_paths(tmp_path):
    _write_frame(tmp_path)
    img, lab = _write_frame(tmp_path, "city_000001_000019", with_label=False)
    with pytest.raises(FileNotFoundError, match=f"{img}.*no label file.*{lab}"):
        CityscapesSegmentation(tmp_path)


def test_size_mismatch_names_both_files(tmp_path):
    img, lab = _write_frame(tmp_path, label=np.full((8, 8), 7, np.uint8))
    with pytest.raises(ValueError, match=f"size mismatch.*{img}.*16x8.*{lab}.*8x8"):
        CityscapesSegmentation(tmp_path)[0]


def test_label_id_outside_table(tmp_path):
    label = np.full((8, 16), 7, np.uint8)
    label[0, 0] = 200
    _, lab = _write_frame(tmp_path, label=label)
    assert 200 not in VALID_LABEL_IDS
    with pytest.raises(ValueError, match=rf"{lab}.*\[200\]"):
        CityscapesSegmentation(tmp_path)[0]


def test_rgb_label_png(tmp_path):
    _, lab = _write_frame(tmp_path, label=np.full((8, 16, 3), 7, np.uint8))
    with pytest.raises(ValueError, match=f"{lab}.*8-bit single-channel, got 3 channel"):
        CityscapesSegmentation(tmp_path)[0]


def test_16bit_label_png(tmp_path):
    _, lab = _write_frame(tmp_path, label=np.full((8, 16), 26001, np.uint16))
    with pytest.raises(ValueError, match=f"{lab}.*16-bit.*instanceIds"):
        CityscapesSegmentation(tmp_path)[0]


@pytest.mark.parametrize("which", ["label", "image"])
def test_corrupt_png(tmp_path, which):
    img, lab = _write_frame(tmp_path)
    bad = lab if which == "label" else img
    bad.write_bytes(bad.read_bytes()[:30])  # cut inside the PNG header chunk
    with pytest.raises(ImageReadError, match=str(bad)):
        CityscapesSegmentation(tmp_path)[0]


def test_label_train_ids_out_of_range(tmp_path):
    img, lab = _write_frame(tmp_path)
    train_ids = lab.with_name(lab.name.replace("_labelIds", "_labelTrainIds"))
    cv2.imwrite(str(train_ids), np.full((8, 16), 26, np.uint8))  # a labelIds value (car), not a trainId
    with pytest.raises(ValueError, match=rf"{train_ids}.*\[26\].*labelIds"):
        CityscapesSegmentation(tmp_path, target_type="labelTrainIds")[0]


@pytest.mark.parametrize("kwargs, match", [
    (dict(split="testing"), "split"),
    (dict(target_type="color"), "target_type"),
])
def test_bad_arguments(tmp_path, kwargs, match):
    with pytest.raises(ValueError, match=match):
        CityscapesSegmentation(tmp_path, **kwargs)


def test_transforms_are_applied(tmp_path):
    _write_frame(tmp_path)
    calls = []

    def transform(image, mask):
        calls.append((image.shape, mask.shape, image.dtype, mask.dtype))
        return torch.zeros(1), torch.ones(1)

    ds = CityscapesSegmentation(tmp_path, transforms=transform)
    assert ds[0][1].item() == 1
    assert calls == [((8, 16, 3), (8, 16), np.uint8, np.uint8)]
