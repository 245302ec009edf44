"""The whole segmentation loop learns on REAL Cityscapes frames (../shared/data/cityscapes).

``mobiledense train seg`` overfits the 8 real aachen frames (downscaled to
128x256): mIoU, computed with the cityscapesScripts-equal metric on the same
frames, rises far above that of the untrained model.
"""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import cv2
import pytest


def _downscaled_copy(src: Path, dst: Path, size: tuple[int, int] = (256, 128)) -> Path:
    """The real train/aachen frames resized once (image: area, labels: nearest) into a tmp layout."""
    for img in sorted((src / "leftImg8bit" / "train").rglob("*_leftImg8bit.png")):
        stem, city = img.name[: -len("_leftImg8bit.png")], img.parent.name
        lab = src / "gtFine" / "train" / city / f"{stem}_gtFine_labelIds.png"
        for path, out, interp, flag in (
                (img, dst / "leftImg8bit" / "train" / city / img.name, cv2.INTER_AREA, cv2.IMREAD_COLOR),
                (lab, dst / "gtFine" / "train" / city / lab.name, cv2.INTER_NEAREST, cv2.IMREAD_UNCHANGED)):
            out.parent.mkdir(parents=True, exist_ok=True)
            cv2.imwrite(str(out), cv2.resize(cv2.imread(str(path), flag), size, interpolation=interp))
    return dst


@pytest.mark.slow
def test_train_seg_cli_overfits_real_frames(cityscapes_dir: Path, tmp_path: Path, env: dict[str, str]) -> None:
    root = _downscaled_copy(cityscapes_dir, tmp_path / "cityscapes_128x256")
    common = ["--data-root", str(root), "--train-split", "train", "--val-split", "train",
              "--base-size", "128", "256", "--crop", "128", "256", "--batch-size", "4", "--workers", "0",
              "--no-progress"]
    run = [sys.executable, "-m", "mobiledense.tools.cli", "train", "seg", *common, "--epochs", "60",
           "--lr", "0.003", "--eval-every", "60", "--output-dir", str(tmp_path / "run")]
    proc = subprocess.run(run, capture_output=True, text=True, timeout=900, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    with (tmp_path / "run" / "log.csv").open() as f:
        rows = list(csv.DictReader(f))
    losses = [float(r["loss"]) for r in rows]
    assert losses[-1] < 0.5 * losses[0], losses
    trained = float(rows[-1]["mIoU"])

    # The same frames scored by `eval seg` with the untrained (epoch-0) weights for reference.
    untrained = [sys.executable, "-m", "mobiledense.tools.cli", "train", "seg", *common, "--epochs", "1",
                 "--max-steps-per-epoch", "1", "--lr", "1e-9", "--warmup-iters", "0", "--eval-every", "1",
                 "--output-dir", str(tmp_path / "untrained")]
    proc = subprocess.run(untrained, capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    with (tmp_path / "untrained" / "log.csv").open() as f:
        baseline = float(list(csv.DictReader(f))[-1]["mIoU"])
    assert trained > 0.25 and trained > baseline + 0.2, (baseline, trained)

    # `eval seg` with the checkpoint alone: data root, split, base size and scale come from its run spec.
    ev = [sys.executable, "-m", "mobiledense.tools.cli", "eval", "seg",
          "--checkpoint", str(tmp_path / "run" / "checkpoints" / "last.pt"), "--workers", "0", "--no-progress"]
    for mode in ("eager", "fast"):
        cmd = ev + ["--output-dir", str(tmp_path / mode)] + (["--eager"] if mode == "eager" else [])
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
        assert proc.returncode == 0, proc.stderr[-3000:]
    eager, metrics = (json.loads((tmp_path / m / "metrics.json").read_text()) for m in ("eager", "fast"))
    # Training evaluates the inference copy eval runs by default (BN folded, fused kernels): equal numbers.
    assert metrics["mIoU"] == trained, (metrics["mIoU"], trained)
    # The model as trained (--eager) differs by float rounding only: a rare argmax flip.
    assert abs(eager["mIoU"] - trained) < 1e-3, (eager["mIoU"], trained)
    assert (tmp_path / "fast" / "confusion_matrix.png").stat().st_size > 1000
