"""Dataset evaluators (``reset`` / ``process`` / ``evaluate``, as detectron2's) and the loop that feeds them.

:func:`inference_on_dataset` runs a model over a loader and hands every batch to an
evaluator; the evaluator turns outputs into what its metric needs (COCO results, a
confusion matrix) and, when ``distributed``, gathers them over the ranks in ``evaluate``
(each rank scoring its own shard). :func:`evaluate_detector` / :func:`evaluate_segmenter`
are the one-call forms the tools and the trainer use.
"""

from __future__ import annotations

from functools import partial
from typing import Any, Callable, Iterable, Mapping

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from mobiledense.heads.segmenter import coarse_logits, upsampled_argmax

from .cityscapes import SegConfusion, SegMetrics
from .coco import CocoEvalResult, detections_to_coco_results, evaluate_coco

__all__ = ["DatasetEvaluator", "COCOEvaluator", "SegmentationEvaluator", "inference_on_dataset",
           "predict_detections", "evaluate_detector", "evaluate_segmenter"]


class DatasetEvaluator:
    """Accumulates a metric over batches: ``reset()``, ``process(inputs, outputs)`` per batch, ``evaluate()``."""

    def reset(self) -> None:
        raise NotImplementedError

    def process(self, inputs: Any, outputs: Any) -> None:
        raise NotImplementedError

    def evaluate(self) -> Any:
        raise NotImplementedError


def _distributed(requested: bool) -> bool:
    return requested and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


class COCOEvaluator(DatasetEvaluator):
    """COCO bbox evaluation: detections in the official results format, scored by :func:`evaluate_coco`.

    ``inputs`` are ``(images, targets)`` batches of a :class:`~mobiledense.datasets.CocoDetection`
    (targets carry ``image_id`` and ``orig_size``), ``outputs`` the detector's per-image dicts
    with boxes in original pixels. Labels map to category ids with ``label_to_category_id``
    (the model's; default the dataset's). Distributed: results are gathered to every rank.
    """

    def __init__(self, dataset: Any, label_to_category_id: Mapping[int, int] | None = None,
                 backend: str = "auto", distributed: bool = False) -> None:
        self.dataset, self.backend, self.distributed = dataset, backend, distributed
        self.mapping = dict(label_to_category_id or dataset.label_to_category_id)
        self.reset()

    def reset(self) -> None:
        self.results: list[dict] = []

    def process(self, inputs: Any, outputs: Iterable[Mapping[str, Tensor]]) -> None:
        _, targets = inputs
        self.results += detections_to_coco_results(
            [{k: v.cpu() for k, v in o.items()} for o in outputs], [int(t["image_id"]) for t in targets],
            self.mapping, orig_sizes=[tuple(t["orig_size"]) for t in targets])

    def gathered(self) -> list[dict]:
        """Every rank's results (this process's alone when not distributed)."""
        if not _distributed(self.distributed):
            return self.results
        parts: list[list[dict] | None] = [None] * dist.get_world_size()
        dist.all_gather_object(parts, self.results)
        return [r for part in parts for r in (part or [])]

    def evaluate(self) -> CocoEvalResult:
        return evaluate_coco(self.dataset.coco, self.gathered(), iou_type="bbox", backend=self.backend,
                             image_ids=list(self.dataset.image_ids))


class SegmentationEvaluator(DatasetEvaluator):
    """Cityscapes pixel-level metrics (:class:`SegConfusion`); logits are upsampled to the label first.

    ``inputs`` are ``(images, masks)``, ``outputs`` logits; ``on_prediction(index, train_ids)``
    sees each frame's prediction (e.g. to save PNGs). ``instances(index)`` gives a frame's instanceIds
    (or None) for Cityscapes' iIoU, reported when every frame has them at the label's size.
    Distributed: confusions and instance sums are summed.
    """

    def __init__(self, num_classes: int, ignore_index: int = 255, class_names: list[str] | None = None,
                 distributed: bool = False, on_prediction: Callable[[int, Tensor], None] | None = None,
                 instances: Callable[[int], Any] | None = None) -> None:
        self.conf = SegConfusion(num_classes=num_classes, ignore_index=ignore_index, class_names=class_names)
        self.distributed, self.on_prediction, self.instances = distributed, on_prediction, instances
        self.reset()

    def reset(self) -> None:
        self.conf.reset()
        self.seen = 0

    def process(self, inputs: Any, outputs: Tensor) -> None:
        _, masks = inputs
        masks = masks.to(outputs.device)
        pred = upsampled_argmax(outputs, tuple(masks.shape[-2:]))  # bilinear to the labels' size, then argmax
        if self.instances is None:
            self.conf.update(pred, masks)
        for j, p in enumerate(pred):
            if self.instances is not None:
                inst = self.instances(self.seen)
                if inst is not None and tuple(inst.shape) != tuple(masks[j].shape):
                    inst = None  # labels at another size than the instanceIds: no iIoU for this set
                self.conf.update(p, masks[j], None if inst is None else torch.from_numpy(inst))
            if self.on_prediction is not None:
                self.on_prediction(self.seen, p.cpu())
            self.seen += 1

    def evaluate(self) -> SegMetrics:
        if _distributed(self.distributed):
            self.conf.reduce()
        return self.conf.compute()


def inference_on_dataset(model: Callable[[Any], Any], loader: Iterable[Any], evaluator: DatasetEvaluator, *,
                         device: torch.device | str = "cpu", progress: bool = True, desc: str = "eval") -> Any:
    """``evaluator.process(batch, model(images))`` over ``loader`` (inference mode), then ``evaluate()``.

    Batches are ``(images, targets)``: ``images`` a list of (3, H, W) tensors or an (N, 3, H, W)
    batch, moved to ``device``; targets stay where they are (the evaluator moves what it needs).
    """
    device = torch.device(device)
    if isinstance(model, nn.Module):
        model.eval()
    evaluator.reset()
    with torch.inference_mode():
        for images, targets in tqdm(loader, desc=desc, unit="batch", disable=not progress, leave=False,
                                    dynamic_ncols=True):
            if isinstance(images, Tensor):
                x: Any = images.to(device, non_blocking=True)
            else:
                x = [im.to(device, non_blocking=True) for im in images]
            evaluator.process((images, targets), model(x))
    return evaluator.evaluate()


def _det_loader(dataset: Dataset, batch_size: int, workers: int) -> DataLoader:
    from mobiledense.datasets import collate_detection

    return DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=workers,
                      collate_fn=collate_detection)


def predict_detections(model: nn.Module, dataset: Dataset, *, batch_size: int = 8, workers: int = 0,
                       device: torch.device | str = "cpu", progress: bool = True,
                       label_to_category_id: Mapping[int, int] | None = None) -> list[dict]:
    """Run ``model`` over ``dataset`` (a :class:`CocoDetection` yielding full-size images); COCO results dicts.

    The detector resizes internally and returns boxes in original pixels; labels map to
    category ids with ``label_to_category_id`` (the model's; default the dataset's).
    """
    evaluator = COCOEvaluator(dataset, label_to_category_id)
    model.eval().to(device)
    with torch.inference_mode():
        for images, targets in tqdm(_det_loader(dataset, batch_size, workers), desc="detect", unit="batch",
                                    disable=not progress, leave=False, dynamic_ncols=True):
            evaluator.process((images, targets), model([im.to(device, non_blocking=True) for im in images]))
    return evaluator.results


def evaluate_detector(model: nn.Module, dataset: Any, *, batch_size: int = 8, workers: int = 0,
                      device: torch.device | str = "cpu", progress: bool = True,
                      label_to_category_id: Mapping[int, int] | None = None, backend: str = "auto",
                      distributed: bool = False) -> tuple[CocoEvalResult, list[dict]]:
    """COCO bbox evaluation of ``model`` on ``dataset``; returns the result and this process's detections."""
    evaluator = COCOEvaluator(dataset, label_to_category_id, backend=backend, distributed=distributed)
    model.eval().to(device)
    result = inference_on_dataset(model, _det_loader(dataset, batch_size, workers), evaluator, device=device,
                                  progress=progress, desc="detect")
    return result, evaluator.results


def evaluate_segmenter(model: nn.Module, dataset: Dataset, *, device: torch.device | str = "cpu",
                       workers: int = 0, progress: bool = True, on_prediction: Any = None,
                       distributed: bool = False) -> SegMetrics:
    """mIoU & co. of ``model`` over ``dataset`` (yielding ``(image, mask)``), one frame at a time.

    Logits are upsampled (bilinear) to the mask's resolution, so evaluating a half-resolution
    input still scores against the full-resolution labels: once, from the decoder's stride
    (:func:`~mobiledense.heads.segmenter.coarse_logits`), interpolated only near class boundaries
    (:func:`~mobiledense.heads.segmenter.upsampled_argmax`). ``on_prediction(index, train_ids)``
    is called per frame. ``distributed=True`` sums the confusion over ranks (each scoring its
    own shard); the default scores the whole set in this process alone (the trainer evaluates
    on rank 0 only, so no collective may run here).
    """
    num_classes = getattr(model, "num_classes", None) or dataset.num_classes
    evaluator = SegmentationEvaluator(num_classes, getattr(dataset, "ignore_index", 255),
                                      list(getattr(dataset, "class_names", [])) or None, distributed,
                                      on_prediction, getattr(dataset, "instance_ids", None))
    model.eval().to(device)
    loader = DataLoader(dataset, batch_size=1, shuffle=False, num_workers=workers)
    return inference_on_dataset(partial(coarse_logits, model), loader, evaluator, device=device, progress=progress,
                                desc="segment")
