"""The sections of ``mobiledense bench`` and the loop that runs them."""

from __future__ import annotations

import time
from typing import Any, Callable, Sequence

from .common import BenchConfig, Row
from .deployment import bench_deploy, bench_export
from .inference import bench_backbones, bench_det, bench_seg
from .pipeline import bench_data, bench_eval
from .training import bench_train
from .video import bench_video

__all__ = ["SECTIONS", "run_sections"]


#: Section name -> (function, runs once per device?)
SECTIONS: dict[str, tuple[Callable[[BenchConfig, str], list[Row]], bool]] = {
    "det": (bench_det, True),
    "seg": (bench_seg, True),
    "backbones": (bench_backbones, True),
    "train": (bench_train, True),
    "data": (bench_data, False),
    "eval": (bench_eval, False),
    "export": (bench_export, False),
    "deploy": (bench_deploy, False),
    "video": (bench_video, True),
}


def run_sections(cfg: BenchConfig, only: Sequence[str], log: Callable[[str], None] = print
                 ) -> dict[str, dict[str, Any]]:
    """Run the selected sections; a section that cannot run is recorded as skipped with the reason."""
    results: dict[str, dict[str, Any]] = {}
    for name in only:
        fn, per_device = SECTIONS[name]
        rows: list[Row] = []
        tic = time.perf_counter()
        try:
            for device in (cfg.devices if per_device else ("cpu",)):
                log(f"[{name}] {device} ...")
                rows += fn(cfg, device)
        except (FileNotFoundError, ModuleNotFoundError) as e:
            if isinstance(e, ModuleNotFoundError) and (e.name or "").startswith("mobiledense"):
                raise  # our own code is broken: never report that as "skipped"
            log(f"[{name}] skipped: {e}")
            results[name] = {"skipped": str(e), "rows": [r.as_dict() for r in rows]}
            continue
        results[name] = {"rows": [r.as_dict() for r in rows], "seconds": time.perf_counter() - tic}
    return results

