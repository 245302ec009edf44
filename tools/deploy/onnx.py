"""ONNX export of a detector or segmenter.

What the graphs compute (``torch.onnx.export(dynamo=False)``, opset 17, batch/height/width
dynamic; BatchNorm folded first by ``optimize_for_inference``, which ONNX Runtime would do too):

* **Segmenter**: ``images`` (N, 3, H, W) float RGB in [0, 1] -> ``logits`` (N, C, H, W),
  normalisation and final upsampling included: ``model(images)``.
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

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["DetectorGraph", "POSTPROCESS_KEYS", "export_onnx", "is_detector"]

POSTPROCESS_KEYS = ("score_thresh", "topk_candidates", "nms_thresh", "detections_per_img")


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


def export_onnx(model: nn.Module, path: str | Path, *, opset: int = 17, fold: bool = True,
                sample_size: tuple[int, int] | None = None) -> Path:
    """Export a detector or segmenter (eval mode) to ``path``; returns the path.

    Args:
        model: an :class:`~mobiledense.heads.SSDLite` or a segmenter (``model(x) -> logits``).
        opset: ONNX opset (>= 11).
        fold: fold BatchNorm into the convolutions first (same outputs, smaller graph).
        sample_size: (H, W) of the tracing input; any other size works at run time. Default:
            a size unlike the detector's own (so its resize is kept) / 128x160 for segmenters.
    """
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
        graph, outputs = net, ["logits"]
        axes = {"logits": {0: "batch", 2: "height", 3: "width"}}
    device = next(model.parameters()).device
    x = torch.rand(2, 3, *size, device=device)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # TracerWarnings about shape-derived Python constants
        torch.onnx.export(graph, (x,), str(path), dynamo=False, opset_version=opset, input_names=["images"],
                          output_names=outputs, dynamic_axes={"images": {0: "batch", 2: "height", 3: "width"},
                                                              **axes})
    import onnx

    proto = onnx.load(str(path))
    meta = {"mobiledense_task": "det" if detector else "seg",
            "num_classes": str(getattr(model, "num_classes", ""))}
    if detector:
        meta.update({k: json.dumps(getattr(model, k)) for k in POSTPROCESS_KEYS})
        meta["size"] = json.dumps(list(model.size))
    for key, value in meta.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.save(proto, str(path))
    return path

