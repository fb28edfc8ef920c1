"""The README's map of the house (DAG stage -> rule file -> rules -> library modules) matches the
tree.

The map is generated from the tree by :func:`house_map`; on a mismatch the test prints the block
to paste between the README's ``<!-- map:begin -->`` / ``<!-- map:end -->`` markers.
"""

from __future__ import annotations

import ast
import re

from wfutil import REPO

#: rule file -> the DAG stage it holds, in the order the data flows
STAGES = {
    "plan.smk": "resource plan (before the first job)",
    "references.smk": "toy genome, reference index",
    "downloads.smk": "downloads (login node)",
    "prepare.smk": "sequences and cells in",
    "models.smk": "toy models",
    "cells.smk": "builtin cells; single-cell atlas",
    "activations.smk": "activations",
    "sae.smk": "SAE training",
    "evaluate.smk": "SAE quality",
    "catalog.smk": "DNA catalog, ground truth",
    "evidence.smk": "DNA mechanistic evidence",
    "compare.smk": "comparisons across runs",
    "atlas.smk": "the feature atlas",
}
BEGIN, END = "<!-- map:begin -->", "<!-- map:end -->"


def _rules(path) -> list[tuple[str, str | None]]:
    """(rule, script file or None) of a rule file, in order."""
    out, rule = [], None
    for line in path.read_text().splitlines():
        m = re.match(r"(?:rule|checkpoint) (\w+):", line)
        if m:
            rule = m.group(1)
            out.append([rule, None])
        m = re.search(r'"\.\./\.\./scripts/([\w.]+\.py)"', line)
        if m and out:
            out[-1][1] = m.group(1)
    return [tuple(r) for r in out]


def _modules(script: str) -> set[str]:
    tree = ast.parse((REPO / "scripts" / script).read_text())
    mods = set()
    for n in ast.walk(tree):
        if isinstance(n, ast.ImportFrom) and n.module and n.module.startswith("saeflow"):
            for a in n.names:  # `from saeflow.x import y`: y may be a module itself
                sub = f"{n.module}.{a.name}"
                path = REPO / "src" / (sub.replace(".", "/") + ".py")
                mods.add(sub if path.exists() else n.module)
        elif isinstance(n, ast.Import):
            mods |= {a.name for a in n.names if a.name.startswith("saeflow")}
    return {m.removeprefix("saeflow.") for m in mods} - {"utils"}


def house_map() -> str:
    rows = [
        "| stage | rule file | rules (`scripts/<script>.py`) | library (`saeflow.`) |",
        "|---|---|---|---|",
    ]
    for smk, stage in STAGES.items():
        rules = _rules(REPO / "workflow" / "rules" / smk)
        names = ", ".join(
            r if s in (None, f"{r}.py") else f"{r} ({s.removesuffix('.py')})" for r, s in rules
        )
        mods = set().union(*(_modules(s) for _, s in rules if s)) if rules else set()
        rows.append(f"| {stage} | `{smk}` | {names} | {', '.join(sorted(mods))} |")
    return "\n".join(rows)


def test_every_rule_file_has_a_stage():
    files = {p.name for p in (REPO / "workflow" / "rules").glob("*.smk")} - {"common.smk"}
    assert files == set(STAGES) | (files - set(STAGES)) and files - set(STAGES) <= {
        "provenance.smk"
    }, f"rule files without a stage in STAGES: {sorted(files - set(STAGES))}"


def test_readme_map_matches_the_tree():
    readme = (REPO / "README.md").read_text()
    assert BEGIN in readme and END in readme, f"README.md has no {BEGIN} ... {END} block"
    got = readme.split(BEGIN, 1)[1].split(END, 1)[0].strip()
    want = house_map()
    assert got == want, f"README.md's map is stale; paste this between the markers:\n{want}"


def test_map_modules_exist():
    for smk in STAGES:
        for _, script in _rules(REPO / "workflow" / "rules" / smk):
            if script:
                for mod in _modules(script):
                    path = REPO / "src" / "saeflow" / mod.replace(".", "/")
                    assert path.with_suffix(".py").exists() or (path / "__init__.py").exists(), (
                        f"scripts/{script} imports saeflow.{mod}, which does not exist"
                    )
