"""The package's shape, read from the source with ast (nothing is imported):

* no import cycle between saeflow's modules, counting imports inside functions (lazy ones);
* the layers: the core modules (top level: utils, plots, gpu, activations, ...) import no
  sub-package; ``sae`` and ``models`` import only the core (never each other); ``dna`` and ``cells``
  import core, ``sae`` and ``models`` (never each other); ``compare`` and ``atlas`` may import all
  of those, and nothing imports them but themselves;
* no module (of src/ or scripts/) imports another module's private ``_name``.

Violations that other work is removing are listed in :data:`KNOWN_VIOLATIONS`; any other edge fails
with every offending edge printed, and an entry that no longer occurs fails too (delete it).
"""

from __future__ import annotations

import ast
import sys
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SRC = ROOT / "src"
PKG = "saeflow"

#: sub-package -> the layers (sub-packages, "core") it may import, itself included.
ALLOWED = {
    "core": {"core"},
    "sae": {"core", "sae"},
    "models": {"core", "models"},
    "dna": {"core", "sae", "models", "dna"},
    "cells": {"core", "sae", "models", "cells"},
    "compare": {"core", "sae", "models", "dna", "cells", "compare"},
    "atlas": {"core", "sae", "models", "dna", "cells", "atlas"},
}

#: Known violations outside models/ and sae/, being fixed elsewhere (the DNA / single-cell split and
#: the move of the statistics helpers into saeflow.stats). Each is (rule, importer, imported) or
#: ("private", importer, module, name); delete an entry with its fix (a stale entry fails).
KNOWN_VIOLATIONS: set[tuple[str, ...]] = set()


# --- reading the source -----------------------------------------------------------------------
def module_files() -> dict[str, Path]:
    """Dotted module name -> file of every module under src/saeflow (a package: its __init__)."""
    out = {}
    for f in sorted((SRC / PKG).rglob("*.py")):
        parts = f.relative_to(SRC).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = f
    return out


MODULES = module_files()


def layer(module: str) -> str:
    """``core`` for saeflow and its top-level modules, else the sub-package's name."""
    parts = module.split(".")
    if len(parts) == 1 or f"{PKG}.{parts[1]}" not in MODULES:
        return "core"
    sub = parts[1]
    return sub if (SRC / PKG / sub / "__init__.py").is_file() else "core"


def _resolve_base(importer: str, is_package: bool, node: ast.ImportFrom) -> str | None:
    if not node.level:
        return node.module
    base = importer.split(".")
    if not is_package:
        base = base[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def imports(module: str, path: Path) -> list[tuple[str, str | None, int]]:
    """(imported saeflow module, imported name or None, line) of every import statement in the
    file, at any depth (module top, functions, conditionals)."""
    out = []
    tree = ast.parse(path.read_text(), str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                if a.name == PKG or a.name.startswith(PKG + "."):
                    out.append((_known(a.name), None, node.lineno))
        elif isinstance(node, ast.ImportFrom):
            base = _resolve_base(module, path.name == "__init__.py", node)
            if not base or not (base == PKG or base.startswith(PKG + ".")):
                continue
            for a in node.names:
                sub = f"{base}.{a.name}"
                if sub in MODULES:  # from saeflow.x import module
                    out.append((sub, None, node.lineno))
                else:
                    out.append((_known(base), a.name, node.lineno))
    return out


def _known(name: str) -> str:
    """The longest prefix of ``name`` that is one of saeflow's modules."""
    parts = name.split(".")
    while parts and ".".join(parts) not in MODULES:
        parts.pop()
    return ".".join(parts) or name


def import_graph() -> dict[str, dict[str, int]]:
    """importer -> {imported module: first line}, saeflow modules only, no self edges."""
    graph: dict[str, dict[str, int]] = defaultdict(dict)
    for mod, path in MODULES.items():
        for dst, _, line in imports(mod, path):
            if dst != mod:
                graph[mod].setdefault(dst, line)
    return graph


# --- the rules --------------------------------------------------------------------------------
def cycles(graph: dict[str, dict[str, int]]) -> list[list[str]]:
    """One cycle (as a path a -> ... -> a) per strongly connected component with more than one
    module (Tarjan), deterministic."""
    index, low, on, stack, comps, counter = {}, {}, set(), [], [], [0]

    def strong(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(graph.get(v, {})):
            if w not in index:
                strong(w)
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
                comps.append(set(comp))

    for v in sorted(MODULES):
        if v not in index:
            strong(v)
    out = []
    for comp in comps:
        start = min(comp)
        # shortest path start -> ... -> start inside the component (BFS)
        prev, queue, found = {}, [start], None
        while queue and found is None:
            nxt = []
            for v in queue:
                for w in sorted(graph.get(v, {})):
                    if w not in comp:
                        continue
                    if w == start:
                        found = v
                        break
                    if w not in prev:
                        prev[w] = v
                        nxt.append(w)
                if found is not None:
                    break
            queue = nxt
        path, v = [start], found
        while v != start:
            path.append(v)
            v = prev[v]
        out.append([start] + path[1:][::-1] + [start])
    return out


def layer_violations(graph) -> list[tuple[str, str, str, int]]:
    """(rule, importer, imported, line) for every import across the allowed layers."""
    out = []
    for src, dsts in sorted(graph.items()):
        for dst, line in sorted(dsts.items()):
            a, b = layer(src), layer(dst)
            if b not in ALLOWED[a]:
                out.append(("layer", src, dst, line))
    return out


def script_files() -> dict[str, Path]:
    return {f"scripts/{f.name}": f for f in sorted((ROOT / "scripts").glob("*.py"))}


def private_violations() -> list[tuple[str, str, str, str, int]]:
    """(rule, importer, module, name, line) for ``from saeflow.x import _name`` across modules."""
    out = []
    sources = {**MODULES, **script_files()}
    for mod, path in sorted(sources.items()):
        for dst, name, line in imports(mod, path):
            if name is None:
                leaf = dst.rsplit(".", 1)[-1]
                if leaf.startswith("_") and not leaf.startswith("__") and dst != mod:
                    out.append(("private", mod, dst, leaf, line))  # a private module
            elif name.startswith("_") and not name.startswith("__") and dst != mod:
                out.append(("private", mod, dst, name, line))
    return out


def _check(found: list[tuple]) -> list[str]:
    """Lines for the violations not allowlisted."""
    return [
        f"  {v[1]} -> {'.'.join(v[2:-1])}  (line {v[-1]})"
        for v in found
        if tuple(v[:-1]) not in KNOWN_VIOLATIONS
    ]


def _report(title: str, lines: list[str]) -> str:
    msg = f"{title}:\n" + "\n".join(lines)
    print(msg)
    return msg


# --- tests ------------------------------------------------------------------------------------
def test_the_source_is_read():
    """The reader sees what it must: lazy imports inside functions, from-imports of modules."""
    g = import_graph()
    assert {"saeflow.models.registry", "saeflow.models.hf", "saeflow.sae.evaluation"} <= set(
        MODULES
    )
    assert "saeflow.models.registry" in g["saeflow.models.hf"]  # top-level import
    assert "saeflow.sae" in g["saeflow.sae.evaluation"]  # inside evaluate_sae
    assert layer("saeflow.utils") == "core" and layer("saeflow") == "core"
    assert layer("saeflow.models.hf") == "models" and layer("saeflow.dna") == "dna"


def test_no_import_cycle():
    found = cycles(import_graph())
    assert not found, _report(
        "import cycles (lazy imports counted)", ["  " + " -> ".join(c) for c in found]
    )


def test_layers():
    lines = _check(layer_violations(import_graph()))
    assert not lines, _report(
        "imports across layers (core <- sae, models <- dna, cells <- compare, atlas)", lines
    )


def test_no_private_imports_across_modules():
    lines = _check(private_violations())
    assert not lines, _report("private names imported from another module", lines)


def test_known_violations_still_occur():
    """An allowlisted violation that is gone must leave the list (so it cannot come back)."""
    now = {tuple(v[:-1]) for v in layer_violations(import_graph()) + private_violations()}
    stale = sorted(KNOWN_VIOLATIONS - now)
    assert not stale, _report(
        "KNOWN_VIOLATIONS entries that no longer occur (delete them)", [f"  {s}" for s in stale]
    )


def test_the_rules_catch_planted_violations():
    """Each rule fails on an edge planted into a copy of the real graph."""
    g = {k: dict(v) for k, v in import_graph().items()}
    g.setdefault("saeflow.models.registry", {})["saeflow.models.scgpt"] = 1
    g.setdefault("saeflow.models.scgpt", {})["saeflow.models.registry"] = 1
    assert any(set(c) >= {"saeflow.models.registry", "saeflow.models.scgpt"} for c in cycles(g)), (
        cycles(g)
    )
    c = next(c for c in cycles(g) if "saeflow.models.scgpt" in c)
    assert c[0] == c[-1] and all(c[i + 1] in g[c[i]] for i in range(len(c) - 1))
    g["saeflow.sae.evaluation"]["saeflow.models"] = 7
    g["saeflow.utils"] = {"saeflow.sae.base": 3}
    g["saeflow.dna.catalog"] = {"saeflow.compare.runs": 5}
    got = {v[1:] for v in layer_violations(g)}
    assert {
        ("saeflow.sae.evaluation", "saeflow.models", 7),
        ("saeflow.utils", "saeflow.sae.base", 3),
        ("saeflow.dna.catalog", "saeflow.compare.runs", 5),
    } <= got


def test_private_rule_reads_from_imports(tmp_path, monkeypatch):
    f = tmp_path / "m.py"
    f.write_text(
        "def f():\n    from saeflow.models.hf import _hidden, read_config\n"
        "from saeflow.models import hf\nimport saeflow.utils\n"
    )
    got = imports("saeflow.x", f)
    assert ("saeflow.models.hf", "_hidden", 2) in got and ("saeflow.models.hf", None, 3) in got
    assert ("saeflow.utils", None, 4) in got
    monkeypatch.setattr(sys.modules[__name__], "script_files", lambda: {"scripts/planted.py": f})
    assert ("private", "scripts/planted.py", "saeflow.models.hf", "_hidden", 2) in (
        private_violations()
    )
