"""The layering of docs/design.md §1, held by an import scan of ``src/edgeproxy``.

Every ``import`` and ``from … import`` in the source is read with :mod:`ast` — at module level,
inside functions and under ``TYPE_CHECKING`` alike: a lazy or typing-only import still ties one
part to another. The rules:

* each package sits on a floor (:data:`FLOORS`) and imports only from its own floor or below;
* the pure cores never import trio, not even through another module (:data:`PURE`);
* the gateway reaches the edge only through the loopback channel: ``gateway`` and ``net`` never
  import each other;
* nothing imports the command line but the entry point (``__main__``);
* the packages import each other in no circle.

The scanner is tested on a small synthetic tree too, so a rule that silently stopped matching
anything would fail here rather than pass forever.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from fnmatch import fnmatchcase
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"

#: The floors from the bottom up: a package may import its own floor and the floors below.
FLOORS: Mapping[str, int] = {
    # foundations: the tokenizer, the exception tree, config and secret files
    "edgeproxy": 0,  # the package itself (its version)
    "edgeproxy._fastxml": 0,
    "edgeproxy.tokenizer": 0,
    "edgeproxy.errors": 0,
    "edgeproxy.findings": 0,
    "edgeproxy.secretfiles": 0,
    "edgeproxy.config": 0,
    "edgeproxy.names": 0,  # the one validation layer for names (domains, JIDs, hosts)
    # the XMPP floor: JIDs, namespaces, stanza views, error conditions, serialization
    "edgeproxy.xmpp": 1,
    # pure cores: the policy, certificates and TLS contexts, the S2S stream
    "edgeproxy.policy": 2,
    "edgeproxy.certs": 2,
    "edgeproxy.s2s": 2,
    # services every driver uses: DNS, events/metrics/the admin listener
    "edgeproxy.dns": 3,
    "edgeproxy.ops": 3,
    # the loopback channel between edge and gateway
    "edgeproxy.loopback": 4,
    # the two sides of the channel
    "edgeproxy.net": 5,
    "edgeproxy.gateway": 5,
    # an edge pool: the store replicated from the primary to the members
    "edgeproxy.pool": 5,
    # the load-testing harness (simulated partner servers)
    "edgeproxy.loadtest": 6,
    # the Control Panel and the admin listener's HTTP application (ASGI on trio)
    "edgeproxy.web": 6,
    # the composition root, then the command line
    "edgeproxy.app": 7,
    "edgeproxy.embed": 7,  # edgeproxy.run: the composition root for a host trio program
    "edgeproxy.commands": 8,
    # edge workers: the supervisor composes app's parts once per worker and the one gateway
    "edgeproxy.workers": 8,
    "edgeproxy.cli": 9,
    "edgeproxy.__main__": 10,
}

#: The one import that reaches up: the package root provides ``edgeproxy.run`` (the embedding
#: API, floor 7) through its module-level ``__getattr__``, which imports ``edgeproxy.embed`` on
#: first use only — ``import edgeproxy`` itself still loads nothing above floor 0 (no trio).
#: Allowed nowhere else than inside that ``__getattr__`` (checked below).
LAZY_EXPORTS: tuple[tuple[str, str], ...] = (("edgeproxy", "edgeproxy.embed"),)

#: Modules that never import trio, directly or through another edgeproxy module.
PURE: tuple[str, ...] = (
    "edgeproxy.tokenizer",
    "edgeproxy.errors",
    "edgeproxy.config",
    "edgeproxy.xmpp.*",
    "edgeproxy.s2s.*",
    "edgeproxy.policy.*",
    "edgeproxy.certs.contexts",
    "edgeproxy.certs.identity",
    "edgeproxy.certs.peer",
    "edgeproxy.dns.srv",
    "edgeproxy.loopback.frames",
    "edgeproxy.loopback.reliable",
    "edgeproxy.loopback.auth",
    "edgeproxy.gateway.translate",
    "edgeproxy.pool.protocol",
    "edgeproxy.ops.workerplan",
    "edgeproxy.gateway.sip.lexical",
    "edgeproxy.gateway.sip.message",
    "edgeproxy.gateway.sip.uri",
    "edgeproxy.gateway.sip.transaction",
    "edgeproxy.gateway.sip.registrar",
    "edgeproxy.gateway.sip.digest",
    "edgeproxy.gateway.sip.admission",
)

#: Pairs of packages that must not import each other in either direction.
APART: tuple[tuple[str, str], ...] = (("edgeproxy.gateway", "edgeproxy.net"),)

#: The command line, and who alone may import it.
CLI, ENTRY_POINT = "edgeproxy.cli", "edgeproxy.__main__"


@dataclass(frozen=True)
class Import:
    importer: str  # dotted module name
    imported: str  # dotted module (or package) name
    line: int

    def __str__(self) -> str:
        return f"{self.importer}:{self.line} imports {self.imported}"


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules(root: Path, package: str = "edgeproxy") -> dict[str, Path]:
    return {module_name(p, root): p for p in sorted((root / package).rglob("*.py"))}


def imports_of(name: str, path: Path, known: Iterable[str]) -> Iterator[Import]:
    """Every import statement of one module, resolved to dotted names (relative ones too)."""
    known = set(known)
    is_package = path.name == "__init__.py"
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield Import(name, alias.name, node.lineno)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".") if is_package else name.split(".")[:-1]
                base = base[: len(base) - (node.level - 1)]
                target = ".".join([*base, *([node.module] if node.module else [])])
            else:
                target = node.module or ""
            for alias in node.names:  # `from pkg import module` imports the module
                sub = f"{target}.{alias.name}"
                yield Import(name, sub if sub in known else target, node.lineno)


def scan(root: Path) -> list[Import]:
    found = modules(root)
    every = (imp for name, path in found.items() for imp in imports_of(name, path, found))
    return list(dict.fromkeys(every))  # one entry per (importer, imported, line)


def owner(name: str, floors: Mapping[str, int]) -> str | None:
    """The longest entry of ``floors`` that is ``name`` or a package holding it.

    The top package stands only for itself: a new top-level module needs its own floor."""
    best = None
    for key in floors:
        holds = name == key or (key != "edgeproxy" and name.startswith(key + "."))
        if holds and (best is None or len(key) > len(best)):
            best = key
    return best


def floor_violations(imports: Iterable[Import], floors: Mapping[str, int],
                     allowed: Iterable[tuple[str, str]] = ()) -> list[str]:
    problems = []
    allowed = set(allowed)
    for imp in imports:
        if not imp.imported.startswith("edgeproxy") or (imp.importer, imp.imported) in allowed:
            continue
        a, b = owner(imp.importer, floors), owner(imp.imported, floors)
        if a is None or b is None:
            problems.append(f"{imp}: not on any floor (add it to FLOORS)")
        elif floors[b] > floors[a]:
            problems.append(f"{imp}: floor {floors[a]} ({a}) reaches up to floor {floors[b]} ({b})")
    return problems


def is_pure(name: str, patterns: Iterable[str]) -> bool:
    return any(fnmatchcase(name, p) or name == p.removesuffix(".*") for p in patterns)


def trio_paths(imports: Iterable[Import], patterns: Iterable[str]) -> list[str]:
    """For each pure module that reaches trio: the chain of imports that gets it there."""
    graph: dict[str, list[str]] = {}
    for imp in imports:
        graph.setdefault(imp.importer, []).append(imp.imported)
    problems = []
    for start in sorted(m for m in graph if is_pure(m, patterns)):
        seen, stack = {start}, [(start, [start])]
        while stack:
            node, path = stack.pop()
            for nxt in graph.get(node, ()):
                if nxt == "trio" or nxt.startswith("trio."):
                    problems.append(" -> ".join([*path, nxt]))
                    stack.clear()
                    break
                if nxt.startswith("edgeproxy") and nxt not in seen:
                    seen.add(nxt)
                    stack.append((nxt, [*path, nxt]))
    return problems


def apart_violations(imports: Iterable[Import], pairs: Iterable[tuple[str, str]]) -> list[str]:
    problems = []
    for imp in imports:
        for a, b in pairs:
            for x, y in ((a, b), (b, a)):
                inside = imp.importer == x or imp.importer.startswith(x + ".")
                if inside and (imp.imported == y or imp.imported.startswith(y + ".")):
                    problems.append(f"{imp}: {x} reaches {y} (only the loopback channel joins them)")
    return problems


def cli_importers(imports: Iterable[Import]) -> list[str]:
    return [
        str(imp)
        for imp in imports
        if (imp.imported == CLI or imp.imported.startswith(CLI + "."))
        and imp.importer not in (CLI, ENTRY_POINT)
    ]


def package_of(name: str) -> str:
    """The package a module belongs to: ``edgeproxy.net.session`` -> ``edgeproxy.net``."""
    return ".".join(name.split(".")[:2])


def package_cycles(imports: Iterable[Import]) -> list[list[str]]:
    """Strongly connected groups of more than one package (Tarjan)."""
    graph: dict[str, set[str]] = {}
    for imp in imports:
        if imp.imported.startswith("edgeproxy."):
            a, b = package_of(imp.importer), package_of(imp.imported)
            if a != b:
                graph.setdefault(a, set()).add(b)
                graph.setdefault(b, set())
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                cycles.append(sorted(group))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return cycles


# --- the rules, on the real source -----------------------------------------------------------

IMPORTS = scan(SRC)


def test_every_package_imports_only_its_floor_and_below() -> None:
    assert floor_violations(IMPORTS, FLOORS, LAZY_EXPORTS) == []


def lazy_imports_outside_getattr(path: Path, module: str) -> list[int]:
    """Lines where ``path`` imports ``module`` other than inside a module-level ``__getattr__``."""
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    inside: set[int] = set()
    for node in tree.body:
        if isinstance(node, ast.FunctionDef) and node.name == "__getattr__":
            inside |= {id(n) for n in ast.walk(node)}
    return [
        node.lineno for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom) and node.module == module and id(node) not in inside
    ]


def test_the_one_upward_import_is_the_package_roots_lazy_run() -> None:
    """``edgeproxy.run`` is imported on first use, inside ``__getattr__``, and nowhere else:
    importing the package loads neither the embedding module nor trio."""
    for importer, imported in LAZY_EXPORTS:
        assert lazy_imports_outside_getattr(modules(SRC)[importer], imported) == []
    code = "import sys, edgeproxy\nsys.exit(('trio' in sys.modules) or ('edgeproxy.embed' in sys.modules))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=120)
    assert result.returncode == 0, result.stderr.decode()[-500:]


def test_an_upward_import_outside_getattr_is_found(tmp_path: Path) -> None:
    init = tmp_path / "__init__.py"
    init.write_text("def __getattr__(name):\n    from edgeproxy.embed import run\n    return run\n"
                    "from edgeproxy.embed import run\n")
    assert lazy_imports_outside_getattr(init, "edgeproxy.embed") == [4]


def test_the_pure_cores_never_reach_trio() -> None:
    assert trio_paths(IMPORTS, PURE) == []


def test_every_pure_pattern_names_a_module() -> None:
    found = modules(SRC)
    assert [p for p in PURE if not any(is_pure(m, [p]) for m in found)] == []


def test_the_gateway_reaches_the_edge_only_through_the_loopback_channel() -> None:
    assert apart_violations(IMPORTS, APART) == []


def test_only_the_entry_point_imports_the_command_line() -> None:
    assert cli_importers(IMPORTS) == []


def test_packages_import_each_other_in_no_circle() -> None:
    assert package_cycles(IMPORTS) == []


def test_the_pure_cores_load_without_trio() -> None:
    """The same rule at run time: importing every pure module leaves trio unloaded."""
    pure = sorted(m for m in modules(SRC) if is_pure(m, PURE))
    code = f"import sys\nfor m in {pure!r}: __import__(m)\nsys.exit('trio' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=120)
    assert result.returncode == 0, result.stderr.decode()[-500:]


# --- the scanner finds what it is meant to find ----------------------------------------------


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """A tiny edgeproxy with one file per floor, obeying every rule."""
    files = {
        "edgeproxy/__init__.py": "",
        "edgeproxy/__main__.py": "from edgeproxy.cli import main\n",
        "edgeproxy/cli.py": "from edgeproxy import commands\n",
        "edgeproxy/commands/__init__.py": "from edgeproxy.app import run\n",
        "edgeproxy/app.py": "from edgeproxy.net import edge\nfrom edgeproxy.gateway import service\n",
        "edgeproxy/net/__init__.py": "",
        "edgeproxy/net/edge.py": "import trio\nfrom edgeproxy.loopback import frames\n",
        "edgeproxy/gateway/__init__.py": "",
        "edgeproxy/gateway/service.py": "import trio\nfrom ..loopback.frames import Item\n",
        "edgeproxy/gateway/translate.py": "from edgeproxy.xmpp import stanza\n",
        "edgeproxy/loopback/__init__.py": "",
        "edgeproxy/loopback/frames.py": "from edgeproxy.xmpp.stanza import parse\n",
        "edgeproxy/xmpp/__init__.py": "",
        "edgeproxy/xmpp/stanza.py": "from edgeproxy import tokenizer\n",
        "edgeproxy/tokenizer.py": "",
    }
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    return tmp_path


def add(root: Path, name: str, line: str) -> list[Import]:
    path = root / name
    path.write_text(path.read_text() + line + "\n")
    return scan(root)


PURE_IN_TREE = ("edgeproxy.xmpp.*", "edgeproxy.loopback.frames", "edgeproxy.gateway.translate")


def test_the_synthetic_tree_obeys_every_rule(tree: Path) -> None:
    imports = scan(tree)
    assert floor_violations(imports, FLOORS) == []
    assert trio_paths(imports, PURE_IN_TREE) == []
    assert apart_violations(imports, APART) == []
    assert cli_importers(imports) == []
    assert package_cycles(imports) == []


def test_an_import_reaching_up_a_floor_is_found(tree: Path) -> None:
    imports = add(tree, "edgeproxy/xmpp/stanza.py", "from edgeproxy.net.edge import x")
    assert floor_violations(imports, FLOORS) == [
        "edgeproxy.xmpp.stanza:2 imports edgeproxy.net.edge: "
        "floor 1 (edgeproxy.xmpp) reaches up to floor 5 (edgeproxy.net)"
    ]


def test_a_lazy_import_inside_a_function_is_found(tree: Path) -> None:
    imports = add(tree, "edgeproxy/loopback/frames.py", "def f():\n    from edgeproxy import app")
    assert [v.split(":")[0] for v in floor_violations(imports, FLOORS)] == ["edgeproxy.loopback.frames"]


def test_a_pure_module_reaching_trio_through_another_module_is_found(tree: Path) -> None:
    imports = add(tree, "edgeproxy/xmpp/stanza.py", "import edgeproxy.tokenizer")
    imports = add(tree, "edgeproxy/tokenizer.py", "import trio")
    assert "edgeproxy.xmpp.stanza -> edgeproxy.tokenizer -> trio" in trio_paths(imports, PURE_IN_TREE)


def test_the_gateway_importing_the_edge_is_found(tree: Path) -> None:
    imports = add(tree, "edgeproxy/gateway/service.py", "from edgeproxy.net import edge")
    assert apart_violations(imports, APART) == [
        "edgeproxy.gateway.service:3 imports edgeproxy.net.edge: "
        "edgeproxy.gateway reaches edgeproxy.net (only the loopback channel joins them)"
    ]


def test_importing_the_command_line_is_found(tree: Path) -> None:
    imports = add(tree, "edgeproxy/app.py", "from edgeproxy.cli import main")
    assert cli_importers(imports) == ["edgeproxy.app:3 imports edgeproxy.cli"]


def test_a_circle_of_packages_is_found(tree: Path) -> None:
    imports = add(tree, "edgeproxy/xmpp/stanza.py", "from edgeproxy.loopback import frames")
    assert package_cycles(imports) == [["edgeproxy.loopback", "edgeproxy.xmpp"]]


def test_a_module_on_no_floor_is_found(tree: Path) -> None:
    (tree / "edgeproxy/newthing.py").write_text("from edgeproxy import tokenizer\n")
    assert floor_violations(scan(tree), FLOORS) == [
        "edgeproxy.newthing:1 imports edgeproxy.tokenizer: not on any floor (add it to FLOORS)"
    ]
