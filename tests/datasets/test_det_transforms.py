"""Detection augmentation: valid outputs for many seeds, exact geometry of each op."""

from __future__ import annotations

import random
from pathlib import Path

import albumentations as A
import numpy as np
import pytest
import torch

from mobiledense.datasets import CocoDetection, build_det_transforms
from mobiledense.datasets.det_transforms import (
    MEAN_RGB,
    DetectionTransform,
    MinIoURandomCrop,
    SSDPhotometricDistort,
    ZoomOut,
    _iou_with_rect,
    sample_min_iou_crop,
)


@pytest.fixture(scope="module")
def val(coco_dir: Path) -> CocoDetection:
    return CocoDetection(coco_dir / "images" / "val2017", coco_dir / "annotations" / "instances_val2017.json")


@pytest.fixture(scope="module")
def samples(val: CocoDetection) -> list[tuple[np.ndarray, dict]]:
    """Eight real images (including one without annotations), decoded once."""
    idx = [0, 3, 9, 14, 21, 30, 41, val.image_ids.index(226111)]
    return [(val.load_image(i), val.raw_target(i)) for i in idx]


def _assert_valid(image: torch.Tensor, target: dict, size: tuple[int, int] | None, in_labels: np.ndarray) -> None:
    assert image.dtype == torch.float32 and image.ndim == 3 and image.shape[0] == 3
    if size is not None:
        assert tuple(image.shape[1:]) == size
    assert 0.0 <= float(image.min()) and float(image.max()) <= 1.0
    boxes, labels = target["boxes"], target["labels"]
    assert boxes.dtype == torch.float32 and boxes.ndim == 2 and boxes.shape[1] == 4
    assert labels.dtype == torch.int64 and labels.shape == (len(boxes),)
    h, w = image.shape[1:]
    assert bool((boxes[:, 2] > boxes[:, 0]).all() and (boxes[:, 3] > boxes[:, 1]).all())
    assert bool((boxes[:, 0] >= 0).all() and (boxes[:, 1] >= 0).all())
    assert bool((boxes[:, 2] <= w).all() and (boxes[:, 3] <= h).all())
    assert set(labels.tolist()) <= set(in_labels.tolist())


@pytest.mark.parametrize("preset,size", [("ssd", 320), ("ssdlite", 320), ("ssd", None), ("none", 300)])
def test_outputs_valid_for_many_seeds(samples: list, preset: str, size: int | None) -> None:
    transform = build_det_transforms(preset, size, train=True)
    n_boxes = 0
    for seed in range(40):
        torch.manual_seed(seed)  # the transform draws its seeds from torch's generator
        image, target = samples[seed % len(samples)]
        out_image, out = transform(image, target)
        _assert_valid(out_image, out, None if size is None else (size, size), target["labels"])
        assert out_image.is_contiguous()
        assert out["image_id"] == target["image_id"] and out["orig_size"] == target["orig_size"]
        n_boxes += len(out["boxes"])
    assert n_boxes > 40  # the crops do not simply drop everything


def test_same_torch_seed_same_augmentation(samples: list) -> None:
    transform = build_det_transforms("ssd", 128, train=True)
    image, target = samples[1]
    runs = []
    for seed in (5, 5, 6):
        torch.manual_seed(seed)
        runs.append(transform(image, target))
    assert torch.equal(runs[0][0], runs[1][0]) and torch.equal(runs[0][1]["boxes"], runs[1][1]["boxes"])
    assert not torch.equal(runs[0][0], runs[2][0])
    # an explicit seed (albumentations' set_random_seed) overrides torch's generator
    explicit = []
    for seed in (11, 11):
        transform.set_random_seed(seed)
        torch.manual_seed(len(explicit))
        explicit.append(transform(image, target)[0])
    assert torch.equal(explicit[0], explicit[1])
    transform.set_random_seed(None)
    torch.manual_seed(5)
    assert torch.equal(transform(image, target)[0], runs[0][0])


def test_eval_transforms(samples: list) -> None:
    image, target = samples[0]
    out_image, out = build_det_transforms("ssd", 320, train=False)(image, target)
    assert out_image.shape == (3, *image.shape[:2])  # identity: the detector resizes itself
    np.testing.assert_allclose(out["boxes"].numpy(), target["boxes"])
    np.testing.assert_allclose(out_image.numpy().transpose(1, 2, 0) * 255, image, atol=1e-3)
    out_image, out = build_det_transforms("ssdlite", 320, train=False, eval_resize=True)(image, target)
    sx, sy = 320 / image.shape[1], 320 / image.shape[0]
    assert out_image.shape == (3, 320, 320)
    np.testing.assert_allclose(out["boxes"].numpy(), target["boxes"] * [sx, sy, sx, sy], rtol=1e-5, atol=1e-3)
    with pytest.raises(ValueError, match="valid presets: ssd, ssdlite, none"):
        build_det_transforms("yolo", 320, train=True)


def test_horizontal_flip_is_exact(samples: list) -> None:
    image, target = samples[2]
    w = image.shape[1]
    out_image, out = DetectionTransform([A.HorizontalFlip(p=1.0)])(image, target)
    np.testing.assert_array_equal((out_image.numpy() * 255).round().astype(np.uint8).transpose(1, 2, 0), image[:, ::-1])
    b = target["boxes"]
    expected = np.stack([w - b[:, 2], b[:, 1], w - b[:, 0], b[:, 3]], axis=1)
    np.testing.assert_allclose(out["boxes"].numpy(), expected, rtol=0, atol=1e-3)
    assert out["labels"].tolist() == target["labels"].tolist()


def test_sample_min_iou_crop_honours_constraint(samples: list) -> None:
    rng = random.Random(0)
    for k in range(60):
        image, target = samples[k % 7]  # images with boxes
        boxes, (h, w) = target["boxes"], image.shape[:2]
        min_iou = (0.1, 0.3, 0.5, 0.7, 0.9)[k % 5]
        rect = sample_min_iou_crop(boxes, h, w, rng, options=(min_iou,))
        if rect is None:  # all rounds failed (no box can reach the IoU): a legal outcome
            continue
        x1, y1, x2, y2 = rect
        assert 0 <= x1 < x2 <= w and 0 <= y1 < y2 <= h
        assert 0.5 <= (x2 - x1) / (y2 - y1) <= 2.0 and x2 - x1 >= int(0.3 * w) - 1
        cx, cy = (boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2
        inside = (x1 < cx) & (cx < x2) & (y1 < cy) & (cy < y2)
        assert inside.any() and _iou_with_rect(boxes[inside], rect).max() >= min_iou
    assert sample_min_iou_crop(np.zeros((0, 4), np.float32), 50, 50, rng) is None  # no boxes: no crop
    assert sample_min_iou_crop(samples[0][1]["boxes"], 427, 640, rng, options=(None,)) is None


def test_min_iou_crop_keeps_centred_boxes_clipped(samples: list) -> None:
    image, target = samples[3]
    crop = MinIoURandomCrop(options=(0.3,))
    transform = DetectionTransform([crop], min_box_size=0.0)
    for seed in range(10):
        torch.manual_seed(seed)
        out_image, out = transform(image, target)
        x1, y1, x2, y2 = crop.params["crop_coords"]
        assert out_image.shape[1:] == (y2 - y1, x2 - x1)
        np.testing.assert_array_equal(
            (out_image.numpy() * 255).round().astype(np.uint8).transpose(1, 2, 0), image[y1:y2, x1:x2])
        b = target["boxes"]
        cx, cy = (b[:, 0] + b[:, 2]) / 2, (b[:, 1] + b[:, 3]) / 2
        keep = (x1 < cx) & (cx < x2) & (y1 < cy) & (cy < y2)
        expected = np.clip(b[keep] - [x1, y1, x1, y1], 0, [x2 - x1, y2 - y1] * 2)
        np.testing.assert_allclose(out["boxes"].numpy(), expected, rtol=0, atol=1e-3)
        assert out["labels"].tolist() == target["labels"][keep].tolist()


def test_zoom_out_keeps_boxes_on_the_same_content() -> None:
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (60, 80, 3), dtype=np.uint8)
    target = {"boxes": np.array([[3, 4, 20, 30], [40, 10, 80, 60]], np.float32), "labels": np.array([1, 2])}
    zoom = ZoomOut(side_range=(1.0, 4.0), p=1.0)
    transform = DetectionTransform([zoom])
    for seed in range(10):
        torch.manual_seed(seed)
        out_image, out = transform(image, target)
        canvas = (out_image.numpy() * 255).round().astype(np.uint8).transpose(1, 2, 0)
        h, w = canvas.shape[:2]
        assert 60 <= h <= 240 and 80 <= w <= 320 and abs(h / 60 - w / 80) < 0.05
        left, top = zoom.params["offset"]
        np.testing.assert_array_equal(canvas[top : top + 60, left : left + 80], image)
        assert (canvas[:top] == MEAN_RGB).all() and (canvas[:, left + 80 :] == MEAN_RGB).all()
        for src, dst in zip(target["boxes"].astype(int), out["boxes"].numpy()):
            x1, y1, x2, y2 = np.round(dst).astype(int)
            np.testing.assert_array_equal(canvas[y1:y2, x1:x2], image[src[1] : src[3], src[0] : src[2]])


def test_photometric_distort() -> None:
    image = np.random.default_rng(1).integers(0, 256, (30, 40, 3), dtype=np.uint8)
    off = SSDPhotometricDistort(p_each=0.0)
    np.testing.assert_array_equal(off(image=image)["image"], image)
    base = {"brightness": None, "contrast": None, "contrast_first": True, "saturation": None, "hue": None,
            "permutation": None}
    t = SSDPhotometricDistort()
    np.testing.assert_array_equal(t.apply(image, **{**base, "brightness": 32.0}),
                                  np.clip(image.astype(int) + 32, 0, 255))
    np.testing.assert_array_equal(t.apply(image, **{**base, "contrast": 1.5}),
                                  np.clip(np.rint(image * 1.5), 0, 255).astype(np.uint8))
    gray = np.repeat(image[..., :1], 3, axis=2)  # saturation 0: hue and saturation changes keep gray
    np.testing.assert_allclose(t.apply(gray, **{**base, "saturation": 1.5, "hue": 18.0}), gray, atol=1)
    vivid = np.zeros((4, 4, 3), np.uint8)
    vivid[..., 0] = 200  # pure red, hue 0 -> +120 degrees is pure green
    np.testing.assert_allclose(t.apply(vivid, **{**base, "hue": 120.0})[0, 0], [0, 200, 0], atol=4)
    assert t.apply(image, **{**base, "permutation": [2, 1, 0]}).tolist() == image[..., ::-1].tolist()


def test_same_format_as_torchvision_reference(samples: list) -> None:
    """Our SSD pipeline vs torchvision's v2 reference transforms: same output format and size."""
    from torchvision import tv_tensors
    from torchvision.transforms import v2 as T

    reference = T.Compose([
        T.RandomPhotometricDistort(), T.RandomZoomOut(fill=list(MEAN_RGB)), T.RandomIoUCrop(),
        T.RandomHorizontalFlip(), T.SanitizeBoundingBoxes(), T.Resize((320, 320)), T.ToDtype(torch.float32, scale=True),
    ])
    ours = build_det_transforms("ssd", 320, train=True)
    for seed in range(6):
        torch.manual_seed(seed)
        image, target = samples[seed]
        h, w = image.shape[:2]
        tv_image, tv_target = reference(
            tv_tensors.Image(torch.from_numpy(image).permute(2, 0, 1)),
            {"boxes": tv_tensors.BoundingBoxes(torch.from_numpy(target["boxes"]), format="XYXY", canvas_size=(h, w)),
             "labels": torch.from_numpy(target["labels"])},
        )
        our_image, our_target = ours(image, target)
        assert our_image.shape == tv_image.shape == (3, 320, 320) and our_image.dtype == tv_image.dtype
        assert our_target["boxes"].dtype == tv_target["boxes"].dtype == torch.float32
        assert our_target["labels"].dtype == tv_target["labels"].dtype == torch.int64
        _assert_valid(our_image, our_target, (320, 320), target["labels"])
        _assert_valid(tv_image.as_subclass(torch.Tensor),
                      {"boxes": tv_target["boxes"].as_subclass(torch.Tensor), "labels": tv_target["labels"]},
                      (320, 320), target["labels"])
