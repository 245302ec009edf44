"""The training engine: trainer, recipe, data order, checkpoints, distributed set-up.

``Trainer`` runs :class:`TrainConfig` over a dataset with exact resume (seeded,
resumable sampling; atomic checkpoints), guards against non-finite losses, bad samples
and dead DataLoader workers, and DDP under ``torchrun``.
"""

from .checkpoint import CheckpointManager, load_checkpoint, save_atomic
from .data import ResumableSampler, SeededDataset, seed_everything, skip_none_collate
from .distributed import configure_logging, init_distributed, is_main_process, world_size
from .recipe import TrainConfig
from .trainer import Trainer, TrainingAborted

__all__ = [
    "CheckpointManager",
    "ResumableSampler",
    "SeededDataset",
    "TrainConfig",
    "Trainer",
    "TrainingAborted",
    "configure_logging",
    "init_distributed",
    "is_main_process",
    "load_checkpoint",
    "save_atomic",
    "seed_everything",
    "skip_none_collate",
    "world_size",
]
