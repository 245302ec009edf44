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
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable

import torch
from torch import Tensor, nn

from mobiledense.backbones import Backbone, count_madds, count_params
from mobiledense.heads import build_model_spec, create_model
from mobiledense.heads.inference import inference_model
from mobiledense.tools.engine import CityscapesDataSpec, CocoDataSpec, RunSpec, Trainer, write_text_atomic
from mobiledense.tools.engine.tasks import DetectionTask, SegmentationTask, complete_model_spec, match_categories

from .cells import DET_HEAD, Cell, DataSpec, Measurement, Recipe
from .report import write_report

__all__ = ["TaskData", "ResultStore", "load_task_data", "build_model", "find_backbone", "freeze_backbone",
           "inference_net", "train_model", "evaluate_model", "measure_latency", "run_cell", "lock_recipe",
           "run_comparison", "upstream_accuracy"]

log = logging.getLogger("mobiledense.compare")

_TASKS = {"det": DetectionTask, "seg": SegmentationTask}

# --------------------------------------------------------------------------- data


@dataclass
class TaskData:
    """One task's datasets, shared by every cell of that task, and the data spec they were read from."""

    task: str
    train: Any
    val: Any
    data: Any  # CocoDataSpec | CityscapesDataSpec, absolute paths
    class_info: dict[str, Any]

    @property
    def num_classes(self) -> int:
        return int(self.class_info["num_classes"])

    @property
    def collate(self) -> Callable[[list], Any]:
        return _TASKS[self.task].collate


def _data_spec(task: str, spec: DataSpec, recipe: Recipe) -> Any:
    """The engine's data spec of ``task`` under the comparison's one recipe."""
    if task == "det":
        return CocoDataSpec(train_images=spec.det_train_images, train_ann=spec.det_train_ann,
                            val_images=spec.det_val_images, val_ann=spec.det_val_ann,
                            synthetic_images=None if spec.det_train_ann else spec.synthetic_images, augment="ssdlite")
    size = tuple(recipe.seg_size)
    return CityscapesDataSpec(root=spec.seg_root, train_split=spec.seg_train_split, val_split=spec.seg_val_split,
                              synthetic_frames=None if spec.seg_root else spec.synthetic_frames, base_size=size,
                              crop=size, scale_range=recipe.seg_scale, eval_scale=1.0)


def load_task_data(task: str, spec: DataSpec, recipe: Recipe, data_dir: Path) -> TaskData:
    """Train/val datasets of ``task``; synthetic ones are generated under ``data_dir/<task>`` once."""
    data = _TASKS[task].prepare(_data_spec(task, spec, recipe), Path(data_dir) / task)
    probe = RunSpec(model=build_model_spec(task, DET_HEAD if task == "det" else "lraspp", "mobilenet_v3_small",
                                           num_classes=2, **({"size": recipe.det_size} if task == "det" else {})),
                    data=data)
    runner = _TASKS[task](probe)
    train = runner.train_set()
    try:
        val = runner.val_set()
    except FileNotFoundError as e:
        raise FileNotFoundError(f"{e}\n(no images in the {spec.seg_val_split!r} split: pass --seg-val-split with a "
                                "split that has leftImg8bit images, e.g. 'train' for ../shared/data/cityscapes)") from e
    if task == "det":
        match_categories(complete_model_spec(probe, train).model, val, val.ann_file,
                         theirs=f"the training set's ({train.ann_file})")
    elif spec.seg_val_split == spec.seg_train_split:
        log.warning("segmentation is evaluated on its training frames (%s): scores measure fitting, "
                    "not generalisation", spec.seg_train_split)
    return TaskData(task, train, val, data, runner.class_info(train))


# --------------------------------------------------------------------------- models


def _weights_file(folder: str | None, backbone: str) -> str | None:
    if folder is None:
        return None
    for suffix in (".pth", ".pt"):
        path = Path(folder) / f"{backbone}{suffix}"
        if path.is_file():
            return str(path)
    return None


def upstream_accuracy(path: str | Path | None) -> dict[str, Any]:
    """The classification accuracy a backbone file records: for a ``mobiledense train cls`` checkpoint,
    ``{"upstream_top1", "upstream_top5", "upstream_data"}`` of the evaluation of its own weights
    (``best.pt``; any checkpoint whose epoch was the best); else ``{}`` (a plain or torchvision file,
    or a checkpoint of another epoch: its accuracy was not measured on those weights)."""
    if path is None:
        return {}
    from mobiledense.backbones import load_file_safely

    ckpt = load_file_safely(path, "backbone weights")
    spec, best = ckpt.get("spec") if isinstance(ckpt, dict) else None, ckpt.get("best") if isinstance(ckpt, dict) \
        else None
    if not spec or spec.get("model", {}).get("task") != "cls" or not best or best.get("step") != ckpt.get("step"):
        return {}
    metrics = best.get("metrics") or {best["metric"]: best["value"]}
    data = spec.get("data", {})
    return {"upstream_top1": metrics.get("top1"), "upstream_top5": metrics.get("top5"),
            "upstream_data": f"{data.get('layout', '?')} {data.get('val') or data.get('train') or 'synthetic crops'}"}


def cell_spec(cell: Cell, data: TaskData, recipe: Recipe, workers: int = 0) -> RunSpec:
    """The run spec of one cell: its model on the task's data under the one recipe.

    Its checkpoints carry it, so ``mobiledense eval`` / ``export --checkpoint`` rebuild the
    cell's model and data with no other flag.
    """
    options = {"size": recipe.det_size} if cell.task == "det" else {}
    model = build_model_spec(cell.task, cell.head, cell.backbone, num_classes=data.num_classes, **options)
    train = recipe.train_config(cell.task, workers).replace(
        weights_backbone=_weights_file(recipe.weights_backbone, cell.backbone))
    return RunSpec(model=model.replace(**data.class_info), data=data.data, recipe=train)


def build_model(cell: Cell, data: TaskData, recipe: Recipe) -> nn.Module:
    """The network of ``cell`` (random init unless ``recipe.weights_backbone`` has the backbone's file)."""
    spec = cell_spec(cell, data, recipe)
    return create_model(spec.model, weights_backbone=spec.recipe.weights_backbone)


def find_backbone(model: nn.Module) -> Backbone:
    """The (first) :class:`Backbone` inside ``model`` (SSDLite, Segmenter or an smp encoder)."""
    for module in model.modules():
        if isinstance(module, Backbone):
            return module
    raise ValueError(f"{type(model).__name__} holds no mobiledense Backbone")


def freeze_backbone(model: nn.Module) -> Backbone:
    """Linear-probe style: the backbone of ``model`` frozen (:meth:`Backbone.freeze`); returns it."""
    return find_backbone(model).freeze()


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


def train_model(model: nn.Module, cell: Cell, data: TaskData, recipe: Recipe, workdir: Path, *,
                workers: int = 0, progress: bool = False) -> dict[str, float]:
    """Train with the shared Trainer (resuming ``workdir``'s checkpoint if any); throughput stats.

    ``train_images_per_s`` is the median over epochs of the Trainer's end-to-end rate
    (data loading included), so one slow first epoch does not dominate.
    """
    spec = cell_spec(cell, data, recipe, workers)
    runner = _TASKS[cell.task](spec)
    trainer = Trainer(model, data.train, runner.collate, runner.loss, spec.recipe, workdir, spec=spec,
                      progress=progress)
    trainer.resume("auto")
    trainer.fit()
    with (Path(workdir) / "log.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    return {"train_images_per_s": statistics.median(float(r["images_per_s"]) for r in rows),
            "train_time_s": sum(float(r["time_s"]) for r in rows),
            "final_loss": float(rows[-1].get("loss") or "nan"), "train_steps": int(float(rows[-1]["step"]))}


def evaluate_model(model: nn.Module, cell: Cell, data: TaskData, batch_size: int = 8) -> dict[str, float]:
    """``{"mAP", "AP50"}`` (COCO) or ``{"mIoU", "pixel_acc"}`` on the val set, as ``mobiledense eval`` runs it."""
    device = next(model.parameters()).device
    spec = cell_spec(cell, data, Recipe(batch_size=batch_size))
    metrics, _ = _TASKS[cell.task](spec).evaluate(inference_model(model, device), data.val, device=device,
                                                  batch_size=batch_size, progress=False)
    keep = ("mAP", "AP50") if cell.task == "det" else ("mIoU", "pixel_acc")
    return {k: float(metrics[k]) for k in keep}


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
    model = build_model(cell, data, recipe)
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
        "init": _weights_file(recipe.weights_backbone, cell.backbone) or "random",
        **upstream_accuracy(_weights_file(recipe.weights_backbone, cell.backbone)),
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
    write_text_atomic(json.dumps(obj, indent=1, default=str), path)


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


def _cell_job(cell: Cell, recipe: Recipe, data: DataSpec, out_dir: Path, measurement: Measurement,
              options: dict[str, Any], threads: int, device: str | None) -> dict[str, list[str]]:
    """One cell in a worker process of :func:`run_comparison` (``jobs`` > 1)."""
    if device is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = device
    torch.set_num_threads(threads)
    logging.basicConfig(level=logging.INFO, format=f"%(asctime)s [{cell.key}] %(message)s", datefmt="%H:%M:%S")
    return run_comparison([cell], recipe, data, out_dir, measurement, report=False, **options)


def _in_parallel(cells: list[Cell], recipe: Recipe, data: DataSpec, out_dir: Path, measurement: Measurement,
                 jobs: int, options: dict[str, Any]) -> dict[str, list[str]]:
    """Cells in ``jobs`` worker processes (``concurrent.futures``, spawned: no CUDA state is forked), the CPU
    threads split between them and the local GPUs handed out round-robin. Each cell stores its own result."""
    import concurrent.futures
    import multiprocessing

    gpus = torch.cuda.device_count()
    threads = max(1, torch.get_num_threads() // jobs)
    summary: dict[str, list[str]] = {"ran": [], "skipped": [], "failed": []}
    with concurrent.futures.ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = [pool.submit(_cell_job, cell, recipe, data, out_dir, measurement, options, threads,
                               str(i % gpus) if gpus else None) for i, cell in enumerate(cells)]
        for future in concurrent.futures.as_completed(futures):
            for k, v in future.result().items():
                summary[k] += v
    return summary


def run_comparison(cells: Iterable[Cell], recipe: Recipe, data: DataSpec, out_dir: str | Path,
                   measurement: Measurement = Measurement(), *, workers: int = 0, retry_failed: bool = False,
                   keep_checkpoints: bool = False, progress: bool = False, jobs: int = 1,
                   report: bool = True) -> dict[str, list[str]]:
    """Run every cell not already stored, then write the report; returns the keys ran/skipped/failed.

    A cell that raises (e.g. a head that needs a stride the backbone lacks) is stored as
    ``status: failed`` with its error and not retried unless ``retry_failed``. ``jobs`` > 1 runs
    the cells in that many worker processes at once (:func:`_in_parallel`); on a cluster, run one
    cell per job instead (``mobiledense compare ... --cell KEY``, resumable) and ``--report-only``
    at the end.
    """
    out_dir, cells = Path(out_dir), list(cells)
    lock = lock_recipe(out_dir, recipe, data)
    store = ResultStore(out_dir / "cells")
    if jobs > 1:
        pending = [c for c in cells if not ((done := store.get(c)) and (done["status"] == "ok" or not retry_failed))]
        options = dict(workers=workers, retry_failed=retry_failed, keep_checkpoints=keep_checkpoints)
        summary = _in_parallel(pending, recipe, data, out_dir, measurement, min(jobs, max(len(pending), 1)), options)
        summary["skipped"] += [c.key for c in cells if c not in pending]
        if report:
            write_report(store.all(), out_dir, lock)
        return summary
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
    if report:
        write_report(store.all(), out_dir, lock)
    return summary


