"""Awkward images through the whole pipeline: every colour format, tiny and huge sizes, bombs, empty sets.

Decoding of each format (grayscale, RGBA, 16-bit, CMYK, EXIF, truncated, zero-byte, missing) is
tested in tests/datasets/test_io.py and json problems in test_coco.py; here the files go through
dataset -> augmentation -> detector (training and inference) and the CLI.
"""

from __future__ import annotations

import json
import resource
import struct
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from mobiledense.datasets import CocoDetection, CocoFormatError, ImageReadError, build_det_transforms, collate_detection
from mobiledense.datasets.io import read_image_rgb
from mobiledense.heads import create_detector
from mobiledense.tools.cli import main

SIZE = 96


def _gradient(h: int, w: int) -> np.ndarray:
    y, x = np.mgrid[0:h, 0:w]
    return np.stack([x * 255 // max(w - 1, 1), y * 255 // max(h - 1, 1), (x + y) % 256], -1).astype(np.uint8)


def _write_formats(folder: Path) -> dict[str, tuple[int, int]]:
    """One file per format; returns ``{file_name: (stored height, stored width)}``."""
    folder.mkdir(parents=True, exist_ok=True)
    rgb = _gradient(48, 64)
    Image.fromarray(rgb[..., 0]).save(folder / "gray.png")
    Image.fromarray(np.dstack([rgb, np.full((48, 64), 128, np.uint8)]), "RGBA").save(folder / "rgba.png")
    cv2.imwrite(str(folder / "deep.png"), rgb.astype(np.uint16) * 257)  # 16 bit per channel
    Image.fromarray(rgb).convert("CMYK").save(folder / "cmyk.jpg")
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees to display": stored 64x48, displayed 48x64
    Image.fromarray(rgb).save(folder / "exif.jpg", exif=exif)
    Image.fromarray(rgb).save(folder / "plain.jpg")
    Image.fromarray(rgb).save(folder / "image.bmp")
    return {name: (48, 64) for name in ("gray.png", "rgba.png", "deep.png", "cmyk.jpg", "exif.jpg", "plain.jpg",
                                        "image.bmp")}


def _coco_json(path: Path, files: dict[str, tuple[int, int]], box: bool = True) -> Path:
    images, anns = [], []
    for i, (name, (h, w)) in enumerate(sorted(files.items()), 1):
        images.append({"id": i, "file_name": name, "width": w, "height": h})
        if box:
            anns.append({"id": i, "image_id": i, "category_id": 1, "bbox": [0, 0, w, h], "iscrowd": 0})
    path.write_text(json.dumps({"images": images, "annotations": anns,
                                "categories": [{"id": 1, "name": "thing"}]}))
    return path


@pytest.fixture(scope="module")
def detector() -> torch.nn.Module:
    torch.manual_seed(0)
    return create_detector("ssdlite_mobilenet_v3_small", num_classes=2, size=SIZE)


def _train_and_predict(detector: torch.nn.Module, images: Path, ann: Path) -> None:
    """Augmented samples train with finite losses; raw images give boxes inside themselves."""
    train = CocoDetection(images, ann, transforms=build_det_transforms("ssdlite", SIZE, train=True))
    samples = [train[i] for i in range(len(train))]
    batch_images, targets = collate_detection(samples * 2 if len(samples) == 1 else samples)  # BN needs 2
    assert all(x.shape == (3, SIZE, SIZE) and x.dtype == torch.float32 for x in batch_images)
    assert all(0 <= float(x.min()) and float(x.max()) <= 1 for x in batch_images)
    losses = detector.train()(batch_images, targets)
    assert all(torch.isfinite(v) for v in losses.values()), losses
    raw = CocoDetection(images, ann)
    with torch.no_grad():
        for i in range(len(raw)):
            image, target = raw[i]
            h, w = target["orig_size"]
            assert image.shape == (3, h, w)
            boxes = detector.eval()([image])[0]["boxes"]
            assert len(boxes) and (boxes >= 0).all() and (boxes[:, 0::2] <= w).all() and (boxes[:, 1::2] <= h).all()


def test_every_colour_format_trains_and_predicts(tmp_path: Path, detector) -> None:
    files = _write_formats(tmp_path / "images")
    _train_and_predict(detector, tmp_path / "images", _coco_json(tmp_path / "ann.json", files))


def test_exif_json_with_the_displayed_size_is_refused_with_a_hint(tmp_path: Path) -> None:
    """A json written by a tool that applied EXIF rotation says 48x64 (WxH) for a 64x48 stored image."""
    _write_formats(tmp_path / "images")
    ann = _coco_json(tmp_path / "ann.json", {"exif.jpg": (64, 48)})
    with pytest.raises(CocoFormatError, match=r"exif\.jpg: image is 64x48 \(WxH\) but .* says 48x64.*"
                                              r"EXIF orientation is ignored"):
        CocoDetection(tmp_path / "images", ann)[0]


@pytest.mark.parametrize("h,w", [(1, 1), (1, 9), (7, 1), (3, 5)])
def test_tiny_images(tmp_path: Path, detector, h: int, w: int) -> None:
    """Down to 1x1: whole-image boxes survive augmentation and resizing; detections stay inside."""
    (tmp_path / "images").mkdir()
    Image.fromarray(_gradient(h, w)).save(tmp_path / "images" / "tiny.png")
    _train_and_predict(detector, tmp_path / "images", _coco_json(tmp_path / "ann.json", {"tiny.png": (h, w)}))


def test_large_image(tmp_path: Path, detector) -> None:
    """A 12 MP photo: augmented to the input size for training, boxes in its own pixels at inference."""
    (tmp_path / "images").mkdir()
    cv2.imwrite(str(tmp_path / "images" / "big.jpg"), _gradient(3000, 4000))
    _train_and_predict(detector, tmp_path / "images", _coco_json(tmp_path / "ann.json", {"big.jpg": (3000, 4000)}))


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header declares ``width x height`` RGB pixels but holds 4 rows of data."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    rows = zlib.compress(b"".join(b"\0" + bytes(width * 3) for _ in range(4)))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", rows) + chunk(b"IEND", b""))


def test_decompression_bomb_is_refused_without_allocating(tmp_path: Path) -> None:
    """A 30000x20000 header (1.8 GB of pixels) over a few KB: refused by name, no big allocation."""
    path = tmp_path / "bomb.png"
    path.write_bytes(_png_header_only(30000, 20000))
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(ImageReadError, match="bomb.png"):
        read_image_rgb(path)
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 200 * 1024  # KiB


def test_header_beyond_opencv_pixel_limit_is_named(tmp_path: Path) -> None:
    path = tmp_path / "huge.png"
    path.write_bytes(_png_header_only(50000, 50000))  # 2.5 G pixels > 2^30
    with pytest.raises(ImageReadError, match="huge.png"):
        read_image_rgb(path)


def test_predict_det_skips_unreadable_files_and_reports_them(det_checkpoint, tmp_path: Path, capsys) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    Image.fromarray(_gradient(40, 50)).save(folder / "a_good.jpg")
    (folder / "b_empty.jpg").write_bytes(b"")
    data = (folder / "a_good.jpg").read_bytes()
    (folder / "c_truncated.jpg").write_bytes(data[: len(data) // 2])
    out = tmp_path / "out"
    assert main(["predict", "det", str(folder), "--checkpoint", str(det_checkpoint), "--output-dir", str(out)]) == 1
    lines = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert [Path(r["file"]).name for r in lines] == ["a_good.jpg", "b_empty.jpg", "c_truncated.jpg"]
    assert "detections" in lines[0] and lines[0]["width"] == 50
    assert "empty (0 bytes)" in lines[1]["error"] and "truncated" in lines[2]["error"]
    assert [p.name for p in (out / "overlays").iterdir()] == ["a_good.png"]
    err = capsys.readouterr().err
    assert "skipping" in err and "b_empty.jpg" in err and "2 of 3 images could not be read" in err


def test_predict_seg_skips_unreadable_files(seg_checkpoint, tmp_path: Path, capsys) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    Image.fromarray(_gradient(32, 48)).save(folder / "good.png")
    (folder / "junk.png").write_bytes(b"not a png" * 10)
    out = tmp_path / "out"
    assert main(["predict", "seg", str(folder), "--checkpoint", str(seg_checkpoint), "--output-dir", str(out)]) == 1
    assert sorted(p.name for p in out.iterdir()) == ["good_color.png", "good_labelIds.png", "good_overlay.png"]
    assert "junk.png" in capsys.readouterr().err


def test_annotation_free_images_train_as_background(tmp_path: Path, detector) -> None:
    """``"annotations": []``: every image is background; the losses stay finite (no positives)."""
    files = _write_formats(tmp_path / "images")
    _train_and_predict(detector, tmp_path / "images", _coco_json(tmp_path / "ann.json", files, box=False))


def test_a_json_without_images_is_refused_by_train_and_eval(det_checkpoint, tmp_path: Path, capsys) -> None:
    (tmp_path / "images").mkdir()
    ann = _coco_json(tmp_path / "empty.json", {})
    assert main(["train", "det", "--train-images", str(tmp_path / "images"), "--train-ann", str(ann),
                 "--output-dir", str(tmp_path / "run")]) == 2
    assert f"error: {ann} lists no images: nothing to train on" in capsys.readouterr().err
    assert main(["eval", "det", "--checkpoint", str(det_checkpoint), "--val-images", str(tmp_path / "images"),
                 "--val-ann", str(ann), "--output-dir", str(tmp_path / "eval")]) == 2
    assert f"error: {ann} lists no images: nothing to evaluate" in capsys.readouterr().err
