"""COCO-format detection dataset, batch collation and a seeded DataLoader factory.

Any COCO ``instances`` json works (COCO 2017, LVIS-style subsets, the synthetic
dataset of :mod:`mobiledense.datasets.synthetic`).  Choices, documented in the README:

* crowd annotations (``iscrowd=1``) are left out of the training targets
  (``skip_crowd=True``); COCOeval still sees them through ``dataset.coco``;
* boxes are clipped to the image; boxes left with a side ``< min_box_size`` pixels
  (zero/negative size, outside the image) are dropped, with one summary
  :class:`DegenerateBoxWarning` per annotation file;
* images without annotations are kept (empty targets);
* EXIF orientation is ignored (annotations refer to the stored pixels) and an image
  whose size differs from the json's ``width``/``height`` raises an error.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import warnings
from collections import Counter
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from pycocotools.coco import COCO
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, DistributedSampler, RandomSampler, SequentialSampler

from .det_transforms import to_tensor
from .io import ImageReadError, read_image_rgb, worker_init_fn

__all__ = [
    "CocoDetection",
    "CocoFormatError",
    "DegenerateBoxWarning",
    "load_coco_json",
    "collate_detection",
    "make_det_loader",
]

Transform = Callable[[np.ndarray, dict[str, Any]], tuple[Tensor, dict[str, Any]]]


class CocoFormatError(ValueError):
    """The annotation json (or an image it lists) does not follow the COCO format."""


class DegenerateBoxWarning(UserWarning):
    """Some boxes were clipped to their image or dropped from the training targets."""


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _require(entry: dict, keys: Sequence[str], where: str) -> None:
    if not isinstance(entry, dict):
        raise CocoFormatError(f"{where} must be an object, got {type(entry).__name__}")
    missing = [k for k in keys if k not in entry]
    if missing:
        raise CocoFormatError(f"{where} (id={entry.get('id')}) is missing required field(s) {missing}")


def _unique_ids(entries: list[dict], where: str) -> None:
    bad = next((e["id"] for e in entries if not isinstance(e["id"], int) or isinstance(e["id"], bool)), None)
    if bad is not None:
        raise CocoFormatError(f"{where}: field 'id' must be an integer, got {bad!r}")
    dup = [i for i, n in Counter(e["id"] for e in entries).items() if n > 1]
    if dup:
        raise CocoFormatError(f"{where}: duplicate id(s) {sorted(dup)[:10]} (ids must be unique)")


def load_coco_json(ann_file: str | Path) -> dict[str, Any]:
    """Load and validate a COCO instances json; fills missing ``area`` (w*h) and ``iscrowd`` (0).

    Raises:
        FileNotFoundError: ``ann_file`` does not exist.
        CocoFormatError: a message naming the file, the entry and the field at fault.
    """
    ann_file = Path(ann_file)
    if not ann_file.is_file():
        raise FileNotFoundError(f"COCO annotation file not found: {ann_file}")
    try:
        data = json.loads(ann_file.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise CocoFormatError(f"{ann_file}: not valid JSON ({e})") from e
    _require(data, ("images", "annotations", "categories"), f"{ann_file}: top level")
    for key in ("images", "annotations", "categories"):
        if not isinstance(data[key], list):
            raise CocoFormatError(f"{ann_file}: '{key}' must be a list, got {type(data[key]).__name__}")

    for i, cat in enumerate(data["categories"]):
        _require(cat, ("id", "name"), f"{ann_file}: categories[{i}]")
    _unique_ids(data["categories"], f"{ann_file}: categories")

    for i, img in enumerate(data["images"]):
        where = f"{ann_file}: images[{i}] (id={img.get('id') if isinstance(img, dict) else None})"
        _require(img, ("id", "file_name", "width", "height"), where)
        for key in ("width", "height"):
            v = img[key]
            if not (_is_number(v) and v > 0 and v == int(v)):
                raise CocoFormatError(f"{where}: field '{key}' must be a positive integer, got {v!r}")
        name = img["file_name"]
        if not isinstance(name, str) or not name:
            raise CocoFormatError(f"{where}: field 'file_name' must be a non-empty string, got {name!r}")
        parts = Path(name.replace("\\", "/")).parts
        if Path(name).is_absolute() or name.startswith(("/", "\\")) or ".." in parts:
            raise CocoFormatError(
                f"{where}: field 'file_name' {name!r} escapes the image root (absolute path or '..'); "
                "file names must be relative to the image folder"
            )
    _unique_ids(data["images"], f"{ann_file}: images")

    image_ids = {img["id"] for img in data["images"]}
    cat_ids = {cat["id"] for cat in data["categories"]}
    for i, ann in enumerate(data["annotations"]):
        where = f"{ann_file}: annotations[{i}]"
        _require(ann, ("id", "image_id", "category_id", "bbox"), where)
        where = f"{where} (id={ann['id']})"
        bbox = ann["bbox"]
        if not (isinstance(bbox, list) and len(bbox) == 4 and all(_is_number(v) for v in bbox)):
            raise CocoFormatError(f"{where}: field 'bbox' must be 4 finite numbers [x, y, w, h], got {bbox!r}")
        if ann["image_id"] not in image_ids:
            raise CocoFormatError(f"{where}: field 'image_id' {ann['image_id']!r} is not in 'images'")
        if ann["category_id"] not in cat_ids:
            raise CocoFormatError(
                f"{where}: field 'category_id' {ann['category_id']!r} is not in 'categories' "
                f"(known ids: {sorted(cat_ids)[:20]}{'...' if len(cat_ids) > 20 else ''})"
            )
        ann.setdefault("iscrowd", 0)
        if ann["iscrowd"] not in (0, 1):
            raise CocoFormatError(f"{where}: field 'iscrowd' must be 0 or 1, got {ann['iscrowd']!r}")
        ann.setdefault("area", float(bbox[2] * bbox[3]))
        if not _is_number(ann["area"]):
            raise CocoFormatError(f"{where}: field 'area' must be a finite number, got {ann['area']!r}")
    _unique_ids(data["annotations"], f"{ann_file}: annotations")
    return data


def _coco_from_dict(data: dict[str, Any]) -> COCO:
    coco = COCO()
    coco.dataset = data
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints "creating index..."
        coco.createIndex()
    return coco


class CocoDetection(Dataset):
    """COCO-format detection dataset returning ``(image, target)`` as in ``/tmp/api.md``.

    Args:
        root_images: folder the json's ``file_name`` entries are relative to.
        ann_file: COCO instances json.
        transforms: ``f(image uint8 HxWx3 RGB, target with numpy boxes/labels) -> (Tensor, target)``,
            e.g. :func:`~mobiledense.datasets.det_transforms.build_det_transforms`; None gives
            the image as a float tensor in [0, 1] and the boxes unchanged.
        label_mapping: ``"contiguous"`` (labels 1..K in category-id order) or ``"category_id"``
            (labels are the raw ids, e.g. 1..90 for COCO as torchvision's 91-class models).
        skip_crowd: leave ``iscrowd=1`` boxes out of the targets; with False they are kept
            and ``target["iscrowd"]`` is added.
        min_box_size: boxes with a side below this (pixels, after clipping) are dropped.
    """

    def __init__(
        self,
        root_images: str | Path,
        ann_file: str | Path,
        transforms: Transform | None = None,
        label_mapping: str = "contiguous",
        skip_crowd: bool = True,
        min_box_size: float = 1.0,
    ) -> None:
        if label_mapping not in ("contiguous", "category_id"):
            raise ValueError(f"label_mapping must be 'contiguous' or 'category_id', got {label_mapping!r}")
        self.root = Path(root_images)
        self.ann_file = Path(ann_file)
        if not self.root.is_dir():
            raise FileNotFoundError(f"image folder not found: {self.root} (images of {self.ann_file})")
        self.transforms = transforms
        self.skip_crowd = skip_crowd
        self.coco = _coco_from_dict(load_coco_json(self.ann_file))
        cat_ids = sorted(self.coco.cats)
        if label_mapping == "contiguous":
            self.category_id_to_label = {c: i + 1 for i, c in enumerate(cat_ids)}
        else:
            if cat_ids and min(cat_ids) < 1:
                raise CocoFormatError(f"{self.ann_file}: label_mapping='category_id' needs ids >= 1 (0 is background)")
            self.category_id_to_label = {c: c for c in cat_ids}
        self.label_to_category_id = {v: k for k, v in self.category_id_to_label.items()}
        self.category_names = {self.category_id_to_label[c]: self.coco.cats[c]["name"] for c in cat_ids}
        self.num_classes = max(self.label_to_category_id, default=0) + 1
        self.image_ids: list[int] = sorted(self.coco.imgs)
        self._build_targets(min_box_size)

    def _build_targets(self, min_box_size: float) -> None:
        """Per-image boxes as one concatenated array + offsets (fast to pickle to workers)."""
        index = {img_id: i for i, img_id in enumerate(self.image_ids)}
        anns = [a for a in self.coco.dataset["annotations"] if not (self.skip_crowd and a["iscrowd"])]
        self.num_crowd_skipped = len(self.coco.dataset["annotations"]) - len(anns)
        img_idx = np.array([index[a["image_id"]] for a in anns], dtype=np.int64)
        xywh = np.array([a["bbox"] for a in anns], dtype=np.float64).reshape(-1, 4)
        labels = np.array([self.category_id_to_label[a["category_id"]] for a in anns], dtype=np.int64)
        crowd = np.array([a["iscrowd"] for a in anns], dtype=np.int64)
        wh = np.array([[self.coco.imgs[i]["width"], self.coco.imgs[i]["height"]] for i in self.image_ids], np.float64)
        raw = np.concatenate([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], axis=1)
        size = wh[img_idx] if len(anns) else np.zeros((0, 2))
        boxes = np.clip(raw, 0, np.concatenate([size, size], axis=1))
        keep = np.minimum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]) >= max(min_box_size, 1e-6)
        n_clipped = int((np.abs(boxes - raw).max(axis=1, initial=0) > 1.0)[keep].sum())
        n_dropped = int((~keep).sum())
        if n_clipped or n_dropped:
            warnings.warn(
                f"{self.ann_file}: {n_clipped} box(es) extending more than 1 px outside their image were clipped "
                f"and {n_dropped} box(es) with zero/negative size, outside the image or a side < "
                f"{min_box_size} px were dropped from the training targets (dataset.coco is unchanged)",
                DegenerateBoxWarning,
                stacklevel=3,
            )
        order = np.argsort(img_idx[keep], kind="stable")
        self._boxes = boxes[keep][order].astype(np.float32)
        self._labels, self._iscrowd = labels[keep][order], crowd[keep][order]
        counts = np.bincount(img_idx[keep], minlength=len(self.image_ids))
        self._offsets = np.concatenate([[0], np.cumsum(counts)])
        self.box_stats = {"kept": int(keep.sum()), "clipped": n_clipped, "dropped": n_dropped,
                          "crowd_skipped": self.num_crowd_skipped}

    def __len__(self) -> int:
        return len(self.image_ids)

    def image_path(self, index: int) -> Path:
        return self.root / self.coco.imgs[self.image_ids[index]]["file_name"]

    def check_files(self) -> None:
        """Raise naming the first image files that are missing or empty (``stat`` only, fast): a bad
        evaluation set is found before training starts, not after its first epoch."""
        bad = []
        for i in range(len(self)):
            path = self.image_path(i)
            try:
                if path.stat().st_size == 0:
                    bad.append(f"{path} is empty (0 bytes)")
            except OSError as e:
                bad.append(f"{path}: {e.strerror or e}")
            if len(bad) >= 3:
                break
        if bad:
            raise ImageReadError(f"{self.ann_file}: unreadable image files: {'; '.join(bad)}")

    def load_image(self, index: int) -> np.ndarray:
        """The stored image as uint8 RGB; errors name the file on any mismatch with the json."""
        info = self.coco.imgs[self.image_ids[index]]
        path = self.image_path(index)
        image = read_image_rgb(path)
        if image.shape[:2] != (info["height"], info["width"]):
            raise CocoFormatError(
                f"{path}: image is {image.shape[1]}x{image.shape[0]} (WxH) but {self.ann_file} says "
                f"{info['width']}x{info['height']} for image id {info['id']}; re-export the json or the image "
                "(EXIF orientation is ignored: annotations refer to the stored pixels)"
            )
        return image

    def raw_target(self, index: int) -> dict[str, Any]:
        """Target before transforms: numpy ``boxes`` (N, 4) xyxy pixels and ``labels`` (N,)."""
        lo, hi = self._offsets[index], self._offsets[index + 1]
        info = self.coco.imgs[self.image_ids[index]]
        target: dict[str, Any] = {
            "boxes": self._boxes[lo:hi].copy(),
            "labels": self._labels[lo:hi].copy(),
            "image_id": int(self.image_ids[index]),
            "orig_size": (int(info["height"]), int(info["width"])),
        }
        if not self.skip_crowd:
            target["iscrowd"] = self._iscrowd[lo:hi].copy()
        return target

    def __getitem__(self, index: int) -> tuple[Tensor, dict[str, Any]]:
        image, target = self.load_image(index), self.raw_target(index)
        if self.transforms is not None:
            return self.transforms(image, target)
        for key in ("boxes", "labels", "iscrowd"):
            if key in target:
                target[key] = torch.from_numpy(target[key])
        return to_tensor(image), target

    def __repr__(self) -> str:
        return (f"{type(self).__name__}({self.ann_file}, images={len(self)}, classes={self.num_classes - 1}, "
                f"boxes={self.box_stats['kept']}, transforms={self.transforms})")


def collate_detection(batch: Sequence[tuple[Tensor, dict[str, Any]]]) -> tuple[list[Tensor], list[dict[str, Any]]]:
    """Images and targets as two lists (images keep their own sizes)."""
    images, targets = zip(*batch) if batch else ((), ())
    return list(images), list(targets)


def make_det_loader(
    dataset: Dataset,
    batch_size: int,
    train: bool,
    workers: int = 0,
    distributed: bool = False,
    seed: int = 0,
    drop_last: bool | None = None,
    pin_memory: bool = False,
    persistent_workers: bool = False,
    rank: int | None = None,
    world_size: int | None = None,
) -> DataLoader:
    """DataLoader for detection: seeded shuffling/augmentation, optional DistributedSampler.

    Training shuffles with a ``torch.Generator`` seeded by ``seed`` (which also seeds the
    workers, hence the augmentations); ``drop_last`` defaults to ``train`` unless the
    (per-rank) dataset is smaller than one batch.  With ``distributed=True`` call
    ``loader.sampler.set_epoch(epoch)`` every epoch, as with any DistributedSampler;
    ``rank``/``world_size`` default to the initialised process group's.
    """
    generator = torch.Generator().manual_seed(seed)
    if distributed:
        sampler = DistributedSampler(dataset, num_replicas=world_size, rank=rank, shuffle=train, seed=seed,
                                     drop_last=train)
    elif train:
        sampler = RandomSampler(dataset, generator=generator)
    else:
        sampler = SequentialSampler(dataset)
    if drop_last is None:
        drop_last = train and len(sampler) >= batch_size
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=workers,
        collate_fn=collate_detection,
        worker_init_fn=worker_init_fn,
        generator=generator,
        drop_last=drop_last,
        pin_memory=pin_memory,
        persistent_workers=persistent_workers and workers > 0,
    )
