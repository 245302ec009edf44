"""Backbones compared on downstream tasks under one seeded recipe (``mobiledense compare``).

:mod:`.cells` defines the matrix and the recipe, :mod:`.runner` trains, evaluates and
measures each cell (one atomically written result file per cell, resumable), :mod:`.report`
writes the CSV / Markdown tables and the Pareto plots.
"""

from .cells import DET_HEAD, METRIC, TASKS, Cell, DataSpec, Measurement, Recipe, make_cells, seg_head_names
from .report import CSV_COLUMNS, markdown_report, pareto_front, plot_tradeoff, result_rows, write_report
from .runner import (ResultStore, TaskData, build_model, evaluate_model, find_backbone, freeze_backbone,
                     inference_net, load_task_data, lock_recipe, measure_latency, run_cell, run_comparison,
                     train_model, upstream_accuracy)

__all__ = ["CSV_COLUMNS", "DET_HEAD", "METRIC", "TASKS", "Cell", "DataSpec", "Measurement", "Recipe", "ResultStore",
           "TaskData", "build_model", "evaluate_model", "find_backbone", "freeze_backbone", "inference_net",
           "load_task_data", "lock_recipe", "make_cells", "markdown_report", "measure_latency", "pareto_front",
           "plot_tradeoff", "result_rows", "run_cell", "run_comparison", "seg_head_names", "train_model",
           "upstream_accuracy", "write_report"]
