"""Fixtures of the reliability tests: tiny synthetic data, random-init checkpoints, CLI subprocesses.

Subprocesses run with the ``env`` fixture of ``tests/conftest.py`` (one intra-op thread).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Callable

import pytest
import torch

HERE = Path(__file__).resolve().parent

#: A detector small enough for CPU tests: MobileNetV3-Small SSDLite at 96x96 (1.6 M parameters).
DET_MODEL, DET_SIZE = "ssdlite_mobilenet_v3_small", 96


@pytest.fixture(scope="session")
def run_cli(env: dict[str, str]) -> Callable[..., subprocess.CompletedProcess]:
    """``run_cli(*argv, timeout=120, env=None)``: ``mobiledense ARGV`` in a fresh interpreter."""
    default_env = env

    def run(*argv: str, timeout: float = 120, env: dict[str, str] | None = None,
            cwd: Path | None = None) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "mobiledense.tools.cli", *map(str, argv)],
                              capture_output=True, text=True, timeout=timeout, env=env or default_env,
                              cwd=cwd)

    return run


@pytest.fixture(scope="session")
def tiny_coco(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, Path]]:
    """30 synthetic images of 64-96 px: 24 train, 6 val; ``{split: (image_dir, ann_file)}``."""
    from mobiledense.datasets import make_synthetic_coco

    return make_synthetic_coco(tmp_path_factory.mktemp("tiny_coco"), num_images=30, size_range=(64, 96),
                               val_fraction=0.2, seed=0)


def det_run_info(num_classes: int = 7) -> dict:
    """The ``run_info`` ``train det`` stores, for a random-init :data:`DET_MODEL`."""
    return {"task": "det", "model": DET_MODEL, "num_classes": num_classes,
            "model_kwargs": {"size": DET_SIZE, "loss": "multibox"},
            "label_to_category_id": {i: i for i in range(1, num_classes)},
            "category_names": {i: f"class {i}" for i in range(1, num_classes)}}


@pytest.fixture(scope="session")
def det_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random-init detector checkpoint in ``train det``'s format (6 classes + background)."""
    from mobiledense.heads import create_detector
    from mobiledense.tools.engine import save_atomic

    info = det_run_info()
    torch.manual_seed(0)
    model = create_detector(DET_MODEL, num_classes=info["num_classes"], **info["model_kwargs"])
    return save_atomic({"model": model.state_dict(), "run_info": info},
                       tmp_path_factory.mktemp("det_ckpt") / "last.pt")


@pytest.fixture(scope="session")
def seg_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random-init LR-ASPP MobileNetV3-Small checkpoint in ``train seg``'s format."""
    from mobiledense.heads.lraspp import create_segmenter
    from mobiledense.tools.engine import save_atomic

    torch.manual_seed(0)
    model = create_segmenter("mobilenet_v3_small", 19, pool="global")
    info = {"task": "seg", "model": "lraspp_mobilenet_v3_small", "backbone": "mobilenet_v3_small",
            "num_classes": 19, "head": "lraspp", "model_kwargs": {"pool": "global"}}
    return save_atomic({"model": model.state_dict(), "run_info": info},
                       tmp_path_factory.mktemp("seg_ckpt") / "last.pt")


@pytest.fixture(scope="session")
def pickle_bomb(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """``(checkpoint, marker)``: unpickling the checkpoint would create ``marker`` (code execution)."""
    folder = tmp_path_factory.mktemp("evil")
    marker = folder / "pwned"
    torch.save({"model": {}, "run_info": _Payload(str(marker))}, folder / "evil.pt")
    return folder / "evil.pt", marker


class _Payload:
    """Unpickles into ``open(path, "w")``: a file appears if anything ever unpickles it."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):  # noqa: ANN204
        return (open, (self.path, "w"))
