"""``mobiledense export``: ONNX / OpenVINO / ExecuTorch artifacts (fp32, bf16, int8), checked against PyTorch.

Examples::

    mobiledense export --model lraspp_mobilenet_v3_large --num-classes 19 --output lraspp.onnx
    mobiledense export --checkpoint runs/det/checkpoints/best.pt --output ssdlite.xml --precision bf16
    mobiledense export --checkpoint runs/det/checkpoints/best.pt --output ssdlite.xml --precision int8 --eval
    mobiledense export --checkpoint runs/seg/checkpoints/best.pt --output lraspp.pte --precision int8

The format follows ``--output``'s suffix (or ``--format``); :mod:`mobiledense.tools.deploy.formats`
lists what exists and why bf16 is refused for ONNX and ExecuTorch. After export the artifact is
run by its engine and compared with PyTorch (:func:`~mobiledense.tools.deploy.checks.check_artifact`):
fp32 must reproduce the graph's outputs within ``--atol``; bf16 / int8 must agree (same argmax
per pixel, detections matched as sets) on at least ``--min-agreement`` of real images (the run's
val images with ``--checkpoint``, else the calibration images; random ones when neither). Then
both latencies; ``--eval`` scores PyTorch and the artifact with ``eval det|seg`` on the run's val set.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .deploy.formats import FORMATS, PRECISIONS

__all__ = ["add_arguments", "run"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    src = parser.add_argument_group("model (a training checkpoint, or --model [+ --weights])")
    src.add_argument("--checkpoint", help="mobiledense training checkpoint (det or seg)")
    src.add_argument("--model", help="a registered model: ssdlite320_mobilenet_v3_large, ssdlite_<backbone>, "
                                     "lraspp_<backbone> (mobiledense backbones lists the backbones)")
    src.add_argument("--weights", help="local state_dict for --model (ours or torchvision's); random if absent")
    src.add_argument("--num-classes", type=int, help="with --model (default: 91 detectors, 19 segmenters)")
    parser.add_argument("--output", "-o", required=True,
                        help="the file to write: .onnx (onnxruntime), .xml (+ .bin, OpenVINO IR), .pte (ExecuTorch)")
    parser.add_argument("--format", choices=FORMATS, help="default: by --output's suffix (.xml openvino, .pte "
                                                          "executorch, else onnx)")
    parser.add_argument("--precision", choices=PRECISIONS, default="fp32",
                        help="fp32 (default); bf16: OpenVINO on a CPU with AVX512-BF16/AMX; int8: post-training "
                             "static quantization calibrated on real images (every format)")
    cal = parser.add_argument_group("int8 calibration")
    cal.add_argument("--calib-images", metavar="DIR", help="folder of images of the deployment domain (default "
                                                            "with --checkpoint: the run's training set)")
    cal.add_argument("--calib-count", type=int, default=32, metavar="N", help="images calibrated on (default 32)")
    parser.add_argument("--input-size", type=int, nargs=2, metavar=("H", "W"),
                        help="executorch: the program's fixed input size (default: a detector's size; segmenters "
                             "the run's eval resolution, 512 1024 without a run)")
    parser.add_argument("--full-logits", action="store_true",
                        help="segmenters: the graph returns logits at input size (default: at the decoder's stride, "
                             "upsampled by eval/predict --artifact, which then interpolate only near class "
                             "boundaries; an app running the graph alone upsamples them bilinearly)")
    parser.add_argument("--opset", type=int, default=17)
    parser.add_argument("--no-fold", action="store_true", help="onnx fp32: keep BatchNorm layers in the graph")
    parser.add_argument("--check-size", type=int, nargs=2, default=(240, 320), metavar=("H", "W"),
                        help="image size of the random-image check and the latency (default 240 320)")
    parser.add_argument("--atol", type=float, default=1e-3,
                        help="fp32: largest allowed |artifact - pytorch| relative to the output scale (default 1e-3)")
    parser.add_argument("--min-agreement", type=float, help="bf16 / int8: least agreement with PyTorch (default: "
                                                            "0.95 bf16, 0.90 int8)")
    parser.add_argument("--eval", action="store_true", help="also score PyTorch and the artifact on the run's val set "
                                                             "(eval det|seg) and print them side by side")
    parser.add_argument("--repeats", type=int, default=10, help="latency runs (0: skip the latency)")
    parser.add_argument("--threads", type=int, help="inference threads of every runtime (default: torch's)")


def _load_model(args: argparse.Namespace) -> tuple[nn.Module, Any]:
    """The checkpoint's model + run spec, or a registered model with optional weights (spec None)."""
    if args.checkpoint:
        from .engine.tasks import load_trained_model

        return load_trained_model(args.checkpoint, task=None)
    if not args.model:
        raise ValueError("give --checkpoint, or --model NAME (with --weights FILE for trained weights)")
    from mobiledense.heads import create_model, model_spec

    task = model_spec(args.model, num_classes=19).task  # the name alone says the task
    num_classes = args.num_classes or (91 if task == "det" else 19)
    return create_model(args.model, num_classes=num_classes, weights=args.weights), None


def _check_images(model: nn.Module, spec: Any, calibration: list | None, count: int = 8) -> tuple[list, str]:
    """Real images for the bf16 / int8 agreement: the run's val set, else the calibration images."""
    from .deploy.calibration import spaced
    from .engine.tasks import DetectionTask, SegmentationTask

    if spec is not None and spec.task in ("det", "seg"):
        try:
            dataset = DetectionTask(spec).val_set() if spec.task == "det" else SegmentationTask(spec).val_set()
        except (OSError, ValueError):
            dataset = None
        if dataset is not None and len(dataset):
            return [dataset[i][0][None].float() for i in spaced(len(dataset), count)], f"{count} val images of the run"
    if calibration:
        return calibration[:count], f"{min(count, len(calibration))} calibration images"
    return [], ""


def _evaluate(args: argparse.Namespace, task: str, artifact: Path | None, out: Path) -> dict[str, float]:
    """``eval det|seg`` of the checkpoint (artifact None: PyTorch) or of the artifact; its headline metrics."""
    import contextlib
    import io

    from .cli import main

    # --workers 0: no fork of this process, whose runtime thread pools (OpenVINO, onnxruntime, ExecuTorch)
    # a forked DataLoader worker would inherit mid-state.
    argv = ["eval", task, "--checkpoint", args.checkpoint, "--device", "cpu", "--no-progress", "--workers", "0",
            "--output-dir", str(out)]
    if task == "det":
        argv += ["--overlays", "0"]
    if artifact is not None:
        argv += ["--artifact", str(artifact)] + (["--threads", str(args.threads)] if args.threads else [])
    with contextlib.redirect_stdout(io.StringIO()):
        if main(argv) != 0:
            raise RuntimeError(f"evaluation of {artifact or args.checkpoint} failed: {' '.join(argv)}")
    metrics = json.loads((out / "metrics.json").read_text())
    if task == "det":
        return {k: metrics["stats"][k] for k in ("AP", "AP50", "AP75", "AR100")}
    return {k: metrics[k] for k in ("mIoU", "pixel_acc") if metrics.get(k) is not None}


def run(args: argparse.Namespace) -> int:
    from .deploy.calibration import calibration_images
    from .deploy.checks import check_artifact
    from .deploy.engines import load_engine
    from .deploy.formats import check_combination, export_artifact, format_of
    from .deploy.onnx import is_detector

    fmt = format_of(args.output, args.format)
    checks = ((args.opset >= 11, f"--opset must be >= 11, got {args.opset}"),
              (args.atol >= 0, f"--atol must be >= 0, got {args.atol}"),
              (args.threads is None or args.threads >= 1, f"--threads must be >= 1, got {args.threads}"),
              (min(args.check_size) >= 32, f"--check-size must be >= 32 x 32, got {args.check_size}"),
              (args.calib_count >= 1, f"--calib-count must be >= 1, got {args.calib_count}"),
              (args.min_agreement is None or 0 <= args.min_agreement <= 1,
               f"--min-agreement must be in [0, 1], got {args.min_agreement}"),
              (not args.eval or args.checkpoint, "--eval needs --checkpoint (the run's val set and metrics)"),
              (not args.calib_images or args.precision == "int8", "--calib-images is for --precision int8"))
    bad = [msg for ok, msg in checks if not ok]
    if bad:
        raise ValueError("; ".join(bad))
    check_combination(fmt, args.precision)
    if args.calib_images and not Path(args.calib_images).is_dir():
        raise FileNotFoundError(f"--calib-images {args.calib_images}: no such folder")
    if args.threads:
        torch.set_num_threads(args.threads)
    threads = args.threads or torch.get_num_threads()
    model, spec = _load_model(args)
    model = model.eval()
    detector = is_detector(model)
    calibration = None
    if args.precision == "int8":
        size = model.size if detector else None
        if not detector and fmt == "executorch":
            size = tuple(args.input_size) if args.input_size else None
        calibration = calibration_images(folder=args.calib_images, spec=None if args.calib_images else spec,
                                         count=args.calib_count, size=size)
        print(f"calibrating on {len(calibration)} images ({args.calib_images or 'the run training set'})")
    input_size = tuple(args.input_size) if args.input_size else None
    if fmt == "executorch" and input_size is None and not detector and spec is not None:
        base = spec.data.base_size or spec.data.crop
        input_size = (round(base[0] * spec.data.eval_scale), round(base[1] * spec.data.eval_scale))
    path = export_artifact(model, args.output, fmt, args.precision, calibration=calibration,
                           run_spec=spec.to_dict() if spec is not None else None, opset=args.opset,
                           fold=not args.no_fold, input_size=input_size, full_logits=args.full_logits)
    size_mb = sum(p.stat().st_size for p in (path, path.with_suffix(".bin")) if p.is_file()) / 1e6
    print(f"wrote {path} ({fmt} {args.precision}, {size_mb:.1f} MB)")
    engine = load_engine(path, {"onnx": "onnxruntime"}.get(fmt, fmt), threads)
    name = engine.engine
    if fmt == "openvino":
        from .deploy.openvino import cpu_capabilities

        print(f"OpenVINO CPU: {', '.join(cpu_capabilities())}; compiled precision "
              f"{engine.inference_precision}")
    fixed = json.loads(engine.metadata.get("input_size") or "null")
    h, w = fixed if fixed and not detector else args.check_size
    g = torch.Generator().manual_seed(0)
    # Another batch size than the traced one (2), so the dynamic batch axis is exercised (static programs: 1).
    random_images = [torch.rand(1 if fixed else 3, 3, h, w, generator=g)]
    ok = True
    result = check_artifact(model, engine, random_images, "fp32", atol=args.atol)
    if args.precision == "fp32":
        print(f"{name} vs PyTorch on random images, max |diff|: "
              + ("scores" if detector else "logits") + f" {result['max_abs_diff']:.2e}"
              + (f", boxes {result['max_box_diff']:.2e} px" if detector else "") + f" (atol {args.atol:g})")
        ok = result["passed"]
    real, where = _check_images(model, spec, calibration)
    if real and fixed and not detector:
        import torch.nn.functional as F

        real = [F.interpolate(x, size=(h, w), mode="bilinear", align_corners=False) for x in real]
    if args.precision != "fp32" or real:
        images = real or random_images
        result = check_artifact(model, engine, images, args.precision, min_agreement=args.min_agreement,
                                atol=args.atol)
        what = ("detections matched (IoU >= 0.5, same label, score >= 0.1)" if detector else
                "pixels with the same class")
        need = f" (needs {result['min_agreement']:.2f})" if args.precision != "fp32" else ""
        print(f"{name} {args.precision} vs PyTorch fp32 on {where or 'random images'}: {what} "
              f"{result['agreement']:.4f}{need}, max |diff| {result['max_abs_diff']:.3g}")
        ok = ok and (result["passed"] if args.precision != "fp32" else True)
    if args.repeats > 0:
        from .benchmark.timing import time_interleaved

        x = torch.rand(1, 3, h, w)
        run = {"artifact": lambda: engine(x), "torch": lambda: model(x)}
        if not detector:  # what eval / predict compute: class ids
            run = {"artifact": lambda: engine.labels(x), "torch": lambda: model.labels(x) if hasattr(model, "labels")
                   else model(x).argmax(1)}
        with torch.inference_mode():
            t = time_interleaved(run, args.repeats, warmup=1)
        t_art, t_torch = 1e3 * t["artifact"].median, 1e3 * t["torch"].median
        print(f"latency batch 1 at {h}x{w}" + ("" if detector else " (image -> class ids)")
              + f", {threads} thread(s): {name} {args.precision} {t_art:.1f} ms, "
              f"PyTorch eager {t_torch:.1f} ms (x{t_torch / t_art:.2f})")
    if args.eval and spec is not None:
        with tempfile.TemporaryDirectory() as tmp:
            ref = _evaluate(args, spec.task, None, Path(tmp) / "pytorch")
            got = _evaluate(args, spec.task, path, Path(tmp) / "artifact")
        print(f"\n{'metric':<10} {'pytorch fp32':>13} {f'{name} {args.precision}':>22} {'delta':>8}")
        for key, value in ref.items():
            print(f"{key:<10} {value:>13.4f} {got[key]:>22.4f} {got[key] - value:>+8.4f}")
    if not ok:
        print(f"error: {path} differs from PyTorch beyond the tolerance above (the file is written; a trained "
              "model is needed for bf16/int8 agreement: random weights give near-ties everywhere)")
        return 1
    return 0
