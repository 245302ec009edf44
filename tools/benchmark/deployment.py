"""Export and deploy sections: our artifacts on onnxruntime / OpenVINO / ExecuTorch against torchvision."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import torch

from mobiledense.tools.deploy import (OnnxDetector, compare_detections, compare_tensors, compare_with_pytorch,
                                      export_onnx, ort_session)

from .common import BenchConfig, Row, _det_images, _det_pair, _seg_pair
from .timing import time_interleaved

__all__ = ["bench_deploy", "bench_export"]


def bench_export(cfg: BenchConfig, device: str) -> list[Row]:
    """Our ONNX export on onnxruntime (CPU) against torchvision eager, same weights."""
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tv, eager, _ = _det_pair("cpu", 9.0)
        path = export_onnx(eager, Path(tmp) / "ssdlite.onnx")
        onnx_det = OnnxDetector(path, cfg.threads)
        images = _det_images(cfg, 1, "cpu")
        batch = torch.stack(images)
        with torch.inference_mode():
            check = compare_detections(tv(images), onnx_det(batch))
            diffs = compare_with_pytorch(eager, path, batch, cfg.threads)
            check.update({"graph_max_box_diff": diffs["boxes"], "graph_max_score_diff": diffs["scores"]})
            t = time_interleaved({"ours": lambda: onnx_det(batch), "ref": lambda: tv(images)}, cfg.repeats,
                                 cfg.warmup)
        rows.append(Row("export", "ssdlite320_mobilenet_v3_large end to end", "cpu", 1, t["ours"], t["ref"],
                        "onnxruntime graph + select_detections", "torchvision eager", check,
                        {"input": list(cfg.det_image_size), "onnx_mb": path.stat().st_size / 1e6}))
        _, eager_seg, _, reference = _seg_pair("cpu")
        path = export_onnx(eager_seg, Path(tmp) / "lraspp.onnx", full_logits=True)  # logits as torchvision's
        session = ort_session(path, cfg.threads)
        h, w = cfg.seg_sizes[0]
        x = torch.rand(1, 3, h, w, generator=torch.Generator().manual_seed(0))
        with torch.inference_mode():
            got = torch.from_numpy(session.run(None, {"images": x.numpy()})[0])
            check = compare_tensors(reference(x), got, atol=1e-4)
            t = time_interleaved({"ours": lambda: session.run(None, {"images": x.numpy()}),
                                  "ref": lambda: reference(x)}, cfg.few, min(cfg.warmup, 2))
        rows.append(Row("export", f"lraspp_mobilenet_v3_large {h}x{w}", "cpu", 1, t["ours"], t["ref"],
                        "onnxruntime (export --full-logits)", "torchvision eager", check,
                        {"onnx_mb": path.stat().st_size / 1e6}))
    return rows



#: Relative RMS error (vs fp32 PyTorch) a bf16 / int8 row may show on the bench's calibrated random
#: weights: a sanity bound (the artifact computes the function); accuracy on trained models is the
#: ``export --eval`` table in README "Deploy".
RMSE_BOUND = {"fp32": 1e-3, "bf16": 0.25, "int8": 0.75}


def _combos(cfg: BenchConfig, detector: bool) -> list[tuple[str, str]]:
    """(format, precision) rows: every engine x precision; smoke: no ExecuTorch, detectors fp32 only."""
    import importlib.util

    combos = [("onnx", "fp32"), ("onnx", "int8"), ("openvino", "fp32"), ("openvino", "bf16"), ("openvino", "int8")]
    if not cfg.smoke and importlib.util.find_spec("executorch") is not None:
        combos += [("executorch", "fp32"), ("executorch", "int8")]
    if cfg.smoke and detector:
        combos = [c for c in combos if c[1] == "fp32"]
    if importlib.util.find_spec("openvino") is None:
        combos = [c for c in combos if c[0] != "openvino"]
    return combos


def _openvino_compiled(path: Path, threads: int) -> Any:
    import openvino as ov

    from mobiledense.tools.deploy.openvino import compile_model

    core = ov.Core()
    return compile_model(core, core.read_model(str(path)), {"INFERENCE_NUM_THREADS": threads,
                                                            "PERFORMANCE_HINT": "LATENCY",
                                                            "INFERENCE_PRECISION_HINT": "f32"})


def bench_deploy(cfg: BenchConfig, device: str) -> list[Row]:
    """Every engine x precision of ours, end to end, against torchvision eager and torchvision's own ONNX export.

    Detector: SSDLite320 MobileNetV3-Large (trained-like scores) from a batch-1 image of
    ``det_image_size``: resize, network, decoding and NMS. Segmenter: LR-ASPP MobileNetV3-Large at
    each ``seg_sizes``, image -> class ids (normalisation, network, upsampling, argmax; full-size
    logits of the reference rows argmaxed by ``max(1)``, PyTorch's fast CPU reduction).
    ``info["vs_onnxruntime_fp32"]``: the speed-up over our onnxruntime fp32 export as it was
    before (the pre-deploy path; segmenters: the graph with full-size logits) in the same run.
    """
    import importlib.util
    import warnings

    from mobiledense.tools.deploy import check_artifact, export_artifact, load_engine, match_detections
    from mobiledense.tools.deploy.formats import SUFFIX

    rows: list[Row] = []
    g = torch.Generator().manual_seed(0)
    have_ov = importlib.util.find_spec("openvino") is not None
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        # --- detector
        tv, eager, _ = _det_pair("cpu", 9.0)
        images = _det_images(cfg, 1, "cpu")
        batch = torch.stack(images)
        cal = [torch.rand(1, 3, *eager.size, generator=g) for _ in range(2 if cfg.smoke else 16)]
        with torch.inference_mode():
            ref_dets = tv(images)
        timed: dict[str, Any] = {"torchvision eager": lambda: tv(images)}
        tv_onnx = tmp_path / "tv_ssdlite.onnx"
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            torch.onnx.export(tv, (images,), str(tv_onnx), dynamo=False, opset_version=17, input_names=["images"])
        session = ort_session(tv_onnx, cfg.threads)
        x0 = images[0].numpy()
        timed["torchvision onnx on onnxruntime"] = lambda: session.run(None, {"images": x0})
        if have_ov:
            tv_ov = _openvino_compiled(tv_onnx, cfg.threads)
            timed["torchvision onnx on openvino"] = lambda: tv_ov(x0)
        checks: dict[str, dict] = {k: {"passed": True, "what": "the reference"} for k in timed}
        for fmt, precision in _combos(cfg, True):
            path = export_artifact(eager, tmp_path / f"det_{precision}{SUFFIX[fmt]}", fmt, precision, calibration=cal)
            engine = load_engine(path, {"onnx": "onnxruntime"}.get(fmt, fmt), cfg.threads)
            with torch.inference_mode():
                got = engine(batch)
                result = check_artifact(eager, engine, [batch], precision)
            if precision == "fp32":
                check = compare_detections(ref_dets, got)
                check["graph_max_score_diff"] = result["max_abs_diff"]
            else:
                check = {**match_detections(ref_dets, got), "relative_rmse": result["relative_rmse"],
                         "passed": result["relative_rmse"] < RMSE_BOUND[precision]}
            key = f"ours {engine.engine} {precision}"
            timed[key], checks[key] = (lambda e=engine: e(batch)), check
        rows += _deploy_rows(cfg, "ssdlite320_mobilenet_v3_large end to end", timed, checks,
                             {"input": list(cfg.det_image_size)})
        # --- segmenter
        tv_seg_model, eager_seg, _, reference = _seg_pair("cpu", cfg.seg_checkpoint)
        frames = _run_frames(cfg)
        tv_seg = _TorchvisionSegGraph(tv_seg_model).eval()
        tv_seg_onnx = tmp_path / "tv_lraspp.onnx"
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            torch.onnx.export(tv_seg, (torch.rand(1, 3, 128, 256),), str(tv_seg_onnx), dynamo=False, opset_version=17,
                              input_names=["images"], output_names=["logits"],
                              dynamic_axes={"images": {0: "batch", 2: "height", 3: "width"}})
        tv_seg_session = ort_session(tv_seg_onnx, cfg.threads)
        for i, (h, w) in enumerate(cfg.seg_sizes):
            n_cal = 2 if cfg.smoke else 8
            if frames is None:
                x = torch.rand(1, 3, h, w, generator=g)
                cal = [torch.rand(1, 3, h, w, generator=g) for _ in range(n_cal)]
            else:  # one read of the run's frames: the first is timed, the rest calibrate
                x, *cal = frames(1 + n_cal, (h, w))
            xn = x.numpy()
            timed = {"torchvision eager": lambda x=x: _class_ids(reference(x)),
                     "torchvision onnx on onnxruntime":
                         lambda xn=xn: _class_ids(tv_seg_session.run(None, {"images": xn})[0])}
            if have_ov:
                import openvino as ov

                core = ov.Core()
                model = core.read_model(str(tv_seg_onnx))
                model.reshape({"images": [1, 3, h, w]})
                from mobiledense.tools.deploy.openvino import compile_model

                compiled = compile_model(core, model, {"INFERENCE_NUM_THREADS": cfg.threads,
                                                       "PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": "f32"})
                timed["torchvision onnx on openvino"] = lambda xn=xn, c=compiled: _class_ids(c(xn)[0])
            checks = {k: {"passed": True, "what": "the reference"} for k in timed}
            # The pre-deploy path: our onnxruntime graph with the final upsampling inside (full-size logits).
            full = export_artifact(eager_seg, tmp_path / f"seg_{h}_full.onnx", "onnx", "fp32", full_logits=True)
            before = load_engine(full, "onnxruntime", cfg.threads)
            timed[BEFORE_SEG] = lambda e=before, x=x: e.labels(x)
            checks[BEFORE_SEG] = {"passed": True, "what": "the baseline"}
            with torch.inference_mode():
                boundary = _boundary_fraction(eager_seg.decode(x))
            for fmt, precision in _combos(cfg, False):
                if fmt == "executorch" and i > 0:
                    continue  # a .pte has one input size: exported at the first size only (lowering is slow)
                path = export_artifact(eager_seg, tmp_path / f"seg_{h}_{precision}{SUFFIX[fmt]}", fmt, precision,
                                       calibration=cal, input_size=(h, w))
                engine = load_engine(path, {"onnx": "onnxruntime"}.get(fmt, fmt), cfg.threads)
                with torch.inference_mode():
                    result = check_artifact(eager_seg, engine, [x], precision)
                check = {k: result[k] for k in ("agreement", "max_abs_diff", "relative_rmse")}
                check["passed"] = result["relative_rmse"] < RMSE_BOUND[precision]
                key = f"ours {engine.engine} {precision}"
                timed[key], checks[key] = (lambda e=engine, x=x: e.labels(x)), check
            weights = "random" if cfg.seg_checkpoint is None else str(cfg.seg_checkpoint)
            rows += _deploy_rows(cfg, f"lraspp_mobilenet_v3_large {h}x{w}", timed, checks,
                                 {"output": "class ids", "boundary_fraction": boundary, "weights": weights},
                                 baseline=BEFORE_SEG)
        rows.append(_class_id_row(cfg))
    return rows


class _TorchvisionSegGraph(torch.nn.Module):
    """torchvision's LR-ASPP as a user exports it: normalisation + ``model(x)["out"]``."""

    def __init__(self, model: torch.nn.Module) -> None:
        from mobiledense.heads.segmenter import Normalize

        super().__init__()
        self.model, self.norm = model, Normalize()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(self.norm(x))["out"]


def _run_frames(cfg: BenchConfig) -> Any:
    """With ``--seg-checkpoint``: ``(count, size) -> [(1, 3, H, W)]`` frames of its run (training split, evaluation
    transforms: the first is timed, the rest calibrate int8); else None (random images)."""
    if cfg.seg_checkpoint is None:
        return None
    from mobiledense.tools.deploy.calibration import calibration_images
    from mobiledense.tools.engine.checkpoint import load_checkpoint
    from mobiledense.tools.engine.spec import RunSpec

    spec = RunSpec.from_dict(load_checkpoint(cfg.seg_checkpoint)["spec"], cfg.seg_checkpoint)
    return lambda count, size: calibration_images(spec=spec, count=count, size=size)


def _class_ids(logits: Any) -> torch.Tensor:
    """Class ids of full-size logits (an array or tensor), by ``max(1)`` (PyTorch's CPU ``argmax(1)`` of
    NCHW logits is ~8x slower: references are not charged for it)."""
    from mobiledense.heads.segmenter import upsampled_argmax

    logits = torch.from_numpy(logits) if not isinstance(logits, torch.Tensor) else logits
    return upsampled_argmax(logits, tuple(logits.shape[-2:]))


def _boundary_fraction(logits: torch.Tensor) -> float:
    """Fraction of 2x2 source cells of ``logits`` whose argmax differs (what ``upsampled_argmax`` interpolates)."""
    from mobiledense.heads.segmenter import boundary_cells

    return boundary_cells(logits.argmax(1)).float().mean().item()


def _class_id_row(cfg: BenchConfig) -> Row:
    """Class ids from LR-ASPP-sized logits (19 x 64 x 128 -> 512 x 1024) whose label map is made of regions,
    as a trained model's (the bench's random weights give noise): ``upsampled_argmax`` against upsampling
    every class channel and ``argmax(1)``, as a torchvision user writes it."""
    import torch.nn.functional as F

    from mobiledense.heads.segmenter import upsampled_argmax

    g = torch.Generator().manual_seed(5)
    coarse = torch.randn(1, 19, 6, 12, generator=g) * 3
    logits = F.interpolate(coarse, size=(64, 128), mode="bilinear", align_corners=False)
    logits = logits + 0.05 * torch.randn(logits.shape, generator=g)
    size = (512, 1024)

    def reference() -> torch.Tensor:
        return F.interpolate(logits, size=size, mode="bilinear", align_corners=False).argmax(1)

    with torch.inference_mode():
        same = torch.equal(upsampled_argmax(logits, size), reference())
        t = time_interleaved({"ours": lambda: upsampled_argmax(logits, size), "ref": reference}, cfg.repeats,
                             cfg.warmup)
    return Row("deploy", "class ids 19x64x128 -> 512x1024, label map of regions", "cpu", 1, t["ours"], t["ref"],
               "upsampled_argmax (boundary pixels only)", "F.interpolate + argmax(1)",
               {"passed": same, "identical_labels": same},
               {"boundary_fraction": _boundary_fraction(logits)})


#: The segmenter rows' baseline: our onnxruntime fp32 graph with full-size logits, as exported before.
BEFORE_SEG = "ours onnxruntime fp32 full logits (pre-deploy path)"


def _deploy_rows(cfg: BenchConfig, name: str, timed: dict[str, Any], checks: dict[str, dict],
                 info: dict[str, Any], baseline: str = "ours onnxruntime fp32") -> list[Row]:
    """Time every entry of ``timed`` interleaved; one row each against torchvision eager."""
    with torch.inference_mode():
        t = time_interleaved(timed, cfg.few if "lraspp" in name else cfg.repeats, min(cfg.warmup, 2))
    base = t["torchvision eager"]
    today = t.get(baseline)
    rows = []
    for key, timing in t.items():
        if key == "torchvision eager":
            continue
        extra = {**info, "vs_onnxruntime_fp32": None if today is None else today.median / timing.median}
        rows.append(Row("deploy", f"{name} [{key}]", "cpu", 1, timing, base, key, "torchvision eager",
                        checks[key], extra))
    return rows
