"""Atomic, safe checkpoints.

Writes go to a temporary file in the same folder, are fsync'ed and then
renamed over the target, so a run killed at any instant leaves either the old
or the new checkpoint, never a torn one; a write that fails (disk full) names
the file and leaves the previous one. Every checkpoint carries the checksum of
its tensors, verified when it is loaded. Loading always uses
``torch.load(weights_only=True)``: a checkpoint carrying pickled code is refused.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import shutil
import socket
import time
from pathlib import Path
from typing import Any, Mapping

import torch

from mobiledense.backbones import CHECKSUM_KEY, load_file_safely, tensor_checksum
from mobiledense.datasets.io import fsync_dir, replace_atomically, write_text_atomic

__all__ = ["save_atomic", "write_text_atomic", "load_checkpoint", "CheckpointManager", "RunFolderInUse", "RunLock"]


def save_atomic(obj: Any, path: str | Path) -> Path:
    """``torch.save`` to ``path`` atomically; a dict gets the checksum of its tensors (verified on load)."""
    if isinstance(obj, Mapping):
        obj = {**{k: v for k, v in obj.items() if k != CHECKSUM_KEY}, CHECKSUM_KEY: tensor_checksum(obj)}
    return replace_atomically(path, lambda f: torch.save(obj, f), binary=True)


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint with ``weights_only=True``; errors say what is wrong with the file (missing, empty,
    truncated or corrupt, its checksum, pickled code)."""
    obj = load_file_safely(path, "checkpoint", map_location)
    if not isinstance(obj, dict):
        raise ValueError(f"{path} holds a {type(obj).__name__}, expected a checkpoint dict")
    return obj


def _link_atomic(src: Path, dst: Path) -> None:
    """``dst`` becomes a hard link of ``src`` (a copy where links are not supported), atomically."""
    tmp = dst.with_name(f".{dst.name}.link")
    tmp.unlink(missing_ok=True)
    try:
        os.link(src, tmp)  # same bytes, no second write
    except OSError:
        shutil.copyfile(src, tmp)
    os.replace(tmp, dst)


class CheckpointManager:
    """Numbered checkpoints in one folder, the last ``keep`` kept, ``last.pt`` pointing at the newest.

    ``best.pt`` (:meth:`mark_best`) is a link to the best checkpoint so far; it survives the
    rotation of the numbered files.
    """

    PATTERN = re.compile(r"^checkpoint_(\d{8})\.pt$")

    def __init__(self, directory: str | Path, keep: int = 3) -> None:
        if keep < 1:
            raise ValueError(f"keep must be >= 1, got {keep}")
        self.directory = Path(directory)
        self.keep = keep

    def save(self, state: dict[str, Any], step: int) -> Path:
        path = save_atomic(state, self.directory / f"checkpoint_{step:08d}.pt")
        _link_atomic(path, self.directory / "last.pt")
        for old in self.checkpoints()[: -self.keep]:
            old.unlink(missing_ok=True)
        return path

    @property
    def best_path(self) -> Path:
        return self.directory / "best.pt"

    def mark_best(self, path: str | Path) -> Path:
        """Make ``best.pt`` the checkpoint ``path`` (a file this manager saved)."""
        _link_atomic(Path(path), self.best_path)
        fsync_dir(self.directory)
        return self.best_path

    def checkpoints(self) -> list[Path]:
        if not self.directory.is_dir():
            return []
        found = [p for p in self.directory.iterdir() if self.PATTERN.match(p.name)]
        return sorted(found, key=lambda p: int(self.PATTERN.match(p.name).group(1)))

    def set_aside(self) -> Path | None:
        """Move an earlier run's checkpoints (numbered, ``last.pt``, ``best.pt``) into
        ``earlier_<time>/`` beside them; returns that folder, or None when there were none.

        A fresh start (``--resume none``) in a folder that holds them would otherwise rotate its
        own new, lower-numbered files away and point ``best.pt`` at the old run.
        """
        old = self.checkpoints() + [p for p in (self.directory / "last.pt", self.best_path) if p.is_file()]
        if not old:
            return None
        folder = self.directory / time.strftime("earlier_%Y%m%d-%H%M%S")
        n = 1
        while folder.exists():
            n += 1
            folder = folder.with_name(f"{folder.name.split('.')[0]}.{n}")
        folder.mkdir()
        for p in old:
            os.replace(p, folder / p.name)
        fsync_dir(self.directory)
        return folder

    def latest(self) -> Path | None:
        last = self.directory / "last.pt"
        if last.is_file():
            return last
        ckpts = self.checkpoints()
        return ckpts[-1] if ckpts else None


class RunFolderInUse(RuntimeError):
    """Another training holds the output folder's lock."""


class RunLock:
    """``OUTPUT/.lock``: one training per output folder (an exclusive ``flock``, released with the process).

    A second training in the same folder would resume from the first one's in-progress
    checkpoint and race it for ``last.pt``; it is refused instead, naming the other process.
    """

    def __init__(self, output_dir: str | Path) -> None:
        self.path = Path(output_dir) / ".lock"
        self._fd: int | None = None

    def acquire(self) -> "RunLock":
        if self._fd is not None:
            return self
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 4096).decode(errors="replace").strip()
            os.close(fd)
            try:
                info = json.loads(holder)
                who = f"pid {info['pid']} on {info['host']}, since {info['since']}"
            except (ValueError, KeyError, TypeError):
                who = "another process"
            raise RunFolderInUse(f"{self.path.parent} is in use by another training ({who}): wait for it to end or "
                               "use another --output-dir") from None
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                                 "since": time.strftime("%Y-%m-%d %H:%M:%S")}).encode())
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()
