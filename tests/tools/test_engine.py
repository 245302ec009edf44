"""Training loop: config validation, LR schedule, sampler, exact resume, non-finite guard."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.data import Dataset

from mobiledense.heads import model_spec
from mobiledense.tools.engine import CheckpointManager, load_checkpoint, save_atomic
from mobiledense.tools.engine import CityscapesDataSpec, ResumableSampler, RunSpec, TrainConfig, Trainer


class NoisyRegression(Dataset):
    """y = A x + noise, with random per-sample augmentation drawn from numpy (seeded by the engine)."""

    def __init__(self, n: int = 40, bad: set[int] = frozenset()) -> None:
        g = torch.Generator().manual_seed(0)
        self.x = torch.randn(n, 8, generator=g)
        self.y = self.x @ torch.randn(8, 3, generator=g)
        self.bad = bad
        self.transforms = None

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int):
        import numpy as np

        if i in self.bad:
            raise OSError(f"sample {i} is corrupt")
        jitter = torch.from_numpy(np.random.normal(0, 0.1, 8).astype("float32"))
        return self.x[i] + jitter, self.y[i]


def collate(samples):
    xs, ys = zip(*samples)
    return torch.stack(xs), torch.stack(ys)


def mse(model, x, y):
    return {"mse": nn.functional.mse_loss(model(x), y)}


def make_model() -> nn.Module:
    torch.manual_seed(1)
    return nn.Sequential(nn.Linear(8, 16), nn.Dropout(0.2), nn.ReLU(), nn.Linear(16, 3))


def cfg(**kw) -> TrainConfig:
    return TrainConfig.parse(**{**dict(epochs=3, batch_size=4, lr=0.05, warmup_iters=3, workers=0, eval_every=0,
                                       log_every=1000, keep_checkpoints=2), **kw})


def trainer(tmp: Path, model: nn.Module | None = None, data: Dataset | None = None, spec: RunSpec | None = None,
            allow_changes: tuple[str, ...] = (), **kw) -> Trainer:
    return Trainer(model or make_model(), data or NoisyRegression(), collate, mse, cfg(**kw), tmp,
                   spec=spec, allow_changes=allow_changes, progress=False)


def test_config_errors_name_the_field() -> None:
    with pytest.raises(ValueError, match="lr must be > 0.*batch_size must be > 0|batch_size must be > 0.*lr must be > 0"):
        cfg(lr=-1.0, batch_size=0)
    with pytest.raises(ValueError, match="optimizer must be 'sgd', 'adamw' or 'rmsprop', got 'lamb'"):
        cfg(optimizer="lamb")


def test_lr_schedule_warmup_cosine_poly() -> None:
    c = cfg(lr=1.0, warmup_iters=10, warmup_factor=0.1)
    assert c.lr_at(0, 100) == pytest.approx(0.1)
    assert c.lr_at(10, 100) == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.1)))
    assert c.lr_at(100, 100) == pytest.approx(0.0)
    p = cfg(lr=1.0, warmup_iters=0, schedule="poly", poly_power=0.9)
    assert p.lr_at(50, 100) == pytest.approx(0.5 ** 0.9)


def test_sampler_is_seeded_sharded_and_resumable() -> None:
    a = ResumableSampler(10, 2, seed=3)
    a.set_epoch(1)
    full = list(a)
    a.set_epoch(1, start_batch=2)
    assert list(a) == full[4:]
    a.set_epoch(2)
    assert list(a) != full  # a new permutation each epoch
    ranks = [ResumableSampler(10, 2, seed=3, rank=r, world_size=2) for r in range(2)]
    for r in ranks:
        r.set_epoch(1)
    shards = [list(r) for r in ranks]
    assert not set(shards[0]) & set(shards[1]) and len(shards[0]) == len(shards[1]) == 4


def test_interrupted_run_resumes_to_identical_weights(tmp_path: Path) -> None:
    ref = trainer(tmp_path / "ref")
    ref.fit()

    # Run with mid-epoch checkpoints, stop "abruptly" after 1.5 epochs, resume in a new Trainer.
    first = trainer(tmp_path / "cut", ckpt_every_steps=3)
    assert first.steps_per_epoch == 10
    stop_at = 15

    class Stop(Exception):
        pass

    original = first._accumulate

    def step_then_maybe_stop(*a, **kw):
        if first.step == stop_at:
            raise Stop
        return original(*a, **kw)

    first._accumulate = step_then_maybe_stop
    with pytest.raises(Stop):
        first.fit()
    latest = CheckpointManager(tmp_path / "cut" / "checkpoints").latest()
    assert load_checkpoint(latest)["step"] == 15

    resumed = trainer(tmp_path / "cut", ckpt_every_steps=3)
    assert resumed.resume("auto")
    assert resumed.step == 15 and resumed.epoch == 1 and resumed.batch_in_epoch == 5
    resumed.fit()
    for (k, a), b in zip(ref.model.state_dict().items(), resumed.model.state_dict().values()):
        assert torch.equal(a, b), k
    assert len(CheckpointManager(tmp_path / "cut" / "checkpoints").checkpoints()) == 2  # keep=2


def test_ema_averages_every_step_and_resumes_exactly(tmp_path: Path) -> None:
    """EMA: ema = d * ema + (1 - d) * weights after every optimiser step (the first step copies),
    buffers included; saved as ``model_ema``; a resumed run continues the average bit for bit."""
    from mobiledense.tools.engine.hooks import HookBase

    seen: list[dict[str, torch.Tensor]] = []

    class Record(HookBase):
        def after_step(self, out) -> None:  # noqa: ANN001
            seen.append({k: v.detach().clone() for k, v in self.trainer.model.state_dict().items()})

    d = 0.6
    ref = trainer(tmp_path / "ref", epochs=2, ema=True, ema_decay=d)
    ref.hooks.append(Record())
    ref.hooks[-1].trainer = ref
    ref.fit()
    assert len(seen) == ref.step == 20
    expected = dict(seen[0])
    for weights in seen[1:]:
        expected = {k: d * expected[k] + (1 - d) * w for k, w in weights.items()}
    ema = ref.ema.module.state_dict()
    for k, v in expected.items():
        torch.testing.assert_close(ema[k], v, rtol=1e-5, atol=1e-6)
    assert not torch.equal(ema["0.weight"], ref.model.state_dict()["0.weight"])  # an average, not the weights
    saved = load_checkpoint(CheckpointManager(tmp_path / "ref" / "checkpoints").latest())
    for k, v in saved["model_ema"].items():
        assert torch.equal(v, ema[k]), k
    assert saved["ema_updates"] == 20

    cut = trainer(tmp_path / "cut", epochs=2, ema=True, ema_decay=d)

    class Stop(Exception):
        pass

    original = cut._accumulate

    def stop_after_epoch_one(*a, **kw):
        if cut.step == 10:
            raise Stop
        return original(*a, **kw)

    cut._accumulate = stop_after_epoch_one
    with pytest.raises(Stop):
        cut.fit()
    resumed = trainer(tmp_path / "cut", epochs=2, ema=True, ema_decay=d)
    assert resumed.resume("auto") and resumed.step == 10
    resumed.fit()
    for k, v in resumed.ema.module.state_dict().items():
        assert torch.equal(v, ema[k]), k  # continued the average (a fresh count would copy the weights)


def test_nonfinite_losses_are_skipped_then_abort(tmp_path: Path) -> None:
    calls = {"n": 0}

    def sometimes_nan(model, x, y):
        calls["n"] += 1
        loss = nn.functional.mse_loss(model(x), y)
        return {"mse": loss * float("nan") if calls["n"] in (2, 3) else loss}

    t = Trainer(make_model(), NoisyRegression(), collate, sometimes_nan, cfg(epochs=1), tmp_path,
                progress=False)
    before = [p.clone() for p in t.model.parameters()]
    m = t.fit()
    assert m["nonfinite_total"] == 2 and all(torch.isfinite(p).all() for p in t.model.parameters())
    assert any(not torch.equal(a, b) for a, b in zip(before, t.model.parameters()))

    always_nan = lambda model, x, y: {"mse": model(x).sum() * float("nan")}  # noqa: E731
    t = Trainer(make_model(), NoisyRegression(), collate, always_nan, cfg(max_nonfinite=3), tmp_path / "b",
                progress=False)
    with pytest.raises(FloatingPointError, match="3 non-finite losses in a row"):
        t.fit()


def test_bad_samples_are_skipped_and_counted(tmp_path: Path) -> None:
    t = trainer(tmp_path, data=NoisyRegression(bad={0, 7}), epochs=1)
    assert t.fit()["bad_samples"] == 2
    t = trainer(tmp_path / "strict", data=NoisyRegression(bad={0, 7, 9}), epochs=1, max_bad_samples=1)
    with pytest.raises(RuntimeError, match="failed to load"):
        t.fit()


def test_checkpoints_are_atomic_and_safe(tmp_path: Path) -> None:
    path = save_atomic({"w": torch.ones(2)}, tmp_path / "a.pt")
    assert torch.equal(load_checkpoint(path)["w"], torch.ones(2))
    assert [p.name for p in tmp_path.iterdir()] == ["a.pt"]  # no temp file left

    class Payload:
        def __reduce__(self):
            return (print, ("pwned",))

    torch.save({"x": Payload()}, tmp_path / "evil.pt")
    with pytest.raises(ValueError, match="refusing to load"):
        load_checkpoint(tmp_path / "evil.pt")
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        load_checkpoint(tmp_path / "missing.pt")


def _spec(tmp: Path, backbone: str = "mobilenet_v3_small", **recipe) -> RunSpec:
    """A run spec for the toy regression (the trainer stores and compares it; it never builds from it)."""
    return RunSpec(model=model_spec(f"lraspp_{backbone}", num_classes=3),
                   data=CityscapesDataSpec(root=str(tmp)), recipe=cfg(**recipe))


def test_resume_refuses_a_changed_spec_naming_every_field(tmp_path: Path) -> None:
    t = trainer(tmp_path, epochs=1, spec=_spec(tmp_path, epochs=1))
    t.fit()
    assert RunSpec.load(tmp_path / "config.json") == t.spec  # config.json is the spec, and round-trips
    assert load_checkpoint(t.ckpts.latest())["spec"] == t.spec.to_dict()
    changed = _spec(tmp_path, "mobilenet_v2", epochs=2, lr=0.1, seed=3, workers=0)
    with pytest.raises(ValueError) as e:
        trainer(tmp_path, epochs=2, lr=0.1, seed=3, spec=changed).resume("auto")
    msg = str(e.value)
    for expected in ("model.backbone.name: 'mobilenet_v3_small' -> 'mobilenet_v2'", "recipe.epochs: 1 -> 2",
                     "recipe.lr: 0.05 -> 0.1", "recipe.seed: 0 -> 3", "--allow-change"):
        assert expected in msg, msg
    # Operational fields may change; named identity fields too (--allow-change).
    more = trainer(tmp_path, epochs=2, keep_checkpoints=3, spec=_spec(tmp_path, epochs=2, keep_checkpoints=3),
                   allow_changes=("epochs",))
    assert more.resume("auto") and more.epoch == 1
    more.fit()
    assert more.epoch == 2


def test_precision_actually_used_is_what_the_spec_records(tmp_path: Path) -> None:
    """``auto`` is fp32 on CPU (fp16 autocast needs CUDA, which the spec would say); bf16 autocast runs on CPU."""
    assert trainer(tmp_path / "auto", epochs=1).cfg.precision == "fp32"
    with pytest.raises(ValueError, match="precision fp16 needs CUDA"):
        trainer(tmp_path / "fp16", epochs=1, precision="fp16")
    t = trainer(tmp_path / "bf16", epochs=1, precision="bf16", spec=_spec(tmp_path, epochs=1, precision="bf16"))
    metrics = t.fit()
    assert t.autocast_dtype == torch.bfloat16 and math.isfinite(metrics["mse"])
    assert RunSpec.load(tmp_path / "bf16" / "config.json").recipe.precision == "bf16"


def test_gradient_accumulation_equals_the_larger_batch(tmp_path: Path) -> None:
    """4 x 2 accumulated batches = one batch of 8 (same samples, same LR per step): the same weights, up to
    float rounding (no BN or dropout in this model), and a run resumed inside an epoch still matches."""
    def linear() -> nn.Module:
        torch.manual_seed(1)
        return nn.Linear(8, 3)

    big = trainer(tmp_path / "big", model=linear(), batch_size=8, epochs=2)
    big.fit()
    small = trainer(tmp_path / "acc", model=linear(), batch_size=4, accumulate_batches=2, epochs=2,
                    ckpt_every_steps=2)
    assert small.steps_per_epoch == big.steps_per_epoch == 5 and small.batches_per_epoch == 10
    small.fit()
    for (k, a), b in zip(big.model.state_dict().items(), small.model.state_dict().values()):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5, msg=k)
    cut = trainer(tmp_path / "cut", model=linear(), batch_size=4, accumulate_batches=2, epochs=2, ckpt_every_steps=2,
                  keep_checkpoints=10)
    cut.fit()  # then resume from the mid-epoch checkpoint of step 8 (3 steps = 6 batches into epoch 2)
    mid = [c for c in CheckpointManager(tmp_path / "cut" / "checkpoints").checkpoints() if c.name.endswith("08.pt")]
    assert mid and load_checkpoint(mid[0])["batch_in_epoch"] == 6  # windows end on even batches only
    again = trainer(tmp_path / "again", model=linear(), batch_size=4, accumulate_batches=2, epochs=2)
    again.resume(mid[0])
    again.fit()
    for (k, a), b in zip(small.model.state_dict().items(), again.model.state_dict().values()):
        assert torch.equal(a, b), k


def test_sync_bn_and_compile_are_refused_where_they_cannot_run(tmp_path: Path) -> None:
    auto = cfg(sync_bn="auto")
    assert auto.resolve(torch.device("cpu"), 2, "seg").sync_bn == "off"  # CPU: torch's SyncBatchNorm is GPU-only
    assert auto.resolve(torch.device("cuda"), 2, "seg").sync_bn == "on"
    assert auto.resolve(torch.device("cuda"), 2, "det").sync_bn == "off"
    assert auto.resolve(torch.device("cuda"), 1, "seg").sync_bn == "off"
    with pytest.raises(ValueError, match="compile is for CUDA training steps"):
        trainer(tmp_path, compile=True)
