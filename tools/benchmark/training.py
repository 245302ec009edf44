"""Training-step section: one SGD step of ours and of torchvision at the same batch."""

from __future__ import annotations

from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .common import BenchConfig, Row, _seg_pair, _tv_ssdlite
from .timing import sync_fn, time_interleaved

__all__ = ["bench_train", "compile_detector_"]


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
    t = time_interleaved(fns, cfg.few, 1, sync_fn(device))
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
    t = time_interleaved(fns, cfg.few, 1, sync_fn(device))
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

