"""Data and evaluation sections: augmentation per worker on real JPEGs, COCO evaluation."""

from __future__ import annotations

import contextlib
import copy
import io
from typing import Any, Callable

import numpy as np
import torch

from .common import BenchConfig, Row
from .timing import time_interleaved

__all__ = ["bench_data", "bench_eval", "synthetic_coco"]


def _reference_det_preset(augmentation: str) -> Callable:
    """torchvision ``references/detection/presets.py`` ``DetectionPresetTrain`` (use_v2=True, PIL backend)."""
    from collections import defaultdict

    import torchvision.transforms.v2 as T
    from torchvision import tv_tensors

    mean = (123.0, 117.0, 104.0)
    ops: list[Any] = []
    if augmentation == "ssd":
        ops += [T.RandomPhotometricDistort(p=1), T.RandomZoomOut(fill=defaultdict(lambda: mean, {tv_tensors.Mask: 0}))]
    ops += [T.RandomIoUCrop(), T.RandomHorizontalFlip(p=0.5), T.ToImage(), T.ToDtype(torch.float, scale=True),
            T.ConvertBoundingBoxFormat(tv_tensors.BoundingBoxFormat.XYXY), T.SanitizeBoundingBoxes(),
            T.ToPureTensor()]
    return T.Compose(ops)


def bench_data(cfg: BenchConfig, device: str) -> list[Row]:
    """SSD augmentation per worker (decode included, one process, one thread) on real COCO JPEGs."""
    import cv2
    from torchvision import datasets

    from mobiledense.datasets import CocoDetection, build_det_transforms

    root = cfg.coco_dir
    if root is None or not (root / "annotations" / "instances_val2017.json").is_file():
        raise FileNotFoundError(f"real COCO images not found under {root} (expected images/val2017 and "
                                "annotations/instances_val2017.json; pass --coco-dir)")
    images, ann = root / "images" / "val2017", root / "annotations" / "instances_val2017.json"
    threads, cv_threads = torch.get_num_threads(), cv2.getNumThreads()
    torch.set_num_threads(1)
    cv2.setNumThreads(0)  # as in a DataLoader worker (datasets.io.worker_init_fn)
    rows = []
    try:
        for preset in ("ssdlite", "ssd"):
            ours = CocoDetection(images, ann, transforms=build_det_transforms(preset, None, train=True))
            with contextlib.redirect_stdout(io.StringIO()):  # pycocotools' progress prints
                ref0 = datasets.CocoDetection(str(images), str(ann), transforms=_reference_det_preset(preset))
            ref = datasets.wrap_dataset_for_transforms_v2(ref0, target_keys=["boxes", "labels", "image_id"])
            # The reference drops images without annotations for training; both see the same images.
            ids = [i for i in ours.image_ids if ours.coco.getAnnIds(imgIds=i, iscrowd=False)]
            ids = ids[:4] if cfg.smoke else ids
            ours_idx = [ours.image_ids.index(i) for i in ids]
            ref_idx = [ref0.ids.index(i) for i in ids]
            ok = True
            for ds, idx in ((ours, ours_idx), (ref, ref_idx)):
                image, target = ds[idx[0]]
                ok &= image.dtype == torch.float32 and image.shape[0] == 3 and 0 <= image.min() <= image.max() <= 1
                ok &= bool((target["boxes"][:, 2:] <= torch.tensor(image.shape[:0:-1])).all())
            # A timed call runs over the images several times: the random zoom-out (up to 16x the
            # pixels) makes one pass's cost vary by 2x from draw to draw; three average it out.
            passes = 1 if cfg.smoke else 3
            fns = {"ours": lambda: [ours[i] for i in ours_idx * passes],
                   "ref": lambda: [ref[i] for i in ref_idx * passes]}
            t = time_interleaved(fns, max(2, cfg.few), 1)
            rows.append(Row("data", f"{preset} train augmentation, COCO val2017 JPEGs", "cpu", len(ids) * passes,
                            t["ours"], t["ref"], f"mobiledense build_det_transforms({preset!r}) (OpenCV)",
                            f"torchvision reference {preset!r} preset (transforms.v2, PIL)",
                            {"passed": bool(ok), "note": "random augmentation: outputs checked for format only"},
                            {"images": len(ids), "decode": "included", "threads": 1}))
    finally:
        torch.set_num_threads(threads)
        cv2.setNumThreads(cv_threads)
    return rows


def synthetic_coco(num_images: int, dets_per_image: int, seed: int = 0) -> tuple[dict, list[dict]]:
    """A COCO GT dict (80 categories, 1-15 boxes per image, some crowd) and scored detections.

    Detections are jittered ground-truth boxes (true and false positives at every IoU) plus
    random boxes, with random scores and some wrong categories, so every code path of
    the protocol (areas, crowd, maxDets, unmatched) is exercised.
    """
    rng = np.random.default_rng(seed)
    cats = [{"id": i, "name": f"class{i}", "supercategory": "thing"} for i in range(1, 91) if i % 9 != 0][:80]
    cat_ids = np.array([c["id"] for c in cats])
    images, anns, dets = [], [], []
    for img_id in range(1, num_images + 1):
        w, h = int(rng.integers(320, 641)), int(rng.integers(240, 481))
        images.append({"id": img_id, "width": w, "height": h, "file_name": f"{img_id:012d}.jpg"})
        n = int(rng.integers(1, 16))
        wh = np.exp(rng.uniform(np.log(4), np.log(min(w, h) * 0.9), (n, 2)))
        xy = rng.uniform(0, 1, (n, 2)) * (np.array([w, h]) - wh)
        labels = rng.choice(cat_ids, n)
        for box, lab in zip(np.concatenate([xy, wh], 1), labels):
            anns.append({"id": len(anns) + 1, "image_id": img_id, "category_id": int(lab),
                         "bbox": [float(v) for v in box], "area": float(box[2] * box[3]),
                         "iscrowd": int(rng.random() < 0.03)})
        k = dets_per_image
        src = rng.integers(0, n, k)
        jitter = np.concatenate([xy[src] + rng.normal(0, 0.1, (k, 2)) * wh[src],
                                 wh[src] * np.exp(rng.normal(0, 0.2, (k, 2)))], 1)
        rand = rng.random(k) < 0.3
        jitter[rand, :2] = rng.uniform(0, 1, (rand.sum(), 2)) * np.array([w, h]) * 0.8
        det_labels = np.where(rng.random(k) < 0.8, labels[src], rng.choice(cat_ids, k))
        for box, lab, score in zip(jitter, det_labels, rng.random(k)):
            dets.append({"image_id": img_id, "category_id": int(lab), "bbox": [round(float(v), 2) for v in box],
                         "score": round(float(score), 4)})
    gt = {"images": images, "annotations": anns, "categories": cats}
    return gt, dets


def _pycocotools_reference(gt: dict, dets: list[dict]) -> np.ndarray:
    """What a pycocotools user runs: index GT, loadRes, evaluate, accumulate, summarize."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO()
        coco.dataset = copy.deepcopy(gt)
        coco.createIndex()
        ev = COCOeval(coco, coco.loadRes(copy.deepcopy(dets)), "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return np.asarray(ev.stats)


def bench_eval(cfg: BenchConfig, device: str) -> list[Row]:
    """COCO bbox evaluation of a large synthetic set: ``evaluate_coco`` (faster backend) vs pycocotools."""
    from mobiledense.tools.evaluation.coco import evaluate_coco

    gt, dets = synthetic_coco(cfg.eval_images, cfg.eval_dets_per_image)
    out: dict[str, Any] = {}
    fns = {"ours": lambda: out.__setitem__("ours", evaluate_coco(gt, dets, backend="faster_coco_eval").stats),
           "ref": lambda: out.__setitem__("ref", _pycocotools_reference(gt, dets))}
    t = time_interleaved(fns, 1 if cfg.smoke else 2, 0)
    diff = float(np.abs(out["ours"] - out["ref"]).max())
    check = {"passed": diff <= 1e-12, "max_stat_diff": diff, "AP": float(out["ref"][0])}
    return [Row("eval", f"COCO bbox eval, {cfg.eval_images} images, {len(dets)} detections", "cpu",
                cfg.eval_images, t["ours"], t["ref"], "mobiledense evaluate_coco (faster-coco-eval)",
                "pycocotools COCOeval", check, {"gt_boxes": len(gt["annotations"]), "detections": len(dets)})]

