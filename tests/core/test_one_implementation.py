"""One implementation per concept: a second BH, GC content or figure writer under src/saeflow, an
import of another module's private name, or a library default that drifts from the schema fails."""

import ast
import re
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
SRC = REPO / "src" / "saeflow"

#: concept -> (pattern of a defining function's name, the one module allowed to define it)
CONCEPTS = {
    "multiple-testing correction": (
        r"(bh|bh_.*|benjamini.*|.*hochberg.*|fdr|fdr_.*|.*_fdr|qvalues?|p_adjust|multipletests)",
        "stats.py",
    ),
    "GC content": (r"(gc_content|gc_fraction|token_gc|.*gc_frac.*|count_gc|gc)", "dna/sequence.py"),
    "saving a figure": (r"(_save|_?save_?fig(ure)?|_?write_?fig(ure)?)", "plots.py"),
    "AUROC": (r"_?(auroc|auc|roc_auc)(_rows)?", "stats.py"),
    "reading a decoder": (r"_?(decoder|decoder_rows|decoder_matrix|w_dec)", "decoder.py"),
}


def _modules(*roots):
    for root in roots:
        for path in sorted(root.rglob("*.py")):
            yield path, ast.parse(path.read_text(), filename=str(path))


def _functions(tree):
    return [n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]


def scan_definitions(src: Path = SRC) -> list[str]:
    """'<concept>: <file>:<line> def <name>' for each definition outside the concept's module."""
    bad = []
    for path, tree in _modules(src):
        rel = path.relative_to(src).as_posix()
        for fn in _functions(tree):
            for concept, (pattern, home) in CONCEPTS.items():
                if rel != home and re.fullmatch(pattern, fn.name, flags=re.IGNORECASE):
                    bad.append(f"{concept}: {rel}:{fn.lineno} def {fn.name}")
    return bad


def scan_savefig(src: Path = SRC) -> list[str]:
    """Calls of ``.savefig`` outside saeflow/plots.py (figures go through plots.save_figure)."""
    bad = []
    for path, tree in _modules(src):
        rel = path.relative_to(src).as_posix()
        for node in ast.walk(tree):
            if (
                rel != "plots.py"
                and isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr == "savefig"
            ):
                bad.append(f"{rel}:{node.lineno} savefig")
    return bad


def scan_private_imports(*roots: Path) -> list[str]:
    """``from saeflow.x import _y`` (or ``saeflow.x._y`` attribute use) across modules."""
    bad = []
    for path, tree in _modules(*roots):
        rel = path.relative_to(REPO).as_posix()
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("saeflow"):
                bad += [
                    f"{rel}:{node.lineno} from {node.module} import {a.name}"
                    for a in node.names
                    if a.name.startswith("_")
                ]
            if isinstance(node, ast.Import):
                bad += [
                    f"{rel}:{node.lineno} import {a.name}"
                    for a in node.names
                    if a.name.startswith("saeflow")
                    and any(p.startswith("_") and not p.startswith("__") for p in a.name.split("."))
                ]
            if (
                isinstance(node, ast.Attribute)
                and node.attr.startswith("_")
                and not node.attr.startswith("__")
                and isinstance(node.value, ast.Name)
                and node.value.id in {"plots", "cf", "en", "stats", "sequence", "decoder"}
            ):
                bad.append(f"{rel}:{node.lineno} {node.value.id}.{node.attr}")
    return bad


def test_one_definition_of_each_concept():
    assert scan_definitions() == []


def test_figures_are_written_by_plots_save_figure_only():
    assert scan_savefig() == []


def test_no_module_imports_another_modules_private_names():
    assert scan_private_imports(SRC, REPO / "scripts") == []


def test_the_guard_sees_a_planted_second_implementation(tmp_path):
    pkg = tmp_path / "saeflow"
    (pkg / "cells").mkdir(parents=True)
    (pkg / "cells" / "x.py").write_text(
        "from saeflow.dna.probes import _auroc\n\n"
        "def bh(p):\n    return p\n\n"
        "def gc_content(s):\n    return s.count('G')\n\n"
        "def _save(fig, path):\n    fig.savefig(path)\n"
    )
    found = scan_definitions(pkg)
    assert any(f.startswith("multiple-testing correction") for f in found)
    assert any(f.startswith("GC content") for f in found)
    assert any(f.startswith("saving a figure") for f in found)
    assert scan_savefig(pkg) == ["cells/x.py:10 savefig"]
    global REPO
    old, REPO = REPO, tmp_path
    try:
        assert scan_private_imports(pkg) == [
            "saeflow/cells/x.py:1 from saeflow.dna.probes import _auroc"
        ]
    finally:
        REPO = old


def test_library_recipe_defaults_equal_the_schema():
    from saeflow.sae.base import RECIPE_DEFAULTS

    schema = yaml.safe_load((REPO / "workflow" / "schemas" / "config.schema.yaml").read_text())
    props = schema["definitions"]["sae"]["properties"]
    assert {k: props[k]["default"] for k in RECIPE_DEFAULTS} == RECIPE_DEFAULTS


def test_sae_package_reads_no_recipe_default_as_a_literal():
    """``recipe.get("<schema key>", <literal>)`` in saeflow/sae duplicates the schema's default."""
    schema = yaml.safe_load((REPO / "workflow" / "schemas" / "config.schema.yaml").read_text())
    keys = {k for k, v in schema["definitions"]["sae"]["properties"].items() if "default" in v}
    bad = []
    for path, tree in _modules(SRC / "sae"):
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr == "get"
                and isinstance(node.func.value, ast.Name)
                and node.func.value.id == "recipe"
                and len(node.args) == 2
                and isinstance(node.args[0], ast.Constant)
                and node.args[0].value in keys
                and not isinstance(node.args[1], ast.Subscript)
            ):
                bad.append(f"{path.name}:{node.lineno} {node.args[0].value}")
    assert bad == []
