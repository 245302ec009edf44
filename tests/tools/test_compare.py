"""``mobiledense compare``: the matrix runs end to end, resumes, refuses mixed recipes; units behind it."""

from __future__ import annotations

import csv
import json
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from torch import nn

from mobiledense.backbones import list_backbones
from mobiledense.tools import comparison as cmp
from mobiledense.tools.cli import main
from mobiledense.tools.engine import Trainer

BACKBONES = ["mobilenet_v3_small", "shufflenet_v2_x0_5"]
TINY = ["--epochs", "1", "--max-steps-per-epoch", "2", "--batch-size", "2", "--size", "96", "--seg-size", "64",
        "128", "--synthetic-images", "20", "--synthetic-frames", "8", "--latency-runs", "3", "--latency-warmup",
        "1", "--workers", "0", "--no-progress"]


def _smoke_argv(out: Path, *extra: str) -> list[str]:
    return ["compare", "--backbones", *BACKBONES, "--tasks", "det", "seg", "--seg-heads", "lraspp",
            "deeplabv3plus", "--output-dir", str(out), *TINY, *extra]


@pytest.fixture
def count_fits(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts Trainer.fit calls (one per trained cell)."""
    calls: list[int] = []
    fit = Trainer.fit

    def counting(self: Trainer) -> dict[str, float]:
        calls.append(1)
        return fit(self)

    monkeypatch.setattr(Trainer, "fit", counting)
    return calls


@pytest.fixture(scope="module")
def smoke(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, float]:
    out = tmp_path_factory.mktemp("compare")
    t0 = time.perf_counter()
    assert main(_smoke_argv(out)) == 0
    return out, time.perf_counter() - t0


def _read_png(path: Path) -> np.ndarray:
    img = cv2.imread(str(path), cv2.IMREAD_COLOR)
    assert img is not None and img.shape[0] > 300 and img.shape[1] > 500, path
    assert img.std() > 10  # something was drawn
    return img


def test_smoke_writes_table_csv_and_plots(smoke: tuple[Path, float]) -> None:
    out, seconds = smoke
    assert seconds < 120, f"the CI smoke comparison took {seconds:.0f} s"
    with (out / "results.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    cells = {(r["task"], r["head"], r["backbone"]) for r in rows}
    assert cells == {(t, h, b) for t, h in (("det", "ssdlite"), ("seg", "lraspp"), ("seg", "deeplabv3plus"))
                     for b in BACKBONES}
    for r in rows:
        assert r["status"] == "ok" and r["metric"] == ("mAP" if r["task"] == "det" else "mIoU")
        assert 0.0 <= float(r["accuracy"]) <= 1.0 and float(r["accuracy"]) == float(r[r["metric"]])
        assert float(r["params_m"]) > float(r["backbone_params_m"]) > 0
        assert float(r["madds_m"]) > 0 and float(r["train_images_per_s"]) > 0
        assert float(r["cpu_latency_ms"]) >= float(r["cpu_latency_min_ms"]) > 0
        assert (int(r["input_h"]), int(r["input_w"])) == ((96, 96) if r["task"] == "det" else (64, 128))
        assert r["train_steps"] == "2"
    # The heavier decoder costs more than LR-ASPP on the same backbone.
    madds = {(r["head"], r["backbone"]): float(r["madds_m"]) for r in rows}
    assert all(madds["deeplabv3plus", b] > madds["lraspp", b] for b in BACKBONES)
    md = (out / "results.md").read_text()
    assert "## Accuracy matrix" in md
    assert "| backbone | det ssdlite mAP | seg lraspp mIoU | seg deeplabv3plus mIoU |" in md
    for b in BACKBONES:
        assert f"| {b} |" in md
    for task in ("det", "seg"):
        for kind in ("latency", "madds"):
            _read_png(out / f"acc_vs_{kind}_{task}.png")
    for r in rows:  # checkpoints are dropped once a cell is stored; the log stays
        run = out / "runs" / f"{r['task']}__{r['head']}__{r['backbone']}"
        assert (run / "log.csv").is_file() and not (run / "checkpoints").exists()


def test_rerun_skips_stored_cells_and_finishes_missing_ones(smoke: tuple[Path, float], count_fits: list[int]) -> None:
    out, _ = smoke
    stored = {p.name: p.read_text() for p in (out / "cells").glob("*.json")}
    assert len(stored) == 6
    assert main(_smoke_argv(out)) == 0
    assert count_fits == []  # nothing trained
    assert {p.name: p.read_text() for p in (out / "cells").glob("*.json")} == stored
    # An interrupted comparison: one cell's result is missing, so exactly that cell runs again.
    lost = out / "cells" / "seg__lraspp__shufflenet_v2_x0_5.json"
    lost.unlink()
    assert main(_smoke_argv(out)) == 0
    assert count_fits == [1] and json.loads(lost.read_text())["status"] == "ok"


def test_other_recipe_in_same_folder_is_refused(smoke: tuple[Path, float], capsys) -> None:
    out, _ = smoke
    argv = _smoke_argv(out)
    argv[argv.index("--epochs") + 1] = "2"
    assert main(argv) == 2
    assert "recipe.epochs: 1 -> 2" in capsys.readouterr().err


def test_failed_cell_is_recorded_reported_and_retried_on_request(tmp_path: Path, count_fits: list[int]) -> None:
    recipe = cmp.Recipe(epochs=1, max_steps_per_epoch=1, batch_size=2, seg_size=(64, 128))
    data = cmp.DataSpec(synthetic_frames=4)
    cell = cmp.Cell("seg", "fpn", "squeezenet1_1")  # FPN reads a stride-32 map; SqueezeNet stops at 16
    quick = cmp.Measurement(latency_runs=1, latency_warmup=0)
    summary = cmp.run_comparison([cell], recipe, data, tmp_path, quick, workers=0)
    assert summary == {"ran": [], "skipped": [], "failed": [cell.key]}
    result = cmp.ResultStore(tmp_path / "cells").get(cell)
    assert result["status"] == "failed" and "output_stride" in result["error"]
    assert "## Failed cells" in (tmp_path / "results.md").read_text()
    assert cmp.run_comparison([cell], recipe, data, tmp_path, quick, workers=0)["skipped"] == [cell.key]
    again = cmp.run_comparison([cell], recipe, data, tmp_path, quick, workers=0, retry_failed=True)
    assert again["failed"] == [cell.key]


# --------------------------------------------------------------------------- units


def test_pareto_front_hand_example() -> None:
    costs = [1.0, 2.0, 3.0, 4.0, 2.5, float("nan"), 0.5, None]
    scores = [0.1, 0.5, 0.4, 0.9, 0.5, 1.0, 0.05, 0.99]
    # 2 is beaten by 1 (cheaper, better); 4 by 1 (cheaper, as good); 5 and 7 lack a number.
    assert cmp.pareto_front(costs, scores) == [6, 0, 1, 3]
    assert cmp.pareto_front([1.0, 1.0, 2.0], [0.5, 0.5, 0.4]) == [0, 1]  # ties are both kept
    assert cmp.pareto_front([], []) == []
    with pytest.raises(ValueError):
        cmp.pareto_front([1.0], [0.1, 0.2])


def test_make_cells_validates_names() -> None:
    cells = cmp.make_cells(["det", "seg"], ["mobilenet_v2"], ["lraspp", "fpn"])
    assert [c.key for c in cells] == ["det__ssdlite__mobilenet_v2", "seg__lraspp__mobilenet_v2",
                                      "seg__fpn__mobilenet_v2"]
    assert len(cmp.make_cells(["det"])) == len(list_backbones())
    with pytest.raises(ValueError, match="unknown backbone 'resnet50'.*mobilenet_v3_large"):
        cmp.make_cells(["det"], ["resnet50"])
    with pytest.raises(ValueError, match="unknown seg head 'segnet'"):
        cmp.make_cells(["seg"], ["mobilenet_v2"], ["segnet"])
    with pytest.raises(ValueError, match="ssdlite"):
        cmp.Cell("det", "lraspp", "mobilenet_v2")


def test_partial_real_detection_data_is_refused() -> None:
    with pytest.raises(ValueError, match="missing --det-val-images, --det-val-ann"):
        cmp.DataSpec(det_train_images="a", det_train_ann="b.json")


class _Sleeper(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        time.sleep(0.004)
        return x


def test_measure_latency_times_each_run_and_restores_threads() -> None:
    before = torch.get_num_threads()
    ms = cmp.measure_latency(_Sleeper(), torch.zeros(1), runs=5, warmup=1, threads=1)
    assert len(ms) == 5 and all(4.0 <= t < 500.0 for t in ms) and torch.get_num_threads() == before
    with pytest.raises(ValueError):
        cmp.measure_latency(_Sleeper(), torch.zeros(1), runs=0)


def test_result_store_roundtrip(tmp_path: Path) -> None:
    store, cell = cmp.ResultStore(tmp_path), cmp.Cell("seg", "lraspp", "mobilenet_v2")
    assert store.get(cell) is None
    store.put(cell, {"status": "ok", "accuracy": 0.5})
    assert store.get(cell) == {"status": "ok", "accuracy": 0.5} and store.all() == [store.get(cell)]
    assert [p.name for p in tmp_path.iterdir()] == ["seg__lraspp__mobilenet_v2.json"]  # no temp files left


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory: pytest.TempPathFactory) -> dict[str, cmp.TaskData]:
    root = tmp_path_factory.mktemp("data")
    recipe, spec = cmp.Recipe(det_size=96, seg_size=(64, 128)), cmp.DataSpec(synthetic_images=10, synthetic_frames=4)
    return {t: cmp.load_task_data(t, spec, recipe, root) for t in ("det", "seg")}


@pytest.mark.parametrize("frozen", [True, False])
@pytest.mark.parametrize("cell", [cmp.Cell("det", "ssdlite", "mobilenet_v3_small"),
                                  cmp.Cell("seg", "lraspp", "mobilenet_v3_small")], ids=lambda c: c.task)
def test_frozen_backbone_stays_bit_identical_while_head_learns(
        cell: cmp.Cell, frozen: bool, tiny_data: dict[str, cmp.TaskData], tmp_path: Path) -> None:
    recipe = cmp.Recipe(epochs=1, max_steps_per_epoch=2, batch_size=2, det_size=96, seg_size=(64, 128),
                        warmup_iters=0, frozen_backbone=frozen)
    data = tiny_data[cell.task]
    torch.manual_seed(0)
    model = cmp.build_model(cell, data, recipe)
    backbone = cmp.freeze_backbone(model) if frozen else cmp.find_backbone(model)
    prefix = next(name for name, m in model.named_modules() if m is backbone) + "."
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model.train()
    assert backbone.training is not frozen  # frozen: BN keeps its running statistics
    cmp.train_model(model, cell, data, recipe, tmp_path, workers=0)
    after = model.state_dict()
    in_backbone = {k for k in after if k.startswith(prefix)}
    assert in_backbone and len(in_backbone) < len(after)
    same = {k for k in before if torch.equal(before[k], after[k])}
    if frozen:
        assert in_backbone <= same
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        assert 0 < trainable < sum(p.numel() for p in model.parameters())
    else:
        assert not in_backbone <= same
    changed_head = [k for k in set(after) - in_backbone if after[k].is_floating_point() and k not in same]
    assert changed_head, "the head did not learn"


def test_cells_run_in_parallel_processes_and_one_by_one(tmp_path: Path, capsys) -> None:
    """``--jobs 2``: two cells at once, each in its own process, each stored; ``--cell`` runs one cell (one
    job per cell on a cluster), ``--list-cells`` names them, and the report gathers every stored cell."""
    base = ["compare", "--tasks", "det", "--backbones", "mobilenet_v3_small", "shufflenet_v2_x0_5", "--epochs", "1",
            "--max-steps-per-epoch", "1", "--batch-size", "2", "--size", "64", "--synthetic-images", "8",
            "--latency-runs", "1", "--latency-warmup", "0", "--no-progress", "--output-dir", str(tmp_path / "c")]
    assert main([*base, "--list-cells"]) == 0
    keys = capsys.readouterr().out.split()
    assert keys == ["det__ssdlite__mobilenet_v3_small", "det__ssdlite__shufflenet_v2_x0_5"]
    assert main([*base, "--cell", keys[1]]) == 0
    assert [p.stem for p in (tmp_path / "c" / "cells").glob("*.json")] == [keys[1]]
    assert main([*base, "--jobs", "2"]) == 0  # the stored cell is skipped, the other runs in a worker process
    stored = {p.stem: json.loads(p.read_text())["status"] for p in (tmp_path / "c" / "cells").glob("*.json")}
    assert stored == {k: "ok" for k in keys}
    assert all(k.split("__")[-1] in (tmp_path / "c" / "results.md").read_text() for k in keys)
    assert main([*base, "--cell", "det__ssdlite__nope"]) == 2
