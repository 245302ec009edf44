"""Evaluation loops: a detector over a COCO-format set, a segmenter over a labelled set."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from .coco import CocoEvalResult, detections_to_coco_results, evaluate_coco

__all__ = ["predict_detections", "evaluate_detector", "evaluate_segmenter"]


def predict_detections(model: nn.Module, dataset: Dataset, *, batch_size: int = 8, workers: int = 0,
                       device: torch.device | str = "cpu", progress: bool = True,
                       label_to_category_id: dict[int, int] | None = None) -> list[dict]:
    """Run ``model`` over ``dataset`` (a :class:`CocoDetection`); return COCO results dicts.

    The dataset should yield full-size images (no eval resize): the detector
    resizes internally and returns boxes in original pixels. Labels are mapped to
    category ids with ``label_to_category_id`` (the mapping the model was trained
    with; default: the dataset's).
    """
    mapping = label_to_category_id or dataset.label_to_category_id
    from mobiledense.datasets import collate_detection

    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=workers,
                        collate_fn=collate_detection)
    device = torch.device(device)
    model.eval().to(device)
    results: list[dict] = []
    with torch.inference_mode():
        for images, targets in tqdm(loader, desc="detect", unit="batch", disable=not progress,
                                    leave=False, dynamic_ncols=True):
            outputs = model([im.to(device, non_blocking=True) for im in images])
            results += detections_to_coco_results(
                [{k: v.cpu() for k, v in o.items()} for o in outputs],
                [int(t["image_id"]) for t in targets], mapping,
                orig_sizes=[tuple(t["orig_size"]) for t in targets])
    return results


def evaluate_detector(model: nn.Module, dataset: Any, **kwargs: Any) -> tuple[CocoEvalResult, list[dict]]:
    """COCO bbox evaluation of ``model`` on ``dataset``; returns the result and the raw detections."""
    backend = kwargs.pop("backend", "auto")
    results = predict_detections(model, dataset, **kwargs)
    result = evaluate_coco(dataset.coco, results, iou_type="bbox", backend=backend,
                           image_ids=list(dataset.image_ids))
    return result, results


def evaluate_segmenter(model: nn.Module, dataset: Dataset, *, device: torch.device | str = "cpu",
                       workers: int = 0, progress: bool = True, confusion: Any = None,
                       on_prediction: Any = None, distributed: bool = False) -> Any:
    """mIoU & co. of ``model`` over ``dataset`` (yielding ``(image, mask)``), one frame at a time.

    Logits are upsampled (bilinear) to the mask's resolution, so evaluating a
    half-resolution input still scores against the full-resolution labels.
    ``on_prediction(index, pred_train_ids)`` is called per frame (e.g. to save PNGs).
    ``distributed=True`` sums the confusion over ranks (each rank scoring its own
    shard); the default scores the whole set in this process alone (the trainer
    evaluates on rank 0 only, so no collective may run here).
    Returns :class:`~mobiledense.tools.seg_metrics.SegMetrics`.
    """
    import torch.nn.functional as F

    from .cityscapes import SegConfusion

    num_classes = getattr(model, "num_classes", None) or dataset.num_classes
    conf = confusion or SegConfusion(num_classes=num_classes, ignore_index=getattr(dataset, "ignore_index", 255),
                                     class_names=list(getattr(dataset, "class_names", [])) or None)
    device = torch.device(device)
    model.eval().to(device)
    loader = DataLoader(dataset, batch_size=1, shuffle=False, num_workers=workers)
    with torch.inference_mode():
        for i, (image, mask) in enumerate(tqdm(loader, desc="segment", unit="img", disable=not progress,
                                               leave=False, dynamic_ncols=True)):
            logits = model(image.to(device, non_blocking=True))
            if logits.shape[-2:] != mask.shape[-2:]:
                logits = F.interpolate(logits, size=mask.shape[-2:], mode="bilinear", align_corners=False)
            pred = logits.argmax(1)
            conf.update(pred, mask.to(device))
            if on_prediction is not None:
                on_prediction(i, pred[0].cpu())
    if distributed:
        conf.reduce()
    return conf.compute()
