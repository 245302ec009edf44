"""No unsafe deserialisation or code evaluation anywhere in the installed package source.

An AST scan (not a grep: ``model.eval()`` and docstrings must not trip it) of every module of
``mobiledense.{backbones,heads,datasets,tools}`` for:

* ``torch.load`` without ``weights_only=True`` (pickle runs arbitrary code);
* ``pickle``/``cPickle``/``dill``/``marshal`` ``load``/``loads``/``Unpickler``, ``shelve.open``;
* ``numpy.load(..., allow_pickle=True)``;
* ``yaml.load``/``full_load``/``unsafe_load`` (only ``yaml.safe_load`` is acceptable);
* the builtins ``eval``, ``exec``, ``compile`` and ``__import__``.
"""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

PACKAGES = ("mobiledense.backbones", "mobiledense.heads", "mobiledense.datasets", "mobiledense.tools")
UNPICKLERS = {"pickle", "cPickle", "_pickle", "dill", "marshal", "joblib"}
FORBIDDEN_BUILTINS = {"eval", "exec", "compile", "__import__"}


def _dotted(node: ast.AST) -> str:
    """``a.b.c`` for a Name/Attribute chain, "" otherwise."""
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        parts.append(node.id)
        return ".".join(reversed(parts))
    return ""


def _kw_is(call: ast.Call, name: str, value: object) -> bool:
    return any(k.arg == name and isinstance(k.value, ast.Constant) and k.value.value is value
               for k in call.keywords)


def unsafe_calls(source: str, filename: str = "<src>") -> list[str]:
    """``"file:line: what"`` for every unsafe construct in ``source``."""
    found = []
    tree = ast.parse(source, filename)
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            root = node.module.split(".")[0]
            names = {a.name for a in node.names}
            if (root == "torch" and node.module == "torch" and "load" in names) or \
                    (root in UNPICKLERS and names & {"load", "loads", "Unpickler", "*"}) or \
                    (root == "yaml" and names & {"load", "full_load", "unsafe_load", "*"}):
                found.append(f"{filename}:{node.lineno}: from {node.module} import {', '.join(sorted(names))}")
        if not isinstance(node, ast.Call):
            continue
        name = _dotted(node.func)
        head, _, last = name.rpartition(".")
        bad = None
        if name in FORBIDDEN_BUILTINS:
            bad = f"{name}()"
        elif name == "torch.load" and not _kw_is(node, "weights_only", True):
            bad = "torch.load without weights_only=True"
        elif head.split(".")[0] in UNPICKLERS and last in {"load", "loads", "Unpickler"}:
            bad = f"{name}()"
        elif name == "shelve.open":
            bad = "shelve.open()"
        elif head in {"np", "numpy"} and last == "load" and not _kw_is(node, "allow_pickle", False) and any(
                k.arg == "allow_pickle" for k in node.keywords):
            bad = f"{name}(allow_pickle=...)"
        elif head == "yaml" and last in {"load", "full_load", "unsafe_load", "load_all", "unsafe_load_all"}:
            bad = f"{name}() (use yaml.safe_load)"
        if bad:
            found.append(f"{filename}:{node.lineno}: {bad}")
    return found


def _package_files() -> list[Path]:
    files = []
    for pkg in PACKAGES:
        for folder in importlib.import_module(pkg).__path__:
            files += sorted(Path(folder).rglob("*.py"))
    return files


def test_package_source_has_no_unsafe_loading_or_eval() -> None:
    files = _package_files()
    assert len(files) > 20, files  # really scanning the installed tree
    problems = [p for f in files for p in unsafe_calls(f.read_text(encoding="utf-8"), str(f))]
    assert not problems, "unsafe constructs:\n" + "\n".join(problems)


@pytest.mark.parametrize("snippet", [
    "import torch\ntorch.load('x.pt')",
    "import torch\ntorch.load('x.pt', weights_only=False)",
    "import torch\ntorch.load('x.pt', map_location='cpu', weights_only=flag)",
    "from torch import load",
    "import pickle\npickle.loads(b'')",
    "import pickle\npickle.Unpickler(f).load()",
    "from pickle import load",
    "import yaml\nyaml.load(open('c.yaml'))",
    "import yaml\nyaml.full_load(s)",
    "import numpy as np\nnp.load('a.npy', allow_pickle=True)",
    "eval('1 + 1')",
    "exec('x = 1')",
    "import shelve\nshelve.open('db')",
])
def test_scanner_catches(snippet: str) -> None:
    assert unsafe_calls(snippet), snippet


@pytest.mark.parametrize("snippet", [
    "import torch\ntorch.load('x.pt', weights_only=True)",
    "model.eval()",
    "import yaml\nyaml.safe_load(s)",
    "import numpy as np\nnp.load('a.npy')",
    "import json\njson.loads(s)",
    '"""eval(x) and torch.load(f) in a docstring"""',
])
def test_scanner_allows(snippet: str) -> None:
    assert not unsafe_calls(snippet), snippet
