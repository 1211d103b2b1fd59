"""The floor plan, read from the code's own imports (module level and inside functions alike): the core imports no
wing, nothing imports the CLI, and no module is part of an import circle."""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# the pyproject package mapping: one namespace, aurora.*, from the top-level folders
PACKAGES = {"aurora": "aurora", "aurora.components": "components", "aurora.kernels": "kernels", "aurora.data": "data",
            "aurora.recipes": "recipes"}
CORE = {"aurora", "aurora.model", "aurora.types", "aurora.registry", "aurora.checkpoint", "aurora.io", "aurora.lora"}
WINGS = ("aurora.train", "aurora.infer", "aurora.evaluation", "aurora.tools", "aurora.serve")
BELOW_WINGS = ("aurora.components", "aurora.kernels", "aurora.data", "aurora.recipes")


def modules() -> dict[str, Path]:
    found = {}
    for pkg, folder in PACKAGES.items():
        for path in sorted((ROOT / folder).rglob("*.py")):
            rel = path.relative_to(ROOT / folder).with_suffix("")
            parts = [] if rel.parts == ("__init__",) else [p for p in rel.parts if p != "__init__"]
            found[".".join([pkg, *parts])] = path
    return found


def imports(name: str, path: Path, known: dict[str, Path]) -> set[str]:
    """The project modules ``name`` imports (``from a.b import c`` counts as a.b.c when that is a module)."""
    out = set()
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [(a.name, []) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(up + ([base] if base else []))
            targets = [(base, [a.name for a in node.names])]
        else:
            continue
        for base, names in targets:
            if not base.startswith("aurora"):
                continue
            subs = [f"{base}.{n}" for n in names if f"{base}.{n}" in known]
            out.update(subs or [base])
    out.discard(name)
    return {m for m in out if m in known}


def graph() -> dict[str, set[str]]:
    known = modules()
    return {name: imports(name, path, known) for name, path in known.items()}


def test_nothing_imports_the_cli():
    offenders = sorted(m for m, deps in graph().items() if "aurora.cli" in deps)
    assert not offenders, f"modules importing the CLI (a table of entry points nothing may depend on): {offenders}"


def test_core_and_parts_import_no_wing():
    g = graph()
    bad = {m: sorted(d for d in deps if d.startswith(WINGS)) for m, deps in g.items()
           if m in CORE or m.startswith(BELOW_WINGS)}
    bad = {m: d for m, d in bad.items() if d}
    assert not bad, f"the core and the parts must not import a wing: {bad}"


def test_no_import_circles():
    g = graph()
    cycles, state = [], {}

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        stack.append(node)
        for dep in sorted(g[node]):
            if state.get(dep) == 1:
                cycles.append(stack[stack.index(dep):] + [dep])
            elif dep not in state:
                visit(dep, stack)
        stack.pop()
        state[node] = 2

    for node in sorted(g):
        if node not in state:
            visit(node, [])
    assert not cycles, "import circles:\n" + "\n".join(" -> ".join(c) for c in cycles)


def test_the_graph_sees_imports():
    """The checks above are only as good as the graph: it must see module-level, in-function and relative imports."""
    g = graph()
    assert "aurora.registry" in g["aurora.model"]
    assert "aurora.checkpoint" in g["aurora.train.module"]
    assert "aurora.infer.runconfig" in g["aurora.tools.viz"]
    assert "aurora.components.merge.tome" in g["aurora.components.merge"]  # from . import ... in __init__


def test_registries_fill_themselves_on_first_use():
    code = ("from aurora.registry import MERGE, RNN, VISION\n"
            "m = RNN.build({'name': 'rwkv6', 'd_model': 64, 'n_layer': 1, 'vocab_size': 32})\n"
            "print(type(m).__name__, 'tome' in MERGE, 'siglip' in VISION.names())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["RWKV6", "True", "True"]
