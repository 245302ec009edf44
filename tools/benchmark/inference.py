"""Inference sections: SSDLite320 end to end, LR-ASPP, every backbone as a classifier."""

from __future__ import annotations

import tempfile
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mobiledense.tools.deploy import compare_detections, compare_tensors

from .common import BenchConfig, Row, _det_images, _det_pair, _seg_pair, calibrate_
from .timing import sync_fn, time_interleaved

__all__ = ["bench_det", "bench_seg", "bench_backbones"]


def bench_det(cfg: BenchConfig, device: str) -> list[Row]:
    """SSDLite320 MobileNetV3-Large end to end: resize + network + decoding + NMS."""
    from mobiledense.backbones import count_params
    from mobiledense.heads import detector_madds

    rows = []
    regimes = [("trained-like scores", 9.0)] + ([] if cfg.smoke else [("untrained, dense scores", 0.0)])
    for regime, bias in regimes:
        tv, eager, fast = _det_pair(device, bias)
        images = _det_images(cfg, max(cfg.batch, 1), device)
        with torch.inference_mode():
            check = compare_detections(tv(images), fast(images))
            batch = eager.transform(images[:1])[0]
            check["candidates_per_image"] = int((eager.dense_predictions(batch)[1] > eager.score_thresh).sum())
            info = {"params": count_params(eager), "madds": detector_madds(eager),
                    "input": list(cfg.det_image_size), "regime": regime}
            for batch_size in (1, cfg.batch):
                x = images[:batch_size]
                fns = {"ours": lambda: fast(x), "ref": lambda: tv(x)}
                if batch_size == 1:
                    fns["eager"] = lambda: eager(x)
                t = time_interleaved(fns, cfg.repeats if batch_size == 1 else cfg.few, cfg.warmup, sync_fn(device))
                extra = {"ours_eager": asdict(t["eager"])} if "eager" in t else {}
                rows.append(Row("det", f"ssdlite320_mobilenet_v3_large ({regime})", device, batch_size, t["ours"],
                                t["ref"], "mobiledense optimize_for_inference", "torchvision eager", check,
                                {**info, **extra}))
    return rows


def bench_seg(cfg: BenchConfig, device: str) -> list[Row]:
    """LR-ASPP MobileNetV3-Large, logits at input size (normalisation and upsampling included)."""
    from mobiledense.backbones import count_madds, count_params

    _, eager, fast, reference = _seg_pair(device)
    rows = []
    g = torch.Generator().manual_seed(0)
    for i, (h, w) in enumerate(cfg.seg_sizes):
        images = torch.rand(cfg.seg_batch, 3, h, w, generator=g).to(device)
        with torch.inference_mode():
            expected, got = reference(images[:1]), fast(images[:1])
            check = compare_tensors(expected, got, atol=1e-4)
            check["argmax_agreement"] = (expected.argmax(1) == got.argmax(1)).float().mean().item()
            del expected, got
            info = {"params": count_params(eager), "madds": count_madds(eager, images[:1]), "input": [h, w]}
            for batch_size in (1, cfg.seg_batch):
                x = images[:batch_size]
                fns = {"ours": lambda: fast(x), "ref": lambda: reference(x)}
                if batch_size == 1:
                    fns["eager"] = lambda: eager(x)
                reps = cfg.repeats if batch_size == 1 and i == 0 else cfg.few
                t = time_interleaved(fns, reps, min(cfg.warmup, 2), sync_fn(device))
                extra = {"ours_eager": asdict(t["eager"])} if "eager" in t else {}
                rows.append(Row("seg", f"lraspp_mobilenet_v3_large {h}x{w}", device, batch_size, t["ours"], t["ref"],
                                "mobiledense optimize_for_inference", "torchvision eager", check, {**info, **extra}))
    return rows


#: Our options that reproduce the reference architecture exactly.
BACKBONE_KWARGS: dict[str, dict[str, Any]] = {
    "squeezenet1_0": {"padding": "caffe"}, "squeezenet1_1": {"padding": "caffe"}, "xception": {"padding": "valid"},
}


def _reference_classifier(name: str) -> tuple[nn.Module | None, str | None]:
    from mobiledense.backbones import BACKBONES

    entry = BACKBONES[name]
    if entry.torchvision:
        import torchvision

        return getattr(torchvision.models, entry.torchvision)(weights=None), f"torchvision {entry.torchvision}"
    if name == "xception":
        try:
            import timm
        except ImportError:
            return None, None
        return timm.create_model("legacy_xception", pretrained=False), "timm legacy_xception"
    return None, None


def bench_backbones(cfg: BenchConfig, device: str) -> list[Row]:
    """Every registered backbone as an ImageNet classifier at ``backbone_size``."""
    from mobiledense.backbones import count_madds, count_params, create_classifier, list_backbones
    from mobiledense.heads import optimize_for_inference

    rows = []
    s = cfg.backbone_size
    g = torch.Generator().manual_seed(0)
    x_all = torch.rand(cfg.batch, 3, s, s, generator=g)
    for name in list_backbones():
        torch.manual_seed(0)
        ref, ref_label = _reference_classifier(name)
        kwargs = BACKBONE_KWARGS.get(name, {})
        if ref is not None:
            calibrate_(ref, lambda m: m(torch.randn(4, 3, max(s, 96), max(s, 96), generator=g)))
            with tempfile.TemporaryDirectory() as tmp:
                path = Path(tmp) / f"{name}.pth"
                torch.save(ref.state_dict(), path)
                ours = create_classifier(name, weights=path, **kwargs).eval()
        else:
            ours = create_classifier(name, **kwargs)
            calibrate_(ours, lambda m: m(torch.randn(4, 3, max(s, 96), max(s, 96), generator=g)))
        ours = ours.to(device)
        fast = optimize_for_inference(ours)
        x_all_d = x_all.to(device)
        with torch.inference_mode():
            check = (compare_tensors(ref.to(device)(x_all_d[:1]), fast(x_all_d[:1]), atol=1e-4) if ref is not None
                     else compare_tensors(ours(x_all_d[:1]), fast(x_all_d[:1]), atol=1e-4))
            check["against"] = ref_label or "mobiledense eager (no reference implementation)"
            info = {"params": count_params(ours), "madds": count_madds(ours, torch.zeros(1, 3, s, s, device=device)),
                    "input": [s, s]}
            for batch_size in (1, cfg.batch):
                x = x_all_d[:batch_size]
                fns = {"ours": lambda: fast(x), "eager": lambda: ours(x)}
                if ref is not None:
                    fns["ref"] = lambda: ref(x)
                t = time_interleaved(fns, cfg.repeats if batch_size == 1 else cfg.few, min(cfg.warmup, 2),
                                     sync_fn(device))
                rows.append(Row("backbones", name, device, batch_size, t["ours"], t.get("ref"),
                                "mobiledense optimize_for_inference", f"{ref_label} eager" if ref_label else None,
                                check, {**info, "ours_eager": asdict(t["eager"])}))
    return rows

