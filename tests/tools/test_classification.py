"""Classification: ``train cls`` / ``eval cls`` / ``predict cls`` on real COCO object crops and on CIFAR-10
batches, the safe CIFAR reader, the metrics against numpy, the schedules, and a classifier's backbone
starting a detector (``train det --weights-backbone``) and filling ``compare``'s upstream column."""

from __future__ import annotations

import csv
import json
import math
import pickle
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from mobiledense.datasets import (Cifar10, ImageFolderClassification, build_cls_transforms,
                                  coco_crops_to_imagefolder, load_cifar_batch)
from mobiledense.tools.cli import main
from mobiledense.tools.engine import RunSpec, TrainConfig, load_checkpoint
from mobiledense.tools.evaluation import ClassificationEvaluator


def _log(out: Path) -> list[dict[str, str]]:
    with (out / "log.csv").open() as f:
        return list(csv.DictReader(f))


def _png(path: Path) -> np.ndarray:
    img = cv2.imread(str(path))
    assert img is not None, f"{path} is not a readable PNG"
    return img


# ---------------------------------------------------------------------------------------------- real COCO crops


@pytest.fixture(scope="module")
def coco_crops(coco_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, int]]:
    """The objects of the 6 most frequent categories of the real 50-image COCO train subset (>= 16 px)."""
    out = tmp_path_factory.mktemp("coco_crops") / "train"
    counts = coco_crops_to_imagefolder(coco_dir / "images" / "train2017",
                                       coco_dir / "annotations" / "instances_train2017.json", out, top_k=6,
                                       min_size=16)
    return out, counts


@pytest.fixture(scope="module")
def coco_run(coco_crops: tuple[Path, dict[str, int]], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A MobileNetV3-Small classifier trained from scratch on those crops (64x64, 60 epochs: ~30 s)."""
    root, _ = coco_crops
    out = tmp_path_factory.mktemp("cls_coco") / "run"
    assert main(["train", "cls", "--train", str(root), "--val-split", "train", "--backbone", "mobilenet_v3_small",
                 "--size", "64", "64", "--epochs", "60", "--lr", "3e-3", "--eval-every", "30", "--workers", "0",
                 "--no-progress", "--output-dir", str(out)]) == 0
    return out


def test_coco_crops_form_an_imagefolder_of_the_most_frequent_categories(coco_crops, coco_dir: Path) -> None:
    root, counts = coco_crops
    ann = json.loads((coco_dir / "annotations" / "instances_train2017.json").read_text())
    names = {c["id"]: c["name"] for c in ann["categories"]}
    big = [a for a in ann["annotations"] if not a.get("iscrowd") and min(a["bbox"][2:]) >= 16]
    expected = {}
    for a in big:
        expected[names[a["category_id"]]] = expected.get(names[a["category_id"]], 0) + 1
    top = sorted(expected.items(), key=lambda kv: -kv[1])[:6]
    assert sorted(counts.items()) == sorted(top)  # the 6 most frequent, every object of them
    ds = ImageFolderClassification(root, transforms=build_cls_transforms(False, (64, 64)))
    assert ds.class_names == tuple(sorted(counts)) and len(ds) == sum(counts.values())
    x, label = ds[0]
    assert x.shape == (3, 64, 64) and x.dtype == torch.float32 and 0 <= x.min() and x.max() <= 1
    assert ds.class_names[label] == ds.image_path(0).parent.name
    # A crop is the box grown by 10% of its size per side, clipped to the image.
    a = next(a for a in big if a["id"] == int(ds.image_path(0).stem.rsplit("_", 1)[1]))
    assert names[a["category_id"]] == ds.class_names[label]
    crop_h, crop_w = _png(ds.image_path(0)).shape[:2]
    x, y, w, h = a["bbox"]
    assert int(x + 1.1 * w) - int(x - 0.1 * w) - 2 <= crop_w <= 1.2 * w + 2 or crop_w >= w
    assert crop_h <= 1.2 * h + 2 and crop_w <= 1.2 * w + 2 and crop_h >= min(h, 1) and crop_w >= w - 1


def test_classifier_trained_on_real_coco_crops_is_well_above_chance(coco_run: Path, coco_crops) -> None:
    _, counts = coco_crops
    rows = _log(coco_run)
    last = rows[-1]
    majority = max(counts.values()) / sum(counts.values())  # always answering "person"
    top1, mean_class = float(last["top1"]), float(last["mean_class_acc"])
    assert top1 > majority + 0.2, (top1, majority)
    assert mean_class > 3 / len(counts), mean_class  # chance is 1 / 6
    losses = [float(r["loss"]) for r in rows]
    assert np.mean(losses[-5:]) < 0.6 * np.mean(losses[:5]), losses
    spec = RunSpec.load(coco_run / "config.json")
    assert spec.model.task == "cls" and spec.model.class_names == tuple(sorted(counts))


def test_eval_cls_reproduces_the_run_and_writes_its_reports(coco_run: Path, capsys) -> None:
    out = coco_run / "eval_again"
    assert main(["eval", "cls", "--checkpoint", str(coco_run / "checkpoints" / "best.pt"), "--no-progress",
                 "--output-dir", str(out)]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    last = _log(coco_run)[-1]
    assert metrics["top1"] == pytest.approx(float(last["top1"]), abs=1e-9)  # no flag: the run's own number
    assert metrics["top5"] == pytest.approx(float(last["top5"]), abs=1e-9)
    conf = np.asarray(metrics["confusion"])
    assert conf.shape == (6, 6) and conf.sum() == metrics["num_samples"]
    assert np.trace(conf) / conf.sum() == pytest.approx(metrics["top1"])
    for i, name in enumerate(sorted(metrics["per_class"])):
        assert metrics["per_class"][name] == pytest.approx(conf[i, i] / conf[i].sum())
    assert "top-1" in capsys.readouterr().out
    cm, bars = _png(out / "confusion_matrix.png"), _png(out / "per_class_accuracy.png")
    assert cm.shape[0] > 300 and cm.shape[1] > 300 and bars.shape[1] > 300
    assert cm.std() > 20 and bars.std() > 20  # drawn, not blank


def test_predict_cls_writes_ranked_classes_and_tiles(coco_run: Path, coco_crops) -> None:
    root, _ = coco_crops
    files = sorted(root.rglob("*.png"))[:4]
    out = coco_run / "predict"
    assert main(["predict", "cls", *map(str, files), "--checkpoint", str(coco_run / "checkpoints" / "best.pt"),
                 "--top-k", "3", "--output-dir", str(out)]) == 0
    lines = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert [Path(r["file"]).name for r in lines] == [f.name for f in files]
    names = RunSpec.load(coco_run / "config.json").model.class_names
    for r in lines:
        probs = [t["prob"] for t in r["top"]]
        assert len(probs) == 3 and probs == sorted(probs, reverse=True) and sum(probs) <= 1 + 1e-4
        assert all(names[t["index"]] == t["class"] for t in r["top"])
    for f in files:  # the crop, enlarged to 256 px on its longer side, above its 3 classes
        crop, tile = _png(f), _png(out / "tiles" / f"{f.stem}.png")
        scale = 256 / max(crop.shape[:2])
        assert tile.shape[1] >= round(crop.shape[1] * scale) and tile.shape[0] > round(crop.shape[0] * scale) + 30


# ---------------------------------------------------------------------------------------------- CIFAR-10


def _cifar_images(n: int, seed: int) -> tuple[np.ndarray, list[int]]:
    """4 learnable classes: a bright square in one of the 4 quadrants, on noise."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 90, (n, 32, 32, 3), dtype=np.uint8)
    labels = [int(v) for v in rng.integers(0, 4, n)]
    for img, c in zip(images, labels):
        y, x = divmod(c, 2)
        img[y * 16 + 3: y * 16 + 13, x * 16 + 3: x * 16 + 13] = (230, 200 - 40 * c, 40 * c)
    return images, labels


def _write_raw_batch(path: Path, images: np.ndarray, labels: list[int], bytes_keys: bool = False) -> None:
    """CIFAR's python layout by hand: each row is the R plane, then G, then B, row-major. Keys are str (what
    the official Python 2 files give under ``encoding="latin1"``) or bytes (``pickle.dump`` of bytes keys)."""
    rows = np.concatenate([images[..., ch].reshape(len(images), -1) for ch in range(3)], axis=1)
    key = (lambda k: k.encode()) if bytes_keys else (lambda k: k)
    with path.open("wb") as f:
        pickle.dump({key("batch_label"): b"test", key("labels"): labels, key("data"): rows,
                     key("filenames"): [f"{i}.png".encode() for i in range(len(images))]}, f, protocol=2)


@pytest.fixture(scope="module")
def cifar_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("cifar") / "cifar-10-batches-py"
    root.mkdir()
    for i in range(1, 6):
        _write_raw_batch(root / f"data_batch_{i}", *_cifar_images(48, i))
    _write_raw_batch(root / "test_batch", *_cifar_images(64, 99))
    names = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    with (root / "batches.meta").open("wb") as f:
        pickle.dump({"label_names": names, "num_cases_per_batch": 48, "num_vis": 3072}, f, protocol=2)
    return root


def test_cifar_reader_equals_torchvision_on_the_same_batches(cifar_dir: Path, tmp_path: Path) -> None:
    import torchvision

    class Unchecked(torchvision.datasets.CIFAR10):  # our files have no official md5
        def _check_integrity(self) -> bool:
            return True

        def _load_meta(self) -> None:
            self.classes = load_cifar_batch(Path(self.root) / self.base_folder / "batches.meta")["label_names"]

    for split, train in (("train", True), ("test", False)):
        ours = Cifar10(cifar_dir, split)
        theirs = Unchecked(str(cifar_dir.parent), train=train, download=False)
        assert np.array_equal(ours.images, theirs.data) and ours.targets == theirs.targets
    images, labels = _cifar_images(48, 1)
    assert np.array_equal(Cifar10(cifar_dir, "train").images[:48], images) and len(Cifar10(cifar_dir)) == 240
    assert Cifar10(cifar_dir).class_names[:2] == ("airplane", "automobile")
    other = tmp_path / "bytes_keys"
    other.mkdir()
    _write_raw_batch(other / "data_batch_1", images, labels, bytes_keys=True)  # bytes keys read the same
    ds = Cifar10(other)
    assert np.array_equal(ds.images, images) and ds.targets == labels and ds.class_names[0] == "airplane"


def test_cifar_batches_train_with_the_stride_1_stem(cifar_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    assert main(["train", "cls", "--preset", "cifar", "--train", str(cifar_dir), "--backbone", "mobilenet_v2",
                 "--width-mult", "0.35", "--epochs", "15", "--batch-size", "32", "--lr", "0.05", "--eval-every", "15",
                 "--workers", "0", "--no-progress", "--output-dir", str(out)]) == 0
    spec = RunSpec.load(out / "config.json")
    assert spec.model.backbone.options["stem_stride"] == 1 and spec.data.layout == "cifar10"
    assert spec.model.num_classes == 10 and spec.model.class_names[0] == "airplane"
    rows = _log(out)
    losses = [float(r["loss"]) for r in rows]
    assert losses[-1] < 0.7 * losses[0], losses
    assert float(rows[-1]["top1"]) > 0.8, rows[-1]  # the test_batch; 4 classes present, chance 0.25 at best


def test_cifar_preset_without_a_folder_names_what_it_needs(tmp_path: Path, capsys) -> None:
    assert main(["train", "cls", "--preset", "cifar", "--epochs", "1", "--output-dir", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert "layout cifar10 needs train (--train DIR): the folder of CIFAR-10's python batches" in err


def test_a_pickle_that_runs_code_is_refused_before_it_runs(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):  # noqa: ANN204
            import os

            return os.system, (f"touch {marker}",)

    root = tmp_path / "cifar-10-batches-py"
    root.mkdir()
    (root / "data_batch_1").write_bytes(pickle.dumps({b"data": Evil(), b"labels": [0]}, protocol=2))
    with pytest.raises(ValueError, match=r"data_batch_1: not a CIFAR batch \(refusing to load the global "
                                         r"(posix|os)\.system"):
        Cifar10(root)
    assert not marker.exists()
    (root / "data_batch_1").write_bytes(b"\x80\x02}q\x00(X")  # cut short
    with pytest.raises(ValueError, match="data_batch_1 is truncated or not a CIFAR python batch"):
        Cifar10(root)
    _write_raw_batch(root / "data_batch_1", *_cifar_images(4, 0))
    with (root / "data_batch_1").open("rb") as f:
        batch = pickle.load(f)
    batch[b"labels"] = [0, 1, 2, 12]
    (root / "data_batch_1").write_bytes(pickle.dumps(batch, protocol=2))
    with pytest.raises(ValueError, match="data_batch_1: labels must be ints in 0..9"):
        Cifar10(root)


# ---------------------------------------------------------------------------------------------- metrics, recipe


def test_evaluator_equals_numpy_top1_top5_and_confusion() -> None:
    g = torch.Generator().manual_seed(0)
    logits, labels = torch.randn(500, 12, generator=g), torch.randint(0, 12, (500,), generator=g)
    ev = ClassificationEvaluator(12)
    for i in range(0, 500, 64):
        ev.process((None, labels[i:i + 64]), logits[i:i + 64])
    m = ev.evaluate()
    lo, la = logits.numpy(), labels.numpy()
    order = np.argsort(-lo, axis=1)
    assert m.top1 == pytest.approx(np.mean(order[:, 0] == la))
    assert m.top5 == pytest.approx(np.mean([la[i] in order[i, :5] for i in range(500)]))
    conf = np.zeros((12, 12), np.int64)
    np.add.at(conf, (la, order[:, 0]), 1)
    assert np.array_equal(m.confusion, conf)
    for c in range(12):
        assert m.per_class[c] == pytest.approx(conf[c, c] / conf[c].sum())
    ev3 = ClassificationEvaluator(3)  # fewer than 5 classes: top-K of all, always 1
    ev3.process((None, torch.tensor([0, 1, 2])), torch.eye(3)[[1, 2, 0]])
    m3 = ev3.evaluate()
    assert m3.top1 == 0 and m3.top5 == 1 and math.isclose(m3.mean_class_accuracy, 0)


def test_step_schedule_is_torchvision_steplr_per_epoch() -> None:
    cfg = TrainConfig.parse(epochs=10, lr=0.064, schedule="step", lr_step_epochs=2, lr_gamma=0.973, warmup_iters=0)
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.064)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.973)
    steps_per_epoch = 7
    for epoch in range(10):
        for k in range(steps_per_epoch):
            assert cfg.lr_at(epoch * steps_per_epoch + k, 10 * steps_per_epoch) == pytest.approx(
                opt.param_groups[0]["lr"], rel=1e-12)
        opt.step()
        sched.step()


def test_torchvision_preset_is_the_reference_recipe(capsys) -> None:
    assert main(["train", "cls", "--preset", "torchvision", "--print-config"]) == 0
    spec, _ = json.JSONDecoder().raw_decode(capsys.readouterr().out)  # the spec, then a note
    r, d = spec["recipe"], spec["data"]
    assert (r["optimizer"], r["lr"], r["weight_decay"], r["batch_size"], r["epochs"]) == ("rmsprop", 0.064, 1e-5, 128,
                                                                                          600)
    assert (r["rmsprop_alpha"], r["rmsprop_eps"], r["schedule"], r["lr_step_epochs"], r["lr_gamma"]) == \
        (0.9, 0.0316, "step", 2.0, 0.973)
    assert r["ema"] and r["label_smoothing"] == 0.1
    assert (d["auto_augment"], d["random_erasing"], d["augment"]) == ("imagenet", 0.2, "imagenet")
    assert d["size"] == [224, 224]


def test_training_pipeline_is_seeded_and_leaves_the_global_rng_alone() -> None:
    image = np.random.default_rng(0).integers(0, 255, (80, 96, 3), dtype=np.uint8)
    t = build_cls_transforms(True, (64, 64), augment="imagenet", auto_augment="imagenet", random_erasing=0.5)
    torch.manual_seed(0)
    before = torch.get_rng_state()
    t.set_random_seed(5)
    a = t(image)
    assert torch.equal(torch.get_rng_state(), before)
    t.set_random_seed(5)
    assert torch.equal(t(image), a)
    t.set_random_seed(6)
    assert not torch.equal(t(image), a)


# ---------------------------------------------------------------------------------------------- downstream


@pytest.fixture(scope="module")
def small_cls(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A MobileNetV3-Small classifier (quick preset, objects of 40 synthetic images, EMA kept)."""
    out = tmp_path_factory.mktemp("cls_small") / "run"
    assert main(["train", "cls", "--backbone", "mobilenet_v3_small", "--synthetic-images", "40", "--size", "48", "48",
                 "--epochs", "2", "--eval-every", "1", "--ema", "--ema-decay", "0.9", "--workers", "0",
                 "--no-progress", "--output-dir", str(out)]) == 0
    return out / "checkpoints" / "best.pt"


def test_det_training_starts_from_a_classifier_checkpoint(small_cls: Path, tmp_path: Path) -> None:
    from mobiledense.tools.engine.tasks import build_model

    ckpt = load_checkpoint(small_cls)
    cls_backbone = {k[len("backbone."):]: v for k, v in ckpt["model_ema"].items() if k.startswith("backbone.")}
    assert not torch.equal(ckpt["model_ema"]["backbone.features.0.0.weight"],
                           ckpt["model"]["backbone.features.0.0.weight"])
    out = tmp_path / "det"
    argv = ["train", "det", "--model", "ssdlite_mobilenet_v3_small", "--weights-backbone", str(small_cls),
            "--synthetic-images", "12", "--size", "96", "--epochs", "1", "--batch-size", "4", "--workers", "0",
            "--eval-every", "0", "--no-progress", "--output-dir", str(out)]
    assert main(argv) == 0
    spec = RunSpec.load(out / "config.json")
    assert spec.recipe.weights_backbone == str(small_cls.resolve())
    start = build_model(spec).backbone.state_dict()
    assert set(start) == set(cls_backbone)
    for k, v in cls_backbone.items():  # the classifier's EMA weights (what eval cls reports), every tensor
        assert torch.equal(start[k], v), k
    trained = load_checkpoint(out / "checkpoints" / "last.pt")["model"]
    w0, w1 = cls_backbone["features.0.0.weight"], trained["backbone.features.0.0.weight"]
    assert torch.nn.functional.cosine_similarity(w0.flatten(), w1.flatten(), dim=0) > 0.9  # trained on from it


def test_compare_shows_the_classifiers_accuracy_as_the_upstream_column(small_cls: Path, tmp_path: Path) -> None:
    from mobiledense.tools.comparison import upstream_accuracy

    best = load_checkpoint(small_cls)["best"]
    assert upstream_accuracy(small_cls)["upstream_top1"] == best["metrics"]["top1"] == best["value"]
    weights = tmp_path / "weights"
    weights.mkdir()
    shutil.copy(small_cls, weights / "mobilenet_v3_small.pt")
    out = tmp_path / "c"
    assert main(["compare", "--tasks", "det", "--backbones", "mobilenet_v3_small", "--weights-backbone", str(weights),
                 "--epochs", "1", "--max-steps-per-epoch", "1", "--batch-size", "2", "--size", "64",
                 "--synthetic-images", "8", "--latency-runs", "1", "--latency-warmup", "0", "--no-progress",
                 "--output-dir", str(out)]) == 0
    md = (out / "results.md").read_text()
    assert "| backbone | cls top-1 (upstream) | det ssdlite mAP |" in md
    assert f"| mobilenet_v3_small | {100 * best['value']:.1f} |" in md
    with (out / "results.csv").open() as f:
        row = next(csv.DictReader(f))
    assert float(row["upstream_top1"]) == pytest.approx(best["value"]) and row["init"].endswith("mobilenet_v3_small.pt")


def test_starting_over_in_a_used_folder_sets_the_earlier_checkpoints_aside(tmp_path: Path) -> None:
    out = tmp_path / "run"
    argv = ["train", "cls", "--backbone", "mobilenet_v3_small", "--synthetic-images", "16", "--size", "32", "32",
            "--batch-size", "8", "--eval-every", "1", "--workers", "0", "--no-progress", "--output-dir", str(out)]
    assert main([*argv, "--epochs", "3"]) == 0
    old_steps = sorted(p.name for p in (out / "checkpoints").glob("checkpoint_*.pt"))
    assert main([*argv, "--epochs", "1", "--resume", "none"]) == 0
    earlier = list((out / "checkpoints").glob("earlier_*"))
    assert len(earlier) == 1 and sorted(p.name for p in earlier[0].glob("checkpoint_*.pt")) == old_steps
    new = load_checkpoint(out / "checkpoints" / "best.pt")
    assert new["epoch"] == 1 and new["best"]["epoch"] == 1  # the new run's own, not rotated away by the old
    assert [p.name for p in (out / "checkpoints").glob("checkpoint_*.pt")] == [f"checkpoint_{new['step']:08d}.pt"]
