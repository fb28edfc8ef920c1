"""Which rule runs in which conda env, and which third-party packages its script needs.

Used by ``tests/workflow/test_envs.py``; also a small maintenance tool::

    .venv/bin/python tests/envcheck.py            # per env: rules, needed packages, pin drift
    .venv/bin/python tests/envcheck.py --write    # rewrite envs/*.yaml from the project venv

Three parts:

* :func:`parse_rules` reads the ``rule``/``checkpoint`` blocks of ``workflow/Snakefile`` and
  ``workflow/rules/*.smk`` (snakefmt-formatted, so each directive starts a line at the
  block's indentation) and returns each rule's ``conda:`` and ``script:`` paths.

* :class:`ImportGraph` finds the third-party imports a script reaches, with the chain that
  leads to each. It follows the script's imports into ``src/saeflow`` at the level of
  *names*, not whole modules: ``from saeflow.utils import setup_logging`` costs the
  module-level code of ``saeflow/utils.py`` (and of its parent packages) plus the body of
  ``setup_logging`` and of whatever that body references, but not the function-level
  ``import torch`` of ``utils.torch_device``, which that script never calls. Class symbols
  count whole (every method), a module object used as a value counts whole, and an import
  inside ``try: ... except ImportError`` is optional (not required). Calls that load a
  package without importing it by name are listed in :data:`IMPLICIT` (pandas' parquet
  I/O needs pyarrow). ``ImportGraph(mode="modules")`` is the coarser alternative (every
  import anywhere in every saeflow module reached), kept to show what it would cost.

* :func:`closure` expands distribution names into their requirement closure (markers and
  extras evaluated for this interpreter) from the installed metadata: the env files pin
  that whole closure, so a user's env holds exactly the versions CI tests.
"""

from __future__ import annotations

import ast
import importlib.metadata as md
import re
import sys
import textwrap
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SRC = REPO / "src"
ENVS = REPO / "envs"
PKG = "saeflow"

#: Directives whose rule runs code (a rule with none of them, like ``all``, needs no env).
CODE_DIRECTIVES = ("script", "shell", "run", "notebook", "wrapper", "cwl")

#: Import names that ``importlib.metadata.packages_distributions()`` of the running
#: interpreter may not map (package not installed here, or installed under another name).
IMPORT_TO_DIST = {
    "yaml": "PyYAML",
    "pyBigWig": "pyBigWig",
    "pysam": "pysam",
    "pyjaspar": "pyjaspar",
    "sklearn": "scikit-learn",
    "PIL": "pillow",
    "Bio": "biopython",
    "sae_lens": "sae-lens",
}

#: Attribute names whose call needs a package that the code never imports by name.
IMPLICIT = {
    "read_parquet": "pyarrow",
    "to_parquet": "pyarrow",
}

#: Functions that import modules by name at run time (importlib), with the modules they may load:
#: reaching the function reaches those modules whole. ``lookup`` (behind ``load_model``,
#: ``detect_family`` and ``load_vocab``) imports a family's module from
#: ``saeflow.models.registry.FAMILY_MODULES``.
DYNAMIC = {
    ("saeflow.models.registry", "lookup"): [
        "saeflow.models.hf",
        "saeflow.models.dnabert",
        "saeflow.models.nucleotide_transformer",
        "saeflow.models.geneformer",
        "saeflow.models.dnabert2",
        "saeflow.models.scgpt",
    ],
}

#: Installed by conda (``python``, ``pip``) or by venv: never a pin, never "superfluous".
BOOTSTRAP = {"pip", "setuptools", "wheel"}


def canonical(name: str) -> str:
    """PEP 503 normalised distribution name."""
    return re.sub(r"[-_.]+", "-", name).lower()


# --------------------------------------------------------------------------------------
# rules
# --------------------------------------------------------------------------------------


@dataclass
class Rule:
    name: str
    file: Path
    line: int
    directives: dict[str, str | None] = field(default_factory=dict)  # name -> literal or None

    @property
    def runs_code(self) -> list[str]:
        return [d for d in CODE_DIRECTIVES if d in self.directives]

    def path(self, directive: str) -> Path | None:
        """A path directive (``conda``, ``script``) resolved as Snakemake does: relative to the
        file."""
        value = self.directives.get(directive)
        if value is None:
            return None
        return (self.file.parent / value).resolve()

    @property
    def where(self) -> str:
        return f"rule {self.name} ({self.file.relative_to(REPO)}:{self.line})"


_BLOCK = re.compile(r"^(rule|checkpoint)\s+(\w+)\s*:")
_DIRECTIVE = re.compile(r"^(\s+)(\w+)\s*:\s*(.*?)\s*$")
_STRING = re.compile(r"""^(?:r|f)?("([^"]*)"|'([^']*)')\s*,?\s*$""")


def rule_files(repo: Path = REPO) -> list[Path]:
    return [repo / "workflow" / "Snakefile", *sorted((repo / "workflow" / "rules").glob("*.smk"))]


def parse_rules(repo: Path = REPO) -> list[Rule]:
    """Every ``rule``/``checkpoint`` block with its directives (value: a string literal or None)."""
    rules = []
    for path in rule_files(repo):
        lines = path.read_text().splitlines()
        i = 0
        while i < len(lines):
            m = _BLOCK.match(lines[i])
            if not m:
                i += 1
                continue
            rule = Rule(m.group(2), path, i + 1)
            rules.append(rule)
            i += 1
            indent = None
            while i < len(lines) and (not lines[i].strip() or lines[i][0].isspace()):
                d = _DIRECTIVE.match(lines[i])
                if d and (indent is None or len(d.group(1)) == indent):
                    indent = len(d.group(1))
                    key, rest = d.group(2), d.group(3)
                    # The value is on this line, or (snakefmt) the first line after it.
                    if not rest:
                        j = i + 1
                        while j < len(lines) and not lines[j].strip():
                            j += 1
                        rest = lines[j].strip() if j < len(lines) else ""
                    s = _STRING.match(rest)
                    rule.directives[key] = (
                        (s.group(2) if s.group(2) is not None else s.group(3)) if s else None
                    )
                i += 1
    return rules


# --------------------------------------------------------------------------------------
# imports
# --------------------------------------------------------------------------------------


@dataclass
class _Module:
    name: str
    path: Path
    is_pkg: bool
    tree: ast.Module
    parents: dict[ast.AST, ast.AST]
    guarded: set[ast.AST]  # imports inside try/except ImportError
    defs: dict[str, list[ast.AST]]  # top-level name -> defining regions
    top_bindings: dict[str, tuple]  # module-level import bindings

    @property
    def package(self) -> str:
        return self.name if self.is_pkg else self.name.rpartition(".")[0]


def _parents(tree: ast.AST) -> dict[ast.AST, ast.AST]:
    return {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}


def _guarded(tree: ast.AST) -> set[ast.AST]:
    """Imports that may fail or never run: in ``try: ... except ImportError`` or ``if
    TYPE_CHECKING:``."""
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for stmt in node.body:
                out |= {n for n in ast.walk(stmt) if isinstance(n, (ast.Import, ast.ImportFrom))}
        if isinstance(node, ast.Try):
            names = set()
            for h in node.handlers:
                types = h.type.elts if isinstance(h.type, ast.Tuple) else [h.type]
                names |= {t.id for t in types if isinstance(t, ast.Name)}
            if names & {"ImportError", "ModuleNotFoundError"}:
                for stmt in node.body:
                    out |= {
                        n for n in ast.walk(stmt) if isinstance(n, (ast.Import, ast.ImportFrom))
                    }
    return out


def _top_statements(body):
    """Top-level statements, looking into module-level if/try/with blocks."""
    for stmt in body:
        yield stmt
        if isinstance(stmt, (ast.If, ast.Try, ast.With)):
            for sub in ("body", "orelse", "finalbody"):
                yield from _top_statements(getattr(stmt, sub, []))
            for h in getattr(stmt, "handlers", []):
                yield from _top_statements(h.body)


def _init_nodes(node: ast.AST):
    """Nodes that run when the module (or class body) is executed: function bodies excluded."""
    yield node
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
        yield from (n for d in getattr(node, "decorator_list", []) for n in _init_nodes(d))
        args = node.args
        for d in [*args.defaults, *[k for k in args.kw_defaults if k is not None]]:
            yield from _init_nodes(d)
        return
    for child in ast.iter_child_nodes(node):
        yield from _init_nodes(child)


def stdlib(name: str) -> bool:
    return name.split(".")[0] in sys.stdlib_module_names


class ImportGraph:
    """Reachability from a script to third-party imports, through ``src/saeflow``.

    Nodes: ``("mod", m)`` running module m's top level, ``("sym", m, name)`` using a
    top-level name of m, ``("all", m)`` using m as an object, ``("ext", name)`` a
    third-party top-level import name, ``("script", path)`` the root.
    """

    def __init__(self, src: Path = SRC, mode: str = "symbols"):
        assert mode in ("symbols", "modules")
        self.mode = mode
        self.modules: dict[str, _Module] = {}
        for path in sorted((src / PKG).rglob("*.py")):
            rel = path.relative_to(src).with_suffix("")
            parts = list(rel.parts)
            is_pkg = parts[-1] == "__init__"
            if is_pkg:
                parts = parts[:-1]
            self.modules[".".join(parts)] = self._load(".".join(parts), path, is_pkg)
        self._edges: dict[tuple, list[tuple]] = {}

    # -- loading -----------------------------------------------------------------------

    def _load(self, name: str, path: Path, is_pkg: bool) -> _Module:
        tree = ast.parse(path.read_text(), filename=str(path))
        mod = _Module(name, path, is_pkg, tree, _parents(tree), _guarded(tree), {}, {})
        for stmt in _top_statements(tree.body):
            if isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                mod.defs.setdefault(stmt.name, []).append(stmt)
            elif isinstance(stmt, (ast.Assign, ast.AnnAssign, ast.AugAssign)):
                targets = stmt.targets if isinstance(stmt, ast.Assign) else [stmt.target]
                for t in targets:
                    for n in ast.walk(t):
                        if isinstance(n, ast.Name) and stmt.value is not None:
                            mod.defs.setdefault(n.id, []).append(stmt.value)
            elif isinstance(stmt, (ast.Import, ast.ImportFrom)):
                mod.top_bindings.update(self._bindings(stmt, mod))
        return mod

    def _resolve_from(self, node: ast.ImportFrom, mod: _Module | None) -> str:
        if not node.level:
            return node.module or ""
        base = mod.package.split(".") if mod else [PKG]
        base = base[: len(base) - (node.level - 1)]
        return ".".join(base + ([node.module] if node.module else []))

    def _bindings(self, node: ast.AST, mod: _Module | None) -> dict[str, tuple]:
        """Names an import statement binds: ("module", m) | ("symbol", m, name) | ("ext",)."""
        out = {}
        if isinstance(node, ast.Import):
            for a in node.names:
                top = a.name.split(".")[0]
                if top == PKG:
                    out[a.asname or top] = ("module", a.name if a.asname else top)
                else:
                    out[a.asname or top] = ("ext",)
        elif isinstance(node, ast.ImportFrom):
            full = self._resolve_from(node, mod)
            for a in node.names:
                if a.name == "*":
                    continue
                if full.split(".")[0] == PKG:
                    sub = f"{full}.{a.name}"
                    out[a.asname or a.name] = (
                        ("module", sub) if sub in self.modules else ("symbol", full, a.name)
                    )
                else:
                    out[a.asname or a.name] = ("ext",)
        return out

    # -- edges -------------------------------------------------------------------------

    def _import_targets(self, node, mod: _Module | None, guarded: set) -> list[tuple]:
        """Nodes an import statement itself reaches: module inits (with parents), or an ext."""
        out = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        else:
            full = self._resolve_from(node, mod)
            names = [full]
            if full.split(".")[0] == PKG:
                names += [
                    f"{full}.{a.name}" for a in node.names if f"{full}.{a.name}" in self.modules
                ]
        for name in names:
            parts = name.split(".")
            if parts[0] == PKG:
                out += [
                    ("mod", ".".join(parts[: i + 1]))
                    for i in range(len(parts))
                    if ".".join(parts[: i + 1]) in self.modules
                ]
            elif (
                not stdlib(name)
                and node not in guarded
                and not (isinstance(node, ast.ImportFrom) and node.level)
            ):
                out.append(("ext", parts[0]))
        return out

    def _region_edges(
        self, nodes, mod: _Module | None, parents, guarded, local_defs
    ) -> list[tuple]:
        """Edges out of a code region (an iterable of AST nodes)."""
        nodes = list(nodes)
        bindings = dict(mod.top_bindings) if mod else {}
        for n in nodes:
            if isinstance(n, (ast.Import, ast.ImportFrom)):
                bindings.update(self._bindings(n, mod))
        out = []
        for n in nodes:
            if isinstance(n, (ast.Import, ast.ImportFrom)):
                out += self._import_targets(n, mod, guarded)
            elif isinstance(n, ast.Attribute) and n.attr in IMPLICIT:
                out.append(("implicit", n.attr))
            elif isinstance(n, ast.Name):
                b = bindings.get(n.id)
                if b is None:
                    if mod is not None and n.id in local_defs:
                        out.append(("sym", mod.name, n.id))
                elif b[0] == "symbol":
                    out.append(("sym", b[1], b[2]))
                elif b[0] == "module":
                    out.append(self._module_use(b[1], n, parents))
        return out

    def _module_use(self, m: str, name_node: ast.AST, parents) -> tuple:
        """``m.a.b`` as far as it names submodules, then a
        symbol; a bare module object: all of it."""
        node = name_node
        while isinstance(parents.get(node), ast.Attribute):
            attr = parents[node].attr
            if f"{m}.{attr}" in self.modules:
                m, node = f"{m}.{attr}", parents[node]
            else:
                return ("sym", m, attr)
        return ("all", m)

    def edges(self, node: tuple) -> list[tuple]:
        if node in self._edges:
            return self._edges[node]
        kind = node[0]
        out: list[tuple] = []
        if kind == "script":
            path = node[1]
            tree = ast.parse(path.read_text(), filename=str(path))
            # A script runs whole: every function it defines is taken as called.
            out = self._region_edges(ast.walk(tree), None, _parents(tree), _guarded(tree), {})
        elif kind == "mod":
            m = self.modules[node[1]]
            parent = node[1].rpartition(".")[0]
            if parent in self.modules:
                out.append(("mod", parent))
            if self.mode == "modules":
                out.append(("all", node[1]))
                out += self._region_edges(ast.walk(m.tree), m, m.parents, set(), {})
            else:
                out += self._region_edges(
                    (n for s in m.tree.body for n in _init_nodes(s)),
                    m,
                    m.parents,
                    m.guarded,
                    m.defs,
                )
        elif kind == "all":
            m = self.modules[node[1]]
            out = [("mod", node[1])] + [("sym", node[1], d) for d in m.defs]
        elif kind == "sym":
            mname, name = node[1], node[2]
            m = self.modules.get(mname)
            if m is None:  # e.g. a symbol of a module that does not exist: nothing to follow
                out = []
            else:
                out.append(("mod", mname))
                out += [("all", d) for d in DYNAMIC.get((mname, name), []) if d in self.modules]
                if name in m.defs:
                    for region in m.defs[name]:
                        out += self._region_edges(ast.walk(region), m, m.parents, m.guarded, m.defs)
                elif name in m.top_bindings:
                    b = m.top_bindings[name]
                    if b[0] == "symbol":
                        out.append(("sym", b[1], b[2]))
                    elif b[0] == "module":
                        out.append(("all", b[1]))
                elif f"{mname}.{name}" in self.modules:
                    out.append(("mod", f"{mname}.{name}"))
                else:  # defined dynamically: take the whole module
                    out.append(("all", mname))
        elif kind == "implicit":
            out = [("ext", IMPLICIT[node[1]])]
        # de-duplicate, keep order
        self._edges[node] = list(dict.fromkeys(e for e in out if e != node))
        return self._edges[node]

    def reach(self, script: Path) -> dict[tuple, list[tuple]]:
        """Every node reachable from the script, each with the shortest chain that reaches it."""
        root = ("script", Path(script).resolve())
        chains = {root: [root]}
        queue = deque([root])
        while queue:
            node = queue.popleft()
            if node[0] == "ext":
                continue
            for nxt in self.edges(node):
                if nxt not in chains:
                    chains[nxt] = chains[node] + [nxt]
                    queue.append(nxt)
        return chains

    def third_party(self, script: Path) -> dict[str, list[tuple]]:
        """Third-party import name -> chain from the script."""
        return {n[1]: chain for n, chain in self.reach(script).items() if n[0] == "ext"}

    def saeflow_modules(self, script: Path) -> list[str]:
        return sorted({n[1] for n in self.reach(script) if n[0] == "mod"})


def format_chain(chain: list[tuple]) -> str:
    parts = []
    for node in chain:
        kind = node[0]
        if kind == "script":
            parts.append(str(Path(node[1]).relative_to(REPO)))
        elif kind == "mod":
            parts.append(f"import {node[1]}")
        elif kind == "sym":
            parts.append(f"{node[1]}.{node[2]}")
        elif kind == "all":
            parts.append(f"{node[1]}.* (module used as an object)")
        elif kind == "implicit":
            parts.append(f".{node[1]}() (needs {IMPLICIT[node[1]]})")
        elif kind == "ext":
            parts.append(node[1])
    return " -> ".join(parts)


# --------------------------------------------------------------------------------------
# distributions
# --------------------------------------------------------------------------------------


def dist_for_import(name: str, _cache: dict = {}) -> str | None:
    """Distribution that provides a top-level import name (None if unknown)."""
    if not _cache:
        _cache.update(md.packages_distributions())
    if name in IMPORT_TO_DIST:
        return IMPORT_TO_DIST[name]
    dists = _cache.get(name)
    return dists[0] if dists else None


def closure(names, path: list[str] | None = None) -> dict[str, dict]:
    """Requirement closure of distributions, read from installed metadata (``path``: site dirs).

    Returns canonical name -> {"name", "version" (public, no local label), "by" (set)}.
    Raises KeyError naming a requirement that is not installed.
    """
    from packaging.markers import default_environment
    from packaging.requirements import Requirement

    dists = md.distributions(path=path) if path is not None else md.distributions()
    found = {}
    for d in dists:  # first on the path wins, as for imports
        if d.metadata["Name"]:
            found.setdefault(canonical(d.metadata["Name"]), d)
    env = default_environment()
    out: dict[str, dict] = {}
    queue = deque((canonical(n), frozenset(), "the scripts") for n in names)
    seen = set()
    while queue:
        name, extras, by = queue.popleft()
        if name not in found:
            raise KeyError(f"{name} (required by {by}) is not installed")
        dist = found[name]
        entry = out.setdefault(
            name,
            {"name": dist.metadata["Name"], "version": dist.version.split("+")[0], "by": set()},
        )
        entry["by"].add(by)
        if (name, extras) in seen:
            continue
        seen.add((name, extras))
        for req in dist.requires or []:
            r = Requirement(req)
            if r.marker is not None and not any(
                r.marker.evaluate({**env, "extra": e}) for e in (extras or {""})
            ):
                continue
            queue.append((canonical(r.name), frozenset(r.extras), entry["name"]))
    return out


# --------------------------------------------------------------------------------------
# env files
# --------------------------------------------------------------------------------------

_PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)(\[[^\]]*\])?\s*==\s*([^\s;,=<>!~]+)\s*$")


@dataclass
class Env:
    path: Path
    channels: list[str]
    conda: list[str]
    pip: list[str]  # raw pip lines

    @property
    def name(self) -> str:
        return self.path.stem

    def pins(self) -> dict[str, list[str]]:
        """canonical name -> versions pinned with ``==`` (a list, to catch duplicates)."""
        out: dict[str, list[str]] = {}
        for line in self.pip:
            m = _PIN.match(line.strip())
            if m:
                out.setdefault(canonical(m.group(1)), []).append(m.group(3))
        return out

    def unpinned(self) -> list[str]:
        return [line for line in self.pip if not _PIN.match(line.strip())]


def load_env(path: Path) -> Env:
    import yaml

    data = yaml.safe_load(Path(path).read_text()) or {}
    conda, pip = [], []
    for dep in data.get("dependencies") or []:
        if isinstance(dep, dict):
            pip += [str(x) for x in dep.get("pip") or []]
        else:
            conda.append(str(dep))
    return Env(Path(path), list(data.get("channels") or []), conda, pip)


def env_files(repo: Path = REPO) -> list[Path]:
    return sorted((repo / "envs").glob("*.yaml"))


@dataclass
class EnvNeeds:
    env: Path
    rules: list[Rule]
    imports: dict[str, tuple[str, list[tuple]]]  # import name -> (script, chain)
    saeflow_modules: set[str]

    def dists(self) -> dict[str, str]:
        """canonical dist name -> import name that needs it (unknown imports map to themselves)."""
        out = {}
        for imp in sorted(self.imports):
            d = dist_for_import(imp)
            out.setdefault(canonical(d or imp), imp)
        return out


def needs_by_env(graph: ImportGraph | None = None, repo: Path = REPO) -> dict[Path, EnvNeeds]:
    """For each env file that a rule names: its rules and every import their scripts reach."""
    graph = graph or ImportGraph()
    out: dict[Path, EnvNeeds] = {}
    for rule in parse_rules(repo):
        env = rule.path("conda")
        if env is None:
            continue
        needs = out.setdefault(env, EnvNeeds(env, [], {}, set()))
        needs.rules.append(rule)
        script = rule.path("script")
        if script is None or not script.exists() or script.suffix != ".py":
            continue
        for imp, chain in graph.third_party(script).items():
            needs.imports.setdefault(imp, (str(script.relative_to(repo)), chain))
        needs.saeflow_modules.update(graph.saeflow_modules(script))
    return out


# --------------------------------------------------------------------------------------
# maintenance CLI
# --------------------------------------------------------------------------------------


def render_env(path: Path, needs: EnvNeeds) -> str:
    """The env file for ``needs``: header kept, pins = closure of the needed dists in this venv."""
    old = path.read_text().splitlines() if path.exists() else []
    header = [
        lyr
        for lyr in old[
            : next((i for i, lyr in enumerate(old) if not lyr.startswith("#")), len(old))
        ]
        if not lyr.startswith(("# Rules:", "#   ", "# Pins:", "# with `"))
    ]
    direct = needs.dists()
    pins = closure(direct)
    names = sorted(pins, key=lambda n: (n not in direct, n))
    rules = ", ".join(sorted({r.name for r in needs.rules})) + "."
    rules_lines = textwrap.wrap(rules, 92, initial_indent="# Rules: ", subsequent_indent="#   ")
    lines = (
        header
        + rules_lines
        + [
            "# Pins: the versions of the project venv, with their whole requirement closure "
            "(regenerate",
            "# with `.venv/bin/python tests/envcheck.py --write`; "
            "tests/workflow/test_envs.py checks them).",
            "channels: [conda-forge, nodefaults]",
            "dependencies:",
            "  - python=3.11",
            "  - pip",
            "  - pip:",
        ]
    )
    for n in names:
        e = pins[n]
        note = (
            f"  # import {direct[n]}"
            if n in direct
            else "  # for " + ", ".join(sorted(e["by"] - {"the scripts"}))
        )
        lines.append(f"      - {e['name']}=={e['version']}{note}")
    return "\n".join(lines) + "\n"


CONSTRAINTS = REPO / "envs" / "constraints.txt"


def render_constraints() -> str:
    """Every env pin in one pip constraints file: run.sh installs the project venv under it, so
    the venv CI tests holds exactly the versions the conda envs pin."""
    pins = {}
    for path in env_files():
        for name, versions in load_env(path).pins().items():
            pins[name] = versions[0]
    return (
        "# Generated by `.venv/bin/python tests/envcheck.py --write` from envs/*.yaml: the pins "
        "of every\n"
        "# rule env in one file; `bash run.sh` installs the project venv under it (pip -c).\n"
        + "".join(f"{n}=={v}\n" for n, v in sorted(pins.items()))
    )


def main(argv: list[str]) -> int:
    needs = needs_by_env()
    for path in env_files():
        if path.resolve() not in needs:
            print(f"{path.relative_to(REPO)}: used by no rule")
    for env_path, n in sorted(needs.items()):
        print(f"{env_path.relative_to(REPO)}: rules {', '.join(r.name for r in n.rules)}")
        for imp, (script, chain) in sorted(n.imports.items()):
            print(f"    {imp:14s} {format_chain(chain)}")
        if "--write" in argv:
            env_path.write_text(render_env(env_path, n))
            print("    written")
    if "--write" in argv:
        CONSTRAINTS.write_text(render_constraints())
        print(f"{CONSTRAINTS.relative_to(REPO)}: written")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
