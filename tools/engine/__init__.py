"""The training engine: run spec, trainer and hooks, recipe, data order, checkpoints, distributed set-up.

``RunSpec`` (:mod:`.spec`) is one typed run: model + data + recipe. :func:`train`
(:mod:`.tasks`) runs it: ``Trainer`` (:mod:`.trainer`) with exact resume (seeded, resumable
sampling; atomic checkpoints), guards against non-finite losses, bad samples and dead
DataLoader workers, DDP under ``torchrun``, and hooks (:mod:`.hooks`) for checkpoints,
evaluation, the best checkpoint and logs. :func:`load_trained_model` rebuilds a model and
its spec from a checkpoint alone.
"""

from .checkpoint import CheckpointManager, RunFolderInUse, RunLock, load_checkpoint, save_atomic, write_text_atomic
from .data import ResumableSampler, SeededDataset, seed_everything, skip_none_collate
from .distributed import configure_logging, init_distributed, is_main_process, world_size
from .hooks import BestCheckpoint, EvalHook, HookBase, MetricsLog, PeriodicCheckpoint, default_hooks
from .recipe import OPERATIONAL_FIELDS, TrainConfig
from .spec import CityscapesDataSpec, ClassificationDataSpec, CocoDataSpec, RunSpec, identity_changes
from .trainer import Trainer, TrainingAborted

__all__ = [
    "BestCheckpoint",
    "CheckpointManager",
    "CityscapesDataSpec",
    "ClassificationDataSpec",
    "CocoDataSpec",
    "EvalHook",
    "HookBase",
    "MetricsLog",
    "OPERATIONAL_FIELDS",
    "PeriodicCheckpoint",
    "ResumableSampler",
    "RunFolderInUse",
    "RunLock",
    "RunSpec",
    "SeededDataset",
    "TrainConfig",
    "Trainer",
    "TrainingAborted",
    "configure_logging",
    "default_hooks",
    "identity_changes",
    "init_distributed",
    "is_main_process",
    "load_checkpoint",
    "save_atomic",
    "seed_everything",
    "skip_none_collate",
    "world_size",
    "write_text_atomic",
]
