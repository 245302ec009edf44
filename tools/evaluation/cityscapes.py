"""Semantic segmentation metrics with the Cityscapes benchmark's semantics.

Cordts et al., CVPR 2016, §3.2: IoU = TP / (TP + FP + FN) per class from a
dataset-level confusion matrix, averaged over classes; category IoU treats the
7 categories (flat, construction, ...) as classes.  Reproduces
cityscapesScripts' ``evaluation/evalPixelLevelSemanticLabeling.py``:

* ground-truth pixels of ignored labels (trainId 255) are skipped;
* a prediction outside the evaluated classes (an ignored label such as
  "unlabeled" or "static", trainId 255) on a ground-truth pixel of class c is a
  false negative of c and a false positive of nobody, so the confusion matrix
  has one extra "void" column (``confusion[:, num_classes]``);
* a class with TP + FP + FN = 0 (absent from ground truth and prediction) has
  IoU NaN and is left out of the mean.

Not implemented: the instance-weighted iIoU / niIoU (needs instanceIds and
cityscapesScripts' average class sizes). Pixel accuracy is computed from the
confusion matrix (cityscapesScripts' optional per-image pixel-accuracy export
counts ignored and wrong pixels instead, so it is not used).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

import cv2
import numpy as np
import torch
from torch import Tensor

from mobiledense.datasets.cityscapes_labels import (
    CATEGORY_TRAIN_IDS,
    CLASS_NAMES,
    IGNORE_INDEX,
    NUM_CLASSES,
    label_ids_to_train_ids,
)

__all__ = ["SegConfusion", "SegMetrics", "metrics_from_confusion", "evaluate_label_pngs", "read_label_png"]


def _ordered_nanmean(values: Sequence[float]) -> float:
    """Mean of the non-NaN values summed left to right, as cityscapesScripts' getScoreAverage."""
    total, n = 0.0, 0
    for v in values:
        if not math.isnan(v):
            total += float(v)
            n += 1
    return total / n if n else math.nan


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, num / np.maximum(den, 1), math.nan)


@dataclass
class SegMetrics:
    """Scores of one evaluation; per-class arrays are indexed by class (trainId), NaN when undefined."""

    miou: float
    iou: np.ndarray
    pixel_acc: float
    mean_acc: float
    acc: np.ndarray  # per-class recall TP / (TP + FN)
    category_iou: dict[str, float]
    category_miou: float
    confusion: np.ndarray  # (K, K + 1) int64, rows = GT class, last column = void predictions
    class_names: tuple[str, ...]
    extras: dict[str, float] = field(default_factory=dict)

    def as_dict(self) -> dict[str, float]:
        """Flat scalar dict for logs and JSON (``IoU/<class>``, ``catIoU/<category>``)."""
        out = {"mIoU": self.miou, "pixel_acc": self.pixel_acc, "mean_acc": self.mean_acc}
        if self.category_iou:
            out["category_mIoU"] = self.category_miou
        out.update({f"IoU/{n}": float(v) for n, v in zip(self.class_names, self.iou)})
        out.update({f"catIoU/{c}": v for c, v in self.category_iou.items()})
        return out

    def summary(self) -> str:
        lines = [f"mIoU {self.miou:.4f}  pixel acc {self.pixel_acc:.4f}  mean acc {self.mean_acc:.4f}"]
        lines += [f"  {n:<14} {v:.4f}" for n, v in zip(self.class_names, self.iou)]
        if self.category_iou:
            lines.append(f"category mIoU {self.category_miou:.4f}")
            lines += [f"  {c:<14} {v:.4f}" for c, v in self.category_iou.items()]
        return "\n".join(lines)


def metrics_from_confusion(
    confusion: np.ndarray | Tensor,
    class_names: Sequence[str] | None = None,
    categories: Mapping[str, Sequence[int]] | None = None,
) -> SegMetrics:
    """Scores from a (K, K + 1) confusion matrix (last column: predictions outside the K classes)."""
    conf = np.asarray(confusion.cpu() if isinstance(confusion, Tensor) else confusion, dtype=np.int64)
    k = conf.shape[0]
    if conf.shape != (k, k + 1):
        raise ValueError(f"confusion must be (K, K + 1) with a void-prediction column, got {conf.shape}")
    tp = np.diag(conf[:, :k])
    gt = conf.sum(1)
    fp = conf[:, :k].sum(0) - tp
    iou = _ratio(tp, tp + fp + (gt - tp))
    acc = _ratio(tp, gt)
    category_iou = {}
    for name, ids in (categories or {}).items():
        ids = list(ids)
        inside = np.zeros(k, dtype=bool)
        inside[ids] = True
        c_tp = conf[np.ix_(inside, inside)].sum()
        c_fn = conf[inside].sum() - c_tp
        c_fp = conf[np.ix_(~inside, np.r_[inside, False])].sum()
        den = c_tp + c_fp + c_fn
        category_iou[name] = float(c_tp) / den if den > 0 else math.nan
    total = conf.sum()
    return SegMetrics(
        miou=_ordered_nanmean(iou),
        iou=iou,
        pixel_acc=float(tp.sum()) / total if total > 0 else math.nan,
        mean_acc=_ordered_nanmean(acc),
        acc=acc,
        category_iou=category_iou,
        category_miou=_ordered_nanmean(list(category_iou.values())),
        confusion=conf,
        class_names=tuple(class_names) if class_names is not None else tuple(str(i) for i in range(k)),
    )


class SegConfusion:
    """Dataset-level confusion matrix, accumulated with ``torch.bincount`` on the inputs' device.

    Args:
        num_classes: K evaluated classes (19 for Cityscapes trainIds).
        ignore_index: target value skipped (255).
        class_names: K names; Cityscapes' when K == 19 and not given.
        categories: name -> class ids for category IoU; Cityscapes' 7 when K == 19 and not given
            (pass ``{}`` to disable).
    """

    def __init__(
        self,
        num_classes: int = NUM_CLASSES,
        ignore_index: int = IGNORE_INDEX,
        class_names: Sequence[str] | None = None,
        categories: Mapping[str, Sequence[int]] | None = None,
    ) -> None:
        cityscapes = num_classes == NUM_CLASSES
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.class_names = tuple(class_names) if class_names is not None else (
            CLASS_NAMES if cityscapes else tuple(str(i) for i in range(num_classes)))
        if len(self.class_names) != num_classes:
            raise ValueError(f"{len(self.class_names)} class names for num_classes={num_classes}")
        self.categories = dict(categories) if categories is not None else (CATEGORY_TRAIN_IDS if cityscapes else {})
        self.reset()

    def reset(self) -> None:
        self.confusion = torch.zeros(self.num_classes, self.num_classes + 1, dtype=torch.int64)

    @torch.no_grad()
    def update(self, pred: Tensor | np.ndarray, target: Tensor | np.ndarray) -> None:
        """Add a batch. ``pred``: labels (N, H, W) / (H, W), or logits with a class dim before H, W;
        values outside [0, K) count as void predictions. ``target``: labels with ``ignore_index``."""
        pred, target = torch.as_tensor(pred), torch.as_tensor(target)
        if pred.is_floating_point():
            if pred.dim() != target.dim() + 1 or pred.shape[-3] != self.num_classes:
                raise ValueError(f"logits {tuple(pred.shape)} must be target {tuple(target.shape)} with a class "
                                 f"dim of size {self.num_classes} before (H, W)")
            pred = pred.argmax(-3)
        if pred.shape != target.shape:
            raise ValueError(f"prediction size {tuple(pred.shape)} != target size {tuple(target.shape)}; "
                             f"upsample logits to the label size before argmax")
        target = target.to(pred.device).long().flatten()
        pred = pred.long().flatten()
        keep = target != self.ignore_index
        target, pred = target[keep], pred[keep]
        k = self.num_classes
        if target.numel() and (target.min() < 0 or target.max() >= k):
            bad = torch.unique(target[(target < 0) | (target >= k)])[:10].tolist()
            raise ValueError(f"target holds values {bad} outside [0, {k}) and != ignore_index {self.ignore_index}")
        pred = torch.where((pred >= 0) & (pred < k), pred, k)  # void column
        counts = torch.bincount(target * (k + 1) + pred, minlength=k * (k + 1)).view(k, k + 1)
        if self.confusion.device != counts.device:
            self.confusion = self.confusion.to(counts.device)
        self.confusion += counts

    def reduce(self) -> None:
        """Sum the matrix over all ranks (no-op unless torch.distributed is initialised)."""
        import torch.distributed as dist

        if not (dist.is_available() and dist.is_initialized()):
            return
        conf = self.confusion
        if dist.get_backend() == "nccl" and not conf.is_cuda:
            conf = conf.cuda()
        dist.all_reduce(conf, op=dist.ReduceOp.SUM)
        self.confusion = conf.to(self.confusion.device)

    def compute(self) -> SegMetrics:
        return metrics_from_confusion(self.confusion, self.class_names, self.categories)


def read_label_png(path: str | Path) -> np.ndarray:
    """Read a single-channel label PNG exactly (8 or 16 bit); errors name the file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"label image not found: {path}")
    img = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if img is None:
        raise ValueError(f"{path}: not a readable image")
    if img.ndim != 2:
        raise ValueError(f"{path}: label images must be single-channel, got shape {img.shape} "
                         f"(a colour visualisation instead of ids?)")
    return img


def _to_train_ids(arr: np.ndarray, ids: str, path: Path) -> np.ndarray:
    if ids == "label":
        return label_ids_to_train_ids(arr, source=str(path))
    bad = (arr >= NUM_CLASSES) & (arr != IGNORE_INDEX)
    if bad.any():
        raise ValueError(f"{path}: trainIds must be 0..{NUM_CLASSES - 1} or {IGNORE_INDEX}, found "
                         f"{np.unique(arr[bad])[:10].tolist()}; is this a labelIds image (pass ids='label')?")
    return arr


def evaluate_label_pngs(
    gt_files: Sequence[str | Path],
    pred_files: Sequence[str | Path],
    gt_ids: str = "label",
    pred_ids: str = "label",
) -> SegMetrics:
    """Cityscapes evaluation of label PNG pairs, as cityscapesScripts' ``evaluateImgLists``.

    Args:
        gt_files: ``*_gtFine_labelIds.png`` (``gt_ids="label"``) or ``*_labelTrainIds.png`` (``"train"``).
        pred_files: predictions in label ids (official submission format, ``pred_ids="label"``) or in
            trainIds 0..18 / 255 (``"train"``); paired with ``gt_files`` by position.
    """
    for name, ids in (("gt_ids", gt_ids), ("pred_ids", pred_ids)):
        if ids not in ("label", "train"):
            raise ValueError(f"{name} must be 'label' or 'train', got {ids!r}")
    if len(gt_files) != len(pred_files):
        raise ValueError(f"{len(gt_files)} ground-truth files but {len(pred_files)} predictions")
    conf = SegConfusion()
    for gt_path, pred_path in zip(map(Path, gt_files), map(Path, pred_files)):
        gt, pred = read_label_png(gt_path), read_label_png(pred_path)
        if gt.shape != pred.shape:
            raise ValueError(f"prediction {pred_path} is {pred.shape[1]}x{pred.shape[0]} but ground truth "
                             f"{gt_path} is {gt.shape[1]}x{gt.shape[0]} (WxH); predict at full label resolution")
        conf.update(torch.from_numpy(_to_train_ids(pred, pred_ids, pred_path).astype(np.int64)),
                    torch.from_numpy(_to_train_ids(gt, gt_ids, gt_path).astype(np.int64)))
    return conf.compute()
