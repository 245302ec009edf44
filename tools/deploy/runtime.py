"""onnxruntime: sessions, :class:`OnnxModel` (any exported graph) and :class:`OnnxDetector`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .engines import EngineModel

__all__ = ["OnnxDetector", "OnnxModel", "ort_session"]


def ort_session(path: str | Path, threads: int | None = None) -> Any:
    """An onnxruntime CPU session with all graph optimisations, ``threads`` intra-op threads, no spinning."""
    try:
        import onnxruntime as ort
    except ImportError as e:
        raise ImportError("onnxruntime is not installed: pip install onnxruntime") from e
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if threads:
        opts.intra_op_num_threads, opts.inter_op_num_threads = threads, 1
    # No busy-waiting between runs: the graph is followed by PyTorch work (NMS, the evaluator), which
    # the spinning pool would compete with (on 2 cores: 17 ms median but 44 ms p90 end to end,
    # against 18 / 21 ms without).
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    opts.log_severity_level = 3
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


class OnnxModel(EngineModel):
    """An exported .onnx on an onnxruntime CPU session (:func:`ort_session`), called like our PyTorch model."""

    def __init__(self, path: str | Path, threads: int | None = None) -> None:
        self.session = ort_session(path, threads)
        super().__init__(None, self.session.get_modelmeta().custom_metadata_map, "onnxruntime")

    def _infer(self, x: Any) -> list[Any]:
        return self.session.run(None, {"images": x})


class OnnxDetector(OnnxModel):
    """An exported detector with its post-processing: ``OnnxDetector(path)(images) -> detections``.

    ``images``: an (N, 3, H, W) float tensor in [0, 1] (any size) or a list of (3, H, W)
    images (each run at its own size). Returns what ``SSDLite`` returns in eval mode:
    per image ``{"boxes" (M, 4) xyxy in input pixels, "scores", "labels"}``; ``raw(images)``
    gives the graph's ``[boxes, scores]``.
    """

    def __init__(self, path: str | Path, threads: int | None = None) -> None:
        try:
            super().__init__(path, threads)
        except ValueError:  # no task metadata at all
            self.task = None
        if self.task != "det":
            raise ValueError(f"{path} is not a detector exported by mobiledense export (no detector metadata)")
