"""``mobiledense train cls``: pretrain a backbone as an image classifier (ImageFolder, CIFAR-10).

Examples::

    mobiledense train cls --preset quick                          # objects cut from synthetic shapes, CPU minutes
    mobiledense train cls --preset cifar --backbone mobilenet_v2 --train data/cifar-10-batches-py
    mobiledense train cls --preset torchvision --train /data/imagenet/train --val /data/imagenet/val
    torchrun --nproc-per-node 8 -m mobiledense.tools.cli train cls --preset torchvision ...

The checkpoint's ``backbone.*`` tensors start detectors and segmenters:
``mobiledense train det --weights-backbone OUTPUT/checkpoints/best.pt`` (EMA weights when the
run kept them). ``mobiledense eval cls --checkpoint OUTPUT/checkpoints/best.pt`` needs no
other flag.
"""

from __future__ import annotations

import argparse
from typing import Any

from .common import add_spec_arguments, given, run_training
from .engine import ClassificationDataSpec, TrainConfig

#: Recipes: (recipe, model options, data options).
#: "torchvision" is torchvision's MobileNetV3 reference command (references/classification:
#: --opt rmsprop --batch-size 128 --lr 0.064 --wd 0.00001 --lr-step-size 2 --lr-gamma 0.973
#: --auto-augment imagenet --random-erase 0.2, 600 epochs, 8 GPUs) with the two parts of its later
#: recipes: --label-smoothing 0.1 and --model-ema (decay 0.99998 every 32 steps, adjusted for 8 x 128
#: images over 600 epochs, is 0.99997 per step). ``--no-ema --label-smoothing 0`` is the published
#: MobileNetV3 command exactly.
PRESETS: dict[str, dict[str, dict[str, Any]]] = {
    "torchvision": {
        "recipe": dict(epochs=600, batch_size=128, optimizer="rmsprop", lr=0.064, momentum=0.9, rmsprop_alpha=0.9,
                       rmsprop_eps=0.0316, weight_decay=1e-5, schedule="step", lr_step_epochs=2, lr_gamma=0.973,
                       warmup_iters=0, workers=16, label_smoothing=0.1, ema=True, ema_decay=0.99997),
        "model": dict(),
        "data": dict(size=(224, 224), augment="imagenet", auto_augment="imagenet", random_erasing=0.2)},
    # CIFAR-10 (32x32): the stem conv at stride 1 (MobileNets), pad-4 crops and flips, SGD + cosine,
    # as CIFAR ports of MobileNet train (e.g. kuangliu/pytorch-cifar: lr 0.1, wd 5e-4, 200 epochs).
    "cifar": {
        "recipe": dict(epochs=200, batch_size=128, optimizer="sgd", lr=0.1, momentum=0.9, weight_decay=5e-4,
                       schedule="cosine", warmup_iters=0, workers=4, eval_every=5),
        "model": dict(stem_stride=1),
        "data": dict(layout="cifar10", size=(32, 32), augment="cifar")},
    # A few CPU minutes: the objects of 300 synthetic images (6 shapes) at 64x64.
    "quick": {
        "recipe": dict(epochs=12, batch_size=32, optimizer="adamw", lr=2e-3, weight_decay=1e-4, schedule="cosine",
                       warmup_iters=20, warmup_factor=0.1, workers=2, eval_every=4, bn_momentum=0.1),
        "model": dict(),
        "data": dict(size=(64, 64), augment="light", synthetic_images=300)},
}

#: Backbone families with a stem stride (the CIFAR adaptation): others run 32x32 at their native stride.
_STEM_STRIDE_FAMILIES = ("mobilenet_v1", "mobilenet_v2", "mobilenet_v3_large", "mobilenet_v3_small")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_spec_arguments(parser, ClassificationDataSpec, skip=("format",),
                       title="data (default: objects cut from a synthetic set of shapes)",
                       presets={name: p["data"] for name, p in PRESETS.items()})
    model = parser.add_argument_group("model")
    model.add_argument("--backbone", default="mobilenet_v3_large", help="registered backbone (mobiledense backbones)")
    model.add_argument("--width-mult", type=float, help="backbone width (families with a width)")
    model.add_argument("--reduced-tail", action="store_true", default=None, help="MobileNetV3 reduced tail")
    model.add_argument("--stem-stride", type=int, choices=(1, 2),
                       help="MobileNets: stride of the first conv (2; preset cifar: 1, for 32x32 inputs)")
    model.add_argument("--dropout", type=float, help="dropout of the classifier head (the family's default)")
    run = parser.add_argument_group("run")
    run.add_argument("--preset", choices=sorted(PRESETS), default="quick")
    run.add_argument("--output-dir", default="runs/cls", help="checkpoints, logs, reports")
    run.add_argument("--resume", default="auto", help="'auto', a checkpoint path, or 'none'")
    run.add_argument("--allow-change", nargs="+", default=[], metavar="FIELD",
                     help="spec fields a resumed run may change (e.g. epochs lr), refused otherwise")
    run.add_argument("--no-progress", action="store_true")
    run.add_argument("--print-config", action="store_true",
                     help="print the run spec the preset and flags resolve to, and exit")
    add_spec_arguments(parser, TrainConfig, skip=("world_size", "seg_loss"), title="recipe",
                       presets={name: p["recipe"] for name, p in PRESETS.items()})


def build_spec(args: argparse.Namespace) -> Any:
    """The run spec the flags describe: the preset, then every flag given on top of it."""
    from mobiledense.heads import build_model_spec

    from .engine import RunSpec

    preset = PRESETS[args.preset]
    recipe = TrainConfig.parse(**{**preset["recipe"], **given(args, TrainConfig)})
    data = {**preset["data"], **given(args, ClassificationDataSpec, skip=("format",))}
    if data.get("val") == "none":
        data["val"], data["val_split"] = None, "none"
    options = dict(preset["model"])
    if options.get("stem_stride") == 1 and args.backbone not in _STEM_STRIDE_FAMILIES:
        options.pop("stem_stride")  # ShuffleNet, SqueezeNet, Xception: 32x32 runs at their own stride
    options.update({k: v for k, v in (("width_mult", args.width_mult), ("reduced_tail", args.reduced_tail),
                                      ("stem_stride", args.stem_stride), ("dropout", args.dropout)) if v is not None})
    model = build_model_spec("cls", "classifier", args.backbone, num_classes=2, **options)  # classes: from the data
    return RunSpec.parse(model=model, data=ClassificationDataSpec.parse(**data), recipe=recipe)


def run(args: argparse.Namespace) -> int:
    return run_training(args, build_spec(args))


__all__ = ["PRESETS", "add_arguments", "build_spec", "run"]
