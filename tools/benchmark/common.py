"""Rows, sizes, and identical calibrated weights for ours and the reference."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from torch import Tensor, nn

from .timing import Timing

__all__ = ["Row", "BenchConfig", "calibrate_"]


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
    #: deploy section: a trained LR-ASPP checkpoint for the segmenter rows (its weights and its run's frames).
    seg_checkpoint: Path | None = None

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


def calibrate_detector_(model: nn.Module, background_bias: float = 3.0, seed: int = 1) -> nn.Module:
    """:func:`calibrate_` an SSDLite on inputs like normalised images at its size, then add
    ``background_bias`` to every anchor's background logit: background dominates the scores, as
    after training (a few detections per image instead of every (anchor, class) pair); eval mode."""
    x = torch.rand(4, 3, *model.size, generator=torch.Generator().manual_seed(seed)) * 2 - 1  # as normalised
    calibrate_(model, lambda m: m.head_outputs(x))
    with torch.no_grad():
        for block in model.head.classification_head.module_list:
            block[1].bias.data.view(-1, model.num_classes)[:, 0] += background_bias
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


def _seg_pair(device: str, checkpoint: str | Path | None = None
              ) -> tuple[nn.Module, nn.Module, nn.Module, Callable[[Tensor], Tensor]]:
    """(torchvision, ours eager, ours optimised, torchvision + normalisation) LR-ASPP MobileNetV3-Large with the
    same weights: calibrated random ones, or a trained ``checkpoint``'s (an LR-ASPP in torchvision's layout)."""
    from torchvision.models.segmentation import lraspp_mobilenet_v3_large as tv_lraspp

    from mobiledense.heads import optimize_for_inference
    from mobiledense.heads import lraspp_from_torchvision, lraspp_mobilenet_v3_large, lraspp_to_torchvision
    from mobiledense.heads.segmenter import Normalize

    if checkpoint is not None:
        from mobiledense.tools.engine.tasks import load_trained_model

        ours, _ = load_trained_model(checkpoint, "seg")
        tv = tv_lraspp(weights=None, weights_backbone=None, num_classes=ours.num_classes)
        try:
            tv.load_state_dict(lraspp_to_torchvision(ours.state_dict()))
        except (KeyError, RuntimeError) as e:
            raise ValueError(f"--seg-checkpoint {checkpoint}: not an LR-ASPP MobileNetV3-Large in torchvision's "
                             f"layout (the reference rows need torchvision's lraspp_mobilenet_v3_large with the same "
                             f"weights): {str(e).splitlines()[0]}") from e
        tv, ours, norm = tv.eval().to(device), ours.eval().to(device), Normalize().to(device)
        return tv, ours, optimize_for_inference(ours), lambda images: tv(norm(images))["out"]

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

