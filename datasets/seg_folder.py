"""Generic semantic segmentation folders: ``images/<split>/`` + ``masks/<split>/`` with the same stems.

::

    root/images/<split>/**/<name>.{jpg,jpeg,png}
    root/masks/<split>/**/<name>.png
    root/classes.json     ["road", "car", ...]                                   (index masks)
                      or  [{"name": "road", "color": [128, 64, 128]}, ...,
                           {"name": "void", "color": [0, 0, 0], "ignore": true}]  (colour masks, or index + palette)

Masks are either **index** PNGs (8-bit grey, or palette mode ``P`` whose indices are read as they are, as in
Pascal VOC's SegmentationClass; value = class index, 255 = ignore) or **colour** PNGs (RGB, RGBA's alpha is
dropped) mapped through the colours of ``classes.json``; an entry with ``"ignore": true`` names a colour that
maps to 255 and is not a class. Samples are those of
:class:`~mobiledense.datasets.cityscapes.CityscapesSegmentation`: ``(image float32 (3,H,W) in [0, 1], mask int64
(H,W))``, with the same ``transforms(image uint8 HxWx3, mask uint8 HxW)`` interface.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from torch import Tensor
from torch.utils.data import Dataset

from .cityscapes import SegTransforms
from .io import ImageReadError, read_image_rgb
from .seg_transforms import IGNORE_INDEX, to_tensor_pair

__all__ = ["SegFolder", "SegFolderFrame", "read_seg_classes", "MASK_FORMATS"]

MASK_FORMATS = ("auto", "index", "color")
_IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
_LAYOUT_HINT = "expected root/images/<split>/*.{jpg,jpeg,png} and root/masks/<split>/*.png with the same names"


@dataclass(frozen=True)
class SegFolderFrame:
    """One sample: ``stem`` is the path below the split folder without suffix (e.g. ``city/frame_01``)."""

    stem: str
    image: Path
    label: Path


def read_seg_classes(source: str | os.PathLike | Sequence[Any]
                     ) -> tuple[tuple[str, ...], np.ndarray | None, np.ndarray]:
    """``(class names, colours (K, 3) uint8 or None, ignore colours (M, 3) uint8)`` from classes.json or its list.

    Raises:
        ValueError: naming the file, for entries without a name, colours that are not 3 values in 0..255,
            a colour given for some classes only, duplicate names or colours, more than 255 classes.
    """
    where = "classes"
    if isinstance(source, (str, os.PathLike)):
        where = str(source)
        if not Path(source).is_file():
            raise FileNotFoundError(f"class list {source} not found; write a classes.json (a list of names, or of "
                                    '{"name", "color": [r, g, b]}) or pass classes=[...]')
        try:
            source = json.loads(Path(source).read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise ValueError(f"{where}: not valid JSON ({e})") from e
    if not isinstance(source, (list, tuple)) or not source:
        raise ValueError(f"{where}: expected a non-empty list of class names or of {{'name', 'color'}} objects")
    names, colours, ignore = [], [], []
    for i, entry in enumerate(source):
        entry = {"name": entry} if isinstance(entry, str) else entry
        if not isinstance(entry, dict) or not isinstance(entry.get("name"), str) or not entry["name"].strip():
            raise ValueError(f"{where}: entry {i} must be a name or an object with a non-empty 'name', got {entry!r}")
        colour = entry.get("color")
        if colour is not None and not (isinstance(colour, (list, tuple)) and len(colour) == 3 and all(
                isinstance(c, int) and not isinstance(c, bool) and 0 <= c <= 255 for c in colour)):
            raise ValueError(f"{where}: entry {i} ({entry['name']}): 'color' must be [r, g, b] in 0..255, got "
                             f"{colour!r}")
        if entry.get("ignore"):
            if colour is None:
                raise ValueError(f"{where}: entry {i} ({entry['name']}) is an ignore entry without a 'color'")
            ignore.append(colour)
            continue
        names.append(entry["name"].strip())
        colours.append(colour)
    if any(c is None for c in colours) and any(c is not None for c in colours):
        raise ValueError(f"{where}: give a 'color' for every class or for none")
    dup = sorted({n for n in names if names.count(n) > 1})
    all_colours = [tuple(c) for c in colours + ignore if c is not None]
    dup_c = sorted({c for c in all_colours if all_colours.count(c) > 1})
    if dup or dup_c:
        raise ValueError(f"{where}: duplicate class name(s) {dup} / colour(s) {dup_c}")
    if not 0 < len(names) <= IGNORE_INDEX:
        raise ValueError(f"{where}: {len(names)} classes; masks are 8-bit with {IGNORE_INDEX} = ignore, so 1..255")
    palette = np.array(colours, dtype=np.uint8) if colours[0] is not None else None
    return tuple(names), palette, np.array(ignore, dtype=np.uint8).reshape(-1, 3)


def _rgb_code(rgb: np.ndarray) -> np.ndarray:
    rgb = rgb.astype(np.int32)
    return (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]


def _read_mask(path: Path, mask_format: str) -> tuple[np.ndarray, bool]:
    """The mask as (H, W) uint8 indices or (H, W, 3) uint8 RGB, and whether it is colour."""
    from PIL import Image

    if not path.is_file():
        raise FileNotFoundError(f"mask file not found: {path}")
    try:
        with Image.open(path) as im:
            im.load()
            mode = im.mode
            if mode in ("L", "P") and mask_format != "color":
                return np.array(im, dtype=np.uint8), False
            if mode in ("RGB", "RGBA", "P") and mask_format != "index":
                return np.array(im.convert("RGB"), dtype=np.uint8), True
    except (OSError, SyntaxError, ValueError) as e:
        raise ImageReadError(f"cannot decode mask {path} ({type(e).__name__}: {e})") from e
    raise ValueError(f"{path}: mask mode {mode} cannot be read as mask_format={mask_format!r}; masks are 8-bit "
                     "index PNGs (grey or palette) or RGB colour PNGs (16-bit and 2-channel files are refused)")


class SegFolder(Dataset):
    """Semantic segmentation from ``images/<split>`` and ``masks/<split>`` (see the module docstring).

    Args:
        root: folder holding ``images/``, ``masks/`` and (by default) ``classes.json``.
        split: the split folder name ("train", "val", ...).
        transforms: as :class:`~mobiledense.datasets.cityscapes.CityscapesSegmentation`'s, e.g.
            :func:`~mobiledense.datasets.seg_transforms.build_seg_transforms`; None: full-size tensors.
        classes: the class list (path of a classes.json, or its list); None: ``root/classes.json``.
        mask_format: "auto" (1-channel / palette PNG = index, RGB = colour), "index" or "color".

    Attributes:
        frames, num_classes, class_names, ignore_index (255), palette ((K, 3) uint8 colours or None).
    """

    ignore_index = IGNORE_INDEX

    def __init__(self, root: str | os.PathLike, split: str = "train", transforms: SegTransforms | None = None,
                 classes: str | os.PathLike | Sequence[Any] | None = None, mask_format: str = "auto") -> None:
        if mask_format not in MASK_FORMATS:
            raise ValueError(f"mask_format must be one of {MASK_FORMATS}, got {mask_format!r}")
        self.root = Path(root)
        self.split = split
        self.transforms = transforms
        self.mask_format = mask_format
        self.class_names, self.palette, self._ignore_colours = read_seg_classes(
            self.root / "classes.json" if classes is None else classes)
        self.num_classes = len(self.class_names)
        self.frames = self._find_frames()
        if self.palette is not None:  # sorted colour codes -> class index (ignore colours -> 255)
            codes = np.concatenate([_rgb_code(self.palette), _rgb_code(self._ignore_colours)])
            values = np.concatenate([np.arange(self.num_classes), np.full(len(self._ignore_colours), IGNORE_INDEX)])
            order = np.argsort(codes)
            self._codes, self._values = codes[order], values[order].astype(np.uint8)

    def _find_frames(self) -> list[SegFolderFrame]:
        image_dir, mask_dir = self.root / "images" / self.split, self.root / "masks" / self.split
        for d in (image_dir, mask_dir):
            if not d.is_dir():
                have = sorted(p.name for p in d.parent.iterdir() if p.is_dir()) if d.parent.is_dir() else []
                raise FileNotFoundError(f"{d} is missing (found splits {have}); {_LAYOUT_HINT}")
        images: dict[str, Path] = {}
        for p in sorted(image_dir.rglob("*")):
            if p.suffix.lower() in _IMAGE_SUFFIXES and p.is_file():
                stem = p.relative_to(image_dir).with_suffix("").as_posix()
                if stem in images:
                    raise ValueError(f"{p} and {images[stem]} would share one mask; rename one of them")
                images[stem] = p
        masks = {p.relative_to(mask_dir).with_suffix("").as_posix(): p for p in sorted(mask_dir.rglob("*.png"))}
        if not images:
            raise FileNotFoundError(f"no images in {image_dir}; {_LAYOUT_HINT}")
        missing = sorted(set(images) - set(masks))
        if missing:
            raise FileNotFoundError(f"{len(missing)} image(s) have no mask: {images[missing[0]]} expects "
                                    f"{mask_dir / (missing[0] + '.png')}")
        orphans = sorted(set(masks) - set(images))
        if orphans:  # a mask without its image would silently drop out of training and scoring
            raise FileNotFoundError(f"{len(orphans)} mask(s) have no image: {masks[orphans[0]]} expects "
                                    f"{image_dir / orphans[0]}.jpg or .png")
        return [SegFolderFrame(s, images[s], masks[s]) for s in sorted(images)]

    def __len__(self) -> int:
        return len(self.frames)

    def check_files(self) -> None:
        """Raise naming the first empty image or mask files (``stat`` only): found before training starts."""
        bad = [f"{p} is empty (0 bytes)" for f in self.frames for p in (f.image, f.label) if p.stat().st_size == 0]
        if bad:
            raise ValueError(f"{self.root} ({self.split}): unreadable files: {'; '.join(bad[:3])}")

    def load_image(self, index: int) -> np.ndarray:
        """The image as (H, W, 3) uint8 RGB."""
        return read_image_rgb(self.frames[index].image)

    def load_label(self, index: int) -> np.ndarray:
        """The mask as (H, W) uint8 class indices, 255 = ignore."""
        path = self.frames[index].label
        mask, is_colour = _read_mask(path, self.mask_format)
        if is_colour:
            return self._map_colours(mask, path)
        bad = (mask >= self.num_classes) & (mask != IGNORE_INDEX)
        if bad.any():
            values = np.unique(mask[bad])
            raise ValueError(f"{path}: mask values {values[:10].tolist()} are not class indices "
                             f"0..{self.num_classes - 1} or {IGNORE_INDEX} (ignore); {self.num_classes} classes in "
                             "the class list (a colour mask saved as grey or palette? use mask_format='color')")
        return mask

    def _map_colours(self, rgb: np.ndarray, path: Path) -> np.ndarray:
        if self.palette is None:
            raise ValueError(f"{path}: colour mask, but the class list has no colours; give classes.json entries "
                             'as {"name": ..., "color": [r, g, b]}')
        code = _rgb_code(rgb)
        pos = np.minimum(np.searchsorted(self._codes, code), len(self._codes) - 1)
        bad = self._codes[pos] != code
        if bad.any():
            colours, counts = np.unique(rgb[bad].reshape(-1, 3), axis=0, return_counts=True)
            top = np.argsort(-counts)[:5]
            listed = ", ".join(f"{tuple(int(c) for c in colours[i])} ({counts[i]} px)" for i in top)
            raise ValueError(f"{path}: {int(bad.sum())} pixel(s) have colours not in the palette: {listed}; add "
                             'them to classes.json (as a class, or {"name": ..., "color": ..., "ignore": true})')
        return self._values[pos]

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        image, mask = self.load_image(index), self.load_label(index)
        if image.shape[:2] != mask.shape:
            frame = self.frames[index]
            raise ValueError(f"size mismatch: image {frame.image} is {image.shape[1]}x{image.shape[0]} but "
                             f"mask {frame.label} is {mask.shape[1]}x{mask.shape[0]} (WxH)")
        if self.transforms is None:
            return to_tensor_pair(image, mask)
        return self.transforms(image, mask)

    def __repr__(self) -> str:
        return (f"SegFolder(root={str(self.root)!r}, split={self.split!r}, frames={len(self)}, "
                f"classes={self.num_classes}, mask_format={self.mask_format!r})")
