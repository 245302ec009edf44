"""Plumbing shared by the CLI tools: devices, image lists, models from checkpoints."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn

from .engine import TrainConfig, load_checkpoint

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"}


def select_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
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


def build_model(run_info: dict[str, Any]) -> nn.Module:
    """Rebuild the network a checkpoint was trained with (from its ``run_info``)."""
    task, name = run_info.get("task"), run_info.get("model")
    kwargs = dict(run_info.get("model_kwargs", {}))
    if task == "det":
        from mobiledense.heads import create_detector

        return create_detector(name, num_classes=int(run_info["num_classes"]), **kwargs)
    if task == "seg":
        n = int(run_info["num_classes"])
        if run_info.get("head", "lraspp") == "lraspp":
            from mobiledense.heads.lraspp import create_segmenter

            return create_segmenter(run_info["backbone"], num_classes=n, **kwargs)
        from mobiledense.heads.smp_encoders import create_smp_model

        return create_smp_model(run_info["head"], run_info["backbone"], n, **kwargs)
    raise ValueError(f"checkpoint run_info has unknown task {task!r} (expected 'det' or 'seg')")


def load_trained_model(path: str | Path, task: str | None, prefer_ema: bool = True
                       ) -> tuple[nn.Module, dict[str, Any]]:
    """Model + run_info from a training checkpoint (``last.pt``/``checkpoint_*.pt``/``model_final.pt``).

    ``task`` ("det"/"seg") refuses a checkpoint of the other task; None takes either.
    """
    ckpt = load_checkpoint(path)
    info = ckpt.get("run_info")
    if not isinstance(info, dict) or "model" not in info:
        raise ValueError(f"{path} has no run_info: it is not a mobiledense training checkpoint "
                         "(for raw state_dicts use --model NAME --weights FILE)")
    if task is not None and info.get("task") != task:
        raise ValueError(f"{path} is a {info.get('task')!r} checkpoint, not {task!r}")
    model = build_model(info)
    key = "model_ema" if prefer_ema and "model_ema" in ckpt else "model"
    try:
        model.load_state_dict(ckpt[key])
    except RuntimeError as e:
        raise ValueError(f"{path}: its weights do not fit {info['model']} with "
                         f"num_classes={info.get('num_classes')} (the checkpoint's run_info): "
                         f"{summarize_load_error(e)}") from e
    return model.eval(), info


def summarize_load_error(e: BaseException, max_items: int = 3) -> str:
    """The gist of a ``load_state_dict`` RuntimeError: a few missing/unexpected/size-mismatch items.

    torch lists every offending key; for a checkpoint of another architecture that is hundreds of
    lines, of which the first few tell what is wrong.
    """
    parts = []
    for line in str(e).splitlines()[1:] or str(e).splitlines():
        line = line.strip()
        if line.startswith(("Missing key(s)", "Unexpected key(s)")):
            head, _, keys = line.partition(": ")
            names = [k.strip(' ".') for k in keys.split(",") if k.strip(' ".')]
            more = f" and {len(names) - max_items} more" if len(names) > max_items else ""
            parts.append(f"{head.lower()} {', '.join(names[:max_items])}{more}")
        elif line.startswith("size mismatch") and sum("size mismatch" in p for p in parts) < max_items:
            parts.append(line.rstrip("."))
    return "; ".join(parts) or str(e).strip().splitlines()[0]


def add_inference_arguments(parser: argparse.ArgumentParser) -> None:
    """``--device`` and ``--eager`` of the tools that run a trained model (eval, predict)."""
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    parser.add_argument("--eager", action="store_true",
                        help="run the model as trained: no BatchNorm folding or fused oneDNN kernels on CPU "
                             "(optimize_for_inference; same outputs up to float rounding)")


def inference_model(model: nn.Module, device: torch.device, eager: bool = False) -> nn.Module:
    """``model`` in eval mode on ``device``; on CPU its :func:`optimize_for_inference` copy unless ``eager``.

    On CUDA the model runs as built: the fused kernels are CPU ones (oneDNN).
    """
    model = model.eval().to(device)
    if eager or device.type != "cpu":
        return model
    from mobiledense.heads.inference import optimize_for_inference

    return optimize_for_inference(model)


def cli_overrides(cfg: TrainConfig, values: dict[str, Any]) -> TrainConfig:
    """Return ``cfg`` with the non-None entries of ``values`` (CLI flags) applied."""
    names = {f.name for f in dataclasses.fields(cfg)}
    return dataclasses.replace(cfg, **{k: v for k, v in values.items() if k in names and v is not None})


def add_train_config_arguments(parser: Any, skip: Sequence[str] = ()) -> None:
    """One ``--flag`` per TrainConfig field (default None: the preset decides)."""
    for f in dataclasses.fields(TrainConfig):
        if f.name in skip:
            continue
        flag = "--" + f.name.replace("_", "-")
        if f.type in ("bool", bool):
            parser.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction, default=None,
                                help=f"(preset default: see --preset) {f.name}")
        else:
            typ = {"int": int, "float": float, "str": str, "float | None": float}.get(str(f.type), str)
            if typ is str and f.type != "str":
                raise TypeError(f"no CLI type for TrainConfig.{f.name}: {f.type}")
            parser.add_argument(flag, dest=f.name, type=typ, default=None, help=f.name.replace("_", " "))
