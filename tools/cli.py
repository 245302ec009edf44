"""``mobiledense`` console entry point: thin argument parsing, dispatch to tool modules.

Each tool module exposes ``add_arguments(parser)`` and ``run(args) -> int``;
they are imported only when their subcommand runs, so ``mobiledense --help``
stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# (command, task) -> module under mobiledense.tools; task None = no task level.
COMMANDS: dict[str, dict[str | None, tuple[str, str]]] = {
    "train": {
        "det": ("train_det", "train an SSDLite detector on COCO-format data"),
        "seg": ("train_seg", "train an LR-ASPP segmenter on Cityscapes-layout data"),
    },
    "eval": {
        "det": ("eval_det", "COCO mAP of a detector (pycocotools / faster-coco-eval)"),
        "seg": ("eval_seg", "Cityscapes mIoU of a segmenter"),
    },
    "predict": {
        "det": ("predict_det", "boxes JSON + overlay PNGs for images or a folder"),
        "seg": ("predict_seg", "label PNGs + colour overlays for images or a folder"),
    },
    "bench": {None: ("bench", "latency/throughput against torchvision, same weights")},
    "export": {None: ("export", "export a model to ONNX and check it against PyTorch")},
    "backbones": {None: ("list_backbones", "list registered backbones with params and MAdds")},
    "synth": {
        "det": ("synth_det", "write a synthetic COCO-format detection dataset"),
        "seg": ("synth_seg", "write a synthetic Cityscapes-layout segmentation dataset"),
    },
}


def _available(module: str) -> bool:
    return importlib.util.find_spec(f"mobiledense.tools.{module}") is not None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mobiledense",
        description="Dense prediction with MobileNet-family backbones.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for command, tasks in COMMANDS.items():
        tasks = {t: v for t, v in tasks.items() if _available(v[0])}
        if not tasks:
            continue
        if None in tasks:
            module, help_ = tasks[None]
            p = sub.add_parser(command, help=help_, description=help_)
            p.set_defaults(_module=module, task=None)
            importlib.import_module(f"mobiledense.tools.{module}").add_arguments(p)
            continue
        p = sub.add_parser(command, help=f"{command} ({'/'.join(tasks)})")
        tsub = p.add_subparsers(dest="task", metavar="TASK")
        for task, (module, help_) in tasks.items():
            tp = tsub.add_parser(task, help=help_, description=help_)
            tp.set_defaults(_module=module)
            importlib.import_module(f"mobiledense.tools.{module}").add_arguments(tp)
        p.set_defaults(_parser=p)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "_module", None):
        (getattr(args, "_parser", None) or parser).print_help()
        return 0 if args.command is None else 2
    module = importlib.import_module(f"mobiledense.tools.{args._module}")
    return int(module.run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
