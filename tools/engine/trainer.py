"""The training loop shared by ``train det`` and ``train seg``.

What it guarantees:

* **Exact resume.** Sample order comes from a per-epoch seeded permutation
  (:class:`ResumableSampler`) and every sample's augmentation from a seed
  derived from ``(seed, epoch, index)`` (:class:`SeededDataset`), so neither
  depends on worker count or on where a run was interrupted. The LR is a pure
  function of the step. A checkpoint stores model, optimiser, scaler, EMA,
  torch RNG and the position inside the epoch; resuming from it continues the
  same trajectory an uninterrupted run takes.
* **No silent garbage.** A non-finite loss skips the step (counted, logged);
  ``max_nonfinite`` in a row aborts with a message. A sample that fails to load
  is skipped (counted, its error logged) up to ``max_bad_samples``. A DataLoader
  worker that dies (OOM killer, a crash in a decoder) is replaced: the loader is
  rebuilt at the first batch not yet trained on, so no sample is lost and the
  trajectory is unchanged; after ``max_worker_restarts`` the run stops with a
  message (the checkpoints let it resume).
* **DDP.** Started with ``torchrun``, it shards the sampler, all-reduces the
  skip decision so ranks never diverge, and only rank 0 writes.
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from .checkpoint import CheckpointManager, RunLock, load_checkpoint, write_text_atomic
from .data import (LOADER_ERRORS, ResumableSampler, SeededDataset, crash_summary, is_worker_crash,
                   iter_without_async_worker_errors, mix_seed, skip_none_collate, worker_init)
from .distributed import init_distributed, is_main_process
from .hooks import HookBase, default_hooks
from .recipe import TrainConfig
from .spec import RunSpec, identity_changes

__all__ = ["Trainer", "TrainingAborted"]

log = logging.getLogger("mobiledense.train")


class TrainingAborted(RuntimeError):
    """Training stopped on purpose (too many bad samples or worker crashes); the message says why."""



def _to_device(obj: Any, device: torch.device, channels_last: bool = False) -> Any:
    if isinstance(obj, Tensor):
        obj = obj.to(device, non_blocking=True)
        if channels_last and obj.dim() == 4 and obj.is_floating_point():
            obj = obj.contiguous(memory_format=torch.channels_last)
        return obj
    if isinstance(obj, dict):
        return {k: _to_device(v, device, channels_last) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_to_device(v, device, channels_last) for v in obj)
    return obj


LossFn = Callable[[nn.Module, Any, Any], dict[str, Tensor]]
EvalFn = Callable[[nn.Module, int], dict[str, float]]


@dataclass
class Trainer:
    """Runs ``cfg.epochs`` epochs of ``loss_fn`` over ``train_set``.

    Args:
        model: the network (moved to the device; wrapped in DDP when distributed).
        train_set: map-style dataset; samples go through ``collate``.
        collate: batch builder (e.g. ``collate_detection``).
        loss_fn: ``(model, inputs, targets) -> dict of losses`` (summed for backward).
        cfg: the recipe; resolved for this run (precision actually used, world size) in ``self.cfg``.
        output_dir: checkpoints, ``log.csv``, ``config.json``.
        eval_fn: optional ``(model, epoch) -> metrics``, run on rank 0 every ``cfg.eval_every``.
        spec: the :class:`~mobiledense.tools.engine.spec.RunSpec` of the run: written to
            ``config.json`` and into every checkpoint (its recipe replaced by the resolved
            ``cfg``); a resumed run must match it (see :meth:`resume`).
        main_metric: the ``eval_fn`` result that picks ``checkpoints/best.pt`` (higher is better).
        allow_changes: spec fields a resumed run may change (``epochs``, ``recipe.lr`` ...).
        hooks: replaces :func:`~mobiledense.tools.engine.hooks.default_hooks`.
        preview_fn: ``model -> [HxWx3 uint8 images]`` of predictions drawn on validation images,
            logged to TensorBoard after each evaluation.
    """

    model: nn.Module
    train_set: Dataset
    collate: Callable[[list], Any]
    loss_fn: LossFn
    cfg: TrainConfig
    output_dir: Path
    eval_fn: EvalFn | None = None
    spec: RunSpec | None = None
    main_metric: str | None = None
    progress: bool = True
    allow_changes: Sequence[str] = ()
    hooks: list[HookBase] | None = None
    preview_fn: Callable[[nn.Module], list[Any]] | None = None

    def __post_init__(self) -> None:
        self.output_dir = Path(self.output_dir)
        self.rank, self.world, self.device = init_distributed()
        self.cfg = self.cfg.resolve(self.device, self.world, self.spec.task if self.spec is not None else None)
        if self.spec is not None:
            self.spec = self.spec.replace(recipe=self.cfg)
        if self.cfg.deterministic:
            torch.use_deterministic_algorithms(True, warn_only=True)
            torch.backends.cudnn.benchmark = False
        torch.manual_seed(mix_seed(self.cfg.seed, self.rank) % 2**63)
        if self.cfg.bn_momentum is not None:
            for m in self.model.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.momentum = self.cfg.bn_momentum
        self.model.to(self.device)
        if self.cfg.channels_last:
            self.model.to(memory_format=torch.channels_last)
        self.autocast_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(self.cfg.precision)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.cfg.precision == "fp16")
        self.optimizer = self._build_optimizer()
        self.ema = None
        if self.cfg.ema:
            from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

            self.ema = AveragedModel(self.model, multi_avg_fn=get_ema_multi_avg_fn(self.cfg.ema_decay),
                                     use_buffers=True)
        if self.cfg.sync_bn == "on" and self.world > 1:
            if self.device.type != "cuda":
                raise ValueError("sync_bn on needs CUDA (torch's SyncBatchNorm runs on GPUs only); use sync_bn off")
            self.model = nn.SyncBatchNorm.convert_sync_batchnorm(self.model)  # same state_dict keys
        if self.cfg.compile and self.device.type != "cuda":
            raise ValueError("compile is for CUDA training steps (on CPU torch.compile made the step slower: "
                             "mobiledense bench --only train --compile); drop --compile")
        self.net = torch.compile(self.model) if self.cfg.compile else self.model
        if self.world > 1:
            self.net = nn.parallel.DistributedDataParallel(
                self.net, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        self.dataset = SeededDataset(self.train_set, self.cfg.seed)
        self.sampler = ResumableSampler(len(self.train_set), self.cfg.batch_size, seed=self.cfg.seed,
                                        rank=self.rank, world_size=self.world)
        acc = self.cfg.accumulate_batches
        per_epoch = self.sampler.batches_per_epoch() // acc  # optimiser steps
        if per_epoch == 0:
            raise ValueError(
                f"batch_size {self.cfg.batch_size} x {self.world} process(es) x accumulate_batches {acc} exceeds "
                f"the {len(self.train_set)} training samples: lower batch_size or accumulate_batches")
        if self.cfg.max_steps_per_epoch:
            per_epoch = min(per_epoch, self.cfg.max_steps_per_epoch)
        self.steps_per_epoch = per_epoch
        self.batches_per_epoch = per_epoch * acc  # loader batches: whole accumulation windows only
        self.total_steps = per_epoch * self.cfg.epochs
        self.ckpts = CheckpointManager(self.output_dir / "checkpoints", self.cfg.keep_checkpoints)
        self.step, self.epoch, self.batch_in_epoch = 0, 0, 0
        self.nonfinite_total, self.nonfinite_run, self.bad_samples = 0, 0, 0
        self.worker_restarts = 0
        self.best: dict[str, Any] = {}
        if self.cfg.tensorboard and importlib.util.find_spec("tensorboard") is None:
            raise ValueError("--tensorboard needs the tensorboard package: pip install tensorboard (or drop the flag)")
        self.lock = RunLock(self.output_dir)
        self.hooks = list(self.hooks if self.hooks is not None else
                          default_hooks(self.eval_fn, self.main_metric, self.cfg.tensorboard, self.preview_fn))
        for hook in self.hooks:
            hook.trainer = self

    # ----------------------------------------------------------------- pieces

    def _build_optimizer(self) -> torch.optim.Optimizer:
        # No weight decay on norm layers and biases (torchvision reference: --norm-weight-decay 0).
        decay, no_decay = [], []
        for p in self.model.parameters():
            if p.requires_grad:
                (no_decay if p.ndim <= 1 else decay).append(p)
        groups = [{"params": decay, "weight_decay": self.cfg.weight_decay},
                  {"params": no_decay, "weight_decay": 0.0}]
        if self.cfg.optimizer == "sgd":
            return torch.optim.SGD(groups, lr=self.cfg.lr, momentum=self.cfg.momentum)
        if self.cfg.optimizer == "rmsprop":  # torchvision's classification reference (its alpha and eps)
            return torch.optim.RMSprop(groups, lr=self.cfg.lr, momentum=self.cfg.momentum,
                                       alpha=self.cfg.rmsprop_alpha, eps=self.cfg.rmsprop_eps)
        return torch.optim.AdamW(groups, lr=self.cfg.lr)

    def _loader(self) -> DataLoader:
        self.sampler.set_epoch(self.epoch, self.batch_in_epoch)
        self.dataset.set_epoch(self.epoch)
        return DataLoader(self.dataset, batch_size=self.cfg.batch_size, sampler=self.sampler,
                          num_workers=self.cfg.workers, collate_fn=skip_none_collate(self.collate),
                          pin_memory=self.device.type == "cuda", worker_init_fn=worker_init,
                          persistent_workers=False,
                          # Own generator: creating the loader must not consume the global
                          # torch RNG (dropout), or a resumed run would diverge.
                          generator=torch.Generator().manual_seed(self.cfg.seed))

    def state_dict(self) -> dict[str, Any]:
        state = {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(),
            "step": self.step,
            "epoch": self.epoch,
            "batch_in_epoch": self.batch_in_epoch,
            "torch_rng": torch.get_rng_state(),
            "counters": {"nonfinite_total": self.nonfinite_total, "bad_samples": self.bad_samples,
                         "worker_restarts": self.worker_restarts},
            "best": dict(self.best),
            "recipe": self.cfg.model_dump(mode="json"),
        }
        if self.spec is not None:
            state["spec"] = self.spec.to_dict()
        if self.ema is not None:
            state["model_ema"] = self.ema.module.state_dict()
            state["ema_updates"] = int(self.ema.n_averaged)  # 0 would make the next update copy, not average
        if torch.cuda.is_available() and self.device.type == "cuda":
            state["cuda_rng"] = torch.cuda.get_rng_state(self.device)
        return state

    def check_resumable(self, state: dict[str, Any], path: str | Path) -> None:
        """Refuse to continue ``path`` with another spec, naming every changed field.

        Operational fields (workers, eval_every, keep_checkpoints ...) may change; any other
        field only when ``allow_changes`` names it: a changed learning rate, batch size,
        seed, input size or number of epochs would silently bend the trajectory.
        """
        if self.spec is None or "spec" not in state:
            return
        stored = RunSpec.from_dict(state["spec"], path)
        changed = identity_changes(stored, self.spec, self.allow_changes)
        if changed:
            listed = "; ".join(f"{k}: {a!r} -> {b!r}" for k, a, b in changed)
            names = " ".join(k for k, _, _ in changed)
            raise ValueError(
                f"{path} was trained with another spec ({listed}). Resuming would continue a different run: "
                f"use a new --output-dir, the same options, or --allow-change {names} to continue anyway")

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scaler.load_state_dict(state["scaler"])
        if self.ema is not None and "model_ema" in state:
            self.ema.module.load_state_dict(state["model_ema"])
            self.ema.n_averaged.fill_(int(state.get("ema_updates", max(int(state["step"]), 1))))
        self.step, self.epoch = int(state["step"]), int(state["epoch"])
        self.batch_in_epoch = int(state["batch_in_epoch"])
        torch.set_rng_state(state["torch_rng"])
        if "cuda_rng" in state and self.device.type == "cuda":
            torch.cuda.set_rng_state(state["cuda_rng"], self.device)
        self.nonfinite_total = int(state["counters"]["nonfinite_total"])
        self.bad_samples = int(state["counters"]["bad_samples"])
        self.worker_restarts = int(state["counters"].get("worker_restarts", 0))
        self.best = dict(state.get("best", {}))

    def resume(self, path: str | Path | None = "auto") -> bool:
        """Resume from ``path`` (``"auto"``: the newest readable checkpoint in the output dir, if any).

        With ``"auto"`` a checkpoint that cannot be read (truncated, corrupt, empty) is named in a
        warning and the next older one is taken; refused if every one is bad.
        """
        if path is None:  # a fresh start: an earlier run's checkpoints are kept apart, not mixed in
            if is_main_process():
                with self._locked():
                    moved = self.ckpts.set_aside()
                if moved is not None:
                    log.warning("starting over: the earlier run's checkpoints in %s were moved to %s",
                                self.ckpts.directory, moved)
            return False
        with self._locked():
            if path != "auto":
                state = load_checkpoint(path, map_location=self.device)
            else:
                found = self._newest_readable()
                if found is None:
                    return False
                path, state = found
            self.check_resumable(state, path)
            self.load_state_dict(state)
        if is_main_process():
            log.info("resumed from %s at epoch %d, step %d", path, self.epoch, self.step)
        return True

    def _newest_readable(self) -> tuple[Path, dict[str, Any]] | None:
        candidates = ([self.ckpts.directory / "last.pt"] if (self.ckpts.directory / "last.pt").is_file() else [])
        candidates += self.ckpts.checkpoints()[::-1]
        bad = []
        for candidate in candidates:
            try:
                return candidate, load_checkpoint(candidate, map_location=self.device)
            except ValueError as e:
                bad.append(str(e))
                log.warning("cannot resume from %s; trying an older checkpoint", e)
        if bad:
            raise ValueError(f"no readable checkpoint in {self.ckpts.directory} to resume from ({'; '.join(bad)}); "
                             "use --resume none (or a new --output-dir) to start over")
        return None

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """The output folder's lock, on rank 0 (the ranks of one DDP run share the folder)."""
        if not is_main_process():
            yield
            return
        with self.lock:
            yield

    def save(self) -> Path | None:
        """Write a checkpoint of the current state (rank 0); returns its path.

        Weights that became non-finite are never written: the run stops naming the cause and
        the last good checkpoint (every rank holds the same weights, so every rank stops).
        """
        bad = [k for k, v in self.model.state_dict().items() if v.is_floating_point() and not torch.isfinite(v).all()]
        if bad:
            last = self.ckpts.latest()
            raise FloatingPointError(
                f"the weights became non-finite by step {self.step} ({len(bad)} tensors, e.g. {bad[0]}): training "
                f"diverged (lr={self.cfg.lr:g}). Nothing was saved" + (f"; the last good checkpoint is {last}" if last
                                                                      else "") +
                ". Lower the learning rate, enable --clip-grad-norm, or check the data")
        if is_main_process():
            return self.ckpts.save(self.state_dict(), self.step)
        return None

    def eval_model(self) -> nn.Module:
        """What evaluation and the saved ``model_ema`` use: the EMA weights when kept, else the model."""
        return self.ema.module if self.ema is not None else self.model

    # ----------------------------------------------------------------- loop

    def _accumulate(self, inputs: Any, targets: Any, window: dict[str, Any], last: bool) -> None:
        """Forward and backward of one loader batch; its loss counts 1 / ``accumulate_batches`` of the step.

        A non-finite loss (on any rank: all ranks decide together) marks the window and is not
        back-propagated; the window's optimiser step is then skipped.
        """
        with torch.autocast(self.device.type, dtype=self.autocast_dtype or torch.float32,
                            enabled=self.autocast_dtype is not None):
            sync = contextlib.nullcontext() if last or self.world == 1 else self.net.no_sync()
            with sync:
                losses = self.loss_fn(self.net, inputs, targets)
                loss = sum(losses.values())
                finite = torch.isfinite(loss.detach()).float()
                if self.world > 1:
                    dist.all_reduce(finite, op=dist.ReduceOp.MIN)  # all ranks skip together
                window["losses"].append({k: float(v.detach()) for k, v in losses.items()}
                                        | {"loss": float(loss.detach())})
                if finite.item() < 1:
                    window["finite"] = False
                elif window["finite"]:
                    self.scaler.scale(loss / self.cfg.accumulate_batches).backward()

    def _optimizer_step(self, window: dict[str, Any]) -> dict[str, float] | None:
        """The window's step at the scheduled LR; None when it was skipped (a non-finite loss, no batch)."""
        lr = self.cfg.lr_at(self.step, self.total_steps)
        for g in self.optimizer.param_groups:
            g["lr"] = lr
        if not window["losses"]:
            return None
        if not window["finite"]:
            self.optimizer.zero_grad(set_to_none=True)
            self.nonfinite_total += 1
            self.nonfinite_run += 1
            log.warning("non-finite loss at step %d (%s): step skipped (%d in a row, %d total)",
                        self.step, window["losses"][-1], self.nonfinite_run, self.nonfinite_total)
            if self.nonfinite_run >= self.cfg.max_nonfinite:
                raise FloatingPointError(
                    f"{self.nonfinite_run} non-finite losses in a row (step {self.step}): training "
                    "diverged. Lower the learning rate, enable clip_grad_norm, or check the data.")
            return None
        self.nonfinite_run = 0
        if self.cfg.clip_grad_norm:
            self.scaler.unscale_(self.optimizer)
            nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.clip_grad_norm)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        if self.ema is not None:
            self.ema.update_parameters(self.model)
        n = len(window["losses"])
        out = {k: sum(d[k] for d in window["losses"]) / n for k in window["losses"][0]}
        out["lr"] = lr
        return out

    def fit(self) -> dict[str, float]:
        """Train to ``cfg.epochs``; returns the last epoch's metrics. Holds the output folder's lock."""
        with self._locked():
            return self._fit()

    def _fit(self) -> dict[str, float]:
        if is_main_process():
            self.output_dir.mkdir(parents=True, exist_ok=True)
            if self.spec is not None:
                self.spec.write(self.output_dir / "config.json")
            else:
                write_text_atomic(self.cfg.model_dump_json(indent=2) + "\n", self.output_dir / "config.json")
            for stale in (self.output_dir / "checkpoints").glob(".*.tmp"):  # a run killed mid-write
                stale.unlink(missing_ok=True)
        for hook in self.hooks:
            hook.before_train()
        metrics: dict[str, float] = {}
        while self.epoch < self.cfg.epochs:
            metrics = self._run_epoch()
            self.epoch += 1
            self.batch_in_epoch = 0
            for hook in self.hooks:
                hook.after_epoch(metrics)
        for hook in self.hooks:
            hook.after_train()
        return metrics

    def _run_epoch(self) -> dict[str, float]:
        from tqdm import tqdm

        self.net.train()
        sums: dict[str, float] = {}
        count, t0, images, bad = 0, time.perf_counter(), 0, 0
        acc = self.cfg.accumulate_batches
        total = self.steps_per_epoch - self.batch_in_epoch // acc
        bar = tqdm(total=total, desc=f"epoch {self.epoch + 1}/{self.cfg.epochs}", unit="it",
                   disable=not (self.progress and is_main_process()), dynamic_ncols=True, leave=False)
        window: dict[str, Any] = {}
        for batch, skipped in self._batches():
            if self.batch_in_epoch >= self.batches_per_epoch:
                break
            self.bad_samples += skipped
            bad += skipped
            if self.bad_samples > self.cfg.max_bad_samples:
                raise TrainingAborted(
                    f"{self.bad_samples} training samples failed to load (limit max_bad_samples="
                    f"{self.cfg.max_bad_samples}); see the warnings above for files and errors")
            micro = self.batch_in_epoch % acc
            if micro == 0:
                self.optimizer.zero_grad(set_to_none=True)
                window = {"losses": [], "finite": True}
            if batch is not None:
                inputs, targets = _to_device(batch, self.device, self.cfg.channels_last)
                self._accumulate(inputs, targets, window, last=micro == acc - 1)
                images += len(inputs)
            self.batch_in_epoch += 1
            if micro < acc - 1:
                continue
            out = self._optimizer_step(window)
            if out is not None:
                count += 1
                for k, v in out.items():
                    sums[k] = sums.get(k, 0.0) + v
                bar.set_postfix(loss=f"{out['loss']:.4f}", lr=f"{out['lr']:.2e}")
            self.step += 1
            bar.update()
            for hook in self.hooks:
                hook.after_step(out)
        bar.close()
        self._check_bad_fraction(bad, images)
        elapsed = time.perf_counter() - t0
        metrics = {k: v / max(count, 1) for k, v in sums.items()}
        metrics.update(epoch=self.epoch + 1, step=self.step, time_s=elapsed,
                       images_per_s=images * self.world / max(elapsed, 1e-9),
                       nonfinite_total=self.nonfinite_total, bad_samples=self.bad_samples,
                       worker_restarts=self.worker_restarts)
        if is_main_process():
            log.info("epoch %d: %s", self.epoch + 1,
                     ", ".join(f"{k}={v:.4g}" for k, v in metrics.items()))
        return metrics

    def _check_bad_fraction(self, bad: int, good: int) -> None:
        """Stop before saving an epoch most of whose samples could not be loaded (this process's share)."""
        if not bad:
            return
        epoch = self.epoch + 1
        if good == 0:
            raise TrainingAborted(f"none of the {bad} training samples of epoch {epoch} could be loaded (see the "
                                  "warnings above for files and errors): nothing was trained or saved")
        if bad / (bad + good) > self.cfg.max_bad_fraction:
            raise TrainingAborted(
                f"{bad} of the {bad + good} training samples of epoch {epoch} failed to load (limit "
                f"max_bad_fraction={self.cfg.max_bad_fraction:g}; see the warnings above): the epoch was not saved")

    def _batches(self) -> Iterator[tuple[Any, int]]:
        """The epoch's remaining batches; a dead DataLoader worker is replaced (see module docs).

        The loader is rebuilt at ``batch_in_epoch``, the first batch not yet trained on, so
        batches prefetched by the dead worker are simply loaded again.
        """
        while True:
            try:
                yield from iter_without_async_worker_errors(self._loader())
                return
            except LOADER_ERRORS as e:
                if not is_worker_crash(e, self.cfg.workers):
                    raise
                self.worker_restarts += 1
                first = crash_summary(e)
                if self.worker_restarts > self.cfg.max_worker_restarts:
                    raise TrainingAborted(
                        f"DataLoader workers died {self.worker_restarts} times (limit max_worker_restarts="
                        f"{self.cfg.max_worker_restarts}; last at epoch {self.epoch + 1}, batch "
                        f"{self.batch_in_epoch}: {first}). A sample may crash its decoder, or workers run out "
                        "of memory: rerun with --workers 0 to see the failing sample, or fewer workers. "
                        "Resume continues from the last checkpoint.") from e
                log.warning("%s: restarting the data loader at epoch %d, batch %d (%d/%d restarts)",
                            first, self.epoch + 1, self.batch_in_epoch, self.worker_restarts,
                            self.cfg.max_worker_restarts)
