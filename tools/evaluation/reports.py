"""PNG reports of evaluation results (matplotlib, Agg canvas, no pyplot global state).

Each writer builds its own ``Figure`` and renders it with ``FigureCanvasAgg``,
so it works headless and never touches the user's matplotlib backend.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

if TYPE_CHECKING:
    from .coco import CocoEvalResult

__all__ = ["pr_curves", "plot_pr_curves", "plot_per_class_bars", "plot_confusion_matrix"]


def _save(fig: Figure, path: str | Path, dpi: int = 100) -> Path:
    path = Path(path)
    if path.suffix.lower() != ".png":
        raise ValueError(f"reports are PNG files; {path} does not end in .png")
    path.parent.mkdir(parents=True, exist_ok=True)
    FigureCanvasAgg(fig)
    fig.savefig(path, dpi=dpi)
    return path


def pr_curves(result: CocoEvalResult) -> dict[str, np.ndarray]:
    """Class-averaged precision at the 101 recall points (area all, maxDets 100).

    Keys ``"0.50"``, ``"0.75"`` and ``"0.50:0.95"`` (mean over the 10 IoU thresholds);
    the mean of each curve is AP50, AP75 and AP of ``result.stats``.
    """
    p = result.precision[:, :, :, 0, -1]  # (T, R, K)
    present = (p > -1).all(axis=(0, 1))
    if not present.any():
        raise ValueError("no category has ground truth: there is no PR curve to plot")
    per_iou = p[:, :, present].mean(axis=2)  # (T, R)
    t = {f"{thr:.2f}": i for i, thr in enumerate(result.iou_thresholds)}
    return {"0.50": per_iou[t["0.50"]], "0.75": per_iou[t["0.75"]], "0.50:0.95": per_iou.mean(axis=0)}


def plot_pr_curves(result: CocoEvalResult, path: str | Path) -> Path:
    """Precision-recall curves at IoU .50, .75 and averaged over .50:.95 (COCO, classes averaged)."""
    fig = Figure(figsize=(6, 5))
    ax = fig.add_subplot()
    for name, curve in pr_curves(result).items():
        ax.plot(result.recall_thresholds, curve, label=f"IoU={name}  (AP {curve.mean():.3f})")
    ax.set(xlim=(0, 1), ylim=(0, 1.02), xlabel="recall", ylabel="precision",
           title=f"COCO {result.iou_type} PR ({result.num_images} images)")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower left")
    fig.tight_layout()
    return _save(fig, path)


def plot_per_class_bars(names: Sequence[str], values: Sequence[float], path: str | Path, title: str) -> Path:
    """Horizontal bar per class (IoU, AP, ...); NaN values are shown as "n/a"."""
    if len(names) != len(values):
        raise ValueError(f"{len(names)} names but {len(values)} values")
    vals = np.asarray(values, dtype=np.float64)
    fig = Figure(figsize=(7, 1.0 + 0.28 * len(names)))
    ax = fig.add_subplot()
    y = np.arange(len(names))
    ax.barh(y, np.nan_to_num(vals, nan=0.0), color="tab:blue")
    for yi, v in zip(y, vals):
        ax.text(0.005 if math.isnan(v) else v + 0.005, yi, "n/a" if math.isnan(v) else f"{v:.3f}",
                va="center", fontsize=8)
    finite = vals[np.isfinite(vals)]
    mean = float(finite.mean()) if finite.size else math.nan
    ax.set(yticks=y, yticklabels=list(names), xlim=(0, max(1.0, float(finite.max(initial=0)) * 1.1)),
           title=f"{title} (mean {mean:.3f})")
    ax.invert_yaxis()
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    return _save(fig, path)


def plot_confusion_matrix(conf: np.ndarray, names: Sequence[str], path: str | Path, normalize: bool = True) -> Path:
    """Confusion matrix heat map, rows = ground truth; a (K, K + 1) matrix shows its void column.

    With ``normalize`` each row is divided by its sum (per-class recall on the diagonal).
    """
    m = np.asarray(conf.cpu() if hasattr(conf, "cpu") else conf, dtype=np.float64)
    k = len(names)
    if m.shape not in ((k, k), (k, k + 1)):
        raise ValueError(f"confusion shape {m.shape} does not fit {k} names (expected ({k}, {k}) or ({k}, {k + 1}))")
    cols = list(names) + (["void"] if m.shape[1] == k + 1 else [])
    if normalize:
        rows = m.sum(1, keepdims=True)
        m = np.divide(m, rows, out=np.zeros_like(m), where=rows > 0)
    size = 2.5 + 0.4 * len(cols)
    fig = Figure(figsize=(size + 1.0, size))
    ax = fig.add_subplot()
    im = ax.imshow(m, cmap="viridis", vmin=0, vmax=1 if normalize else None, aspect="auto")
    fig.colorbar(im, ax=ax, fraction=0.046)
    ax.set(xticks=range(len(cols)), yticks=range(k), xlabel="prediction", ylabel="ground truth",
           title="confusion matrix" + (" (row-normalised)" if normalize else ""))
    ax.set_xticklabels(cols, rotation=90, fontsize=8)
    ax.set_yticklabels(list(names), fontsize=8)
    if len(cols) <= 25:
        for (i, j), v in np.ndenumerate(m):
            if v > 0:
                ax.text(j, i, f"{v:.2f}" if normalize else f"{int(v)}", ha="center", va="center", fontsize=5,
                        color="white" if v < 0.5 * (m.max() or 1) else "black")
    fig.tight_layout()
    return _save(fig, path)
