"""Measurements behind ``mobiledense bench``: ours against torchvision, same weights, one process.

Every comparison builds the reference (torchvision, or timm for Xception), gives it
calibrated random weights (He-initialised convolutions, BatchNorm statistics measured on a
random batch, so activations are O(1) and a wrong layer would show), loads the *same*
weights into our model, checks that both give the same outputs, then times them.

Timing: ``warmup`` calls each, then ``repeats`` rounds in which every contender runs
once, in rotating order, so a change of machine load hits all of them alike; the median
and 90th percentile of the per-call times are reported (CUDA: synchronised). Speed-up =
reference time / our time. Threads are fixed by the caller (``torch.set_num_threads``;
onnxruntime gets the same number).
"""

from __future__ import annotations

import contextlib
import copy
import io
import os
import platform
import statistics
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["BenchConfig", "Timing", "Row", "SECTIONS", "time_interleaved", "machine_info", "run_sections",
           "calibrate_", "compare_detections", "compile_detector_"]


# --------------------------------------------------------------------------- timing and rows


@dataclass
class Timing:
    """Per-call wall times of one contender (seconds)."""

    median: float
    p90: float
    min: float
    n: int

    @classmethod
    def of(cls, seconds: Sequence[float]) -> "Timing":
        s = sorted(seconds)
        return cls(statistics.median(s), float(np.percentile(s, 90)), s[0], len(s))


def time_interleaved(fns: dict[str, Callable[[], Any]], repeats: int, warmup: int = 1,
                     sync: Callable[[], None] | None = None) -> dict[str, Timing]:
    """Time every function ``repeats`` times, round-robin with a rotating order (see module doc)."""
    sync = sync or (lambda: None)
    names = list(fns)
    for _ in range(warmup):
        for name in names:
            fns[name]()
    sync()
    times: dict[str, list[float]] = {n: [] for n in names}
    for r in range(max(1, repeats)):
        for name in names[r % len(names):] + names[:r % len(names)]:
            tic = time.perf_counter()
            fns[name]()
            sync()
            times[name].append(time.perf_counter() - tic)
    return {n: Timing.of(t) for n, t in times.items()}


@dataclass
class Row:
    """One line of the table: our timing against the reference's on the same work."""

    section: str
    name: str
    device: str
    batch: int  # images per timed call
    ours: Timing
    reference: Timing | None
    ours_label: str
    reference_label: str | None
    check: dict[str, Any] = field(default_factory=dict)  # "passed" + the measured differences
    info: dict[str, Any] = field(default_factory=dict)  # params, MAdds, eager timing, ...

    @property
    def speedup(self) -> float | None:
        return None if self.reference is None else self.reference.median / self.ours.median

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["speedup"] = self.speedup
        for key in ("ours", "reference"):
            if d[key] is not None:
                d[key]["images_per_s"] = self.batch / d[key]["median"]
        return d


@dataclass
class BenchConfig:
    """What ``mobiledense bench`` measures and at which sizes (``smoke`` shrinks everything)."""

    devices: tuple[str, ...] = ("cpu",)
    repeats: int = 20
    warmup: int = 3
    batch: int = 8
    seg_batch: int = 2
    threads: int = 1
    smoke: bool = False
    coco_dir: Path | None = None
    eval_images: int = 5000
    eval_dets_per_image: int = 20
    seg_sizes: tuple[tuple[int, int], ...] = ((512, 1024), (1024, 2048))
    det_image_size: tuple[int, int] = (480, 640)
    backbone_size: int = 224
    seg_train_size: int = 384
    compile: bool = False

    @classmethod
    def smoke_config(cls, **kw: Any) -> "BenchConfig":
        base = dict(repeats=2, warmup=1, batch=2, seg_batch=1, eval_images=60, eval_dets_per_image=5,
                    seg_sizes=((64, 128), (128, 256)), det_image_size=(120, 160), backbone_size=96,
                    seg_train_size=64, smoke=True)
        return cls(**{**base, **kw})

    @property
    def few(self) -> int:
        """Repeats of the expensive rows (throughput, large inputs, training steps)."""
        return max(2 if self.smoke else 3, self.repeats // 4)


def _sync(device: str) -> Callable[[], None] | None:
    return torch.cuda.synchronize if device.startswith("cuda") else None


def machine_info(threads: int) -> dict[str, Any]:
    """CPU model, cores, load, library versions: what a timing table must be read with."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    import torchvision

    info: dict[str, Any] = {
        "cpu": cpu, "logical_cores": os.cpu_count(), "threads": threads, "python": platform.python_version(),
        "torch": torch.__version__, "torchvision": torchvision.__version__, "platform": platform.platform(),
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }
    try:
        import onnxruntime

        info["onnxruntime"] = onnxruntime.__version__
    except ImportError:
        info["onnxruntime"] = None
    return info


# --------------------------------------------------------------------------- identical weights


def calibrate_(model: nn.Module, forward: Callable[[nn.Module], Any], seed: int = 0,
               var_floor: float = 0.01) -> nn.Module:
    """He-normal convolutions, random BN affine, BN statistics measured by ``forward(model)``; eval mode.

    Running variances are floored at ``var_floor``: a 1x1 map seen in a batch of 2 has a
    near-zero variance, a layer no trained network has, which amplifies float rounding.
    """
    g = torch.Generator().manual_seed(seed)
    momenta = {}
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            fan_out = m.out_channels * m.kernel_size[0] * m.kernel_size[1] // m.groups
            m.weight.data.copy_(torch.randn(m.weight.shape, generator=g) * (2.0 / fan_out) ** 0.5)
            if m.bias is not None:
                m.bias.data.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)
        elif isinstance(m, nn.BatchNorm2d):
            m.reset_running_stats()
            momenta[m] = m.momentum
            m.momentum = None  # cumulative average: exactly the statistics of the batch
            m.weight.data.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(m.num_features, generator=g) * 0.1)
    model.train()
    with torch.no_grad():
        forward(model)
    for m, momentum in momenta.items():
        m.momentum = momentum
        m.running_var.clamp_(min=var_floor)
    return model.eval()


def _tv_ssdlite(background_bias: float) -> nn.Module:
    """torchvision's ssdlite320_mobilenet_v3_large with calibrated weights.

    ``background_bias`` is added to the background logit of every anchor: 0 leaves the
    near-uniform scores of an untrained network (all 291k (anchor, class) pairs above
    ``score_thresh`` = 0.001), 9 mimics a trained detector (~1k pairs above it, 300
    detections out: COCO evaluation at torchvision's thresholds).
    """
    import torchvision

    torch.manual_seed(0)
    tv = torchvision.models.detection.ssdlite320_mobilenet_v3_large(weights=None, weights_backbone=None)
    x = torch.rand(4, 3, 320, 320, generator=torch.Generator().manual_seed(1)) * 2 - 1  # as normalised
    calibrate_(tv, lambda m: m.head(list(m.backbone(x).values())))
    g = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for block in tv.head.classification_head.module_list:
            block[1].weight.data.normal_(0, 0.03, generator=g)
            block[1].bias.data.normal_(0, 0.5, generator=g)
            block[1].bias.data.view(-1, 91)[:, 0] += background_bias
        for block in tv.head.regression_head.module_list:
            block[1].weight.data.normal_(0, 0.01, generator=g)
    return tv.eval()


def _twin_distance(a: dict[str, Tensor], b: dict[str, Tensor], score_atol: float, box_atol: float
                   ) -> tuple[float, float]:
    """Largest (score, box) difference from each detection of ``a`` to its nearest same-label twin in ``b``."""
    ds = db = 0.0
    for label in a["labels"].unique().tolist():
        ia, ib = a["labels"] == label, b["labels"] == label
        if not ib.any():
            return float("inf"), float("inf")
        sd = (a["scores"][ia][:, None] - b["scores"][ib][None]).abs()
        bd = (a["boxes"][ia][:, None] - b["boxes"][ib][None]).abs().amax(-1)
        nearest = (sd / score_atol + bd / box_atol).argmin(1)
        rows = torch.arange(len(nearest))
        ds, db = max(ds, sd[rows, nearest].max().item()), max(db, bd[rows, nearest].max().item())
    return ds, db


def compare_detections(reference: Sequence[dict[str, Tensor]], ours: Sequence[dict[str, Tensor]],
                       score_atol: float = 1e-3, box_atol: float = 0.1) -> dict[str, Any]:
    """Same detections per image, as sets: same count per label, and every detection of each side
    has a twin of the same label on the other within ``score_atol`` / ``box_atol`` (pixels).

    Sets, not sequences: detections whose scores differ by float rounding may come in
    another order, and NMS keeps the same boxes either way.
    """
    same, ds, db, n = len(reference) == len(ours), 0.0, 0.0, 0
    for r, o in zip(reference, ours):
        r, o = ({k: v.detach().cpu() if k == "labels" else v.detach().float().cpu() for k, v in d.items()}
                for d in (r, o))
        n += len(r["scores"])
        counts_r = torch.bincount(r["labels"], minlength=1)
        counts_o = torch.bincount(o["labels"], minlength=1)
        if len(counts_r) != len(counts_o) or not torch.equal(counts_r, counts_o):
            same = False
            continue
        for a, b in ((r, o), (o, r)):
            s, bx = _twin_distance(a, b, score_atol, box_atol)
            ds, db = max(ds, s), max(db, bx)
    passed = same and ds <= score_atol and db <= box_atol
    return {"passed": passed, "same_label_counts": same, "detections": n, "max_score_diff": ds,
            "max_box_diff": db}


def _compare_tensors(ref: Tensor, got: Tensor, atol: float) -> dict[str, Any]:
    diff = (ref.float() - got.float()).abs().max().item()
    scale = ref.abs().max().item()
    return {"passed": diff <= atol * max(1.0, scale), "max_abs_diff": diff, "output_scale": scale}


# --------------------------------------------------------------------------- inference sections


def _det_pair(device: str, background_bias: float) -> tuple[nn.Module, nn.Module, nn.Module]:
    """(torchvision, ours eager, ours optimised) with identical weights."""
    from mobiledense.heads import from_torchvision_ssdlite, optimize_for_inference, ssdlite320_mobilenet_v3_large

    tv = _tv_ssdlite(background_bias)
    ours = ssdlite320_mobilenet_v3_large(num_classes=91, reduced_tail=True)  # torchvision's no-pretrain layout
    ours.load_state_dict(from_torchvision_ssdlite(tv.state_dict()))
    ours.eval()
    tv, ours = tv.to(device), ours.to(device)
    return tv, ours, optimize_for_inference(ours)


def _det_images(cfg: BenchConfig, n: int, device: str, seed: int = 0) -> list[Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.rand(3, *cfg.det_image_size, generator=g).to(device) for _ in range(n)]


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
                t = time_interleaved(fns, cfg.repeats if batch_size == 1 else cfg.few, cfg.warmup, _sync(device))
                extra = {"ours_eager": asdict(t["eager"])} if "eager" in t else {}
                rows.append(Row("det", f"ssdlite320_mobilenet_v3_large ({regime})", device, batch_size, t["ours"],
                                t["ref"], "mobiledense optimize_for_inference", "torchvision eager", check,
                                {**info, **extra}))
    return rows


def _seg_pair(device: str) -> tuple[nn.Module, nn.Module, nn.Module, Callable[[Tensor], Tensor]]:
    from torchvision.models.segmentation import lraspp_mobilenet_v3_large as tv_lraspp

    from mobiledense.heads import optimize_for_inference
    from mobiledense.heads.lraspp import lraspp_from_torchvision, lraspp_mobilenet_v3_large
    from mobiledense.heads.segmenter import Normalize

    torch.manual_seed(0)
    tv = tv_lraspp(weights=None, weights_backbone=None, num_classes=19)
    norm = Normalize()
    x = torch.rand(2, 3, 128, 256, generator=torch.Generator().manual_seed(1))
    calibrate_(tv, lambda m: m(norm(x)))
    ours = lraspp_mobilenet_v3_large(num_classes=19).eval()
    ours.load_state_dict(lraspp_from_torchvision(tv.state_dict()))
    tv, ours, norm = tv.to(device), ours.to(device), norm.to(device)

    def reference(images: Tensor) -> Tensor:  # torchvision normalises in its data pipeline
        return tv(norm(images))["out"]

    return tv, ours, optimize_for_inference(ours), reference


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
            check = _compare_tensors(expected, got, atol=1e-4)
            check["argmax_agreement"] = (expected.argmax(1) == got.argmax(1)).float().mean().item()
            del expected, got
            info = {"params": count_params(eager), "madds": count_madds(eager, images[:1]), "input": [h, w]}
            for batch_size in (1, cfg.seg_batch):
                x = images[:batch_size]
                fns = {"ours": lambda: fast(x), "ref": lambda: reference(x)}
                if batch_size == 1:
                    fns["eager"] = lambda: eager(x)
                reps = cfg.repeats if batch_size == 1 and i == 0 else cfg.few
                t = time_interleaved(fns, reps, min(cfg.warmup, 2), _sync(device))
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
            check = (_compare_tensors(ref.to(device)(x_all_d[:1]), fast(x_all_d[:1]), atol=1e-4) if ref is not None
                     else _compare_tensors(ours(x_all_d[:1]), fast(x_all_d[:1]), atol=1e-4))
            check["against"] = ref_label or "mobiledense eager (no reference implementation)"
            info = {"params": count_params(ours), "madds": count_madds(ours, torch.zeros(1, 3, s, s, device=device)),
                    "input": [s, s]}
            for batch_size in (1, cfg.batch):
                x = x_all_d[:batch_size]
                fns = {"ours": lambda: fast(x), "eager": lambda: ours(x)}
                if ref is not None:
                    fns["ref"] = lambda: ref(x)
                t = time_interleaved(fns, cfg.repeats if batch_size == 1 else cfg.few, min(cfg.warmup, 2),
                                     _sync(device))
                rows.append(Row("backbones", name, device, batch_size, t["ours"], t.get("ref"),
                                "mobiledense optimize_for_inference", f"{ref_label} eager" if ref_label else None,
                                check, {**info, "ours_eager": asdict(t["eager"])}))
    return rows


# --------------------------------------------------------------------------- training step


def _det_batch(n: int, device: str, seed: int = 0) -> tuple[list[Tensor], list[dict[str, Tensor]]]:
    g = torch.Generator().manual_seed(seed)
    images, targets = [], []
    for _ in range(n):
        k = 1 + int(torch.randint(0, 12, (1,), generator=g))
        xy = torch.rand(k, 2, generator=g) * 250
        boxes = torch.cat([xy, xy + 8 + torch.rand(k, 2, generator=g) * 100], 1).clamp(max=320)
        images.append(torch.rand(3, 320, 320, generator=g).to(device))
        targets.append({"boxes": boxes.to(device), "labels": torch.randint(1, 91, (k,), generator=g).to(device)})
    return images, targets


def _train_step(model: nn.Module, opt: torch.optim.Optimizer, loss_fn: Callable[[], Tensor],
                scaler: torch.amp.GradScaler | None = None) -> None:
    loss = loss_fn()
    opt.zero_grad(set_to_none=True)
    if scaler is None:
        loss.backward()
        opt.step()
    else:
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()


def _loss_check(ref: dict[str, float], ours: dict[str, float]) -> dict[str, Any]:
    """Same weights, same batch: the same losses (BN in training mode on both)."""
    diffs = {k: abs(ref[k] - ours[k]) for k in ref}
    return {"passed": all(d <= 1e-4 * max(1.0, abs(ref[k])) for k, d in diffs.items()),
            **{f"{k}_diff": d for k, d in diffs.items()}}


def _our_recipe(cfg: BenchConfig, cuda: bool) -> str:
    return "fp32, channels_last" if not cuda else "fp16 autocast, channels_last" + (", compile" if cfg.compile else "")


def compile_detector_(model: nn.Module) -> nn.Module:
    """``torch.compile`` an SSDLite's networks in place: backbone, head and each extra block.

    The extra blocks are compiled one by one: the detector iterates over ``model.extra``,
    which a compiled ``ModuleList`` would no longer allow.
    """
    model.backbone, model.head = torch.compile(model.backbone), torch.compile(model.head)
    for i, block in enumerate(model.extra):
        model.extra[i] = torch.compile(block)
    return model


def _train_det(cfg: BenchConfig, device: str) -> Row:
    from mobiledense.heads import from_torchvision_ssdlite, ssdlite320_mobilenet_v3_large

    cuda = device.startswith("cuda")
    tv = _tv_ssdlite(0.0)
    ours = ssdlite320_mobilenet_v3_large(num_classes=91, reduced_tail=True)
    ours.load_state_dict(from_torchvision_ssdlite(tv.state_dict()))
    tv, ours = tv.to(device).train(), ours.to(device).train()
    images, targets = _det_batch(cfg.batch, device)
    with torch.no_grad():
        ref_l, our_l = tv(images, targets), ours(images, targets)
    check = _loss_check({k: v.item() for k, v in ref_l.items()}, {k: v.item() for k, v in our_l.items()})
    ours = ours.to(memory_format=torch.channels_last)
    if cfg.compile and cuda:
        compile_detector_(ours)
    opt_t, opt_o = (torch.optim.SGD(m.parameters(), lr=1e-4, momentum=0.9, weight_decay=4e-5) for m in (tv, ours))
    scaler = torch.amp.GradScaler("cuda") if cuda else None

    def ours_loss() -> Tensor:
        with torch.autocast("cuda", dtype=torch.float16, enabled=cuda):
            return sum(ours(images, targets).values())  # a list, as collate_detection gives

    fns = {"ours": lambda: _train_step(ours, opt_o, ours_loss, scaler),
           "ref": lambda: _train_step(tv, opt_t, lambda: sum(tv(images, targets).values()))}
    t = time_interleaved(fns, cfg.few, 1, _sync(device))
    return Row("train", "ssdlite320_mobilenet_v3_large (320x320, multibox loss)", device, cfg.batch, t["ours"],
               t["ref"], f"mobiledense ({_our_recipe(cfg, cuda)})", "torchvision (fp32)", check,
               {"optimizer": "SGD momentum 0.9"})


def _train_seg(cfg: BenchConfig, device: str) -> Row:
    from mobiledense.heads.segmenter import Normalize

    cuda = device.startswith("cuda")
    tv, ours, _, _ = _seg_pair(device)
    s, g = cfg.seg_train_size, torch.Generator().manual_seed(3)
    x = torch.rand(cfg.seg_batch * 2, 3, s, s, generator=g).to(device)
    y = torch.randint(0, 19, (len(x), s, s), generator=g)
    y[:, :8] = 255
    y = y.to(device)
    x_tv = Normalize().to(device)(x)  # torchvision's pipeline normalises before the model
    tv.train(), ours.train()

    def ref_loss() -> Tensor:
        return F.cross_entropy(tv(x_tv)["out"], y, ignore_index=255)

    with torch.no_grad():
        check = _loss_check({"loss": ref_loss().item()}, {"loss": F.cross_entropy(ours(x), y, ignore_index=255).item()})
    ours = ours.to(memory_format=torch.channels_last)
    x_cl = x.contiguous(memory_format=torch.channels_last)
    opt_t, opt_o = (torch.optim.SGD(m.parameters(), lr=1e-4, momentum=0.9) for m in (tv, ours))
    scaler = torch.amp.GradScaler("cuda") if cuda else None

    def ours_loss() -> Tensor:
        with torch.autocast("cuda", dtype=torch.float16, enabled=cuda):
            return F.cross_entropy(ours(x_cl), y, ignore_index=255)

    fns = {"ours": lambda: _train_step(ours, opt_o, ours_loss, scaler),
           "ref": lambda: _train_step(tv, opt_t, ref_loss)}
    t = time_interleaved(fns, cfg.few, 1, _sync(device))
    return Row("train", f"lraspp_mobilenet_v3_large ({s}x{s}, cross-entropy)", device, len(x), t["ours"], t["ref"],
               f"mobiledense ({_our_recipe(cfg, cuda)})", "torchvision (fp32)", check, {"optimizer": "SGD momentum 0.9"})


def bench_train(cfg: BenchConfig, device: str) -> list[Row]:
    """One SGD step (forward, loss, backward, update) at the same batch: images/s.

    Ours runs as ``mobiledense train --channels-last`` does (+ fp16 autocast on CUDA, the
    engine's ``amp`` default, and ``torch.compile`` of the network with ``--compile``); the
    reference as torchvision's reference scripts do by default (fp32, NCHW). Before timing,
    both compute their losses on the same batch with the same weights: they must agree.
    """
    return [_train_det(cfg, device), _train_seg(cfg, device)]


# --------------------------------------------------------------------------- data pipeline


def _reference_det_preset(augmentation: str) -> Callable:
    """torchvision ``references/detection/presets.py`` ``DetectionPresetTrain`` (use_v2=True, PIL backend)."""
    from collections import defaultdict

    import torchvision.transforms.v2 as T
    from torchvision import tv_tensors

    mean = (123.0, 117.0, 104.0)
    ops: list[Any] = []
    if augmentation == "ssd":
        ops += [T.RandomPhotometricDistort(p=1), T.RandomZoomOut(fill=defaultdict(lambda: mean, {tv_tensors.Mask: 0}))]
    ops += [T.RandomIoUCrop(), T.RandomHorizontalFlip(p=0.5), T.ToImage(), T.ToDtype(torch.float, scale=True),
            T.ConvertBoundingBoxFormat(tv_tensors.BoundingBoxFormat.XYXY), T.SanitizeBoundingBoxes(),
            T.ToPureTensor()]
    return T.Compose(ops)


def bench_data(cfg: BenchConfig, device: str) -> list[Row]:
    """SSD augmentation per worker (decode included, one process, one thread) on real COCO JPEGs."""
    import cv2
    from torchvision import datasets

    from mobiledense.datasets import CocoDetection, build_det_transforms

    root = cfg.coco_dir
    if root is None or not (root / "annotations" / "instances_val2017.json").is_file():
        raise FileNotFoundError(f"real COCO images not found under {root} (expected images/val2017 and "
                                "annotations/instances_val2017.json; pass --coco-dir)")
    images, ann = root / "images" / "val2017", root / "annotations" / "instances_val2017.json"
    threads, cv_threads = torch.get_num_threads(), cv2.getNumThreads()
    torch.set_num_threads(1)
    cv2.setNumThreads(0)  # as in a DataLoader worker (datasets.io.worker_init_fn)
    rows = []
    try:
        for preset in ("ssdlite", "ssd"):
            ours = CocoDetection(images, ann, transforms=build_det_transforms(preset, None, train=True))
            with contextlib.redirect_stdout(io.StringIO()):  # pycocotools' progress prints
                ref0 = datasets.CocoDetection(str(images), str(ann), transforms=_reference_det_preset(preset))
            ref = datasets.wrap_dataset_for_transforms_v2(ref0, target_keys=["boxes", "labels", "image_id"])
            # The reference drops images without annotations for training; both see the same images.
            ids = [i for i in ours.image_ids if ours.coco.getAnnIds(imgIds=i, iscrowd=False)]
            ids = ids[:4] if cfg.smoke else ids
            ours_idx = [ours.image_ids.index(i) for i in ids]
            ref_idx = [ref0.ids.index(i) for i in ids]
            ok = True
            for ds, idx in ((ours, ours_idx), (ref, ref_idx)):
                image, target = ds[idx[0]]
                ok &= image.dtype == torch.float32 and image.shape[0] == 3 and 0 <= image.min() <= image.max() <= 1
                ok &= bool((target["boxes"][:, 2:] <= torch.tensor(image.shape[:0:-1])).all())
            # A timed call runs over the images several times: the random zoom-out (up to 16x the
            # pixels) makes one pass's cost vary by 2x from draw to draw; three average it out.
            passes = 1 if cfg.smoke else 3
            fns = {"ours": lambda: [ours[i] for i in ours_idx * passes],
                   "ref": lambda: [ref[i] for i in ref_idx * passes]}
            t = time_interleaved(fns, max(2, cfg.few), 1)
            rows.append(Row("data", f"{preset} train augmentation, COCO val2017 JPEGs", "cpu", len(ids) * passes,
                            t["ours"], t["ref"], f"mobiledense build_det_transforms({preset!r}) (OpenCV)",
                            f"torchvision reference {preset!r} preset (transforms.v2, PIL)",
                            {"passed": bool(ok), "note": "random augmentation: outputs checked for format only"},
                            {"images": len(ids), "decode": "included", "threads": 1}))
    finally:
        torch.set_num_threads(threads)
        cv2.setNumThreads(cv_threads)
    return rows


# --------------------------------------------------------------------------- COCO evaluation


def synthetic_coco(num_images: int, dets_per_image: int, seed: int = 0) -> tuple[dict, list[dict]]:
    """A COCO GT dict (80 categories, 1-15 boxes per image, some crowd) and scored detections.

    Detections are jittered ground-truth boxes (true and false positives at every IoU) plus
    random boxes, with random scores and some wrong categories, so every code path of
    the protocol (areas, crowd, maxDets, unmatched) is exercised.
    """
    rng = np.random.default_rng(seed)
    cats = [{"id": i, "name": f"class{i}", "supercategory": "thing"} for i in range(1, 91) if i % 9 != 0][:80]
    cat_ids = np.array([c["id"] for c in cats])
    images, anns, dets = [], [], []
    for img_id in range(1, num_images + 1):
        w, h = int(rng.integers(320, 641)), int(rng.integers(240, 481))
        images.append({"id": img_id, "width": w, "height": h, "file_name": f"{img_id:012d}.jpg"})
        n = int(rng.integers(1, 16))
        wh = np.exp(rng.uniform(np.log(4), np.log(min(w, h) * 0.9), (n, 2)))
        xy = rng.uniform(0, 1, (n, 2)) * (np.array([w, h]) - wh)
        labels = rng.choice(cat_ids, n)
        for box, lab in zip(np.concatenate([xy, wh], 1), labels):
            anns.append({"id": len(anns) + 1, "image_id": img_id, "category_id": int(lab),
                         "bbox": [float(v) for v in box], "area": float(box[2] * box[3]),
                         "iscrowd": int(rng.random() < 0.03)})
        k = dets_per_image
        src = rng.integers(0, n, k)
        jitter = np.concatenate([xy[src] + rng.normal(0, 0.1, (k, 2)) * wh[src],
                                 wh[src] * np.exp(rng.normal(0, 0.2, (k, 2)))], 1)
        rand = rng.random(k) < 0.3
        jitter[rand, :2] = rng.uniform(0, 1, (rand.sum(), 2)) * np.array([w, h]) * 0.8
        det_labels = np.where(rng.random(k) < 0.8, labels[src], rng.choice(cat_ids, k))
        for box, lab, score in zip(jitter, det_labels, rng.random(k)):
            dets.append({"image_id": img_id, "category_id": int(lab), "bbox": [round(float(v), 2) for v in box],
                         "score": round(float(score), 4)})
    gt = {"images": images, "annotations": anns, "categories": cats}
    return gt, dets


def _pycocotools_reference(gt: dict, dets: list[dict]) -> np.ndarray:
    """What a pycocotools user runs: index GT, loadRes, evaluate, accumulate, summarize."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO()
        coco.dataset = copy.deepcopy(gt)
        coco.createIndex()
        ev = COCOeval(coco, coco.loadRes(copy.deepcopy(dets)), "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return np.asarray(ev.stats)


def bench_eval(cfg: BenchConfig, device: str) -> list[Row]:
    """COCO bbox evaluation of a large synthetic set: ``evaluate_coco`` (faster backend) vs pycocotools."""
    from .coco_eval import evaluate_coco

    gt, dets = synthetic_coco(cfg.eval_images, cfg.eval_dets_per_image)
    out: dict[str, Any] = {}
    fns = {"ours": lambda: out.__setitem__("ours", evaluate_coco(gt, dets, backend="faster_coco_eval").stats),
           "ref": lambda: out.__setitem__("ref", _pycocotools_reference(gt, dets))}
    t = time_interleaved(fns, 1 if cfg.smoke else 2, 0)
    diff = float(np.abs(out["ours"] - out["ref"]).max())
    check = {"passed": diff <= 1e-12, "max_stat_diff": diff, "AP": float(out["ref"][0])}
    return [Row("eval", f"COCO bbox eval, {cfg.eval_images} images, {len(dets)} detections", "cpu",
                cfg.eval_images, t["ours"], t["ref"], "mobiledense evaluate_coco (faster-coco-eval)",
                "pycocotools COCOeval", check, {"gt_boxes": len(gt["annotations"]), "detections": len(dets)})]


# --------------------------------------------------------------------------- ONNX


def bench_export(cfg: BenchConfig, device: str) -> list[Row]:
    """Our ONNX export on onnxruntime (CPU) against torchvision eager, same weights."""
    from .export import OnnxDetector, compare_with_pytorch, export_onnx, ort_session

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
            check = _compare_tensors(reference(x), got, atol=1e-4)
            t = time_interleaved({"ours": lambda: session.run(None, {"images": x.numpy()}),
                                  "ref": lambda: reference(x)}, cfg.few, min(cfg.warmup, 2))
        rows.append(Row("export", f"lraspp_mobilenet_v3_large {h}x{w}", "cpu", 1, t["ours"], t["ref"],
                        "onnxruntime", "torchvision eager", check, {"onnx_mb": path.stat().st_size / 1e6}))
    return rows


#: Section name -> (function, runs once per device?)
SECTIONS: dict[str, tuple[Callable[[BenchConfig, str], list[Row]], bool]] = {
    "det": (bench_det, True),
    "seg": (bench_seg, True),
    "backbones": (bench_backbones, True),
    "train": (bench_train, True),
    "data": (bench_data, False),
    "eval": (bench_eval, False),
    "export": (bench_export, False),
}


def run_sections(cfg: BenchConfig, only: Sequence[str], log: Callable[[str], None] = print
                 ) -> dict[str, dict[str, Any]]:
    """Run the selected sections; a section that cannot run is recorded as skipped with the reason."""
    results: dict[str, dict[str, Any]] = {}
    for name in only:
        fn, per_device = SECTIONS[name]
        rows: list[Row] = []
        tic = time.perf_counter()
        try:
            for device in (cfg.devices if per_device else ("cpu",)):
                log(f"[{name}] {device} ...")
                rows += fn(cfg, device)
        except (FileNotFoundError, ModuleNotFoundError) as e:
            if isinstance(e, ModuleNotFoundError) and (e.name or "").startswith("mobiledense"):
                raise  # our own code is broken: never report that as "skipped"
            log(f"[{name}] skipped: {e}")
            results[name] = {"skipped": str(e), "rows": [r.as_dict() for r in rows]}
            continue
        results[name] = {"rows": [r.as_dict() for r in rows], "seconds": time.perf_counter() - tic}
    return results
