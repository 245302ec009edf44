"""The whole detection loop learns on REAL COCO images (../shared/data/coco).

* Overfitting 10 real val2017 images with the training engine drives COCO mAP
  (pycocotools protocol, on those images) far above chance.
* ``mobiledense train det`` on the real 50-image train2017 subset lowers the loss.
"""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch.utils.data import Subset

from mobiledense.datasets import CocoDetection, build_det_transforms, collate_detection
from mobiledense.heads import create_detector
from mobiledense.tools.evaluation.coco import evaluate_coco
from mobiledense.tools.engine import TrainConfig, Trainer
from mobiledense.tools.evaluation import predict_detections


@pytest.mark.slow
def test_overfitting_ten_real_images_reaches_high_map(coco_dir: Path, tmp_path: Path) -> None:
    images, ann = coco_dir / "images" / "val2017", coco_dir / "annotations" / "instances_val2017.json"
    full = CocoDetection(images, ann, transforms=build_det_transforms("none", 160, train=True))
    idx = [i for i in range(len(full)) if len(full.raw_target(i)["boxes"]) > 0][:10]
    train = Subset(full, idx)
    torch.manual_seed(0)
    model = create_detector("ssdlite320_mobilenet_v3_large", num_classes=full.num_classes, size=160)
    cfg = TrainConfig(epochs=120, batch_size=10, lr=2e-3, optimizer="adamw", weight_decay=0.0,
                      warmup_iters=10, warmup_factor=0.1, workers=0, eval_every=0, bn_momentum=0.1)
    trainer = Trainer(model, train, collate_detection, lambda net, x, y: net(x, y), cfg, tmp_path,
                      progress=False)
    metrics = trainer.fit()
    assert metrics["loss"] < 0.1, metrics

    plain = CocoDetection(images, ann)  # full-size images; the model resizes and maps boxes back
    results = predict_detections(model, Subset(plain, idx), batch_size=10, progress=False,
                                 label_to_category_id=plain.label_to_category_id)
    stats = evaluate_coco(plain.coco, results, backend="pycocotools",
                          image_ids=[plain.image_ids[i] for i in idx])
    assert stats.stats[0] > 0.5, stats.summary()


@pytest.mark.slow
def test_train_det_cli_on_real_subset_lowers_loss(coco_dir: Path, tmp_path: Path, env: dict[str, str]) -> None:
    ann = coco_dir / "annotations"
    cmd = [sys.executable, "-m", "mobiledense.tools.cli", "train", "det",
           "--train-images", str(coco_dir / "images" / "train2017"),
           "--train-ann", str(ann / "instances_train2017.json"),
           "--val-images", str(coco_dir / "images" / "val2017"),
           "--val-ann", str(ann / "instances_val2017.json"),
           "--size", "128", "--epochs", "4", "--batch-size", "10", "--lr", "0.002", "--optimizer", "adamw",
           "--warmup-iters", "5", "--workers", "0", "--eval-every", "4", "--no-progress",
           "--output-dir", str(tmp_path)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    with (tmp_path / "log.csv").open() as f:
        rows = list(csv.DictReader(f))
    losses = [float(r["loss"]) for r in rows]
    assert len(losses) == 4 and losses[-1] < 0.75 * losses[0], losses
    assert 0.0 <= float(rows[-1]["mAP"]) <= 1.0  # evaluated on real val2017 through the CLI
    assert (tmp_path / "checkpoints" / "last.pt").is_file() and (tmp_path / "config.json").is_file()
