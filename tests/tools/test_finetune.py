"""Fine-tuning from named weights: ``train det|seg --weights coco`` keeps everything but the class layers.

torchvision's files are laid out in a temporary ``$TORCH_HOME`` under their official names
(random, calibrated weights of torchvision's own models: converted exactly, see
tests/backbones/test_pretrained.py), as after a first download on a machine with network.
"""

from __future__ import annotations

import csv
import logging
from pathlib import Path

import pytest
import torch
import torchvision

from mobiledense.backbones.pretrained import get_weights
from mobiledense.datasets import make_synthetic_coco
from mobiledense.tools.benchmark import calibrate_
from mobiledense.tools.cli import main
from mobiledense.tools.engine import RunSpec, load_checkpoint


@pytest.fixture()
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = tmp_path / "torch" / "hub" / "checkpoints"
    folder.mkdir(parents=True)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    return folder


def _lay_out(cache: Path, name: str, model: torch.nn.Module) -> None:
    torch.save(model.state_dict(), cache / get_weights(name).url.rsplit("/", 1)[-1])


def _losses(out: Path) -> list[float]:
    with (out / "log.csv").open() as f:
        return [float(r["loss"]) for r in csv.DictReader(f)]


def test_train_det_fine_tunes_from_coco_weights(cache: Path, tmp_path: Path, caplog) -> None:
    from torchvision.models.detection import ssdlite320_mobilenet_v3_large as tv_ssdlite

    torch.manual_seed(0)
    tv = tv_ssdlite(weights=None, weights_backbone=None)  # the COCO file's layout (reduced tail)
    x = torch.rand(2, 3, 320, 320) * 2 - 1
    calibrate_(tv, lambda m: m.head(list(m.backbone(x).values())))
    _lay_out(cache, "torchvision:SSDLite320_MobileNet_V3_Large_Weights.COCO_V1", tv)
    shapes = make_synthetic_coco(tmp_path / "shapes", num_images=30, size_range=(64, 96), val_fraction=0.2, seed=0)
    (images, ann), (val_images, val_ann) = shapes["train"], shapes["val"]
    out = tmp_path / "run"
    caplog.set_level(logging.INFO)
    assert main(["train", "det", "--weights", "coco", "--train-images", str(images), "--train-ann", str(ann),
                 "--val-images", str(val_images), "--val-ann", str(val_ann), "--size", "96", "--epochs", "8",
                 "--batch-size", "4", "--lr", "2e-3", "--warmup-iters", "2", "--eval-every", "8", "--workers", "0",
                 "--no-progress", "--output-dir", str(out)]) == 0
    losses = _losses(out)
    assert sum(losses[-3:]) / 3 < 0.8 * losses[0], losses  # it learns the 6 shapes from the 91-class start
    assert "started from coco; re-initialised for 7 classes: head.classification_head.module_list.0.1.weight" \
        in caplog.text
    spec = RunSpec.load(out / "config.json")
    assert spec.recipe.weights == "coco" and spec.model.num_classes == 7
    # Everything else came from the file: the trained stem is still the laid-out COCO one, moved a little.
    start = tv.state_dict()["backbone.features.0.0.0.weight"]
    trained = load_checkpoint(out / "checkpoints" / "last.pt")["model"]["backbone.features.0.0.weight"]
    cosine = torch.nn.functional.cosine_similarity(start.flatten(), trained.flatten(), dim=0)
    assert not torch.equal(start, trained) and cosine > 0.9, cosine  # trained on from the file, not from scratch


def test_train_seg_fine_tunes_from_coco_weights(cache: Path, tmp_path: Path, caplog) -> None:
    from torchvision.models.segmentation import lraspp_mobilenet_v3_large as tv_lraspp

    torch.manual_seed(0)
    _lay_out(cache, "torchvision:LRASPP_MobileNet_V3_Large_Weights.COCO_WITH_VOC_LABELS_V1",
             tv_lraspp(weights=None, weights_backbone=None, num_classes=21))
    caplog.set_level(logging.INFO)
    assert main(["train", "seg", "--weights", "coco", "--synthetic-frames", "4", "--base-size", "64", "128",
                 "--crop", "64", "128", "--epochs", "1", "--batch-size", "2", "--workers", "0", "--eval-every", "0",
                 "--no-progress", "--output-dir", str(tmp_path / "run")]) == 0
    assert "re-initialised for 19 classes: decoder.low_classifier.weight, decoder.low_classifier.bias, " \
           "decoder.high_classifier.weight, decoder.high_classifier.bias" in caplog.text


def test_train_det_from_an_imagenet_backbone(cache: Path, tmp_path: Path) -> None:
    torch.manual_seed(0)
    tv = torchvision.models.mobilenet_v3_small()
    _lay_out(cache, "torchvision:MobileNet_V3_Small_Weights.IMAGENET1K_V1", tv)
    shapes = make_synthetic_coco(tmp_path / "shapes", num_images=12, size_range=(64, 96), val_fraction=0.0, seed=0)
    images, ann = shapes["train"]
    out = tmp_path / "run"
    assert main(["train", "det", "--model", "ssdlite_mobilenet_v3_small", "--weights-backbone", "imagenet",
                 "--train-images", str(images), "--train-ann", str(ann), "--size", "96", "--epochs", "1",
                 "--batch-size", "4", "--lr", "1e-9", "--warmup-iters", "0", "--workers", "0", "--no-progress",
                 "--output-dir", str(out)]) == 0
    assert RunSpec.load(out / "config.json").recipe.weights_backbone == "imagenet"
    got = load_checkpoint(out / "checkpoints" / "last.pt")["model"]["backbone.features.1.block.0.0.weight"]
    torch.testing.assert_close(got, tv.state_dict()["features.1.block.0.0.weight"], atol=1e-6, rtol=0)
