"""Faults inside a training run: DataLoader workers that die, bad samples in workers, stale temp files.

In-process skipping of bad samples, non-finite losses and resume are tested in
tests/tools/test_engine.py; here the multi-process cases.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import Dataset, get_worker_info

from mobiledense.tools.engine import TrainConfig, Trainer, TrainingAborted


class Regression(Dataset):
    """y = A x with numpy-drawn jitter; ``crash`` indices kill the worker process reading them,
    ``bad`` indices raise. ``crash_once`` (a path): crash only while that file does not exist."""

    def __init__(self, crash: set[int] = frozenset(), bad: set[int] = frozenset(),
                 crash_once: Path | None = None) -> None:
        g = torch.Generator().manual_seed(0)
        self.x = torch.randn(40, 8, generator=g)
        self.y = self.x @ torch.randn(8, 3, generator=g)
        self.crash, self.bad, self.crash_once = crash, bad, crash_once

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int):  # noqa: ANN204
        if i in self.crash and get_worker_info() is not None:
            if self.crash_once is None or not self.crash_once.exists():
                if self.crash_once is not None:
                    self.crash_once.touch()
                os._exit(3)  # as a segfaulting decoder or the OOM killer would: no exception, no cleanup
        if i in self.bad:
            raise OSError(f"sample {i} is corrupt")
        return self.x[i] + torch.from_numpy(np.random.normal(0, 0.1, 8).astype("float32")), self.y[i]


def _collate(samples):  # noqa: ANN001, ANN202
    xs, ys = zip(*samples)
    return torch.stack(xs), torch.stack(ys)


def _mse(model, x, y):  # noqa: ANN001, ANN202
    return {"mse": nn.functional.mse_loss(model(x), y)}


def _trainer(out: Path, data: Dataset, **kw) -> Trainer:
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(8, 16), nn.Dropout(0.2), nn.ReLU(), nn.Linear(16, 3))
    cfg = TrainConfig(epochs=2, batch_size=4, lr=0.05, warmup_iters=2, workers=2, eval_every=0,
                      keep_checkpoints=1).replace(**kw)
    return Trainer(model, data, _collate, _mse, cfg, out, progress=False)


def _same_weights(a: Trainer, b: Trainer) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a.model.state_dict().values(), b.model.state_dict().values()))


def _in_subprocess(body: str, tmp_path: Path) -> None:
    """Run ``body(tmp_path)`` of this file in a fresh interpreter.

    A worker killed with ``os._exit`` makes torch's SIGCHLD handler raise in whatever the
    process is doing at that instant; under pytest-xdist that can be the worker's own
    messaging, which would crash the test session instead of failing one test.
    """
    code = ("import runpy, sys; from pathlib import Path; "
            f"runpy.run_path({__file__!r})[{body!r}](Path(sys.argv[1]))")
    proc = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, (proc.stdout[-3000:], proc.stderr[-3000:])


def _dead_worker_body(tmp_path: Path) -> None:
    import logging

    records: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda r: records.append(r.getMessage())  # type: ignore[method-assign]
    logging.getLogger("mobiledense").addHandler(handler)
    logging.getLogger("mobiledense").setLevel(logging.INFO)
    ref = _trainer(tmp_path / "ref", Regression())
    ref.fit()
    t = _trainer(tmp_path / "crash", Regression(crash={13}, crash_once=tmp_path / "crashed"))
    metrics = t.fit()
    assert (tmp_path / "crashed").exists(), "the worker never crashed: the test tests nothing"
    assert metrics["worker_restarts"] == 1 and t.step == ref.step == 20
    assert _same_weights(ref, t)  # no batch lost or repeated
    text = "\n".join(records)
    assert "DataLoader worker" in text and "restarting the data loader at epoch" in text, text


def _always_dies_body(tmp_path: Path) -> None:
    t = _trainer(tmp_path, Regression(crash={13}), max_worker_restarts=2)
    with pytest.raises(TrainingAborted, match=r"DataLoader workers died 3 times \(limit max_worker_restarts=2; "
                                              r"last at epoch 1.*rerun with --workers 0"):
        t.fit()


def test_a_dead_worker_is_replaced_and_the_run_is_unchanged(tmp_path: Path) -> None:
    _in_subprocess("_dead_worker_body", tmp_path)


def test_a_worker_that_always_dies_aborts_with_a_message(tmp_path: Path) -> None:
    _in_subprocess("_always_dies_body", tmp_path)


def test_a_broken_worker_channel_is_a_worker_crash(tmp_path: Path, monkeypatch) -> None:
    """A worker that dies while handing over a batch's shared-memory handle surfaces as a
    ``ConnectionResetError`` from the socket before the loader notices the death: it is
    handled as a crash (loader rebuilt at the first untrained batch), not a failed run."""
    from mobiledense.tools import engine

    ref = _trainer(tmp_path / "ref", Regression(), workers=0)
    ref.fit()
    real_loader, broken = engine.Trainer._loader, []

    def flaky_loader(self):  # noqa: ANN001, ANN202
        loader = real_loader(self)
        if self.epoch == 1 and not broken:
            def failing():  # noqa: ANN202
                for i, batch in enumerate(loader):
                    if i == 2:
                        broken.append(self.batch_in_epoch)
                        raise ConnectionResetError(104, "Connection reset by peer")
                    yield batch
            return failing()
        return loader

    monkeypatch.setattr(engine.Trainer, "_loader", flaky_loader)
    t = _trainer(tmp_path / "broken", Regression(), workers=2)
    metrics = t.fit()
    assert broken == [2] and metrics["worker_restarts"] == 1 and t.step == ref.step == 20
    assert _same_weights(ref, t)  # the two batches trained before the break are not trained again

    t = _trainer(tmp_path / "in-process", Regression(), workers=0)
    broken.clear()
    with pytest.raises(ConnectionResetError):  # no workers: a real error of the data, not a crash
        t.fit()


def test_torch_sigchld_handler_is_taken_back_out() -> None:
    """torch's handler raises a dead worker's error wherever the main thread is (mid optimiser
    step); the engine's loaders leave the process without it, so the error comes from ``next()``."""
    import signal

    from torch.utils.data import DataLoader

    from mobiledense.tools.engine.data import iter_without_async_worker_errors

    batches = list(iter_without_async_worker_errors(DataLoader(list(range(8)), batch_size=2, num_workers=2)))
    assert [b.tolist() for b in batches] == [[0, 1], [2, 3], [4, 5], [6, 7]]
    handler = signal.getsignal(signal.SIGCHLD)
    assert getattr(handler, "__module__", "") != "torch.utils.data._utils.signal_handling", handler


def test_bad_samples_in_workers_are_skipped_and_counted(tmp_path: Path) -> None:
    """The worker logs each skip (to its stderr); the main process counts them from the batches."""
    t = _trainer(tmp_path, Regression(bad={3, 17}))
    assert t.fit()["bad_samples"] == 4  # 2 samples x 2 epochs
    t = _trainer(tmp_path / "strict", Regression(bad={3, 17}), max_bad_samples=1)
    with pytest.raises(TrainingAborted, match=r"2 training samples failed to load \(limit max_bad_samples=1\)"):
        t.fit()


def test_stale_temp_files_of_a_killed_save_are_removed(tmp_path: Path) -> None:
    stale = tmp_path / "checkpoints" / ".checkpoint_00000004.pt.abc123.tmp"
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"half a checkpoint")
    _trainer(tmp_path, Regression(), epochs=1, workers=0).fit()
    assert not stale.exists()
    assert sorted(p.name for p in stale.parent.iterdir()) == ["checkpoint_00000010.pt", "last.pt"]


def test_config_limits_are_validated() -> None:
    with pytest.raises(ValueError, match="max_worker_restarts must be >= 0, got -1"):
        TrainConfig.parse(max_worker_restarts=-1)
