"""COCO detection metrics (Lin et al., "Microsoft COCO", ECCV 2014, §5) on pycocotools or faster-coco-eval.

``evaluate_coco`` runs the official ``COCOeval`` protocol (10 IoU thresholds
.50:.05:.95, 101 recall points, area ranges all/small/medium/large, maxDets
1/10/100) and returns the 12 summary stats, a per-class AP table and the raw
precision/recall arrays (pycocotools layout) for PR curves.

Backends.  ``pycocotools`` is the reference.  ``faster_coco_eval`` (C++
matching and accumulation, same matching rules) is used by ``"auto"`` when
importable.  Its precision is ``tp / (tp + fp)`` while pycocotools divides by
``tp + fp + np.spacing(1)``; in float64 ``n + eps == n`` for every integer
``n >= 2``, so the two differ only where the first non-ignored detection of a
class is a true positive and nothing later restores precision 1.0: there
pycocotools stores ``1 / (1 + eps) = 1 - 1.1e-16`` and faster-coco-eval ``1.0``.
Summary stats can therefore differ by at most a few ulp (``BACKEND_ATOL``);
recall and score arrays are bit-identical.
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import math
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from mobiledense.datasets.io import write_text_atomic

__all__ = [
    "STAT_NAMES",
    "BACKENDS",
    "BACKEND_ATOL",
    "ClassAP",
    "CocoEvalResult",
    "evaluate_coco",
    "summarize_precision_recall",
    "detections_to_coco_results",
    "write_coco_results",
]

STAT_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")
BACKENDS = ("auto", "pycocotools", "faster_coco_eval")
#: Largest difference seen between the backends' summary stats (see module docstring).
BACKEND_ATOL = 1e-15
_AREAS = ("all", "small", "medium", "large")
_MAX_DETS = (1, 10, 100)


@dataclass(frozen=True)
class ClassAP:
    """AP of one category (area "all", maxDets 100); NaN when it has no ground truth."""

    category_id: int
    name: str
    ap: float
    ap50: float
    num_gt: int  # non-crowd ground-truth instances in the evaluated images


@dataclass
class CocoEvalResult:
    """Output of :func:`evaluate_coco`; arrays use pycocotools' ``eval`` layout."""

    iou_type: str
    stats: np.ndarray  # (12,) in STAT_NAMES order; -1 where undefined (as pycocotools)
    per_class: list[ClassAP]
    precision: np.ndarray  # (T=10, R=101, K, A=4, M=3), -1 where a class has no GT
    recall: np.ndarray  # (T, K, A, M)
    iou_thresholds: np.ndarray
    recall_thresholds: np.ndarray
    category_ids: list[int]
    backend: str
    seconds: float
    num_images: int
    num_detections: int
    extras: dict[str, Any] = field(default_factory=dict)

    @property
    def ap(self) -> float:
        return float(self.stats[0])

    def as_dict(self) -> dict[str, float]:
        return {name: float(v) for name, v in zip(STAT_NAMES, self.stats)}

    def summary(self, per_class: bool = False) -> str:
        """Text table: the 12 stats and, optionally, per-class AP / AP50."""
        lines = [f"COCO {self.iou_type} ({self.backend}, {self.num_images} images, "
                 f"{self.num_detections} detections, {self.seconds:.2f}s)"]
        lines += [f"  {name:<6} {value:.4f}" for name, value in self.as_dict().items()]
        if per_class:
            lines.append(f"  {'category':<20} {'AP':>6} {'AP50':>6} {'#gt':>6}")
            lines += [f"  {c.name:<20} {c.ap:6.3f} {c.ap50:6.3f} {c.num_gt:6d}" for c in self.per_class]
        return "\n".join(lines)

    def to_json(self, path: str | Path) -> Path:
        """Write stats, per-class table, backend and timing (no arrays) to ``path``, atomically."""
        doc = {"iou_type": self.iou_type, "backend": self.backend, "seconds": self.seconds,
               "num_images": self.num_images, "num_detections": self.num_detections,
               "stats": self.as_dict(),
               "per_class": [{**c.__dict__, "ap": _json_float(c.ap), "ap50": _json_float(c.ap50)}
                             for c in self.per_class]}
        return write_text_atomic(json.dumps(doc, indent=1), path)


def _json_float(x: float) -> float | None:
    return None if math.isnan(x) else x


def _resolve_backend(backend: str) -> str:
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend != "auto":
        return backend
    try:
        import faster_coco_eval  # noqa: F401
    except ImportError:
        return "pycocotools"
    return "faster_coco_eval"


def _gt_dataset(coco_gt: Any) -> dict:
    """The annotation dict behind a path, a dict or a (pycocotools / faster) COCO object."""
    if isinstance(coco_gt, (str, Path)):
        path = Path(coco_gt)
        if not path.is_file():
            raise FileNotFoundError(f"COCO annotation file not found: {path}")
        with open(path) as f:
            return json.load(f)
    if isinstance(coco_gt, dict):
        return coco_gt
    if hasattr(coco_gt, "dataset") and isinstance(coco_gt.dataset, dict):
        return coco_gt.dataset
    raise TypeError(f"coco_gt must be a path, a dict or a COCO object, got {type(coco_gt).__name__}")


def _load_detections(detections: Sequence[Mapping[str, Any]] | str | Path) -> list[dict]:
    if isinstance(detections, (str, Path)):
        path = Path(detections)
        if not path.is_file():
            raise FileNotFoundError(f"detections file not found: {path}")
        with open(path) as f:
            detections = json.load(f)
        if not isinstance(detections, list):
            raise ValueError(f"{path}: a COCO results file is a JSON list of detections, "
                             f"got {type(detections).__name__}")
    # loadRes adds keys (id, area, iscrowd, segmentation) to every dict: work on copies.
    return [dict(d) for d in detections]


def _check_detections(dets: list[dict], iou_type: str, img_ids: set[int], cat_ids: set[int]) -> None:
    geom = "bbox" if iou_type == "bbox" else "segmentation"
    for i, d in enumerate(dets):
        missing = [k for k in ("image_id", "category_id", "score", geom) if k not in d]
        if missing:
            raise ValueError(f"detection #{i} lacks {missing}; COCO {iou_type} results need image_id, "
                             f"category_id, {geom} and score: {d}")
    bad_img = sorted({d["image_id"] for d in dets} - img_ids)
    if bad_img:
        raise ValueError(f"{len(bad_img)} detection image ids are not among the evaluated ground-truth images: "
                         f"{bad_img[:10]}{' ...' if len(bad_img) > 10 else ''}")
    bad_cat = sorted({d["category_id"] for d in dets} - cat_ids)
    if bad_cat:
        raise ValueError(f"detection category ids {bad_cat[:10]} are not in the ground truth (valid: "
                         f"{sorted(cat_ids)[:10]} ...); use the original COCO ids (label_to_category_id), "
                         f"not contiguous labels")
    if iou_type == "bbox":
        boxes = np.array([d["bbox"] for d in dets], dtype=np.float64).reshape(-1, 4)
        scores = np.array([d["score"] for d in dets], dtype=np.float64)
        bad = ~np.isfinite(boxes).all(1) | (boxes[:, 2] < 0) | (boxes[:, 3] < 0) | ~np.isfinite(scores)
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise ValueError(f"detection #{i} has a non-finite score/bbox or a negative width/height "
                             f"(bbox is [x, y, w, h]): {dets[i]}")


def _pycocotools_eval(gt: dict, dets: list[dict], iou_type: str, img_ids: list[int]) -> dict:
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    coco_gt = COCO()
    coco_gt.dataset = gt
    coco_gt.createIndex()
    if dets:
        coco_dt = coco_gt.loadRes(dets)
    else:  # loadRes indexes anns[0]; an empty result set is still evaluable (all zeros)
        coco_dt = COCO()
        coco_dt.dataset = {"images": list(gt["images"]), "categories": copy.deepcopy(gt["categories"]),
                           "annotations": []}
        coco_dt.createIndex()
    ev = COCOeval(coco_gt, coco_dt, iou_type)
    ev.params.imgIds = img_ids
    ev.evaluate()
    ev.accumulate()
    return ev.eval


def _faster_eval(gt: dict, dets: list[dict], iou_type: str, img_ids: list[int]) -> dict:
    import faster_coco_eval

    quiet = lambda *args, **kwargs: None  # noqa: E731
    coco_gt = faster_coco_eval.COCO(gt, print_function=quiet)
    coco_dt = coco_gt.loadRes(dets)
    ev = faster_coco_eval.COCOeval_faster(coco_gt, coco_dt, iou_type, print_function=quiet)
    ev.params.imgIds = img_ids
    ev.evaluate()
    ev.accumulate()
    return ev.eval


def summarize_precision_recall(precision: np.ndarray, recall: np.ndarray, iou_thresholds: np.ndarray) -> np.ndarray:
    """The 12 stats of ``COCOeval.summarize`` (bbox/segm), computed the same way (mean over entries > -1)."""

    def one(ap: bool, iou: float | None = None, area: str = "all", max_dets: int = 100) -> float:
        a, m = _AREAS.index(area), _MAX_DETS.index(max_dets)
        s = precision if ap else recall
        if iou is not None:
            s = s[np.where(iou == iou_thresholds)[0]]
        s = s[:, :, :, a, m] if ap else s[:, :, a, m]
        return -1.0 if len(s[s > -1]) == 0 else float(np.mean(s[s > -1]))

    return np.array([
        one(True), one(True, iou=0.5), one(True, iou=0.75),
        one(True, area="small"), one(True, area="medium"), one(True, area="large"),
        one(False, max_dets=1), one(False, max_dets=10), one(False),
        one(False, area="small"), one(False, area="medium"), one(False, area="large"),
    ])


def _per_class(precision: np.ndarray, iou_thresholds: np.ndarray, gt: dict, cat_ids: list[int],
               img_ids: set[int]) -> list[ClassAP]:
    names = {c["id"]: c["name"] for c in gt["categories"]}
    num_gt = dict.fromkeys(cat_ids, 0)
    for a in gt.get("annotations", []):
        if a["image_id"] in img_ids and not a.get("iscrowd", 0) and a["category_id"] in num_gt:
            num_gt[a["category_id"]] += 1
    t50 = np.where(iou_thresholds == 0.5)[0]
    rows = []
    for k, cid in enumerate(cat_ids):
        s = precision[:, :, k, 0, -1]
        s50 = s[t50]
        ap = float(np.mean(s[s > -1])) if (s > -1).any() else math.nan
        ap50 = float(np.mean(s50[s50 > -1])) if (s50 > -1).any() else math.nan
        rows.append(ClassAP(cid, names[cid], ap, ap50, num_gt[cid]))
    return rows


def evaluate_coco(
    coco_gt: Any,
    detections: Sequence[Mapping[str, Any]] | str | Path,
    iou_type: str = "bbox",
    backend: str = "auto",
    image_ids: Sequence[int] | None = None,
) -> CocoEvalResult:
    """Run the COCO protocol on ``detections`` (official results format) against ``coco_gt``.

    Args:
        coco_gt: annotation JSON path, its dict, or a pycocotools / faster-coco-eval ``COCO``.
        detections: list of ``{image_id, category_id, bbox | segmentation, score}`` or a JSON path.
        iou_type: ``"bbox"`` or ``"segm"``.
        backend: ``"auto"`` (faster-coco-eval when importable), ``"pycocotools"``, ``"faster_coco_eval"``.
        image_ids: evaluate on this subset of the GT images (default: all of them).
    """
    if iou_type not in ("bbox", "segm"):
        raise ValueError(f"iou_type must be 'bbox' or 'segm', got {iou_type!r}")
    backend = _resolve_backend(backend)
    gt = _gt_dataset(coco_gt)
    # Both libraries write into GT annotation dicts ("ignore"; segm: RLE); keep the caller's intact.
    gt = {**gt, "annotations": [dict(a) for a in gt.get("annotations", [])]}
    dets = _load_detections(detections)
    gt_img_ids = {img["id"] for img in gt["images"]}
    if image_ids is None:
        img_ids = sorted(gt_img_ids)
    else:
        img_ids = sorted(set(int(i) for i in image_ids))
        unknown = sorted(set(img_ids) - gt_img_ids)
        if unknown:
            raise ValueError(f"image_ids {unknown[:10]} are not in the ground truth")
    cat_ids = sorted(c["id"] for c in gt["categories"])
    _check_detections(dets, iou_type, set(img_ids), set(cat_ids))
    if not dets:
        warnings.warn("evaluate_coco: no detections; every COCO metric is 0", stacklevel=2)

    tic = time.perf_counter()
    run = _pycocotools_eval if backend == "pycocotools" else _faster_eval
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress
        ev = run(gt, dets, iou_type, img_ids)
    seconds = time.perf_counter() - tic

    precision, recall = np.asarray(ev["precision"]), np.asarray(ev["recall"])
    iou_thrs = np.asarray(ev["params"].iouThrs)
    return CocoEvalResult(
        iou_type=iou_type,
        stats=summarize_precision_recall(precision, recall, iou_thrs),
        per_class=_per_class(precision, iou_thrs, gt, cat_ids, set(img_ids)),
        precision=precision,
        recall=recall,
        iou_thresholds=iou_thrs,
        recall_thresholds=np.asarray(ev["params"].recThrs),
        category_ids=cat_ids,
        backend=backend,
        seconds=seconds,
        num_images=len(img_ids),
        num_detections=len(dets),
        extras={"scores": np.asarray(ev["scores"]), "gt_per_area": _gt_per_area(gt, set(img_ids))},
    )


#: COCO's area ranges (pixels): small < 32^2 <= medium < 96^2 <= large.
AREA_RANGES = {"small": (0.0, 32.0 ** 2), "medium": (32.0 ** 2, 96.0 ** 2), "large": (96.0 ** 2, 1e10)}


def _gt_per_area(gt: dict, img_ids: set[int]) -> dict[str, int]:
    """Non-crowd ground-truth objects per COCO area range (by their ``area`` field, as COCOeval)."""
    counts = dict.fromkeys(AREA_RANGES, 0)
    for a in gt.get("annotations", []):
        if a.get("iscrowd", 0) or a["image_id"] not in img_ids:
            continue
        for name, (lo, hi) in AREA_RANGES.items():
            if lo <= a.get("area", 0.0) < hi:
                counts[name] += 1
    return counts


def _to_numpy(x: Any) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    return np.asarray(x)


def detections_to_coco_results(
    predictions: Sequence[Mapping[str, Any]],
    image_ids: Sequence[int],
    label_to_category_id: Mapping[int, int],
    orig_sizes: Sequence[tuple[int, int]] | None = None,
    box_decimals: int = 2,
    score_decimals: int = 5,
) -> list[dict]:
    """Model outputs -> COCO results (``bbox`` as ``[x, y, w, h]``, original category ids).

    Args:
        predictions: per image ``{"boxes": (M, 4) xyxy in original pixels, "scores": (M,),
            "labels": (M,) contiguous 1..K}`` (tensors or arrays), as the detector returns in eval mode.
        image_ids: COCO image id of each prediction.
        label_to_category_id: contiguous label -> original COCO category id (the dataset's mapping).
        orig_sizes: optional ``(h, w)`` per image; boxes are clipped to it.
        box_decimals / score_decimals: rounding (COCO annotations use 2 decimals).
    """
    if len(predictions) != len(image_ids):
        raise ValueError(f"{len(predictions)} predictions but {len(image_ids)} image ids")
    if orig_sizes is not None and len(orig_sizes) != len(image_ids):
        raise ValueError(f"{len(orig_sizes)} orig_sizes but {len(image_ids)} image ids")
    results: list[dict] = []
    for n, (pred, image_id) in enumerate(zip(predictions, image_ids)):
        boxes = _to_numpy(pred["boxes"]).astype(np.float64).reshape(-1, 4)
        scores = _to_numpy(pred["scores"]).astype(np.float64).reshape(-1)
        labels = _to_numpy(pred["labels"]).astype(np.int64).reshape(-1)
        if not len(boxes) == len(scores) == len(labels):
            raise ValueError(f"image {image_id}: {len(boxes)} boxes, {len(scores)} scores, {len(labels)} labels")
        unknown = sorted(set(labels.tolist()) - set(label_to_category_id))
        if unknown:
            raise ValueError(f"image {image_id}: labels {unknown} have no category id in label_to_category_id "
                             f"(keys {sorted(label_to_category_id)[:5]} ...; 0 is background and never exported)")
        if orig_sizes is not None:
            h, w = (float(v) for v in orig_sizes[n])
            boxes[:, 0::2] = boxes[:, 0::2].clip(0, w)
            boxes[:, 1::2] = boxes[:, 1::2].clip(0, h)
        wh = boxes[:, 2:] - boxes[:, :2]
        if not np.isfinite(boxes).all() or (wh < 0).any():
            raise ValueError(f"image {image_id}: boxes must be finite xyxy with x2 >= x1 and y2 >= y1")
        xywh = np.round(np.concatenate([boxes[:, :2], wh], 1), box_decimals)
        scores = np.round(scores, score_decimals)
        results += [
            {"image_id": int(image_id), "category_id": int(label_to_category_id[int(lab)]),
             "bbox": [float(v) for v in box], "score": float(s)}
            for box, s, lab in zip(xywh, scores, labels)
        ]
    return results


def write_coco_results(results: Sequence[Mapping[str, Any]], path: str | Path) -> Path:
    """Write COCO results (a JSON list) to ``path`` atomically (a failed write names the file, keeps the old one)."""
    return write_text_atomic(json.dumps(list(results), separators=(",", ":")), path)
