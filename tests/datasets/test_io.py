"""Image reading: formats converted to 8-bit RGB, EXIF ignored, broken files named in errors."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from mobiledense.datasets.io import ImageReadError, read_image_rgb, worker_init_fn


def _check_rgb(img: np.ndarray, h: int, w: int) -> None:
    assert img.dtype == np.uint8 and img.shape == (h, w, 3) and img.flags.c_contiguous


def test_rgb_png_is_rgb_not_bgr(tmp_path: Path) -> None:
    rgb = np.random.default_rng(0).integers(0, 256, (17, 23, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "a.png")
    img = read_image_rgb(tmp_path / "a.png")
    _check_rgb(img, 17, 23)
    np.testing.assert_array_equal(img, rgb)


def test_grayscale_replicated(tmp_path: Path) -> None:
    gray = np.random.default_rng(1).integers(0, 256, (9, 11), dtype=np.uint8)
    Image.fromarray(gray).save(tmp_path / "g.png")
    img = read_image_rgb(tmp_path / "g.png")
    _check_rgb(img, 9, 11)
    for c in range(3):
        np.testing.assert_array_equal(img[..., c], gray)


def test_rgba_drops_alpha(tmp_path: Path) -> None:
    rgba = np.random.default_rng(2).integers(0, 256, (8, 12, 4), dtype=np.uint8)
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    img = read_image_rgb(tmp_path / "a.png")
    _check_rgb(img, 8, 12)
    np.testing.assert_array_equal(img, rgba[..., :3])


@pytest.mark.parametrize("channels", [1, 3])
def test_16bit_png_scaled_to_8bit(tmp_path: Path, channels: int) -> None:
    shape = (10, 14, 3) if channels == 3 else (10, 14)
    v16 = np.random.default_rng(3).integers(0, 65536, shape, dtype=np.uint16)
    cv2.imwrite(str(tmp_path / "d.png"), v16)  # BGR order on disk
    img = read_image_rgb(tmp_path / "d.png")
    _check_rgb(img, 10, 14)
    expected = (v16 >> 8).astype(np.uint8)
    expected = expected[..., ::-1] if channels == 3 else np.repeat(expected[..., None], 3, axis=2)
    np.testing.assert_array_equal(img, expected)


def test_cmyk_jpeg_to_rgb(tmp_path: Path) -> None:
    Image.new("CMYK", (16, 8), (0, 255, 255, 0)).save(tmp_path / "c.jpg")  # pure red in CMYK
    img = read_image_rgb(tmp_path / "c.jpg")
    _check_rgb(img, 8, 16)
    assert np.abs(img.astype(int) - [255, 0, 0]).max() <= 4


def test_exif_orientation_is_ignored(tmp_path: Path) -> None:
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    Image.fromarray(np.zeros((20, 40, 3), np.uint8)).save(tmp_path / "e.jpg", exif=exif)
    assert cv2.imread(str(tmp_path / "e.jpg")).shape[:2] == (40, 20)  # OpenCV's default applies it
    assert read_image_rgb(tmp_path / "e.jpg").shape == (20, 40, 3)  # we keep the stored pixels


def test_real_coco_jpeg_matches_pil(coco_dir: Path) -> None:
    path = coco_dir / "images" / "val2017" / "000000397133.jpg"
    img = read_image_rgb(path)
    ref = np.asarray(Image.open(path).convert("RGB"))
    assert img.shape == ref.shape == (427, 640, 3)
    assert np.abs(img.astype(int) - ref).mean() < 1.5  # libjpeg IDCT variants differ by ~1 level


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="nope.jpg"):
        read_image_rgb(tmp_path / "nope.jpg")


def test_zero_byte_file(tmp_path: Path) -> None:
    (tmp_path / "empty.jpg").write_bytes(b"")
    with pytest.raises(ImageReadError, match=r"empty \(0 bytes\).*empty.jpg"):
        read_image_rgb(tmp_path / "empty.jpg")


@pytest.mark.parametrize("cut", [2, 100, 0.5])
def test_truncated_jpeg(tmp_path: Path, coco_dir: Path, cut: float) -> None:
    data = (coco_dir / "images" / "val2017" / "000000397133.jpg").read_bytes()
    n = int(len(data) * cut) if cut < 1 else int(cut)
    (tmp_path / "t.jpg").write_bytes(data[: len(data) - n])
    with pytest.raises(ImageReadError, match="t.jpg"):
        read_image_rgb(tmp_path / "t.jpg")


def test_truncated_png_and_garbage(tmp_path: Path) -> None:
    cv2.imwrite(str(tmp_path / "x.png"), np.random.default_rng(4).integers(0, 256, (64, 64, 3), dtype=np.uint8))
    data = (tmp_path / "x.png").read_bytes()
    (tmp_path / "t.png").write_bytes(data[: len(data) // 2])
    (tmp_path / "junk.jpg").write_bytes(b"not an image at all" * 20)
    for name in ("t.png", "junk.jpg"):
        with pytest.raises(ImageReadError, match=name):
            read_image_rgb(tmp_path / name)


def test_worker_init_disables_opencv_threads() -> None:
    before = cv2.getNumThreads()
    try:
        worker_init_fn(0)
        assert cv2.getNumThreads() == 1
    finally:
        cv2.setNumThreads(before)
