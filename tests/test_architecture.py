"""Structure checks: no import cycle among hpcflare modules, and no function-local import that only dodges one.

Importing ``a.b.c`` runs ``a/__init__``, ``a/b/__init__`` and ``a/b/c``, so an import is an edge to the
module and to every package above it. ``if TYPE_CHECKING:`` imports are not edges (they never run).
A function-local import of an hpcflare module is allowed only where moving it to module level would not
close a cycle (counting the other modules' local imports as edges too) (it is then there for start-up cost or an optional dependency, not to hide a cycle).
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "hpcflare"
EVENT_CALL = re.compile(r"\.(debug|info|warning|error)\(\s*f[\"']")


def _modules() -> dict[str, Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def _targets(node: ast.Import | ast.ImportFrom, module: str, is_pkg: bool, known: set[str]) -> set[str]:
    names: list[str] = []
    if isinstance(node, ast.Import):
        names = [a.name for a in node.names]
    else:
        base = node.module or ""
        if node.level:
            anchor = module.split(".") if is_pkg else module.split(".")[:-1]
            anchor = anchor[: len(anchor) - (node.level - 1)]
            base = ".".join(anchor + ([base] if base else []))
        names = [base] + [f"{base}.{a.name}" for a in node.names]
    out = set()
    own_packages = {".".join(module.split(".")[:i]) for i in range(1, module.count(".") + 1)}
    for name in names:
        if not name.startswith("hpcflare"):
            continue
        parts = name.split(".")
        for i in range(1, len(parts) + 1):  # the module and every package above it
            candidate = ".".join(parts[:i])
            if (
                candidate in known and candidate not in own_packages
            ):  # a module's own packages are loaded first
                out.add(candidate)
    return out


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(modules: dict[str, Path]) -> tuple[dict[str, set[str]], list[tuple[str, int, set[str]]]]:
    """Module-level edges, and the function-local imports (module, line, targets)."""
    known = set(modules)
    edges: dict[str, set[str]] = {m: set() for m in modules}
    local: list[tuple[str, int, set[str]]] = []

    def visit(node: ast.AST, module: str, is_pkg: bool, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child):
                for orelse in child.orelse:
                    visit(orelse, module, is_pkg, in_function)
                continue
            if isinstance(child, (ast.Import, ast.ImportFrom)):
                targets = _targets(child, module, is_pkg, known) - {module}
                if in_function:
                    local.append((module, child.lineno, targets))
                else:
                    edges[module] |= targets
                continue
            nested = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            visit(child, module, is_pkg, nested)

    for module, path in modules.items():
        visit(ast.parse(path.read_text()), module, path.name == "__init__.py", False)
    return edges, local


def _reaches(edges: dict[str, set[str]], start: str, goal: str) -> bool:
    seen, stack = set(), [start]
    while stack:
        node = stack.pop()
        if node == goal:
            return True
        if node in seen:
            continue
        seen.add(node)
        stack.extend(edges.get(node, ()))
    return False


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []
    counter = [0]

    def connect(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in edges[v]:
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            connect(v)
    return out


def test_no_import_cycle_at_module_level():
    edges, _ = _imports(_modules())
    assert _cycles(edges) == []


def test_no_function_local_import_hides_a_cycle():
    edges, local = _imports(_modules())
    every = {m: set(t) for m, t in edges.items()}  # local imports of other modules count as edges too
    for module, _, targets in local:
        every[module] |= targets
    dodges = [
        f"{module}:{line} imports {target}"
        for module, line, targets in local
        for target in sorted(targets)
        if _reaches(every, target, module)
    ]
    assert dodges == [], (
        "move these imports to module level by untangling the modules instead:\n" + "\n".join(dodges)
    )


def test_checker_sees_a_cycle_and_a_dodge():
    edges = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}
    assert _cycles(edges) == [["a", "b", "c"]]
    assert _reaches({"x": {"y"}, "y": set()}, "x", "y") and not _reaches({"x": set(), "y": {"x"}}, "x", "y")


def test_event_names_are_literals():
    """Every log event name can be grepped: no f-string as the event argument of a log call."""
    offenders = []
    for path in PACKAGE.rglob("*.py"):
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if EVENT_CALL.search(line) and "log" in line.split("(")[0]:
                offenders.append(f"{path.relative_to(PACKAGE.parent)}:{number}: {line.strip()}")
    assert offenders == []


LAYERS: list[tuple[str, tuple[str, ...]]] = [
    (
        "base",
        (
            "hpcflare",
            "hpcflare.errors",
            "hpcflare.enums",
            "hpcflare.fileio",
            "hpcflare.settings",
            "hpcflare.exitcodes",
            "hpcflare.rank_logger",
            "hpcflare.plugins",
        ),
    ),
    (
        "identity",
        ("hpcflare.security", "hpcflare.security.tls", "hpcflare.security.certs", "hpcflare.security.policy"),
    ),
    ("monitoring", ("hpcflare.monitoring",)),
    ("transport", ("hpcflare.transport",)),
    ("tensor math", ("hpcflare.tensors",)),
    ("job model", ("hpcflare.job", "hpcflare.security.provision")),
    (
        "algorithms",
        ("hpcflare.strategy", "hpcflare.privacy", "hpcflare.filters", "hpcflare.tabular", "hpcflare.data"),
    ),
    ("job security", ("hpcflare.security.jobs",)),
    ("runtime: cluster", ("hpcflare.runtime", "hpcflare.runtime.cluster")),
    ("runtime: host", ("hpcflare.runtime.host",)),
    ("runtime: site", ("hpcflare.runtime.site",)),
    ("client API", ("hpcflare.client",)),
    (
        "runtime: roles",
        (
            "hpcflare.runtime.launch",
            "hpcflare.runtime.server",
            "hpcflare.runtime.relay",
            "hpcflare.runtime.client_rank",
            "hpcflare.runtime.swarm",
            "hpcflare.runtime.script_runner",
            "hpcflare.runtime.registration",
            "hpcflare.runtime.server_rounds",
            "hpcflare.runtime.relay_rounds",
        ),
    ),
    ("scheduler", ("hpcflare.slurm",)),
    ("federation", ("hpcflare.federation",)),
    ("environments and post-mortem tools", ("hpcflare.env", "hpcflare.logs", "hpcflare.dashboard")),
    ("recipes and CLI", ("hpcflare.recipe", "hpcflare.cli")),
    ("NVFlare job side", ("hpcflare.nvflare",)),
]
"""The package layers, lowest first: a module imports only from its own layer or the ones below. A module's
layer is that of the longest prefix listed for it; plugin packages reach the job model only through
hpcflare.plugins' registries, and the site's link reaches the roles only through what they hand in."""


def layer_of(module: str) -> int:
    best, found = -1, None
    for index, (_, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and len(prefix) > best:
                best, found = len(prefix), index
    assert found is not None, f"{module} is in no layer: add it to LAYERS"
    return found


def _against_layers(edges: dict[str, set[str]]) -> list[str]:
    return [
        f"{module} ({LAYERS[layer_of(module)][0]}) imports {target} ({LAYERS[layer_of(target)][0]})"
        for module, targets in sorted(edges.items())
        for target in sorted(targets)
        if layer_of(target) > layer_of(module)
    ]


def test_every_module_is_in_a_layer():
    for module in _modules():
        layer_of(module)


def test_no_import_against_the_layers():
    edges, local = _imports(_modules())
    every = {m: set(t) for m, t in edges.items()}
    for module, _, targets in local:  # a function-local import is still an import
        every[module] |= targets
    assert _against_layers(every) == []


def test_layer_checker_sees_an_upward_import():
    assert _against_layers({"hpcflare.transport.codec": {"hpcflare.job"}}) == [
        "hpcflare.transport.codec (transport) imports hpcflare.job (job model)"
    ]
    assert _against_layers({"hpcflare.job": {"hpcflare.transport.codec"}}) == []


def test_no_module_circle_even_under_type_checking():
    """TYPE_CHECKING imports count here: a circle hidden from the interpreter is still a circle for readers."""
    modules = _modules()
    edges: dict[str, set[str]] = {m: set() for m in modules}
    for module, path in modules.items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                edges[module] |= _targets(node, module, path.name == "__init__.py", set(modules)) - {module}
    assert _cycles(edges) == []


MAX_CLASS_LINES = 250
"""A class past this many lines (as formatted) is doing more than one thing: split it by concern (the
RoundHost mixins intake, serving and unary; the server's registration and round driver)."""


def test_no_class_over_the_size_limit():
    big = [
        f"{path.relative_to(PACKAGE.parent)}:{node.lineno} {node.name}: {node.end_lineno - node.lineno + 1} lines"
        for path in sorted(PACKAGE.rglob("*.py"))
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.ClassDef) and (node.end_lineno or 0) - node.lineno + 1 > MAX_CLASS_LINES
    ]
    assert big == []
