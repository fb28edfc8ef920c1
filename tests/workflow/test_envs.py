"""The conda envs of envs/: every rule has one, and each provides what its rules' scripts import.

Fast part (static, from the rule files, the scripts' and src/saeflow's ASTs and the project
venv's metadata; see envcheck.py for how imports are followed through saeflow). Install part
(marker ``envs``, all envs built at once in ~3 min): builds each env's pip pins in a fresh venv and
imports there every module its scripts reach.

Conda itself is not used (CI has no conda channels): the env files keep conda to
``python=3.11`` and ``pip`` and put every library under ``pip:``, so a venv with the same
pins is the same set of packages.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import envcheck
import pytest
from envcheck import REPO, canonical, format_chain

ENV_FILES = envcheck.env_files()


@pytest.fixture(scope="module")
def rules():
    rules = envcheck.parse_rules()
    assert rules, "no rule found in workflow/Snakefile or workflow/rules/*.smk"
    return rules


@pytest.fixture(scope="module")
def graph():
    return envcheck.ImportGraph()


def _rel(p: Path) -> str:
    return str(Path(p).relative_to(REPO))


# --------------------------------------------------------------------------------------
# rules
# --------------------------------------------------------------------------------------


def test_rule_parser_sees_every_rule(rules):
    """Cross-check the line parser: as many blocks as `rule`/`checkpoint` lines in the files."""
    import re

    n = sum(
        len(re.findall(r"^(?:rule|checkpoint)\s+\w+\s*:", p.read_text(), re.M))
        for p in envcheck.rule_files()
    )
    assert len(rules) == n
    names = [r.name for r in rules]
    assert len(names) == len(set(names)), (
        f"duplicate rule names: {sorted(n for n in names if names.count(n) > 1)}"
    )


def test_every_rule_that_runs_code_has_a_conda_env(rules):
    problems = []
    for r in rules:
        if "run" in r.directives:
            problems.append(
                f"{r.where}: `run:` code runs in Snakemake's own process and ignores `conda:`; "
                "move it to a script"
            )
        if not r.runs_code:
            continue
        if "conda" not in r.directives:
            problems.append(f"{r.where}: runs code ({', '.join(r.runs_code)}) but has no `conda:`")
        elif r.directives["conda"] is None:
            problems.append(
                f"{r.where}: `conda:` is not a string literal; this test cannot check it"
            )
        else:
            env = r.path("conda")
            if env.parent != (REPO / "envs").resolve() or env.suffix != ".yaml":
                problems.append(
                    f"{r.where}: `conda: {r.directives['conda']}` is not an envs/*.yaml file"
                )
            elif not env.exists():
                problems.append(
                    f"{r.where}: `conda: {r.directives['conda']}` does not exist ({env})"
                )
        if "script" in r.directives:
            script = r.path("script")
            if script is None:
                problems.append(
                    f"{r.where}: `script:` is not a string literal; this test cannot check it"
                )
            elif not script.exists():
                problems.append(f"{r.where}: script {r.directives['script']} does not exist")
            elif script.suffix != ".py":
                problems.append(
                    f"{r.where}: script {_rel(script)} is not Python; "
                    "extend tests/workflow/test_envs.py"
                )
    assert not problems, "\n".join(problems)


def test_every_env_is_used_by_a_rule(rules):
    used = {r.path("conda") for r in rules if r.directives.get("conda")}
    unused = [_rel(p) for p in ENV_FILES if p.resolve() not in used]
    assert not unused, f"env files that no rule names in `conda:`: {unused}"


# --------------------------------------------------------------------------------------
# env files
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", ENV_FILES, ids=lambda p: p.name)
def test_env_pins_exact_versions(path):
    env = envcheck.load_env(path)
    problems = []
    if not env.channels or env.channels[0] != "conda-forge" or env.channels[-1] != "nodefaults":
        problems.append(f"channels {env.channels}: want conda-forge first and nodefaults last")
    extra = [d for d in env.conda if d.split("=")[0].strip() not in ("python", "pip")]
    if extra:
        problems.append(
            f"conda packages {extra}: put libraries under `pip:` with `==` pins (only python and "
            "pip "
            "come from conda)"
        )
    if "python=3.11" not in [d.replace(" ", "") for d in env.conda]:
        problems.append(f"conda dependencies {env.conda}: want `python=3.11`")
    if not env.pip:
        problems.append("no `pip:` section")
    for line in env.unpinned():
        problems.append(f"pip line {line!r} is not an exact `name==version` pin")
    for name, versions in env.pins().items():
        if len(versions) > 1:
            problems.append(f"{name} is pinned {len(versions)} times: {versions}")
    assert not problems, f"{_rel(path)}:\n  " + "\n  ".join(problems)


def test_constraints_file_holds_every_env_pin():
    """run.sh installs the project venv under envs/constraints.txt: the same pins as the envs."""
    assert envcheck.CONSTRAINTS.read_text() == envcheck.render_constraints(), (
        "envs/constraints.txt is stale: .venv/bin/python tests/envcheck.py --write"
    )
    assert "-c envs/constraints.txt" in (envcheck.REPO / "run.sh").read_text()


@pytest.mark.parametrize("path", ENV_FILES, ids=lambda p: p.name)
def test_env_pins_are_the_project_venv_versions(path):
    """CI tests the project venv; the env must hold the same versions."""
    import importlib.metadata as md

    problems = []
    for name, versions in envcheck.load_env(path).pins().items():
        try:
            have = md.version(name).split("+")[0]
        except md.PackageNotFoundError:
            problems.append(
                f"{name}=={versions[0]} is not installed in the project venv ({sys.prefix})"
            )
            continue
        if versions[0] != have:
            problems.append(f"{name}=={versions[0]} but the project venv has {have}")
    assert not problems, (
        f"{_rel(path)} (regenerate: .venv/bin/python tests/envcheck.py --write):\n  "
        + "\n  ".join(problems)
    )


def test_scripts_third_party_imports_are_pinned_in_their_rules_env(rules, graph):
    """Every third-party import a rule's script reaches (through saeflow too) is pinned in the
    rule's env."""
    problems = []
    for r in rules:
        env_path, script = r.path("conda"), r.path("script")
        if env_path is None or script is None or not env_path.exists() or not script.exists():
            continue  # reported by test_every_rule_that_runs_code_has_a_conda_env
        pins = envcheck.load_env(env_path).pins()
        for imp, chain in sorted(graph.third_party(script).items()):
            dist = envcheck.dist_for_import(imp)
            if dist is None:
                problems.append(
                    f"{_rel(script)} (rule {r.name}): import {imp!r} maps to no installed "
                    "distribution "
                    f"(add it to envcheck.IMPORT_TO_DIST)\n    via {format_chain(chain)}"
                )
            elif canonical(dist) not in pins:
                problems.append(
                    f"{_rel(script)} (rule {r.name}): imports {imp} (distribution {dist}), "
                    f"not pinned in {_rel(env_path)}\n    via {format_chain(chain)}"
                )
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("path", ENV_FILES, ids=lambda p: p.name)
def test_env_pins_exactly_the_requirement_closure(path, graph):
    """Pins = what the env's scripts import plus everything that needs (from the project venv's
    metadata).

    Missing: pip would pick an untested version. Extra: the env carries something its rules do not
    use."""
    needs = envcheck.needs_by_env(graph).get(path.resolve())
    if needs is None:
        pytest.skip("used by no rule (test_every_env_is_used_by_a_rule fails)")
    direct = needs.dists()
    want = envcheck.closure(direct)
    pins = envcheck.load_env(path).pins()
    missing = [
        f"{want[n]['name']}=={want[n]['version']} (for {', '.join(sorted(want[n]['by']))})"
        for n in sorted(set(want) - set(pins))
    ]
    extra = sorted(set(pins) - set(want) - envcheck.BOOTSTRAP)
    msg = (
        f"{_rel(path)} (rules {', '.join(r.name for r in needs.rules)}; regenerate: "
        f".venv/bin/python tests/envcheck.py --write)"
    )
    assert not missing, f"{msg}: requirements not pinned: {missing}"
    assert not extra, (
        f"{msg}: pins no script of its rules needs (directly or as a requirement): {extra}"
    )


def test_report_chains_name_the_saeflow_path(graph):
    """The chain in a failure message goes script -> saeflow names -> import (a smoke test of
    envcheck)."""
    chains = graph.third_party(REPO / "scripts" / "prepare_sequences.py")
    assert "pysam" in chains
    text = format_chain(chains["pysam"])
    assert (
        text.startswith("scripts/prepare_sequences.py -> ")
        and "saeflow.dna.genome" in text
        and text.endswith("pysam")
    )


# --------------------------------------------------------------------------------------
# install
# --------------------------------------------------------------------------------------


def _python311() -> str:
    if sys.version_info[:2] == (3, 11):
        return sys.executable
    exe = shutil.which("python3.11")
    if exe is None:
        pytest.fail("the envs pin python=3.11: need a python3.11 to build them")
    return exe


def _run(cmd, what: str, **kw) -> subprocess.CompletedProcess:
    p = subprocess.run(cmd, capture_output=True, text=True, **kw)
    if p.returncode != 0:
        tail = "\n".join((p.stdout + "\n" + p.stderr).strip().splitlines()[-40:])
        raise RuntimeError(
            f"{what} failed (exit {p.returncode}):\n$ {' '.join(map(str, cmd))}\n{tail}"
        )
    return p


def _build(path: Path, root: Path) -> tuple[Path, float]:
    """The env's pins in a fresh venv under ``root`` (as conda's pip step would); (python, seconds).

    The project venv's pip drives the new venv (pip --python): the same pip whatever ensurepip
    would bring, and no pip inside the env (conda's `pip` package plays that part). No bytecode
    compiling: the import check compiles only what it imports."""
    env = envcheck.load_env(path)
    venv = root / "venv"
    reqs = root / "requirements.txt"
    root.mkdir(parents=True)
    reqs.write_text("\n".join(env.pip) + "\n")
    t0 = time.monotonic()
    _run([_python311(), "-m", "venv", "--without-pip", str(venv)], "python -m venv")
    pip = [sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python")]
    _run(
        [*pip, "install", "--no-input", "--no-compile", "-U", "-r", str(reqs)],
        f"pip install of {_rel(path)}",
    )
    return venv / "bin" / "python", time.monotonic() - t0


@pytest.fixture(scope="module")
def built_envs(tmp_path_factory):
    """Every env built at once, four at a time: pip's work is mostly downloads and unpacking, so
    the builds overlap well (one after another they took ~9 min on 2 cores)."""
    from concurrent.futures import ThreadPoolExecutor

    root = tmp_path_factory.mktemp("envs")

    def build(path):
        try:
            return _build(path, root / path.stem)
        except Exception as e:  # reported by the env's own test
            return e

    with ThreadPoolExecutor(max_workers=4) as pool:
        return dict(zip(ENV_FILES, pool.map(build, ENV_FILES)))


@pytest.mark.envs
@pytest.mark.parametrize("path", ENV_FILES, ids=lambda p: p.name)
def test_env_installs_and_imports_what_its_scripts_need(
    path, graph, built_envs, tmp_path, record_property
):
    """Build the env's pins in a fresh venv (as conda's pip step would), then import everything its
    scripts reach.

    saeflow comes from <repo>/src on PYTHONPATH, as the workflow runs it.
    """
    env = envcheck.load_env(path)
    needs = envcheck.needs_by_env(graph).get(path.resolve())
    if needs is None:
        pytest.skip("used by no rule (test_every_env_is_used_by_a_rule fails)")
    built = built_envs[path]
    if isinstance(built, Exception):
        pytest.fail(str(built))
    py, seconds = built
    pip = [sys.executable, "-m", "pip", "--python", str(py)]
    record_property("install_seconds", round(seconds, 1))
    print(f"{_rel(path)}: built in {seconds:.0f} s")

    problems = []
    # Exactly the pins: anything else means a requirement was left unpinned.
    listed = json.loads(_run([*pip, "list", "--format=json"], "pip list").stdout)
    have = {canonical(d["name"]): d["version"].split("+")[0] for d in listed}
    pins = {n: v[0] for n, v in env.pins().items()}
    unpinned = sorted(
        f"{n}=={v}" for n, v in have.items() if n not in pins and n not in envcheck.BOOTSTRAP
    )
    wrong = sorted(
        f"{n}: pinned {pins[n]}, installed {have.get(n)}" for n in pins if have.get(n) != pins[n]
    )
    if unpinned:
        problems.append(f"pip installed requirements the env does not pin: {unpinned}")
    if wrong:
        problems.append(f"installed versions differ from the pins: {wrong}")
    check = subprocess.run([*pip, "check"], capture_output=True, text=True)
    if check.returncode != 0:
        problems.append("pip check:\n" + (check.stdout + check.stderr).strip())

    modules = sorted(needs.saeflow_modules) + sorted(needs.imports)
    code = (
        "import importlib, sys, traceback\n"
        f"mods = {modules!r}\n"
        "bad = 0\n"
        "for m in mods:\n"
        "    try:\n"
        "        importlib.import_module(m)\n"
        "    except BaseException:\n"
        "        bad += 1\n"
        "        print(f'--- import {m} failed:', file=sys.stderr)\n"
        "        traceback.print_exc(limit=-3)\n"
        "import saeflow\n"
        f"assert saeflow.__file__.startswith({str(REPO / 'src')!r}), saeflow.__file__\n"
        "sys.exit(1 if bad else 0)\n"
    )
    run_env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV"))}
    run_env.update(PYTHONPATH=str(REPO / "src"), PYTHONNOUSERSITE="1", MPLBACKEND="Agg")
    p = subprocess.run(
        [str(py), "-c", code], capture_output=True, text=True, cwd=tmp_path, env=run_env
    )
    if p.returncode != 0:
        problems.append(
            f"importing what the scripts need ({len(modules)} modules) failed:\n"
            + "\n".join(p.stderr.strip().splitlines()[-60:])
        )
    assert not problems, (
        f"{_rel(path)} (rules {', '.join(r.name for r in needs.rules)}):\n" + "\n".join(problems)
    )
