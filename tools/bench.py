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

SECTION_NAMES = ("det", "seg", "backbones", "train", "data", "eval", "export")
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
    parser.add_argument("--compile", action="store_true", help="torch.compile our network in the CUDA training step")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes and 2 repeats: checks that it runs (CI)")
    parser.add_argument("--json", type=Path, help="write every row (timings, checks, machine) to this file")
    parser.add_argument("--markdown", type=Path, help="write the table as Markdown (for the README)")


def _fmt_ms(t: dict[str, Any] | None) -> str:
    return "-" if t is None else f"{1e3 * t['median']:.1f} [{1e3 * t['p90']:.1f}]"


def _speedup(row: dict[str, Any]) -> str:
    return "-" if row["speedup"] is None else f"x{row['speedup']:.2f}"


def _check(row: dict[str, Any]) -> str:
    return "ok" if row["check"].get("passed") else "FAILED"


def _eager(row: dict[str, Any]) -> str:
    eager = row["info"].get("ours_eager")
    return "-" if eager is None else f"x{eager['median'] / row['ours']['median']:.2f}"


def _size(row: dict[str, Any]) -> tuple[str, str]:
    info = row["info"]
    params = f"{info['params'] / 1e6:.2f}" if "params" in info else "-"
    return params, (f"{info['madds'] / 1e9:.2f}" if "madds" in info else "-")


_HEADER = ("section", "name", "device", "N", "params M", "MAdds G", "ours ms [p90]", "reference ms [p90]",
           "speed-up", "ours img/s", "ref img/s", "vs our eager", "check")


def table_rows(sections: dict[str, dict[str, Any]]) -> list[tuple[str, ...]]:
    out = []
    for name, sec in sections.items():
        for r in sec.get("rows", []):
            ref = r["reference"]
            out.append((name, r["name"], r["device"], str(r["batch"]), *_size(r), _fmt_ms(r["ours"]),
                        _fmt_ms(ref), _speedup(r), f"{r['ours']['images_per_s']:.1f}",
                        "-" if ref is None else f"{ref['images_per_s']:.1f}", _eager(r), _check(r)))
        if "skipped" in sec:
            out.append((name, f"skipped: {sec['skipped']}") + ("",) * (len(_HEADER) - 2))
    return out


def format_table(sections: dict[str, dict[str, Any]]) -> str:
    rows = [_HEADER] + table_rows(sections)
    widths = [max(len(r[i]) for r in rows) for i in range(len(_HEADER))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    lines.insert(1, "-" * len(lines[0]))
    return "\n".join(lines)


def format_markdown(doc: dict[str, Any]) -> str:
    m = doc["machine"]
    load = " -> ".join(f"{v[0]:.1f}" for v in (m.get("load_average"), m.get("load_average_end")) if v)
    head = (f"Machine: {m['cpu']}, {m['logical_cores']} logical cores, {m['threads']} thread(s), "
            f"1-min load average {load or 'n/a'} (start -> end); torch {m['torch']}, "
            f"torchvision {m['torchvision']}, onnxruntime {m['onnxruntime']}"
            + (f", CUDA: {m['cuda']}" if m.get("cuda") else "") + ".\n\n")
    rows = [_HEADER] + table_rows(doc["sections"])
    md = ["| " + " | ".join(rows[0]) + " |", "|" + "---|" * len(rows[0])]
    md += ["| " + " | ".join(c.replace("|", "/") for c in r) + " |" for r in rows[1:]]
    return head + "\n".join(md) + "\n"


def run(args: argparse.Namespace) -> int:
    import torch

    from .benchmark import BenchConfig, machine_info, run_sections

    bad = [f"--{name.replace('_', '-')} must be >= {low}, got {getattr(args, name)}"
           for name, low in (("repeats", 1), ("warmup", 0), ("batch", 1), ("seg_batch", 1), ("eval_images", 1),
                             ("eval_dets", 1), ("threads", 1))
           if getattr(args, name) is not None and getattr(args, name) < low]
    if bad:
        raise ValueError("; ".join(bad))
    if args.threads:
        torch.set_num_threads(args.threads)
    threads = torch.get_num_threads()
    devices = tuple(args.devices or (["cpu"] + (["cuda"] if torch.cuda.is_available() else [])))
    if any(d.startswith("cuda") for d in devices) and not torch.cuda.is_available():
        raise ValueError("--devices cuda: CUDA is not available on this machine")
    kw = dict(devices=devices, threads=threads, coco_dir=args.coco_dir, compile=args.compile)
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


__all__ = ["SECTION_NAMES", "add_arguments", "format_markdown", "format_table", "run"]
