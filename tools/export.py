"""``mobiledense export``: ONNX export of a detector or segmenter, checked against PyTorch.

Examples::

    mobiledense export --model lraspp_mobilenet_v3_large --num-classes 19 --output lraspp.onnx
    mobiledense export --checkpoint runs/det/checkpoints/last.pt --output ssdlite.onnx

The graphs are described in :mod:`mobiledense.tools.deploy.onnx`. After export the graph is
run with onnxruntime on a batch of another size than the traced
one and compared with PyTorch; the largest differences are printed (and checked against
``--atol``), then the onnxruntime and PyTorch latencies.
"""

from __future__ import annotations

import argparse

import torch
from torch import nn

from .deploy import OnnxDetector, compare_with_pytorch, export_onnx, is_detector, ort_session

__all__ = ["add_arguments", "run"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    src = parser.add_argument_group("model (a training checkpoint, or --model [+ --weights])")
    src.add_argument("--checkpoint", help="mobiledense training checkpoint (det or seg)")
    src.add_argument("--model", help="a registered model: ssdlite320_mobilenet_v3_large, ssdlite_<backbone>, "
                                     "lraspp_<backbone> (mobiledense backbones lists the backbones)")
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
    """The checkpoint's model (rebuilt from its run spec), or a registered model with optional weights."""
    if args.checkpoint:
        from .engine.tasks import load_trained_model

        return load_trained_model(args.checkpoint, task=None)[0]
    if not args.model:
        raise ValueError("give --checkpoint, or --model NAME (with --weights FILE for trained weights)")
    from mobiledense.heads import create_model, model_spec

    task = model_spec(args.model, num_classes=19).task  # the name alone says the task
    num_classes = args.num_classes or (91 if task == "det" else 19)
    return create_model(args.model, num_classes=num_classes, weights=args.weights)


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
        runner = OnnxDetector(path, threads) if is_detector(model) else ort_session(path, threads)
        onnx_fn = (lambda: runner(x)) if is_detector(model) else (lambda: runner.run(None, {"images": x.numpy()}))
        from .benchmark.timing import time_interleaved

        with torch.inference_mode():
            t = time_interleaved({"onnx": onnx_fn, "torch": lambda: model(x)}, args.repeats, warmup=1)
            t_onnx, t_torch = 1e3 * t["onnx"].median, 1e3 * t["torch"].median
        print(f"latency batch 1 at {args.check_size[0]}x{args.check_size[1]}, {threads} thread(s): "
              f"onnxruntime {t_onnx:.1f} ms, PyTorch eager {t_torch:.1f} ms (x{t_torch / t_onnx:.2f})")
    if not ok:
        print(f"error: onnxruntime outputs differ from PyTorch beyond --atol {args.atol:g}")
        return 1
    return 0
