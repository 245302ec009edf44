"""Atomic, safe checkpoints.

Writes go to a temporary file in the same folder, are fsync'ed and then
renamed over the target, so a run killed at any instant leaves either the old
or the new checkpoint, never a torn one. Loading always uses
``torch.load(weights_only=True)``: a checkpoint carrying pickled code is refused.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable

import torch

__all__ = ["save_atomic", "write_text_atomic", "load_checkpoint", "CheckpointManager"]


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # e.g. Windows: directories cannot be opened
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _replace_atomically(path: str | Path, write: Callable[[Any], object], binary: bool) -> Path:
    """``write(file)`` into a temp file beside ``path``, fsync, chmod 0644, rename over ``path``, fsync the folder."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb" if binary else "w") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp creates 0600
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)
    return path


def save_atomic(obj: Any, path: str | Path) -> Path:
    """``torch.save`` to ``path`` atomically (temp file + fsync + rename)."""
    return _replace_atomically(path, lambda f: torch.save(obj, f), binary=True)


def write_text_atomic(text: str, path: str | Path) -> Path:
    """Write a text file atomically (temp file + fsync + rename)."""
    return _replace_atomically(path, lambda f: f.write(text), binary=False)


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
        _fsync_dir(self.directory)
        return self.best_path

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
