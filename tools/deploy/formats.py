"""Which artifact formats x precisions exist, why the others do not, and one ``export_artifact`` for all.

=============  ==========================  ==================================  ==============================
format         fp32                        bf16                                int8
=============  ==========================  ==================================  ==============================
onnx           onnxruntime                 refused (:data:`REFUSED`)           onnxruntime.quantization QDQ
openvino       OpenVINO CPU plugin         ``INFERENCE_PRECISION_HINT=bf16``   NNCF post-training quantization
executorch     XNNPACK delegate            refused (:data:`REFUSED`)           XNNPACK quantizer (PT2E)
=============  ==========================  ==================================  ==============================
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from torch import Tensor, nn

__all__ = ["FORMATS", "PRECISIONS", "REFUSED", "SUFFIX", "check_combination", "export_artifact", "format_of"]

FORMATS = ("onnx", "openvino", "executorch")
PRECISIONS = ("fp32", "bf16", "int8")
SUFFIX = {"onnx": ".onnx", "openvino": ".xml", "executorch": ".pte"}
#: (format, precision) pairs that cannot exist, and why.
REFUSED = {
    ("onnx", "bf16"): "onnxruntime's CPU provider has no bfloat16 convolution kernels (a bf16 graph runs its "
                      "convolutions through casts to fp32, slower than fp32); --format openvino --precision bf16 "
                      "compiles the same graph for the CPU's AVX512-BF16 / AMX units",
    ("executorch", "bf16"): "ExecuTorch's XNNPACK backend has no bf16 convolution kernels: bf16 convolutions are not "
                            "delegated (they would run on the slow portable kernels) and, with the partitioner's "
                            "opt-in enable_bf16, XNNPACK fails to load them (xnn_status_invalid_parameter); use fp32 "
                            "or int8, or --format openvino --precision bf16",
}


def format_of(path: str | Path, fmt: str | None = None) -> str:
    """``fmt``, or the format an output path's suffix names (``.xml`` openvino, ``.pte`` executorch, else onnx)."""
    if fmt is not None:
        if fmt not in FORMATS:
            raise ValueError(f"unknown format {fmt!r}; valid: {', '.join(FORMATS)}")
        return fmt
    suffix = Path(path).suffix.lower()
    return {v: k for k, v in SUFFIX.items()}.get(suffix, "onnx")


def check_combination(fmt: str, precision: str, calibration: Sequence[Tensor] | None = None,
                      exporting: bool = False) -> None:
    """Raise a ValueError saying why when ``fmt`` x ``precision`` cannot exist (or, ``exporting``,
    when int8 has no ``calibration`` images): the checks every exporter runs first."""
    if (fmt, precision) in REFUSED:
        raise ValueError(f"--format {fmt} --precision {precision} is not offered: {REFUSED[fmt, precision]}")
    offered = [p for p in PRECISIONS if (fmt, p) not in REFUSED]
    if precision not in offered:
        raise ValueError(f"precision must be one of {', '.join(offered)}, got {precision!r}")
    if exporting and precision == "int8" and not calibration:
        raise ValueError("int8 needs calibration images (export --calib-images DIR, or --checkpoint: its training set)")


def export_artifact(model: nn.Module, path: str | Path, fmt: str, precision: str = "fp32", *,
                    calibration: Sequence[Tensor] | None = None, run_spec: dict | None = None, opset: int = 17,
                    fold: bool = True, input_size: Sequence[int] | None = None, full_logits: bool = False) -> Path:
    """Write ``model`` as a ``fmt`` artifact at ``precision``; returns the file (``.onnx`` / ``.xml`` / ``.pte``).

    ``calibration``: (1, 3, H, W) images in [0, 1] for int8. ``input_size``: ExecuTorch's fixed
    (H, W) (its programs have static shapes; default: a detector's size, 512x1024 for segmenters).
    ``full_logits``: segmenters: logits at input size in the graph, not at the decoder's stride
    (:class:`~.onnx.SegmenterGraph`).
    """
    check_combination(fmt, precision)
    path = Path(path)
    if path.suffix.lower() != SUFFIX[fmt]:
        raise ValueError(f"--format {fmt} writes a {SUFFIX[fmt]} file; --output {path} has another suffix")
    kwargs: dict[str, Any] = {"calibration": calibration, "run_spec": run_spec, "full_logits": full_logits}
    if fmt == "onnx":
        from .onnx import export_onnx

        return export_onnx(model, path, opset=opset, fold=fold, precision=precision, **kwargs)
    if fmt == "openvino":
        from .openvino import export_openvino

        return export_openvino(model, path, precision, **kwargs)
    from .executorch import export_executorch

    return export_executorch(model, path, precision, size=input_size, **kwargs)
