"""Reliability, round two: no silent wrong result, no lost epoch, no unclear error (one test per case).

Each case was a silent wrong result, lost work or an unclear error on the previous main; the
README's "What happens when..." table lists the behaviour each test pins down.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import Dataset

from mobiledense.tools.cli import main
from mobiledense.tools.engine import (CheckpointManager, RunLock, TrainConfig, Trainer, TrainingAborted,
                                      load_checkpoint, save_atomic)


def _err(capsys: pytest.CaptureFixture) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err and "unexpected error" not in err, err
    return err


def _train_det(tiny_coco, out: Path, *extra: str, val: bool = True) -> list[str]:
    (images, ann), (val_images, val_ann) = tiny_coco["train"], tiny_coco["val"]
    return ["train", "det", "--train-images", str(images), "--train-ann", str(ann),
            *(["--val-images", str(val_images), "--val-ann", str(val_ann)] if val else []),
            "--model", "ssdlite_mobilenet_v3_small", "--size", "96", "--epochs", "1", "--batch-size", "4",
            "--warmup-iters", "1", "--workers", "0", "--no-progress", "--output-dir", str(out), *extra]


class Toy(Dataset):
    """y = A x; indices in ``bad`` fail to load."""

    def __init__(self, n: int = 16, bad: frozenset[int] = frozenset()) -> None:
        g = torch.Generator().manual_seed(0)
        self.x, self.bad = torch.randn(n, 4, generator=g), bad
        self.y = self.x @ torch.randn(4, 2, generator=g) * 100

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int):  # noqa: ANN204
        if i in self.bad:
            raise OSError(f"sample {i} is a 0-byte file")
        return self.x[i], self.y[i]


def _toy_trainer(out: Path, data: Dataset | None = None, eval_fn=None, **kw) -> Trainer:  # noqa: ANN001
    torch.manual_seed(0)
    cfg = TrainConfig.parse(**{**dict(epochs=2, batch_size=4, lr=0.01, warmup_iters=0, workers=0, eval_every=1,
                                      keep_checkpoints=3), **kw})
    return Trainer(nn.Linear(4, 2), data or Toy(), lambda s: tuple(torch.stack(v) for v in zip(*s)),
                   lambda m, x, y: {"mse": nn.functional.mse_loss(m(x), y)}, cfg, out, eval_fn=eval_fn,
                   progress=False)


# ------------------------------------------------------------------ silent wrong results


def test_non_finite_options_are_refused(tiny_coco, tmp_path: Path, capsys) -> None:
    assert main(_train_det(tiny_coco, tmp_path / "r", "--lr", "inf")) == 2
    assert "invalid training config: lr: input should be a finite number, got inf" in _err(capsys)
    assert not (tmp_path / "r").exists()


def test_weights_that_became_non_finite_are_never_saved(tmp_path: Path) -> None:
    """lr 1e38 (finite, absurd): the first step overflows the weights; the run stops naming it, unsaved."""
    trainer = _toy_trainer(tmp_path, lr=1e38, momentum=0.0, eval_every=0)
    with pytest.raises(FloatingPointError, match=r"the weights became non-finite by step \d+ .*Nothing was saved"):
        trainer.fit()
    assert not list((tmp_path / "checkpoints").glob("*.pt"))


@pytest.mark.parametrize("argv,message", [
    (["--size", "0"], "size must be at least 32 x 32, got (0, 0)"),
    (["--size", "-5"], "size must be at least 32 x 32, got (-5, -5)"),
    (["--batch-size", "0", "--warmup-factor", "2"], "batch_size must be > 0, got 0; warmup_factor must be <= 1"),
])
def test_train_options_are_range_checked_and_named(tiny_coco, tmp_path: Path, capsys, argv, message) -> None:
    assert main(_train_det(tiny_coco, tmp_path / "r", *argv)) == 2
    err = _err(capsys)
    assert message in err and "validation error" not in err and not (tmp_path / "r").exists()


def test_predict_options_are_range_checked(det_checkpoint, seg_checkpoint, tiny_coco, tmp_path, capsys) -> None:
    image = str(next(tiny_coco["val"][0].glob("*.jpg")))
    for argv, message in [
        (["predict", "det", image, "--checkpoint", str(det_checkpoint), "--score-thresh", "1.5"],
         "--score-thresh must be in [0, 1], got 1.5"),
        (["predict", "seg", image, "--checkpoint", str(seg_checkpoint), "--alpha", "5"],
         "--alpha must be in [0, 1], got 5.0"),
        (["predict", "seg", image, "--checkpoint", str(seg_checkpoint), "--scale", "0"],
         "--scale must be > 0, got 0.0"),
        (["predict", "det", image, "--checkpoint", str(det_checkpoint), "--device", "foo"],
         "--device foo: not a device; use auto, cpu, cuda or cuda:N"),
    ]:
        assert main([*argv, "--output-dir", str(tmp_path / "out")]) == 2
        assert message in _err(capsys)


@pytest.fixture()
def synthetic_city(tmp_path: Path) -> Path:
    from mobiledense.datasets import make_synthetic_cityscapes

    return make_synthetic_cityscapes(tmp_path / "city", num_train=2, num_val=3, size=(64, 128), seed=0)


@pytest.mark.parametrize("damage", ["missing", "jpg"])
def test_eval_seg_refuses_a_split_where_an_image_is_missing(synthetic_city: Path, seg_checkpoint, damage,
                                                           capsys) -> None:
    image = sorted((synthetic_city / "leftImg8bit" / "val").rglob("*.png"))[1]
    if damage == "missing":
        image.unlink()
    else:
        cv2.imwrite(str(image.with_suffix(".jpg")), cv2.imread(str(image)))
        image.unlink()
    assert main(["eval", "seg", "--checkpoint", str(seg_checkpoint), "--data-root", str(synthetic_city),
                 "--split", "val", "--no-progress", "--workers", "0"]) == 2
    err = _err(capsys)
    assert "1 label file(s) in" in err and f"expects {image}" in err and "silently leave those frames out" in err
    if damage == "jpg":
        assert f"found {image.with_suffix('.jpg').name}: Cityscapes images are _leftImg8bit.png files" in err


def test_a_flipped_byte_is_found_and_the_file_named(tmp_path: Path) -> None:
    path = save_atomic({"model": {"w": torch.zeros(1_000_000)}, "step": 3}, tmp_path / "last.pt")
    assert load_checkpoint(path)["step"] == 3
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01  # inside the 4 MB of tensor data
    path.write_bytes(bytes(data))
    with pytest.raises(ValueError, match=f"{path} is corrupt: its tensors do not match the checksum"):
        load_checkpoint(path)
    from mobiledense.backbones import load_state_dict_file

    with pytest.raises(ValueError, match="do not match the checksum"):  # --weights / --weights-backbone too
        load_state_dict_file(path)


def test_symlinked_folders_under_the_image_root_are_followed(tmp_path: Path) -> None:
    """The documented choice: the json may not escape the root (``..``, absolute: refused), but links the
    folder's owner made (subsets of a larger set, shared image stores) are followed."""
    from mobiledense.datasets import CocoDetection, make_synthetic_coco
    from mobiledense.datasets.coco import CocoFormatError

    images, ann = make_synthetic_coco(tmp_path / "store", num_images=3, size_range=(64, 64), val_fraction=0.0)["train"]
    root = tmp_path / "root"
    root.mkdir()
    (root / "linked").symlink_to(images, target_is_directory=True)
    data = json.loads(ann.read_text())
    for img in data["images"]:
        img["file_name"] = "linked/" + img["file_name"]
    (tmp_path / "linked.json").write_text(json.dumps(data))
    assert CocoDetection(root, tmp_path / "linked.json").load_image(0).shape[:2] == (64, 64)
    data["images"][0]["file_name"] = "../store/images/train/000000.jpg"
    (tmp_path / "escape.json").write_text(json.dumps(data))
    with pytest.raises(CocoFormatError, match="escapes the image root"):
        CocoDetection(root, tmp_path / "escape.json")


# ------------------------------------------------------------------ lost work, unclear errors


def test_an_epoch_without_a_good_sample_aborts_unsaved(tiny_coco, tmp_path: Path, capsys) -> None:
    images, ann = tiny_coco["train"]
    empty = tmp_path / "empty_images"
    shutil.copytree(images, empty)
    for f in empty.iterdir():
        f.write_bytes(b"")
    out = tmp_path / "r"
    argv = ["train", "det", "--train-images", str(empty), "--train-ann", str(ann), "--model",
            "ssdlite_mobilenet_v3_small", "--size", "96", "--epochs", "1", "--batch-size", "4", "--workers", "0",
            "--no-progress", "--output-dir", str(out)]
    assert main(argv) == 2
    assert "none of the 24 training samples of epoch 1 could be loaded" in _err(capsys)
    assert not list((out / "checkpoints").glob("*.pt"))


def test_too_many_bad_samples_in_an_epoch_abort_it(tmp_path: Path) -> None:
    with pytest.raises(TrainingAborted, match=r"9 of the 16 training samples of epoch 1 failed to load "
                                              r"\(limit max_bad_fraction=0.5"):
        _toy_trainer(tmp_path, Toy(bad=frozenset(range(9))), eval_every=0).fit()
    _toy_trainer(tmp_path / "ok", Toy(bad=frozenset(range(8))), eval_every=0).fit()  # 50%: allowed


def test_a_bad_val_set_is_found_before_training(tiny_coco, tmp_path: Path, capsys) -> None:
    val_images, val_ann = tiny_coco["val"]
    broken = tmp_path / "val_images"
    shutil.copytree(val_images, broken)
    victim = sorted(broken.iterdir())[0]
    victim.write_bytes(b"")
    (images, ann) = tiny_coco["train"]
    out = tmp_path / "r"
    argv = _train_det(tiny_coco, out, val=False)
    assert main([*argv, "--val-images", str(broken), "--val-ann", str(val_ann)]) == 2
    assert f"unreadable image files: {victim} is empty (0 bytes)" in _err(capsys)
    assert not (out / "checkpoints").exists()
    assert main([*argv, "--val-ann", str(val_ann)]) == 2
    assert "val_ann needs val_images" in _err(capsys)


def test_the_epoch_is_saved_before_it_is_evaluated(tmp_path: Path) -> None:
    def failing_eval(model, epoch):  # noqa: ANN001, ANN202
        raise RuntimeError("the evaluation crashed")

    with pytest.raises(RuntimeError, match="evaluation crashed"):
        _toy_trainer(tmp_path, eval_fn=failing_eval).fit()
    assert load_checkpoint(tmp_path / "checkpoints" / "last.pt")["epoch"] == 1  # the epoch's training is kept


def test_a_second_training_in_the_same_folder_is_refused(tiny_coco, tmp_path: Path, capsys) -> None:
    out = tmp_path / "r"
    with RunLock(out):  # as a training in another process holds it
        assert main(_train_det(tiny_coco, out)) == 2
        err = _err(capsys)
        assert f"{out} is in use by another training (pid " in err and "use another --output-dir" in err
    assert main(_train_det(tiny_coco, out)) == 0  # released: the folder is free again


def test_a_full_disk_names_the_file_and_keeps_the_last_good_one(tmp_path: Path, monkeypatch) -> None:
    import mobiledense.datasets.io as io

    path = save_atomic({"w": torch.ones(3)}, tmp_path / "ckpt.pt")

    def failing_save(obj, f):  # noqa: ANN001, ANN202 - what torch.save raises on a full disk
        f.write(b"PK\x03\x04 partial")
        raise RuntimeError("[enforce fail at inline_container.cc:672] . PytorchStreamWriter failed writing file "
                           "data/3: file write failed")

    monkeypatch.setattr(torch, "save", failing_save)
    with pytest.raises(OSError, match=f"could not write {path}: .*file write failed.*MB free.*Nothing was "
                                      "replaced"):
        save_atomic({"w": torch.zeros(3)}, path)
    monkeypatch.undo()
    assert torch.equal(load_checkpoint(path)["w"], torch.ones(3)) and [p.name for p in tmp_path.iterdir()] == \
        ["ckpt.pt"]  # the old file, no temp file left

    real = io.os.fdopen

    class Full:
        def __init__(self, f):  # noqa: ANN001
            self.f = f

        def __enter__(self):  # noqa: ANN204
            return self

        def __exit__(self, *a):  # noqa: ANN002
            self.f.close()

        def write(self, data):  # noqa: ANN001, ANN202
            raise OSError(28, "No space left on device")

    io.write_text_atomic("old", tmp_path / "results.json")
    monkeypatch.setattr(io.os, "fdopen", lambda fd, mode: Full(real(fd, mode)))
    with pytest.raises(OSError, match=f"could not write {tmp_path / 'results.json'}: No space left on device"):
        io.write_text_atomic("new", tmp_path / "results.json")
    monkeypatch.undo()
    assert (tmp_path / "results.json").read_text() == "old" and len(list(tmp_path.iterdir())) == 2


def test_eval_and_predict_write_their_results_atomically(det_checkpoint, tiny_coco, tmp_path, monkeypatch,
                                                         capsys) -> None:
    import mobiledense.datasets.io as io

    images, ann = tiny_coco["val"]
    out = tmp_path / "pred"
    argv = ["predict", "det", str(images), "--checkpoint", str(det_checkpoint), "--no-overlay", "--output-dir",
            str(out)]
    assert main(argv) == 0
    before = (out / "predictions.jsonl").read_text()
    real = io.os.fsync
    monkeypatch.setattr(io.os, "fsync", lambda fd: (_ for _ in ()).throw(OSError(28, "No space left on device")))
    assert main(argv) == 2
    assert f"could not write {out / 'predictions.jsonl'}: No space left on device" in _err(capsys)
    monkeypatch.setattr(io.os, "fsync", real)
    assert (out / "predictions.jsonl").read_text() == before  # the last good file, not a truncated one
    assert sorted(p.name for p in out.iterdir()) == ["overlays", "predictions.jsonl"]


def test_auto_resume_skips_a_truncated_checkpoint_naming_it(tmp_path: Path, caplog) -> None:
    _toy_trainer(tmp_path, eval_every=0).fit()
    ckpts = CheckpointManager(tmp_path / "checkpoints").checkpoints()
    assert len(ckpts) == 2
    newest = ckpts[-1]
    newest.write_bytes(newest.read_bytes()[:1000])  # last.pt is the same file (a hard link): both truncated
    resumed = _toy_trainer(tmp_path, epochs=3, eval_every=0)
    assert resumed.resume("auto") and resumed.epoch == 1
    assert f"cannot resume from {tmp_path / 'checkpoints' / 'last.pt'} is truncated or corrupt" in caplog.text
    for bad in (tmp_path / "checkpoints").glob("*.pt"):
        bad.write_bytes(b"")
    with pytest.raises(ValueError, match="no readable checkpoint in .* is empty \\(0 bytes\\)"):
        _toy_trainer(tmp_path, eval_every=0).resume("auto")


def test_unclear_errors_of_the_first_round(det_checkpoint, tiny_coco, tmp_path: Path, capsys) -> None:
    empty = tmp_path / "empty.pt"
    empty.write_bytes(b"")
    images, ann = tiny_coco["val"]
    assert main(["eval", "det", "--checkpoint", str(empty), "--output-dir", str(tmp_path / "e")]) == 2
    err = _err(capsys)
    assert f"{empty} is empty (0 bytes)" in err and "may contain code" not in err
    (tmp_path / "file").write_text("")
    assert main(_train_det(tiny_coco, tmp_path / "file")) == 2
    assert f"--output-dir {tmp_path / 'file'} is a file, not a folder" in _err(capsys)
    assert main(["eval", "det", "--checkpoint", str(det_checkpoint), "--output-dir", str(tmp_path / "file")]) == 2
    assert f"--output-dir {tmp_path / 'file'} is a file, not a folder" in _err(capsys)


def test_predict_seg_skips_an_image_it_cannot_segment(seg_checkpoint, tmp_path: Path, capsys) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    cv2.imwrite(str(folder / "dot.png"), np.zeros((1, 1, 3), np.uint8))
    cv2.imwrite(str(folder / "frame.png"), np.full((64, 128, 3), 90, np.uint8))
    out = tmp_path / "out"
    assert main(["predict", "seg", str(folder), "--checkpoint", str(seg_checkpoint), "--scale", "1",
                 "--output-dir", str(out)]) == 1  # at its own size the 1x1 image is too small: skipped, named
    err = _err(capsys)
    assert f"skipping {folder / 'dot.png'}" in err and "1 of 2 images could not be read or segmented" in err
    assert (out / "frame_labelIds.png").is_file() and not (out / "dot_labelIds.png").exists()
    assert main(["predict", "seg", str(folder), "--checkpoint", str(seg_checkpoint), "--output-dir",
                 str(tmp_path / "fit")]) == 0  # at the run's eval resolution both are segmented
    assert cv2.imread(str(tmp_path / "fit" / "dot_labelIds.png"), cv2.IMREAD_UNCHANGED).shape == (1, 1)


def test_synth_det_refuses_to_mix_with_an_existing_set(tmp_path: Path, capsys) -> None:
    out = tmp_path / "shapes"
    base = ["synth", "det", "--out", str(out), "--min-size", "64", "--max-size", "64"]
    assert main([*base, "--num-images", "10"]) == 0
    assert main([*base, "--num-images", "4"]) == 2
    err = _err(capsys)
    assert "already holds images/ and annotations/" in err and "(--overwrite)" in err
    assert main([*base, "--num-images", "4", "--overwrite"]) == 0
    assert len(list((out / "images").rglob("*.jpg"))) == 4  # no stale images of the first set


def test_backbone_weights_of_another_architecture_fail_first(tiny_coco, tmp_path: Path, capsys) -> None:
    from mobiledense.backbones import create_backbone

    wrong = tmp_path / "v3.pth"
    torch.save(create_backbone("mobilenet_v3_large").state_dict(), wrong)
    out = tmp_path / "r"
    assert main(_train_det(tiny_coco, out, "--model", "ssdlite_shufflenet_v2_x1_0", "--weights-backbone",
                           str(wrong))) == 2
    err = _err(capsys)
    assert f"{wrong}: its weights do not fit backbone shufflenet_v2_x1_0" in err
    assert ("missing key(s)" in err or "size mismatch" in err) and len(err) < 1500
    assert not out.exists()  # nothing written, the synthetic data neither


def test_tensorboard_is_checked_at_the_start(tmp_path: Path, monkeypatch) -> None:
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "tensorboard" else real(name, *a))
    with pytest.raises(ValueError, match="--tensorboard needs the tensorboard package: pip install tensorboard"):
        _toy_trainer(tmp_path, tensorboard=True)


# ------------------------------------------------------------------ load


@pytest.mark.slow
def test_predict_seg_on_an_8000x8000_photo_stays_under_2_gib(seg_checkpoint, tmp_path: Path, env) -> None:
    import subprocess
    import sys

    y, x = np.mgrid[0:8000, 0:8000]
    cv2.imwrite(str(tmp_path / "big.jpg"), np.stack([x % 256, y % 256, (x + y) % 256], -1).astype(np.uint8))
    del x, y
    probe = Path(__file__).resolve().parent / "rss_probe.py"
    proc = subprocess.run([sys.executable, str(probe), str(tmp_path / "rss.json"), "--", "predict", "seg",
                           str(tmp_path / "big.jpg"), "--checkpoint", str(seg_checkpoint), "--output-dir",
                           str(tmp_path / "out")], capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads((tmp_path / "rss.json").read_text())
    assert result["peak_rss_mib"] < 2048, result
    labels = cv2.imread(str(tmp_path / "out" / "big_labelIds.png"), cv2.IMREAD_UNCHANGED)
    assert labels.shape == (8000, 8000)
