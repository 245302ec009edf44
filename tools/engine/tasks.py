"""What a detection, segmentation or classification run needs from its :class:`RunSpec`: data, loss,
evaluation, metric.

:func:`task_for` gives the :class:`DetectionTask`, :class:`SegmentationTask` or
:class:`ClassificationTask` of a spec;
:func:`prepare_data` resolves the data part (absolute paths, the synthetic set written once
when no data is given); :func:`complete_model_spec` fills in the classes from the training
set; :func:`train` is the Python API the ``train`` commands call; :func:`load_trained_model`
rebuilds a model and its spec from a checkpoint alone.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mobiledense.backbones import summarize_load_error
from mobiledense.datasets import collate_detection
from mobiledense.backbones.pretrained import is_weights_name
from mobiledense.heads import create_model, resolve
from mobiledense.heads.registry import load_for_finetuning, with_weights
from mobiledense.heads.inference import inference_model
from mobiledense.heads.segmenter import coarse_logits, upsampled_argmax
from mobiledense.heads.spec import ModelSpec

from .checkpoint import load_checkpoint
from .distributed import configure_logging, is_main_process
from .spec import CityscapesDataSpec, ClassificationDataSpec, CocoDataSpec, RunSpec

__all__ = ["DetectionTask", "SegmentationTask", "ClassificationTask", "task_for", "prepare_data", "complete_model_spec",
           "match_categories", "build_model", "train", "load_trained_model", "save_model_checkpoint",
           "summarize_load_error"]

log = logging.getLogger("mobiledense.train")


def _abs(path: str | None) -> str | None:
    return None if path is None else str(Path(path).expanduser().resolve())


def _abs_file(value: str | None) -> str | None:
    """A weights file made absolute; a registered weight name (``imagenet``, ``torchvision:...``) kept."""
    return value if value is None or is_weights_name(value) else _abs(value)


class DetectionTask:
    """SSDLite on COCO-format data: COCO mAP is the main metric."""

    name, metric = "det", "mAP"

    def __init__(self, spec: RunSpec) -> None:
        self.spec, self.data = spec, spec.data

    @staticmethod
    def prepare(data: CocoDataSpec, synthetic_root: Path) -> CocoDataSpec:
        """Absolute paths; without a train json, the synthetic shapes written (once) to ``synthetic_root``;
        a VOC / YOLO tree converted to COCO jsons beside it (``<run>/data/<layout>_<split>.json``)."""
        if data.layout != "coco":
            return DetectionTask._convert(data, synthetic_root.parent / "data")
        if data.train_ann is not None:
            return data.replace(train_images=_abs(data.train_images), train_ann=_abs(data.train_ann),
                                val_images=_abs(data.val_images), val_ann=_abs(data.val_ann))
        from mobiledense.datasets import make_synthetic_coco
        from mobiledense.datasets.io import materialize_once

        n = data.synthetic_images or 600
        root = synthetic_root.resolve()
        if not root.exists():
            log.info("writing %d synthetic images to %s", n, root)
        materialize_once(root, lambda d: make_synthetic_coco(d, num_images=n, seed=0))
        return data.replace(synthetic_images=n, train_images=str(root / "images" / "train"),
                            train_ann=str(root / "annotations" / "instances_train.json"),
                            val_images=str(root / "images" / "val"),
                            val_ann=str(root / "annotations" / "instances_val.json"))

    @staticmethod
    def _convert(data: CocoDataSpec, folder: Path) -> CocoDataSpec:
        """The VOC / YOLO splits as COCO jsons in ``folder`` (written again each start: the same bytes for
        the same tree), one class list for both splits; the spec keeps the tree and gains the jsons."""
        from mobiledense.datasets.voc_yolo import read_class_names, voc_to_coco, write_coco_json, yolo_to_coco

        root = _abs(data.root)
        train_split, val_split = data.train_split or "train", data.val_split or "val"
        names = None
        if data.names:
            names = read_class_names(_abs(data.names) if Path(data.names).is_file() else data.names.split(","))

        def convert(split: str) -> tuple[str, str]:
            d = (voc_to_coco(root, split, classes=names) if data.layout == "voc"
                 else yolo_to_coco(root, split, names=names))
            path = write_coco_json(d, folder / f"{data.layout}_{split}.json")
            return str(d["info"]["images_root"]), str(path)

        folder.mkdir(parents=True, exist_ok=True)
        train_images, train_ann = convert(train_split)
        val_images = val_ann = None
        if val_split != "none":
            val_images, val_ann = convert(val_split)
        log.info("%s tree %s -> %s", data.layout, root, folder)
        return data.replace(root=root, train_split=train_split, val_split=val_split, train_images=train_images,
                            train_ann=train_ann, val_images=val_images, val_ann=val_ann)

    def train_set(self) -> Any:
        from mobiledense.datasets import CocoDetection, build_det_transforms

        size = self.spec.model.input_size
        train = CocoDetection(self.data.train_images, self.data.train_ann, label_mapping=self.data.label_mapping,
                              transforms=build_det_transforms(self.data.augment, size, train=True))
        if len(train) == 0:
            raise ValueError(f"{train.ann_file} lists no images: nothing to train on")
        return train

    def val_set(self, images: str | None = None, ann: str | None = None) -> Any:
        """The evaluation set: the spec's val data, or ``images`` / ``ann`` given instead."""
        from mobiledense.datasets import CocoDetection

        ann = ann or self.data.val_ann
        if ann is None:
            return None
        return CocoDetection(images or self.data.val_images, ann, label_mapping=self.data.label_mapping)

    @staticmethod
    def class_info(dataset: Any) -> dict[str, Any]:
        """num_classes, class_names and category_ids of a training set (``N/A`` for unused ids)."""
        n = dataset.num_classes
        names = tuple(dataset.category_names.get(i, "N/A") for i in range(1, n))
        ids = tuple(dataset.label_to_category_id.get(i, i) for i in range(1, n))
        return {"num_classes": n, "class_names": names, "category_ids": ids}

    collate = staticmethod(collate_detection)

    @staticmethod
    def loss(net: nn.Module, images: Any, targets: Any) -> dict[str, Tensor]:
        return net(images, targets)

    def evaluate(self, model: nn.Module, dataset: Any, *, device: torch.device | str = "cpu",
                 batch_size: int | None = None, workers: int = 0, progress: bool = True,
                 label_to_category_id: dict[int, int] | None = None, backend: str = "auto") -> tuple[dict, Any]:
        """``({"mAP", "AP50", "AP75"}, (CocoEvalResult, detections))``."""
        from mobiledense.tools.evaluation import evaluate_detector

        result, detections = evaluate_detector(
            model, dataset, batch_size=batch_size or self.spec.recipe.batch_size, workers=workers, device=device,
            progress=progress, label_to_category_id=label_to_category_id, backend=backend)
        stats = result.as_dict()
        return {"mAP": stats["AP"], "AP50": stats["AP50"], "AP75": stats["AP75"]}, (result, detections)

    def preview(self, model: nn.Module, dataset: Any, count: int = 4, score_thresh: float = 0.3) -> list[np.ndarray]:
        """The first ``count`` evaluation images, ground truth beside the model's detections (RGB uint8,
        for TensorBoard; as ``eval det`` writes its overlays)."""
        from mobiledense.tools.evaluation.overlays import draw_detections

        device = next(model.parameters()).device
        names = {i + 1: n for i, n in enumerate(self.spec.model.class_names)}
        to_model = {c: lab for lab, c in self.spec.model.label_to_category_id().items()}
        out = []
        for i in range(min(count, len(dataset))):
            image, target = dataset.load_image(i), dataset.raw_target(i)
            det = self.predict(model, image, device)
            keep = det["scores"] >= score_thresh
            gt_labels = []
            for lab in target["labels"].tolist():  # the val set's labels -> the model's, by category id
                cat = dataset.label_to_category_id.get(lab, lab)
                gt_labels.append(to_model.get(cat, 10_000 + cat))
                names.setdefault(gt_labels[-1], dataset.category_names.get(lab, str(cat)))
            bgr = draw_detections(image, det["boxes"][keep], det["labels"][keep], det["scores"][keep], names,
                                  ground_truth=(target["boxes"], np.array(gt_labels, dtype=np.int64)),
                                  score_thresh=score_thresh, min_size=480)
            out.append(np.ascontiguousarray(bgr[..., ::-1]))
        return out

    @staticmethod
    def predict(model: nn.Module, image: np.ndarray, device: torch.device | str = "cpu") -> dict[str, np.ndarray]:
        """Detections of one uint8 RGB image: ``boxes`` (xyxy, image pixels), ``scores``, ``labels``."""
        x = torch.from_numpy(image).permute(2, 0, 1).to(device).float().div_(255)
        with torch.inference_mode():
            return {k: v.cpu().numpy() for k, v in model([x])[0].items()}


def _collate_seg(samples: list) -> tuple[Tensor, Tensor]:
    images, masks = zip(*samples)
    return torch.stack(images), torch.stack(masks)


class SegmentationTask:
    """A segmenter on Cityscapes-layout data: mIoU is the main metric."""

    name, metric = "seg", "mIoU"
    collate = staticmethod(_collate_seg)

    def __init__(self, spec: RunSpec) -> None:
        self.spec, self.data = spec, spec.data
        self._criterion: Any = None

    @staticmethod
    def prepare(data: CityscapesDataSpec, synthetic_root: Path) -> CityscapesDataSpec:
        """Absolute root; without one, the synthetic streets written (once) to ``synthetic_root``."""
        if data.root is not None:
            return data.replace(root=_abs(data.root), classes=_abs(data.classes) if data.classes else None)
        from mobiledense.datasets.io import materialize_once
        from mobiledense.datasets.synthetic_seg import make_synthetic_cityscapes

        n = data.synthetic_frames or 160
        base = data.base_size or data.crop
        root = synthetic_root.resolve()
        if not root.exists():
            log.info("writing %d synthetic frames to %s", n, root)
        materialize_once(root, lambda d: make_synthetic_cityscapes(d, num_train=n, num_val=max(n // 4, 4),
                                                                   size=base, seed=0))
        return data.replace(root=str(root), synthetic_frames=n)

    def train_set(self) -> Any:
        from mobiledense.datasets import build_seg_transforms

        d = self.data
        tf = build_seg_transforms(True, crop_size=d.crop, base_size=d.base_size or d.crop, scale_range=d.scale_range)
        return self._dataset(d.root, d.train_split, tf)

    def _dataset(self, root: str, split: str, tf: Any) -> Any:
        """The layout's dataset class: :class:`CityscapesSegmentation` or :class:`SegFolder`."""
        from mobiledense.datasets import CityscapesSegmentation

        if self.data.layout == "folder":
            from mobiledense.datasets.seg_folder import SegFolder

            return SegFolder(root, split, transforms=tf, classes=self.data.classes, mask_format=self.data.mask_format)
        return CityscapesSegmentation(root, split, transforms=tf)

    def val_set(self, root: str | None = None, split: str | None = None, base_size: Any = None,
                eval_scale: float | None = None) -> Any:
        """The evaluation set at the run's resolution (``base_size``, ``eval_scale``), or the overrides given."""
        from mobiledense.datasets import build_seg_transforms

        d = self.data
        split = split or d.val_split
        if split is None:
            return None
        base = tuple(base_size) if base_size else (d.base_size or d.crop)
        tf = build_seg_transforms(False, base_size=base, eval_scale=eval_scale or d.eval_scale)
        return self._dataset(root or d.root, split, tf)

    @staticmethod
    def class_info(dataset: Any) -> dict[str, Any]:
        return {"num_classes": dataset.num_classes, "class_names": tuple(dataset.class_names)}

    def loss(self, net: nn.Module, images: Tensor, masks: Tensor) -> dict[str, Tensor]:
        if self._criterion is None:
            from mobiledense.heads.seg_losses import build_seg_loss

            self._criterion = build_seg_loss(self.spec.recipe.seg_loss, ignore_index=255)
        logits = net(images)
        if logits.shape[-2:] != masks.shape[-2:]:
            logits = F.interpolate(logits, size=masks.shape[-2:], mode="bilinear", align_corners=False)
        return {"seg": self._criterion(logits, masks)}

    def evaluate(self, model: nn.Module, dataset: Any, *, device: torch.device | str = "cpu", workers: int = 0,
                 progress: bool = True, on_prediction: Any = None, **_: Any) -> tuple[dict, Any]:
        """``({"mIoU", "pixel_acc"[, "iIoU"]}, SegMetrics)``: iIoU where the frames have instanceIds."""
        from mobiledense.tools.evaluation import evaluate_segmenter

        m = evaluate_segmenter(model, dataset, device=device, workers=workers, progress=progress,
                               on_prediction=on_prediction)
        extra = {"iIoU": float(m.iiou)} if m.iiou_per_class is not None else {}
        return {"mIoU": float(m.miou), "pixel_acc": float(m.pixel_acc), **extra}, m

    def preview(self, model: nn.Module, dataset: Any, count: int = 2, alpha: float = 0.5) -> list[np.ndarray]:
        """The first ``count`` evaluation frames with the predicted classes blended over them, outlined,
        and a legend strip below (RGB uint8, as ``predict seg`` writes its overlays)."""
        from mobiledense.tools.evaluation.overlays import segmentation_overlay

        device = next(model.parameters()).device
        out = []
        for i in range(min(count, len(dataset))):
            x = dataset[i][0]
            with torch.inference_mode():
                pred = upsampled_argmax(coarse_logits(model, x[None].to(device)), tuple(x.shape[-2:]),
                                        dtype=torch.uint8)[0].cpu().numpy()
            image = (x.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
            out.append(segmentation_overlay(image, pred, alpha, self.spec.model.class_names or None))
        return out

    def predict_size(self, h: int, w: int, scale: float | None = None) -> tuple[int, int]:
        """The input size an (h, w) image is segmented at: the run's eval resolution (base size x eval
        scale) fitted to the image's aspect ratio, or the image's own size x ``scale``."""
        base, s = self.data.base_size or self.data.crop, self.data.eval_scale
        f = scale if scale is not None else min(base[0] * s / h, base[1] * s / w)
        return max(1, round(h * f)), max(1, round(w * f))

    def predict(self, model: nn.Module, image: np.ndarray, device: torch.device | str = "cpu",
                scale: float | None = None) -> np.ndarray:
        """Train ids (H, W uint8) of one uint8 RGB image, resized as ``eval seg`` resizes its frames
        (bilinear up, area down; :meth:`predict_size`), logits upsampled once from the decoder's stride to
        the image, as ``eval seg`` does, in row strips (:func:`~mobiledense.heads.segmenter.upsampled_argmax`:
        an 8000x8000 photo stays under 2 GiB)."""
        from mobiledense.datasets.seg_transforms import eval_resize

        h, w = image.shape[:2]
        x = eval_resize(image, self.predict_size(h, w, scale))
        with torch.inference_mode():  # strips: bounded memory on huge photos
            pred = upsampled_argmax(coarse_logits(model, x[None].to(device)), (h, w), dtype=torch.uint8)[0]
        return pred.cpu().numpy()


class ClassificationTask:
    """A classifier on an ImageFolder tree or CIFAR-10: top-1 accuracy is the main metric."""

    name, metric = "cls", "top1"

    def __init__(self, spec: RunSpec) -> None:
        self.spec, self.data = spec, spec.data
        self._criterion: Any = None

    @staticmethod
    def prepare(data: ClassificationDataSpec, synthetic_root: Path) -> ClassificationDataSpec:
        """Absolute paths; without train data, objects cropped from the synthetic shapes (written once)."""
        if data.train is not None:
            val = data.val if data.val in (None, "none") else _abs(data.val)
            return data.replace(train=_abs(data.train), val=val)
        from mobiledense.datasets import make_synthetic_coco
        from mobiledense.datasets.classification import coco_crops_to_imagefolder
        from mobiledense.datasets.io import materialize_once

        n = data.synthetic_images or 300
        root = synthetic_root.resolve()
        if not root.exists():
            log.info("writing the objects of %d synthetic images to %s", n, root)

        def write(d: Path) -> None:
            shapes = make_synthetic_coco(d / "shapes", num_images=n, size_range=(128, 192), seed=0,
                                         val_fraction=0.25)
            for split in ("train", "val"):
                coco_crops_to_imagefolder(*shapes[split], d / split, top_k=None, min_size=16)

        materialize_once(root, write)
        return data.replace(train=str(root / "train"), val=str(root / "val"), synthetic_images=n)

    def _transforms(self, train: bool) -> Any:
        from mobiledense.datasets.classification import build_cls_transforms

        d = self.data
        return build_cls_transforms(train, d.size, d.resize_size, d.augment, d.auto_augment, d.random_erasing)

    def _dataset(self, root: str, split: str, train: bool) -> Any:
        from mobiledense.datasets.classification import Cifar10, ImageFolderClassification

        if self.data.layout == "cifar10":
            return Cifar10(root, split, transforms=self._transforms(train))
        names = self.spec.model.class_names or None
        return ImageFolderClassification(root, transforms=self._transforms(train), class_names=names)

    def train_set(self) -> Any:
        return self._dataset(self.data.train, "train", train=True)

    def val_set(self, root: str | None = None) -> Any:
        """The evaluation set (eval transforms): the spec's val data, its train images, or ``root`` given."""
        d = self.data
        if root is not None:
            return self._dataset(root, "test", train=False)
        if d.val_split == "none":
            return None
        if d.val_split == "train":
            return self._dataset(d.train, "train", train=False)
        if d.layout == "cifar10":
            return self._dataset(d.val or d.train, "test", train=False)
        return None if d.val in (None, "none") else self._dataset(d.val, "test", train=False)

    @staticmethod
    def class_info(dataset: Any) -> dict[str, Any]:
        return {"num_classes": dataset.num_classes, "class_names": tuple(dataset.class_names)}

    @staticmethod
    def collate(samples: list) -> tuple[Tensor, Tensor]:
        images, labels = zip(*samples)
        return torch.stack(images), torch.as_tensor(labels, dtype=torch.int64)

    def loss(self, net: nn.Module, images: Tensor, labels: Tensor) -> dict[str, Tensor]:
        return {"cls": F.cross_entropy(net(images), labels, label_smoothing=self.spec.recipe.label_smoothing)}

    def evaluate(self, model: nn.Module, dataset: Any, *, device: torch.device | str = "cpu", workers: int = 0,
                 progress: bool = True, batch_size: int | None = None, on_prediction: Any = None,
                 **_: Any) -> tuple[dict, Any]:
        """``({"top1", "top5", "mean_class_acc"}, ClsMetrics)``."""
        from mobiledense.tools.evaluation import evaluate_classifier

        m = evaluate_classifier(model, dataset, batch_size=batch_size or max(self.spec.recipe.batch_size, 32),
                                workers=workers, device=device, progress=progress, on_prediction=on_prediction)
        return {"top1": m.top1, "top5": m.top5, "mean_class_acc": m.mean_class_accuracy}, m

    def preview(self, model: nn.Module, dataset: Any, count: int = 8) -> list[np.ndarray]:
        """The first ``count`` evaluation images with the predicted class (green: right, red: wrong), RGB uint8."""
        from mobiledense.tools.evaluation.overlays import classification_tile

        device = next(model.parameters()).device
        names = self.spec.model.class_names or tuple(str(i) for i in range(self.spec.model.num_classes))
        out = []
        for i in range(min(count, len(dataset))):
            x, label = dataset[i]
            with torch.inference_mode():
                p = model(x[None].to(device)).softmax(1)[0].cpu()
            image = (x.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
            out.append(classification_tile(image, p.numpy(), names, int(label)))
        return out

    def predict(self, model: nn.Module, image: np.ndarray, device: torch.device | str = "cpu") -> np.ndarray:
        """Class probabilities of one uint8 RGB image, through the run's eval pipeline (resize, centre crop)."""
        x = self._transforms(False)(image)
        with torch.inference_mode():
            return model(x[None].to(device)).float().softmax(1)[0].cpu().numpy()


_TASKS = {"det": DetectionTask, "seg": SegmentationTask, "cls": ClassificationTask}


def task_for(spec: RunSpec) -> DetectionTask | SegmentationTask | ClassificationTask:
    return _TASKS[spec.task](spec)


def prepare_data(spec: RunSpec, output_dir: str | Path) -> RunSpec:
    """``spec`` with absolute paths (data, backbone weights); the default synthetic set written (once) in
    ``output_dir``."""
    prepare = _TASKS[spec.task].prepare
    recipe = spec.recipe.replace(weights_backbone=_abs_file(spec.recipe.weights_backbone),
                                 weights=_abs_file(spec.recipe.weights))
    return spec.replace(data=prepare(spec.data, Path(output_dir) / "synthetic"), recipe=recipe)


def complete_model_spec(spec: RunSpec, train_set: Any) -> RunSpec:
    """The model spec's classes (count, names, category ids) taken from the training set."""
    info = task_for(spec).class_info(train_set)
    return spec.replace(model=spec.model.replace(**info))


def _few(names: list[str], n: int = 8) -> str:
    return f"{len(names)} ({', '.join(names[:n])}{', ...' if len(names) > n else ''})"


def match_categories(model: ModelSpec, dataset: Any, source: str | Path, theirs: str = "the checkpoint's"
                     ) -> dict[int, int]:
    """Label -> category id of ``dataset`` for a detector's labels; refuses categories that differ.

    The labels keep their ids where id and name agree; where a name has another id in
    ``dataset`` the label is mapped by name (logged). A dataset whose category names are not
    exactly the model's (others, fewer or more) is refused, naming the difference: its
    scores would be computed against classes the model never learnt.
    """
    if not model.class_names:
        return model.label_to_category_id()
    cats = {int(c["id"]): str(c["name"]) for c in dataset.coco.dataset.get("categories", [])}
    by_name = {name: cid for cid, name in cats.items()}
    mine = {n for n in model.class_names if n != "N/A"}
    if mine != set(by_name):
        missing, extra = sorted(mine - set(by_name)), sorted(set(by_name) - mine)
        raise ValueError(
            f"{source}: its categories differ from {theirs}: the model predicts {_few(sorted(mine))}"
            + (f"; missing from the json: {_few(missing)}" if missing else "")
            + (f"; not known to the model: {_few(extra)}" if extra else "")
            + ". Evaluate on data with the categories the model was trained on")
    mapping, moved = {}, []
    for label, (name, cid) in enumerate(zip(model.class_names, model.category_ids or range(1, model.num_classes)),
                                        start=1):
        if name == "N/A":
            continue
        mapping[label] = by_name[name]
        if by_name[name] != cid:
            moved.append(f"{name!r} {cid} -> {by_name[name]}")
    if moved:
        log.warning("%s: category ids differ from %s; mapped by name: %s", source, theirs, ", ".join(moved))
    return mapping


def with_initial_weights(spec: RunSpec) -> RunSpec:
    """The model spec as the run's named starting weights need it (their backbone options), checked now."""
    r = spec.recipe
    return spec.replace(model=resolve(with_weights(spec.model, r.weights, r.weights_backbone)))


def check_weights_backbone(spec: RunSpec) -> None:
    """Fetch named starting weights and load ``recipe.weights_backbone`` into the spec's backbone: a file of
    another architecture, or an offline machine, fails here, naming the problem, before anything is written."""
    if is_weights_name(spec.recipe.weights):  # fetched (and cached) now: offline fails before any work
        from mobiledense.backbones.pretrained import weights_state_dict
        from mobiledense.heads.registry import model_weights

        weights_state_dict(model_weights(spec.model, spec.recipe.weights))
    if spec.recipe.weights_backbone is None:
        return
    from mobiledense.backbones import create_backbone
    from mobiledense.heads.registry import backbone_kwargs

    b = resolve(spec.model).backbone
    create_backbone(b.name, weights=spec.recipe.weights_backbone, **backbone_kwargs(b))


def build_model(spec: RunSpec) -> nn.Module:
    """The run's network, initialised as training starts it: ``recipe.weights`` (all but the class layers,
    which are re-initialised and logged), else ``recipe.weights_backbone``, else random."""
    model = create_model(spec.model, weights_backbone=spec.recipe.weights_backbone)
    if spec.recipe.weights is not None:
        fresh = load_for_finetuning(model, spec.recipe.weights)
        log.info("started from %s; re-initialised for %d classes: %s", spec.recipe.weights, spec.model.num_classes,
                 ", ".join(fresh) or "nothing (same classes)")
    return model


def train(spec: RunSpec, output_dir: str | Path, *, resume: str | Path | None = "auto",
          allow_changes: Sequence[str] = (), progress: bool = True) -> tuple[dict[str, float], Any]:
    """Train the run ``spec`` describes into ``output_dir``; returns ``(last metrics, trainer)``.

    The data is prepared (:func:`prepare_data`), the classes are read from the training set,
    the model is built from the completed spec after seeding (same ``seed``, same initial
    weights) and trained by :class:`~mobiledense.tools.engine.Trainer`, which evaluates on the
    val set every ``eval_every`` epochs, keeps ``best.pt`` by the task's metric and writes
    the spec to ``config.json`` and into every checkpoint.
    """
    from .data import seed_everything
    from .trainer import Trainer

    configure_logging()
    out = Path(output_dir)
    if out.exists() and not out.is_dir():
        raise ValueError(f"--output-dir {out} is a file, not a folder")
    spec = with_initial_weights(spec)
    check_weights_backbone(spec)  # before any data is written
    spec = prepare_data(spec, out)
    seed_everything(spec.recipe.seed)  # the initial weights follow the seed (torch seeds randomly otherwise)
    task = task_for(spec)
    train_set = task.train_set()
    spec = complete_model_spec(spec, train_set)
    task = task_for(spec)
    try:
        val = task.val_set()
    except FileNotFoundError as e:
        if spec.task != "seg":
            raise
        log.warning("no validation set (%s): training without evaluation", e)
        spec = spec.replace(data=spec.data.replace(val_split=None))
        task, val = task_for(spec), None
    if val is not None:
        val.check_files()  # a bad evaluation set is found now, not after the first epoch
    extra: dict[str, Any] = {}
    if isinstance(task, DetectionTask) and val is not None:
        extra["label_to_category_id"] = match_categories(spec.model, val, spec.data.val_ann,
                                                         theirs=f"the training set's ({spec.data.train_ann})")
    model = build_model(spec)
    trainer: Any = None

    def eval_fn(net: nn.Module, epoch: int) -> dict[str, float]:
        # The inference copy eval/predict use by default, so `eval --checkpoint` reproduces these numbers.
        metrics, _ = task.evaluate(inference_model(net, trainer.device), val, device=trainer.device,
                                   progress=progress, **extra)
        return metrics

    preview = (lambda net: task.preview(net, val)) if val is not None and spec.recipe.tensorboard else None
    trainer = Trainer(model, train_set, task.collate, task.loss, spec.recipe, out,
                      eval_fn=eval_fn if val is not None else None, spec=spec, main_metric=task.metric,
                      progress=progress, allow_changes=allow_changes, preview_fn=preview)
    trainer.resume(None if resume in (None, "none") else resume)
    if trainer.epoch >= trainer.cfg.epochs and is_main_process():
        log.info("already trained for %d epochs (see %s); nothing to do", trainer.cfg.epochs, out)
    return trainer.fit(), trainer


def load_trained_model(path: str | Path, task: str | None = None, prefer_ema: bool = True
                       ) -> tuple[nn.Module, RunSpec]:
    """Model (eval mode) + run spec from a training checkpoint (``last.pt``, ``best.pt``, ``checkpoint_*.pt``).

    ``task`` ("det"/"seg") refuses a checkpoint of the other task; None takes either. The
    EMA weights are used when the run kept them (as its own evaluation did).
    """
    ckpt = load_checkpoint(path)
    if "spec" not in ckpt:
        hint = (" (it was written by an older mobiledense: its run_info does not say how to rebuild the "
                "data and resolution; retrain, or use --model NAME --weights FILE)" if "run_info" in ckpt else
                " (for raw state_dicts use --model NAME --weights FILE)")
        raise ValueError(f"{path} has no run spec: it is not a mobiledense training checkpoint{hint}")
    spec = RunSpec.from_dict(ckpt["spec"], path)
    if task is not None and spec.task != task:
        raise ValueError(f"{path} is a {spec.task!r} checkpoint, not {task!r}")
    model = create_model(spec.model)
    key = "model_ema" if prefer_ema and "model_ema" in ckpt else "model"
    try:
        model.load_state_dict(ckpt[key])
    except RuntimeError as e:
        raise ValueError(f"{path}: its weights do not fit {spec.model.describe()} with "
                         f"num_classes={spec.model.num_classes} (the checkpoint's spec): "
                         f"{summarize_load_error(e)}") from e
    return model.eval(), spec


def save_model_checkpoint(model: nn.Module, data: CocoDataSpec | CityscapesDataSpec, path: str | Path,
                          recipe: Any = None) -> Path:
    """Write ``{"model", "spec"}`` for a model built by ``create_model`` (it carries ``model.spec``).

    What ``eval`` / ``predict`` / ``export --checkpoint`` take, for a model that was not
    trained here (converted torchvision weights, a notebook's own loop): ``data`` says
    where its evaluation data is, ``recipe`` (default: the default recipe) how it was trained.
    """
    from .checkpoint import save_atomic
    from .recipe import TrainConfig

    spec = RunSpec.parse(model=model.spec, data=data, recipe=recipe or TrainConfig())
    return save_atomic({"model": model.state_dict(), "spec": spec.to_dict()}, path)
