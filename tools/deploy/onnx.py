"""ONNX export of a detector or segmenter.

What the graphs compute (``torch.onnx.export(dynamo=False)``, opset 17, batch/height/width
dynamic; BatchNorm folded first by ``optimize_for_inference``, which ONNX Runtime would do too):

* **Segmenter**: ``images`` (N, 3, H, W) float RGB in [0, 1] -> ``logits`` (N, C, h, w) at the
  decoder's stride (``model.decode(images)``, normalisation included; metadata ``logits`` =
  ``decoder``): the runtime wrappers upsample them (bilinear, as ``model(images)`` does) to
  the input size, and compute class ids by interpolating only near class boundaries
  (:func:`~mobiledense.heads.segmenter.upsampled_argmax`), which the full-size upsampling of
  every class channel in the graph would make several times slower. ``full_logits=True`` (and
  models without ``decode``, smp ones) exports ``model(images)`` at input size instead
  (``logits`` = ``input``), for applications that want the graph alone.
* **Detector**: ``images`` (N, 3, H, W) float RGB in [0, 1], any size -> resize to the
  model size, normalise, backbone and head, softmax (sigmoid for focal-loss models), box
  decoding and clipping: ``boxes`` (N, A, 4) xyxy in model-input pixels and ``scores``
  (N, A, C - 1) for labels 1..C-1 (:meth:`SSDLite.dense_predictions`). The per-class
  top-k and NMS are **not** in the graph: :class:`OnnxDetector` runs them after it with
  the same function the PyTorch model uses (``select_detections``), so both give the
  same detections; its thresholds are stored in the ONNX metadata. (ONNX's
  ``NonMaxSuppression`` has no per-class pre-NMS top-k, so torchvision's semantics cannot
  be reproduced in the graph exactly.)
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["DETECTOR_FLOAT_SCOPE", "DetectorGraph", "ONNX_PRECISIONS", "POSTPROCESS_KEYS", "SegmenterGraph",
           "export_onnx", "is_detector", "model_metadata", "quantize_onnx"]

POSTPROCESS_KEYS = ("score_thresh", "topk_candidates", "nms_thresh", "detections_per_img")
ONNX_PRECISIONS = ("fp32", "int8")
#: Node names left float when a detector is quantized (NNCF patterns / onnxruntime ``nodes_to_exclude``):
#: the ops outside any submodule of the traced :class:`DetectorGraph` (``/Resize``, ``/Sub``,
#: anchors, softmax, box decoding, clipping); the backbone, extra layers and head
#: (``/model/backbone/...``, ``/model/head/...``) are quantized.
DETECTOR_FLOAT_SCOPE = (r"^[^/]*$", r"^/[^/]+$")
#: onnxruntime: the head's reshapes and concatenations of the conv outputs stay float too, so the
#: class logits reach the softmax unrounded (a uint8 grid over the logits' range would move scores
#: by ~1 %; the convolutions that make them are int8 either way).
HEAD_FLOAT_OPS = ("Concat", "Reshape", "Transpose", "Flatten", "Shape", "Gather", "Unsqueeze")


def is_detector(model: nn.Module) -> bool:
    return hasattr(model, "dense_predictions") and hasattr(model, "size")


class DetectorGraph(nn.Module):
    """The exportable part of an SSDLite: images in [0, 1] -> (boxes, scores) before NMS."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor]:
        m = self.model
        # Resize first: normalising commutes with bilinear resizing and costs less at the model size.
        batch = F.interpolate(images, size=m.size, mode="bilinear", align_corners=False)
        return m.dense_predictions((batch - m.image_mean[:, None, None]) / m.image_std[:, None, None])


class SegmenterGraph(nn.Module):
    """The exportable part of a segmenter: images in [0, 1] -> logits at the decoder's stride
    (``model.decode``), or at input size (``model(images)``) when ``full_logits`` or the model has
    no ``decode``; ``logits_at`` says which (``decoder`` / ``input``, the metadata's ``logits``)."""

    def __init__(self, model: nn.Module, full_logits: bool = False) -> None:
        super().__init__()
        self.model = model
        self.logits_at = "decoder" if getattr(model, "decodes_at_stride", False) and not full_logits else "input"

    def forward(self, images: Tensor) -> Tensor:
        return self.model.decode(images) if self.logits_at == "decoder" else self.model(images)


def model_metadata(model: nn.Module, precision: str, run_spec: dict | None = None, full_logits: bool = False
                   ) -> dict[str, str]:
    """What an exported artifact carries (ONNX ``metadata_props``, OpenVINO ``rt_info``), values as strings.

    ``mobiledense_task`` (det/seg), ``num_classes``, ``precision``, ``mean``/``std`` (the
    normalisation inside the graph), ``class_names``/``category_ids``/``spec`` (the model's
    :class:`~mobiledense.heads.ModelSpec` JSON; empty when unknown); detectors add ``size``
    (the network input the graph resizes to) and the NMS settings (:data:`POSTPROCESS_KEYS`);
    ``run_spec`` (the training run's whole spec, when exported from a checkpoint) lets ``eval`` /
    ``predict --artifact`` find the run's data and resolution with no other flag. Segmenters add
    ``logits`` (``decoder`` or ``input``: :attr:`SegmenterGraph.logits_at` of ``full_logits``).
    """
    detector = is_detector(model)
    spec = getattr(model, "spec", None)
    norm = getattr(model, "normalize", None)
    mean, std = ((model.image_mean, model.image_std) if detector else
                 (getattr(norm, "mean", None), getattr(norm, "std", None)))
    meta = {"mobiledense_task": "det" if detector else "seg", "num_classes": str(getattr(model, "num_classes", "")),
            "precision": precision,
            "mean": json.dumps(None if mean is None else [round(v, 6) for v in mean.flatten().tolist()]),
            "std": json.dumps(None if std is None else [round(v, 6) for v in std.flatten().tolist()]),
            "class_names": json.dumps(list(spec.class_names) if spec is not None else []),
            "category_ids": json.dumps(list(spec.category_ids) if spec is not None else []),
            "spec": spec.model_dump_json() if spec is not None else "",
            "run_spec": json.dumps(run_spec) if run_spec is not None else ""}
    if detector:
        meta.update({k: json.dumps(getattr(model, k)) for k in POSTPROCESS_KEYS})
        meta["size"] = json.dumps(list(model.size))
    else:
        meta["logits"] = SegmenterGraph(model, full_logits).logits_at
    return meta


def export_onnx(model: nn.Module, path: str | Path, *, opset: int = 17, fold: bool = True,
                sample_size: tuple[int, int] | None = None, precision: str = "fp32",
                calibration: Sequence[Tensor] | None = None, run_spec: dict | None = None,
                full_logits: bool = False) -> Path:
    """Export a detector or segmenter (eval mode) to ``path``; returns the path.

    Args:
        model: an :class:`~mobiledense.heads.SSDLite` or a segmenter (``model(x) -> logits``).
        opset: ONNX opset (>= 11).
        fold: fold BatchNorm into the convolutions first (same outputs, smaller graph).
        sample_size: (H, W) of the tracing input; any other size works at run time. Default:
            a size unlike the detector's own (so its resize is kept) / 128x160 for segmenters.
        precision: ``fp32``, or ``int8`` (:func:`quantize_onnx`, calibrated on ``calibration``:
            (1, 3, H, W) float images in [0, 1]). ``bf16`` is refused (:data:`.formats.REFUSED` says why).
        run_spec: the training run's spec (``RunSpec.to_dict()``), stored in the metadata.
        full_logits: segmenters: logits at input size in the graph (default: at the decoder's
            stride, upsampled by the runtime wrapper; :class:`SegmenterGraph`).
    """
    from .formats import check_combination

    check_combination("onnx", precision, calibration, exporting=True)
    from mobiledense.heads.inference import optimize_for_inference

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    model = model.eval()
    net = optimize_for_inference(model, channels_last=False) if fold else model
    detector = is_detector(model)
    if detector:
        h, w = model.size
        size = sample_size or (h + 32, w + 64)
        graph: nn.Module = DetectorGraph(net).eval()
        outputs, axes = ["boxes", "scores"], {"boxes": {0: "batch"}, "scores": {0: "batch"}}
    else:
        size = sample_size or (128, 160)
        graph, outputs = SegmenterGraph(net, full_logits).eval(), ["logits"]
        suffix = "" if graph.logits_at == "input" else "/stride"
        axes = {"logits": {0: "batch", 2: "height" + suffix, 3: "width" + suffix}}
    device = next(model.parameters()).device
    x = torch.rand(2, 3, *size, device=device)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # TracerWarnings about shape-derived Python constants
        torch.onnx.export(graph, (x,), str(path), dynamo=False, opset_version=opset, input_names=["images"],
                          output_names=outputs, dynamic_axes={"images": {0: "batch", 2: "height", 3: "width"},
                                                              **axes})
    if precision == "int8":
        quantize_onnx(path, path, calibration, detector)
    import onnx

    proto = onnx.load(str(path))
    del proto.metadata_props[:]
    for key, value in model_metadata(model, precision, run_spec, full_logits).items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.save(proto, str(path))
    return path


def quantize_onnx(src: str | Path, dst: str | Path, calibration: Sequence[Tensor], detector: bool) -> Path:
    """Post-training static INT8 quantization of an fp32 graph (onnxruntime.quantization, QDQ format).

    Weights int8 per output channel (symmetric), activations uint8 per tensor, ranges by min/max
    over ``calibration``; the graph is shape-inferred and optimised first (``quant_pre_process``),
    as onnxruntime recommends. Detectors keep :data:`DETECTOR_FLOAT_SCOPE` float: the head's
    convolutions are the last quantized ops, softmax and box decoding stay fp32 (quantizing
    the decoded coordinates costs boxes whole pixels and saves nothing).
    """
    import re
    import tempfile

    import numpy as np
    import onnx
    from onnxruntime.quantization import (CalibrationDataReader, QuantFormat, QuantType, quant_pre_process,
                                          quantize_static)

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.items = iter([{"images": np.ascontiguousarray(im.float().cpu().numpy())} for im in calibration])

        def get_next(self) -> dict | None:
            return next(self.items, None)

    with tempfile.TemporaryDirectory() as tmp:
        pre = Path(tmp) / "pre.onnx"
        quant_pre_process(str(src), str(pre), skip_symbolic_shape=True)
        nodes = onnx.load(str(pre)).graph.node
        exclude = [n.name for n in nodes if any(re.match(p, n.name) for p in DETECTOR_FLOAT_SCOPE)
                   or (n.name.startswith("/head/") and n.op_type in HEAD_FLOAT_OPS)] if detector else []
        quantize_static(str(pre), str(dst), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, nodes_to_exclude=exclude,
                        extra_options={"WeightSymmetric": True, "ActivationSymmetric": False})
    return Path(dst)

