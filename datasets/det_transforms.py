"""Detection augmentation: SSD's pipeline and torchvision's ``ssdlite`` preset on albumentations.

Presets (``build_det_transforms``), all ending in a float32 ``(3, H, W)`` tensor in [0, 1]:

* ``"ssd"`` -- SSD (Liu et al., 2016, arXiv:1512.02325) §2.2 "Data augmentation" and §3.6
  "zoom out", with the Caffe ``ssd_coco.py`` settings: photometric distortion, zoom-out onto a
  mean-filled canvas up to 4x, min-IoU random crop, horizontal flip, resize to ``size x size``.
* ``"ssdlite"`` -- torchvision ``references/detection/presets.py`` ``data_augmentation="ssdlite"``
  (the recipe of ``ssdlite320_mobilenet_v3_large``): ``RandomIoUCrop`` + ``RandomHorizontalFlip``
  only (torchvision drops photometric distortion and zoom-out for the small model), then resize.
* ``"none"`` -- resize only.

Evaluation (``train=False``) is the identity by default: the detector resizes internally and
returns boxes in original-image coordinates, so COCO export needs no rescaling.
"""

from __future__ import annotations

import os
import random
from typing import Any, Sequence

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")  # no network call at import time

import albumentations as A  # noqa: E402
import cv2  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from albumentations.augmentations.crops import functional as fcrops  # noqa: E402
from albumentations.core.bbox_utils import denormalize_bboxes, normalize_bboxes  # noqa: E402
from torch import Tensor  # noqa: E402

__all__ = [
    "MEAN_RGB",
    "SSD_CROP_OPTIONS",
    "TORCHVISION_CROP_OPTIONS",
    "SSDPhotometricDistort",
    "ZoomOut",
    "MinIoURandomCrop",
    "sample_min_iou_crop",
    "DetectionTransform",
    "build_det_transforms",
    "to_tensor",
]

Size = tuple[int, int]  # (h, w) or (left, top) in pixels
Rect = tuple[int, int, int, int]  # x1, y1, x2, y2 in pixels

#: ImageNet mean in 0-255: the zoom-out canvas fill of SSD and torchvision's presets.
MEAN_RGB: tuple[int, int, int] = (123, 117, 104)
#: SSD §2.2: the whole image (None), a random patch (0.0) or a patch with min IoU 0.1...0.9.
SSD_CROP_OPTIONS: tuple[float | None, ...] = (None, 0.0, 0.1, 0.3, 0.5, 0.7, 0.9)
#: torchvision ``RandomIoUCrop`` default ``[0.0, 0.1, ..., 0.9, 1.0]``; 1.0 means "leave as is".
TORCHVISION_CROP_OPTIONS: tuple[float | None, ...] = (0.0, 0.1, 0.3, 0.5, 0.7, 0.9, None)


class SSDPhotometricDistort(A.ImageOnlyTransform):
    """SSD photometric distortion (§2.2, Caffe ``distort_param``; Howard 2013).

    Brightness (additive) first, then contrast either before or after saturation/hue
    (random order, as in SSD), each applied with probability ``p_each``; optional
    channel shuffle.  Saturation multiplies S, hue shifts H by up to ``hue_delta`` degrees;
    every step saturates at 0/255 like Caffe's uint8 implementation.
    """

    def __init__(
        self,
        brightness_delta: float = 32.0,
        contrast: tuple[float, float] = (0.5, 1.5),
        saturation: tuple[float, float] = (0.5, 1.5),
        hue_delta: float = 18.0,
        p_each: float = 0.5,
        channel_shuffle_p: float = 0.0,
        p: float = 1.0,
    ) -> None:
        super().__init__(p=p)
        self.brightness_delta, self.contrast, self.saturation = brightness_delta, contrast, saturation
        self.hue_delta, self.p_each, self.channel_shuffle_p = hue_delta, p_each, channel_shuffle_p

    def get_transform_init_args_names(self) -> tuple[str, ...]:
        return ("brightness_delta", "contrast", "saturation", "hue_delta", "p_each", "channel_shuffle_p")

    def get_params(self) -> dict[str, Any]:
        r = self.py_random
        on = lambda: r.random() < self.p_each  # noqa: E731
        return {
            "brightness": r.uniform(-self.brightness_delta, self.brightness_delta) if on() else None,
            "contrast": r.uniform(*self.contrast) if on() else None,
            "contrast_first": r.random() < 0.5,
            "saturation": r.uniform(*self.saturation) if on() else None,
            "hue": r.uniform(-self.hue_delta, self.hue_delta) if on() else None,
            "permutation": r.sample(range(3), 3) if r.random() < self.channel_shuffle_p else None,
        }

    def apply(self, img: np.ndarray, **params: Any) -> np.ndarray:
        # uint8 look-up tables and uint8 HSV (H scaled to 0-255) as in Caffe: ~10x faster than float.
        ramp = np.arange(256, dtype=np.float32)
        lut = ramp
        if params["brightness"] is not None:
            lut = np.clip(lut + params["brightness"], 0, 255)
        if params["contrast"] is not None and params["contrast_first"]:
            lut = np.clip(lut * params["contrast"], 0, 255)
        x = cv2.LUT(img, np.rint(lut).astype(np.uint8)) if lut is not ramp else img
        if params["saturation"] is not None or params["hue"] is not None:
            hsv = cv2.cvtColor(x, cv2.COLOR_RGB2HSV_FULL)
            if params["hue"] is not None:
                shift = int(round(params["hue"] / 360.0 * 256.0))
                hsv[..., 0] = cv2.LUT(hsv[..., 0], ((np.arange(256) + shift) % 256).astype(np.uint8))
            if params["saturation"] is not None:
                sat = np.rint(np.clip(ramp * params["saturation"], 0, 255)).astype(np.uint8)
                hsv[..., 1] = cv2.LUT(hsv[..., 1], sat)
            x = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB_FULL)
        if params["contrast"] is not None and not params["contrast_first"]:
            x = cv2.LUT(x, np.rint(np.clip(ramp * params["contrast"], 0, 255)).astype(np.uint8))
        if params["permutation"] is not None:
            x = x[..., params["permutation"]]
        return np.ascontiguousarray(x)


class ZoomOut(A.DualTransform):
    """SSD §3.6 "zoom out": paste the image at a random place on a canvas ``r`` times larger.

    ``r ~ U(side_range)``; the canvas is filled with ``fill`` (the dataset mean).  Same
    sampling as torchvision ``RandomZoomOut``; the pixels are copied, never resampled.
    """

    def __init__(
        self,
        side_range: tuple[float, float] = (1.0, 4.0),
        fill: Sequence[float] = MEAN_RGB,
        p: float = 0.5,
    ) -> None:
        super().__init__(p=p)
        if not 1.0 <= side_range[0] <= side_range[1]:
            raise ValueError(f"ZoomOut: side_range must satisfy 1 <= min <= max, got {side_range}")
        self.side_range, self.fill = tuple(side_range), tuple(fill)

    def get_transform_init_args_names(self) -> tuple[str, ...]:
        return ("side_range", "fill")

    def get_params_dependent_on_data(self, params: dict[str, Any], data: dict[str, Any]) -> dict[str, Any]:
        h, w = params["shape"][:2]
        r = self.py_random.uniform(*self.side_range)
        canvas_h, canvas_w = int(h * r), int(w * r)
        left = int((canvas_w - w) * self.py_random.random())
        top = int((canvas_h - h) * self.py_random.random())
        return {"canvas_shape": (canvas_h, canvas_w), "offset": (left, top)}

    def apply(self, img: np.ndarray, canvas_shape: Size, offset: Size, **params: Any) -> np.ndarray:
        return _paste(img, canvas_shape, offset, self.fill)

    def apply_to_mask(self, mask: np.ndarray, canvas_shape: Size, offset: Size, **params: Any) -> np.ndarray:
        return _paste(mask, canvas_shape, offset, (0,))

    def apply_to_bboxes(self, bboxes: np.ndarray, canvas_shape: Size, offset: Size, **params: Any) -> np.ndarray:
        if not bboxes.size:
            return bboxes
        out = bboxes.astype(np.float32, copy=True)
        out[:, :4] = denormalize_bboxes(out[:, :4], params["shape"][:2])
        out[:, [0, 2]] += offset[0]
        out[:, [1, 3]] += offset[1]
        out[:, :4] = normalize_bboxes(out[:, :4], canvas_shape)
        return out


def _paste(img: np.ndarray, canvas_shape: Size, offset: Size, fill: Sequence[float]) -> np.ndarray:
    """Place ``img`` at ``offset`` (left, top) on a ``fill``-coloured canvas (cv2 border: fast)."""
    h, w = img.shape[:2]
    left, top = offset
    right, bottom = canvas_shape[1] - w - left, canvas_shape[0] - h - top
    out = cv2.copyMakeBorder(img, top, bottom, left, right, cv2.BORDER_CONSTANT, value=[float(v) for v in fill])
    return out.reshape(*canvas_shape, *img.shape[2:])


def _iou_with_rect(boxes: np.ndarray, rect: Rect) -> np.ndarray:
    """IoU of each ``(N, 4)`` xyxy box with one xyxy rectangle."""
    iw = np.clip(np.minimum(boxes[:, 2], rect[2]) - np.maximum(boxes[:, 0], rect[0]), 0, None)
    ih = np.clip(np.minimum(boxes[:, 3], rect[3]) - np.maximum(boxes[:, 1], rect[1]), 0, None)
    inter = iw * ih
    area_b = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    area_r = (rect[2] - rect[0]) * (rect[3] - rect[1])
    return inter / np.maximum(area_b + area_r - inter, 1e-9)


def sample_min_iou_crop(
    boxes: np.ndarray,
    height: int,
    width: int,
    rng: random.Random,
    options: Sequence[float | None] = SSD_CROP_OPTIONS,
    min_scale: float = 0.3,
    max_scale: float = 1.0,
    aspect_range: tuple[float, float] = (0.5, 2.0),
    trials: int = 50,
    max_rounds: int = 100,
) -> Rect | None:
    """Sample an SSD crop ``(x1, y1, x2, y2)`` in pixels, or None for "keep the whole image".

    SSD §2.2 / torchvision ``RandomIoUCrop``: draw a minimum IoU from ``options``
    (None = whole image), then up to ``trials`` patches with sides ``U(min_scale,
    max_scale)`` of the image and aspect ratio in ``aspect_range``; a patch is
    accepted when some box has its centre strictly inside it and the largest IoU of
    those boxes with the patch is at least the drawn value.  When every trial fails a
    new option is drawn (torchvision).  Images without boxes are never cropped.
    """
    if len(boxes) == 0:
        return None
    cx, cy = (boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2
    for _ in range(max_rounds):
        min_iou = rng.choice(options)
        if min_iou is None:
            return None
        for _ in range(trials):
            new_w = int(width * rng.uniform(min_scale, max_scale))
            new_h = int(height * rng.uniform(min_scale, max_scale))
            if new_w < 1 or new_h < 1 or not aspect_range[0] <= new_w / new_h <= aspect_range[1]:
                continue
            left, top = int((width - new_w) * rng.random()), int((height - new_h) * rng.random())
            rect = (left, top, left + new_w, top + new_h)
            inside = (rect[0] < cx) & (cx < rect[2]) & (rect[1] < cy) & (cy < rect[3])
            if inside.any() and _iou_with_rect(boxes[inside], rect).max() >= min_iou:
                return rect
    return None


class MinIoURandomCrop(A.DualTransform):
    """SSD min-IoU random crop (§2.2); keeps only boxes whose centre lies in the crop.

    Kept boxes are clipped to the crop (SSD, torchvision ``RandomIoUCrop`` followed by
    ``SanitizeBoundingBoxes``).  See :func:`sample_min_iou_crop` for the sampling.
    """

    def __init__(
        self,
        options: Sequence[float | None] = SSD_CROP_OPTIONS,
        min_scale: float = 0.3,
        max_scale: float = 1.0,
        aspect_range: tuple[float, float] = (0.5, 2.0),
        trials: int = 50,
        p: float = 1.0,
    ) -> None:
        super().__init__(p=p)
        self.options, self.min_scale, self.max_scale = tuple(options), min_scale, max_scale
        self.aspect_range, self.trials = tuple(aspect_range), trials

    def get_transform_init_args_names(self) -> tuple[str, ...]:
        return ("options", "min_scale", "max_scale", "aspect_range", "trials")

    def get_params_dependent_on_data(self, params: dict[str, Any], data: dict[str, Any]) -> dict[str, Any]:
        h, w = params["shape"][:2]
        bboxes = np.asarray(data.get("bboxes", np.zeros((0, 4))), dtype=np.float32)
        boxes = denormalize_bboxes(bboxes[:, :4], (h, w)) if len(bboxes) else bboxes[:, :4]
        crop = sample_min_iou_crop(
            boxes, h, w, self.py_random, self.options, self.min_scale, self.max_scale, self.aspect_range, self.trials
        )
        return {"crop_coords": crop}

    def apply(self, img: np.ndarray, crop_coords: Rect | None, **params: Any) -> np.ndarray:
        return img if crop_coords is None else fcrops.crop(img, *crop_coords)

    def apply_to_mask(self, mask: np.ndarray, crop_coords: Rect | None, **params: Any) -> np.ndarray:
        return mask if crop_coords is None else fcrops.crop(mask, *crop_coords)

    def apply_to_bboxes(self, bboxes: np.ndarray, crop_coords: Rect | None, **params: Any) -> np.ndarray:
        if crop_coords is None or not bboxes.size:
            return bboxes
        shape = params["shape"][:2]
        px = denormalize_bboxes(bboxes[:, :4].astype(np.float32), shape)
        cx, cy = (px[:, 0] + px[:, 2]) / 2, (px[:, 1] + px[:, 3]) / 2
        x1, y1, x2, y2 = crop_coords
        keep = (x1 < cx) & (cx < x2) & (y1 < cy) & (cy < y2)
        out = fcrops.crop_bboxes_by_coords(bboxes[keep], crop_coords, shape)
        out[:, :4] = np.clip(out[:, :4], 0.0, 1.0)
        return out


class DetectionTransform:
    """Albumentations pipeline for ``(image uint8 HxWx3, target)`` -> ``(Tensor, target)``.

    ``target["boxes"]`` (N, 4) xyxy pixels and ``target["labels"]`` (N,) go through the
    pipeline (plus ``target["iscrowd"]`` when present); every other key is copied.  The
    output boxes are float32, clipped to the image and have ``x2 > x1``, ``y2 > y1`` and
    both sides ``>= min_box_size`` pixels; labels are int64.

    Randomness follows torch's global generator, like torchvision's transforms: each call
    draws one seed from it for the numpy/python generator pair shared by all ops.  So
    ``torch.manual_seed`` reproduces augmentations, and DataLoader workers (whose torch
    generator is seeded per worker and per epoch) never replay each other's.  Albumentations'
    own streams would be copied unchanged into every worker process.  ``set_random_seed``
    switches to an explicitly seeded stream instead (albumentations' semantics), e.g. to
    seed every sample from ``(seed, epoch, index)``.
    """

    def __init__(self, ops: Sequence[A.BasicTransform], min_box_size: float = 1.0) -> None:
        self.ops = list(ops)
        self.min_box_size = min_box_size
        bbox_params = A.BboxParams(
            format="pascal_voc", label_fields=["labels", "iscrowd"], clip=True,
            min_width=min_box_size, min_height=min_box_size,
        )
        self.compose = A.Compose(self.ops, bbox_params=bbox_params) if self.ops else None
        self._explicit_seed = False

    def __repr__(self) -> str:
        return f"{type(self).__name__}({[type(t).__name__ for t in self.ops]}, min_box_size={self.min_box_size})"

    def set_random_seed(self, seed: int | None) -> None:
        """Restart the stream from ``seed``; None goes back to one torch draw per call."""
        self._explicit_seed = seed is not None
        if seed is not None:
            self._seed_stream(seed)

    def _seed_stream(self, seed: int) -> None:
        if self.compose is not None:
            self.compose.set_random_state(np.random.default_rng(seed), random.Random(seed))

    def __call__(self, image: np.ndarray, target: dict[str, Any]) -> tuple[Tensor, dict[str, Any]]:
        boxes = np.array(target.get("boxes", np.zeros((0, 4))), dtype=np.float32).reshape(-1, 4)  # a copy
        labels = np.asarray(target.get("labels", np.zeros(len(boxes))), dtype=np.int64).reshape(-1)
        has_crowd = "iscrowd" in target
        iscrowd = np.asarray(target["iscrowd"] if has_crowd else np.zeros(len(boxes)), dtype=np.int64).reshape(-1)
        if self.compose is not None:
            if not self._explicit_seed:
                self._seed_stream(int(torch.empty((), dtype=torch.int64).random_()))
            out = self.compose(image=image, bboxes=boxes, labels=labels, iscrowd=iscrowd)
            image = out["image"]
            boxes = np.asarray(out["bboxes"], dtype=np.float32).reshape(-1, 4)
            labels = np.asarray(out["labels"], dtype=np.int64).reshape(-1)
            iscrowd = np.asarray(out["iscrowd"], dtype=np.int64).reshape(-1)
        h, w = image.shape[:2]
        boxes[:, 0::2] = boxes[:, 0::2].clip(0, w)
        boxes[:, 1::2] = boxes[:, 1::2].clip(0, h)
        sides = np.minimum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1])
        keep = (sides >= self.min_box_size) & (sides > 0)
        result = {k: v for k, v in target.items() if k not in ("boxes", "labels", "iscrowd")}
        result["boxes"] = torch.from_numpy(np.ascontiguousarray(boxes[keep]))
        result["labels"] = torch.from_numpy(np.ascontiguousarray(labels[keep]))
        if has_crowd:
            result["iscrowd"] = torch.from_numpy(np.ascontiguousarray(iscrowd[keep]))
        return to_tensor(image), result


def to_tensor(image: np.ndarray) -> Tensor:
    """``(H, W, 3)`` uint8 -> ``(3, H, W)`` float32 in [0, 1]."""
    # numpy, not torch: independent of torch's intra-op thread pool (slow when oversubscribed).
    x = np.ascontiguousarray(image.transpose(2, 0, 1), dtype=np.float32)
    x *= np.float32(1.0 / 255.0)
    return torch.from_numpy(x)


PRESETS = ("ssd", "ssdlite", "none")


def build_det_transforms(
    preset: str,
    size: int | Sequence[int] | None,
    train: bool,
    *,
    mean: Sequence[float] = MEAN_RGB,
    hflip_prob: float = 0.5,
    eval_resize: bool = False,
    min_box_size: float = 1.0,
) -> DetectionTransform:
    """Detection transforms for a preset (see module docstring).

    Args:
        preset: ``"ssd"``, ``"ssdlite"`` or ``"none"``.
        size: output size for training, a side (square) or (h, w); None keeps the augmented size.
        train: training augmentation; otherwise identity (or resize with ``eval_resize``).
        mean: zoom-out canvas fill (RGB, 0-255).
        hflip_prob: horizontal flip probability.
        eval_resize: evaluate on ``size x size`` resized images (boxes then refer to the
            resized image; ``target["orig_size"]`` maps them back).
        min_box_size: boxes whose shorter side falls under this many pixels are dropped.
    """
    if preset not in PRESETS:
        raise ValueError(f"unknown detection preset {preset!r}; valid presets: {', '.join(PRESETS)}")
    h, w = (size, size) if isinstance(size, int) else tuple(size) if size else (0, 0)
    resize = [A.Resize(h, w, interpolation=cv2.INTER_LINEAR)] if size else []
    if not train:
        return DetectionTransform(resize if eval_resize else [], min_box_size)
    if preset == "ssd":
        ops: list[A.BasicTransform] = [
            SSDPhotometricDistort(),
            ZoomOut(side_range=(1.0, 4.0), fill=mean, p=0.5),
            MinIoURandomCrop(SSD_CROP_OPTIONS, trials=50),
        ]
    elif preset == "ssdlite":
        ops = [MinIoURandomCrop(TORCHVISION_CROP_OPTIONS, trials=40)]
    else:
        ops = []
    flip = [A.HorizontalFlip(p=hflip_prob)] if preset != "none" else []
    return DetectionTransform(ops + flip + resize, min_box_size)
