"""The training recipe: optimiser, schedule, epochs, batch, precision, guards (one typed, frozen spec)."""

from __future__ import annotations

import math
from typing import ClassVar, Literal

import torch
from pydantic import Field

from mobiledense.heads.spec import Spec

__all__ = ["TrainConfig", "OPERATIONAL_FIELDS", "Precision"]

Precision = Literal["auto", "fp32", "fp16", "bf16"]

#: Fields that change how a run is carried out, not what it computes: a resumed run may change
#: them freely (the trajectory stays the same). Every other field is part of the run's identity.
OPERATIONAL_FIELDS = frozenset({
    "workers", "eval_every", "ckpt_every_steps", "keep_checkpoints", "max_nonfinite", "max_bad_samples",
    "max_bad_fraction", "compile",
    "max_worker_restarts", "log_every", "tensorboard", "deterministic", "channels_last",
})


class TrainConfig(Spec):
    """Optimisation recipe; saved in ``config.json`` and in every checkpoint (``RunSpec.recipe``)."""

    what: ClassVar[str] = "training config"

    epochs: int = Field(660, gt=0, description="passes over the training set")
    batch_size: int = Field(24, gt=0, description="images per step and process")
    lr: float = Field(0.15, gt=0, description="peak learning rate (after warm-up)")
    momentum: float = Field(0.9, ge=0, description="SGD / RMSprop momentum")
    weight_decay: float = Field(4e-5, ge=0, description="on weights; none on norms and biases")
    optimizer: Literal["sgd", "adamw", "rmsprop"] = "sgd"
    rmsprop_alpha: float = Field(0.9, gt=0, lt=1, description="RMSprop smoothing (torchvision's reference: 0.9)")
    rmsprop_eps: float = Field(0.0316, gt=0, description="RMSprop eps (torchvision's reference: 0.0316)")
    schedule: Literal["cosine", "poly", "step", "constant"] = "cosine"
    poly_power: float = Field(0.9, gt=0, description="exponent of the poly schedule")
    lr_step_epochs: float = Field(2.0, gt=0, description="step schedule: epochs between decays")
    lr_gamma: float = Field(0.973, gt=0, le=1, description="step schedule: lr factor at each decay")
    label_smoothing: float = Field(0.0, ge=0, lt=1, description="classification: cross-entropy label smoothing")
    min_lr: float = Field(0.0, ge=0, description="learning rate the schedule ends at")
    warmup_iters: int = Field(1000, ge=0, description="steps of linear warm-up")
    warmup_factor: float = Field(1e-3, gt=0, le=1, description="warm-up starts at lr x this")
    precision: Precision = Field("auto", description="auto: fp16 autocast on CUDA, fp32 on CPU; the spec "
                                                     "stored with a run holds the precision actually used")
    channels_last: bool = Field(True, description="NHWC activations (~1.3x faster CPU steps, mobiledense bench)")
    ema: bool = Field(False, description="keep an exponential moving average of the weights (evaluated, saved)")
    ema_decay: float = Field(0.9998, gt=0, lt=1)
    clip_grad_norm: float | None = Field(None, gt=0, description="clip the gradient norm to this")
    accumulate_batches: int = Field(1, ge=1, description="loader batches whose gradients make one optimiser step "
                                                         "(effective batch: batch_size x this x processes)")
    sync_bn: Literal["auto", "on", "off"] = Field("auto", description="SyncBatchNorm across DDP processes (CUDA): "
                                                                      "auto = on for segmentation, off for detection")
    compile: bool = Field(False, description="torch.compile the training step (CUDA)")
    #: Short runs want ~0.1: with MobileNetV3's 0.01 the running statistics lag far behind the weights.
    bn_momentum: float | None = Field(None, gt=0, le=1, description="override every BatchNorm's momentum")
    seg_loss: str = Field("ce", description="segmentation loss: ce, dice, focal, lovasz or sums like "
                                            "ce+0.5*lovasz (detection losses are the head's: SSDLiteSpec.loss)")
    weights: str | None = Field(None, description="whole-model weights the run starts from: a file or a name "
                                                  "(coco, torchvision:...); class layers re-initialised")
    weights_backbone: str | None = Field(None, description="backbone weights the run starts from: a file or a "
                                                           "name (imagenet, torchvision:..., timm:...)")
    world_size: int | None = Field(None, ge=1, description="processes of the run (filled in when it starts)")
    workers: int = Field(4, ge=0, description="DataLoader worker processes")
    seed: int = Field(0, description="seeds initial weights, sample order and augmentation")
    deterministic: bool = Field(False, description="torch.use_deterministic_algorithms")
    eval_every: int = Field(1, ge=0, description="epochs between evaluations; 0 = never")
    ckpt_every_steps: int = Field(0, ge=0, description="extra mid-epoch checkpoints; 0 = epoch ends only")
    keep_checkpoints: int = Field(3, gt=0, description="numbered checkpoints kept (best.pt is kept apart)")
    max_nonfinite: int = Field(10, gt=0, description="non-finite losses in a row before the run stops")
    max_bad_samples: int = Field(100, ge=0, description="unreadable samples skipped before the run stops")
    max_bad_fraction: float = Field(0.5, ge=0, le=1, description="share of an epoch's samples that may fail to "
                                                                   "load; above it the run stops unsaved")
    max_worker_restarts: int = Field(3, ge=0, description="DataLoader worker deaths survived")
    max_steps_per_epoch: int = Field(0, ge=0, description="cap per epoch (smoke runs); 0 = full epochs")
    log_every: int = Field(20, gt=0, description="steps between progress-bar updates of the loss")
    tensorboard: bool = Field(False, description="also log to OUTPUT/tb (pip install tensorboard)")

    def resolve(self, device: torch.device, world_size: int, task: str | None = None) -> "TrainConfig":
        """The recipe as this run carries it out: the precision actually used, the world size, SyncBatchNorm."""
        precision = self.precision
        if precision == "auto":
            precision = "fp16" if device.type == "cuda" else "fp32"
        elif precision == "fp16" and device.type != "cuda":
            raise ValueError("precision fp16 needs CUDA (on CPU use bf16, which needs no loss scaling, or fp32)")
        sync_bn = self.sync_bn
        if sync_bn == "auto":  # MMSegmentation's recipes sync BN statistics across GPUs; detection does not
            sync_bn = "on" if task == "seg" and world_size > 1 and device.type == "cuda" else "off"
        return self.replace(precision=precision, world_size=world_size, sync_bn=sync_bn)

    def lr_at(self, step: int, total_steps: int) -> float:
        """LR of optimiser step ``step`` (0-based): linear warm-up, then the schedule.

        ``step`` multiplies the lr by ``lr_gamma`` every ``lr_step_epochs`` epochs (torchvision's
        StepLR, stepped per epoch), the epoch being ``step / (total_steps / epochs)``."""
        t = min(step / max(total_steps, 1), 1.0)
        if self.schedule == "step":
            epoch = step * self.epochs / max(total_steps, 1)
            lr = max(self.lr * self.lr_gamma ** math.floor(epoch / self.lr_step_epochs + 1e-9), self.min_lr)
        elif self.schedule == "cosine":
            lr = self.min_lr + (self.lr - self.min_lr) * 0.5 * (1 + math.cos(math.pi * t))
        elif self.schedule == "poly":
            lr = self.min_lr + (self.lr - self.min_lr) * (1 - t) ** self.poly_power
        else:
            lr = self.lr
        if step < self.warmup_iters:
            alpha = step / self.warmup_iters
            lr *= self.warmup_factor * (1 - alpha) + alpha
        return lr
