"""``mobiledense backbones``: the registry as a table (params, MAdds, what each family supports, model names)."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--size", type=int, default=224, help="square input size for MAdds")
    parser.add_argument("--no-madds", action="store_true", help="skip the MAdds count (faster)")


def run(args: argparse.Namespace) -> int:
    import torch

    from mobiledense.backbones import BACKBONES, count_madds, count_params, create_classifier
    from mobiledense.heads import MODELS

    print(f"{'backbone':<24}{'params (M)':>12}{'MAdds (M)':>12}  strides:channels  paper")
    for name, entry in sorted(BACKBONES.items()):
        model = create_classifier(name)
        madds = "" if args.no_madds else f"{count_madds(model, torch.zeros(1, 3, args.size, args.size)) / 1e6:.1f}"
        chans = " ".join(f"{s}:{c}" for s, c in sorted(model.backbone.channels.items()))
        print(f"{name:<24}{count_params(model) / 1e6:>12.2f}{madds:>12}  {chans}  {entry.paper}")
        models = ", ".join(sorted(m for m, e in MODELS.items() if e.backbone == name))
        print(f"{'':<24}output strides {'/'.join(map(str, entry.output_strides))}; taps {', '.join(entry.taps)}; "
              f"options {', '.join(entry.options) or '-'}; models {models}")
    return 0
