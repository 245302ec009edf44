"""Measurements behind ``mobiledense bench``: ours against torchvision, same weights, one process.

Every comparison builds the reference (torchvision, or timm for Xception), gives it
calibrated random weights (He-initialised convolutions, BatchNorm statistics measured on a
random batch, so activations are O(1) and a wrong layer would show), loads the *same*
weights into our model, checks that both give the same outputs, then times them
(:mod:`.timing`: interleaved rounds, median and p90). Speed-up = reference time / our time.
Threads are fixed by the caller (``torch.set_num_threads``; onnxruntime gets the same number).

Modules: :mod:`.timing`, :mod:`.common` (rows, config, calibrated twins), one per section
family (:mod:`.inference`, :mod:`.training`, :mod:`.pipeline`, :mod:`.deployment`),
:mod:`.runner` (the section table) and :mod:`.report` (text / Markdown tables).
"""

from mobiledense.tools.deploy import compare_detections

from .common import BenchConfig, Row, calibrate_, calibrate_detector_
from .pipeline import synthetic_coco
from .runner import SECTIONS, run_sections
from .timing import Timing, machine_info, time_interleaved
from .training import compile_detector_

__all__ = ["BenchConfig", "Row", "SECTIONS", "Timing", "calibrate_", "calibrate_detector_", "compare_detections",
           "compile_detector_", "machine_info", "run_sections", "synthetic_coco", "time_interleaved"]
