"""Export section: our ONNX graphs on onnxruntime against torchvision eager."""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch

from mobiledense.tools.deploy import (OnnxDetector, compare_detections, compare_tensors, compare_with_pytorch,
                                      export_onnx, ort_session)

from .common import BenchConfig, Row, _det_images, _det_pair, _seg_pair
from .timing import time_interleaved

__all__ = ["bench_export"]


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
        path = export_onnx(eager_seg, Path(tmp) / "lraspp.onnx")
        session = ort_session(path, cfg.threads)
        h, w = cfg.seg_sizes[0]
        x = torch.rand(1, 3, h, w, generator=torch.Generator().manual_seed(0))
        with torch.inference_mode():
            got = torch.from_numpy(session.run(None, {"images": x.numpy()})[0])
            check = compare_tensors(reference(x), got, atol=1e-4)
            t = time_interleaved({"ours": lambda: session.run(None, {"images": x.numpy()}),
                                  "ref": lambda: reference(x)}, cfg.few, min(cfg.warmup, 2))
        rows.append(Row("export", f"lraspp_mobilenet_v3_large {h}x{w}", "cpu", 1, t["ours"], t["ref"],
                        "onnxruntime", "torchvision eager", check, {"onnx_mb": path.stat().st_size / 1e6}))
    return rows

