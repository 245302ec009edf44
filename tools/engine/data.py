"""Data order and sample handling of the training loop: seeded, resumable, crash-tolerant.

* :class:`ResumableSampler`: epoch ``e``'s order is a pure function of ``(seed, e)`` and can
  start mid-epoch.
* :class:`SeededDataset`: each sample's augmentation is seeded from ``(seed, epoch, index)``;
  a sample that fails to load comes back as ``None`` and :func:`skip_none_collate` drops it.
* DataLoader worker crashes: how they look (:func:`is_worker_crash`) and torch's SIGCHLD
  handler taken back out (:func:`iter_without_async_worker_errors`).
"""

from __future__ import annotations

import hashlib
import logging
import math
import random
import signal
import threading
from typing import Any, Callable, Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

__all__ = ["ResumableSampler", "SeededDataset", "skip_none_collate", "seed_everything", "mix_seed",
           "is_worker_crash", "iter_without_async_worker_errors", "crash_summary", "LOADER_ERRORS",
           "worker_init"]

log = logging.getLogger("mobiledense.train")


#: What iterating a multi-process DataLoader raises when a worker died: the loader's own
#: RuntimeError, or, when the worker died while handing a batch's shared-memory handle to
#: the main process (before the loader noticed it was gone), the socket's error.
CHANNEL_ERRORS = (ConnectionError, EOFError)
LOADER_ERRORS = (RuntimeError, *CHANNEL_ERRORS)


def is_worker_crash(e: BaseException, workers: int) -> bool:
    """True for the error a DataLoader raises when one of its worker processes died.

    Errors of the samples themselves never look like this: the dataset wrapper catches
    them inside the worker (skipped and counted), so a ``ConnectionError`` or ``EOFError``
    out of the loader's iterator is the inter-process channel breaking.
    """
    if isinstance(e, RuntimeError):
        return "DataLoader worker" in str(e) and ("exited unexpectedly" in str(e) or "killed by signal" in str(e))
    return workers > 0 and isinstance(e, CHANNEL_ERRORS)


_TORCH_SIGNAL_MODULE = "torch.utils.data._utils.signal_handling"  # where torch's SIGCHLD handler lives


def iter_without_async_worker_errors(loader: DataLoader | Iterator[Any]) -> Iterator[Any]:
    """``iter(loader)``, with the SIGCHLD handler torch installs for it taken back out.

    The first multi-worker iterator of a process installs a SIGCHLD handler that raises
    "DataLoader worker ... exited unexpectedly" wherever the main thread is when a worker
    dies: inside an optimiser step (half the parameters updated), a checkpoint write, a
    progress-bar update. The engine can only recover at a batch boundary, so the previous
    handler is put back; the loader still notices the death itself, while it waits for
    that worker's batch (within ``MP_STATUS_CHECK_INTERVAL``, 5 s), and raises the same
    error from ``next()``, where :meth:`Trainer._batches` handles it.
    """
    if (getattr(loader, "num_workers", 0) == 0 or not hasattr(signal, "SIGCHLD")
            or threading.current_thread() is not threading.main_thread()):
        return iter(loader)
    before = signal.getsignal(signal.SIGCHLD)
    if getattr(before, "__module__", "") == _TORCH_SIGNAL_MODULE:  # installed by an earlier loader
        before = signal.SIG_DFL
    iterator = iter(loader)
    if signal.getsignal(signal.SIGCHLD) is not before:
        signal.signal(signal.SIGCHLD, signal.SIG_DFL if before is None else before)
    return iterator


def crash_summary(e: BaseException) -> str:
    if isinstance(e, RuntimeError):
        return str(e).strip().splitlines()[0]
    return f"lost the connection to a DataLoader worker ({type(e).__name__}: {e})"


def mix_seed(*values: int) -> int:
    """A stable 63-bit seed from integers (independent of PYTHONHASHSEED)."""
    h = hashlib.blake2b(repr(values).encode(), digest_size=8).digest()
    return int.from_bytes(h, "little") >> 1


def seed_everything(seed: int) -> None:
    """Seed torch, numpy and ``random``: call before building the model so its init follows ``seed``.

    Recent torch seeds its default generator randomly at start-up, so without this two runs
    with the same ``--seed`` would start from different weights.
    """
    s = mix_seed(seed, -1)
    torch.manual_seed(s % 2**63)
    np.random.seed(s % 2**32)
    random.seed(s)


class ResumableSampler(Sampler[int]):
    """Seeded per-epoch permutation, sharded over ranks, that can start mid-epoch.

    Epoch ``e``'s order is a pure function of ``(seed, e)``; ``set_epoch(e,
    start_batch=k)`` skips this rank's first ``k`` batches, which is how a run
    resumes inside an epoch.
    """

    def __init__(self, num_samples: int, batch_size: int, *, shuffle: bool = True, seed: int = 0,
                 rank: int = 0, world_size: int = 1, drop_last: bool = True) -> None:
        if num_samples <= 0:
            raise ValueError("the dataset is empty: nothing to sample")
        self.n, self.batch_size, self.shuffle, self.seed = num_samples, batch_size, shuffle, seed
        self.rank, self.world, self.drop_last = rank, world_size, drop_last
        self.epoch, self.start_batch = 0, 0

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        self.epoch, self.start_batch = epoch, start_batch

    def _indices(self) -> list[int]:
        if self.shuffle:
            g = torch.Generator().manual_seed(mix_seed(self.seed, self.epoch))
            order = torch.randperm(self.n, generator=g).tolist()
        else:
            order = list(range(self.n))
        per_rank = self.n // self.world if self.drop_last else math.ceil(self.n / self.world)
        order = (order * math.ceil(per_rank * self.world / self.n))[: per_rank * self.world]
        mine = order[self.rank::self.world]
        if self.drop_last:
            mine = mine[: len(mine) // self.batch_size * self.batch_size]
        return mine

    def batches_per_epoch(self) -> int:
        n = len(self._indices())
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def __iter__(self) -> Iterator[int]:
        return iter(self._indices()[self.start_batch * self.batch_size:])

    def __len__(self) -> int:
        return max(len(self._indices()) - self.start_batch * self.batch_size, 0)


class SeededDataset(Dataset):
    """Seeds each sample's augmentation from ``(seed, epoch, index)`` and skips bad samples.

    The wrapped dataset's ``transforms`` (an albumentations ``Compose`` or
    anything with ``set_random_seed``) and the ``random``/``numpy`` global
    generators are seeded before each ``__getitem__``. A sample that raises
    comes back as ``None`` (logged with its error), and :func:`skip_none_collate`
    drops it from the batch.
    """

    def __init__(self, dataset: Dataset, seed: int, skip_errors: bool = True) -> None:
        self.dataset, self.seed, self.epoch, self.skip_errors = dataset, seed, 0, skip_errors

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> Any:
        s = mix_seed(self.seed, self.epoch, index) % 2**32
        random.seed(s)
        np.random.seed(s)
        tf = getattr(self.dataset, "transforms", None)
        if hasattr(tf, "set_random_seed"):
            tf.set_random_seed(s)
        try:
            return self.dataset[index]
        except Exception as e:  # noqa: BLE001 - policy: skip, log, count
            if not self.skip_errors:
                raise
            log.warning("skipping sample %d: %s: %s", index, type(e).__name__, e)
            return None


def skip_none_collate(collate: Callable[[list], Any]) -> Callable[[list], tuple[Any, int]]:
    """Wrap a collate function: drop ``None`` samples, return ``(batch, n_skipped)``."""

    def wrapped(samples: list) -> tuple[Any, int]:
        good = [s for s in samples if s is not None]
        return (collate(good) if good else None), len(samples) - len(good)

    return wrapped


def worker_init(_: int) -> None:
    try:
        import cv2

        cv2.setNumThreads(0)  # OpenCV threads inside DataLoader workers oversubscribe cores
    except ImportError:
        pass
    torch.set_num_threads(1)

