"""DDP on CPU (gloo) under torchrun: ranks agree, rank 0 writes, and one failing rank ends them all.

``ddp_job.py`` is a tiny Trainer job with test-only fault injection; the last two tests run the
real ``train det`` CLI with 2 processes.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mobiledense.tools.engine import CheckpointManager, load_checkpoint

HERE = Path(__file__).resolve().parent
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--standalone"]
#: A failure must end every rank well before this (the collective timeout is 60 s in ddp_job.py and
#: 600 s in the CLI: passing means the peers noticed the failure, not that they timed out).
NO_HANG_S = 90


def _torchrun(args: list[str], env: dict[str, str], timeout: float = 240) -> tuple[subprocess.CompletedProcess, float]:
    start = time.monotonic()
    proc = subprocess.run([*TORCHRUN, *args], capture_output=True, text=True, timeout=timeout, env=env)
    return proc, time.monotonic() - start


def test_ranks_agree_and_rank0_writes_loadable_checkpoints(tmp_path: Path, env) -> None:
    proc, _ = _torchrun([str(HERE / "ddp_job.py"), str(tmp_path)], env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    assert [r["world"] for r in ranks] == [2, 2]
    assert ranks[0]["step"] == ranks[1]["step"] == 24  # 64 samples / (2 ranks x 4) x 3 epochs
    assert ranks[0]["digest"] == ranks[1]["digest"], "ranks ended with different parameters"
    ckpts = CheckpointManager(tmp_path / "checkpoints")
    assert [p.name for p in ckpts.checkpoints()] == ["checkpoint_00000020.pt", "checkpoint_00000024.pt"]
    state = load_checkpoint(ckpts.latest())
    assert state["step"] == 24 and state["epoch"] == 3
    sys.path.insert(0, str(HERE))
    try:
        from ddp_job import digest
    finally:
        sys.path.remove(str(HERE))
    params = {k: v for k, v in state["model"].items() if "running" not in k and "num_batches" not in k}
    assert digest(params) == ranks[0]["digest"]  # the checkpoint holds the agreed parameters


def test_a_rank_failing_mid_step_ends_all_ranks(tmp_path: Path, env) -> None:
    proc, elapsed = _torchrun([str(HERE / "ddp_job.py"), str(tmp_path)],
                              {**env, "MOBILEDENSE_FAULT_RANK": "1", "MOBILEDENSE_FAULT_STEP": "3"})
    assert proc.returncode != 0
    assert elapsed < NO_HANG_S, f"ranks took {elapsed:.0f} s to stop"
    err = proc.stderr
    assert "RuntimeError: injected fault on rank 1 at step 3" in err
    assert "Root Cause" in err and "rank      : 1" in err  # torchrun names the rank that failed first
    assert not list(tmp_path.glob("rank*.json"))  # no rank finished


def _train_det(tiny_coco_train: tuple[Path, Path], out: Path, *extra: str) -> list[str]:
    images, ann = tiny_coco_train
    return ["-m", "mobiledense.tools.cli", "train", "det", "--train-images", str(images), "--train-ann", str(ann),
            "--model", "ssdlite_mobilenet_v3_small", "--size", "96", "--epochs", "1", "--batch-size", "4",
            "--warmup-iters", "1", "--eval-every", "0", "--workers", "0", "--no-progress",
            "--output-dir", str(out), *extra]


@pytest.mark.slow
def test_train_det_cli_with_two_processes(tiny_coco, tmp_path: Path, env) -> None:
    from mobiledense.tools.engine.tasks import load_trained_model

    proc, _ = _torchrun(_train_det(tiny_coco["train"], tmp_path), env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    state = load_checkpoint(tmp_path / "checkpoints" / "last.pt")
    assert state["step"] == 3  # 24 images / (2 ranks x 4)
    model, spec = load_trained_model(tmp_path / "checkpoints" / "last.pt", "det")
    assert spec.model.name == "ssdlite_mobilenet_v3_small" and model.num_classes == 7
    assert spec.recipe.world_size == 2 and spec.recipe.precision == "fp32"  # what the run actually used
    assert proc.stderr.count("epoch 1: ") == 1  # rank 1 logs warnings only


@pytest.mark.slow
def test_bad_data_on_one_rank_stops_every_rank_with_its_message(tiny_coco, tmp_path: Path, env) -> None:
    """A corrupt image in rank 1's first batch with --max-bad-samples 0: rank 1 aborts, rank 0 follows."""
    from mobiledense.datasets import CocoDetection
    from mobiledense.tools.engine import ResumableSampler

    images, ann = tiny_coco["train"]
    shutil.copytree(images, tmp_path / "images")
    dataset = CocoDetection(tmp_path / "images", ann)
    sampler = ResumableSampler(len(dataset), 4, seed=0, rank=1, world_size=2)
    sampler.set_epoch(0)
    bad = dataset.image_path(next(iter(sampler)))
    bad.write_bytes(b"")

    proc, elapsed = _torchrun(_train_det((tmp_path / "images", ann), tmp_path / "run", "--max-bad-samples", "0"),
                              env)
    assert proc.returncode != 0
    assert elapsed < NO_HANG_S, f"ranks took {elapsed:.0f} s to stop"
    err = proc.stderr
    assert f"image file is empty (0 bytes): {bad}" in err  # the skip warning names the file
    assert "error: [rank 1] 1 training samples failed to load (limit max_bad_samples=0)" in err
    # rank 0 either says why it stops or is ended by torchrun first; it never hangs
    assert "error: [rank 0] stopping: another process of the distributed run failed" in err or \
        "Signal 15 (SIGTERM) received" in err
    assert "Root Cause" in err and "rank      : 1" in err and "exitcode  : 2" in err


@pytest.mark.slow
def test_train_seg_cli_with_two_processes(tmp_path: Path, env) -> None:
    """``train seg`` under torchrun: both ranks write the synthetic set race-free, train, rank 0 evaluates."""
    from mobiledense.tools.engine.tasks import load_trained_model

    args = ["-m", "mobiledense.tools.cli", "train", "seg", "--backbone", "mobilenet_v3_small",
            "--synthetic-frames", "8", "--base-size", "64", "128", "--crop", "64", "128", "--epochs", "1",
            "--batch-size", "2", "--warmup-iters", "1", "--eval-every", "1", "--workers", "0", "--no-progress",
            "--output-dir", str(tmp_path)]
    proc, _ = _torchrun(args, env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    state = load_checkpoint(tmp_path / "checkpoints" / "last.pt")
    assert state["step"] == 2  # 8 frames / (2 ranks x 2)
    model, spec = load_trained_model(tmp_path / "checkpoints" / "last.pt", "seg")
    assert spec.model.backbone.name == "mobilenet_v3_small" and model.num_classes == 19
    assert spec.recipe.world_size == 2
    rows = (tmp_path / "log.csv").read_text().splitlines()
    assert len(rows) == 2 and "mIoU" in rows[0]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".synthetic")]  # losers cleaned up


@pytest.mark.slow
def test_train_cls_cli_with_two_processes(tmp_path: Path, env) -> None:
    """``train cls`` under torchrun: both ranks cut the synthetic objects race-free, the sampler shards them,
    rank 0 evaluates top-1 and writes a checkpoint ``eval cls`` reads."""
    from mobiledense.tools.engine.tasks import load_trained_model

    args = ["-m", "mobiledense.tools.cli", "train", "cls", "--backbone", "mobilenet_v3_small",
            "--synthetic-images", "16", "--size", "32", "32", "--epochs", "1", "--batch-size", "4",
            "--eval-every", "1", "--workers", "0", "--no-progress", "--output-dir", str(tmp_path)]
    proc, _ = _torchrun(args, env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    state = load_checkpoint(tmp_path / "checkpoints" / "last.pt")
    _, spec = load_trained_model(tmp_path / "checkpoints" / "last.pt", "cls")
    train_images = sum(1 for p in Path(spec.data.train).rglob("*.png"))
    assert state["step"] == -(-train_images // 8) or state["step"] == train_images // 8  # 2 ranks x 4 per step
    assert spec.recipe.world_size == 2 and spec.model.num_classes == 6
    rows = (tmp_path / "log.csv").read_text().splitlines()
    assert len(rows) == 2 and "top1" in rows[0]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".synthetic")]


@pytest.mark.slow
def test_multi_node_rendezvous_endpoint(tmp_path: Path, env) -> None:
    """The multi-node launch of the README (``--nnodes --rdzv-backend c10d --rdzv-endpoint``), here as
    2 "nodes" of 1 process each on this machine, both joining one c10d rendezvous."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc-per-node", "1",
           "--rdzv-backend", "c10d", "--rdzv-endpoint", f"127.0.0.1:{port}", "--rdzv-id", "mobiledense-test",
           str(HERE / "ddp_job.py"), str(tmp_path)]
    nodes = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
             for _ in range(2)]
    outputs = [n.communicate(timeout=240) for n in nodes]
    assert all(n.returncode == 0 for n in nodes), [o[1][-2000:] for o in outputs]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    assert [r["world"] for r in ranks] == [2, 2] and ranks[0]["digest"] == ranks[1]["digest"]
