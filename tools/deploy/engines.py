"""Exported artifacts as models: :class:`EngineModel` calls like our PyTorch detector / segmenter.

An engine (onnxruntime, OpenVINO) only has to run the graph on an (N, 3, H, W) float array;
this class turns it back into what ``SSDLite`` / ``Segmenter`` return in eval mode, so the
evaluators (``eval det|seg --engine ... --artifact FILE``) measure an artifact exactly as they
measure the PyTorch model. It is an ``nn.Module`` without parameters only so that the code
that calls ``model.eval().to(device)`` accepts it; it always runs on the CPU.
"""

from __future__ import annotations

import gc
import json
import os
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .onnx import POSTPROCESS_KEYS

__all__ = ["ENGINES", "EngineModel", "collect_before_fork", "load_engine"]

#: ``--engine`` names that run an artifact (``pytorch`` runs the checkpoint itself).
ENGINES = ("onnxruntime", "openvino", "executorch")


class EngineModel(nn.Module):
    """``run(array) -> [arrays]`` of an exported graph + its metadata -> a detector or segmenter.

    Args:
        run: runs the graph on one (N, 3, H, W) float32 array, returns its outputs in order, as
            arrays nothing else writes to later (not a runtime's reused output buffers). Subclasses
            pass None and override :meth:`_infer` instead (a bound method stored on the instance
            would make a reference cycle: see :func:`collect_before_fork`).
        metadata: the artifact's metadata (:func:`~mobiledense.tools.deploy.onnx.model_metadata`).
        engine: a name for messages (``openvino``, ``onnxruntime``).
    """

    def __init__(self, run: Callable[[np.ndarray], list[np.ndarray]] | None, metadata: dict[str, str], engine: str
                 ) -> None:
        super().__init__()
        if metadata.get("mobiledense_task") not in ("det", "seg"):
            raise ValueError(f"this {engine} artifact was not written by mobiledense export (no task metadata)")
        collect_before_fork()
        self._run, self.metadata, self.engine = run, dict(metadata), engine
        # An empty parameter: code that asks ``next(model.parameters()).device`` gets the CPU.
        self._device_anchor = nn.Parameter(torch.empty(0), requires_grad=False)
        self.task = metadata["mobiledense_task"]
        self.num_classes = int(metadata["num_classes"]) if metadata.get("num_classes") else None
        self.precision = metadata.get("precision", "fp32")
        self.class_names = tuple(json.loads(metadata.get("class_names") or "[]"))
        self.category_ids = tuple(json.loads(metadata.get("category_ids") or "[]"))
        if self.task == "det":
            for key in POSTPROCESS_KEYS:
                setattr(self, key, json.loads(metadata[key]))
            self.size = tuple(json.loads(metadata["size"]))
        #: Segmenters: the graph returns logits at the decoder's stride (:meth:`decode`), which
        #: :meth:`forward` upsamples; else at input size (``export --full-logits``, smp models).
        self.decodes_at_stride = self.task == "seg" and metadata.get("logits") == "decoder"

    #: :func:`~mobiledense.heads.inference_model` passes such a model through as it is (it runs outside torch).
    runs_outside_torch = True

    def to(self, *args: Any, **kwargs: Any) -> "EngineModel":
        device = torch._C._nn._parse_to(*args, **kwargs)[0]
        if device is not None and torch.device(device).type != "cpu":
            raise ValueError(f"--engine {self.engine} runs on the CPU; pass --device cpu (got {device})")
        return self

    def spec_json(self) -> dict[str, Any] | None:
        """The model spec stored in the artifact (None when it has none)."""
        return json.loads(self.metadata["spec"]) if self.metadata.get("spec") else None

    def run_spec_json(self) -> dict[str, Any] | None:
        """The training run's spec stored in the artifact (None when exported without a checkpoint)."""
        return json.loads(self.metadata["run_spec"]) if self.metadata.get("run_spec") else None

    def __repr__(self) -> str:
        return f"EngineModel({self.engine}, {self.task}, {self.precision})"

    def _infer(self, x: np.ndarray) -> list[np.ndarray]:
        """The graph's outputs for one (N, 3, H, W) float32 array (``run``, or a subclass's runtime)."""
        if self._run is None:
            raise NotImplementedError(f"{type(self).__name__} has no runtime: pass run or override _infer")
        return self._run(x)

    def raw(self, images: Tensor) -> list[Tensor]:
        """The graph outputs for an (N, 3, H, W) batch: ``[boxes, scores]`` or ``[logits]``."""
        outs = self._infer(np.ascontiguousarray(images.detach().cpu().float().numpy()))
        # ``run`` returns arrays the caller owns (no copy here: 1024x2048 logits are 160 MB).
        return [torch.from_numpy(np.asarray(o, dtype=np.float32)) for o in outs]

    def decode(self, images: Tensor) -> Tensor:
        """A segmenter graph's logits: at the decoder's stride when :attr:`decodes_at_stride`."""
        return self.raw(images)[0]

    def _logits(self, images: Tensor) -> Tensor:
        logits = self.decode(images)
        if self.decodes_at_stride:  # the final upsampling of Segmenter.forward
            logits = F.interpolate(logits, size=images.shape[-2:], mode="bilinear", align_corners=False)
        return logits

    def labels(self, images: Tensor, size: tuple[int, int] | None = None, dtype: torch.dtype = torch.int64
               ) -> Tensor:
        """A segmenter's class ids (N, H, W) at ``size`` (default: the input's), as ``Segmenter.labels``:
        the graph's logits upsampled once, interpolated only near class boundaries."""
        from mobiledense.heads.segmenter import upsampled_argmax

        return upsampled_argmax(self.decode(images), tuple(size or images.shape[-2:]), dtype=dtype)

    def forward(self, images: Tensor | Sequence[Tensor]) -> Any:
        if self.task == "seg":
            if isinstance(images, Tensor):
                return self._logits(images)
            return [self._logits(im[None])[0] for im in images]
        return self._detect(images)

    def _detect(self, images: Tensor | Sequence[Tensor]) -> list[dict[str, Tensor]]:
        from mobiledense.heads import select_detections

        batches = [images] if isinstance(images, Tensor) else [im[None] for im in images]
        results = []
        h, w = self.size
        for batch in batches:
            boxes, scores = self.raw(batch)
            scale = torch.tensor([batch.shape[-1] / w, batch.shape[-2] / h] * 2)
            for b, s in zip(boxes, scores):
                det = select_detections(b, s, self.score_thresh, self.topk_candidates, self.nms_thresh,
                                        self.detections_per_img)
                det["boxes"] = det["boxes"] * scale
                results.append(det)
        return results


_COLLECTING_BEFORE_FORK = False


def collect_before_fork() -> None:
    """From now on, run the garbage collector in this process just before it forks.

    A forked child (a DataLoader worker) inherits the parent's unreachable objects but none of
    its threads. When the child's collector then frees an OpenVINO compiled model or infer
    request left in a reference cycle, its destructor tears down a thread pool whose worker
    threads exist only in the parent: ``pthread_cond_destroy`` waits for them forever and the
    worker hangs (seen: a DataLoader worker after an OpenVINO model had been dropped).
    Collecting in the parent first frees such objects where their threads live. Registered once,
    when the first artifact is loaded.
    """
    global _COLLECTING_BEFORE_FORK
    if not _COLLECTING_BEFORE_FORK and hasattr(os, "register_at_fork"):
        os.register_at_fork(before=gc.collect)
        _COLLECTING_BEFORE_FORK = True


def load_engine(path: str | Path, engine: str | None = None, threads: int | None = None) -> EngineModel:
    """The artifact at ``path`` on ``engine`` (default: by suffix: ``.xml`` OpenVINO, ``.pte`` ExecuTorch,
    else onnxruntime) with ``threads`` inference threads."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"--artifact {path}: no such file")
    engine = engine or {".xml": "openvino", ".pte": "executorch"}.get(path.suffix, "onnxruntime")
    if engine == "executorch":
        if path.suffix != ".pte":
            raise ValueError(f"--engine executorch runs an ExecuTorch program (.pte, from mobiledense export --format "
                             f"executorch), not {path.name}")
        from .executorch import ExecuTorchModel

        return ExecuTorchModel(path, threads)
    if engine == "openvino":
        if path.suffix != ".xml":
            raise ValueError(f"--engine openvino runs an OpenVINO IR (.xml, from mobiledense export --format "
                             f"openvino), not {path.name}")
        from .openvino import OpenVinoModel

        return OpenVinoModel(path, threads)
    if engine == "onnxruntime":
        if path.suffix != ".onnx":
            raise ValueError(f"--engine onnxruntime runs an .onnx file, not {path.name}")
        from .runtime import OnnxModel

        return OnnxModel(path, threads)
    raise ValueError(f"unknown engine {engine!r}; valid: {', '.join(ENGINES)}")
