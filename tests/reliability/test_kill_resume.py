"""A training run SIGKILLed mid-epoch resumes from its last checkpoint to the very same weights.

Real processes, the real CLI: ``train det`` on 24 synthetic images (6 steps per epoch, a
checkpoint every 2 steps) is killed with SIGKILL as soon as the step-8 checkpoint (epoch 2,
batch 2) exists, restarted with the same command (``--resume auto``), and compared tensor by
tensor with an uninterrupted run. The killed run uses 2 DataLoader workers and the reference
none: sample order and augmentation do not depend on the worker count.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from mobiledense.tools.engine import CheckpointManager, load_checkpoint

pytestmark = pytest.mark.slow


def _train(tiny_coco, out: Path, workers: int) -> list[str]:
    images, ann = tiny_coco["train"]
    return [sys.executable, "-m", "mobiledense.tools.cli", "train", "det", "--train-images", str(images),
            "--train-ann", str(ann), "--model", "ssdlite_mobilenet_v3_small", "--size", "96",
            "--epochs", "3", "--batch-size", "4", "--warmup-iters", "2", "--ckpt-every-steps", "2",
            "--keep-checkpoints", "2", "--eval-every", "0", "--workers", str(workers), "--deterministic",
            "--seed", "3", "--no-progress", "--output-dir", str(out)]


def _is_latest(path: Path) -> bool:
    """``path`` exists and ``last.pt`` is already linked to it (the manager's last write)."""
    try:
        return path.samefile(path.parent / "last.pt")
    except FileNotFoundError:
        return False


def _wait_for(path: Path, proc: subprocess.Popen, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not _is_latest(path):
        assert proc.poll() is None, f"training ended before {path.name} appeared: {proc.communicate()[1][-3000:]}"
        assert time.monotonic() < deadline, f"{path.name} did not appear within {timeout} s"
        time.sleep(0.02)


def test_sigkill_mid_epoch_then_resume_gives_identical_weights(tiny_coco, tmp_path: Path, env) -> None:
    ref = subprocess.run(_train(tiny_coco, tmp_path / "ref", workers=0), capture_output=True, text=True,
                         timeout=300, env=env)
    assert ref.returncode == 0, ref.stderr[-3000:]

    cut = tmp_path / "cut"
    proc = subprocess.Popen(_train(tiny_coco, cut, workers=2), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env)
    try:
        _wait_for(cut / "checkpoints" / "checkpoint_00000008.pt", proc, timeout=240)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.communicate()
    assert proc.returncode == -signal.SIGKILL
    state = load_checkpoint(CheckpointManager(cut / "checkpoints").latest())
    assert 8 <= state["step"] < 18 and state["batch_in_epoch"] > 0, "not a mid-epoch checkpoint"

    resumed = subprocess.run(_train(tiny_coco, cut, workers=2), capture_output=True, text=True, timeout=300,
                             env=env)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resumed from {cut / 'checkpoints' / 'last.pt'} at epoch {state['epoch']}, step {state['step']}" \
        in resumed.stderr

    a, b = (load_checkpoint(d / "checkpoints" / "last.pt") for d in (tmp_path / "ref", cut))
    assert a["step"] == b["step"] == 18
    for key, tensor in a["model"].items():
        assert torch.equal(tensor, b["model"][key]), key
    assert a["optimizer"]["state"].keys() == b["optimizer"]["state"].keys()
    for i, s in a["optimizer"]["state"].items():  # whatever the optimiser keeps (momentum, Adam moments)
        assert s.keys() == b["optimizer"]["state"][i].keys(), i
        for name, value in s.items():
            other = b["optimizer"]["state"][i][name]
            assert torch.equal(value, other) if isinstance(value, torch.Tensor) else value == other, (i, name)
    assert torch.equal(a["torch_rng"], b["torch_rng"])
    assert len(CheckpointManager(cut / "checkpoints", keep=2).checkpoints()) == 2  # keep-last-k
    epochs = [line.split(",")[0] for line in (cut / "log.csv").read_text().splitlines()[1:]]
    assert len(epochs) == 3  # one row per epoch, none duplicated by the restart


_WRITER = textwrap.dedent("""
    import sys, torch
    from mobiledense.tools.engine import save_atomic
    path, n = sys.argv[1], 0
    save_atomic({"version": torch.tensor(0), "w": torch.zeros(4_000_000)}, path)
    print("ready", flush=True)
    while True:
        n += 1
        save_atomic({"version": torch.tensor(n), "w": torch.full((4_000_000,), float(n))}, path)
""")


def test_sigkill_while_writing_a_checkpoint_never_leaves_a_torn_file(tmp_path: Path, env) -> None:
    """16 MB checkpoints rewritten in a loop, killed at arbitrary instants: the file always loads."""
    path = tmp_path / "ckpt.pt"
    for delay in (0.05, 0.21, 0.43):
        proc = subprocess.Popen([sys.executable, "-c", _WRITER, str(path)], stdout=subprocess.PIPE, text=True,
                                env=env)
        try:
            assert proc.stdout.readline().strip() == "ready"
            time.sleep(delay)
            os.kill(proc.pid, signal.SIGKILL)
        finally:
            proc.kill()
            proc.wait()
        state = load_checkpoint(path)
        v = int(state["version"])
        assert torch.equal(state["w"], torch.full((4_000_000,), float(v))), "torn checkpoint"
    # A kill between write and rename may leave a hidden temp file; checkpoints ignore it.
    leftovers = [p.name for p in tmp_path.iterdir() if p != path]
    assert all(n.startswith(".ckpt.pt.") and n.endswith(".tmp") for n in leftovers), leftovers
