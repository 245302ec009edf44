"""The command line explains itself: help from the typed fields (meaning, choices, defaults, presets), the spec."""

from __future__ import annotations

import json
from pathlib import Path

from mobiledense.tools.cli import build_parser, main
from mobiledense.tools.engine import RunSpec


def _help(*argv: str) -> str:
    parser = build_parser()
    sub = parser
    for name in argv:  # walk down the subcommands: train -> det
        sub = next(a for a in sub._actions if a.__class__.__name__ == "_SubParsersAction").choices[name]
    return sub.format_help()


def test_recipe_flags_say_what_they_mean_their_choices_defaults_and_preset_values() -> None:
    text = " ".join(_help("train", "det").split())
    assert "--lr LR peak learning rate (after warm-up) (default 0.15; preset quick: 0.002, preset torchvision: 0.15)" \
        in text
    assert "--optimizer {sgd,adamw,rmsprop}" in text and "--precision {auto,fp32,fp16,bf16}" in text
    assert "--accumulate-batches ACCUMULATE_BATCHES loader batches whose gradients make one optimiser step" in text
    assert "--weights-backbone WEIGHTS_BACKBONE backbone weights the run starts from" in text \
        and "preset torchvision: imagenet" in text
    seg = " ".join(_help("train", "seg").split())
    assert "--sync-bn {auto,on,off}" in seg and "preset mmseg: 0.01" in seg


def test_print_config_shows_the_resolved_spec_and_writes_nothing(tmp_path: Path, capsys) -> None:
    out = tmp_path / "run"
    assert main(["train", "det", "--preset", "torchvision", "--lr", "0.3", "--print-config", "--output-dir",
                 str(out)]) == 0
    text = capsys.readouterr().out
    spec = RunSpec.from_dict(json.loads(text[: text.rindex("}") + 1]))
    assert spec.recipe.lr == 0.3 and spec.recipe.epochs == 660 and spec.recipe.weights_backbone == "imagenet"
    assert spec.model.name == "ssdlite320_mobilenet_v3_large" and spec.model.head.size == (320, 320)
    assert "read from the training set when the run starts" in text and not out.exists()
