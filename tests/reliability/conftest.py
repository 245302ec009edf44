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


@pytest.fixture(scope="session")
def det_checkpoint(tmp_path_factory: pytest.TempPathFactory, tiny_coco) -> Path:
    """A random-init :data:`DET_MODEL` checkpoint as ``train det`` writes it (the run spec of ``tiny_coco``)."""
    from mobiledense.datasets import CocoDetection
    from mobiledense.heads import create_model, model_spec
    from mobiledense.tools.engine import CocoDataSpec
    from mobiledense.tools.engine.tasks import DetectionTask, save_model_checkpoint

    (images, ann), (val_images, val_ann) = tiny_coco["train"], tiny_coco["val"]
    classes = DetectionTask.class_info(CocoDetection(images, ann))
    torch.manual_seed(0)
    model = create_model(model_spec(DET_MODEL, size=DET_SIZE, **classes))
    data = CocoDataSpec(train_images=str(images), train_ann=str(ann), val_images=str(val_images),
                        val_ann=str(val_ann))
    return save_model_checkpoint(model, data, tmp_path_factory.mktemp("det_ckpt") / "last.pt")


@pytest.fixture(scope="session")
def seg_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random-init LR-ASPP MobileNetV3-Small checkpoint as ``train seg`` writes it."""
    from mobiledense.heads import create_segmenter
    from mobiledense.tools.engine import CityscapesDataSpec
    from mobiledense.tools.engine.tasks import save_model_checkpoint

    torch.manual_seed(0)
    model = create_segmenter("mobilenet_v3_small", 19, pool="global")
    data = CityscapesDataSpec(root=str(tmp_path_factory.mktemp("no_cityscapes")), crop=(64, 128))
    return save_model_checkpoint(model, data, tmp_path_factory.mktemp("seg_ckpt") / "last.pt")


@pytest.fixture(scope="session")
def pickle_bomb(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """``(checkpoint, marker)``: unpickling the checkpoint would create ``marker`` (code execution)."""
    folder = tmp_path_factory.mktemp("evil")
    marker = folder / "pwned"
    torch.save({"model": {}, "spec": _Payload(str(marker))}, folder / "evil.pt")
    return folder / "evil.pt", marker


class _Payload:
    """Unpickles into ``open(path, "w")``: a file appears if anything ever unpickles it."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):  # noqa: ANN204
        return (open, (self.path, "w"))
