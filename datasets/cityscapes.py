"""Cityscapes semantic segmentation (Cordts et al., CVPR 2016) in the official folder layout.

::

    root/leftImg8bit/<split>/<city>/<city>_<seq>_<frame>_leftImg8bit.png
    root/gtFine/<split>/<city>/<city>_<seq>_<frame>_gtFine_labelIds.png       (ids 0..33)
    root/gtFine/<split>/<city>/<city>_<seq>_<frame>_gtFine_labelTrainIds.png  (optional)

Samples are ``(image float32 (3,H,W) in [0, 1], mask int64 (H,W))`` with the 19 trainIds and
255 = ignore; labelIds are mapped with the official table (``cityscapes_labels``).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from torch import Tensor
from torch.utils.data import Dataset

from .cityscapes_labels import CLASS_NAMES, IGNORE_INDEX, NUM_CLASSES, label_ids_to_train_ids
from .io import ImageReadError, read_image_rgb
from .seg_transforms import to_tensor_pair

SPLITS = ("train", "val", "test")
TARGET_TYPES = ("labelIds", "labelTrainIds")
_IMAGE_SUFFIX = "_leftImg8bit.png"
_LAYOUT_HINT = (
    "expected the official layout root/leftImg8bit/<split>/<city>/*_leftImg8bit.png and "
    "root/gtFine/<split>/<city>/*_gtFine_labelIds.png"
)

SegTransforms = Callable[[np.ndarray, np.ndarray], tuple[Tensor, Tensor]]


@dataclass(frozen=True)
class CityscapesFrame:
    """One frame: ``stem`` is ``<city>_<seq>_<frame>``; ``image`` is None for label-only frames."""

    city: str
    stem: str
    image: Path | None
    label: Path


def read_label_png(path: str | os.PathLike) -> np.ndarray:
    """Read a label PNG unchanged as an (H, W) uint8 array, refusing anything but 8-bit 1-channel.

    Raises:
        FileNotFoundError: the file does not exist.
        ImageReadError: empty or undecodable file.
        ValueError: a colour or 16-bit file (e.g. ``*_color.png`` or ``*_instanceIds.png``).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"label file not found: {path}")
    buf = np.fromfile(path, dtype=np.uint8)
    label = cv2.imdecode(buf, cv2.IMREAD_UNCHANGED) if buf.size else None
    if label is None:
        raise ImageReadError(f"cannot decode label PNG (empty, corrupt or truncated): {path}")
    if label.dtype == np.uint16:
        raise ValueError(f"{path}: 16-bit label PNG; this looks like an instanceIds file "
                         "(label_id*1000+k), but labelIds must be 8-bit single-channel")
    if label.ndim != 2 or label.dtype != np.uint8:
        channels = 1 if label.ndim == 2 else label.shape[2]
        raise ValueError(f"{path}: label PNG must be 8-bit single-channel, got {channels} channel(s) "
                         f"of {label.dtype}; is this a *_color.png instead of *_gtFine_labelIds.png?")
    return label


def _train_ids(label: np.ndarray, path: Path, target_type: str) -> np.ndarray:
    if target_type == "labelIds":
        return label_ids_to_train_ids(label, source=str(path))
    bad = (label >= NUM_CLASSES) & (label != IGNORE_INDEX)
    if bad.any():
        raise ValueError(f"{path}: labelTrainIds values {np.unique(label[bad])[:10].tolist()} are not "
                         f"trainIds 0..{NUM_CLASSES - 1} or {IGNORE_INDEX}; is this a labelIds file?")
    return label


class CityscapesSegmentation(Dataset):
    """Cityscapes gtFine semantic segmentation with the 19 evaluated classes.

    Args:
        root: folder holding ``leftImg8bit/`` and ``gtFine/``.
        split: "train", "val" or "test".
        transforms: ``(image uint8 HxWx3, mask uint8 HxW) -> (image, mask)`` tensors, e.g.
            :func:`mobiledense.datasets.seg_transforms.build_seg_transforms`; None converts the
            full-resolution frame to tensors.
        target_type: "labelIds" (mapped to trainIds with the official table) or "labelTrainIds"
            (pre-converted files, read as they are).
        images: if False, list every label file, with or without its image, for label-only use
            (evaluating stored predictions); :meth:`load_label` then works for every frame, while
            ``dataset[i]`` needs the image.

    Attributes:
        frames: the frames, sorted by city and name.
        num_classes: 19. ``ignore_index``: 255. ``class_names``: names indexed by trainId.
    """

    num_classes = NUM_CLASSES
    ignore_index = IGNORE_INDEX
    class_names = CLASS_NAMES

    def __init__(
        self,
        root: str | os.PathLike,
        split: str = "train",
        transforms: SegTransforms | None = None,
        target_type: str = "labelIds",
        images: bool = True,
    ) -> None:
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        if target_type not in TARGET_TYPES:
            raise ValueError(f"target_type must be one of {TARGET_TYPES}, got {target_type!r}")
        self.root = Path(root)
        self.split = split
        self.transforms = transforms
        self.target_type = target_type
        self.frames = self._find_frames(images)

    def _split_dir(self, kind: str, required: bool) -> Path | None:
        base = self.root / kind
        if not base.is_dir():
            if not self.root.is_dir():
                raise FileNotFoundError(f"Cityscapes root {self.root} does not exist; {_LAYOUT_HINT}")
            if not required:
                return None
            raise FileNotFoundError(f"{self.root} has no {kind}/ folder; {_LAYOUT_HINT}")
        path = base / self.split
        if not path.is_dir():
            if not required:
                return None
            have = sorted(p.name for p in base.iterdir() if p.is_dir())
            raise FileNotFoundError(f"split folder {path} is missing (found splits {have}); {_LAYOUT_HINT}")
        return path

    def _find_frames(self, images: bool) -> list[CityscapesFrame]:
        label_dir = self._split_dir("gtFine", required=True)
        label_suffix = f"_gtFine_{self.target_type}.png"
        labels = {p.name[: -len(label_suffix)]: p for p in label_dir.glob(f"*/*{label_suffix}")}
        # Without any labels a missing image folder is a plain layout error; with labels, a hint.
        image_dir = self._split_dir("leftImg8bit", required=images and not labels)
        found = {} if image_dir is None else {
            p.name[: -len(_IMAGE_SUFFIX)]: p for p in image_dir.glob(f"*/*{_IMAGE_SUFFIX}")
        }
        if images and not found:
            where = image_dir or self.root / "leftImg8bit" / self.split
            hint = (f"; the {len(labels)} label files in {label_dir} can be used label-only "
                    "(e.g. to evaluate stored predictions) with images=False") if labels else ""
            raise FileNotFoundError(f"no *{_IMAGE_SUFFIX} images in {where}{hint}; {_LAYOUT_HINT}")
        if not images and not labels:
            raise FileNotFoundError(f"no *{label_suffix} files in {label_dir}; {_LAYOUT_HINT}")
        orphans = sorted(set(labels) - set(found)) if images else []
        if orphans:  # a frame without its image would silently drop out of the score
            first = labels[orphans[0]]
            expected = image_dir / first.parent.name / f"{orphans[0]}{_IMAGE_SUFFIX}"
            other = sorted(p.name for p in expected.parent.glob(f"{orphans[0]}_leftImg8bit.*"))
            raise FileNotFoundError(
                f"{len(orphans)} label file(s) in {label_dir} have no image: {first} expects {expected}"
                + (f" (found {', '.join(other)}: Cityscapes images are {_IMAGE_SUFFIX} files)" if other else "")
                + "; scoring without them would silently leave those frames out")
        frames = []
        for stem in sorted(found if images else labels):
            image = found.get(stem)
            if stem not in labels:
                expected = label_dir / image.parent.name / f"{stem}{label_suffix}"
                raise FileNotFoundError(f"image {image} has no label file: expected {expected}")
            frames.append(CityscapesFrame(labels[stem].parent.name, stem, image, labels[stem]))
        return frames

    def __len__(self) -> int:
        return len(self.frames)

    def check_files(self) -> None:
        """Raise naming the first empty image or label files (``stat`` only): found before training starts."""
        bad = [f"{p} is empty (0 bytes)" for f in self.frames for p in (f.image, f.label)
               if p is not None and p.stat().st_size == 0][:3]
        if bad:
            raise ValueError(f"{self.root} ({self.split}): unreadable files: {'; '.join(bad)}")

    def load_image(self, index: int) -> np.ndarray:
        """The frame's image as (H, W, 3) uint8 RGB."""
        frame = self.frames[index]
        if frame.image is None:
            raise FileNotFoundError(
                f"frame {frame.stem} has labels but no leftImg8bit image (expected "
                f"{self.root / 'leftImg8bit' / self.split / frame.city / (frame.stem + _IMAGE_SUFFIX)}); "
                "this dataset was opened with images=False: use load_label() for label-only work"
            )
        return read_image_rgb(frame.image)

    def load_label(self, index: int) -> np.ndarray:
        """The frame's trainIds as (H, W) uint8, 255 = ignore (full label resolution)."""
        path = self.frames[index].label
        return _train_ids(read_label_png(path), path, self.target_type)

    def instance_ids(self, index: int) -> np.ndarray | None:
        """The frame's ``*_gtFine_instanceIds.png`` (H, W) int32 at full label resolution, for iIoU;
        None when the file is not there (then the set is scored without iIoU)."""
        label = self.frames[index].label
        path = label.with_name(label.name.replace("_labelTrainIds", "_instanceIds").replace("_labelIds",
                                                                                               "_instanceIds"))
        if path == label or not path.is_file():
            return None
        img = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
        if img is None or img.ndim != 2:
            raise ValueError(f"{path}: not a single-channel instanceIds PNG")
        return img.astype(np.int32)

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        image, mask = self.load_image(index), self.load_label(index)
        if image.shape[:2] != mask.shape:
            frame = self.frames[index]
            raise ValueError(f"size mismatch: image {frame.image} is {image.shape[1]}x{image.shape[0]} but "
                             f"label {frame.label} is {mask.shape[1]}x{mask.shape[0]} (WxH)")
        if self.transforms is None:
            return to_tensor_pair(image, mask)
        return self.transforms(image, mask)

    def __repr__(self) -> str:
        return (f"CityscapesSegmentation(root={str(self.root)!r}, split={self.split!r}, "
                f"frames={len(self)}, target_type={self.target_type!r})")
