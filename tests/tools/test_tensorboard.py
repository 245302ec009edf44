"""Training logs people read: one TensorBoard event stream per run, train/ and val/ tags, images, the spec."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from mobiledense.datasets import CocoDetection, make_synthetic_coco
from mobiledense.tools.cli import main

pytest.importorskip("tensorboard")


def test_train_writes_one_event_file_with_step_scalars_images_and_the_spec(tmp_path: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    shapes = make_synthetic_coco(tmp_path / "shapes", num_images=20, size_range=(64, 96), val_fraction=0.2, seed=0)
    (images, ann), (val_images, val_ann) = shapes["train"], shapes["val"]
    out = tmp_path / "run"
    assert main(["train", "det", "--model", "ssdlite_mobilenet_v3_small", "--size", "96", "--train-images",
                 str(images), "--train-ann", str(ann), "--val-images", str(val_images), "--val-ann", str(val_ann),
                 "--epochs", "2", "--batch-size", "4", "--eval-every", "1", "--log-every", "2", "--workers", "0",
                 "--tensorboard", "--no-progress", "--output-dir", str(out)]) == 0
    files = list((out / "tb").glob("events.out.tfevents.*"))
    assert len(files) == 1, files  # one stream for the run, not one per epoch
    acc = EventAccumulator(str(files[0]), size_guidance={"images": 0, "scalars": 0, "tensors": 0}).Reload()
    tags = acc.Tags()
    scalars = set(tags["scalars"])
    assert {"train/loss", "train/lr", "train/images_per_s", "train/bbox_regression", "train/classification",
            "val/mAP", "val/AP50"} <= scalars
    assert not scalars & {"epoch", "step", "time_s", "loss", "mAP"}  # no flat tags
    steps = [e.step for e in acc.Scalars("train/loss")]
    assert steps == [2, 4, 6, 8]  # the x-axis is the optimiser step, every --log-every steps
    assert [e.step for e in acc.Scalars("val/mAP")] == [4, 8]
    image = acc.Images("val/predictions/0")
    assert len(image) == 2  # one per evaluation
    first = CocoDetection(val_images, val_ann).load_image(0)
    f = 480 / max(first.shape[:2])  # thumbnails are drawn enlarged to 480 px
    assert image[0].width > 2 * f * first.shape[1] and image[0].height > f * first.shape[0]  # ground truth | preds
    assert "run/spec/text_summary" in tags["tensors"]
    with (out / "steps.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [int(r["step"]) for r in rows] == steps and {"loss", "lr", "images_per_s"} <= set(rows[0])
