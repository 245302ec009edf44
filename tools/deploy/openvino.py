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
from torch import Tensor, nn

from .engines import EngineModel
from .onnx import DETECTOR_FLOAT_SCOPE, export_onnx, is_detector, model_metadata

__all__ = ["DETECTOR_FLOAT_SCOPE", "OPENVINO_PRECISIONS", "OpenVinoModel", "cpu_capabilities", "export_openvino",
           "read_metadata"]

OPENVINO_PRECISIONS = ("fp32", "bf16", "int8")
_HINT = {"fp32": "f32", "bf16": "bf16", "int8": "f32"}  # int8: the non-quantized ops stay fp32


def _ov() -> Any:
    try:
        import openvino
    except ImportError as e:
        raise ImportError("OpenVINO is not installed: pip install openvino (or mobiledense[deploy])") from e
    return openvino


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
    return nncf.quantize(ov_model, data, subset_size=len(images), ignored_scope=scope,
                         advanced_parameters=advanced)


def export_openvino(model: nn.Module, path: str | Path, precision: str = "fp32", *,
                    calibration: Sequence[Tensor] | None = None, bias_correction: bool = True,
                    run_spec: dict | None = None) -> Path:
    """Write ``path`` (.xml + .bin) for ``model`` at ``precision``; returns the .xml path.

    Args:
        model: an :class:`~mobiledense.heads.SSDLite` or a segmenter (eval mode).
        precision: ``fp32``, ``bf16`` (a compile-time hint, stored in the IR) or ``int8``.
        calibration: int8 only: (1, 3, H, W) float images in [0, 1], real ones (a few dozen).
        bias_correction: int8: NNCF's fast bias correction (slower export, usually more accurate).
        run_spec: the training run's spec (``RunSpec.to_dict()``), stored with the metadata.
    """
    if precision not in OPENVINO_PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(OPENVINO_PRECISIONS)}, got {precision!r}")
    if precision == "int8" and not calibration:
        raise ValueError("int8 needs calibration images (export --calib-images DIR, or --checkpoint: its training set)")
    ov = _ov()
    path = Path(path).with_suffix(".xml")
    path.parent.mkdir(parents=True, exist_ok=True)
    model = model.eval()
    with tempfile.TemporaryDirectory() as tmp:
        onnx_path = export_onnx(model, Path(tmp) / "model.onnx")
        ov_model = ov.convert_model(str(onnx_path))
    if precision == "int8":
        ov_model = _quantize(ov_model, calibration, is_detector(model), bias_correction)
    for key, value in model_metadata(model, precision, run_spec).items():
        ov_model.set_rt_info(value, ["mobiledense", key])
    ov.save_model(ov_model, str(path), compress_to_fp16=False)
    return path


def read_metadata(ov_model: Any) -> dict[str, str]:
    """Our ``rt_info`` entries of a read IR (empty when it has none)."""
    if not ov_model.has_rt_info(["mobiledense"]):
        return {}
    out = {}
    for key in ("mobiledense_task", "num_classes", "precision", "mean", "std", "class_names", "category_ids",
                "spec", "run_spec", "size", "score_thresh", "topk_candidates", "nms_thresh", "detections_per_img"):
        if ov_model.has_rt_info(["mobiledense", key]):
            out[key] = ov_model.get_rt_info(["mobiledense", key]).astype(str)
    return out


class OpenVinoModel(EngineModel):
    """An IR from :func:`export_openvino` on the OpenVINO CPU plugin, called like our PyTorch model.

    Compiled with the precision stored in the file (``precision`` overrides it: ``fp32``/``bf16``),
    ``threads`` inference threads and the latency hint. Segmenters are compiled once per input
    shape (static shapes run faster; a few shapes are cached); detectors resize inside the graph
    and keep the dynamic one.
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
        self.static_shapes = (meta["mobiledense_task"] == "seg") if static_shapes is None else static_shapes
        self._compiled: dict[tuple[int, ...], Any] = {}
        self._cache = cache
        super().__init__(self._infer, meta, "openvino")
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
            self._compiled[key] = self._core.compile_model(model, "CPU", self.config).create_infer_request()
        return self._compiled[key]

    def _infer(self, x: np.ndarray) -> list[np.ndarray]:
        request = self._request(tuple(x.shape))
        request.infer({0: x}, share_inputs=True)
        return [request.get_output_tensor(i).data for i in range(len(request.model_outputs))]

    @property
    def inference_precision(self) -> str:
        """What the plugin compiled (``f32`` / ``bf16``): the hint, unless the CPU lacks bf16."""
        request = next(iter(self._compiled.values()), None)
        compiled = request.get_compiled_model() if request is not None else self._core.compile_model(
            self._model, "CPU", self.config)
        value = compiled.get_property("INFERENCE_PRECISION_HINT")
        return value.get_type_name() if hasattr(value, "get_type_name") else str(value)
