"""``mobiledense train seg``: LR-ASPP (or any head of ours / smp) on Cityscapes-layout data.

Examples::

    mobiledense train seg --preset quick                           # synthetic streets, CPU minutes
    mobiledense train seg --preset mmseg --data-root /data/cityscapes
    torchrun --nproc-per-node 4 -m mobiledense.tools.cli train seg --preset mmseg --data-root ...
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any

from .common import add_train_config_arguments, cli_overrides
from .engine import TrainConfig

log = logging.getLogger("mobiledense.train")

#: Recipes. "mmseg" is MMSegmentation's lraspp_m-v3-d8_512x1024_320k_cityscapes (69.54 mIoU):
#: SGD lr 0.01, wd 5e-4, poly(0.9, min 1e-4), 4 GPUs x 4 crops of 512x1024, 320k iterations
#: (= 1721 epochs of the 2975 train frames at batch 16).
PRESETS: dict[str, dict[str, Any]] = {
    "mmseg": dict(
        train=TrainConfig(epochs=1721, batch_size=4, lr=0.01, momentum=0.9, weight_decay=5e-4, schedule="poly",
                          poly_power=0.9, min_lr=1e-4, warmup_iters=0, workers=4, eval_every=100),
        crop=(512, 1024), base=(1024, 2048), scale=(0.5, 2.0), loss="ce"),
    # AdamW variant (our recipe, not a published one): converges with less LR tuning.
    "adamw": dict(
        train=TrainConfig(epochs=1721, batch_size=4, lr=5e-4, weight_decay=1e-2, optimizer="adamw",
                          schedule="poly", poly_power=0.9, min_lr=1e-6, warmup_iters=1000, workers=4,
                          eval_every=100),
        crop=(512, 1024), base=(1024, 2048), scale=(0.5, 2.0), loss="ce"),
    # A few CPU minutes on the synthetic streets: the README's command.
    "quick": dict(
        train=TrainConfig(epochs=12, batch_size=8, lr=2e-3, weight_decay=1e-4, optimizer="adamw",
                          schedule="poly", warmup_iters=20, warmup_factor=0.1, workers=2, eval_every=4,
                          bn_momentum=0.1),
        crop=(192, 384), base=(256, 512), scale=(0.75, 1.5), loss="ce"),
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    data = parser.add_argument_group("data (default: a synthetic Cityscapes-layout set)")
    data.add_argument("--data-root", help="Cityscapes root holding leftImg8bit/ and gtFine/")
    data.add_argument("--train-split", default="train")
    data.add_argument("--val-split", default="val")
    data.add_argument("--synthetic-frames", type=int, default=160,
                      help="train frames of the synthetic set when no --data-root is given")
    data.add_argument("--crop", type=int, nargs=2, metavar=("H", "W"), help="training crop (preset default)")
    data.add_argument("--base-size", type=int, nargs=2, metavar=("H", "W"),
                      help="size frames are resized to before random scaling (preset default)")
    data.add_argument("--eval-scale", type=float, default=1.0, help="eval resolution vs base size (0.5 = half)")
    model = parser.add_argument_group("model")
    model.add_argument("--backbone", default="mobilenet_v3_large", help="registered backbone name")
    model.add_argument("--head", default="lraspp",
                       help="lraspp (ours) or an smp architecture: unet, fpn, deeplabv3plus, ...")
    model.add_argument("--pool", choices=("global", "paper"), default="global",
                       help="LR-ASPP pooling: global (torchvision) or the paper's 49x49 large kernel")
    model.add_argument("--reduced-tail", action="store_true", help="MobileNetV3 reduced tail (RF2)")
    model.add_argument("--loss", help="ce, dice, focal, lovasz or sums like ce+0.5*lovasz (preset default)")
    model.add_argument("--weights-backbone", help="local ImageNet backbone state_dict")
    run = parser.add_argument_group("run")
    run.add_argument("--preset", choices=sorted(PRESETS), default="quick")
    run.add_argument("--output-dir", default="runs/seg")
    run.add_argument("--resume", default="auto", help="'auto', a checkpoint path, or 'none'")
    run.add_argument("--no-progress", action="store_true")
    add_train_config_arguments(parser)


def _datasets(args: argparse.Namespace, preset: dict[str, Any], out: Path) -> tuple[Any, Any, Any]:
    from mobiledense.datasets.cityscapes import CityscapesSegmentation
    from mobiledense.datasets.seg_transforms import build_seg_transforms

    root = args.data_root
    base = tuple(args.base_size or preset["base"])
    if root is None:
        from mobiledense.datasets.synthetic_seg import make_synthetic_cityscapes

        from mobiledense.datasets.io import materialize_once

        root = out / "synthetic"
        if not root.exists():
            log.info("writing %d synthetic frames to %s", args.synthetic_frames, root)
        materialize_once(root, lambda d: make_synthetic_cityscapes(
            d, num_train=args.synthetic_frames, num_val=max(args.synthetic_frames // 4, 4), size=base, seed=0))
    train_tf = build_seg_transforms(True, crop_size=tuple(args.crop or preset["crop"]), base_size=base,
                                    scale_range=preset["scale"])
    eval_tf = build_seg_transforms(False, base_size=base, eval_scale=args.eval_scale)
    train = CityscapesSegmentation(root, args.train_split, transforms=train_tf)
    try:
        val = CityscapesSegmentation(root, args.val_split, transforms=eval_tf)
    except FileNotFoundError as e:
        log.warning("no validation set (%s): training without evaluation", e)
        val = None
    return train, val, root


def build_segmenter(args: argparse.Namespace, num_classes: int) -> tuple[Any, dict[str, Any]]:
    kwargs: dict[str, Any] = {}
    if args.reduced_tail:
        kwargs["reduced_tail"] = True
    if args.head == "lraspp":
        from mobiledense.heads.lraspp import create_segmenter

        kwargs["pool"] = args.pool
        model = create_segmenter(args.backbone, num_classes, backbone_weights=args.weights_backbone, **kwargs)
        return model, {"head": "lraspp", "model_kwargs": kwargs}
    from mobiledense.heads.smp_encoders import create_smp_model

    model = create_smp_model(args.head, args.backbone, num_classes, **kwargs)
    return model, {"head": args.head, "model_kwargs": kwargs}


def run(args: argparse.Namespace) -> int:
    import torch.nn.functional as F

    from mobiledense.heads.seg_losses import build_seg_loss

    from .engine import Trainer, configure_logging, is_main_process, seed_everything
    from .evaluation import evaluate_segmenter

    configure_logging()
    preset = PRESETS[args.preset]
    cfg = cli_overrides(preset["train"], vars(args))
    cfg.validate()
    seed_everything(cfg.seed)  # the initial weights follow --seed (torch seeds randomly otherwise)
    out = Path(args.output_dir)
    train, val, root = _datasets(args, preset, out)
    model, head_info = build_segmenter(args, train.num_classes)
    criterion = build_seg_loss(args.loss or preset["loss"], ignore_index=train.ignore_index)
    run_info = {"task": "seg", "model": f"{head_info['head']}_{args.backbone}", "backbone": args.backbone,
                "num_classes": train.num_classes, **head_info, "class_names": list(train.class_names)}

    def loss_fn(net: Any, images: Any, masks: Any) -> dict[str, Any]:
        logits = net(images)
        if logits.shape[-2:] != masks.shape[-2:]:
            logits = F.interpolate(logits, size=masks.shape[-2:], mode="bilinear", align_corners=False)
        return {"seg": criterion(logits, masks)}

    def eval_fn(net: Any, epoch: int) -> dict[str, float]:
        m = evaluate_segmenter(net, val, device=trainer.device, progress=not args.no_progress)
        return {"mIoU": m.miou, "pixel_acc": m.pixel_acc}

    trainer = Trainer(model, train, _collate, loss_fn, cfg, out, eval_fn=eval_fn if val is not None else None,
                      run_info=run_info, progress=not args.no_progress)
    trainer.resume(None if args.resume == "none" else args.resume)
    metrics = trainer.fit()
    if is_main_process():
        log.info("done: %s", ", ".join(f"{k}={v:.4g}" for k, v in metrics.items()))
        log.info("checkpoint: %s (evaluate: mobiledense eval seg --checkpoint %s --data-root %s)",
                 trainer.ckpts.latest(), trainer.ckpts.latest(), root)
    return 0


def _collate(samples: list) -> tuple[Any, Any]:
    import torch

    images, masks = zip(*samples)
    return torch.stack(images), torch.stack(masks)
