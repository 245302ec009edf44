"""``mobiledense bench``: speed against torchvision at the same work, same weights, one process.

Examples::

    mobiledense bench --json bench.json                  # everything, all cores
    mobiledense bench --only det seg --threads 1 --repeats 30
    mobiledense bench --smoke --json smoke.json          # tiny sizes, seconds (CI)

Sections (``--only``): ``det`` SSDLite320 end to end, ``seg`` LR-ASPP at 512x1024 and
1024x2048, ``backbones`` every registered backbone at 224, ``train`` one training step,
``data`` the SSD augmentation per worker on real COCO JPEGs, ``eval`` COCO evaluation of
a large synthetic set, ``export`` ONNX on onnxruntime. Every row first checks that ours
and the reference give the same outputs (the ``check`` column; the exit status is 1 if one
fails), then reports median [p90] times and speed-up = reference time / our time. See
:mod:`mobiledense.tools.benchmark` for how things are measured.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

SECTION_NAMES = ("det", "seg", "backbones", "train", "data", "eval", "export", "deploy", "video")
_DEFAULT_COCO = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "coco"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--only", nargs="+", choices=SECTION_NAMES, metavar="SECTION",
                        help=f"sections to run (default: all of {', '.join(SECTION_NAMES)})")
    parser.add_argument("--repeats", type=int, default=20,
                        help="timed calls per latency row (throughput/training rows: a quarter, at least 3)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed calls first (default 3)")
    parser.add_argument("--threads", type=int,
                        help="torch and onnxruntime intra-op threads (default: torch's, i.e. the cores)")
    parser.add_argument("--batch", type=int, default=8, help="throughput / training batch (default 8)")
    parser.add_argument("--seg-batch", type=int, default=2, help="segmentation throughput batch (default 2)")
    parser.add_argument("--devices", nargs="+", help="cpu and/or cuda (default: cpu, plus cuda when available)")
    parser.add_argument("--coco-dir", type=Path, default=_DEFAULT_COCO,
                        help="real COCO subset for the data section (images/val2017, annotations/)")
    parser.add_argument("--eval-images", type=int, default=5000, help="synthetic COCO images (default 5000)")
    parser.add_argument("--eval-dets", type=int, default=20, help="detections per synthetic image (default 20)")
    parser.add_argument("--seg-checkpoint", type=Path, metavar="CKPT",
                        help="deploy section: time the LR-ASPP rows with this trained checkpoint (an LR-ASPP "
                             "MobileNetV3-Large in torchvision's layout) on its run's frames, whose label maps are "
                             "a trained model's (default: calibrated random weights on random images)")
    parser.add_argument("--compile", action="store_true", help="torch.compile our network in the CUDA training step")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes and 2 repeats: checks that it runs (CI)")
    parser.add_argument("--json", type=Path, help="write every row (timings, checks, machine) to this file")
    parser.add_argument("--markdown", type=Path, help="write the table as Markdown (for the README)")


def run(args: argparse.Namespace) -> int:
    import torch

    from .benchmark import BenchConfig, machine_info, run_sections
    from .benchmark.report import format_markdown, format_table

    bad = [f"--{name.replace('_', '-')} must be >= {low}, got {getattr(args, name)}"
           for name, low in (("repeats", 1), ("warmup", 0), ("batch", 1), ("seg_batch", 1), ("eval_images", 1),
                             ("eval_dets", 1), ("threads", 1))
           if getattr(args, name) is not None and getattr(args, name) < low]
    if args.seg_checkpoint is not None and not Path(args.seg_checkpoint).is_file():
        bad.append(f"--seg-checkpoint {args.seg_checkpoint}: no such file")
    if bad:
        raise ValueError("; ".join(bad))
    if args.threads:
        torch.set_num_threads(args.threads)
    threads = torch.get_num_threads()
    devices = tuple(args.devices or (["cpu"] + (["cuda"] if torch.cuda.is_available() else [])))
    if any(d.startswith("cuda") for d in devices) and not torch.cuda.is_available():
        raise ValueError("--devices cuda: CUDA is not available on this machine")
    kw = dict(devices=devices, threads=threads, coco_dir=args.coco_dir, compile=args.compile,
              seg_checkpoint=args.seg_checkpoint)
    if args.smoke:
        cfg = BenchConfig.smoke_config(**kw)
    else:
        cfg = BenchConfig(repeats=args.repeats, warmup=args.warmup, batch=args.batch, seg_batch=args.seg_batch,
                          eval_images=args.eval_images, eval_dets_per_image=args.eval_dets, **kw)
    torch.backends.cudnn.benchmark = True
    doc: dict[str, Any] = {"machine": machine_info(threads), "config": {
        k: (str(v) if isinstance(v, Path) else v) for k, v in vars(cfg).items()}}
    doc["sections"] = run_sections(cfg, args.only or SECTION_NAMES)
    doc["machine"]["load_average_end"] = machine_info(threads)["load_average"]
    failed = [f"{s}: {r['name']} ({r['device']})" for s, sec in doc["sections"].items()
              for r in sec.get("rows", []) if not r["check"].get("passed")]
    doc["checks_passed"] = not failed
    print(format_table(doc["sections"]))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(doc, indent=1))
        print(f"wrote {args.json}")
    if args.markdown:
        args.markdown.parent.mkdir(parents=True, exist_ok=True)
        args.markdown.write_text(format_markdown(doc))
        print(f"wrote {args.markdown}")
    if failed:
        print("error: outputs differ from the reference in: " + "; ".join(failed))
        return 1
    return 0


__all__ = ["SECTION_NAMES", "add_arguments", "run"]
