"""ExecuTorch export (fp32 / int8, XNNPACK delegate) of a detector or segmenter, and :class:`ExecuTorchModel`.

The program is ``torch.export`` of the same graph the ONNX export traces (:mod:`.onnx`),
lowered with ``to_edge_transform_and_lower(..., partitioner=[XnnpackPartitioner()])`` and
written as one ``.pte`` file (weights inside):

* **Segmenter**: :class:`~.onnx.SegmenterGraph`, ``images`` (1, 3, H, W) float RGB in [0, 1] ->
  ``logits`` (1, C, h, w) at the decoder's stride, normalisation included; the wrapper upsamples
  them (``full_logits``: (1, C, H, W), the final upsampling in the program).
* **Detector**: :class:`~.onnx.DetectorGraph` of ``optimize_for_inference(model,
  channels_last=False)`` (BatchNorm folded), ``images`` (1, 3, H, W) in [0, 1] -> resize to the
  model size, normalise, backbone, head, softmax, box decoding and clipping -> ``boxes`` (1, A, 4)
  and ``scores`` (1, A, C - 1). Top-k and NMS run after the program (:class:`~.engines.EngineModel`),
  as for ONNX and OpenVINO.

**Static shapes.** A ``.pte`` is exported for one input size (``size``; default: the detector's
``model.size``, 512x1024 for segmenters) and batch 1. :class:`ExecuTorchModel` resizes other
inputs to it (bilinear, ``align_corners=False``): exact for detectors, whose graph resizes to the
model size anyway; for segmenters the logits are upsampled to the input's size, which is not
what the PyTorch model computes at that size (export at the size you run). Batches run image by
image.

**Metadata.** A ``.pte`` has no metadata slot of ours: :func:`~.onnx.model_metadata` (precision
included) plus ``input_size`` (JSON ``[H, W]``) and ``engine``/``delegate`` lie in the sidecar
``<file>.pte.json``, which :class:`ExecuTorchModel` needs.

**Precisions** (:data:`EXECUTORCH_PRECISIONS`):

* **fp32**: every op XNNPACK supports is delegated to it; the rest (e.g. parts of the box
  decoding) runs on ExecuTorch's portable kernels.
* **int8**: PT2E static post-training quantization with ExecuTorch's ``XNNPACKQuantizer``
  (``get_symmetric_quantization_config(is_per_channel=True)``: per-channel symmetric int8
  weights, per-tensor affine int8 activations), observers calibrated on ``calibration`` images
  resized to the input size, then lowered to XNNPACK's quantized kernels. Segmenters are
  quantized whole (``set_global``). Detectors are quantized only inside the ``backbone``,
  ``extra`` and ``head`` submodules (:data:`DETECTOR_QUANTIZED_MODULES`, a quantizer filter on
  each op's module path; ``set_module_name`` cannot be used: the XNNPACK conv annotator applies its module-name
  filter to the weight's ``get_attr`` node too, which has no module path, so no convolution is
  quantized):
  the input resize and normalisation, anchors, softmax, box decoding and clipping stay **float**
  (no convolutions there; quantizing scores and box coordinates costs accuracy for no speed).
* **bf16** is refused (:data:`BF16_REFUSAL`): ExecuTorch 1.5's XNNPACK partitioner delegates
  bfloat16 only behind an opt-in flag (``enable_bf16``) meant for fully-connected layers. Without
  it the bf16 convolutions are not delegated and run on the slow portable kernels; with it the
  program exports but XNNPACK fails to load it (``Failed to create convolution node ...
  xnn_status_invalid_parameter``): XNNPACK has no bf16 convolution kernels.

ExecuTorch is optional: ``pip install executorch`` (it pins no torch; 1.5.1 with torchao 0.18
installs beside torch 2.14.1).
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .engines import EngineModel
from .formats import REFUSED
from .onnx import DetectorGraph, SegmenterGraph, is_detector, model_metadata

__all__ = ["BF16_REFUSAL", "DETECTOR_QUANTIZED_MODULES", "EXECUTORCH_PRECISIONS", "ExecuTorchModel",
           "SEGMENTER_DEFAULT_SIZE", "export_executorch", "metadata_path", "read_metadata"]

EXECUTORCH_PRECISIONS = ("fp32", "int8")
#: Why bf16 is refused (:data:`~.formats.REFUSED`).
BF16_REFUSAL = REFUSED["executorch", "bf16"]
#: Submodules of a detector's :class:`~.onnx.DetectorGraph` (``model.`` + name) that int8 quantizes.
DETECTOR_QUANTIZED_MODULES = ("backbone", "extra", "head")
#: (H, W) a segmenter's .pte is exported for when ``size`` is not given (Cityscapes' half resolution).
SEGMENTER_DEFAULT_SIZE = (512, 1024)


def _executorch() -> Any:
    import logging

    # torchao (imported by ExecuTorch) registers an Enum with torch's pytree, which warns on every import.
    logging.getLogger("torch.utils._pytree").setLevel(logging.ERROR)
    try:
        import executorch.exir as exir
    except ImportError as e:
        raise ImportError("ExecuTorch is not installed: pip install executorch (or mobiledense[deploy])") from e
    return exir


def metadata_path(path: str | Path) -> Path:
    """The sidecar JSON of a ``.pte``: ``model.pte`` -> ``model.pte.json``."""
    path = Path(path)
    return path.with_name(path.name + ".json")


def read_metadata(path: str | Path) -> dict[str, str]:
    """The sidecar metadata of the ``.pte`` at ``path`` (:func:`export_executorch`)."""
    side = metadata_path(path)
    if not side.is_file():
        raise FileNotFoundError(f"{path} has no metadata file {side.name} beside it (written by mobiledense export "
                                "--format executorch)")
    meta = json.loads(side.read_text())
    if not isinstance(meta, dict) or meta.get("mobiledense_task") not in ("det", "seg"):
        raise ValueError(f"{side} is not mobiledense ExecuTorch metadata (no mobiledense_task)")
    return {str(k): str(v) for k, v in meta.items()}


def _input_size(model: nn.Module, size: Sequence[int] | int | None) -> tuple[int, int]:
    if size is None:
        size = tuple(model.size) if is_detector(model) else SEGMENTER_DEFAULT_SIZE
    if isinstance(size, int):
        size = (size, size)
    if len(size) != 2 or any(int(s) < 1 for s in size):
        raise ValueError(f"size must be (height, width) with positive values, got {size!r}")
    return int(size[0]), int(size[1])


def _resize(x: Tensor, size: tuple[int, int]) -> Tensor:
    if tuple(x.shape[-2:]) == size:
        return x
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


def _in_quantized_modules(node: Any) -> bool:
    """Quantizer filter: ops of a detector's backbone / extra layers / head (and all non-op nodes)."""
    if node.op != "call_function":
        return True  # weights and biases (get_attr nodes carry no module path): their op decides
    prefixes = tuple(f"model.{name}" for name in DETECTOR_QUANTIZED_MODULES)
    return any(path in prefixes or path.startswith(tuple(p + "." for p in prefixes))
               for path, _ in node.meta.get("nn_module_stack", {}).values())


def _quantize(graph: nn.Module, example: Tensor, calibration: Sequence[Tensor], detector: bool) -> nn.Module:
    """``graph`` PT2E-quantized for XNNPACK (int8), observers calibrated on ``calibration``."""
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
        XNNPACKQuantizer,
        get_symmetric_quantization_config,
    )
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    quantizer = XNNPACKQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=True))
    if detector:
        quantizer.set_filter_function(_in_quantized_modules)
    size = tuple(example.shape[-2:])
    prepared = prepare_pt2e(torch.export.export(graph, (example,)).module(), quantizer)
    with torch.no_grad():
        for image in calibration:
            image = image if image.dim() == 4 else image[None]
            for one in image.split(1):
                prepared(_resize(one.float().cpu(), size))
    return convert_pt2e(prepared)


def export_executorch(model: nn.Module, path: str | Path, precision: str = "fp32", *,
                      calibration: Sequence[Tensor] | None = None, size: Sequence[int] | int | None = None,
                      run_spec: dict | None = None, full_logits: bool = False) -> Path:
    """Write ``path`` (.pte, XNNPACK delegate) and its sidecar ``.pte.json`` for ``model``; returns the .pte path.

    Args:
        model: an :class:`~mobiledense.heads.SSDLite` or a segmenter (``model(x) -> logits``).
        precision: ``fp32`` or ``int8`` (bf16 is refused: :data:`BF16_REFUSAL`).
        calibration: int8 only: (1, 3, H, W) float images in [0, 1], real ones (a few dozen);
            resized to the input size.
        size: (H, W) of the program's fixed input (an int: square). Default: the detector's
            ``model.size``; :data:`SEGMENTER_DEFAULT_SIZE` for segmenters.
        run_spec: the training run's spec (``RunSpec.to_dict()``), stored in the sidecar.
        full_logits: segmenters: logits at input size in the program (:class:`~.onnx.SegmenterGraph`).
    """
    from .formats import check_combination

    check_combination("executorch", precision, calibration, exporting=True)
    exir = _executorch()
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner

    from mobiledense.heads.inference import optimize_for_inference

    path = Path(path).with_suffix(".pte")
    path.parent.mkdir(parents=True, exist_ok=True)
    model = model.eval()
    if any(p.device.type != "cpu" for p in model.parameters()):
        model = copy.deepcopy(model).cpu()  # the program is traced and runs on the CPU
    detector = is_detector(model)
    h, w = _input_size(model, size)
    graph: nn.Module = (DetectorGraph(optimize_for_inference(model, channels_last=False)) if detector
                        else SegmenterGraph(model, full_logits))
    graph = graph.eval()
    example = torch.rand(1, 3, h, w, generator=torch.Generator().manual_seed(0))
    if precision == "int8":
        graph = _quantize(graph, example, calibration, detector)
    with torch.no_grad():
        program = torch.export.export(graph, (example,))
        lowered = exir.to_edge_transform_and_lower(program, partitioner=[XnnpackPartitioner()])
        buffer = lowered.to_executorch().buffer
    path.write_bytes(buffer)
    meta = model_metadata(model, precision, run_spec, full_logits)
    meta.update({"input_size": json.dumps([h, w]), "engine": "executorch", "delegate": "xnnpack"})
    if precision == "int8":
        meta["quantized_modules"] = json.dumps(list(DETECTOR_QUANTIZED_MODULES) if detector else ["*"])
    metadata_path(path).write_text(json.dumps(meta, indent=1) + "\n")
    return path


class ExecuTorchModel(EngineModel):
    """A ``.pte`` from :func:`export_executorch` on the ExecuTorch runtime (XNNPACK), called like our PyTorch model.

    Inputs of another size than the program's ``input_size`` are resized to it (bilinear,
    ``align_corners=False``); segmenter logits are resized back to the input's size. A batch
    runs image by image. ``threads`` sets the size of ExecuTorch's thread pool, which XNNPACK
    uses; the pool is one per process, so the last ``threads`` given wins.
    """

    def __init__(self, path: str | Path, threads: int | None = None) -> None:
        _executorch()
        from executorch.runtime import Runtime

        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no such file")
        if path.suffix != ".pte":
            raise ValueError(f"ExecuTorch runs a .pte file (from mobiledense export --format executorch), "
                             f"not {path.name}")
        meta = read_metadata(path)
        if threads:
            from executorch.extension.pybindings.portable_lib import _unsafe_reset_threadpool

            _unsafe_reset_threadpool(int(threads))
        self.path = path
        self._program = Runtime.get().load_program(path)
        self._method = self._program.load_method("forward")
        super().__init__(None, meta, "executorch")
        self.input_size: tuple[int, int] = tuple(json.loads(meta["input_size"]))

    def __repr__(self) -> str:
        return f"ExecuTorchModel({self.path.name}, {self.task}, {self.precision}, input {list(self.input_size)})"

    def _infer(self, x: np.ndarray) -> list[np.ndarray]:
        images = torch.from_numpy(x)
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"expected an (N, 3, H, W) array, got shape {tuple(images.shape)}")
        h, w = images.shape[-2:]
        per_output: list[list[Tensor]] = []
        for one in images.split(1):
            outs = self._method.execute([_resize(one.float(), self.input_size).contiguous()])
            if self.task == "seg" and not self.decodes_at_stride:  # logits at the program's input size
                outs = [_resize(o, (h, w)) for o in outs]
            if not per_output:
                per_output = [[] for _ in outs]
            for acc, o in zip(per_output, outs):
                acc.append(o)
        return [torch.cat(acc).numpy() for acc in per_output]
