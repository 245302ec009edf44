"""torch.distributed set-up from torchrun's environment, rank queries, per-rank logging."""

from __future__ import annotations

import logging
import os
from datetime import timedelta

import torch
import torch.distributed as dist

__all__ = ["init_distributed", "is_main_process", "world_size", "configure_logging"]


def init_distributed(timeout_s: float = 600.0) -> tuple[int, int, torch.device]:
    """Initialise torch.distributed from torchrun's environment (no-op otherwise).

    Returns ``(rank, world_size, device)``. NCCL on CUDA, gloo on CPU.
    """
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        return 0, 1, torch.device("cuda" if torch.cuda.is_available() else "cpu")
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank)
        device, backend = torch.device("cuda", local_rank), "nccl"
    else:
        device, backend = torch.device("cpu"), "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend, timeout=timedelta(seconds=timeout_s))
    return rank, world, device


def is_main_process() -> bool:
    """Rank 0, or a single process; before ``init_process_group`` torchrun's ``RANK`` decides."""
    if dist.is_initialized():
        return dist.get_rank() == 0
    return int(os.environ.get("RANK", "0")) == 0


def world_size() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1



def configure_logging(level: int = logging.INFO) -> None:
    """Log to stderr on rank 0 only; other ranks log warnings and above."""
    logging.basicConfig(
        level=level if is_main_process() else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")

