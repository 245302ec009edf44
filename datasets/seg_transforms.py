"""Segmentation augmentation: albumentations + OpenCV, the Cityscapes recipe of LR-ASPP.

Training follows the usual Cityscapes recipe (Howard et al., "Searching for MobileNetV3", §6.4,
after DeepLab): resize to a base size, colour jitter, random scale in [0.5, 2.0] of the base size,
pad to the crop size (image fill 0, mask fill 255 = ignore), random crop, horizontal flip.
Evaluation resizes the *image only* by ``eval_scale`` (full or half resolution) and keeps the
mask at the label file's resolution: the evaluator upsamples logits to the label size, so mIoU is
always measured on the original 2048x1024 grid. Masks always use nearest-neighbour interpolation.

A transform is a callable ``(image uint8 HxWx3 RGB, mask uint8 HxW) -> (float32 (3,H,W) in
[0, 1], int64 (H,W))``, the segmentation sample format of the project.
"""

from __future__ import annotations

from collections.abc import Sequence

import albumentations as A
import cv2
import numpy as np
import torch
from torch import Tensor

IGNORE_INDEX = 255


def to_tensor_pair(image: np.ndarray, mask: np.ndarray) -> tuple[Tensor, Tensor]:
    """uint8 HxWx3 image and HxW mask -> float32 (3,H,W) in [0, 1] and int64 (H,W)."""
    img = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))).float().div_(255.0)
    return img, torch.from_numpy(np.ascontiguousarray(mask)).long()


class SegTransform:
    """An albumentations pipeline on (image, mask) plus an optional image-only stage, then tensors.

    Albumentations keeps its own RNG (``A.Compose(seed=...)``), which DataLoader workers would
    inherit identically after fork; each worker therefore reseeds from its torch worker seed on
    first use, so workers (and epochs, without persistent workers) draw different augmentations.
    """

    def __init__(self, joint: A.Compose, image_only: A.Compose | None = None, seed: int | None = None) -> None:
        self.joint = joint
        self.image_only = image_only
        self._worker_seed: int | None = None
        if seed is None:  # follow torch.manual_seed so a seeded run is reproducible
            seed = int(torch.randint(0, 2**31 - 1, ()).item())
        self.set_seed(seed)

    def set_seed(self, seed: int) -> None:
        """Reseed every random transform (joint and image-only stages)."""
        self.joint.set_random_seed(seed)
        if self.image_only is not None:
            self.image_only.set_random_seed(seed + 1)

    def set_random_seed(self, seed: int) -> None:
        """Seed the next sample from outside (the training engine seeds each sample from
        ``(seed, epoch, index)``); the per-worker reseeding is then switched off."""
        self._seeded_per_sample = True
        self.set_seed(seed)

    def __call__(self, image: np.ndarray, mask: np.ndarray) -> tuple[Tensor, Tensor]:
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"image must be uint8 HxWx3 RGB, got {image.dtype} {image.shape}")
        if mask.ndim != 2 or mask.shape != image.shape[:2]:
            raise ValueError(f"mask must be HxW matching the image {image.shape[:2]}, got {mask.shape}")
        info = torch.utils.data.get_worker_info()
        if info is not None and self._worker_seed != info.seed and not getattr(self, "_seeded_per_sample", False):
            self._worker_seed = info.seed
            self.set_seed(info.seed % (2**31 - 1))
        out = self.joint(image=image, mask=mask)
        image, mask = out["image"], out["mask"]
        if self.image_only is not None:
            image = self.image_only(image=image)["image"]
        return to_tensor_pair(image, mask)

    def __repr__(self) -> str:
        return f"SegTransform(joint={self.joint!r}, image_only={self.image_only!r})"


def _hw(value: Sequence[int] | None, name: str) -> tuple[int, int] | None:
    if value is None:
        return None
    if len(value) != 2 or not all(isinstance(v, (int, np.integer)) and v > 0 for v in value):
        raise ValueError(f"{name} must be (height, width) positive ints, got {value!r}")
    return int(value[0]), int(value[1])


def _resize(size: tuple[int, int]) -> A.Resize:
    # Bilinear for up-, area for down-sampling of the image; nearest for the mask (labels stay labels).
    return A.Resize(*size, interpolation=cv2.INTER_LINEAR, mask_interpolation=cv2.INTER_NEAREST,
                    area_for_downscale="image")


def eval_resize(image: np.ndarray, size: tuple[int, int]) -> Tensor:
    """One uint8 RGB image resized as the evaluation pipeline resizes frames (bilinear up, area down),
    as a float (3, H, W) tensor in [0, 1]: what ``predict seg`` feeds, with no label to carry along."""
    resized = _resize(size)(image=image)["image"]
    return torch.from_numpy(np.ascontiguousarray(resized.transpose(2, 0, 1))).float().div_(255.0)


def _scale(factor_range: tuple[float, float]) -> A.RandomScale:
    # RandomScale samples s in (1 + lo, 1 + hi) and resizes both sides by s (aspect kept).
    lo, hi = factor_range
    return A.RandomScale(scale_limit=(lo - 1.0, hi - 1.0), interpolation=cv2.INTER_LINEAR,
                         mask_interpolation=cv2.INTER_NEAREST, area_for_downscale="image", p=1.0)


def build_seg_transforms(
    train: bool,
    crop_size: Sequence[int] | None = (512, 1024),
    scale_range: tuple[float, float] = (0.5, 2.0),
    base_size: Sequence[int] | None = (1024, 2048),
    hflip: bool = True,
    photometric: bool = True,
    eval_scale: float = 1.0,
    resize_mask: bool = False,
    seed: int | None = None,
) -> SegTransform:
    """The Cityscapes training / evaluation pipeline.

    Args:
        train: random scale + pad + crop + flip + jitter if True, else the deterministic eval resize.
        crop_size: (h, w) of training crops; smaller scaled images are padded (image 0, mask 255).
            None keeps the whole scaled image.
        scale_range: random scale factors relative to ``base_size`` (uniform), e.g. (0.5, 2.0).
        base_size: (h, w) every image is first resized to (Cityscapes: 1024x2048); None = the
            image's own size. Scales, in training and eval, are relative to it.
        hflip: random horizontal flip with p=0.5 (training).
        photometric: colour jitter (brightness/contrast/saturation/hue; p=0.8, training).
        eval_scale: evaluation resolution relative to ``base_size``: 1.0 full, 0.5 half.
        resize_mask: evaluation only; also resize the mask (nearest). Default False keeps the mask
            at the label file's resolution, and the evaluator upsamples logits to it.
        seed: seed of the albumentations RNG; None draws it from torch's global generator.

    Returns:
        A :class:`SegTransform` callable ``(image, mask) -> (float image (3,H,W), int64 mask)``.
    """
    crop = _hw(crop_size, "crop_size")
    base = _hw(base_size, "base_size")
    lo, hi = (float(s) for s in scale_range)
    if not 0 < lo <= hi:
        raise ValueError(f"scale_range must satisfy 0 < low <= high, got {scale_range!r}")
    if eval_scale <= 0:
        raise ValueError(f"eval_scale must be > 0 (1.0 full, 0.5 half resolution), got {eval_scale}")

    if not train:
        if base is not None:
            stage = [_resize((round(base[0] * eval_scale), round(base[1] * eval_scale)))]
        else:
            stage = [_scale((eval_scale, eval_scale))] if eval_scale != 1.0 else []
        if resize_mask:
            return SegTransform(A.Compose(stage), seed=seed)
        return SegTransform(A.Compose([]), A.Compose(stage) if stage else None, seed=seed)

    ops: list[A.BasicTransform] = []
    if base is not None:
        ops.append(_resize(base))
    if photometric:  # before scale/pad: cheaper than on a 2x upscaled image, and the padding stays 0
        ops.append(A.ColorJitter(brightness=(0.7, 1.3), contrast=(0.7, 1.3), saturation=(0.7, 1.3),
                                 hue=(-0.05, 0.05), p=0.8))
    if (lo, hi) != (1.0, 1.0):
        ops.append(_scale((lo, hi)))
    if crop is not None:
        ops += [
            A.PadIfNeeded(min_height=crop[0], min_width=crop[1], position="top_left",
                          border_mode=cv2.BORDER_CONSTANT, fill=0, fill_mask=IGNORE_INDEX),
            A.RandomCrop(*crop),
        ]
    if hflip:
        ops.append(A.HorizontalFlip(p=0.5))
    return SegTransform(A.Compose(ops), seed=seed)
