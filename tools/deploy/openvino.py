"""OpenVINO IR export (fp32 / bf16 / int8) of a detector or segmenter, and :class:`OpenVinoModel`.

The IR is our ONNX graph (:mod:`.onnx`: same inputs, outputs and in-graph normalisation)
converted by ``openvino.convert_model`` and saved uncompressed (``compress_to_fp16=False``).
Our metadata (:func:`~.onnx.model_metadata`) is stored in the IR's ``rt_info`` under
``mobiledense``, the precision included, so loading the file compiles it as it was checked:

* **fp32**: ``INFERENCE_PRECISION_HINT=f32``.
* **bf16**: same weights (fp32 in the .bin), compiled with ``INFERENCE_PRECISION_HINT=bf16``:
  the CPU plugin runs convolutions in bfloat16 where the CPU has AVX512-BF16 or AMX (``BF16``
  in ``OPTIMIZATION_CAPABILITIES``); elsewhere it runs fp32 (reported at export).
* **int8**: NNCF post-training static quantization (``nncf.quantize``, per-channel symmetric
  weights, activations calibrated on real images, fast bias correction). For detectors the
  anchor generation, softmax and box decoding after the head stay **float**
  (:data:`DETECTOR_FLOAT_SCOPE`): quantizing them is pointless (no convolutions) and breaks
  them (FakeQuantize on the shape-derived anchor arithmetic gave wrong output shapes).
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from .engines import EngineModel
from .onnx import DETECTOR_FLOAT_SCOPE, export_onnx, is_detector, model_metadata

__all__ = ["DETECTOR_FLOAT_SCOPE", "OPENVINO_PRECISIONS", "OpenVinoModel", "compile_model", "cpu_capabilities",
           "export_openvino", "read_metadata", "widen_signal_stack"]

OPENVINO_PRECISIONS = ("fp32", "bf16", "int8")
_HINT = {"fp32": "f32", "bf16": "bf16", "int8": "f32"}  # int8: the non-quantized ops stay fp32


def _ov() -> Any:
    try:
        import openvino
    except ImportError as e:
        raise ImportError("OpenVINO is not installed: pip install openvino (or mobiledense[deploy])") from e
    return openvino


#: Size of the alternate signal stack kept after OpenVINO compiles a model (see :func:`widen_signal_stack`).
SIGNAL_STACK_BYTES = 1 << 18
_signal_stacks: dict[int, Any] = {}


def widen_signal_stack() -> None:
    """Replace a small alternate signal stack of this thread by one of :data:`SIGNAL_STACK_BYTES`.

    OpenVINO's CPU plugin installs a 20 KB ``sigaltstack`` on the thread that compiles a model. On
    CPUs with AMX the signal frame alone is ~11 KB (the tile registers), so a Python signal handler
    that then runs on it (SIGCHLD when a DataLoader worker exits: ``eval --artifact`` reads the
    data with workers) overflows it and the process dies with SIGSEGV inside the handler. A larger
    stack serves every handler that the small one served. Linux only; a no-op elsewhere, when no
    alternate stack is set, or when it is already large enough.
    """
    import ctypes
    import sys
    import threading

    if not sys.platform.startswith("linux"):
        return

    class StackT(ctypes.Structure):
        _fields_ = [("ss_sp", ctypes.c_void_p), ("ss_flags", ctypes.c_int), ("ss_size", ctypes.c_size_t)]

    ss_onstack, ss_disable = 1, 2
    libc = ctypes.CDLL(None, use_errno=True)
    current = StackT()
    if libc.sigaltstack(None, ctypes.byref(current)) != 0:
        return
    if current.ss_flags & (ss_disable | ss_onstack) or current.ss_size >= SIGNAL_STACK_BYTES:
        return
    buffer = ctypes.create_string_buffer(SIGNAL_STACK_BYTES)
    wider = StackT(ctypes.addressof(buffer), 0, SIGNAL_STACK_BYTES)
    if libc.sigaltstack(ctypes.byref(wider), None) == 0:
        _signal_stacks[threading.get_ident()] = buffer  # alive as long as the thread may take signals


def compile_model(core: Any, model: Any, config: dict[str, Any]) -> Any:
    """``core.compile_model(model, "CPU", config)``, then :func:`widen_signal_stack`."""
    compiled = core.compile_model(model, "CPU", config)
    widen_signal_stack()
    return compiled


def cpu_capabilities() -> list[str]:
    """OpenVINO's ``OPTIMIZATION_CAPABILITIES`` of the CPU (e.g. ``['BF16', 'FP32', 'INT8', ...]``)."""
    return list(_ov().Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES"))


def _quantize(ov_model: Any, images: Sequence[Tensor], detector: bool, bias_correction: bool) -> Any:
    import logging

    # NNCF's INFO lines list every node it leaves float (hundreds of lines); importing it makes torch
    # warn that a CPU machine has no CUDA runtime. Its progress bars stay.
    logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)
    try:
        import nncf
    except ImportError as e:
        raise ImportError("--precision int8 for OpenVINO needs NNCF: pip install nncf (or mobiledense[deploy])") from e
    from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters

    nncf.set_log_level(logging.WARNING)
    data = nncf.Dataset([np.ascontiguousarray(im.float().numpy()) for im in images])
    scope = nncf.IgnoredScope(patterns=list(DETECTOR_FLOAT_SCOPE), validate=False) if detector else None
    advanced = AdvancedQuantizationParameters(disable_bias_correction=not bias_correction)
    quantized = nncf.quantize(ov_model, data, subset_size=len(images), ignored_scope=scope,
                              advanced_parameters=advanced)
    widen_signal_stack()  # NNCF compiled the model to collect statistics
    return quantized


def export_openvino(model: nn.Module, path: str | Path, precision: str = "fp32", *,
                    calibration: Sequence[Tensor] | None = None, bias_correction: bool = True,
                    run_spec: dict | None = None, full_logits: bool = False) -> Path:
    """Write ``path`` (.xml + .bin) for ``model`` at ``precision``; returns the .xml path.

    Args:
        model: an :class:`~mobiledense.heads.SSDLite` or a segmenter (eval mode).
        precision: ``fp32``, ``bf16`` (a compile-time hint, stored in the IR) or ``int8``.
        calibration: int8 only: (1, 3, H, W) float images in [0, 1], real ones (a few dozen).
        bias_correction: int8: NNCF's fast bias correction (slower export, usually more accurate).
        run_spec: the training run's spec (``RunSpec.to_dict()``), stored with the metadata.
        full_logits: segmenters: logits at input size in the graph (:class:`~.onnx.SegmenterGraph`).
    """
    from .formats import check_combination

    check_combination("openvino", precision, calibration, exporting=True)
    ov = _ov()
    path = Path(path).with_suffix(".xml")
    path.parent.mkdir(parents=True, exist_ok=True)
    model = model.eval()
    with tempfile.TemporaryDirectory() as tmp:
        onnx_path = export_onnx(model, Path(tmp) / "model.onnx", full_logits=full_logits)
        ov_model = ov.convert_model(str(onnx_path))
    if precision == "int8":
        ov_model = _quantize(ov_model, calibration, is_detector(model), bias_correction)
    for key, value in model_metadata(model, precision, run_spec, full_logits).items():
        ov_model.set_rt_info(value, ["mobiledense", key])
    ov.save_model(ov_model, str(path), compress_to_fp16=False)
    return path


def read_metadata(ov_model: Any) -> dict[str, str]:
    """Our ``rt_info`` entries of a read IR (empty when it has none)."""
    if not ov_model.has_rt_info(["mobiledense"]):
        return {}
    out = {}
    for key in ("mobiledense_task", "num_classes", "precision", "mean", "std", "class_names", "category_ids",
                "spec", "run_spec", "logits", "size", "score_thresh", "topk_candidates", "nms_thresh", "detections_per_img"):
        if ov_model.has_rt_info(["mobiledense", key]):
            out[key] = ov_model.get_rt_info(["mobiledense", key]).astype(str)
    return out


class OpenVinoModel(EngineModel):
    """An IR from :func:`export_openvino` on the OpenVINO CPU plugin, called like our PyTorch model.

    Compiled with the precision stored in the file (``precision`` overrides it: ``fp32``/``bf16``),
    ``threads`` inference threads and the latency hint, once per input shape (static shapes run
    faster on the CPU plugin; ``cache`` shapes are kept). Detectors get their input resized to the
    model size first (the graph's own first step, same bilinear resize), so every image size
    shares one compilation; ``static_shapes=False`` keeps the IR's dynamic shape instead.
    """

    def __init__(self, path: str | Path, threads: int | None = None, precision: str | None = None,
                 static_shapes: bool | None = None, cache: int = 4) -> None:
        ov = _ov()
        self._core = ov.Core()
        self._model = self._core.read_model(str(path))
        meta = read_metadata(self._model)
        if not meta:
            raise ValueError(f"{path} is not an OpenVINO IR written by mobiledense export (no mobiledense rt_info)")
        stored = meta.get("precision", "fp32")
        if precision is not None and precision != stored and "int8" in (precision, stored):
            raise ValueError(f"{path} was exported as {stored}: int8 is in the weights, not a compile option")
        hint = _HINT[precision or stored]
        self.config: dict[str, Any] = {"INFERENCE_PRECISION_HINT": hint, "PERFORMANCE_HINT": "LATENCY"}
        if threads:
            self.config["INFERENCE_NUM_THREADS"] = int(threads)
        self.static_shapes = True if static_shapes is None else static_shapes
        self._compiled: dict[tuple[int, ...], Any] = {}
        self._cache = cache
        super().__init__(None, meta, "openvino")
        self.precision = precision or stored

    def _request(self, shape: tuple[int, ...]) -> Any:
        key = shape if self.static_shapes else ()
        if key not in self._compiled:
            model = self._model
            if self.static_shapes:
                model = self._model.clone()
                model.reshape({model.inputs[0].get_any_name(): list(shape)})
            if len(self._compiled) >= self._cache:
                self._compiled.pop(next(iter(self._compiled)))
            self._compiled[key] = compile_model(self._core, model, self.config).create_infer_request()
        return self._compiled[key]

    def _infer(self, x: np.ndarray) -> list[np.ndarray]:
        ov = _ov()
        if self.task == "det" and self.static_shapes and tuple(x.shape[-2:]) != tuple(self.size):
            # The graph's first op resizes to the model size; doing it here (the same bilinear
            # resize) lets one static-shape compilation serve images of every size.
            import torch.nn.functional as F

            x = F.interpolate(torch.from_numpy(x), size=tuple(self.size), mode="bilinear",
                              align_corners=False).numpy()
        request = self._request(tuple(x.shape))
        outs = []
        for i, port in enumerate(request.model_outputs):
            if port.partial_shape.is_static:  # the plugin writes straight into a fresh array of ours
                out = np.empty(tuple(port.partial_shape.to_shape()), np.float32)
                request.set_output_tensor(i, ov.Tensor(out, shared_memory=True))
                outs.append(out)
            else:
                outs.append(None)
        request.infer({0: x}, share_inputs=True)
        # Dynamic outputs live in the request's own buffers, reused by the next call: copied.
        return [out if out is not None else request.get_output_tensor(i).data.copy() for i, out in enumerate(outs)]

    @property
    def inference_precision(self) -> str:
        """What the plugin compiled (``f32`` / ``bf16``): the hint, unless the CPU lacks bf16."""
        request = next(iter(self._compiled.values()), None)
        compiled = request.get_compiled_model() if request is not None else compile_model(
            self._core, self._model, self.config)
        value = compiled.get_property("INFERENCE_PRECISION_HINT")
        return value.get_type_name() if hasattr(value, "get_type_name") else str(value)
