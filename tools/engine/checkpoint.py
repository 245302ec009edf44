"""Atomic, safe checkpoints.

Writes go to a temporary file in the same folder, are fsync'ed and then
renamed over the target, so a run killed at any instant leaves either the old
or the new checkpoint, never a torn one. Loading always uses
``torch.load(weights_only=True)``: a checkpoint carrying pickled code is refused.
"""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path
from typing import Any

import torch

__all__ = ["save_atomic", "load_checkpoint", "CheckpointManager"]


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # e.g. Windows: directories cannot be opened
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def save_atomic(obj: Any, path: str | Path) -> Path:
    """``torch.save`` to ``path`` atomically (temp file + fsync + rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)
    return path


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint with ``weights_only=True`` and a clear error on failure."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        obj = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # noqa: BLE001 - re-raised with the file name
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise ValueError(
            f"refusing to load {path}: not a plain tensor checkpoint "
            f"({type(e).__name__}: {first}). Only weights_only-loadable files are accepted; "
            "a file that needs arbitrary unpickling may contain code."
        ) from e
    if not isinstance(obj, dict):
        raise ValueError(f"{path} holds a {type(obj).__name__}, expected a checkpoint dict")
    return obj


class CheckpointManager:
    """Numbered checkpoints in one folder, the last ``keep`` kept, ``last.pt`` pointing at the newest."""

    PATTERN = re.compile(r"^checkpoint_(\d{8})\.pt$")

    def __init__(self, directory: str | Path, keep: int = 3) -> None:
        if keep < 1:
            raise ValueError(f"keep must be >= 1, got {keep}")
        self.directory = Path(directory)
        self.keep = keep

    def save(self, state: dict[str, Any], step: int) -> Path:
        path = save_atomic(state, self.directory / f"checkpoint_{step:08d}.pt")
        last = self.directory / "last.pt"
        tmp = self.directory / ".last.pt.link"
        tmp.unlink(missing_ok=True)
        try:
            os.link(path, tmp)  # same bytes, no second write
        except OSError:
            save_atomic(state, tmp)
        os.replace(tmp, last)
        for old in self.checkpoints()[: -self.keep]:
            old.unlink(missing_ok=True)
        return path

    def checkpoints(self) -> list[Path]:
        if not self.directory.is_dir():
            return []
        found = [p for p in self.directory.iterdir() if self.PATTERN.match(p.name)]
        return sorted(found, key=lambda p: int(self.PATTERN.match(p.name).group(1)))

    def latest(self) -> Path | None:
        last = self.directory / "last.pt"
        if last.is_file():
            return last
        ckpts = self.checkpoints()
        return ckpts[-1] if ckpts else None
