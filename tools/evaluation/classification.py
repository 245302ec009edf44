"""Classification metrics: top-1 / top-5, per-class accuracy and the confusion matrix.

:class:`ClassificationEvaluator` (``reset`` / ``process`` / ``evaluate``, summed over DDP ranks
when ``distributed``) accumulates a (K, K) confusion matrix (rows = true class) and the
top-k hits; :func:`evaluate_classifier` is the one-call form the tools and the trainer use.
Top-k counts a sample right when its class is among the k highest logits (``torch.topk``,
ties broken as topk breaks them), as torchvision's reference ``accuracy`` does.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from .evaluators import DatasetEvaluator, _distributed, inference_on_dataset

__all__ = ["ClsMetrics", "ClassificationEvaluator", "evaluate_classifier"]


@dataclass(frozen=True)
class ClsMetrics:
    """Accuracy of a classifier over a set (fractions in [0, 1]; NaN where a class has no sample)."""

    top1: float
    top5: float
    per_class: tuple[float, ...]
    confusion: np.ndarray  # (K, K) int64, rows = true class, columns = prediction
    class_names: tuple[str, ...]
    num_samples: int

    @property
    def mean_class_accuracy(self) -> float:
        vals = [v for v in self.per_class if not math.isnan(v)]
        return float(np.mean(vals)) if vals else math.nan

    def as_dict(self) -> dict[str, Any]:
        return {"top1": self.top1, "top5": self.top5, "mean_class_accuracy": self.mean_class_accuracy,
                "num_samples": self.num_samples,
                "per_class": {n: (None if math.isnan(v) else v) for n, v in zip(self.class_names, self.per_class)},
                "confusion": self.confusion.tolist()}

    def summary(self) -> str:
        k = min(5, len(self.class_names))
        lines = [f"top-1 {100 * self.top1:.2f}%  top-{k} {100 * self.top5:.2f}%  mean class accuracy "
                 f"{100 * self.mean_class_accuracy:.2f}%  ({self.num_samples} images)", "", "class  accuracy  images"]
        counts = self.confusion.sum(1)
        for name, acc, n in zip(self.class_names, self.per_class, counts):
            lines.append(f"{name:<24} {'n/a' if math.isnan(acc) else f'{100 * acc:6.2f}%'}  {int(n)}")
        return "\n".join(lines)


class ClassificationEvaluator(DatasetEvaluator):
    """Top-1, top-5 (top-K for fewer than 5 classes) and the confusion matrix of ``(images, labels)`` batches."""

    def __init__(self, num_classes: int, class_names: Sequence[str] | None = None, distributed: bool = False,
                 on_prediction: Callable[[int, Tensor], None] | None = None) -> None:
        self.k = num_classes
        self.class_names = tuple(class_names or (str(i) for i in range(num_classes)))
        self.distributed, self.on_prediction = distributed, on_prediction
        self.reset()

    def reset(self) -> None:
        self.confusion = torch.zeros(self.k, self.k, dtype=torch.int64)
        self.top5_hits = torch.zeros((), dtype=torch.int64)
        self.seen = 0

    def process(self, inputs: Any, outputs: Tensor) -> None:
        _, labels = inputs
        labels = torch.as_tensor(labels).to(outputs.device)
        if outputs.ndim != 2 or outputs.shape[1] != self.k:
            raise ValueError(f"expected logits (N, {self.k}), got {tuple(outputs.shape)}")
        if labels.numel() and (labels.min() < 0 or labels.max() >= self.k):
            raise ValueError(f"labels must be in 0..{self.k - 1}, got {labels.min().item()}..{labels.max().item()}")
        top = outputs.float().topk(min(5, self.k), dim=1).indices
        pred = top[:, 0]
        self.confusion += torch.bincount(labels * self.k + pred, minlength=self.k * self.k).view(self.k, self.k).cpu()
        self.top5_hits += (top == labels[:, None]).any(1).sum().cpu()
        if self.on_prediction is not None:
            for p in outputs.softmax(1):
                self.on_prediction(self.seen, p.cpu())
                self.seen += 1

    def evaluate(self) -> ClsMetrics:
        conf, hits = self.confusion.clone(), self.top5_hits.clone()
        if _distributed(self.distributed):
            dist.all_reduce(conf)
            dist.all_reduce(hits)
        c = conf.numpy()
        n = int(c.sum())
        rows = c.sum(1)
        per_class = tuple(float(c[i, i] / rows[i]) if rows[i] else math.nan for i in range(self.k))
        return ClsMetrics(top1=float(np.trace(c) / n) if n else math.nan, top5=float(hits) / n if n else math.nan,
                          per_class=per_class, confusion=c, class_names=self.class_names, num_samples=n)


def evaluate_classifier(model: nn.Module, dataset: Dataset, *, batch_size: int = 64, workers: int = 0,
                        device: torch.device | str = "cpu", progress: bool = True, distributed: bool = False,
                        on_prediction: Callable[[int, Tensor], None] | None = None) -> ClsMetrics:
    """Top-1 / top-5 / per-class accuracy of ``model`` over ``dataset`` (yielding ``(image, label)``)."""
    num_classes = getattr(model, "num_classes", None) or dataset.num_classes
    evaluator = ClassificationEvaluator(num_classes, getattr(dataset, "class_names", None), distributed,
                                        on_prediction)
    model.eval().to(device)
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=workers)
    return inference_on_dataset(model, loader, evaluator, device=device, progress=progress, desc="classify")
