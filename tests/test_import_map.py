"""The import map of docs/ARCHITECTURE.md, checked on the source: no circle, no upward import.

Every ``import`` of a ``reclf`` module is read from the syntax tree of ``src/reclf`` (module level and inside
functions alike: a lazy import is still a dependency), except those under ``if TYPE_CHECKING:``, which
never run. A layer may import its own layer and the layers below it; the applications on top (the CLI and
the demo) may import anything.
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"

#: Bottom to top (docs/ARCHITECTURE.md). ``reclf`` itself (the package root: ``__version__``) is importable
#: from anywhere.
LAYERS = ["utils", "config", "data", "models", "align", "methods", "train", "viz", "evaluate", "tune", "demo"]
#: The command line over every layer.
TOP = {"reclf.cli", "reclf.cli_presets", "reclf.__main__"}
#: Known upward imports, each with the reason it is still there; the test fails when one disappears, so
#: that the entry is removed with it.
KNOWN_UPWARD: dict[tuple[str, str], str] = {}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _type_checking_block(node: ast.AST) -> bool:
    test = getattr(node, "test", None)
    return isinstance(node, ast.If) and (
        (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING")
        or (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")
    )


def _imports(tree: ast.AST, type_only: bool = False) -> list[str]:
    """The imported names; ``type_only``: also those under ``if TYPE_CHECKING:``."""
    found: list[str] = []

    def visit(node: ast.AST) -> None:
        if _type_checking_block(node) and not type_only:
            for child in node.orelse:  # type: ignore[attr-defined]
                visit(child)
            return
        if isinstance(node, ast.Import):
            found.extend(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append(node.module)
            found.extend(f"{node.module}.{a.name}" for a in node.names)  # `from reclf.x import module`
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return found


def import_graph(type_only: bool = False) -> dict[str, set[str]]:
    """``module -> the reclf modules it imports`` for every module under src/reclf (``type_only``: imports
    under ``if TYPE_CHECKING:`` included)."""
    files = {module_name(p): p for p in (SRC / "reclf").rglob("*.py")}
    graph: dict[str, set[str]] = defaultdict(set)
    for mod, path in files.items():
        for name in _imports(ast.parse(path.read_text(encoding="utf-8"), str(path)), type_only):
            if name.split(".")[0] != "reclf" or name not in files:
                continue  # third-party, or `from reclf.x import function` (its module is counted)
            if name != mod:
                graph[mod].add(name)
        graph.setdefault(mod, set())
    return dict(graph)


def layer_of(mod: str) -> int | None:
    """Index in LAYERS (``None``: the package root or an application on top)."""
    if mod in TOP or mod == "reclf":
        return None
    part = mod.split(".")[1]
    return LAYERS.index(part)


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def strong(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                strong(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            strong(v)
    return found


def upward(graph: dict[str, set[str]]) -> set[tuple[str, str]]:
    bad = set()
    for mod, targets in graph.items():
        mine = layer_of(mod)
        if mine is None:
            continue
        for t in targets:
            theirs = layer_of(t) if t not in TOP else len(LAYERS)
            if theirs is not None and theirs > mine:
                bad.add((mod, t))
    return bad


def test_every_module_has_a_layer():
    for mod in import_graph():
        if mod not in TOP and mod != "reclf":
            assert mod.split(".")[1] in LAYERS, f"{mod}: add its package to LAYERS and docs/ARCHITECTURE.md"


def test_no_import_circle():
    assert cycles(import_graph()) == []


def test_no_upward_import():
    found = upward(import_graph())
    assert found - set(KNOWN_UPWARD) == set(), "imports from a higher layer (docs/ARCHITECTURE.md)"
    assert set(KNOWN_UPWARD) - found == set(), "a known upward import is gone: delete its KNOWN_UPWARD entry"


def test_the_check_finds_a_circle_and_an_upward_import():
    """The checks themselves: a planted circle and a planted upward import are reported."""
    graph = {"reclf.data.a": {"reclf.data.b"}, "reclf.data.b": {"reclf.data.a", "reclf.evaluate.x"},
             "reclf.evaluate.x": set(), "reclf.cli": {"reclf.evaluate.x"}}
    assert cycles(graph) == [["reclf.data.a", "reclf.data.b"]]
    assert upward(graph) == {("reclf.data.b", "reclf.evaluate.x")}
    tree = ast.parse("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import reclf.train\n"
                     "def f():\n    from reclf.methods import model\n")
    assert _imports(tree) == ["typing", "typing.TYPE_CHECKING", "reclf.methods", "reclf.methods.model"]
    assert "reclf.train" in _imports(tree, type_only=True)


def test_no_import_circle_even_through_type_only_imports():
    """Imports under ``if TYPE_CHECKING:`` count too: a type-only import back into a module that imports us
    is still a circle in the design (``methods/saving.py`` is typed against a protocol, not ``VLModel``)."""
    assert cycles(import_graph(type_only=True)) == []


def test_evaluating_an_exported_model_never_imports_lightning(tmp_path):
    """Loading an exported model and evaluating it (a grounding run, an explanation, scores) needs torch alone:
    model loading lives in ``reclf.methods``, not ``reclf.train`` (which pulls in Lightning)."""
    import os
    import subprocess
    import sys

    from helpers.eval_stub import make_folder
    from reclf.methods import create_model

    create_model("reclf", image_encoder={"name": "cnn-small", "image_size": 64},
                 text_encoder={"name": "bert-tiny"}).save_pretrained(tmp_path / "model")
    make_folder(tmp_path / "data", n=4)
    script = (
        "import sys, torch\n"
        "from reclf.evaluate.loading import load_model\n"
        "from reclf.evaluate.tasks.grounding import GroundingConfig, run_grounding\n"
        f"loaded = load_model({str(tmp_path / 'model')!r})\n"
        f"res = run_grounding(loaded, {str(tmp_path / 'data')!r}, None, GroundingConfig(n_boot=5))\n"
        "assert 'pointing_game' in res.metrics and 'floor/pointing_game' in res.metrics\n"
        "m = loaded.model\n"
        "img, txt = m.encode_image(torch.rand(2, 1, 64, 64)), m.encode_text(['left effusion', 'no nodule'])\n"
        "assert m.similarity(img, txt).shape == (2, 2)\n"
        "found = sorted(k for k in sys.modules if k.split('.')[0] in ('lightning', 'pytorch_lightning'))\n"
        "print('LIGHTNING', found)\n"
    )
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(SRC), str(Path(__file__).parent),
                                                        os.environ.get("PYTHONPATH", "")]))
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "LIGHTNING []" in out.stdout, out.stdout[-2000:]
