"""``mobiledense train seg``: LR-ASPP (or an smp decoder) on Cityscapes-layout data.

Examples::

    mobiledense train seg --preset quick                           # synthetic streets, CPU minutes
    mobiledense train seg --preset mmseg --data-root /data/cityscapes
    torchrun --nproc-per-node 4 -m mobiledense.tools.cli train seg --preset mmseg --data-root ...

The run is one :class:`~mobiledense.tools.engine.RunSpec`: base size, crop, scales and eval
resolution included, so ``mobiledense eval seg --checkpoint OUTPUT/checkpoints/best.pt``
reproduces the run's own evaluation with no other flag.
"""

from __future__ import annotations

import argparse
from typing import Any

from .common import add_spec_arguments, given, run_training
from .engine import CityscapesDataSpec, TrainConfig

#: Recipes: (recipe, data options). "mmseg" is MMSegmentation's lraspp_m-v3-d8_512x1024_320k_cityscapes
#: (69.54 mIoU): SGD lr 0.01, wd 5e-4, poly(0.9, min 1e-4), 4 GPUs x 4 crops of 512x1024, 320k
#: iterations (= 1721 epochs of the 2975 train frames at batch 16).
PRESETS: dict[str, dict[str, dict[str, Any]]] = {
    "mmseg": {
        "recipe": dict(epochs=1721, batch_size=4, lr=0.01, momentum=0.9, weight_decay=5e-4, schedule="poly",
                       poly_power=0.9, min_lr=1e-4, warmup_iters=0, workers=4, eval_every=100, seg_loss="ce",
                       weights_backbone="imagenet"),
        "data": dict(crop=(512, 1024), base_size=(1024, 2048), scale_range=(0.5, 2.0))},
    # AdamW variant (our recipe, not a published one): converges with less LR tuning.
    "adamw": {
        "recipe": dict(epochs=1721, batch_size=4, lr=5e-4, weight_decay=1e-2, optimizer="adamw", schedule="poly",
                       poly_power=0.9, min_lr=1e-6, warmup_iters=1000, workers=4, eval_every=100, seg_loss="ce",
                       weights_backbone="imagenet"),
        "data": dict(crop=(512, 1024), base_size=(1024, 2048), scale_range=(0.5, 2.0))},
    # A few CPU minutes on the synthetic streets: the README's command.
    "quick": {
        "recipe": dict(epochs=12, batch_size=8, lr=2e-3, weight_decay=1e-4, optimizer="adamw", schedule="poly",
                       warmup_iters=20, warmup_factor=0.1, workers=2, eval_every=4, bn_momentum=0.1, seg_loss="ce"),
        "data": dict(crop=(192, 384), base_size=(256, 512), scale_range=(0.75, 1.5), synthetic_frames=160)},
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    data = parser.add_argument_group("data (default: a synthetic Cityscapes-layout set)")
    data.add_argument("--data-root", help="Cityscapes root holding leftImg8bit/ and gtFine/ (--layout folder: the "
                                          "folder with images/<split>/, masks/<split>/, classes.json)")
    data.add_argument("--layout", choices=("cityscapes", "folder"),
                      help="cityscapes (default) or a generic folder of images + index/palette masks (SegFolder)")
    data.add_argument("--classes", help="--layout folder: class list json (default DATA_ROOT/classes.json)")
    data.add_argument("--mask-format", choices=("auto", "index", "color"),
                      help="--layout folder: masks hold class indices or palette colours (default auto)")
    data.add_argument("--train-split", help="default train")
    data.add_argument("--val-split", help="split evaluated during training (default val; 'none': no evaluation)")
    data.add_argument("--synthetic-frames", type=int, help="train frames of the synthetic set (no --data-root)")
    data.add_argument("--crop", type=int, nargs=2, metavar=("H", "W"), help="training crop (preset default)")
    data.add_argument("--base-size", type=int, nargs=2, metavar=("H", "W"),
                      help="size frames are resized to before random scaling / the eval scale (preset default)")
    data.add_argument("--scale-range", type=float, nargs=2, metavar=("LOW", "HIGH"),
                      help="random scale range of training (preset default)")
    data.add_argument("--eval-scale", type=float, help="eval resolution vs base size (default 1.0; 0.5 = half)")
    model = parser.add_argument_group("model")
    model.add_argument("--backbone", default="mobilenet_v3_large", help="registered backbone name")
    model.add_argument("--head", default="lraspp",
                       help="lraspp (ours) or an smp architecture: unet, fpn, deeplabv3plus, ...")
    model.add_argument("--pool", choices=("global", "paper"),
                       help="LR-ASPP pooling: global (torchvision, default) or the paper's 49x49 large kernel")
    model.add_argument("--reduced-tail", action="store_true", default=None, help="MobileNetV3 reduced tail (RF2)")
    model.add_argument("--width-mult", type=float, help="backbone width (families with a width)")
    model.add_argument("--loss", dest="seg_loss", help="ce, dice, focal, lovasz or sums like ce+0.5*lovasz "
                                                       "(preset default)")
    run = parser.add_argument_group("run")
    run.add_argument("--preset", choices=sorted(PRESETS), default="quick")
    run.add_argument("--output-dir", default="runs/seg")
    run.add_argument("--resume", default="auto", help="'auto', a checkpoint path, or 'none'")
    run.add_argument("--allow-change", nargs="+", default=[], metavar="FIELD",
                     help="spec fields a resumed run may change (e.g. epochs lr), refused otherwise")
    run.add_argument("--no-progress", action="store_true")
    run.add_argument("--print-config", action="store_true",
                     help="print the run spec the preset and flags resolve to, and exit")
    add_spec_arguments(parser, TrainConfig, skip=("world_size", "seg_loss", "label_smoothing"), title="recipe",
                       presets={name: p["recipe"] for name, p in PRESETS.items()})


def build_spec(args: argparse.Namespace) -> Any:
    """The run spec the flags describe: the preset, then every flag given on top of it."""
    from mobiledense.heads import build_model_spec, model_spec

    from .engine import RunSpec

    preset = PRESETS[args.preset]
    recipe = TrainConfig.parse(**{**preset["recipe"], **given(args, TrainConfig)})
    flags = {"root": args.data_root, "train_split": args.train_split, "synthetic_frames": args.synthetic_frames,
             "crop": args.crop, "base_size": args.base_size, "scale_range": args.scale_range,
             "eval_scale": args.eval_scale, "layout": args.layout, "classes": args.classes,
             "mask_format": args.mask_format}
    data = {**preset["data"], **{k: v for k, v in flags.items() if v is not None}}
    if args.val_split is not None:
        data["val_split"] = None if args.val_split == "none" else args.val_split
    options = {k: v for k, v in (("pool", args.pool), ("reduced_tail", args.reduced_tail),
                                 ("width_mult", args.width_mult)) if v is not None}
    model = (model_spec(f"lraspp_{args.backbone}", num_classes=19, **options) if args.head == "lraspp"
             else build_model_spec("seg", args.head, args.backbone, num_classes=19, **options))
    return RunSpec.parse(model=model, data=CityscapesDataSpec.parse(**data), recipe=recipe)


def run(args: argparse.Namespace) -> int:
    return run_training(args, build_spec(args))


__all__ = ["PRESETS", "add_arguments", "build_spec", "run"]
