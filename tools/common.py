"""Plumbing shared by the CLI commands: devices, image lists, flags generated from the typed specs."""

from __future__ import annotations

import argparse
import logging
import sys
import types
import typing
from pathlib import Path
from typing import Any, Iterable, Iterator, Literal

import numpy as np
import torch
from pydantic import BaseModel

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"}

log = logging.getLogger("mobiledense")


def select_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ValueError(f"--device {name}: not a device; use auto, cpu, cuda or cuda:N") from None
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"--device {name}: mobiledense runs on cpu or cuda")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {name}: CUDA is not available on this machine; use --device cpu")
    return device


def list_images(inputs: list[str]) -> list[Path]:
    """Files and folders (searched recursively) -> sorted image paths; clear errors."""
    found: list[Path] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            imgs = sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
            if not imgs:
                raise FileNotFoundError(f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) under {path}")
            found += imgs
        elif path.is_file():
            found.append(path)
        else:
            raise FileNotFoundError(f"input not found: {path}")
    return found


def read_images(files: list[Path], desc: str) -> Iterator[tuple[Path, np.ndarray | None, str | None]]:
    """``(path, RGB image, None)`` per file with a progress bar; ``(path, None, error)`` for a file that
    cannot be read (missing, empty, truncated, corrupt), warned about: one bad file must not end a long run."""
    from tqdm import tqdm

    from mobiledense.datasets import read_image_rgb

    for path in tqdm(files, desc=desc, unit="img"):
        try:
            yield path, read_image_rgb(path), None
        except (OSError, ValueError) as e:
            tqdm.write(f"warning: skipping {path}: {e}", file=sys.stderr)
            yield path, None, str(e)


def add_inference_arguments(parser: argparse.ArgumentParser) -> None:
    """``--device``, ``--eager`` and the deployed-artifact flags of the tools that run a trained model."""
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:1 ... (default: cuda if available; "
                                                         "cpu with --artifact)")
    parser.add_argument("--eager", action="store_true",
                        help="run the model as trained: no BatchNorm folding or fused oneDNN kernels on CPU "
                             "(optimize_for_inference; same outputs up to float rounding)")
    dep = parser.add_argument_group("deployed artifact (from mobiledense export)")
    dep.add_argument("--engine", choices=("pytorch", "onnxruntime", "openvino", "executorch"),
                     help="what runs the model: pytorch (the checkpoint, default) or the runtime of --artifact "
                          "(default with --artifact: by its suffix, .onnx onnxruntime, .xml openvino, .pte "
                          "executorch)")
    dep.add_argument("--artifact", metavar="FILE", help="an exported .onnx / .xml / .pte: it runs instead of the "
                                                        "checkpoint, scored and drawn by the same code; the run spec "
                                                        "it carries gives the data (no --checkpoint needed)")
    dep.add_argument("--threads", type=int, help="inference threads of --artifact's runtime (default: torch's)")


def load_deployed(args: argparse.Namespace, task: str, load_pytorch: Any) -> tuple[Any, Any]:
    """(model, run spec) for ``eval`` / ``predict``: ``load_pytorch()`` or ``--artifact`` on ``--engine``.

    An artifact's run spec is the one stored in it at export (``export --checkpoint``), else
    ``--checkpoint``'s (only its spec is read), else None. ``--device auto`` becomes cpu.
    """
    engine = getattr(args, "engine", None)
    artifact = getattr(args, "artifact", None)
    if artifact is None:
        if engine not in (None, "pytorch"):
            raise ValueError(f"--engine {engine} runs an exported model: give --artifact FILE "
                             "(from mobiledense export)")
        return load_pytorch()
    if engine == "pytorch":
        raise ValueError("--engine pytorch runs --checkpoint; --artifact needs --engine onnxruntime, openvino or "
                         "executorch (or none: chosen by its suffix)")
    if args.threads is not None and args.threads < 1:
        raise ValueError(f"--threads must be >= 1, got {args.threads}")
    if args.device == "auto":
        args.device = "cpu"
    elif torch.device(args.device).type != "cpu":
        raise ValueError(f"--artifact runs on the CPU (onnxruntime, OpenVINO, ExecuTorch); --device {args.device} "
                         "is for --engine pytorch")
    from .deploy.engines import load_engine

    model = load_engine(artifact, engine, args.threads or torch.get_num_threads())
    if model.task != task:
        raise ValueError(f"--artifact {artifact} is a {model.task!r} model, not {task!r}")
    stored = model.run_spec_json()
    spec = None
    if stored is not None:
        from .engine.spec import RunSpec

        spec = RunSpec.from_dict(stored, artifact)
    elif getattr(args, "checkpoint", None):
        from .engine.checkpoint import load_checkpoint
        from .engine.spec import RunSpec

        ckpt = load_checkpoint(args.checkpoint)
        if "spec" not in ckpt:
            raise ValueError(f"{args.checkpoint} has no run spec: it is not a mobiledense training checkpoint")
        spec = RunSpec.from_dict(ckpt["spec"], args.checkpoint)
    if spec is not None and spec.task != task:
        raise ValueError(f"--artifact {artifact}: its run is a {spec.task!r} run, not {task!r}")
    log.info("running %s on %s (%s)", artifact, model.engine, model.precision)
    return model, spec


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _cli_type(annotation: Any) -> tuple[Any, tuple[str, ...] | None]:
    """(argparse type, choices) of a spec field annotation; bool fields are handled by the caller."""
    base = annotation
    if typing.get_origin(base) in (typing.Union, types.UnionType):  # X | None
        base = next(a for a in typing.get_args(base) if a is not type(None))
    if typing.get_origin(base) is Literal:
        return str, tuple(str(c) for c in typing.get_args(base))
    if base in (int, float, str):
        return base, None
    raise TypeError(f"no command-line type for {annotation}")


def _default_help(name: str, default: Any, presets: dict[str, dict[str, Any]] | None) -> str:
    """``default: X`` and the value each preset that sets the field gives it."""
    text = f"default {'none' if default is None else default}"
    set_by = {p: v[name] for p, v in (presets or {}).items() if name in v}
    if set_by:
        text += "; " + ", ".join(f"preset {p}: {v}" for p, v in sorted(set_by.items()))
    return text


def add_spec_arguments(parser: argparse.ArgumentParser | Any, spec: type[BaseModel], *,
                       skip: Iterable[str] = (), title: str | None = None,
                       presets: dict[str, dict[str, Any]] | None = None) -> None:
    """One ``--flag`` per scalar field of ``spec`` (default None: the preset decides).

    The help comes from the typed field: its description, choices, default, and the value of
    every preset (``presets``: name -> the field values it sets) that sets it.
    """
    group = parser.add_argument_group(title) if title else parser
    for name, field in spec.model_fields.items():
        if name in skip:
            continue
        help_ = f"{field.description or name.replace('_', ' ')} ({_default_help(name, field.default, presets)})"
        help_ = help_.replace("%", "%%")
        if field.annotation is bool:
            group.add_argument(_flag(name), dest=name, action=argparse.BooleanOptionalAction, default=None,
                               help=help_)
            continue
        pair = field.annotation
        if typing.get_origin(pair) in (typing.Union, types.UnionType):
            pair = next(a for a in typing.get_args(pair) if a is not type(None))
        if typing.get_origin(pair) is tuple:  # (h, w) pairs: two values
            group.add_argument(_flag(name), dest=name, type=typing.get_args(pair)[0], nargs=2, default=None,
                               metavar=("H", "W"), help=help_)
            continue
        typ, choices = _cli_type(field.annotation)
        group.add_argument(_flag(name), dest=name, type=typ, choices=choices, default=None, help=help_)


def given(args: argparse.Namespace, spec: type[BaseModel], skip: Iterable[str] = ()) -> dict[str, Any]:
    """The fields of ``spec`` set on the command line (not None)."""
    skip = set(skip)
    return {k: v for k, v in vars(args).items() if k in spec.model_fields and k not in skip and v is not None}


def say_override(flag: str, value: Any, stored: Any) -> None:
    """Log that a command-line flag replaces what the checkpoint's run spec says."""
    if value is not None and stored is not None and value != stored:
        log.warning("%s %s overrides the run spec's %r", flag, value, stored)


def output_folder(given: str | None, checkpoint: str | None, name: str, fallback: str) -> Path:
    """``--output-dir``, else ``<run>/<name>`` for ``<run>/checkpoints/x.pt``, else ``fallback``; refused
    if it is a file (checked first, before any work; created when results are written)."""
    if given:
        out = Path(given)
    elif checkpoint and Path(checkpoint).parent.name == "checkpoints":
        out = Path(checkpoint).parent.parent / name
    else:
        out = Path(fallback)
    if out.exists() and not out.is_dir():
        raise ValueError(f"--output-dir {out} is a file, not a folder")
    return out


def run_training(args: argparse.Namespace, spec: Any) -> int:
    """``train det|seg``: train ``spec`` into ``--output-dir``, then say where the checkpoint is and how to evaluate it.

    With ``--print-config`` only print the resolved spec (nothing is written or trained).
    """
    if getattr(args, "print_config", False):
        print(spec.model_dump_json(indent=2))
        print("# num_classes, class_names and category_ids are read from the training set when the run starts; "
              "data paths become absolute")
        return 0
    from .engine import is_main_process
    from .engine.tasks import train

    metrics, trainer = train(spec, args.output_dir, resume=args.resume, allow_changes=args.allow_change,
                             progress=not args.no_progress)
    if is_main_process():
        log.info("done: %s", ", ".join(f"{k}={v:.4g}" for k, v in metrics.items()))
        best = trainer.ckpts.best_path if trainer.ckpts.best_path.exists() else trainer.ckpts.latest()
        log.info("checkpoint: %s  (evaluate: mobiledense eval %s --checkpoint %s)", best, spec.task, best)
    return 0
