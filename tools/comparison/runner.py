"""Backbones compared on downstream tasks: one seeded recipe, one results file per cell.

A *cell* is ``(task, head, backbone)``: SSDLite detection (MobileNetV3 paper §6.3),
LR-ASPP segmentation (§6.4) or a heavier segmentation-models-pytorch decoder
(DeepLabV3+, FPN ...). :func:`run_cell` builds the model, trains it with the shared
:class:`~mobiledense.tools.engine.Trainer` under the one :class:`Recipe` every cell
gets, evaluates it (COCO mAP / Cityscapes mIoU) and measures params, MAdds, batch-1
latency and training images/s.

:func:`run_comparison` keeps one JSON file per cell (written atomically) in the output
folder: run again, finished cells are skipped and a cell cut short resumes from its
last epoch checkpoint. An output folder holds one recipe only (``compare.json``), so
every stored cell is comparable with every other. :func:`write_report` turns the
store into ``results.csv``, ``results.md`` and accuracy-vs-cost plots with the
Pareto front marked.

With ``Recipe.frozen_backbone`` the backbone's weights get ``requires_grad=False`` and
its BatchNorms stay in eval mode (running statistics frozen too): only the head
learns, a probe of feature quality in the spirit of a linear probe (the heads are
small conv stacks, not one linear layer).
"""

from __future__ import annotations

import csv
import dataclasses
import json
import logging
import os
import platform
import shutil
import statistics
import tempfile
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from types import MethodType
from typing import Any, Callable, Iterable

import torch
from torch import Tensor, nn

from mobiledense.backbones import Backbone, count_madds, count_params
from mobiledense.tools.engine import Trainer

from .cells import Cell, DataSpec, Measurement, Recipe
from .report import write_report

__all__ = ["TaskData", "ResultStore", "load_task_data", "build_model", "find_backbone", "freeze_backbone",
           "inference_net", "train_model", "evaluate_model", "measure_latency", "run_cell", "lock_recipe",
           "run_comparison"]

log = logging.getLogger("mobiledense.compare")

TASKS = ("det", "seg")
DET_HEAD = "ssdlite"
METRIC = {"det": "mAP", "seg": "mIoU"}


# --------------------------------------------------------------------------- data


@dataclass
class TaskData:
    train: Any
    val: Any
    collate: Callable[[list], Any]
    num_classes: int


def _collate_seg(samples: list) -> tuple[Tensor, Tensor]:
    images, masks = zip(*samples)
    return torch.stack(images), torch.stack(masks)


def load_task_data(task: str, spec: DataSpec, recipe: Recipe, data_dir: Path) -> TaskData:
    """Train/val datasets of ``task``; synthetic ones are generated under ``data_dir`` once."""
    from mobiledense.datasets import (CityscapesSegmentation, CocoDetection, build_det_transforms,
                                      build_seg_transforms, collate_detection, make_synthetic_cityscapes,
                                      make_synthetic_coco)

    if task == "det":
        if spec.det_train_ann:
            paths = [(spec.det_train_images, spec.det_train_ann), (spec.det_val_images, spec.det_val_ann)]
        else:
            root = data_dir / "det"
            if not (root / "annotations" / "instances_val.json").exists():  # written last
                log.info("writing %d synthetic detection images to %s", spec.synthetic_images, root)
                make_synthetic_coco(root, num_images=spec.synthetic_images, seed=0)
            paths = [(root / "images" / s, root / "annotations" / f"instances_{s}.json") for s in ("train", "val")]
        tf = build_det_transforms("ssdlite", recipe.det_size, train=True)
        train, val = CocoDetection(*paths[0], transforms=tf), CocoDetection(*paths[1])
        if train.label_to_category_id != val.label_to_category_id:
            raise ValueError(f"{train.ann_file} and {val.ann_file} have different categories")
        return TaskData(train, val, collate_detection, train.num_classes)
    size = tuple(recipe.seg_size)
    root = spec.seg_root
    if root is None:
        root = make_synthetic_cityscapes(data_dir / "seg", num_train=spec.synthetic_frames,
                                         num_val=max(spec.synthetic_frames // 4, 4), size=size, seed=0)
    train = CityscapesSegmentation(root, spec.seg_train_split, transforms=build_seg_transforms(
        True, crop_size=size, base_size=size, scale_range=recipe.seg_scale))
    try:
        val = CityscapesSegmentation(root, spec.seg_val_split, transforms=build_seg_transforms(False, base_size=size))
    except FileNotFoundError as e:
        raise FileNotFoundError(f"{e}\n(no images in the {spec.seg_val_split!r} split: pass --seg-val-split with a "
                                "split that has leftImg8bit images, e.g. 'train' for ../shared/data/cityscapes)") from e
    if spec.seg_val_split == spec.seg_train_split:
        log.warning("segmentation is evaluated on its training frames (%s): scores measure fitting, "
                    "not generalisation", spec.seg_train_split)
    return TaskData(train, val, _collate_seg, train.num_classes)


# --------------------------------------------------------------------------- models


def _weights_file(folder: str | None, backbone: str) -> str | None:
    if folder is None:
        return None
    for suffix in (".pth", ".pt"):
        path = Path(folder) / f"{backbone}{suffix}"
        if path.is_file():
            return str(path)
    return None


def build_model(cell: Cell, num_classes: int, recipe: Recipe) -> nn.Module:
    """The network of ``cell`` (random init unless ``recipe.backbone_weights`` has the backbone's file)."""
    weights = _weights_file(recipe.backbone_weights, cell.backbone)
    if cell.task == "det":
        from mobiledense.heads import create_detector

        return create_detector(f"ssdlite_{cell.backbone}", num_classes=num_classes, size=recipe.det_size,
                               weights_backbone=weights)
    if cell.head == "lraspp":
        from mobiledense.heads.lraspp import create_segmenter

        return create_segmenter(cell.backbone, num_classes, backbone_weights=weights)
    from mobiledense.heads.smp_encoders import create_smp_model

    return create_smp_model(cell.head, cell.backbone, num_classes, backbone_weights=weights)


def find_backbone(model: nn.Module) -> Backbone:
    """The (first) :class:`Backbone` inside ``model`` (SSDLite, Segmenter or an smp encoder)."""
    for module in model.modules():
        if isinstance(module, Backbone):
            return module
    raise ValueError(f"{type(model).__name__} holds no mobiledense Backbone")


def _train_keeping_eval(self: nn.Module, mode: bool = True) -> nn.Module:
    return nn.Module.train(self, False)


def freeze_backbone(model: nn.Module) -> Backbone:
    """Linear-probe style: no gradients into the backbone, its BN (and dropout) kept in eval mode.

    ``model.train()`` (the Trainer calls it every epoch) no longer reaches the backbone,
    so BN running statistics stay as built or loaded: the backbone is left bit-identical.
    """
    backbone = find_backbone(model)
    for p in backbone.parameters():
        p.requires_grad_(False)
    backbone.train = MethodType(_train_keeping_eval, backbone)  # type: ignore[method-assign]
    backbone.eval()
    return backbone


class _DetectorNet(nn.Module):
    """SSDLite's network (backbone, extra layers, head) on a resized, normalised batch."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        return self.model.head_outputs(x)[0]


def inference_net(model: nn.Module, cell: Cell) -> nn.Module:
    """What MAdds and latency measure: the detector without resize/decoding/NMS (as paper Table 6
    counts it); the whole segmenter (normalisation and final upsampling included)."""
    return _DetectorNet(model) if cell.task == "det" else model


# --------------------------------------------------------------------------- one cell


def _det_loss(net: nn.Module, images: Any, targets: Any) -> dict[str, Tensor]:
    return net(images, targets)


class _SegLoss:
    def __init__(self) -> None:
        from mobiledense.heads.seg_losses import build_seg_loss

        self.criterion = build_seg_loss("ce", ignore_index=255)

    def __call__(self, net: nn.Module, images: Tensor, masks: Tensor) -> dict[str, Tensor]:
        logits = net(images)
        if logits.shape[-2:] != masks.shape[-2:]:
            logits = nn.functional.interpolate(logits, size=masks.shape[-2:], mode="bilinear", align_corners=False)
        return {"seg": self.criterion(logits, masks)}


def train_model(model: nn.Module, cell: Cell, data: TaskData, recipe: Recipe, workdir: Path, *,
                workers: int = 0, progress: bool = False) -> dict[str, float]:
    """Train with the shared Trainer (resuming ``workdir``'s checkpoint if any); throughput stats.

    ``train_images_per_s`` is the median over epochs of the Trainer's end-to-end rate
    (data loading included), so one slow first epoch does not dominate.
    """
    cfg = recipe.train_config(cell.task, workers)
    trainer = Trainer(model, data.train, data.collate, _det_loss if cell.task == "det" else _SegLoss(), cfg,
                      workdir, run_info={"task": cell.task, "model": cell.key, "num_classes": data.num_classes},
                      progress=progress)
    trainer.resume("auto")
    trainer.fit()
    with (Path(workdir) / "log.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    return {"train_images_per_s": statistics.median(float(r["images_per_s"]) for r in rows),
            "train_time_s": sum(float(r["time_s"]) for r in rows),
            "final_loss": float(rows[-1].get("loss") or "nan"), "train_steps": int(float(rows[-1]["step"]))}


def evaluate_model(model: nn.Module, cell: Cell, data: TaskData, batch_size: int = 8) -> dict[str, float]:
    """``{"mAP", "AP50"}`` (COCO) or ``{"mIoU", "pixel_acc"}`` on the val set."""
    from mobiledense.tools.evaluation import evaluate_detector, evaluate_segmenter

    device = next(model.parameters()).device
    if cell.task == "det":
        result, _ = evaluate_detector(model, data.val, batch_size=batch_size, device=device, progress=False)
        stats = result.as_dict()
        return {"mAP": stats["AP"], "AP50": stats["AP50"]}
    m = evaluate_segmenter(model, data.val, device=device, progress=False)
    return {"mIoU": float(m.miou), "pixel_acc": float(m.pixel_acc)}


def measure_latency(net: nn.Module, x: Tensor, *, runs: int = 20, warmup: int = 5,
                    threads: int | None = None) -> list[float]:
    """Milliseconds of each of ``runs`` timed ``net(x)`` calls after ``warmup`` untimed ones.

    On CPU ``threads`` fixes torch's intra-op threads for the measurement (restored
    after); on CUDA each call is synchronised. Report the median; on a loaded machine
    the minimum is the better estimate of the network's own cost.
    """
    if runs < 1 or warmup < 0:
        raise ValueError(f"need runs >= 1 and warmup >= 0, got {runs}, {warmup}")
    cuda = x.device.type == "cuda"
    old = torch.get_num_threads()
    if threads and not cuda:
        torch.set_num_threads(threads)
    times = []
    try:
        net.eval()
        with torch.inference_mode():
            for i in range(warmup + runs):
                if cuda:
                    torch.cuda.synchronize(x.device)
                t0 = time.perf_counter()
                net(x)
                if cuda:
                    torch.cuda.synchronize(x.device)
                if i >= warmup:
                    times.append(1000.0 * (time.perf_counter() - t0))
    finally:
        torch.set_num_threads(old)
    return times


def run_cell(cell: Cell, recipe: Recipe, data: TaskData, workdir: Path, measurement: Measurement = Measurement(),
             *, workers: int = 0, progress: bool = False) -> dict[str, Any]:
    """Build, train, evaluate and measure one cell; returns its JSON-able result."""
    t0 = time.perf_counter()
    torch.manual_seed(recipe.seed)  # same init whatever the cell order
    model = build_model(cell, data.num_classes, recipe)
    backbone = freeze_backbone(model) if recipe.frozen_backbone else find_backbone(model)
    train = train_model(model, cell, data, recipe, workdir, workers=workers, progress=progress)
    metrics = evaluate_model(model, cell, data, recipe.batch_size)
    net = inference_net(model, cell).eval()
    h, w = recipe.input_size(cell.task)
    x = torch.rand(1, 3, h, w, generator=torch.Generator().manual_seed(0))
    timing = dict(runs=measurement.latency_runs, warmup=measurement.latency_warmup)
    device = next(model.parameters()).device
    gpu_ms = measure_latency(net, x.to(device), **timing) if device.type == "cuda" else None
    net.cpu()
    cpu_ms = measure_latency(net, x, threads=measurement.latency_threads, **timing)
    return {
        "task": cell.task, "head": cell.head, "backbone": cell.backbone, "status": "ok",
        "metric": cell.metric, "accuracy": metrics[cell.metric], "metrics": metrics,
        "params": count_params(model), "backbone_params": count_params(backbone),
        "trainable_params": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "madds": count_madds(net, x), "input_size": [h, w],
        "cpu_latency_ms": statistics.median(cpu_ms), "cpu_latency_min_ms": min(cpu_ms),
        "latency_threads": measurement.latency_threads, "latency_runs": measurement.latency_runs,
        "gpu_latency_ms": statistics.median(gpu_ms) if gpu_ms else None,
        "gpu": torch.cuda.get_device_name(device) if gpu_ms is not None else None,
        **train, "frozen_backbone": recipe.frozen_backbone,
        "init": _weights_file(recipe.backbone_weights, cell.backbone) or "random",
        "device": str(device), "cpu": _cpu_name(), "torch": torch.__version__,
        "elapsed_s": time.perf_counter() - t0, "finished": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }


# --------------------------------------------------------------------------- store and loop


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _write_json_atomic(obj: Any, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(obj, f, indent=1, default=str)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp creates 0600
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class ResultStore:
    """One ``<cell.key>.json`` per cell in ``root``; each written atomically."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    def path(self, cell: Cell) -> Path:
        return self.root / f"{cell.key}.json"

    def get(self, cell: Cell) -> dict[str, Any] | None:
        path = self.path(cell)
        return json.loads(path.read_text()) if path.is_file() else None

    def put(self, cell: Cell, result: dict[str, Any]) -> Path:
        _write_json_atomic(result, self.path(cell))
        return self.path(cell)

    def all(self) -> list[dict[str, Any]]:
        return [json.loads(p.read_text()) for p in sorted(self.root.glob("*.json"))]


def lock_recipe(out_dir: Path, recipe: Recipe, data: DataSpec) -> dict[str, Any]:
    """Write ``compare.json`` (recipe + data), or check that an existing one matches."""
    lock = json.loads(json.dumps({"recipe": dataclasses.asdict(recipe), "data": dataclasses.asdict(data)}))
    path = Path(out_dir) / "compare.json"
    if path.is_file():
        old = json.loads(path.read_text())
        diff = [f"{part}.{k}: {old.get(part, {}).get(k)!r} -> {v!r}" for part in lock
                for k, v in lock[part].items() if old.get(part, {}).get(k) != v]
        if diff:
            raise ValueError(f"{path} holds results of another recipe ({'; '.join(diff)}); cells are only "
                             "comparable under one recipe: use a new --output-dir (or the old options)")
    else:
        _write_json_atomic(lock, path)
    return lock


def run_comparison(cells: Iterable[Cell], recipe: Recipe, data: DataSpec, out_dir: str | Path,
                   measurement: Measurement = Measurement(), *, workers: int = 0, retry_failed: bool = False,
                   keep_checkpoints: bool = False, progress: bool = False) -> dict[str, list[str]]:
    """Run every cell not already stored, then write the report; returns the keys ran/skipped/failed.

    A cell that raises (e.g. a head that needs a stride the backbone lacks) is stored as
    ``status: failed`` with its error and not retried unless ``retry_failed``.
    """
    out_dir, cells = Path(out_dir), list(cells)
    lock = lock_recipe(out_dir, recipe, data)
    store = ResultStore(out_dir / "cells")
    summary: dict[str, list[str]] = {"ran": [], "skipped": [], "failed": []}
    loaded: dict[str, TaskData] = {}
    for i, cell in enumerate(cells, 1):
        done = store.get(cell)
        if done is not None and (done["status"] == "ok" or not retry_failed):
            log.info("[%d/%d] %s: stored in %s, skipped", i, len(cells), cell.key, store.path(cell))
            summary["skipped"].append(cell.key)
            continue
        if cell.task not in loaded:
            loaded[cell.task] = load_task_data(cell.task, data, recipe, out_dir / "data")
        log.info("[%d/%d] %s: training", i, len(cells), cell.key)
        workdir = out_dir / "runs" / cell.key
        try:
            result = run_cell(cell, recipe, loaded[cell.task], workdir, measurement, workers=workers,
                              progress=progress)
        except Exception as e:  # noqa: BLE001 - policy: record the failure, go on with the matrix
            log.warning("%s failed:\n%s", cell.key, traceback.format_exc())
            result = {"task": cell.task, "head": cell.head, "backbone": cell.backbone, "status": "failed",
                      "metric": cell.metric, "error": f"{type(e).__name__}: {e}".splitlines()[0]}
            summary["failed"].append(cell.key)
        else:
            log.info("[%d/%d] %s: %s %.4f, %.1f ms CPU (%.0f s)", i, len(cells), cell.key, cell.metric,
                     result["accuracy"], result["cpu_latency_ms"], result["elapsed_s"])
            summary["ran"].append(cell.key)
            if not keep_checkpoints:
                shutil.rmtree(workdir / "checkpoints", ignore_errors=True)
        store.put(cell, result)
    write_report(store.all(), out_dir, lock)
    return summary


