"""The package's layers stay one-way: libraries at the bottom, workflows above them, the CLI, API and server on top.

A module may import its own package and any lower layer, never a higher one or a package beside it; and no
module imports itself back through others (no cycles). The README's "Layout of the code" lists the same layers.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import cxrkit

SRC = Path(cxrkit.__file__).parent
LAYERS = [
    ["data"],  # decoding, datasets, splits, cache, augmentation
    ["record", "metrics", "models"],  # the run folder's format (no torch), metric maths, networks
    ["tasks", "config"],  # binary / multi-class / multi-label behaviour; the validated training configuration
    ["run"],  # a loaded run: model + preprocessing + decision rule
    ["explain", "audit", "export"],
    ["report"],  # rendering: plots, HTML
    ["evaluation", "prediction"],  # workflows on a run folder
    ["training"],  # the train workflow (ends by evaluating validation)
    ["experiments"],  # compare and tune: many trainings
    ["api", "serve"],  # the Python API and the HTTP server
    ["cli"],  # the command line (it starts the server)
    ["__main__"],
]
LEVEL = {name: i for i, names in enumerate(LAYERS) for name in names}


def _graph() -> dict[str, set[str]]:
    mods = {}
    for p in SRC.rglob("*.py"):
        name = ".".join(("cxrkit", *p.relative_to(SRC).with_suffix("").parts)).removesuffix(".__init__")
        mods[name] = p
    edges: dict[str, set[str]] = defaultdict(set)
    for name, p in mods.items():
        for node in ast.walk(ast.parse(p.read_text())):
            targets = []
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("cxrkit"):
                targets = [f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in mods else node.module for a in node.names]
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names if a.name.startswith("cxrkit")]
            edges[name].update(t for t in targets if t in mods)
    return edges


def _top(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "cxrkit"


def test_every_package_has_a_layer():
    tops = {_top(m) for m in _graph()} - {"cxrkit"}
    assert tops <= set(LEVEL), f"add {sorted(tops - set(LEVEL))} to LAYERS (and the README)"


def test_imports_only_go_down():
    backwards = []
    for src, targets in _graph().items():
        a = _top(src)
        for t in targets:
            b = _top(t)
            if a == b or b == "cxrkit" or a == "cxrkit":  # own package; the root only gives __version__ and lazy API names
                continue
            if LEVEL[b] >= LEVEL[a]:
                backwards.append(f"{src} -> {t}")
    assert not backwards, "imports that run sideways or upwards:\n" + "\n".join(sorted(backwards))


def test_no_import_cycles():
    edges = _graph()
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    cycles: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in edges.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                cycles.append(sorted(comp))

    for v in list(edges):
        if v not in index:
            visit(v)
    cycles = [c for c in cycles if "cxrkit" not in c]  # the root package's lazy __getattr__ is not an import cycle
    assert not cycles, f"import cycles: {cycles}"


def test_record_reads_runs_without_torch():
    code = "import sys, cxrkit.record; assert 'torch' not in sys.modules, 'cxrkit.record imported torch'"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_help_loads_neither_torch_nor_sklearn():
    # `cxrkit --help` and `cxrkit train --help` are a new user's first commands: they took 3 s of CPU when the
    # parser imported torch and scikit-learn for a few option names.
    code = (
        "import sys; from cxrkit.cli import build_parser; build_parser().parse_args(['train', 'data']); "
        "heavy = sorted(m for m in ('torch', 'sklearn', 'monai') if m in sys.modules); assert not heavy, heavy"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
