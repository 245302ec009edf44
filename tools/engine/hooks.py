"""Trainer hooks: what happens around the optimisation loop (checkpoints, evaluation, best model, logs).

A hook is called by :meth:`Trainer.fit` at fixed points, in registration order
(detectron2's ``HookBase``): ``before_train``, ``after_step`` (after every optimiser step,
skipped or not), ``after_epoch`` (it may add entries to the epoch's ``metrics``) and
``after_train``. The default set, in order: :class:`PeriodicCheckpoint` (mid-epoch and
epoch-end saves, written *before* evaluation so an evaluation that fails loses no
training), :class:`EvalHook`, :class:`BestCheckpoint` (``checkpoints/best.pt`` by the run's
main metric) and :class:`MetricsLog` (``log.csv``, TensorBoard).
"""

from __future__ import annotations

import csv
import logging
import math
import os
from typing import TYPE_CHECKING, Any, Callable

import torch
import torch.distributed as dist

from .distributed import is_main_process

if TYPE_CHECKING:
    from .trainer import Trainer

__all__ = ["HookBase", "PeriodicCheckpoint", "EvalHook", "BestCheckpoint", "MetricsLog", "default_hooks"]

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
        if every and t.step % every == 0 and t.batch_in_epoch < t.steps_per_epoch:
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
        metrics.update(results)


class BestCheckpoint(HookBase):
    """Keeps ``checkpoints/best.pt``: the checkpoint of the epoch with the highest ``metric``.

    The trainer's ``best`` (``{"metric", "value", "epoch", "step"}``) is saved in every
    checkpoint, so a resumed run keeps comparing against the best so far.
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
        t.best = {"metric": self.metric, "value": float(value), "epoch": t.epoch, "step": t.step}
        if is_main_process():
            path = t.save()  # again: the checkpoint of this epoch now records itself as the best
            t.ckpts.mark_best(path)
            log.info("best %s so far: %.4g (epoch %d) -> %s", self.metric, value, t.epoch, t.ckpts.best_path)


class MetricsLog(HookBase):
    """One row per epoch in ``log.csv`` (rewritten atomically; rows of later epochs of a killed run are
    dropped on resume) and, with ``tensorboard``, the same scalars in ``OUTPUT/tb``."""

    def after_epoch(self, metrics: dict[str, float]) -> None:
        t = self.trainer
        if not is_main_process():
            return
        path = t.output_dir / "log.csv"
        rows: list[dict[str, Any]] = []
        if path.exists():
            with path.open(newline="") as f:
                rows = [r for r in csv.DictReader(f) if int(float(r["epoch"])) < metrics["epoch"]]
        rows.append(metrics)
        keys: list[str] = []
        for r in rows:
            keys += [k for k in r if k not in keys]
        tmp = path.with_suffix(".csv.tmp")
        with tmp.open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=keys)
            writer.writeheader()
            writer.writerows(rows)
        os.replace(tmp, path)
        if t.cfg.tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            with SummaryWriter(str(t.output_dir / "tb")) as w:
                for k, v in metrics.items():
                    w.add_scalar(k, v, int(metrics["epoch"]))


def default_hooks(eval_fn: Callable[[torch.nn.Module, int], dict[str, float]] | None,
                  main_metric: str | None) -> list[HookBase]:
    """Checkpoints, then evaluation and the best checkpoint (when there is an ``eval_fn``), then the log."""
    hooks: list[HookBase] = [PeriodicCheckpoint()]
    if eval_fn is not None:
        hooks.append(EvalHook(eval_fn))
        if main_metric:
            hooks.append(BestCheckpoint(main_metric))
    return hooks + [MetricsLog()]
