"""Calibration images for post-training quantization: a folder of images, or a run's own training set.

Every image is an (1, 3, H, W) float tensor in [0, 1], as the exported graphs take them
(normalisation is inside the graph). Detectors get their network size (the graph resizes to
it anyway, so the statistics are the ones the network sees); segmenters the run's evaluation
resolution (``base_size`` x ``eval_scale``), or the image's own size from a folder without a
run spec. The images are taken evenly over the sorted set (deterministic, every part of it).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["DEFAULT_CALIB_COUNT", "calibration_images", "spaced"]

log = logging.getLogger("mobiledense.export")

#: Images NNCF / onnxruntime / XNNPACK calibrate on by default (NNCF's default subset is 300;
#: 32 keeps int8 within 0.01 of fp32 on our trained models, see README "Deploy").
DEFAULT_CALIB_COUNT = 32


def spaced(n: int, count: int) -> list[int]:
    """``count`` indices spread evenly over ``range(n)`` (all of them when ``n <= count``)."""
    if n <= count:
        return list(range(n))
    return sorted({int(i) for i in np.linspace(0, n - 1, count).round()})


def _resize(image: Tensor, size: Sequence[int] | None) -> Tensor:
    x = image.float()[None]
    if size is not None and tuple(x.shape[-2:]) != tuple(size):
        x = F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False)
    return x.clamp_(0, 1)


def calibration_images(*, folder: str | Path | None = None, spec: Any = None, count: int = DEFAULT_CALIB_COUNT,
                       size: Sequence[int] | None = None) -> list[Tensor]:
    """``count`` calibration images from ``folder`` (any image files, recursively) or ``spec``'s training set.

    Args:
        folder: a folder of images (``export --calib-images DIR``).
        spec: a :class:`~mobiledense.tools.engine.RunSpec` (``export --checkpoint``): its training
            split, read with the evaluation transforms (no augmentation).
        size: (H, W) each image is resized to (default: see the module docstring).
    """
    if count < 1:
        raise ValueError(f"--calib-count must be >= 1, got {count}")
    if folder is not None:
        from mobiledense.datasets import read_image_rgb

        from ..common import list_images

        files = list_images([str(folder)])
        out = []
        for i in spaced(len(files), count):
            try:
                rgb = read_image_rgb(files[i])
            except (OSError, ValueError) as e:
                raise ValueError(f"--calib-images: cannot read {files[i]}: {e}") from e
            out.append(_resize(torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1).float() / 255, size))
        log.info("calibrating on %d of %d images under %s", len(out), len(files), folder)
        return out
    if spec is None:
        raise ValueError("int8 needs calibration images: --calib-images DIR (a few dozen real images of the "
                         "deployment domain), or --checkpoint (its training set)")
    from ..engine.tasks import DetectionTask, SegmentationTask

    if spec.task == "det":
        d = spec.data
        dataset = DetectionTask(spec).val_set(d.train_images, d.train_ann) if d.train_ann else None
        size = size or spec.model.input_size
    elif spec.task == "seg":
        dataset = SegmentationTask(spec).val_set(None, spec.data.train_split)
    else:
        raise ValueError(f"no int8 export for {spec.task!r} runs")
    if dataset is None or len(dataset) == 0:
        raise ValueError("the checkpoint's run has no training images to calibrate on: pass --calib-images DIR")
    picks = spaced(len(dataset), count)
    log.info("calibrating on %d of the run's %d training images", len(picks), len(dataset))
    return [_resize(dataset[i][0], size) for i in picks]
