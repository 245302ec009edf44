"""The comparison report: ``results.csv``, ``results.md`` and accuracy-vs-cost plots with the Pareto front."""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Any, Iterable, Sequence

from .cells import DET_HEAD, METRIC, TASKS

__all__ = ["CSV_COLUMNS", "result_rows", "pareto_front", "markdown_report", "accuracy_limits", "tradeoff_figure",
           "plot_tradeoff", "write_report"]


CSV_COLUMNS = [
    "task", "head", "backbone", "status", "metric", "accuracy", "mAP", "AP50", "mIoU", "pixel_acc", "params_m",
    "backbone_params_m", "trainable_params_m", "madds_m", "input_h", "input_w", "cpu_latency_ms",
    "cpu_latency_min_ms", "latency_threads", "gpu_latency_ms", "train_images_per_s", "train_time_s", "train_steps",
    "final_loss", "frozen_backbone", "init", "upstream_top1", "upstream_top5", "upstream_data", "device", "error",
]


def result_rows(results: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """Flat rows (CSV_COLUMNS), per task: successful cells by decreasing accuracy, then failed ones."""
    rows = []
    for r in results:
        row: dict[str, Any] = {k: r.get(k) for k in CSV_COLUMNS}
        row.update(r.get("metrics", {}))
        for k in ("params", "backbone_params", "trainable_params", "madds"):
            row[f"{k}_m"] = r[k] / 1e6 if r.get(k) is not None else None
        row["input_h"], row["input_w"] = r.get("input_size") or (None, None)
        rows.append(row)
    return sorted(rows, key=lambda r: (r["task"], r["status"] != "ok", -(r["accuracy"] or 0.0), r["head"],
                                       r["backbone"]))


def _num(v: Any) -> float:
    return float("nan") if v is None else float(v)


def pareto_front(costs: Sequence[float | None], scores: Sequence[float | None]) -> list[int]:
    """Indices of the points no other point beats (cost <= and score >= with one strictly), by cost.

    Points with a missing or NaN cost/score are never on the front; identical points are both on it.
    """
    pts = [(_num(c), _num(s)) for c, s in zip(costs, scores, strict=True)]
    valid = [i for i, (c, s) in enumerate(pts) if c == c and s == s]
    front = [i for i in valid if not any(
        pts[j][0] <= pts[i][0] and pts[j][1] >= pts[i][1] and pts[j] != pts[i] for j in valid)]
    return sorted(front, key=lambda i: pts[i])


def _column_order(task: str, head: str) -> tuple[int, bool, str]:
    """Tasks in TASKS order; within seg, LR-ASPP first, then the smp decoders by name."""
    return TASKS.index(task), head not in (DET_HEAD, "lraspp"), head


def _fmt(v: Any, digits: int = 1, scale: float = 1.0) -> str:
    return "n/a" if v is None or v != v else f"{v * scale:.{digits}f}"


def _params(row: dict[str, Any]) -> str:
    """Total params; with a frozen backbone also the trained ones."""
    total, trained = row["params_m"], row["trainable_params_m"]
    return _fmt(total, 2) + (f" ({_fmt(trained, 2)} trained)" if trained is not None and trained < total else "")


def _describe(lock: dict[str, Any]) -> list[str]:
    r, d = lock["recipe"], lock["data"]
    steps = f" (at most {r['max_steps_per_epoch']} steps each)" if r["max_steps_per_epoch"] else ""
    det_data = (f"COCO-format `{d['det_train_ann']}` -> `{d['det_val_ann']}`" if d["det_train_ann"]
                else f"synthetic shapes ({d['synthetic_images']} images, 20% val)")
    seg_data = (f"Cityscapes layout `{d['seg_root']}` ({d['seg_train_split']} -> {d['seg_val_split']})"
                if d["seg_root"] else f"synthetic streets ({d['synthetic_frames']} train frames)")
    init = f"from `{r['weights_backbone']}` where present" if r["weights_backbone"] else "random"
    upstream = ("- Upstream (cls) top-1: the classification accuracy the backbone's file records (a `mobiledense "
                "train cls` checkpoint, on its own val set); n/a for other files.") if r["weights_backbone"] else None
    return [
        f"- Recipe (every cell): {r['epochs']} epochs{steps}, batch {r['batch_size']}, AdamW "
        f"(lr det {r['det_lr']:g} / seg {r['seg_lr']:g}, wd {r['weight_decay']:g}), cosine, warm-up "
        f"{r['warmup_iters']} steps, seed {r['seed']}; det {r['det_size']}x{r['det_size']}, seg "
        f"{r['seg_size'][0]}x{r['seg_size'][1]}; backbone "
        f"{'FROZEN (head-only probe)' if r['frozen_backbone'] else 'trained'}, init {init}.",
        f"- Data: det {det_data}; seg {seg_data}.",
        "- MAdds and latency at those sizes, batch 1 (det: network only, no resize/NMS). CPU latency: median "
        "of timed forwards after warm-up; train img/s: the Trainer's end-to-end rate (data loading included), "
        "median over epochs. Timings depend on the machine and its load.",
    ] + ([upstream] if upstream else [])


def markdown_report(rows: Sequence[dict[str, Any]], lock: dict[str, Any]) -> str:
    """``results.md``: recipe, the backbone x (task, head) accuracy matrix, per-task tables, failures."""
    ok = [r for r in rows if r["status"] == "ok"]
    lines = ["# Backbone comparison", "", *_describe(lock), ""]
    columns = sorted({(r["task"], r["head"], r["metric"]) for r in rows}, key=lambda c: _column_order(*c[:2]))
    upstream = {r["backbone"]: r["upstream_top1"] for r in ok if r.get("upstream_top1") is not None}
    if ok:
        lines += ["## Accuracy matrix", "",
                  "| backbone | " + ("cls top-1 (upstream) | " if upstream else "")
                  + " | ".join(f"{t} {h} {m}" for t, h, m in columns) + " |",
                  "|---|" + "---:|" * (len(columns) + bool(upstream))]
        acc = {(r["task"], r["head"], r["backbone"]): r for r in rows}
        for b in sorted({r["backbone"] for r in rows}):
            cells = [acc.get((t, h, b)) for t, h, _ in columns]
            lines.append(f"| {b} | " + (f"{_fmt(upstream.get(b), 1, 100)} | " if upstream else "") + " | ".join(
                "" if c is None else "failed" if c["status"] != "ok" else _fmt(c["accuracy"], 1, 100)
                for c in cells) + " |")
        lines.append("")
    for task in TASKS:
        task_rows = [r for r in ok if r["task"] == task]
        if not task_rows:
            continue
        metric, extra = METRIC[task], "AP50" if task == "det" else "pixel_acc"
        gpu = any(r["gpu_latency_ms"] is not None for r in task_rows)
        fronts = {name: set(pareto_front([r[key] for r in task_rows], [r["accuracy"] for r in task_rows]))
                  for name, key in (("latency", "cpu_latency_ms"), ("MAdds", "madds_m"))}
        threads = task_rows[0]["latency_threads"]
        lines += [f"## {task}: {metric} (%) on the validation set, best first", "",
                  f"| # | backbone | head | {metric} | {extra} | " + ("cls top-1 | " if upstream else "")
                  + f"params (M) | MAdds (M) | CPU ms ({threads} thr) | "
                  + ("GPU ms | " if gpu else "") + "train img/s | Pareto front |",
                  "|---:|---|---|---:|---:|" + ("---:|" if upstream else "") + "---:|---:|---:|"
                  + ("---:|" if gpu else "") + "---:|---|"]
        for i, r in enumerate(task_rows):
            front = ", ".join(name for name, idx in fronts.items() if i in idx)
            lines.append(f"| {i + 1} | {r['backbone']} | {r['head']} | {_fmt(r['accuracy'], 1, 100)} | "
                         f"{_fmt(r.get(extra), 1, 100)} | "
                         + (f"{_fmt(r.get('upstream_top1'), 1, 100)} | " if upstream else "")
                         + f"{_params(r)} | {_fmt(r['madds_m'], 0)} | "
                         f"{_fmt(r['cpu_latency_ms'], 1)} | " + (f"{_fmt(r['gpu_latency_ms'], 2)} | " if gpu else "")
                         + f"{_fmt(r['train_images_per_s'], 1)} | {front} |")
        lines.append("")
    failed = [r for r in rows if r["status"] != "ok"]
    if failed:
        lines += ["## Failed cells", ""] + [f"- {r['task']} {r['head']} {r['backbone']}: {r['error']}"
                                            for r in failed] + [""]
    return "\n".join(lines)


#: The least span of a trade-off plot's accuracy axis, in points: a 0.3-point gap never fills the plot.
MIN_ACCURACY_SPAN = 10.0


def accuracy_limits(ys: Sequence[float], min_span: float = MIN_ACCURACY_SPAN) -> tuple[float, float]:
    """The y range of a trade-off plot: the values with a 5% margin, widened to at least ``min_span``
    points around their middle and kept inside [0, 100]."""
    lo, hi = min(ys), max(ys)
    span = max(hi - lo, min_span) * 1.1
    mid = (lo + hi) / 2
    a, b = mid - span / 2, mid + span / 2
    if a < 0:
        a, b = 0.0, span
    if b > 100:
        a, b = max(0.0, 100 - span), 100.0
    return a, b


def tradeoff_figure(rows: Sequence[dict[str, Any]], x_key: str, x_label: str, title: str) -> Any:
    """Accuracy (%) vs a cost, one marker per head, every point labelled, the Pareto front as a step line.

    Axes are honest about scale: the accuracy axis spans at least :data:`MIN_ACCURACY_SPAN`
    points and a linear cost axis starts at 0, so small differences look small; the range the
    cells actually cover is written under the title.
    """
    from matplotlib.figure import Figure

    ok = [r for r in rows if r["status"] == "ok" and r.get(x_key) is not None]
    if not ok:
        raise ValueError(f"no successful cell has {x_key!r}: nothing to plot")
    xs, ys = [r[x_key] for r in ok], [100 * r["accuracy"] for r in ok]
    fig = Figure(figsize=(9, 5.5))
    ax = fig.add_subplot()
    for k, head in enumerate(sorted({r["head"] for r in ok}, key=lambda h: _column_order(ok[0]["task"], h))):
        idx = [i for i, r in enumerate(ok) if r["head"] == head]
        ax.scatter([xs[i] for i in idx], [ys[i] for i in idx], marker="osD^vPX*"[k % 8], color=f"C{k}", s=36,
                   zorder=3, label=head)
    front = pareto_front(xs, ys)
    fx, fy = [xs[i] for i in front], [ys[i] for i in front]
    ax.step(fx + [max(xs)], fy + [fy[-1]], where="post", color="black", linestyle="--", linewidth=1.2, zorder=2,
            label="Pareto front")
    ax.scatter(fx, fy, s=150, facecolors="none", edgecolors="crimson", linewidths=1.6, zorder=4,
               label="on the front")
    log_x = min(xs) > 0 and max(xs) / min(xs) > 20
    if log_x:
        ax.set_xscale("log")
        ax.margins(x=0.08)
    else:
        ax.set_xlim(0, max(xs) * 1.12 if max(xs) > 0 else 1)
    ax.set_ylim(*accuracy_limits(ys))
    lo, hi = (math.log(v) if log_x else v for v in ax.get_xlim())
    for x, y, r in zip(xs, ys, ok):  # labels of the rightmost quarter go left of their point
        right = hi > lo and ((math.log(x) if log_x else x) - lo) / (hi - lo) > 0.75
        ax.annotate(r["backbone"], (x, y), textcoords="offset points", xytext=(-5 if right else 5, 3),
                    ha="right" if right else "left", fontsize=7)
    metric = ok[0]["metric"]
    ax.set(xlabel=x_label, ylabel=f"{metric} (%)")
    ax.set_title(f"{title}\n{metric} of the cells: {min(ys):.1f} to {max(ys):.1f} ({max(ys) - min(ys):.1f} points; "
                 f"the axis spans at least {MIN_ACCURACY_SPAN:g})", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0)
    fig.tight_layout()
    return fig


def plot_tradeoff(rows: Sequence[dict[str, Any]], x_key: str, x_label: str, path: str | Path, title: str) -> Path:
    """:func:`tradeoff_figure` saved as a PNG."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    fig = tradeoff_figure(rows, x_key, x_label, title)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    FigureCanvasAgg(fig)
    fig.savefig(path, dpi=110)
    return path


def write_report(results: Iterable[dict[str, Any]], out_dir: str | Path, lock: dict[str, Any]) -> list[Path]:
    """``results.csv``, ``results.md`` and ``acc_vs_{latency,madds}_<task>.png`` in ``out_dir``."""
    out_dir, rows = Path(out_dir), result_rows(results)
    written = [out_dir / "results.csv", out_dir / "results.md"]
    with written[0].open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=CSV_COLUMNS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    written[1].write_text(markdown_report(rows, lock))
    frozen = " (frozen backbone)" if lock["recipe"]["frozen_backbone"] else ""
    for task in TASKS:
        task_rows = [r for r in rows if r["task"] == task and r["status"] == "ok"]
        if not task_rows:
            continue
        h, w, thr = task_rows[0]["input_h"], task_rows[0]["input_w"], task_rows[0]["latency_threads"]
        for name, key, label in (("latency", "cpu_latency_ms", f"CPU latency (ms, batch 1, {thr} thread(s))"),
                                 ("madds", "madds_m", "MAdds (M)")):
            written.append(plot_tradeoff(task_rows, key, f"{label} at {h}x{w}", out_dir / f"acc_vs_{name}_{task}.png",
                                         f"{task}: {METRIC[task]} vs {label.split(' (')[0]}{frozen}"))
    return written
