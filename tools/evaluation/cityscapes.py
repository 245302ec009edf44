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

Instance-level IoU (iIoU, §3.2) where ``*_gtFine_instanceIds.png`` are given
(:class:`InstanceStats`): each ground-truth instance of the 8 instance classes
weighs its true-positive and false-negative pixels by ``avgClassSize / size``
(cityscapesScripts' average class sizes), so large and small objects count
alike; false positives are not weighted. Category iIoU uses the categories whose
labels all have instances (human, vehicle). Pixel accuracy is computed from the
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
    LABEL_ID_TO_TRAIN_ID,
    LABELS,
    NUM_CLASSES,
    label_ids_to_train_ids,
)

__all__ = ["SegConfusion", "SegMetrics", "InstanceStats", "metrics_from_confusion", "evaluate_label_pngs",
           "read_label_png", "instance_file", "AVG_CLASS_SIZE"]

#: cityscapesScripts' average instance size (pixels at 2048x1024) per class, the iIoU weights.
AVG_CLASS_SIZE = {"bicycle": 4672.3249222261, "caravan": 36771.8241758242, "motorcycle": 6298.7200839748,
                  "rider": 3930.4788056518, "bus": 35732.1511111111, "train": 67583.7075812274,
                  "car": 12794.0202738185, "person": 3462.4756337644, "truck": 27855.1264367816,
                  "trailer": 16926.9763313609}
#: trainIds of the evaluated classes with instances (person, rider, car, truck, bus, train, motorcycle, bicycle).
INSTANCE_TRAIN_IDS = tuple(sorted(lab.train_id for lab in LABELS if lab.has_instances and not lab.ignore_in_eval))
#: Categories whose labels all have instances (human, vehicle): trainIds of their evaluated classes.
INSTANCE_CATEGORIES = {
    cat: tuple(sorted(lab.train_id for lab in LABELS if lab.category == cat and not lab.ignore_in_eval))
    for cat in dict.fromkeys(lab.category for lab in LABELS)
    if all(lab.has_instances for lab in LABELS if lab.category == cat and lab.id >= 0)}


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
    #: Instance-level IoU (needs instanceIds; NaN / empty without): per class (NaN for classes without
    #: instances), the mean over the instance classes, per instance category and their mean.
    iiou: float = math.nan
    iiou_per_class: np.ndarray | None = None
    category_iiou: dict[str, float] = field(default_factory=dict)
    category_miiou: float = math.nan

    def as_dict(self) -> dict[str, float]:
        """Flat scalar dict for logs and JSON (``IoU/<class>``, ``catIoU/<category>``, ``iIoU/<class>`` ...)."""
        out = {"mIoU": self.miou, "pixel_acc": self.pixel_acc, "mean_acc": self.mean_acc}
        if self.category_iou:
            out["category_mIoU"] = self.category_miou
        if self.iiou_per_class is not None:
            out["iIoU"] = self.iiou
            if self.category_iiou:
                out["category_iIoU"] = self.category_miiou
        out.update({f"IoU/{n}": float(v) for n, v in zip(self.class_names, self.iou)})
        out.update({f"catIoU/{c}": v for c, v in self.category_iou.items()})
        if self.iiou_per_class is not None:
            out.update({f"iIoU/{self.class_names[t]}": float(self.iiou_per_class[t]) for t in INSTANCE_TRAIN_IDS
                        if t < len(self.class_names)})
            out.update({f"catiIoU/{c}": v for c, v in self.category_iiou.items()})
        return out

    def summary(self) -> str:
        inst = self.iiou_per_class is not None
        head = f"mIoU {self.miou:.4f}" + (f"  iIoU {self.iiou:.4f}" if inst else "")
        lines = [f"{head}  pixel acc {self.pixel_acc:.4f}  mean acc {self.mean_acc:.4f}"]
        for t, (n, v) in enumerate(zip(self.class_names, self.iou)):
            extra = f"  iIoU {self.iiou_per_class[t]:.4f}" if inst and t in INSTANCE_TRAIN_IDS else ""
            lines.append(f"  {n:<14} {v:.4f}{extra}")
        if self.category_iou:
            lines.append(f"category mIoU {self.category_miou:.4f}"
                         + (f"  category iIoU {self.category_miiou:.4f}" if inst and self.category_iiou else ""))
            for c, v in self.category_iou.items():
                extra = f"  iIoU {self.category_iiou[c]:.4f}" if inst and c in self.category_iiou else ""
                lines.append(f"  {c:<14} {v:.4f}{extra}")
        return "\n".join(lines)


class InstanceStats:
    """Weighted per-instance true positives / false negatives for Cityscapes' iIoU (cityscapesScripts'
    ``evaluatePair`` instance part). Accumulated in its order (instances by id, images in turn), so the
    floats equal its sums exactly."""

    def __init__(self, num_classes: int = NUM_CLASSES) -> None:
        self.num_classes = num_classes
        self.reset()

    def reset(self) -> None:
        self.tp = np.zeros(self.num_classes, np.float64)
        self.fn = np.zeros(self.num_classes, np.float64)
        self.cat_tp = {c: 0.0 for c in INSTANCE_CATEGORIES}
        self.cat_fn = {c: 0.0 for c in INSTANCE_CATEGORIES}
        self.images = 0
        self.missing = 0  # frames scored without instanceIds: then the set has no iIoU

    def update(self, pred: np.ndarray | Tensor, instances: np.ndarray | Tensor) -> None:
        """``pred``: (H, W) trainIds (anything outside 0..K-1 is void); ``instances``: (H, W) instanceIds
        (``labelId * 1000 + k`` for instances, the labelId for stuff)."""
        pred = np.asarray(pred.cpu() if isinstance(pred, Tensor) else pred).astype(np.int64)
        inst = np.asarray(instances.cpu() if isinstance(instances, Tensor) else instances).astype(np.int64)
        if pred.shape != inst.shape:
            raise ValueError(f"prediction {pred.shape} and instanceIds {inst.shape} differ in size")
        self.images += 1
        keep = inst > 1000
        ids, p = inst[keep], pred[keep]
        if not ids.size:
            return
        uniq, inverse, sizes = np.unique(ids, return_inverse=True, return_counts=True)
        label_ids = uniq // 1000
        train_ids = LABEL_ID_TO_TRAIN_ID[np.clip(label_ids, 0, 255)].astype(np.int64)
        tps = np.bincount(inverse, weights=(p == train_ids[inverse]), minlength=len(uniq))
        cat_of = np.full(256, -1, np.int64)
        names = list(INSTANCE_CATEGORIES)
        for i, c in enumerate(names):
            cat_of[list(INSTANCE_CATEGORIES[c])] = i
        p_cat = cat_of[np.clip(p, 0, 255)]
        p_cat[(p < 0) | (p > 255)] = -1
        name_of = {lab.id: lab for lab in LABELS}
        inst_cat = np.array([names.index(name_of[int(i)].category) if int(i) in name_of
                             and name_of[int(i)].category in INSTANCE_CATEGORIES else -1 for i in label_ids])
        cat_tps = np.bincount(inverse, weights=(p_cat == inst_cat[inverse]) & (inst_cat[inverse] >= 0),
                              minlength=len(uniq))
        for j, label_id in enumerate(label_ids):
            lab = name_of.get(int(label_id))
            if lab is None or lab.ignore_in_eval or not lab.has_instances:
                continue
            size, tp = int(sizes[j]), int(tps[j])
            weight = AVG_CLASS_SIZE[lab.name] / float(size)
            self.tp[lab.train_id] += float(tp) * weight
            self.fn[lab.train_id] += float(size - tp) * weight
            if lab.category in INSTANCE_CATEGORIES:
                cat_tp = int(cat_tps[j])
                self.cat_tp[lab.category] += float(cat_tp) * weight
                self.cat_fn[lab.category] += float(size - cat_tp) * weight

    def state(self) -> np.ndarray:
        """Every sum as one float64 vector (for a DDP all-reduce) and back with :meth:`load_state`."""
        return np.concatenate([self.tp, self.fn, list(self.cat_tp.values()), list(self.cat_fn.values()),
                               [self.images, self.missing]])

    def load_state(self, v: np.ndarray) -> None:
        k, c = self.num_classes, len(INSTANCE_CATEGORIES)
        self.tp, self.fn = v[:k].copy(), v[k:2 * k].copy()
        self.cat_tp = dict(zip(INSTANCE_CATEGORIES, map(float, v[2 * k:2 * k + c])))
        self.cat_fn = dict(zip(INSTANCE_CATEGORIES, map(float, v[2 * k + c:2 * k + 2 * c])))
        self.images, self.missing = int(v[-2]), int(v[-1])

    def apply(self, metrics: SegMetrics) -> SegMetrics:
        """``metrics`` with its iIoU fields filled from these sums and its confusion matrix's false positives."""
        if not self.images or self.missing:
            return metrics
        conf = metrics.confusion
        k = conf.shape[0]
        iiou = np.full(k, math.nan)
        for t in INSTANCE_TRAIN_IDS:
            if t >= k:
                continue
            fp = float(conf[:, t].sum() - conf[t, t])  # non-ignored GT of other classes predicted as t
            den = self.tp[t] + fp + self.fn[t]
            iiou[t] = self.tp[t] / den if den > 0 else math.nan
        cat = {}
        for c, ids in INSTANCE_CATEGORIES.items():
            inside = np.zeros(k, bool)
            inside[[i for i in ids if i < k]] = True
            fp = float(conf[np.ix_(~inside, np.r_[inside, False])].sum())
            den = self.cat_tp[c] + fp + self.cat_fn[c]
            cat[c] = self.cat_tp[c] / den if den > 0 else math.nan
        metrics.iiou_per_class, metrics.iiou = iiou, _ordered_nanmean(iiou)
        metrics.category_iiou, metrics.category_miiou = cat, _ordered_nanmean(list(cat.values()))
        return metrics


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
        cityscapes = cityscapes and self.class_names == CLASS_NAMES  # 19 classes of another dataset: no categories
        self.categories = dict(categories) if categories is not None else (CATEGORY_TRAIN_IDS if cityscapes else {})
        self.reset()

    def reset(self) -> None:
        self.confusion = torch.zeros(self.num_classes, self.num_classes + 1, dtype=torch.int64)
        self.instances = InstanceStats(self.num_classes)

    @torch.no_grad()
    def update(self, pred: Tensor | np.ndarray, target: Tensor | np.ndarray,
               instances: Tensor | np.ndarray | None = None) -> None:
        """Add a batch. ``pred``: labels (N, H, W) / (H, W), or logits with a class dim before H, W;
        values outside [0, K) count as void predictions. ``target``: labels with ``ignore_index``.
        ``instances``: the frames' instanceIds (same shape as ``target``) for iIoU; iIoU is reported
        when every frame had them."""
        pred, target = torch.as_tensor(pred), torch.as_tensor(target)
        if pred.is_floating_point():
            if pred.dim() != target.dim() + 1 or pred.shape[-3] != self.num_classes:
                raise ValueError(f"logits {tuple(pred.shape)} must be target {tuple(target.shape)} with a class "
                                 f"dim of size {self.num_classes} before (H, W)")
            pred = pred.argmax(-3)
        if pred.shape != target.shape:
            raise ValueError(f"prediction size {tuple(pred.shape)} != target size {tuple(target.shape)}; "
                             f"upsample logits to the label size before argmax")
        full_pred = pred
        target = target.to(pred.device).long().flatten()
        pred = pred.long().flatten()
        keep = target != self.ignore_index
        target, pred = target[keep], pred[keep]
        k = self.num_classes
        if target.numel() and (target.min() < 0 or target.max() >= k):
            bad = torch.unique(target[(target < 0) | (target >= k)])[:10].tolist()
            raise ValueError(f"target holds values {bad} outside [0, {k}) and != ignore_index {self.ignore_index}")
        if instances is not None:
            inst = torch.as_tensor(instances)
            if inst.shape != full_pred.shape:
                raise ValueError(f"instanceIds {tuple(inst.shape)} != target size {tuple(full_pred.shape)}")
            for p_img, i_img in zip(full_pred.reshape(-1, *full_pred.shape[-2:]), inst.reshape(-1, *inst.shape[-2:])):
                self.instances.update(p_img.cpu().numpy(), i_img.cpu().numpy())
        else:
            self.instances.missing += int(full_pred.numel() // max(full_pred.shape[-2] * full_pred.shape[-1], 1))
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
        inst = torch.from_numpy(self.instances.state()).to(conf.device)
        dist.all_reduce(inst, op=dist.ReduceOp.SUM)
        self.instances.load_state(inst.cpu().numpy())

    def compute(self) -> SegMetrics:
        m = metrics_from_confusion(self.confusion, self.class_names, self.categories)
        if self.num_classes == NUM_CLASSES:
            self.instances.apply(m)
        return m


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


def instance_file(label_file: str | Path) -> Path | None:
    """The ``*_instanceIds.png`` beside a ``*_labelIds.png`` / ``*_labelTrainIds.png`` (None if absent)."""
    p = Path(label_file)
    for tag in ("_labelTrainIds", "_labelIds"):
        if tag in p.name:
            cand = p.with_name(p.name.replace(tag, "_instanceIds"))
            return cand if cand.is_file() else None
    return None


def evaluate_label_pngs(
    gt_files: Sequence[str | Path],
    pred_files: Sequence[str | Path],
    gt_ids: str = "label",
    pred_ids: str = "label",
    instances: str | Sequence[str | Path] | None = "auto",
) -> SegMetrics:
    """Cityscapes evaluation of label PNG pairs, as cityscapesScripts' ``evaluateImgLists``.

    Args:
        gt_files: ``*_gtFine_labelIds.png`` (``gt_ids="label"``) or ``*_labelTrainIds.png`` (``"train"``).
        pred_files: predictions in label ids (official submission format, ``pred_ids="label"``) or in
            trainIds 0..18 / 255 (``"train"``); paired with ``gt_files`` by position.
        instances: ``"auto"``: the ``*_instanceIds.png`` beside each ground truth, for iIoU when every
            frame has one (as cityscapesScripts looks them up); a list of files; None: no iIoU.
    """
    for name, ids in (("gt_ids", gt_ids), ("pred_ids", pred_ids)):
        if ids not in ("label", "train"):
            raise ValueError(f"{name} must be 'label' or 'train', got {ids!r}")
    if len(gt_files) != len(pred_files):
        raise ValueError(f"{len(gt_files)} ground-truth files but {len(pred_files)} predictions")
    if instances == "auto":
        found = [instance_file(g) for g in gt_files]
        instances = found if all(f is not None for f in found) else None
    elif instances is not None and len(instances) != len(gt_files):
        raise ValueError(f"{len(gt_files)} ground-truth files but {len(instances)} instanceIds files")
    conf = SegConfusion()
    for i, (gt_path, pred_path) in enumerate(zip(map(Path, gt_files), map(Path, pred_files))):
        gt, pred = read_label_png(gt_path), read_label_png(pred_path)
        inst = None
        if instances is not None:
            inst = cv2.imread(str(instances[i]), cv2.IMREAD_UNCHANGED)
            if inst is None or inst.shape != gt.shape:
                raise ValueError(f"{instances[i]}: not an instanceIds PNG of {gt_path}'s size "
                                 f"({'unreadable' if inst is None else inst.shape})")
            inst = torch.from_numpy(inst.astype(np.int64))
        if gt.shape != pred.shape:
            raise ValueError(f"prediction {pred_path} is {pred.shape[1]}x{pred.shape[0]} but ground truth "
                             f"{gt_path} is {gt.shape[1]}x{gt.shape[0]} (WxH); predict at full label resolution")
        conf.update(torch.from_numpy(_to_train_ids(pred, pred_ids, pred_path).astype(np.int64)),
                    torch.from_numpy(_to_train_ids(gt, gt_ids, gt_path).astype(np.int64)), inst)
    return conf.compute()
