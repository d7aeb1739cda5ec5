"""chatd's layering, checked from the source: every module under chatd/ is parsed with
`ast` (nothing is imported, so no import runs any code), and the test fails on

- an import cycle between chatd modules;
- an upward import: a module importing one of a higher rank in `LAYERS`;
- a private name (`_x`, or a module `_x.py`) imported from outside its own package;
- a module missing from `LAYERS`, or an entry of `LAYERS` that names no module.

Every import counts: at the top of a module, inside a function (a lazy import still
makes the dependency, and a cycle that only a lazy import hides breaks as soon as
someone moves it up), and under `if TYPE_CHECKING:` (a type names its layer as much as a
call does). Failures name the kind, so a lazy or typing-only import is told apart. None
is exempt today: cli.py's lazy imports of chatd.server point down.

Modules of one rank may import each other; the cycle check keeps that a tree. A package's
`__init__.py` counts as the package's module (`chatd.store`), ranked by what it imports.
"""

from __future__ import annotations

import ast
import fnmatch
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent / "chatd"

# rank, layer, why it sits there, and the modules in it (exact names, or fnmatch patterns).
# A lower layer never imports a higher one. To place a new module, find the highest layer
# it imports from: it goes there or above. If it must import something above its own
# layer, the shared piece belongs lower (types in chatd/model.py) or is passed in.
LAYERS: list[tuple[int, str, str, tuple[str, ...]]] = [
    (0, "types", "plain data every layer shares; imports nothing from chatd",
     ("chatd.model", "chatd", "chatd.http", "chatd.net", "chatd.ops", "chatd.ticketws",
      "chatd.cluster")),
    (1, "pure helpers", "sans-I/O codecs and leaf helpers: they know no chatd module but model",
     ("chatd.validation", "chatd.config", "chatd.toml_writer", "chatd.ops.logs",
      "chatd.ops.metrics", "chatd.ops.exposition", "chatd.ops.sdnotify", "chatd.stomp",
      "chatd.stomp._*", "chatd.net.websocket", "chatd.cluster.wire")),
    (2, "state holders and byte plumbing", "each owns one resource (tokens, the database, "
     "membership, encoded events, a connection's bytes, a listener) and no chat rule",
     ("chatd.auth", "chatd.store", "chatd.store.*", "chatd.rooms", "chatd.events",
      "chatd.ratelimit", "chatd.expiry", "chatd.jwks", "chatd.net.outbox", "chatd.net.wire",
      "chatd.net.ws_transport", "chatd.net.handshake", "chatd.net.listeners",
      "chatd.net.connections", "chatd.net.budget",
      "chatd.net.asgi_server", "chatd.stomp.heartbeats", "chatd.stomp.general_broker",
      "chatd.cluster.link", "chatd.cluster.sequencer", "chatd.cluster.presence")),
    (3, "fan-out and credentials", "who is connected where, the broker seam over the hub, "
     "and the per-user tickets and STOMP logins the protocols redeem",
     ("chatd.hub", "chatd.broker", "chatd.ticketws.tickets", "chatd.stomp.logins",
      "chatd.cluster.bus")),
    (4, "domain", "the chat rules every protocol shares, over store, rooms, hub and broker",
     ("chatd.service",)),
    (5, "wiring", "everything one running server shares, built once from the layers below",
     ("chatd.state",)),
    (6, "protocols and listeners", "each protocol's sessions and transports, the HTTP API, "
     "the front door and the metrics listener: they read the server's state",
     ("chatd.ticketws.session", "chatd.stomp.session", "chatd.stomp.transports",
      "chatd.http.*", "chatd.net.front", "chatd.ops.exporter")),
    (7, "process", "starts the listeners over one state, stops and reloads them",
     ("chatd.server",)),
    (8, "command line", "parses the command line and runs the server or a tool",
     ("chatd.cli", "chatd.admin_cli", "chatd.__main__")),
]  # fmt: skip


@dataclass(frozen=True)
class Import:
    source: str  # the importing module
    target: str  # the chatd module imported (a submodule when the name is one)
    path: Path
    line: int
    kind: str  # "top", "in a function", "under TYPE_CHECKING"
    private_name: str | None  # `_x` imported by name, if any

    def where(self, root: Path) -> str:
        try:
            shown = self.path.relative_to(root.parent)
        except ValueError:
            shown = self.path
        kind = "" if self.kind == "top" else f" ({self.kind})"
        return f"{shown}:{self.line}{kind}"


def module_names(root: Path) -> dict[str, Path]:
    """Every module of the package at `root`, by dotted name."""
    out: dict[str, Path] = {}
    for path in sorted(root.rglob("*.py")):
        parts = path.relative_to(root.parent).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


class _Collector(ast.NodeVisitor):
    def __init__(self, module: str, path: Path, modules: dict[str, Path]) -> None:
        self.module = module
        self.path = path
        self.modules = modules
        self.package = module if path.name == "__init__.py" else module.rpartition(".")[0]
        self.top = module.partition(".")[0]
        self.kinds = ["top"]
        self.found: list[Import] = []

    def _nested(self, node: ast.AST, kind: str) -> None:
        # The outermost reason wins: a lazy import under TYPE_CHECKING is typing-only.
        self.kinds.append(self.kinds[-1] if self.kinds[-1] != "top" else kind)
        self.generic_visit(node)
        self.kinds.pop()

    def visit_FunctionDef(self, node: ast.FunctionDef) -> None:
        self._nested(node, "in a function")

    def visit_AsyncFunctionDef(self, node: ast.AsyncFunctionDef) -> None:
        self._nested(node, "in a function")

    def visit_If(self, node: ast.If) -> None:
        if _is_type_checking(node.test):
            self.visit(node.test)
            self.kinds.append(self.kinds[-1] if self.kinds[-1] != "top" else "under TYPE_CHECKING")
            for child in node.body:
                self.visit(child)
            self.kinds.pop()
            for child in node.orelse:
                self.visit(child)
        else:
            self.generic_visit(node)

    def _add(self, node: ast.stmt, target: str, private_name: str | None = None) -> None:
        if target == self.top or target.startswith(self.top + "."):
            self.found.append(
                Import(self.module, target, self.path, node.lineno, self.kinds[-1], private_name)
            )

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            self._add(node, alias.name)

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        if node.level:
            base = self.package.split(".")
            base = base[: len(base) - node.level + 1]
            source = ".".join(base + ([node.module] if node.module else []))
        else:
            source = node.module or ""
        for alias in node.names:
            submodule = f"{source}.{alias.name}"
            if submodule in self.modules:
                self._add(node, submodule)
            else:
                self._add(node, source, alias.name if _private(alias.name) else None)


def collect_imports(root: Path) -> tuple[dict[str, Path], list[Import]]:
    modules = module_names(root)
    found: list[Import] = []
    for name, path in modules.items():
        collector = _Collector(name, path, modules)
        collector.visit(ast.parse(path.read_text(encoding="utf-8"), filename=str(path)))
        found.extend(collector.found)
    return modules, found


def rank_of(module: str, layers: list[tuple[int, str, str, tuple[str, ...]]]) -> list[int]:
    """The ranks whose patterns match `module` (exactly one when the table is right)."""
    return [
        rank
        for rank, _name, _why, patterns in layers
        if any(fnmatch.fnmatchcase(module, p) for p in patterns)
    ]


def table_problems(
    modules: Iterable[str], layers: list[tuple[int, str, str, tuple[str, ...]]]
) -> list[str]:
    problems = []
    names = sorted(modules)
    for module in names:
        ranks = rank_of(module, layers)
        if not ranks:
            problems.append(f"{module} is in no layer: add it to LAYERS in tests/test_layers.py")
        elif len(ranks) > 1:
            problems.append(f"{module} matches layers {ranks}: make its pattern unambiguous")
    for rank, name, _why, patterns in layers:
        for pattern in patterns:
            if not any(fnmatch.fnmatchcase(m, pattern) for m in names):
                problems.append(f"layer {rank} ({name}) names {pattern!r}, which is no module")
    return problems


def upward_imports(
    imports: Iterable[Import], layers: list[tuple[int, str, str, tuple[str, ...]]], root: Path
) -> list[str]:
    label = {rank: name for rank, name, _why, _patterns in layers}
    problems = []
    for imp in imports:
        src, dst = rank_of(imp.source, layers), rank_of(imp.target, layers)
        if len(src) == 1 and len(dst) == 1 and dst[0] > src[0]:
            problems.append(
                f"{imp.where(root)}: {imp.source} (rank {src[0]}, {label[src[0]]}) imports "
                f"{imp.target} (rank {dst[0]}, {label[dst[0]]}), a higher layer. Move what it "
                "needs down (a type to chatd/model.py) or have it passed in."
            )
    return problems


def _private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def private_imports(imports: Iterable[Import], modules: dict[str, Path], root: Path) -> list[str]:
    def package_of(module: str) -> str:
        return module if modules[module].name == "__init__.py" else module.rpartition(".")[0]

    problems = []
    for imp in imports:
        # A private name is its module's package's own; a private module, its package's.
        if imp.private_name is not None:
            owner, what = package_of(imp.target), f"{imp.target}.{imp.private_name}"
        elif _private(imp.target.rpartition(".")[2]):
            owner, what = imp.target.rpartition(".")[0], imp.target
        else:
            continue
        if package_of(imp.source) != owner:
            problems.append(
                f"{imp.where(root)}: {imp.source} imports {what}, private to {owner}: "
                "make it public there, or move it to a module both may import."
            )
    return problems


def cycles(imports: Iterable[Import]) -> list[list[Import]]:
    """One cycle of imports for each group of modules that import each other (Tarjan's
    strongly connected components, then a path round each)."""
    edges: dict[str, dict[str, Import]] = {}
    for imp in imports:
        if imp.source != imp.target:
            edges.setdefault(imp.source, {}).setdefault(imp.target, imp)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[list[str]] = []

    def connect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in edges.get(v, {}):
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                groups.append(sorted(group))

    for v in sorted(edges):
        if v not in index:
            connect(v)

    found = []
    for group in groups:
        members = set(group)
        # The shortest way from the group's first module back to itself.
        start = group[0]
        paths: dict[str, list[Import]] = {start: []}
        queue = [start]
        cycle: list[Import] | None = None
        while queue and cycle is None:
            v = queue.pop(0)
            for w, imp in sorted(edges.get(v, {}).items()):
                if w == start:
                    cycle = paths[v] + [imp]
                    break
                if w in members and w not in paths:
                    paths[w] = paths[v] + [imp]
                    queue.append(w)
        assert cycle is not None
        found.append(cycle)
    return found


def describe_cycle(cycle: list[Import], root: Path) -> str:
    steps = " -> ".join(f"{imp.target} ({imp.where(root)})" for imp in cycle)
    return f"import cycle: {cycle[0].source} -> {steps}"


def check(root: Path, layers: list[tuple[int, str, str, tuple[str, ...]]]) -> list[str]:
    modules, imports = collect_imports(root)
    return (
        table_problems(modules, layers)
        + [describe_cycle(c, root) for c in cycles(imports)]
        + upward_imports(imports, layers, root)
        + private_imports(imports, modules, root)
    )


# --- chatd itself --------------------------------------------------------------------------


def test_chatd_has_no_import_cycle_and_no_upward_import() -> None:
    problems = check(ROOT, LAYERS)
    assert not problems, "chatd's layering is broken:\n  " + "\n  ".join(problems)


def test_the_types_module_imports_nothing_from_chatd() -> None:
    _modules, imports = collect_imports(ROOT)
    assert [imp.target for imp in imports if imp.source == "chatd.model"] == []


def test_the_table_is_sorted_by_rank_and_every_layer_says_why() -> None:
    assert [rank for rank, *_ in LAYERS] == list(range(len(LAYERS)))
    assert all(why.strip() for _rank, _name, why, _patterns in LAYERS)


# --- the checker itself, on small made-up packages ------------------------------------------


def make_package(tmp_path: Path, files: dict[str, str]) -> Path:
    root = tmp_path / "chatd"
    for name, text in {"__init__.py": "", **files}.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


TOY_LAYERS: list[tuple[int, str, str, tuple[str, ...]]] = [
    (0, "low", "imports nothing", ("chatd", "chatd.low", "chatd.pkg", "chatd.pkg._*")),
    (1, "mid", "imports low", ("chatd.mid", "chatd.other")),
    (2, "high", "imports mid", ("chatd.high", "chatd.top")),
]


def only_problem(root: Path) -> str:
    problems = check(root, TOY_LAYERS)
    assert len(problems) == 1, problems
    return problems[0]


def clean_files() -> dict[str, str]:
    return {
        "low.py": "X = 1\n",
        "mid.py": "from chatd.low import X\n",
        "other.py": "import chatd.mid\n",
        "high.py": "from chatd import mid\n",
        "top.py": "Y = 1\n",
        "pkg/__init__.py": "from ._impl import thing\n",
        "pkg/_impl.py": "thing = 1\n",
    }


def test_a_clean_toy_package_passes(tmp_path: Path) -> None:
    assert check(make_package(tmp_path, clean_files()), TOY_LAYERS) == []


def test_an_upward_import_is_named_with_its_line(tmp_path: Path) -> None:
    files = clean_files()
    files["low.py"] = "X = 1\nfrom chatd.top import Y\n"
    problem = only_problem(make_package(tmp_path, files))
    assert problem.startswith("chatd/low.py:2: chatd.low (rank 0, low) imports chatd.top (rank 2")


def test_a_cycle_is_reported_even_through_an_import_in_a_function(tmp_path: Path) -> None:
    files = clean_files()
    files["other.py"] = "def f():\n    from chatd import mid\n"
    files["mid.py"] = "from chatd.low import X\nimport chatd.other\n"
    problem = only_problem(make_package(tmp_path, files))
    assert problem == (
        "import cycle: chatd.mid -> chatd.other (chatd/mid.py:2)"
        " -> chatd.mid (chatd/other.py:2 (in a function))"
    )


def test_a_typing_only_import_counts_and_says_so(tmp_path: Path) -> None:
    files = clean_files()
    files["mid.py"] = (
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from chatd.top import Y\n"
    )
    problem = only_problem(make_package(tmp_path, files))
    assert problem.startswith("chatd/mid.py:3 (under TYPE_CHECKING): chatd.mid (rank 1, mid)")


def test_a_private_name_from_another_package_is_refused(tmp_path: Path) -> None:
    files = clean_files()
    files["mid.py"] = "from chatd.pkg._impl import thing\n"
    problem = only_problem(make_package(tmp_path, files))
    assert "chatd.mid imports chatd.pkg._impl, private to chatd.pkg" in problem
    files["mid.py"] = "from chatd.pkg import _hidden\n"
    problem = only_problem(make_package(tmp_path, files))
    assert "chatd.mid imports chatd.pkg._hidden, private to chatd.pkg" in problem
    # Within a package, its modules share their private names.
    files["mid.py"] = "from chatd.low import _hidden\n"
    assert check(make_package(tmp_path, files), TOY_LAYERS) == []


@pytest.mark.parametrize(
    ("files", "expected"),
    [
        ({"new.py": ""}, "chatd.new is in no layer"),
        ({"other.py": None}, "layer 1 (mid) names 'chatd.other', which is no module"),
    ],
)
def test_the_table_must_match_the_modules(
    tmp_path: Path, files: dict[str, str | None], expected: str
) -> None:
    tree = {**clean_files(), **{k: v for k, v in files.items() if v is not None}}
    for gone in (k for k, v in files.items() if v is None):
        del tree[gone]
    assert only_problem(make_package(tmp_path, tree)).startswith(expected)
