"""Image classification data: ImageFolder trees, CIFAR-10's python batches, and their pipelines.

* :class:`ImageFolderClassification`: ``root/<class>/<image>`` (torchvision's layout, found by
  torchvision's own ``find_classes`` / ``make_dataset``), images read by :func:`read_image_rgb`
  (errors name the file).
* :class:`Cifar10`: the ``cifar-10-batches-py`` folder (``data_batch_1..5``, ``test_batch``,
  ``batches.meta``). The batches are Python pickles; they are read by an unpickler that only
  rebuilds plain numpy arrays, lists, dicts and strings: any other object (a class, a function:
  what a malicious pickle calls) is refused naming the file, and no code in the file runs.
* :func:`build_cls_transforms`: albumentations crops, flips and resizes; torchvision's
  ``AutoAugment`` (ImageNet policy) and ``RandomErasing`` where the recipe asks for them.
* :func:`coco_crops_to_imagefolder`: an ImageFolder of object crops cut from a COCO-format set.

A sample is ``(float32 (3, H, W) RGB in [0, 1], int label)``.
"""

from __future__ import annotations

import json
import pickle
from collections import Counter
from pathlib import Path
from typing import Any, Callable, Sequence

import albumentations as A
import cv2
import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from .io import read_image_rgb, write_image

__all__ = ["ImageFolderClassification", "Cifar10", "ClsTransform", "build_cls_transforms", "load_cifar_batch",
           "write_cifar_batch", "CIFAR10_CLASSES", "coco_crops_to_imagefolder", "AUGMENTS"]

CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
#: Training augmentations: ``imagenet`` (RandomResizedCrop 8-100% + flip: torchvision's reference),
#: ``light`` (crops of 35-100%, flip, mild colour jitter: small sets, short runs), ``cifar`` (pad 4 +
#: random 32x32 crop + flip, the CIFAR standard), ``none`` (the eval resize).
AUGMENTS = ("imagenet", "light", "cifar", "none")


# ---------------------------------------------------------------------- transforms


def _to_tensor(image: np.ndarray) -> Tensor:
    return torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))).float().div_(255.0)


class ClsTransform:
    """albumentations on the uint8 image, then (optionally) torchvision's AutoAugment on the uint8
    tensor and RandomErasing on the float one.

    ``set_random_seed`` (called per sample by the training engine) seeds both: albumentations'
    own RNG, and a forked torch RNG for the torchvision stages, so the global torch RNG the
    model's dropout draws from is left untouched.
    """

    def __init__(self, ops: A.Compose, auto_augment: Any = None, random_erasing: Any = None,
                 seed: int | None = None) -> None:
        self.ops, self.auto_augment, self.random_erasing = ops, auto_augment, random_erasing
        self._seed = int(torch.randint(0, 2**31 - 1, ()).item()) if seed is None else seed
        self.ops.set_random_seed(self._seed)

    def set_random_seed(self, seed: int) -> None:
        self._seed = int(seed)
        self.ops.set_random_seed(self._seed)

    def __call__(self, image: np.ndarray) -> Tensor:
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"image must be uint8 HxWx3 RGB, got {image.dtype} {image.shape}")
        image = self.ops(image=image)["image"]
        if self.auto_augment is None and self.random_erasing is None:
            return _to_tensor(image)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self._seed)
            t = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))
            if self.auto_augment is not None:
                t = self.auto_augment(t)
            x = t.float().div_(255.0)
            if self.random_erasing is not None:
                x = self.random_erasing(x)
        self._seed += 1  # the next sample draws anew unless the engine seeds it
        return x

    def __repr__(self) -> str:
        return f"ClsTransform({self.ops!r}, auto_augment={self.auto_augment!r}, random_erasing={self.random_erasing!r})"


def build_cls_transforms(train: bool, size: Sequence[int] = (224, 224), resize_size: int | None = None,
                         augment: str = "imagenet", auto_augment: str = "none", random_erasing: float = 0.0,
                         seed: int | None = None) -> ClsTransform:
    """The training or evaluation pipeline of a classifier.

    Evaluation (and ``augment="none"``): shorter side resized to ``resize_size`` (default
    ``size / 0.875``: 256 for 224, torchvision's ratio), then a ``size`` centre crop; for
    ``augment="cifar"`` the image is only resized to ``size`` (CIFAR's 32x32 stays as is).
    ``auto_augment="imagenet"`` adds torchvision's AutoAugment (ImageNet policy);
    ``random_erasing`` is the probability of torchvision's RandomErasing (0.2 in its recipes).
    """
    h, w = (int(size[0]), int(size[1]))
    if min(h, w) < 8:
        raise ValueError(f"size must be at least 8 x 8, got {size}")
    if augment not in AUGMENTS:
        raise ValueError(f"augment must be one of {', '.join(AUGMENTS)}, got {augment!r}")
    if auto_augment not in ("none", "imagenet"):
        raise ValueError(f"auto_augment must be 'none' or 'imagenet', got {auto_augment!r}")
    if not 0 <= random_erasing <= 1:
        raise ValueError(f"random_erasing is a probability in [0, 1], got {random_erasing}")
    short = resize_size or round(min(h, w) / 0.875)
    evaluate = [A.SmallestMaxSize(max_size=short, interpolation=cv2.INTER_LINEAR, area_for_downscale="image"),
                A.CenterCrop(h, w)]
    if augment == "cifar":
        evaluate = [A.Resize(h, w, interpolation=cv2.INTER_LINEAR, area_for_downscale="image")]
    if not train or augment == "none":
        return ClsTransform(A.Compose(evaluate), seed=seed)
    if augment == "imagenet":
        ops = [A.RandomResizedCrop((h, w), scale=(0.08, 1.0), interpolation=cv2.INTER_LINEAR,
                                   area_for_downscale="image"), A.HorizontalFlip(p=0.5)]
    elif augment == "light":
        ops = [A.RandomResizedCrop((h, w), scale=(0.35, 1.0), interpolation=cv2.INTER_LINEAR,
                                   area_for_downscale="image"), A.HorizontalFlip(p=0.5),
               A.ColorJitter(brightness=(0.8, 1.2), contrast=(0.8, 1.2), saturation=(0.8, 1.2), hue=(-0.02, 0.02),
                             p=0.5)]
    else:  # cifar: 4 px of zero padding and a random crop back to the size, then a flip
        ops = evaluate + [A.PadIfNeeded(h + 8, w + 8, border_mode=cv2.BORDER_CONSTANT, fill=0),
                          A.RandomCrop(h, w), A.HorizontalFlip(p=0.5)]
    aa = re = None
    if auto_augment == "imagenet":
        from torchvision.transforms import v2

        aa = v2.AutoAugment(v2.AutoAugmentPolicy.IMAGENET)
    if random_erasing > 0:
        from torchvision.transforms import v2

        # torchvision's reference erases to 0 after normalising: the ImageNet mean before it (our
        # networks normalise inside), so the erased box looks the same to the network.
        re = v2.RandomErasing(p=random_erasing, value=[0.485, 0.456, 0.406])
    return ClsTransform(A.Compose(ops), aa, re, seed=seed)


# ---------------------------------------------------------------------- ImageFolder


class ImageFolderClassification(Dataset):
    """``root/<class name>/<image>``: classes sorted by name (torchvision's ImageFolder order).

    ``class_names`` fixes the classes (and their order) instead, e.g. a val folder read with
    the training set's classes; a class folder the list lacks is refused, naming it.
    """

    def __init__(self, root: str | Path, transforms: Callable[[np.ndarray], Tensor] | None = None,
                 class_names: Sequence[str] | None = None) -> None:
        from torchvision.datasets.folder import IMG_EXTENSIONS, find_classes, make_dataset

        self.root = Path(root)
        if not self.root.is_dir():
            raise FileNotFoundError(f"image folder not found: {self.root} (expected {self.root}/<class>/<image>)")
        found, _ = find_classes(str(self.root))
        if not found:
            raise ValueError(f"{self.root} has no class folders (expected {self.root}/<class>/<image>)")
        if class_names is not None:
            unknown = sorted(set(found) - set(class_names))
            if unknown:
                raise ValueError(f"{self.root}: class folders {unknown[:5]} are not among the model's classes "
                                 f"({', '.join(list(class_names)[:8])}...)")
            names = list(class_names)
        else:
            names = found
        to_idx = {n: i for i, n in enumerate(names)}
        try:
            samples = make_dataset(str(self.root), {n: to_idx[n] for n in found}, extensions=IMG_EXTENSIONS,
                                   allow_empty=True)
        except FileNotFoundError as e:
            raise ValueError(f"{self.root}: {e}") from None
        if not samples:
            raise ValueError(f"{self.root}: no images ({', '.join(IMG_EXTENSIONS)}) in its class folders")
        self.class_names = tuple(names)
        self.samples = [(Path(p), int(t)) for p, t in samples]
        self.targets = [t for _, t in self.samples]
        self.transforms = transforms

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def __len__(self) -> int:
        return len(self.samples)

    def image_path(self, index: int) -> Path:
        return self.samples[index][0]

    def load_image(self, index: int) -> np.ndarray:
        return read_image_rgb(self.samples[index][0])

    def check_files(self) -> None:
        """Raise naming the first empty or missing image files (``stat`` only)."""
        bad = []
        for path, _ in self.samples:
            try:
                if path.stat().st_size == 0:
                    bad.append(f"{path} is empty (0 bytes)")
            except OSError as e:
                bad.append(f"{path}: {e.strerror or e}")
            if len(bad) >= 3:
                break
        if bad:
            from .io import ImageReadError

            raise ImageReadError(f"{self.root}: unreadable image files: {'; '.join(bad)}")

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        image = self.load_image(index)
        x = self.transforms(image) if self.transforms is not None else _to_tensor(image)
        return x, self.samples[index][1]

    def __repr__(self) -> str:
        return f"ImageFolderClassification({self.root}, images={len(self)}, classes={self.num_classes})"


# ---------------------------------------------------------------------- CIFAR-10


class _Refused(pickle.UnpicklingError):
    """A pickle asked for a global outside :attr:`_ArraysOnly._ALLOWED`."""


class _ArraysOnly(pickle.Unpickler):
    """Rebuilds numpy arrays (and the builtins pickles hold): every other global is refused."""

    _ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
                ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode")}

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        raise _Refused(f"refusing to load the global {module}.{name}: CIFAR batches hold only "
                                     "numpy arrays, lists and strings")


def load_cifar_batch(path: str | Path) -> dict[str, Any]:
    """One CIFAR python batch or ``batches.meta`` as a dict with ``str`` keys.

    Only plain arrays, lists, numbers and strings are rebuilt (:class:`_ArraysOnly`); a file
    that asks for anything else is refused with a ValueError naming it, before any of it runs.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"CIFAR batch not found: {path}")
    try:
        with path.open("rb") as f:
            obj = _ArraysOnly(f, encoding="bytes").load()
    except _Refused as e:
        raise ValueError(f"{path}: not a CIFAR batch ({e})") from None
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, IndexError, KeyError, AttributeError) as e:
        raise ValueError(f"{path} is truncated or not a CIFAR python batch ({type(e).__name__}: {e})") from None
    if not isinstance(obj, dict):
        raise ValueError(f"{path}: a CIFAR batch is a dict, got {type(obj).__name__}")
    return {(k.decode("latin1") if isinstance(k, bytes) else str(k)): v for k, v in obj.items()}


def write_cifar_batch(path: str | Path, images: np.ndarray, labels: Sequence[int], name: str = "batch") -> Path:
    """Write ``images`` (N, 32, 32, 3) uint8 RGB and ``labels`` in CIFAR's python layout (tests, exports)."""
    images = np.asarray(images, dtype=np.uint8)
    if images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"images must be (N, H, W, 3) uint8, got {images.shape}")
    data = images.transpose(0, 3, 1, 2).reshape(len(images), -1)  # CIFAR rows: R plane, G plane, B plane
    payload = {b"batch_label": name.encode(), b"labels": [int(v) for v in labels], b"data": data,
               b"filenames": [f"{i:05d}.png".encode() for i in range(len(images))]}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as f:
        pickle.dump(payload, f, protocol=2)
    return path


class Cifar10(Dataset):
    """CIFAR-10 from its ``cifar-10-batches-py`` folder: ``split`` ``train`` (data_batch_1..5, those
    present) or ``test`` (test_batch). Images are kept as one uint8 (N, 32, 32, 3) array."""

    def __init__(self, root: str | Path, split: str = "train", transforms: Callable[[np.ndarray], Tensor] | None = None
                 ) -> None:
        self.root = Path(root)
        if split not in ("train", "test"):
            raise ValueError(f"CIFAR-10 split must be 'train' or 'test', got {split!r}")
        if not self.root.is_dir():
            raise FileNotFoundError(f"CIFAR-10 folder not found: {self.root} (the cifar-10-batches-py folder)")
        files = sorted(self.root.glob("data_batch_*")) if split == "train" else [self.root / "test_batch"]
        files = [f for f in files if f.is_file()]
        if not files:
            want = "data_batch_1 ... data_batch_5" if split == "train" else "test_batch"
            raise FileNotFoundError(f"{self.root}: no {want} (the python version of CIFAR-10)")
        images, labels = [], []
        for f in files:
            batch = load_cifar_batch(f)
            data, lab = batch.get("data"), batch.get("labels")
            if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
                got = getattr(data, "shape", type(data).__name__)
                raise ValueError(f"{f}: 'data' must be a uint8 (N, 3072) array, got {got}")
            if not isinstance(lab, list) or len(lab) != len(data):
                raise ValueError(f"{f}: 'labels' must be a list of {len(data)} ints")
            lab = np.asarray(lab)
            if lab.dtype.kind not in "iu" or (len(lab) and (lab.min() < 0 or lab.max() > 9)):
                raise ValueError(f"{f}: labels must be ints in 0..9")
            images.append(data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
            labels.append(lab.astype(np.int64))
        meta = self.root / "batches.meta"
        names = CIFAR10_CLASSES
        if meta.is_file():
            got = load_cifar_batch(meta).get("label_names")
            if isinstance(got, list) and len(got) == 10:
                names = tuple(n.decode() if isinstance(n, bytes) else str(n) for n in got)
        self.class_names, self.split, self.files = names, split, files
        self.images = np.ascontiguousarray(np.concatenate(images))
        self.targets = np.concatenate(labels).tolist()
        self.transforms = transforms

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def __len__(self) -> int:
        return len(self.images)

    def load_image(self, index: int) -> np.ndarray:
        return self.images[index]

    def image_path(self, index: int) -> Path:
        return self.files[0].parent / f"{self.split}_{index:05d}.png"

    def check_files(self) -> None:
        """Read at construction: nothing left to check."""

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        image = self.images[index]
        x = self.transforms(image) if self.transforms is not None else _to_tensor(image)
        return x, self.targets[index]

    def __repr__(self) -> str:
        return f"Cifar10({self.root}, split={self.split}, images={len(self)})"


# ---------------------------------------------------------------------- COCO object crops


def coco_crops_to_imagefolder(images: str | Path, ann_file: str | Path, out: str | Path, *, top_k: int | None = 8,
                              categories: Sequence[str] | None = None, min_size: int = 32, context: float = 0.1,
                              max_per_class: int | None = None) -> dict[str, int]:
    """Cut the objects of a COCO-format set into ``out/<category>/<image>_<ann>.png`` (an ImageFolder).

    Objects of ``categories`` (default: the ``top_k`` most frequent) whose box is at least
    ``min_size`` px on its shorter side, crowds excluded, each box grown by ``context`` of
    its size on every side. Returns the count per class; ``out/classes.json`` lists them.
    """
    from .coco import CocoDetection

    ds = CocoDetection(images, ann_file, label_mapping="contiguous")
    coco = ds.coco
    anns = [a for a in coco.dataset.get("annotations", []) if not a.get("iscrowd", 0)
            and min(a["bbox"][2], a["bbox"][3]) >= min_size]
    names = {c["id"]: c["name"] for c in coco.dataset.get("categories", [])}
    freq = Counter(names[a["category_id"]] for a in anns)
    chosen = list(categories) if categories is not None else [n for n, _ in freq.most_common(top_k)]
    if not chosen:
        raise ValueError(f"{ann_file}: no objects of at least {min_size} px to crop")
    out = Path(out)
    counts: Counter[str] = Counter()
    by_image: dict[int, list[dict]] = {}
    for a in anns:
        if names[a["category_id"]] in chosen:
            by_image.setdefault(a["image_id"], []).append(a)
    for image_id in sorted(by_image):
        info = coco.imgs[image_id]
        image = read_image_rgb(Path(images) / info["file_name"])
        h, w = image.shape[:2]
        for a in by_image[image_id]:
            name = names[a["category_id"]]
            if max_per_class is not None and counts[name] >= max_per_class:
                continue
            x, y, bw, bh = a["bbox"]
            x0, y0 = max(int(x - context * bw), 0), max(int(y - context * bh), 0)
            x1, y1 = min(int(np.ceil(x + bw * (1 + context))), w), min(int(np.ceil(y + bh * (1 + context))), h)
            crop = image[y0:y1, x0:x1]
            folder = out / name.replace("/", "_")
            folder.mkdir(parents=True, exist_ok=True)
            write_image(folder / f"{Path(info['file_name']).stem}_{a['id']}.png", cv2.cvtColor(crop, cv2.COLOR_RGB2BGR))
            counts[name] += 1
    (out / "classes.json").write_text(json.dumps(dict(counts), indent=2))
    return dict(counts)
