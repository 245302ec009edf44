"""``mobiledense weights list|download``: the named pretrained weights (torchvision's and timm's).

Examples::

    mobiledense weights list                                   # every name, its target, source, figures
    mobiledense weights list --target mobilenet_v3_large
    mobiledense weights download torchvision:SSDLite320_MobileNet_V3_Large_Weights.COCO_V1 --to weights/

``download`` is for a machine with network: the file lands in ``--to`` through the library's
own hash-checked download, to be copied to an offline machine and passed as a path
(``--weights weights/FILE`` / ``--weights-backbone weights/FILE``). Names resolve at run time
too, into the libraries' caches (``$TORCH_HOME/hub/checkpoints``, the Hugging Face cache).
"""

from __future__ import annotations

import argparse
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("action", choices=("list", "download"))
    parser.add_argument("name", nargs="?", help="download: a registered name (see weights list)")
    parser.add_argument("--target", help="list: only the weights of this model or backbone")
    parser.add_argument("--to", type=Path, help="download: the folder to write the file to")


def _download(name: str, folder: Path) -> Path:
    import torch
    import torch.hub

    from mobiledense.backbones.pretrained import get_weights, weights_state_dict

    entry = get_weights(name)
    folder.mkdir(parents=True, exist_ok=True)
    if entry.source in ("torchvision", "url"):
        url = entry.url
        path = folder / url.rsplit("/", 1)[-1]
        prefix = torch.hub.HASH_REGEX.search(path.name)
        torch.hub.download_url_to_file(url, str(path), hash_prefix=prefix.group(1) if prefix else None)
        return path
    path = folder / f"{entry.reference}.pth"  # timm: saved in our layout, loads as a plain state_dict
    from mobiledense.datasets.io import replace_atomically

    state = weights_state_dict(entry)
    return replace_atomically(path, lambda f: torch.save(state, f), binary=True)


def run(args: argparse.Namespace) -> int:
    from mobiledense.backbones.pretrained import WEIGHTS, get_weights

    if args.action == "download":
        if not args.name or args.to is None:
            raise ValueError("weights download needs NAME and --to DIR")
        entry = get_weights(args.name)
        path = _download(args.name, args.to)
        opts = ", ".join(f"{k}={v!r}" for k, v in entry.options.items())
        print(f"wrote {path}" + (f" (build the {entry.target} with {opts} to load it exactly)" if opts else ""))
        return 0
    rows = [e for e in WEIGHTS.values() if args.target in (None, e.target)]
    if not rows:
        raise ValueError(f"no weights registered for {args.target!r}")
    print(f"{'name':<66} {'kind':<10} {'target':<30} default  options / published figures")
    for e in sorted(rows, key=lambda e: (e.target, e.name)):
        figures = "; ".join(f"{k}: " + ", ".join(f"{m} {v}" for m, v in d.items()) for k, d in e.metrics.items())
        opts = ", ".join(f"{k}={v!r}" for k, v in e.options.items())
        print(f"{e.name:<66} {e.kind:<10} {e.target:<30} {'yes' if e.default else '':<8} "
              f"{'; '.join(x for x in (opts, figures) if x)}")
    return 0


__all__ = ["add_arguments", "run"]
