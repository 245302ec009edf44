"""Shared fixtures: real data under ../shared/data (skipped with a reason when absent)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"

# Two xdist workers on two cores: one intra-op thread each avoids oversubscription.
torch.set_num_threads(1)


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
