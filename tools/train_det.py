"""``mobiledense train det``: SSDLite on COCO-format data (synthetic data when none is given).

Examples::

    mobiledense train det --preset quick                       # synthetic shapes, CPU minutes
    mobiledense train det --preset torchvision \\
        --train-images coco/train2017 --train-ann coco/annotations/instances_train2017.json \\
        --val-images coco/val2017 --val-ann coco/annotations/instances_val2017.json
    torchrun --nproc-per-node 8 -m mobiledense.tools.cli train det --preset torchvision ...

The run is one :class:`~mobiledense.tools.engine.RunSpec` (model + data + recipe), written to
``OUTPUT/config.json`` and into every checkpoint: ``mobiledense eval det --checkpoint
OUTPUT/checkpoints/best.pt`` needs no other flag.
"""

from __future__ import annotations

import argparse
from typing import Any

from .common import add_spec_arguments, given, run_training
from .engine import CocoDataSpec, TrainConfig

#: Recipes: (recipe, model options, data options). "torchvision" is the reference recipe of
#: torchvision's ssdlite320_mobilenet_v3_large (21.3 mAP): 8 GPUs x 24 images, 660 epochs, from its
#: ImageNet backbone (MobileNet_V3_Large_Weights.IMAGENET1K_V1, the "imagenet" alias).
PRESETS: dict[str, dict[str, dict[str, Any]]] = {
    "torchvision": {
        "recipe": dict(epochs=660, batch_size=24, lr=0.15, weight_decay=4e-5, schedule="cosine", warmup_iters=1000,
                       warmup_factor=1e-3, workers=8, weights_backbone="imagenet"),
        "model": dict(size=320), "data": dict(augment="ssdlite")},
    # A few CPU minutes on the synthetic shapes: the README's first command.
    "quick": {
        "recipe": dict(epochs=16, batch_size=16, lr=2e-3, optimizer="adamw", weight_decay=1e-4, schedule="cosine",
                       warmup_iters=20, warmup_factor=0.1, workers=2, eval_every=8, bn_momentum=0.1),
        "model": dict(size=160), "data": dict(augment="ssdlite", synthetic_images=300)},
}

_DATA_FLAGS = ("layout", "root", "train_split", "val_split", "names", "train_images", "train_ann", "val_images",
               "val_ann", "synthetic_images", "label_mapping", "augment")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_spec_arguments(parser, CocoDataSpec, skip=("format",),
                       title="data (default: a synthetic COCO-format set of shapes)",
                       presets={name: p["data"] for name, p in PRESETS.items()})
    model = parser.add_argument_group("model")
    model.add_argument("--model", default="ssdlite320_mobilenet_v3_large",
                       help="registered detector: ssdlite320_mobilenet_v3_large or ssdlite_<backbone> "
                            "(mobiledense backbones lists them)")
    model.add_argument("--size", type=int, help="input side in pixels (preset default)")
    model.add_argument("--reduced-tail", action="store_true", default=None,
                       help="MobileNetV3 reduced tail (paper §6.3)")
    model.add_argument("--width-mult", type=float, help="backbone and extra-layer width (families with a width)")
    model.add_argument("--loss", choices=("multibox", "focal"), help="multibox (default) or focal")
    run = parser.add_argument_group("run")
    run.add_argument("--preset", choices=sorted(PRESETS), default="quick")
    run.add_argument("--output-dir", default="runs/det", help="checkpoints, logs, reports")
    run.add_argument("--resume", default="auto",
                     help="'auto' (newest checkpoint in --output-dir, if any), a path, or 'none'")
    run.add_argument("--allow-change", nargs="+", default=[], metavar="FIELD",
                     help="spec fields a resumed run may change (e.g. epochs lr), refused otherwise")
    run.add_argument("--no-progress", action="store_true")
    run.add_argument("--print-config", action="store_true",
                     help="print the run spec the preset and flags resolve to, and exit")
    add_spec_arguments(parser, TrainConfig, skip=("world_size", "seg_loss", "label_smoothing"), title="recipe",
                       presets={name: p["recipe"] for name, p in PRESETS.items()})


def build_spec(args: argparse.Namespace) -> Any:
    """The run spec the flags describe: the preset, then every flag given on top of it."""
    from mobiledense.heads import model_spec

    from .engine import RunSpec

    preset = PRESETS[args.preset]
    recipe = TrainConfig.parse(**{**preset["recipe"], **given(args, TrainConfig)})
    data = CocoDataSpec.parse(**{**preset["data"], **{k: v for k, v in vars(args).items()
                                                           if k in _DATA_FLAGS and v is not None}})
    options = {**preset["model"], **{k: v for k, v in (("size", args.size), ("reduced_tail", args.reduced_tail),
                                                         ("width_mult", args.width_mult), ("loss", args.loss))
                                     if v is not None}}
    model = model_spec(args.model, task="det", num_classes=2, **options)  # classes: from the training set
    return RunSpec.parse(model=model, data=data, recipe=recipe)


def run(args: argparse.Namespace) -> int:
    return run_training(args, build_spec(args))


__all__ = ["PRESETS", "add_arguments", "build_spec", "run"]
