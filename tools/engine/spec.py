"""The run spec: one typed object from training to eval, predict and export.

``RunSpec = ModelSpec + DataSpec + TrainConfig``. ``config.json`` beside the checkpoints is
exactly ``RunSpec.model_dump_json()`` and every checkpoint embeds the same dict under
``"spec"``, so a later ``eval``/``predict``/``export`` rebuilds the model, its input size and
normalisation, the evaluation data and resolution from the checkpoint alone. A resumed run
compares its new spec with the stored one (:func:`identity_changes`) and refuses changed
fields unless they are named.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, ClassVar, Iterable, Literal, Union

from pydantic import Field, ValidationError, model_validator

from mobiledense.heads.spec import ModelSpec, Spec, format_validation_error

from .recipe import OPERATIONAL_FIELDS, TrainConfig

__all__ = ["CocoDataSpec", "CityscapesDataSpec", "ClassificationDataSpec", "DataSpec", "RunSpec", "flat_diff",
           "identity_changes",
           "SPEC_VERSION"]

SPEC_VERSION = 1
Pair = tuple[int, int]


class CocoDataSpec(Spec):
    """COCO-format detection data (absolute paths once the run has started)."""

    what: ClassVar[str] = "data spec"

    format: Literal["coco"] = "coco"
    layout: Literal["coco", "voc", "yolo"] = Field(
        "coco", description="coco: the jsons below; voc / yolo: a Pascal VOC or YOLO tree at --root, converted "
                            "to COCO jsons in the run folder when the run starts")
    root: str | None = Field(None, description="voc: the folder with Annotations/ and JPEGImages/; yolo: the folder "
                                               "with images/<split>/ and labels/<split>/")
    train_split: str | None = Field(None, description="voc / yolo: training split (default train; voc: "
                                                      "ImageSets/Main/<split>.txt)")
    val_split: str | None = Field(None, description="voc / yolo: evaluated split (default val; none: no evaluation)")
    names: str | None = Field(None, description="voc / yolo: class list file (data.yaml, classes.txt, json) or "
                                                "comma-separated names (default: voc the sorted names of every "
                                                "XML, yolo the root's data.yaml / classes.txt)")
    train_images: str | None = Field(None, description="folder the train json's file_name entries are relative to")
    train_ann: str | None = Field(None, description="COCO-format train annotations json")
    val_images: str | None = Field(None, description="folder of the val images")
    val_ann: str | None = Field(None, description="COCO-format val annotations json")
    synthetic_images: int | None = Field(None, ge=2, description="images of the generated synthetic set, when "
                                                                 "no train json is given")
    label_mapping: Literal["contiguous", "category_id"] = Field(
        "contiguous", description="labels 1..K, or raw category ids (torchvision's 91-class COCO)")
    augment: Literal["ssd", "ssdlite", "none"] = Field("ssdlite", description="training augmentation")

    @model_validator(mode="after")
    def _check(self) -> "CocoDataSpec":
        if self.layout == "coco" and (self.root or self.train_split or self.val_split or self.names):
            raise ValueError("root / train_split / val_split / names are for layout voc or yolo (coco data: "
                             "train_images + train_ann)")
        if self.layout != "coco" and self.root is None:
            raise ValueError(f"layout {self.layout} needs root (--root DIR: the {self.layout.upper()} tree)")
        if self.train_ann is not None and self.train_images is None:
            raise ValueError("train_ann needs train_images (the folder its file_name entries are in)")
        if self.train_ann is None and (self.train_images or self.val_images or self.val_ann):
            raise ValueError("train_images / val_images / val_ann need train_ann (without it the synthetic set "
                             "is used)")
        if self.val_images and not self.val_ann:
            raise ValueError("val_images needs val_ann")
        if self.val_ann and not self.val_images:
            raise ValueError("val_ann needs val_images: the folder its file_name entries are in (the train "
                             "folder, if it holds them)")
        return self


class CityscapesDataSpec(Spec):
    """Cityscapes-layout segmentation data and its resolutions."""

    what: ClassVar[str] = "data spec"

    format: Literal["cityscapes"] = "cityscapes"
    layout: Literal["cityscapes", "folder"] = Field(
        "cityscapes", description="cityscapes: leftImg8bit/ + gtFine/; folder: images/<split>/ + masks/<split>/ "
                                  "with a classes.json (SegFolder)")
    root: str | None = Field(None, description="Cityscapes root holding leftImg8bit/ and gtFine/ (layout folder: "
                                               "the folder with images/, masks/, classes.json)")
    classes: str | None = Field(None, description="layout folder: the class list json (default ROOT/classes.json)")
    mask_format: Literal["auto", "index", "color"] = Field(
        "auto", description="layout folder: masks as class indices or palette colours (auto: by the PNG's mode)")
    train_split: str = "train"
    val_split: str | None = Field("val", description="split evaluated during training (None: no evaluation)")
    synthetic_frames: int | None = Field(None, ge=1, description="train frames of the generated synthetic set")
    base_size: Pair | None = Field(None, description="(h, w) frames are resized to before scaling / eval scale")
    crop: Pair = Field((512, 1024), description="training crop (h, w)")
    scale_range: tuple[float, float] = Field((0.5, 2.0), description="random scale range of training")
    eval_scale: float = Field(1.0, gt=0, le=4, description="evaluation resolution vs base size (0.5 = half)")

    @model_validator(mode="after")
    def _check(self) -> "CityscapesDataSpec":
        if self.layout == "folder" and self.root is None:
            raise ValueError("layout folder needs root (--data-root DIR with images/<split>/, masks/<split>/ and "
                             "classes.json)")
        if self.layout == "cityscapes" and (self.classes or self.mask_format != "auto"):
            raise ValueError("classes / mask_format are for layout folder (Cityscapes has its own 19 classes)")
        if min(self.crop) < 32:
            raise ValueError(f"crop must be at least 32 x 32, got {self.crop}")
        if self.base_size is not None and min(self.base_size) < 32:
            raise ValueError(f"base_size must be at least 32 x 32, got {self.base_size}")
        lo, hi = self.scale_range
        if not 0 < lo <= hi:
            raise ValueError(f"scale_range must satisfy 0 < low <= high, got {self.scale_range}")
        return self


class ClassificationDataSpec(Spec):
    """Image classification data: an ImageFolder tree or CIFAR-10's python batches, and the input size."""

    what: ClassVar[str] = "data spec"

    format: Literal["classification"] = "classification"
    layout: Literal["imagefolder", "cifar10"] = Field("imagefolder", description="imagefolder: ROOT/<class>/<image>; "
                                                      "cifar10: the cifar-10-batches-py folder")
    train: str | None = Field(None, description="training ImageFolder root, or the CIFAR-10 folder")
    val: str | None = Field(None, description="val ImageFolder root (CIFAR-10: its test_batch, read from the train "
                                              "folder when None); 'none' in the CLI: no evaluation")
    val_split: Literal["val", "train", "none"] = Field("val", description="what training evaluates: val, its own "
                                                                          "train images, or nothing")
    synthetic_images: int | None = Field(None, ge=2, description="objects cropped from the generated synthetic "
                                                                 "shapes, when no train data is given")
    size: Pair = Field((224, 224), description="input (h, w) the network sees")
    resize_size: int | None = Field(None, ge=1, description="eval: shorter side resized to this before the centre "
                                                            "crop (default size / 0.875)")
    augment: Literal["imagenet", "light", "cifar", "none"] = Field("imagenet", description="training augmentation")
    auto_augment: Literal["none", "imagenet"] = Field("none", description="torchvision AutoAugment policy")
    random_erasing: float = Field(0.0, ge=0, le=1, description="probability of torchvision's RandomErasing")

    @model_validator(mode="after")
    def _check(self) -> "ClassificationDataSpec":
        if min(self.size) < 8:
            raise ValueError(f"size must be at least 8 x 8, got {self.size}")
        if self.layout == "cifar10" and self.train is None:
            raise ValueError("layout cifar10 needs train (--train DIR): the folder of CIFAR-10's python batches, "
                             "data_batch_1..5 and test_batch (cifar-10-batches-py, from cifar-10-python.tar.gz)")
        return self


DataSpec = Annotated[Union[CocoDataSpec, CityscapesDataSpec, ClassificationDataSpec], Field(discriminator="format")]
_TASK_FORMAT = {"det": "coco", "seg": "cityscapes", "cls": "classification"}


class RunSpec(Spec):
    """Everything a training run is: model, data, recipe (``config.json``, and ``"spec"`` in checkpoints)."""

    what: ClassVar[str] = "run spec"

    version: int = SPEC_VERSION
    model: ModelSpec
    data: DataSpec
    recipe: TrainConfig = TrainConfig()

    @model_validator(mode="after")
    def _check(self) -> "RunSpec":
        if self.version != SPEC_VERSION:
            raise ValueError(f"spec version {self.version} is not supported (this mobiledense reads {SPEC_VERSION})")
        if _TASK_FORMAT[self.model.task] != self.data.format:
            raise ValueError(f"a {self.model.task!r} model needs {_TASK_FORMAT[self.model.task]!r} data, "
                             f"got {self.data.format!r}")
        return self

    @property
    def task(self) -> str:
        return self.model.task

    @classmethod
    def from_dict(cls, obj: Any, source: str | Path = "run spec") -> "RunSpec":
        """From a dict (a checkpoint's ``"spec"``, a parsed ``config.json``); errors name ``source``."""
        if not isinstance(obj, dict):
            raise ValueError(f"{source}: the run spec must be a JSON object, got {type(obj).__name__}")
        try:
            return cls.model_validate(obj)
        except ValidationError as e:
            raise ValueError(f"{source}: " + format_validation_error(e, "run spec")) from None

    @classmethod
    def load(cls, path: str | Path) -> "RunSpec":
        """Read ``config.json``."""
        path = Path(path)
        try:
            obj = json.loads(path.read_text())
        except FileNotFoundError:
            raise FileNotFoundError(f"run spec not found: {path}") from None
        except json.JSONDecodeError as e:
            raise ValueError(f"{path} is not valid JSON: {e}") from None
        return cls.from_dict(obj, path)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able dict (what checkpoints store)."""
        return self.model_dump(mode="json")

    def write(self, path: str | Path) -> Path:
        """Write ``config.json`` atomically."""
        from mobiledense.tools.engine.checkpoint import write_text_atomic

        return write_text_atomic(self.model_dump_json(indent=2) + "\n", path)


def _flatten(obj: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(obj, dict):
        out: dict[str, Any] = {}
        for k, v in obj.items():
            out.update(_flatten(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    return {prefix: obj}


def flat_diff(old: Spec, new: Spec) -> list[tuple[str, Any, Any]]:
    """``(dotted.path, old, new)`` of every leaf that differs between two specs of one type."""
    a, b = _flatten(old.model_dump(mode="json")), _flatten(new.model_dump(mode="json"))
    return [(k, a.get(k), b.get(k)) for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]


def identity_changes(old: RunSpec, new: RunSpec, allowed: Iterable[str] = ()) -> list[tuple[str, Any, Any]]:
    """What differs between a stored run and its continuation, beyond operational fields and ``allowed``.

    ``allowed`` holds dotted paths (``recipe.epochs``) or bare field names (``epochs``, or the
    flag spelling ``--epochs``), as the user names them in ``--allow-change``.
    """
    names = {a.lstrip("-").replace("-", "_") for a in allowed}
    free = {f"recipe.{f}" for f in OPERATIONAL_FIELDS}
    return [(path, a, b) for path, a, b in flat_diff(old, new)
            if path not in free and path not in names and path.rsplit(".", 1)[-1] not in names
            and not any(path.startswith(n + ".") for n in names)]
