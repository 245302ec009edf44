"""Deployment: artifacts (:mod:`.formats`: ONNX :mod:`.onnx`, OpenVINO :mod:`.openvino`, ExecuTorch
:mod:`.executorch`) in fp32 / bf16 / int8, runtime wrappers (:mod:`.engines`, :mod:`.runtime`),
calibration images (:mod:`.calibration`) and agreement checks (:mod:`.checks`)."""

from .checks import check_artifact, compare_detections, compare_tensors, compare_with_pytorch, match_detections
from .engines import ENGINES, EngineModel, load_engine
from .formats import FORMATS, PRECISIONS, REFUSED, export_artifact
from .onnx import POSTPROCESS_KEYS, DetectorGraph, export_onnx, is_detector, model_metadata
from .runtime import OnnxDetector, ort_session

__all__ = ["DetectorGraph", "ENGINES", "EngineModel", "FORMATS", "OnnxDetector", "POSTPROCESS_KEYS", "PRECISIONS",
           "REFUSED", "check_artifact", "compare_detections", "compare_tensors", "compare_with_pytorch",
           "export_artifact", "export_onnx", "is_detector", "load_engine", "match_detections", "model_metadata",
           "ort_session"]
