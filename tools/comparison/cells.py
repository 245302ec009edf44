"""The comparison matrix: cells (task, head, backbone), the one recipe, the data and timing specs."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from mobiledense.backbones import list_backbones
from mobiledense.tools.engine import TrainConfig

__all__ = ["TASKS", "DET_HEAD", "METRIC", "Cell", "Recipe", "DataSpec", "Measurement", "make_cells",
           "seg_head_names"]

TASKS = ("det", "seg")
DET_HEAD = "ssdlite"
METRIC = {"det": "mAP", "seg": "mIoU"}



def seg_head_names() -> list[str]:
    """``lraspp`` (ours) and every smp architecture (``deeplabv3plus``, ``fpn`` ...)."""
    import segmentation_models_pytorch as smp

    return ["lraspp", *smp.MODEL_ARCHITECTURES_MAPPING]


@dataclass(frozen=True, order=True)
class Cell:
    """One entry of the matrix: ``task`` "det" (head "ssdlite") or "seg" (head "lraspp" / an smp arch)."""

    task: str
    head: str
    backbone: str

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise ValueError(f"task must be one of {TASKS}, got {self.task!r}")
        if self.task == "det" and self.head != DET_HEAD:
            raise ValueError(f"detection cells use the {DET_HEAD!r} head, got {self.head!r}")

    @property
    def key(self) -> str:
        """File-name-safe identifier, e.g. ``seg__lraspp__mobilenet_v3_large``."""
        return f"{self.task}__{self.head}__{self.backbone}"

    @property
    def metric(self) -> str:
        return METRIC[self.task]


def make_cells(tasks: Sequence[str], backbones: Sequence[str] | None = None,
               seg_heads: Sequence[str] = ("lraspp",)) -> list[Cell]:
    """The matrix ``tasks x heads x backbones`` (default: every registered backbone); names checked."""
    valid = list_backbones()
    backbones = list(backbones) if backbones else valid
    errors = [f"unknown backbone {b!r}" for b in backbones if b not in valid]
    errors += [f"unknown task {t!r} (valid: {', '.join(TASKS)})" for t in tasks if t not in TASKS]
    if "seg" in tasks:
        heads = seg_head_names()
        errors += [f"unknown seg head {h!r} (valid: {', '.join(heads)})" for h in seg_heads if h not in heads]
        if not seg_heads:
            errors.append("the seg task needs at least one --seg-heads entry")
    if errors:
        raise ValueError("; ".join(errors) + f". Registered backbones: {', '.join(valid)}")
    cells = []
    for task in dict.fromkeys(tasks):
        for head in ([DET_HEAD] if task == "det" else dict.fromkeys(seg_heads)):
            cells += [Cell(task, head, b) for b in dict.fromkeys(backbones)]
    return cells


@dataclass(frozen=True)
class Recipe:
    """The one short training recipe every cell gets (AdamW + cosine, seeded).

    Detection trains on ``det_size`` squares (SSDLite crop + flip, torchvision's
    "ssdlite" augmentation); segmentation on ``seg_size`` (h, w) crops of frames resized
    to ``seg_size`` and scaled by ``seg_scale``, evaluated at ``seg_size``. MAdds and
    latency are measured at the same sizes.
    """

    epochs: int = 8
    max_steps_per_epoch: int = 0  # 0 = whole epochs
    batch_size: int = 8
    det_lr: float = 3e-3
    seg_lr: float = 3e-3
    weight_decay: float = 1e-4
    warmup_iters: int = 20
    det_size: int = 192
    seg_size: tuple[int, int] = (128, 256)
    seg_scale: tuple[float, float] = (0.75, 1.5)
    frozen_backbone: bool = False
    #: Folder of local ImageNet backbone weights ``<backbone>.pth`` / ``.pt``; None = random init.
    weights_backbone: str | None = None
    seed: int = 0

    def train_config(self, task: str, workers: int = 0) -> TrainConfig:
        return TrainConfig.parse(
            epochs=self.epochs, batch_size=self.batch_size, lr=self.det_lr if task == "det" else self.seg_lr,
            optimizer="adamw", weight_decay=self.weight_decay, schedule="cosine",
            warmup_iters=self.warmup_iters, warmup_factor=0.1, bn_momentum=0.1, workers=workers,
            seed=self.seed, eval_every=0, keep_checkpoints=1, max_steps_per_epoch=self.max_steps_per_epoch)

    def input_size(self, task: str) -> tuple[int, int]:
        return (self.det_size, self.det_size) if task == "det" else tuple(self.seg_size)  # type: ignore[return-value]


@dataclass(frozen=True)
class DataSpec:
    """Where the data comes from; synthetic sets (written once in the output folder) by default."""

    det_train_images: str | None = None
    det_train_ann: str | None = None
    det_val_images: str | None = None
    det_val_ann: str | None = None
    seg_root: str | None = None
    seg_train_split: str = "train"
    seg_val_split: str = "val"
    synthetic_images: int = 300  # detection: images in total, 20% of them val
    synthetic_frames: int = 160  # segmentation: train frames; val gets a quarter (at least 4)

    def __post_init__(self) -> None:
        det = {"--det-train-images": self.det_train_images, "--det-train-ann": self.det_train_ann,
               "--det-val-images": self.det_val_images, "--det-val-ann": self.det_val_ann}
        given = [k for k, v in det.items() if v]
        if given and len(given) < len(det):
            missing = [k for k in det if k not in given]
            raise ValueError(f"real detection data needs all of {', '.join(det)}; missing {', '.join(missing)}")


@dataclass(frozen=True)
class Measurement:
    """How latency is timed: median of ``runs`` batch-1 forwards after ``warmup``, ``threads`` torch threads."""

    latency_runs: int = 20
    latency_warmup: int = 5
    latency_threads: int = 1


