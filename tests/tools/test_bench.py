"""``mobiledense bench``: the smoke run covers every section; checks can fail; no timing assertions."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from mobiledense.tools.benchmark import pipeline as benchmark_pipeline
from mobiledense.tools.bench import SECTION_NAMES
from mobiledense.tools.benchmark import compare_detections, synthetic_coco, time_interleaved
from mobiledense.tools.cli import main


@pytest.fixture(scope="module")
def smoke(tmp_path_factory, coco_dir) -> tuple[int, dict, str]:
    out = tmp_path_factory.mktemp("bench")
    code = main(["bench", "--smoke", "--threads", "1", "--coco-dir", str(coco_dir),
                 "--json", str(out / "bench.json"), "--markdown", str(out / "bench.md")])
    return code, json.loads((out / "bench.json").read_text()), (out / "bench.md").read_text()


def test_smoke_run_writes_every_section(smoke) -> None:
    code, doc, _ = smoke
    assert code == 0 and doc["checks_passed"]
    assert set(doc["sections"]) == set(SECTION_NAMES)
    for name, section in doc["sections"].items():
        assert "skipped" not in section, (name, section.get("skipped"))
        assert section["rows"], name
        for row in section["rows"]:
            assert row["section"] == name and row["check"]["passed"], row
            assert row["ours"]["median"] > 0 and row["ours"]["p90"] >= row["ours"]["median"]
            assert row["ours"]["images_per_s"] == pytest.approx(row["batch"] / row["ours"]["median"])
            if row["reference"] is not None:
                assert row["speedup"] == pytest.approx(row["reference"]["median"] / row["ours"]["median"])
    m = doc["machine"]
    assert m["threads"] == 1 and m["logical_cores"] >= 1 and m["torch"] == torch.__version__


def test_smoke_rows_cover_the_issue(smoke) -> None:
    _, doc, md = smoke
    rows = {s: [r["name"] for r in sec["rows"]] for s, sec in doc["sections"].items()}
    assert any("ssdlite320" in n for n in rows["det"])
    assert {r["batch"] for r in doc["sections"]["det"]["rows"]} == {1, 2}  # latency and throughput
    assert len(rows["seg"]) == 4  # two sizes x (batch 1, batch N)
    from mobiledense.backbones import list_backbones

    assert set(rows["backbones"]) == set(list_backbones())
    tv_rows = [r for r in doc["sections"]["backbones"]["rows"] if r["reference_label"]]
    assert {r["name"] for r in tv_rows} >= {"mobilenet_v2", "mobilenet_v3_large", "squeezenet1_1"}
    assert len(rows["train"]) == 2 and len(rows["data"]) == 2 and len(rows["export"]) == 2
    det = doc["sections"]["det"]["rows"][0]
    assert det["info"]["params"] == 3_440_060 and det["info"]["madds"] > 0
    assert det["check"]["detections"] > 0 and "ours_eager" in det["info"]
    assert md.startswith("Machine:") and "| section | name |" in md
    deploy = {r["name"]: r for r in doc["sections"]["deploy"]["rows"]}
    for model in ("ssdlite320_mobilenet_v3_large end to end", "lraspp_mobilenet_v3_large 64x128"):
        for engine in ("torchvision onnx on onnxruntime", "torchvision onnx on openvino", "ours onnxruntime fp32",
                       "ours openvino fp32"):
            row = deploy[f"{model} [{engine}]"]
            assert row["reference_label"] == "torchvision eager" and row["info"]["vs_onnxruntime_fp32"] > 0
    for precision in ("int8", "bf16"):  # smoke: quantized segmenters (detectors only fp32)
        row = deploy[f"lraspp_mobilenet_v3_large 64x128 [ours openvino {precision}]"]
        assert 1e-4 < row["check"]["relative_rmse"] < 0.75, row["check"]
    assert deploy["lraspp_mobilenet_v3_large 64x128 [ours onnxruntime int8]"]["check"]["passed"]
    # Segmenter rows time image -> class ids against the pre-deploy graph (full-size logits in it).
    seg = deploy["lraspp_mobilenet_v3_large 64x128 [ours onnxruntime fp32]"]["info"]
    assert seg["output"] == "class ids" and 0 <= seg["boundary_fraction"] <= 1
    assert "lraspp_mobilenet_v3_large 64x128 [ours onnxruntime fp32 full logits (pre-deploy path)]" in deploy
    ids = deploy["class ids 19x64x128 -> 512x1024, label map of regions"]
    assert ids["check"]["identical_labels"] and 0.05 < ids["info"]["boundary_fraction"] < 0.3


def test_smoke_video_row_is_end_to_end_against_model_only(smoke) -> None:
    _, doc, _ = smoke
    (row,) = doc["sections"]["video"]["rows"]
    info = row["info"]
    assert row["batch"] == info["frames"] == 8 and info["input"] == [320, 320] and "ssdlite320" in row["name"]
    assert row["check"]["passed"] and row["check"]["detections"] > 0  # the pipeline's boxes = the model's
    assert row["speedup"] == pytest.approx(info["ratio"]) and info["target"] == 0.9
    assert info["meets_target"] == (info["ratio"] >= 0.9)  # reported, not asserted: timings vary by machine
    assert set(info["stage_ms_per_frame"]) == {"decode", "model", "draw", "write"}


def test_missing_coco_images_skip_the_data_section(tmp_path) -> None:
    out = tmp_path / "b.json"
    assert main(["bench", "--smoke", "--only", "data", "--coco-dir", str(tmp_path), "--json", str(out)]) == 0
    section = json.loads(out.read_text())["sections"]["data"]
    assert "real COCO images not found" in section["skipped"] and section["rows"] == []


def test_a_failed_check_fails_the_run(tmp_path, monkeypatch, capsys) -> None:
    real = benchmark_pipeline._pycocotools_reference
    monkeypatch.setattr(benchmark_pipeline, "_pycocotools_reference", lambda gt, dets: real(gt, dets) + 1e-3)
    out = tmp_path / "b.json"
    assert main(["bench", "--smoke", "--only", "eval", "--json", str(out)]) == 1
    assert "outputs differ from the reference in: eval" in capsys.readouterr().out
    assert json.loads(out.read_text())["checks_passed"] is False


def _dets(n: int, seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(n, 2, generator=g) * 100
    return {"boxes": torch.cat([xy, xy + 10], 1), "scores": torch.rand(n, generator=g),
            "labels": torch.randint(1, 4, (n,), generator=g)}


def test_compare_detections_is_a_set_comparison_with_tolerances() -> None:
    a = _dets(30, 0)
    perm = torch.randperm(30, generator=torch.Generator().manual_seed(1))
    shuffled = {k: v[perm] for k, v in a.items()}
    assert compare_detections([a], [shuffled])["passed"]  # order does not matter
    nudged = {**a, "boxes": a["boxes"] + 0.05, "scores": a["scores"] + 5e-4}
    check = compare_detections([a], [nudged])
    assert check["passed"] and check["max_box_diff"] == pytest.approx(0.05, abs=1e-5)
    assert not compare_detections([a], [{**a, "boxes": a["boxes"] + 0.5}])["passed"]
    assert not compare_detections([a], [{k: v[1:] for k, v in a.items()}])["passed"]  # one dropped
    relabelled = {**a, "labels": a["labels"].clone()}
    relabelled["labels"][0] = 4
    assert not compare_detections([a], [relabelled])["passed"]
    assert not compare_detections([a, a], [a])["passed"]


def test_time_interleaved_rotates_and_counts() -> None:
    calls: list[str] = []
    fns = {name: (lambda n=name: calls.append(n)) for name in "abc"}
    timings = time_interleaved(fns, repeats=3, warmup=1)
    assert calls == list("abc") + list("abc") + list("bca") + list("cab")
    assert all(t.n == 3 and 0 <= t.min <= t.median <= t.p90 for t in timings.values())


def test_synthetic_coco_is_valid_and_has_true_positives() -> None:
    from mobiledense.tools.evaluation.coco import evaluate_coco

    gt, dets = synthetic_coco(40, 10)
    assert len(gt["images"]) == 40 and len(dets) == 400 and len(gt["categories"]) == 80
    stats = evaluate_coco(gt, dets, backend="pycocotools").stats
    assert 0.05 < stats[1] < 0.95  # AP50: some true and some false positives
    assert np.allclose(evaluate_coco(gt, dets, backend="faster_coco_eval").stats, stats, atol=1e-12)


def test_invalid_options_are_named(capsys) -> None:
    assert main(["bench", "--smoke", "--batch", "0", "--repeats", "0", "--threads", "0"]) == 2
    err = capsys.readouterr().err
    assert "--repeats must be >= 1, got 0" in err and "--batch must be >= 1, got 0" in err
    assert "--threads must be >= 1, got 0" in err


def test_seg_checkpoint_gives_torchvision_the_same_trained_weights_and_the_runs_frames(tmp_path) -> None:
    """``bench --seg-checkpoint``: the reference rows run torchvision's LR-ASPP with the checkpoint's weights, on
    the run's frames; a segmenter in another layout is refused with the reason."""
    from mobiledense.datasets import make_synthetic_cityscapes
    from mobiledense.heads import lraspp_mobilenet_v3_large, lraspp_mobilenet_v3_small
    from mobiledense.tools.benchmark.common import BenchConfig, _seg_pair, calibrate_
    from mobiledense.tools.benchmark.deployment import _run_frames
    from mobiledense.tools.engine import CityscapesDataSpec
    from mobiledense.tools.engine.tasks import save_model_checkpoint

    root = make_synthetic_cityscapes(tmp_path / "city", num_train=3, num_val=1, size=(64, 128), seed=0)
    torch.manual_seed(0)
    model = lraspp_mobilenet_v3_large(num_classes=19)
    calibrate_(model, lambda m: m(torch.rand(2, 3, 64, 128)))
    ckpt = save_model_checkpoint(model, CityscapesDataSpec(root=str(root)), tmp_path / "seg.pt")
    tv, ours, optimised, reference = _seg_pair("cpu", ckpt)
    frames = _run_frames(BenchConfig(seg_checkpoint=ckpt))(2, (64, 128))
    assert len(frames) == 2 and frames[0].shape == (1, 3, 64, 128) and 0 <= frames[0].min() < frames[0].max() <= 1
    with torch.no_grad():
        torch.testing.assert_close(reference(frames[0]), model(frames[0]), atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(optimised(frames[0]), model(frames[0]), atol=1e-3, rtol=1e-3)
    other = save_model_checkpoint(lraspp_mobilenet_v3_small(num_classes=19).eval(), CityscapesDataSpec(root=str(root)),
                                  tmp_path / "small.pt")
    with pytest.raises(ValueError, match="not an LR-ASPP MobileNetV3-Large in torchvision's layout"):
        _seg_pair("cpu", other)


def test_a_missing_seg_checkpoint_is_an_error_not_a_skipped_section(tmp_path, capsys) -> None:
    assert main(["bench", "--smoke", "--only", "deploy", "--seg-checkpoint", str(tmp_path / "missing.pt")]) == 2
    assert f"--seg-checkpoint {tmp_path / 'missing.pt'}: no such file" in capsys.readouterr().err
