"""Shared fixtures: real data under ../shared/data (skipped with a reason when absent)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"

# Two xdist workers on two cores: one intra-op thread each avoids oversubscription.
torch.set_num_threads(1)


def subprocess_env(**extra: str) -> dict[str, str]:
    """The environment of a CLI subprocess: one intra-op thread, no MOBILEDENSE_DEBUG.

    Under ``pytest -n 2`` on two cores, two processes with two OpenMP threads each spin
    against each other: a training run that takes 40 s alone takes 190 s.
    """
    env = {k: v for k, v in os.environ.items() if k != "MOBILEDENSE_DEBUG"}
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONUNBUFFERED="1", **extra)
    return env


@pytest.fixture(scope="session")
def env() -> dict[str, str]:
    """:func:`subprocess_env` for the tests' CLI subprocesses."""
    return subprocess_env()


def _shared(sub: str) -> Path:
    path = SHARED_DATA / sub
    if not path.exists():
        pytest.skip(f"real data not available: {path} is missing (it lives beside the project in ../shared)")
    return path


@pytest.fixture(scope="session")
def coco_dir() -> Path:
    """Real 50+50-image COCO 2017 subset (annotations/, images/{train2017,val2017})."""
    return _shared("coco")


@pytest.fixture(scope="session")
def coco_eval_fixture() -> Path:
    """COCO val2014 GT + fake detections + expected pycocotools stats."""
    return _shared("coco/eval_val2014_fake100")


@pytest.fixture(scope="session")
def cityscapes_dir() -> Path:
    """A few real full-resolution Cityscapes frames with gtFine labels."""
    return _shared("cityscapes")


@pytest.fixture(scope="session")
def cityscapes_tiny_dir() -> Path:
    """One real Cityscapes val frame downscaled to 256x128."""
    return _shared("cityscapes_tiny")
