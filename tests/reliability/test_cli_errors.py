"""CLI errors: one ``error: ...`` line naming what to fix, exit status 2, no traceback (``--debug`` shows it).

Model-level input errors (wrong rank, channels, dtype) are tested with the heads
(tests/heads/test_detector.py, test_lraspp.py, test_smp.py); here the CLI plumbing.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from mobiledense.tools.engine import load_checkpoint, save_atomic
from mobiledense.tools.cli import main


def _err(capsys: pytest.CaptureFixture) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return err


def test_invalid_config_names_every_field_without_traceback(run_cli, tmp_path: Path) -> None:
    out = tmp_path / "run"
    proc = run_cli("train", "det", "--lr", "-1", "--batch-size", "0", "--output-dir", out, timeout=60)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    assert "error: invalid training config:" in proc.stderr
    assert "lr must be > 0, got -1.0" in proc.stderr and "batch_size must be > 0, got 0" in proc.stderr
    assert not out.exists()  # refused before writing anything


def test_debug_flag_and_env_show_the_traceback(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    argv = ["train", "det", "--lr", "-1", "--output-dir", str(tmp_path)]
    for extra in (["--debug", *argv], [*argv, "--debug"]):  # before or after the subcommand
        with pytest.raises(ValueError, match="lr must be > 0"):
            main(extra)
    monkeypatch.setenv("MOBILEDENSE_DEBUG", "1")
    with pytest.raises(ValueError, match="lr must be > 0"):
        main(argv)


def test_unknown_model_fails_before_writing_data(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["train", "det", "--model", "ssdlite_nope", "--output-dir", str(tmp_path / "r")]) == 2
    err = _err(capsys)
    assert "unknown detector 'ssdlite_nope'; valid names:" in err and "ssdlite_mobilenet_v3_small" in err
    assert not (tmp_path / "r").exists()


def test_missing_training_json_is_named(tiny_coco, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    images, _ = tiny_coco["train"]
    rc = main(["train", "det", "--train-images", str(images), "--train-ann", str(tmp_path / "nope.json"),
               "--output-dir", str(tmp_path / "r")])
    assert rc == 2 and f"error: COCO annotation file not found: {tmp_path / 'nope.json'}" in _err(capsys)


def _eval_det(ckpt: Path, tiny_coco, tmp_path: Path, *extra: str) -> list[str]:
    images, ann = tiny_coco["val"]
    return ["eval", "det", "--checkpoint", str(ckpt), "--val-images", str(images), "--val-ann", str(ann),
            "--workers", "0", "--no-progress", "--output-dir", str(tmp_path / "eval"), *extra]


def test_eval_det_refuses_a_segmentation_checkpoint(seg_checkpoint, tiny_coco, tmp_path, capsys) -> None:
    assert main(_eval_det(seg_checkpoint, tiny_coco, tmp_path)) == 2
    assert f"{seg_checkpoint} is a 'seg' checkpoint, not 'det'" in _err(capsys)


def test_eval_seg_refuses_a_detection_checkpoint(det_checkpoint, tmp_path, capsys) -> None:
    assert main(["eval", "seg", "--checkpoint", str(det_checkpoint), "--data-root", str(tmp_path)]) == 2
    assert "is a 'det' checkpoint, not 'seg'" in _err(capsys)


def test_checkpoint_whose_weights_do_not_fit_its_model(det_checkpoint, tiny_coco, tmp_path, capsys) -> None:
    ckpt = load_checkpoint(det_checkpoint)
    model = ckpt["spec"]["model"]
    for key, value, expected in [("num_classes", {"num_classes": 4, "class_names": [], "category_ids": []},
                                  "num_classes=4"),
                                 ("backbone", {"backbone": {**model["backbone"], "name": "mobilenet_v2"}},
                                  "fit ssdlite/mobilenet_v2")]:
        spec = {**ckpt["spec"], "model": {**model, **value}}
        bad = save_atomic({**ckpt, "spec": spec}, tmp_path / f"{key}.pt")
        assert main(_eval_det(bad, tiny_coco, tmp_path)) == 2
        err = _err(capsys)
        assert f"error: {bad}: its weights do not fit" in err and expected in err
        assert "size mismatch for" in err or "missing key(s)" in err
        assert len(err) < 2000  # the gist, not hundreds of key names


def test_raw_weights_with_wrong_num_classes_or_architecture(det_checkpoint, tiny_coco, tmp_path, capsys) -> None:
    images, ann = tiny_coco["val"]
    base = ["eval", "det", "--weights", str(det_checkpoint), "--val-images", str(images), "--val-ann", str(ann),
            "--no-progress", "--output-dir", str(tmp_path)]
    assert main([*base, "--model", "ssdlite_mobilenet_v3_small", "--num-classes", "5"]) == 2
    err = _err(capsys)
    assert "do not fit --model ssdlite_mobilenet_v3_small with --num-classes 5" in err
    assert "head.classification_head" in err and "number of classes" in err
    assert main([*base, "--model", "ssdlite_mobilenet_v2", "--num-classes", "7"]) == 2
    assert "missing key(s)" in _err(capsys)


def test_a_state_dict_is_not_a_training_checkpoint(det_checkpoint, tiny_coco, tmp_path, capsys) -> None:
    raw = save_atomic(load_checkpoint(det_checkpoint)["model"], tmp_path / "raw.pt")
    assert main(_eval_det(raw, tiny_coco, tmp_path)) == 2
    assert "has no run spec: it is not a mobiledense training checkpoint" in _err(capsys)
    assert main(_eval_det(tmp_path / "missing.pt", tiny_coco, tmp_path)) == 2
    assert f"checkpoint not found: {tmp_path / 'missing.pt'}" in _err(capsys)


def _pickle_commands(evil: Path, tiny_coco, tmp_path: Path) -> dict[str, list[str]]:
    images, ann = tiny_coco["train"]
    image = str(next(images.glob("*.jpg")))
    return {
        "eval det": _eval_det(evil, tiny_coco, tmp_path),
        "eval det --weights": ["eval", "det", "--model", "ssdlite_mobilenet_v3_small", "--weights", str(evil),
                               "--val-images", str(images), "--val-ann", str(ann)],
        "predict det": ["predict", "det", image, "--checkpoint", str(evil), "--output-dir", str(tmp_path)],
        "predict seg": ["predict", "seg", image, "--checkpoint", str(evil), "--output-dir", str(tmp_path)],
        "eval seg": ["eval", "seg", "--checkpoint", str(evil), "--data-root", str(tmp_path)],
        "train det --weights-backbone": [
            "train", "det", "--train-images", str(images), "--train-ann", str(ann), "--epochs", "1",
            "--model", "ssdlite_mobilenet_v3_small", "--weights-backbone", str(evil),
            "--output-dir", str(tmp_path / "wb")],
        "train det --resume": [
            "train", "det", "--train-images", str(images), "--train-ann", str(ann), "--epochs", "1",
            "--model", "ssdlite_mobilenet_v3_small", "--size", "96", "--batch-size", "4", "--resume", str(evil),
            "--output-dir", str(tmp_path / "resume")],
    }


@pytest.mark.parametrize("command", ["eval det", "eval det --weights", "predict det", "predict seg", "eval seg",
                                     "train det --weights-backbone", "train det --resume"])
def test_pickle_payload_checkpoints_are_refused(command, pickle_bomb, tiny_coco, tmp_path, capsys) -> None:
    evil, marker = pickle_bomb
    assert main(_pickle_commands(evil, tiny_coco, tmp_path)[command]) == 2
    err = _err(capsys)
    assert str(evil) in err and ("refusing to load" in err or "pickled objects are refused" in err), err
    assert not marker.exists(), "the payload ran"


def test_the_payload_would_run_if_unpickled(pickle_bomb) -> None:
    """Guards the test above: the file really carries code that runs on a plain unpickling."""
    evil, marker = pickle_bomb
    try:
        torch.load(evil, weights_only=False)  # noqa: S614 - deliberately unsafe, on our own test file
        assert marker.exists()
    finally:
        marker.unlink(missing_ok=True)
