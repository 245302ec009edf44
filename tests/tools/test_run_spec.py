"""One run spec from training to eval / predict / export: every case of the run-spec issue, through the CLI.

* a segmentation checkpoint trained at 256x512 on real Cityscapes frames evaluates, with no
  other flag, to exactly the run's own final mIoU, and ``predict seg`` segments at the same
  resolution (the same label maps as ``eval seg --save-predictions``);
* a detector trained on one category set refuses data with other categories, and maps by
  name when only the ids differ;
* a resumed run with another ``--lr``, ``--batch-size``, ``--seed``, ``--size`` or ``--epochs``
  is refused, naming each field, unless ``--allow-change`` names them;
* ``compare`` checkpoints evaluate and export with no extra flag;
* ``--reduced-tail`` checkpoints rebuild everywhere; on a family without it the flag is a
  clear error; ``config.json`` records the precision and world size actually used and the
  backbone weights; ``best.pt`` is kept and evaluates to the run's best metric.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from mobiledense.datasets import make_synthetic_coco
from mobiledense.tools.cli import main
from mobiledense.tools.engine import RunSpec, load_checkpoint
from mobiledense.tools.engine.tasks import load_trained_model


@pytest.fixture(scope="module")
def shapes(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, Path]]:
    return make_synthetic_coco(tmp_path_factory.mktemp("shapes"), num_images=30, size_range=(64, 96),
                               val_fraction=0.2, seed=0)


def _train_det(shapes, out: Path, *extra: str) -> list[str]:
    (images, ann), (val_images, val_ann) = shapes["train"], shapes["val"]
    return ["train", "det", "--train-images", str(images), "--train-ann", str(ann), "--val-images", str(val_images),
            "--val-ann", str(val_ann), "--model", "ssdlite_mobilenet_v3_small", "--size", "96", "--epochs", "1",
            "--batch-size", "4", "--warmup-iters", "1", "--eval-every", "1", "--workers", "0", "--no-progress",
            "--output-dir", str(out), *extra]


def _log(out: Path) -> list[dict[str, str]]:
    with (out / "log.csv").open() as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def det_run(shapes, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-epoch reduced-tail detector run started from a local backbone file."""
    from mobiledense.backbones import create_backbone

    out = tmp_path_factory.mktemp("det_run")
    torch.manual_seed(0)
    backbone = out.parent / "backbone.pth"
    torch.save(create_backbone("mobilenet_v3_small", reduced_tail=True).state_dict(), backbone)
    assert main(_train_det(shapes, out, "--epochs", "2", "--reduced-tail", "--weights-backbone", str(backbone))) == 0
    return out


def test_config_json_is_the_spec_and_records_what_the_run_used(det_run: Path) -> None:
    spec = RunSpec.load(det_run / "config.json")
    ckpt = load_checkpoint(det_run / "checkpoints" / "last.pt")
    assert RunSpec.from_dict(ckpt["spec"]) == spec  # the same spec in config.json and every checkpoint
    assert spec.recipe.precision == "fp32" and spec.recipe.world_size == 1  # on CPU: no fp16, whatever "auto" says
    assert spec.recipe.weights_backbone == str((det_run.parent / "backbone.pth").resolve())
    assert spec.model.backbone.reduced_tail and spec.model.head.size == (96, 96)
    assert spec.model.class_names and len(spec.model.category_ids) == spec.model.num_classes - 1
    assert Path(spec.data.val_ann).is_absolute() and spec.data.augment == "ssdlite"


def test_best_checkpoint_is_kept_and_evaluates_to_the_runs_own_numbers(det_run: Path, tmp_path: Path) -> None:
    rows = _log(det_run)
    best_row = max(rows, key=lambda r: float(r["mAP"]))
    best = load_checkpoint(det_run / "checkpoints" / "best.pt")["best"]
    assert best["metric"] == "mAP" and best["epoch"] == int(best_row["epoch"])
    assert best["value"] == pytest.approx(float(best_row["mAP"]), abs=1e-12)
    assert load_checkpoint(det_run / "checkpoints" / "last.pt")["best"] == best
    # The follow-up command train prints needs no other flag: model, data and batch come from the spec.
    assert main(["eval", "det", "--checkpoint", str(det_run / "checkpoints" / "best.pt"), "--no-progress",
                 "--workers", "0", "--output-dir", str(tmp_path)]) == 0
    stats = json.loads((tmp_path / "metrics.json").read_text())["stats"]
    assert stats["AP"] == pytest.approx(float(best_row["mAP"]), abs=1e-12)


def test_reduced_tail_checkpoint_predicts_and_exports(det_run: Path, shapes, tmp_path: Path) -> None:
    ckpt = det_run / "checkpoints" / "last.pt"
    model, spec = load_trained_model(ckpt, "det")
    assert spec.model.backbone.reduced_tail and model.backbone.features[-1].out_channels == 288  # 576 // 2
    assert main(["predict", "det", str(shapes["val"][0]), "--checkpoint", str(ckpt), "--no-overlay",
                 "--output-dir", str(tmp_path / "pred")]) == 0
    first = json.loads((tmp_path / "pred" / "predictions.jsonl").read_text().splitlines()[0])
    assert all(d["name"] in spec.model.class_names for d in first["detections"])
    pytest.importorskip("onnxruntime")
    assert main(["export", "--checkpoint", str(ckpt), "--output", str(tmp_path / "m.onnx"), "--check-size", "96",
                 "128", "--repeats", "0"]) == 0


def test_an_option_the_backbone_lacks_is_a_clear_error(shapes, tmp_path: Path, capsys) -> None:
    out = tmp_path / "run"
    assert main(_train_det(shapes, out, "--model", "ssdlite_mobilenet_v2", "--reduced-tail")) == 2
    err = capsys.readouterr().err
    assert "error: mobilenet_v2 has no option 'reduced_tail'" in err and "mobilenet_v3_large" in err
    assert "Traceback" not in err and "unexpected" not in err and not out.exists()


def test_resume_refuses_changed_options_naming_each(shapes, tmp_path: Path, capsys) -> None:
    out = tmp_path / "run"
    assert main(_train_det(shapes, out)) == 0
    capsys.readouterr()
    changed = ["--lr", "0.01", "--batch-size", "2", "--seed", "5", "--size", "128", "--epochs", "2"]
    assert main(_train_det(shapes, out, *changed)) == 2
    err = capsys.readouterr().err
    for field in ("recipe.lr: 0.002 -> 0.01", "recipe.batch_size: 4 -> 2", "recipe.seed: 0 -> 5",
                  "model.head.size: [96, 96] -> [128, 128]", "recipe.epochs: 1 -> 2", "--allow-change"):
        assert field in err, err
    assert load_checkpoint(out / "checkpoints" / "last.pt")["epoch"] == 1  # nothing was trained
    assert main(_train_det(shapes, out, "--epochs", "2", "--allow-change", "epochs")) == 0
    assert load_checkpoint(out / "checkpoints" / "last.pt")["epoch"] == 2
    assert RunSpec.load(out / "config.json").recipe.epochs == 2


def test_eval_refuses_other_categories_and_maps_renumbered_ids(det_run: Path, shapes, coco_dir: Path,
                                                               tmp_path: Path, capsys, caplog) -> None:
    ckpt = str(det_run / "checkpoints" / "best.pt")
    real = ["--val-images", str(coco_dir / "images" / "val2017"),
            "--val-ann", str(coco_dir / "annotations" / "instances_val2017.json")]
    assert main(["eval", "det", "--checkpoint", ckpt, *real, "--output-dir", str(tmp_path / "coco")]) == 2
    err = capsys.readouterr().err
    assert "its categories differ from the checkpoint's: the model predicts 6 (" in err
    assert "missing from the json: 6 (" in err and "not known to the model: 80 (airplane, apple," in err
    assert not (tmp_path / "coco" / "metrics.json").exists()

    # The same val set with every category id moved by 100: mapped by name, the same numbers.
    images, ann = shapes["val"]
    data = json.loads(Path(ann).read_text())
    ids = {c["id"] for c in data["categories"]}
    for c in data["categories"]:
        c["id"] += 100
    for a in data["annotations"]:
        a["category_id"] += 100
    moved = tmp_path / "moved.json"
    moved.write_text(json.dumps(data))
    stats = {}
    for name, path in (("same", ann), ("moved", moved)):
        assert main(["eval", "det", "--checkpoint", ckpt, "--val-images", str(images), "--val-ann", str(path),
                     "--workers", "0", "--no-progress", "--output-dir", str(tmp_path / name)]) == 0
        stats[name] = json.loads((tmp_path / name / "metrics.json").read_text())["stats"]
        results = json.loads((tmp_path / name / "results.json").read_text())
        assert results and {r["category_id"] for r in results} <= {i + (100 if name == "moved" else 0) for i in ids}
    assert stats["same"] == stats["moved"] and stats["same"]["AR100"] >= 0
    assert "category ids differ from the checkpoint's; mapped by name:" in caplog.text and "-> 101" in caplog.text
    assert f"--val-ann {moved} overrides the run spec's" in caplog.text  # a flag given says what it replaces


@pytest.mark.slow
def test_seg_checkpoint_evaluates_and_predicts_at_the_training_resolution(cityscapes_dir: Path,
                                                                          tmp_path: Path) -> None:
    """The issue's case: 256x512 training on full-size real frames; eval with no flag = the run's own mIoU."""
    out = tmp_path / "run"
    assert main(["train", "seg", "--data-root", str(cityscapes_dir), "--val-split", "train", "--backbone",
                 "mobilenet_v3_small", "--base-size", "256", "512", "--crop", "256", "512", "--epochs", "1",
                 "--max-steps-per-epoch", "2", "--batch-size", "2", "--workers", "0", "--eval-every", "1",
                 "--no-progress", "--output-dir", str(out)]) == 0
    trained = float(_log(out)[-1]["mIoU"])
    ckpt = out / "checkpoints" / "best.pt"
    assert main(["eval", "seg", "--checkpoint", str(ckpt), "--save-predictions", "--workers", "0",
                 "--no-progress"]) == 0  # no data flag: root, split, base size and scale come from the spec
    metrics = json.loads((out / "eval" / "metrics.json").read_text())
    assert metrics["mIoU"] == trained and metrics["split"] == "train" and metrics["frames"] == 8

    # predict seg segments at the run's resolution too: the label maps eval saved, pixel for pixel.
    frame = sorted((cityscapes_dir / "leftImg8bit" / "train").rglob("*_leftImg8bit.png"))[0]
    assert main(["predict", "seg", str(frame), "--checkpoint", str(ckpt)]) == 0
    stem = frame.name[: -len(".png")]
    predicted = cv2.imread(str(out / "predict" / f"{stem}_labelIds.png"), cv2.IMREAD_UNCHANGED)
    evaluated = cv2.imread(str(out / "eval" / "predictions" / frame.name), cv2.IMREAD_UNCHANGED)
    assert predicted.shape == (1024, 2048) and np.array_equal(predicted, evaluated)


def test_compare_checkpoints_evaluate_and_export_without_flags(tmp_path: Path) -> None:
    out = tmp_path / "compare"
    assert main(["compare", "--tasks", "det", "seg", "--backbones", "mobilenet_v3_small", "--seg-heads", "lraspp",
                 "--epochs", "1", "--max-steps-per-epoch", "2", "--batch-size", "2", "--size", "96", "--seg-size",
                 "64", "128", "--synthetic-images", "10", "--synthetic-frames", "4", "--keep-checkpoints",
                 "--latency-runs", "1", "--latency-warmup", "0", "--no-progress", "--output-dir", str(out)]) == 0
    for task, metric in (("det", "AP"), ("seg", "mIoU")):
        cell = next((out / "cells").glob(f"{task}__*.json"))
        stored = json.loads(cell.read_text())
        ckpt = out / "runs" / cell.stem / "checkpoints" / "last.pt"
        assert main(["eval", task, "--checkpoint", str(ckpt), "--workers", "0", "--no-progress",
                     "--output-dir", str(tmp_path / task)]) == 0
        got = json.loads((tmp_path / task / "metrics.json").read_text())
        assert (got["stats"][metric] if task == "det" else got[metric]) == stored["accuracy"]
        if pytest.importorskip("onnxruntime"):
            assert main(["export", "--checkpoint", str(ckpt), "--output", str(tmp_path / f"{task}.onnx"),
                         "--check-size", "64", "128", "--repeats", "0"]) == 0


def test_train_refuses_a_val_set_with_other_categories(shapes, coco_dir: Path, tmp_path: Path, capsys) -> None:
    (images, ann) = shapes["train"]
    out = tmp_path / "run"
    assert main(["train", "det", "--train-images", str(images), "--train-ann", str(ann),
                 "--val-images", str(coco_dir / "images" / "val2017"),
                 "--val-ann", str(coco_dir / "annotations" / "instances_val2017.json"), "--epochs", "1",
                 "--output-dir", str(out)]) == 2
    err = capsys.readouterr().err
    assert f"its categories differ from the training set's ({ann})" in err
    assert not (out / "checkpoints").exists()  # refused before the first step
