"""Trainer hooks: what happens around the optimisation loop (checkpoints, evaluation, best model, logs).

A hook is called by :meth:`Trainer.fit` at fixed points, in registration order
(detectron2's ``HookBase``): ``before_train``, ``after_step`` (after every optimiser step,
skipped or not), ``after_epoch`` (it may add entries to the epoch's ``metrics``) and
``after_train``. The default set, in order: :class:`PeriodicCheckpoint` (mid-epoch and
epoch-end saves, written *before* evaluation so an evaluation that fails loses no
training), :class:`EvalHook`, :class:`BestCheckpoint` (``checkpoints/best.pt`` by the run's
main metric), :class:`MetricsLog` (``log.csv``, ``steps.csv``) and, with ``tensorboard``,
:class:`TensorBoardLog`.
"""

from __future__ import annotations

import csv
import logging
import math
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import torch
import torch.distributed as dist

from .distributed import is_main_process

if TYPE_CHECKING:
    from .trainer import Trainer

__all__ = ["HookBase", "PeriodicCheckpoint", "EvalHook", "BestCheckpoint", "MetricsLog", "TensorBoardLog",
           "default_hooks"]

log = logging.getLogger("mobiledense.train")


class HookBase:
    """Base class: override the points you need; ``self.trainer`` is set by the Trainer."""

    trainer: "Trainer"

    def before_train(self) -> None:
        pass

    def after_step(self, out: dict[str, float] | None) -> None:
        pass

    def after_epoch(self, metrics: dict[str, float]) -> None:
        pass

    def after_train(self) -> None:
        pass


class PeriodicCheckpoint(HookBase):
    """Saves at every epoch end and every ``ckpt_every_steps`` optimiser steps inside an epoch (rank 0)."""

    def after_step(self, out: dict[str, float] | None) -> None:
        t = self.trainer
        every = t.cfg.ckpt_every_steps
        if every and t.step % every == 0 and t.batch_in_epoch < t.batches_per_epoch:
            t.save()

    def after_epoch(self, metrics: dict[str, float]) -> None:
        self.trainer.save()


class EvalHook(HookBase):
    """Evaluates every ``eval_every`` epochs and after the last one (rank 0; the others wait)."""

    def __init__(self, eval_fn: Callable[[torch.nn.Module, int], dict[str, float]]) -> None:
        self.eval_fn = eval_fn

    def after_epoch(self, metrics: dict[str, float]) -> None:
        t = self.trainer
        every = t.cfg.eval_every
        if not every or (t.epoch % every and t.epoch != t.cfg.epochs):
            return
        results: dict[str, float] = {}
        if is_main_process():
            model = t.eval_model().eval()
            with torch.no_grad():
                results = self.eval_fn(model, t.epoch)
            log.info("eval after epoch %d: %s", t.epoch, ", ".join(f"{k}={v:.4g}" for k, v in results.items()))
        if t.world > 1:
            dist.barrier()
        t.last_eval = {"epoch": t.epoch, **results}
        metrics.update(results)


class BestCheckpoint(HookBase):
    """Keeps ``checkpoints/best.pt``: the checkpoint of the epoch with the highest ``metric``.

    The trainer's ``best`` (``{"metric", "value", "epoch", "step", "metrics"}``: ``metrics`` is that
    evaluation's every number) is saved in every checkpoint, so a resumed run keeps comparing against
    the best so far, and ``best.pt`` says how good its own weights are (``compare`` reads a classifier's).
    """

    def __init__(self, metric: str) -> None:
        self.metric = metric

    def after_epoch(self, metrics: dict[str, float]) -> None:
        t = self.trainer
        value = metrics.get(self.metric)
        if value is None or not math.isfinite(value):
            return
        if t.best and t.best.get("metric") == self.metric and value <= t.best["value"]:
            return
        t.best = {"metric": self.metric, "value": float(value), "epoch": t.epoch, "step": t.step,
                  "metrics": {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float))
                              and k != "epoch" and k in getattr(t, "last_eval", {})}}
        if is_main_process():
            path = t.save()  # again: the checkpoint of this epoch now records itself as the best
            t.ckpts.mark_best(path)
            log.info("best %s so far: %.4g (epoch %d) -> %s", self.metric, value, t.epoch, t.ckpts.best_path)


class MetricsLog(HookBase):
    """Per epoch one row of ``log.csv``; every ``log_every`` steps one row of ``steps.csv`` (the ``train/``
    scalars of TensorBoard: losses, lr, images/s). Rows of steps a killed run did not keep are dropped on resume."""

    def before_train(self) -> None:
        t = self.trainer
        self.images, self.tic = 0, time.perf_counter()
        if is_main_process():
            _rewrite_csv(t.output_dir / "steps.csv", lambda r: int(float(r["step"])) <= t.step, None)

    def after_step(self, out: dict[str, float] | None) -> None:
        t = self.trainer
        self.images += t.cfg.batch_size * t.cfg.accumulate_batches * t.world
        if out is None or t.step % t.cfg.log_every or not is_main_process():
            return
        now = time.perf_counter()
        t.last_train = {"step": t.step, "epoch": t.epoch + 1, **out,
                        "images_per_s": self.images / max(now - self.tic, 1e-9)}
        self.images, self.tic = 0, now
        path = t.output_dir / "steps.csv"
        new = not path.exists()
        with path.open("a", newline="") as f:  # appended: the file grows by one line per log_every steps
            writer = csv.DictWriter(f, fieldnames=list(t.last_train), extrasaction="ignore")
            if new:
                writer.writeheader()
            writer.writerow(t.last_train)

    def after_epoch(self, metrics: dict[str, float]) -> None:
        if is_main_process():
            _rewrite_csv(self.trainer.output_dir / "log.csv", lambda r: int(float(r["epoch"])) < metrics["epoch"],
                         metrics)


def _rewrite_csv(path: Path, keep: Callable[[dict], bool] | None, row: dict[str, Any] | None) -> None:
    """Rewrite ``path`` atomically with the old rows ``keep`` accepts (all if None) plus ``row``."""
    rows: list[dict[str, Any]] = []
    if path.exists():
        with path.open(newline="") as f:
            rows = [r for r in csv.DictReader(f) if keep is None or keep(r)]
    if row is not None:
        rows.append(row)
    if not rows and not path.exists():
        return
    keys: list[str] = []
    for r in rows:
        keys += [k for k in r if k not in keys]
    tmp = path.with_suffix(".csv.tmp")
    with tmp.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=keys)
        writer.writeheader()
        writer.writerows(rows)
    os.replace(tmp, path)


class TensorBoardLog(HookBase):
    """One event stream per run in ``OUTPUT/tb`` (a resumed run continues it, purging steps it did not keep):

    * ``train/<loss>``, ``train/loss``, ``train/lr``, ``train/images_per_s`` every ``log_every`` steps;
    * ``val/<metric>`` after each evaluation, x-axis in optimiser steps like the rest;
    * ``val/predictions``: a few validation images with the model's predictions drawn (``preview_fn``);
    * ``run/spec``: the run spec as text. The same fields are in ``steps.csv`` and ``log.csv``.
    """

    def __init__(self, preview_fn: Callable[[torch.nn.Module], list[Any]] | None = None) -> None:
        self.preview_fn = preview_fn
        self.writer: Any = None

    def before_train(self) -> None:
        t = self.trainer
        if not is_main_process():
            return
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(str(t.output_dir / "tb"), purge_step=t.step or None)
        if t.spec is not None and not t.step:
            self.writer.add_text("run/spec", "```json\n" + t.spec.model_dump_json(indent=2) + "\n```", 0)

    def after_step(self, out: dict[str, float] | None) -> None:
        t = self.trainer
        last = getattr(t, "last_train", None)
        if self.writer is None or not last or last["step"] != t.step:
            return
        for k, v in t.last_train.items():
            if k not in ("step", "epoch"):
                self.writer.add_scalar(f"train/{k}", v, t.step)

    def after_epoch(self, metrics: dict[str, float]) -> None:
        t = self.trainer
        last = getattr(t, "last_eval", None)
        if self.writer is None or not last or last["epoch"] != t.epoch:
            return
        for k, v in last.items():
            if k != "epoch":
                self.writer.add_scalar(f"val/{k}", v, t.step)
        if self.preview_fn is not None:
            model = t.eval_model().eval()
            with torch.no_grad():
                for i, image in enumerate(self.preview_fn(model)):
                    self.writer.add_image(f"val/predictions/{i}", image, t.step, dataformats="HWC")
        self.writer.flush()

    def after_train(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


def default_hooks(eval_fn: Callable[[torch.nn.Module, int], dict[str, float]] | None,
                  main_metric: str | None, tensorboard: bool = False,
                  preview_fn: Callable[[torch.nn.Module], list[Any]] | None = None) -> list[HookBase]:
    """Checkpoints, then evaluation and the best checkpoint (when there is an ``eval_fn``), then the logs."""
    hooks: list[HookBase] = [PeriodicCheckpoint()]
    if eval_fn is not None:
        hooks.append(EvalHook(eval_fn))
        if main_metric:
            hooks.append(BestCheckpoint(main_metric))
    return hooks + [MetricsLog()] + ([TensorBoardLog(preview_fn)] if tensorboard else [])
