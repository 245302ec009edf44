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

__all__ = ["pr_curves", "plot_pr_curves", "plot_per_class_bars", "confusion_figure", "plot_confusion_matrix",
           "class_pr_curves", "per_class_pr_figure", "plot_per_class_pr", "size_breakdown_figure",
           "plot_size_breakdown"]


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


def class_pr_curves(result: CocoEvalResult, k: int) -> dict[str, np.ndarray]:
    """Precision at the 101 recall points of category index ``k`` (area all, maxDets 100): IoU .50 and the
    mean over .50:.95; their means are the class's AP50 and AP. Recall points it never reaches are 0."""
    p = result.precision[:, :, k, 0, -1]
    if (p == -1).all():
        raise ValueError(f"category {result.category_ids[k]} has no ground truth: no PR curve")
    p = np.where(p < 0, 0.0, p)
    t50 = int(np.argmin(np.abs(result.iou_thresholds - 0.5)))
    return {"0.50": p[t50], "0.50:0.95": p.mean(0)}


def per_class_pr_figure(result: CocoEvalResult, max_classes: int = 30, columns: int = 6) -> Figure:
    """Small multiples: one PR panel per category with ground truth (most objects first, at most
    ``max_classes``), IoU .50 and .50:.95, titled with the name, its AP and its number of objects."""
    rows = [(k, c) for k, c in enumerate(result.per_class) if c.num_gt > 0]
    if not rows:
        raise ValueError("no category has ground truth: there is no PR curve to plot")
    rows = sorted(rows, key=lambda kc: (-kc[1].num_gt, kc[1].name))
    shown, left = rows[:max_classes], len(rows) - max_classes
    cols = min(columns, len(shown))
    nrows = -(-len(shown) // cols)
    fig = Figure(figsize=(2.3 * cols, 2.1 * nrows + 0.6))
    axes = fig.subplots(nrows, cols, squeeze=False, sharex=True, sharey=True)
    for ax, (k, c) in zip(axes.flat, shown):
        curves = class_pr_curves(result, k)
        ax.plot(result.recall_thresholds, curves["0.50"], color="#1f77b4", label="IoU .50")
        ax.plot(result.recall_thresholds, curves["0.50:0.95"], color="#d62728", label="IoU .50:.95")
        ax.set_title(f"{c.name}  AP {c.ap:.2f}  (n={c.num_gt})", fontsize=8)
        ax.set(xlim=(0, 1), ylim=(0, 1.02))
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(shown):]:
        ax.set_visible(False)
    for ax in axes[-1]:
        ax.set_xlabel("recall", fontsize=8)
    for ax in axes[:, 0]:
        ax.set_ylabel("precision", fontsize=8)
    axes.flat[0].legend(fontsize=7, loc="lower left")
    more = f"; {left} more classes in metrics.json" if left > 0 else ""
    fig.suptitle(f"per-class precision-recall (COCO {result.iou_type}, {result.num_images} images{more})",
                 fontsize=10)
    fig.tight_layout()
    return fig


def plot_per_class_pr(result: CocoEvalResult, path: str | Path, max_classes: int = 30) -> Path:
    """:func:`per_class_pr_figure` as a PNG."""
    return _save(per_class_pr_figure(result, max_classes), path, dpi=110)


def size_breakdown_figure(result: CocoEvalResult) -> Figure:
    """AP and AR (maxDets 100) per COCO size range (small < 32², medium < 96², large), each bar
    labelled with its value and the range's number of ground-truth objects (n/a: none in the set)."""
    s = result.as_dict()
    counts = result.extras.get("gt_per_area", {})
    ranges = ("small", "medium", "large")
    fig = Figure(figsize=(6.4, 4.0))
    ax = fig.add_subplot()
    x = np.arange(len(ranges))
    for j, (kind, colour) in enumerate((("AP", "#1f77b4"), ("AR", "#ff7f0e"))):
        vals = [s[f"{kind}{r[0]}"] for r in ranges]
        bars = ax.bar(x + (j - 0.5) * 0.38, [max(v, 0) for v in vals], 0.36, color=colour,
                      label=f"{kind} @[.50:.95] (all: {s[kind if kind == 'AP' else 'AR100']:.3f})")
        for b, v in zip(bars, vals):
            ax.text(b.get_x() + b.get_width() / 2, max(v, 0) + 0.01, "n/a" if v < 0 else f"{v:.3f}", ha="center",
                    va="bottom", fontsize=8)
    ax.set_xticks(x, [f"{r}\n({counts.get(r, '?')} objects)" for r in ranges])
    ax.set(ylim=(0, 1.08), ylabel="score", title=f"COCO {result.iou_type} by object size ({result.num_images} images)")
    ax.legend(fontsize=8, loc="upper left")
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    return fig


def plot_size_breakdown(result: CocoEvalResult, path: str | Path) -> Path:
    """:func:`size_breakdown_figure` as a PNG."""
    return _save(size_breakdown_figure(result), path, dpi=110)


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


def _compact(v: float) -> str:
    """A count in at most 4 characters: 987, 12k, 3.4M."""
    for div, unit in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if v >= div:
            q = v / div
            return f"{q:.1f}{unit}" if q < 10 else f"{q:.0f}{unit}"
    return f"{int(v)}"


#: The fill of rows whose class has no ground truth (a neutral grey no colour map cell takes).
NO_GT_GREY = "#d9d9d9"


def confusion_figure(conf: np.ndarray, names: Sequence[str], normalize: bool = True, unit: str = "pixels") -> Figure:
    """The confusion matrix as a matplotlib ``Figure`` (what :func:`plot_confusion_matrix` saves).

    Rows are ground truth, columns predictions. Cells are at least 0.42 in (50 px at the saved
    120 dpi) and carry their value in 7 pt type: percent of the row when ``normalize``, else a
    compact count (12k, 3.4M). Rows of classes with no ground-truth pixels are grey, hatched and
    say so (they are not 0-recall rows). A (K, K + 1) matrix shows its last column as "void":
    predictions outside the K classes, which count as errors of the row's class (as in
    cityscapesScripts); a caption under the plot says this. ``unit`` names what is counted
    ("pixels" for segmentation, "images" for classification).
    """
    m = np.asarray(conf.cpu() if hasattr(conf, "cpu") else conf, dtype=np.float64)
    k = len(names)
    if m.shape not in ((k, k), (k, k + 1)):
        raise ValueError(f"confusion shape {m.shape} does not fit {k} names (expected ({k}, {k}) or ({k}, {k + 1}))")
    has_void = m.shape[1] == k + 1
    cols = list(names) + (["void"] if has_void else [])
    rows = m.sum(1)
    no_gt = rows == 0
    shown = np.divide(m, rows[:, None], out=np.zeros_like(m), where=rows[:, None] > 0) if normalize else m
    cell = 0.42
    fig = Figure(figsize=(2.6 + cell * len(cols) + 1.2, 2.4 + cell * k + (0.5 if has_void else 0.0)))
    ax = fig.add_subplot()
    masked = np.ma.masked_array(shown, mask=np.repeat(no_gt[:, None], len(cols), 1))
    from matplotlib import colormaps
    from matplotlib.patches import Rectangle

    cmap = colormaps["viridis"].with_extremes(bad=NO_GT_GREY)
    vmax = 1.0 if normalize else max(float(shown.max()), 1.0)
    im = ax.imshow(masked, cmap=cmap, vmin=0, vmax=vmax, aspect="equal", interpolation="nearest")
    cb = fig.colorbar(im, ax=ax, fraction=0.035, pad=0.02)
    cb.set_label(f"share of the row's ground-truth {unit} (%)" if normalize else unit)
    if normalize:
        cb.set_ticks(np.linspace(0, 1, 6), labels=[f"{t:.0f}" for t in np.linspace(0, 100, 6)])
    ax.set_xticks(range(len(cols)), labels=cols, rotation=90, fontsize=8)
    ax.set_yticks(range(k), labels=[n + ("  (no GT)" if z else "") for n, z in zip(names, no_gt)], fontsize=8)
    ax.set_xlabel("prediction", fontsize=9)
    ax.set_ylabel("ground truth", fontsize=9)
    ax.set_title("confusion matrix" + (" (% of each ground-truth row)" if normalize else f" ({unit})"), fontsize=10)
    ax.tick_params(length=2)
    for i in np.flatnonzero(no_gt):
        ax.add_patch(Rectangle((-0.5, i - 0.5), len(cols), 1, fill=False, hatch="//", edgecolor="#9a9a9a",
                               linewidth=0))
        ax.text((len(cols) - 1) / 2, i, f"no ground-truth {unit} of this class", ha="center", va="center",
                fontsize=7, color="#333333", bbox={"facecolor": NO_GT_GREY, "edgecolor": "none", "pad": 1.5})
    if has_void:
        ax.axvline(k - 0.5, color="white", linewidth=2.0)
        fig.text(0.01, 0.01, f"void: predictions outside the {k} classes (ignore / unknown ids); they count as "
                 "errors of the row's class, as in cityscapesScripts", fontsize=8, ha="left", va="bottom",
                 color="#333333")
    for (i, j), v in np.ndenumerate(shown):
        if no_gt[i] or m[i, j] == 0:
            continue
        pct = 100 * v
        text = (f"{pct:.0f}" if pct >= 1 else "<1") if normalize else _compact(v)
        ax.text(j, i, text, ha="center", va="center", fontsize=7,
                color="white" if v < 0.6 * vmax else "black")
    fig.tight_layout(rect=(0, 0.03 if has_void else 0, 1, 1))
    return fig


def plot_confusion_matrix(conf: np.ndarray, names: Sequence[str], path: str | Path, normalize: bool = True,
                          unit: str = "pixels") -> Path:
    """Confusion matrix heat map as a PNG (see :func:`confusion_figure`)."""
    return _save(confusion_figure(conf, names, normalize, unit), path, dpi=120)
