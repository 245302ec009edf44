"""``mobiledense export``: ONNX export of a detector or segmenter, checked against PyTorch.

Examples::

    mobiledense export --model lraspp_mobilenet_v3_large --num-classes 19 --output lraspp.onnx
    mobiledense export --checkpoint runs/det/checkpoints/last.pt --output ssdlite.onnx

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

After export the graph is run with onnxruntime on a batch of another size than the traced
one and compared with PyTorch; the largest differences are printed (and checked against
``--atol``), then the onnxruntime and PyTorch latencies.
"""

from __future__ import annotations

import argparse
import json
import warnings
from pathlib import Path
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["DetectorGraph", "OnnxDetector", "export_onnx", "ort_session", "compare_with_pytorch",
           "add_arguments", "run"]

_POSTPROCESS_KEYS = ("score_thresh", "topk_candidates", "nms_thresh", "detections_per_img")


def _is_detector(model: nn.Module) -> bool:
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
    detector = _is_detector(model)
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
        meta.update({k: json.dumps(getattr(model, k)) for k in _POSTPROCESS_KEYS})
        meta["size"] = json.dumps(list(model.size))
    for key, value in meta.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.save(proto, str(path))
    return path


def ort_session(path: str | Path, threads: int | None = None) -> Any:
    """An onnxruntime CPU session with all graph optimisations and ``threads`` intra-op threads."""
    try:
        import onnxruntime as ort
    except ImportError as e:
        raise ImportError("onnxruntime is not installed: pip install onnxruntime") from e
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if threads:
        opts.intra_op_num_threads, opts.inter_op_num_threads = threads, 1
    opts.log_severity_level = 3
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


class OnnxDetector:
    """An exported detector with its post-processing: ``OnnxDetector(path)(images) -> detections``.

    ``images``: an (N, 3, H, W) float tensor in [0, 1] (any size) or a list of (3, H, W)
    images (each run at its own size). Returns what ``SSDLite`` returns in eval mode:
    per image ``{"boxes" (M, 4) xyxy in input pixels, "scores", "labels"}``.
    """

    def __init__(self, path: str | Path, threads: int | None = None) -> None:
        self.session = ort_session(path, threads)
        meta = self.session.get_modelmeta().custom_metadata_map
        if meta.get("mobiledense_task") != "det":
            raise ValueError(f"{path} is not a detector exported by mobiledense export (no detector metadata)")
        for key in _POSTPROCESS_KEYS:
            setattr(self, key, json.loads(meta[key]))
        self.size = tuple(json.loads(meta["size"]))

    def raw(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """The graph's (boxes, scores) for an (N, 3, H, W) batch."""
        boxes, scores = self.session.run(None, {"images": images.detach().cpu().float().numpy()})
        return torch.from_numpy(boxes), torch.from_numpy(scores)

    def __call__(self, images: Tensor | Sequence[Tensor]) -> list[dict[str, Tensor]]:
        from mobiledense.heads import select_detections

        batches = [images] if isinstance(images, Tensor) else [im[None] for im in images]
        results = []
        for batch in batches:
            boxes, scores = self.raw(batch)
            h, w = self.size
            scale = torch.tensor([batch.shape[-1] / w, batch.shape[-2] / h] * 2)
            for b, s in zip(boxes, scores):
                det = select_detections(b, s, self.score_thresh, self.topk_candidates, self.nms_thresh,
                                        self.detections_per_img)
                det["boxes"] = det["boxes"] * scale
                results.append(det)
        return results


def compare_with_pytorch(model: nn.Module, path: str | Path, images: Tensor, threads: int | None = None
                         ) -> dict[str, float]:
    """Largest |onnxruntime - PyTorch| of every graph output on ``images`` (plus detection counts)."""
    model = model.eval()
    with torch.no_grad():
        if _is_detector(model):
            expected = DetectorGraph(model)(images)
            onnx_det = OnnxDetector(path, threads)
            got = onnx_det.raw(images)
            diffs = {"boxes": (got[0] - expected[0]).abs().max().item(),
                     "scores": (got[1] - expected[1]).abs().max().item()}
            from .benchmark import compare_detections

            ref, out = model(images), onnx_det(images)
            diffs["detections_pytorch"] = float(sum(len(d["scores"]) for d in ref))
            diffs["detections_onnx"] = float(sum(len(d["scores"]) for d in out))
            diffs["same_detections"] = float(compare_detections(ref, out)["passed"])
            return diffs
        expected = model(images)
        got = torch.from_numpy(ort_session(path, threads).run(None, {"images": images.cpu().numpy()})[0])
        return {"logits": (got - expected).abs().max().item(), "logits_scale": expected.abs().max().item()}


# --------------------------------------------------------------------------- CLI


def add_arguments(parser: argparse.ArgumentParser) -> None:
    src = parser.add_argument_group("model (a training checkpoint, or --model [+ --weights])")
    src.add_argument("--checkpoint", help="mobiledense training checkpoint (det or seg)")
    src.add_argument("--model", help="ssdlite320_mobilenet_v3_large, ssdlite_<backbone> or lraspp_<backbone>")
    src.add_argument("--weights", help="local state_dict for --model (ours or torchvision's); random if absent")
    src.add_argument("--num-classes", type=int, help="with --model (default: 91 detectors, 19 segmenters)")
    parser.add_argument("--output", "-o", required=True, help="the .onnx file to write")
    parser.add_argument("--opset", type=int, default=17)
    parser.add_argument("--no-fold", action="store_true", help="keep BatchNorm layers in the graph")
    parser.add_argument("--check-size", type=int, nargs=2, default=(240, 320), metavar=("H", "W"),
                        help="image size of the onnxruntime-vs-PyTorch check (default 240 320)")
    parser.add_argument("--atol", type=float, default=1e-3, help="largest allowed |onnx - pytorch| (default 1e-3)")
    parser.add_argument("--repeats", type=int, default=10, help="latency runs (0: skip the latency)")
    parser.add_argument("--threads", type=int, help="intra-op threads of both runtimes (default: torch's)")


def _load_model(args: argparse.Namespace) -> nn.Module:
    if args.checkpoint:
        from .common import load_trained_model

        return load_trained_model(args.checkpoint, task=None)[0]
    if not args.model:
        raise ValueError("give --checkpoint, or --model NAME (with --weights FILE for trained weights)")
    if args.model.startswith("ssdlite"):
        from mobiledense.heads import create_detector

        return create_detector(args.model, num_classes=args.num_classes or 91, weights=args.weights)
    if args.model.startswith("lraspp_"):
        from mobiledense.heads.lraspp import get_segmenter_factory

        return get_segmenter_factory(args.model)(args.num_classes or 19, weights=args.weights)
    raise ValueError(f"--model {args.model!r}: expected a detector (ssdlite...) or a segmenter (lraspp_<backbone>)")


def run(args: argparse.Namespace) -> int:
    checks = ((args.opset >= 11, f"--opset must be >= 11, got {args.opset}"),
              (args.atol >= 0, f"--atol must be >= 0, got {args.atol}"),
              (args.threads is None or args.threads >= 1, f"--threads must be >= 1, got {args.threads}"),
              (min(args.check_size) >= 32, f"--check-size must be >= 32 x 32, got {args.check_size}"))
    bad = [msg for ok, msg in checks if not ok]
    if bad:
        raise ValueError("; ".join(bad))
    if args.threads:
        torch.set_num_threads(args.threads)
    threads = args.threads or torch.get_num_threads()
    model = _load_model(args).eval()
    path = export_onnx(model, args.output, opset=args.opset, fold=not args.no_fold)
    print(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB)")
    # Another batch size than the traced one (2), so the dynamic batch axis is exercised.
    images = torch.rand(3, 3, *args.check_size, generator=torch.Generator().manual_seed(0))
    diffs = compare_with_pytorch(model, path, images, threads)
    keys = [k for k in ("boxes", "scores", "logits") if k in diffs]
    print("onnxruntime vs PyTorch, max |diff|: " + ", ".join(f"{k} {diffs[k]:.2e}" for k in keys)
          + f" (atol {args.atol:g})")
    if "same_detections" in diffs:
        same = "the same detections" if diffs["same_detections"] else (
            "different detections: NMS breaks near-ties of scores differently when they differ by float "
            "rounding (untrained weights give near-uniform scores); the graph outputs above are what counts")
        print(f"NMS runs after the graph (select_detections): pytorch {int(diffs['detections_pytorch'])} and "
              f"onnx {int(diffs['detections_onnx'])} boxes, {same}")
    ok = all(diffs[k] <= args.atol for k in keys)
    if args.repeats > 0:
        x = torch.rand(1, 3, *args.check_size)
        runner = OnnxDetector(path, threads) if _is_detector(model) else ort_session(path, threads)
        onnx_fn = (lambda: runner(x)) if _is_detector(model) else (lambda: runner.run(None, {"images": x.numpy()}))
        from .benchmark import time_interleaved

        with torch.inference_mode():
            t = time_interleaved({"onnx": onnx_fn, "torch": lambda: model(x)}, args.repeats, warmup=1)
            t_onnx, t_torch = 1e3 * t["onnx"].median, 1e3 * t["torch"].median
        print(f"latency batch 1 at {args.check_size[0]}x{args.check_size[1]}, {threads} thread(s): "
              f"onnxruntime {t_onnx:.1f} ms, PyTorch eager {t_torch:.1f} ms (x{t_torch / t_onnx:.2f})")
    if not ok:
        print(f"error: onnxruntime outputs differ from PyTorch beyond --atol {args.atol:g}")
        return 1
    return 0
