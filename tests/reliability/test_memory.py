"""Memory stays bounded on long runs: ``eval det``, ``predict det`` and ``predict seg`` keep no image alive.

``rss_probe.py`` records the process's resident memory each time an image is read. Over the
second half of a run, RSS may grow only by what the outputs need: nothing for ``predict``
(results are streamed to disk) and the COCO detections for ``eval`` (at most 300 per image,
~0.5 KB each as Python dicts, which COCOeval needs all at once). A leaked 256x256 image costs
0.75 MiB (float32) per image, several times either budget. The 5000-image measurement in the
README uses the same probe.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from mobiledense.datasets import make_synthetic_coco

pytestmark = pytest.mark.slow

HERE = Path(__file__).resolve().parent
NUM_IMAGES = 200

#: MiB of RSS growth allowed per image over the second half of the run.
EVAL_BUDGET_MIB = 0.3  # 300 detections x ~0.5 KB, with 2x headroom
#: Streamed outputs: allocator noise only. glibc grows its arenas in steps of a few MiB, so one step late in
#: the run reads as ~0.05 MiB/image over 100 images; 0.1 still catches the smallest leak that matters, one
#: uint8 RGB input image (0.22 MiB) per image, at 2x.
PREDICT_BUDGET_MIB = 0.1


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("mem")
    return make_synthetic_coco(root, num_images=NUM_IMAGES, size_range=(256, 288), val_fraction=0.0)["train"]


def probe(tmp_path: Path, env: dict[str, str], *argv: str) -> dict:
    out = tmp_path / "rss.json"
    proc = subprocess.run([sys.executable, str(HERE / "rss_probe.py"), str(out), "--", *argv],
                          capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    assert len(result["rss_mib"]) == NUM_IMAGES
    return result


def growth_per_image(rss: list[float]) -> float:
    half = len(rss) // 2
    return (rss[-1] - rss[half]) / (len(rss) - 1 - half)


def quarter_growth_mib(rss: list[float]) -> float:
    """Mean RSS of the last quarter of the run minus that of the first quarter (after warm-up)."""
    q = len(rss) // 4
    return sum(rss[-q:]) / q - sum(rss[q:2 * q]) / q


def test_eval_det_memory_grows_only_with_the_detections(images, det_checkpoint, tmp_path, env) -> None:
    image_dir, ann = images
    result = probe(tmp_path, env, "eval", "det", "--checkpoint", str(det_checkpoint), "--val-images", str(image_dir),
                   "--val-ann", str(ann), "--workers", "0", "--no-progress", "--overlays", "0",  # images read once each
                   "--output-dir", str(tmp_path / "eval"))
    n_dets = len(json.loads((tmp_path / "eval" / "results.json").read_text()))
    assert n_dets > 50 * NUM_IMAGES  # a random-init detector: many low-score boxes, near the worst case
    assert growth_per_image(result["rss_mib"]) < EVAL_BUDGET_MIB, result


def test_predict_det_memory_is_flat(images, det_checkpoint, tmp_path, env) -> None:
    image_dir, _ = images
    result = probe(tmp_path, env, "predict", "det", str(image_dir), "--checkpoint", str(det_checkpoint),
                   "--score-thresh", "0.0", "--output-dir", str(tmp_path / "pred"))
    assert len((tmp_path / "pred" / "predictions.jsonl").read_text().splitlines()) == NUM_IMAGES
    assert len(list((tmp_path / "pred" / "overlays").glob("*.png"))) == NUM_IMAGES
    assert growth_per_image(result["rss_mib"]) < PREDICT_BUDGET_MIB, result
    assert quarter_growth_mib(result["rss_mib"]) < PREDICT_BUDGET_MIB * NUM_IMAGES / 2, result


def test_predict_seg_memory_is_flat(images, seg_checkpoint, tmp_path, env) -> None:
    image_dir, _ = images
    result = probe(tmp_path, env, "predict", "seg", str(image_dir), "--checkpoint", str(seg_checkpoint),
                   "--output-dir", str(tmp_path / "pred"))
    assert len(list((tmp_path / "pred").glob("*_overlay.png"))) == NUM_IMAGES
    assert growth_per_image(result["rss_mib"]) < PREDICT_BUDGET_MIB, result
    assert quarter_growth_mib(result["rss_mib"]) < PREDICT_BUDGET_MIB * NUM_IMAGES / 2, result
