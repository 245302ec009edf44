"""Deployment: ONNX export (:mod:`.onnx`), runtime wrappers (:mod:`.runtime`), agreement checks (:mod:`.checks`)."""

from .checks import compare_detections, compare_tensors, compare_with_pytorch
from .onnx import POSTPROCESS_KEYS, DetectorGraph, export_onnx, is_detector
from .runtime import OnnxDetector, ort_session

__all__ = ["DetectorGraph", "OnnxDetector", "POSTPROCESS_KEYS", "compare_detections", "compare_tensors",
           "compare_with_pytorch", "export_onnx", "is_detector", "ort_session"]
