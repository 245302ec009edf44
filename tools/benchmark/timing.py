"""Interleaved timing and the machine facts a timing table must be read with.

``warmup`` calls each, then ``repeats`` rounds in which every contender runs once, in
rotating order, so a change of machine load hits all of them alike; the median and 90th
percentile of the per-call times are reported (CUDA: synchronised by ``sync``).
"""

from __future__ import annotations

import os
import platform
import statistics
import time
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np
import torch

__all__ = ["Timing", "time_interleaved", "sync_fn", "machine_info"]


@dataclass
class Timing:
    """Per-call wall times of one contender (seconds)."""

    median: float
    p90: float
    min: float
    n: int

    @classmethod
    def of(cls, seconds: Sequence[float]) -> "Timing":
        s = sorted(seconds)
        return cls(statistics.median(s), float(np.percentile(s, 90)), s[0], len(s))


def time_interleaved(fns: dict[str, Callable[[], Any]], repeats: int, warmup: int = 1,
                     sync: Callable[[], None] | None = None) -> dict[str, Timing]:
    """Time every function ``repeats`` times, round-robin with a rotating order (see module doc)."""
    sync = sync or (lambda: None)
    names = list(fns)
    for _ in range(warmup):
        for name in names:
            fns[name]()
    sync()
    times: dict[str, list[float]] = {n: [] for n in names}
    for r in range(max(1, repeats)):
        for name in names[r % len(names):] + names[:r % len(names)]:
            tic = time.perf_counter()
            fns[name]()
            sync()
            times[name].append(time.perf_counter() - tic)
    return {n: Timing.of(t) for n, t in times.items()}


def sync_fn(device: str) -> Callable[[], None] | None:
    return torch.cuda.synchronize if device.startswith("cuda") else None


def machine_info(threads: int) -> dict[str, Any]:
    """CPU model, cores, load, library versions: what a timing table must be read with."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    import torchvision

    info: dict[str, Any] = {
        "cpu": cpu, "logical_cores": os.cpu_count(), "threads": threads, "python": platform.python_version(),
        "torch": torch.__version__, "torchvision": torchvision.__version__, "platform": platform.platform(),
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }
    try:
        import onnxruntime

        info["onnxruntime"] = onnxruntime.__version__
    except ImportError:
        info["onnxruntime"] = None
    return info

