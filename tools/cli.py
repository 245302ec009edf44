"""``mobiledense`` console entry point: thin argument parsing, dispatch to tool modules.

Each tool module exposes ``add_arguments(parser)`` and ``run(args) -> int``;
they are imported only when their subcommand runs, so ``mobiledense --help``
stays fast.

Errors that the user can fix (bad options, missing or malformed files, a
diverging run...) are printed as one ``error: ...`` line on stderr with exit
status 2, without a traceback; ``--debug`` (or ``MOBILEDENSE_DEBUG=1``) shows it.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

# (command, task) -> module under mobiledense.tools; task None = no task level.
COMMANDS: dict[str, dict[str | None, tuple[str, str]]] = {
    "train": {
        "det": ("train_det", "train an SSDLite detector on COCO-format data"),
        "seg": ("train_seg", "train an LR-ASPP segmenter on Cityscapes-layout data"),
        "cls": ("train_cls", "pretrain a backbone as a classifier (ImageFolder, CIFAR-10)"),
    },
    "eval": {
        "det": ("eval_det", "COCO mAP of a detector (pycocotools / faster-coco-eval)"),
        "seg": ("eval_seg", "Cityscapes mIoU of a segmenter"),
        "cls": ("eval_cls", "top-1 / top-5 / per-class accuracy of a classifier"),
    },
    "predict": {
        "det": ("predict_det", "boxes JSON + overlay PNGs for images or a folder"),
        "seg": ("predict_seg", "label PNGs + colour overlays for images or a folder"),
        "cls": ("predict_cls", "top-k classes JSON + labelled tiles for images or a folder"),
    },
    "bench": {None: ("bench", "latency/throughput against torchvision, same weights")},
    "export": {None: ("export", "export a model to ONNX / OpenVINO / ExecuTorch (fp32, bf16, int8), checked against "
                               "PyTorch")},
    "backbones": {None: ("list_backbones", "list registered backbones with params and MAdds")},
    "weights": {None: ("weights", "list / download the named pretrained weights (torchvision, timm)")},
    "compare": {None: ("compare", "train/evaluate backbones x heads under one recipe; table + Pareto plots")},
    "convert": {None: ("convert", "VOC XML / YOLO txt detection data -> COCO json")},
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
    _add_debug(parser)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for command, tasks in COMMANDS.items():
        tasks = {t: v for t, v in tasks.items() if _available(v[0])}
        if not tasks:
            continue
        if None in tasks:
            module, help_ = tasks[None]
            p = sub.add_parser(command, help=help_, description=help_)
            p.set_defaults(_module=module, task=None)
            _add_debug(p)
            importlib.import_module(f"mobiledense.tools.{module}").add_arguments(p)
            continue
        p = sub.add_parser(command, help=f"{command} ({'/'.join(tasks)})")
        tsub = p.add_subparsers(dest="task", metavar="TASK")
        for task, (module, help_) in tasks.items():
            tp = tsub.add_parser(task, help=help_, description=help_)
            tp.set_defaults(_module=module)
            _add_debug(tp)
            importlib.import_module(f"mobiledense.tools.{module}").add_arguments(tp)
        p.set_defaults(_parser=p)
    return parser


def _add_debug(parser: argparse.ArgumentParser) -> None:
    # SUPPRESS: a subcommand's default must not reset a --debug given before the subcommand.
    parser.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                        help="show the Python traceback of an error (also MOBILEDENSE_DEBUG=1)")


#: Exceptions that describe a problem with the user's input, options or data: reported without a
#: traceback. ImageReadError/CocoFormatError are ValueErrors, FileNotFoundError is an OSError, the
#: registries raise KeyError for unknown names, a diverging run FloatingPointError; exception
#: classes of this package (e.g. ``TrainingAborted``) always carry a message meant for the user.
USER_ERRORS: tuple[type[BaseException], ...] = (ValueError, KeyError, OSError, FloatingPointError)


def _is_user_error(e: BaseException) -> bool:
    if isinstance(e, KeyError):  # a sentence ("unknown detector 'x'; valid names: ...") vs a bare key (a bug)
        return bool(e.args) and " " in str(e.args[0])
    return isinstance(e, USER_ERRORS) or type(e).__module__.startswith("mobiledense.")


def _message(e: BaseException) -> str:
    text = str(e.args[0]) if isinstance(e, KeyError) and e.args else str(e)
    return text or type(e).__name__


def _rank_prefix() -> str:
    """``[rank r] `` inside a multi-process (torchrun) run, so each line says who failed."""
    rank, world = os.environ.get("RANK"), os.environ.get("WORLD_SIZE", "1")
    return f"[rank {rank}] " if rank is not None and world != "1" else ""


def _peer_failed(e: BaseException) -> bool:
    """A collective failed because another process of the distributed run died or hung."""
    text = str(e)
    return type(e).__name__ in ("DistBackendError", "DistNetworkError", "DistStoreError") or \
        "Connection closed by peer" in text or "Connection reset by peer" in text


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "_module", None):
        (getattr(args, "_parser", None) or parser).print_help()
        return 0 if args.command is None else 2
    debug = getattr(args, "debug", False) or os.environ.get("MOBILEDENSE_DEBUG", "") not in ("", "0")
    if debug:
        return int(importlib.import_module(f"mobiledense.tools.{args._module}").run(args) or 0)
    try:
        return int(importlib.import_module(f"mobiledense.tools.{args._module}").run(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # noqa: BLE001 - one line for the user; --debug for the traceback
        who = _rank_prefix()
        if _is_user_error(e):
            print(f"error: {who}{_message(e)}", file=sys.stderr)
            return 2
        if who and _peer_failed(e):
            print(f"error: {who}stopping: another process of the distributed run failed (its own error is in "
                  f"this log; {type(e).__name__}: {_message(e).splitlines()[0]})", file=sys.stderr)
            return 1
        print(f"error: {who}{type(e).__name__}: {_message(e)}\n"
              "(unexpected error; rerun with --debug or MOBILEDENSE_DEBUG=1 for the traceback and report it)",
              file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
