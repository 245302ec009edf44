"""``mobiledense train det``: SSDLite on COCO-format data (synthetic data when none is given).

Examples::

    mobiledense train det --preset quick                       # synthetic shapes, CPU minutes
    mobiledense train det --preset torchvision \\
        --train-images coco/train2017 --train-ann coco/annotations/instances_train2017.json \\
        --val-images coco/val2017 --val-ann coco/annotations/instances_val2017.json
    torchrun --nproc-per-node 8 -m mobiledense.tools.cli train det --preset torchvision ...
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any

from .common import add_train_config_arguments, cli_overrides
from .engine import TrainConfig

log = logging.getLogger("mobiledense.train")

#: Recipes. "torchvision" is the reference recipe of torchvision's
#: ssdlite320_mobilenet_v3_large (21.3 mAP): 8 GPUs x 24 images, 660 epochs.
PRESETS: dict[str, dict[str, Any]] = {
    "torchvision": dict(
        train=TrainConfig(epochs=660, batch_size=24, lr=0.15, weight_decay=4e-5, schedule="cosine",
                          warmup_iters=1000, warmup_factor=1e-3, workers=8),
        size=320, augment="ssdlite"),
    # A few CPU minutes on the synthetic shapes: the README's first command.
    "quick": dict(
        train=TrainConfig(epochs=16, batch_size=16, lr=2e-3, optimizer="adamw", weight_decay=1e-4,
                          schedule="cosine", warmup_iters=20, warmup_factor=0.1, workers=2, eval_every=8,
                          bn_momentum=0.1),
        size=160, augment="ssdlite", synthetic_images=300),
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    data = parser.add_argument_group("data (default: a synthetic COCO-format set of shapes)")
    data.add_argument("--train-images", help="folder the train json's file_name entries are relative to")
    data.add_argument("--train-ann", help="COCO-format train annotations json")
    data.add_argument("--val-images", help="folder of the val images")
    data.add_argument("--val-ann", help="COCO-format val annotations json")
    data.add_argument("--synthetic-images", type=int,
                      help="images of the synthetic set when no --train-ann is given (preset default)")
    data.add_argument("--label-mapping", choices=("contiguous", "category_id"), default="contiguous",
                      help="labels 1..K (default) or raw category ids (torchvision's 91-class COCO)")
    model = parser.add_argument_group("model")
    model.add_argument("--model", default="ssdlite320_mobilenet_v3_large",
                       help="detector name (ssdlite320_mobilenet_v3_large, ssdlite_<backbone>)")
    model.add_argument("--size", type=int, help="input size (preset default)")
    model.add_argument("--reduced-tail", action="store_true", help="MobileNetV3 reduced tail (paper §6.3)")
    model.add_argument("--loss", choices=("multibox", "focal"), default="multibox")
    model.add_argument("--weights-backbone", help="local ImageNet backbone state_dict")
    run = parser.add_argument_group("run")
    run.add_argument("--preset", choices=sorted(PRESETS), default="quick")
    run.add_argument("--augment", choices=("ssd", "ssdlite", "none"), help="augmentation (preset default)")
    run.add_argument("--output-dir", default="runs/det", help="checkpoints, logs, reports")
    run.add_argument("--resume", default="auto",
                     help="'auto' (newest checkpoint in --output-dir, if any), a path, or 'none'")
    run.add_argument("--no-progress", action="store_true")
    add_train_config_arguments(parser)


def _datasets(args: argparse.Namespace, size: int, augment: str, out: Path,
              preset: dict[str, Any]) -> tuple[Any, Any]:
    from mobiledense.datasets import CocoDetection, build_det_transforms, make_synthetic_coco

    if args.train_ann is None:
        if args.train_images or args.val_ann or args.val_images:
            raise SystemExit("error: --train-images/--val-ann/--val-images need --train-ann")
        from mobiledense.datasets.io import materialize_once

        root = out / "synthetic"
        n_synth = args.synthetic_images or preset.get("synthetic_images", 600)
        if not root.exists():
            log.info("writing %d synthetic images to %s", n_synth, root)
        materialize_once(root, lambda d: make_synthetic_coco(d, num_images=n_synth, seed=0))
        splits = {s: (root / "images" / s, root / "annotations" / f"instances_{s}.json") for s in ("train", "val")}
    else:
        if not args.train_images:
            raise SystemExit("error: --train-ann needs --train-images (the folder its file_name entries are in)")
        splits = {"train": (args.train_images, args.train_ann)}
        if args.val_ann:
            splits["val"] = (args.val_images or args.train_images, args.val_ann)
    tf = build_det_transforms(augment, size, train=True)
    train = CocoDetection(*splits["train"], transforms=tf, label_mapping=args.label_mapping)
    if len(train) == 0:
        raise ValueError(f"{train.ann_file} lists no images: nothing to train on")
    val = CocoDetection(*splits["val"], label_mapping=args.label_mapping) if "val" in splits else None
    if val is not None and val.label_to_category_id != train.label_to_category_id:
        raise SystemExit(f"error: train ({train.ann_file}) and val ({val.ann_file}) have different categories")
    return train, val


def run(args: argparse.Namespace) -> int:
    from mobiledense.heads import create_detector, get_detector_factory

    from .engine import Trainer, configure_logging, is_main_process, seed_everything
    from .evaluation import evaluate_detector

    configure_logging()
    preset = PRESETS[args.preset]
    cfg = cli_overrides(preset["train"], vars(args))
    cfg.validate()
    get_detector_factory(args.model)  # an unknown name fails before any data is written
    seed_everything(cfg.seed)  # the initial weights follow --seed (torch seeds randomly otherwise)
    size = args.size or preset["size"]
    out = Path(args.output_dir)
    train, val = _datasets(args, size, args.augment or preset["augment"], out, preset)
    model_kwargs: dict[str, Any] = {"size": size, "loss": args.loss}
    if args.reduced_tail:
        model_kwargs["reduced_tail"] = True
    model = create_detector(args.model, num_classes=train.num_classes,
                            weights_backbone=args.weights_backbone, **model_kwargs)
    run_info = {
        "task": "det", "model": args.model, "num_classes": train.num_classes, "model_kwargs": model_kwargs,
        "label_to_category_id": {int(k): int(v) for k, v in train.label_to_category_id.items()},
        "category_names": {int(k): str(v) for k, v in train.category_names.items()},
    }

    def eval_fn(net: Any, epoch: int) -> dict[str, float]:
        result, _ = evaluate_detector(net, val, batch_size=cfg.batch_size, device=trainer.device,
                                      progress=not args.no_progress)
        stats = result.as_dict()
        return {"mAP": stats["AP"], "AP50": stats["AP50"], "AP75": stats["AP75"]}

    def loss_fn(net: Any, images: Any, targets: Any) -> dict[str, Any]:
        return net(images, targets)

    from mobiledense.datasets import collate_detection

    trainer = Trainer(model, train, collate_detection, loss_fn, cfg, out,
                      eval_fn=eval_fn if val is not None else None, run_info=run_info,
                      progress=not args.no_progress)
    trainer.resume(None if args.resume == "none" else args.resume)
    if trainer.epoch >= cfg.epochs:
        log.info("already trained for %d epochs (see %s); nothing to do", cfg.epochs, out)
    metrics = trainer.fit()
    if is_main_process():
        log.info("done: %s", ", ".join(f"{k}={v:.4g}" for k, v in metrics.items()))
        log.info("checkpoint: %s  (evaluate: mobiledense eval det --checkpoint %s ...)",
                 trainer.ckpts.latest(), trainer.ckpts.latest())
    return 0


__all__ = ["PRESETS", "add_arguments", "run"]
