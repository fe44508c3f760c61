"""The layers import one way, and no modules import each other in a circle (walk every module's AST).

    policies/                   pure policy library: imports nothing of the project
    base: odhsim/ scenario, workload, results, catalog, rng, errors, profiles, importers
                                shared by both engines: imports policies only
    odhsim/sim/  |  runtime/    the two engines, side by side: each imports the base and policies, never the other
    tools: odhsim/ analysis, experiments, bench, listing, cli_support
                                above the simulator: may import it, never the live runtime
    odhsim/cli.py, commands/    the CLI: the only modules that import both engines, and only inside commands (lazily)

Every import counts, module-level or inside a function (a deferred import still loads the module when it runs);
imports under `if TYPE_CHECKING:` count for the layers but not for cycles, since they never execute.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("policies", "odhsim", "runtime")

# Layer of a module: the layer of the longest prefix listed here.
LAYER_OF_PREFIX: dict[str, str] = {
    "policies": "policies",
    "odhsim": "base",  # the package itself (its __init__ holds the version only)
    "odhsim.scenario": "base",
    "odhsim.workload": "base",
    "odhsim.results": "base",
    "odhsim.explain": "base",  # anomalies and routing regret from a run's tables, whichever engine wrote them
    "odhsim.catalog": "base",
    "odhsim.rng": "base",
    "odhsim.errors": "base",
    "odhsim.profiles": "base",
    "odhsim.importers": "base",
    "odhsim.sim": "sim",
    "runtime": "runtime",
    "odhsim.analysis": "tools",
    "odhsim.experiments": "tools",
    "odhsim.bench": "tools",
    "odhsim.bench_decisions": "tools",
    "odhsim.listing": "tools",
    "odhsim.cli_support": "tools",
    "odhsim.fidelity": "tools",
    "odhsim.fidelity.loop": "cli",  # drives both engines: serve + replay, then simulate
    "odhsim.fidelity.live": "cli",
    "odhsim.fidelity.capacity": "cli",
    "odhsim.fidelity.bench": "cli",
    "odhsim.calibrate": "base",  # the profile file the scenario loads, and the fits (numpy/scipy)
    "odhsim.calibrate.live_steps": "cli",  # time the live engine in-process (runtime imported lazily)
    "odhsim.calibrate.overheads": "cli",  # probe a live gateway
    "odhsim.calibrate.instrumented": "cli",
    "odhsim.calibrate.cpu_share": "cli",  # times the live engine in several processes
    "odhsim.cli": "cli",
    "odhsim.commands": "cli",
}
MAY_IMPORT: dict[str, set[str]] = {
    "policies": {"policies"},
    "base": {"policies", "base"},
    "sim": {"policies", "base", "sim"},
    "runtime": {"policies", "base", "runtime"},
    "tools": {"policies", "base", "sim", "tools"},
    "cli": {"policies", "base", "sim", "tools", "runtime", "cli"},
}
LAZY_ONLY: dict[str, set[str]] = {"cli": {"sim", "runtime"}}  # the CLI loads an engine only when a command needs it


@dataclass(frozen=True)
class Import:
    """One project import found in a module's source."""

    target: str  # the project module it loads
    line: int
    deferred: bool  # inside a function or method
    type_only: bool  # under `if TYPE_CHECKING:`


def module_files(root: Path = ROOT) -> dict[str, Path]:
    """Every project module by dotted name (a package by its own name)."""
    out: dict[str, Path] = {}
    for pkg in PACKAGES:
        for path in sorted((root / pkg).rglob("*.py")):
            parts = list(path.relative_to(root).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            out[".".join(parts)] = path
    return out


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _resolve(name: str, known: set[str] | dict[str, Path]) -> str | None:
    """The longest known module that `name` is or lies in (None outside the project)."""
    while name:
        if name in known:
            return name
        name = name.rpartition(".")[0]
    return None


def _walk(node: ast.AST, deferred: bool, type_only: bool) -> Iterator[tuple[ast.AST, bool, bool]]:
    for child in ast.iter_child_nodes(node):
        yield child, deferred, type_only
        child_deferred = deferred or isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda)
        if isinstance(child, ast.If) and _is_type_checking(child.test):
            for stmt in child.body:
                yield stmt, deferred, True
                yield from _walk(stmt, deferred, True)
            for stmt in child.orelse:
                yield stmt, deferred, type_only
                yield from _walk(stmt, deferred, type_only)
            continue
        yield from _walk(child, child_deferred, type_only)


def imports_of(source: str, module: str, is_package: bool, known: set[str] | dict[str, Path]) -> list[Import]:
    """The project modules `module` imports: `from pkg import sub` counts as `pkg.sub` when that is a module."""
    package = module if is_package else module.rpartition(".")[0]
    out: list[Import] = []
    for node, deferred, type_only in _walk(ast.parse(source), False, False):
        targets: list[str | None] = []
        if isinstance(node, ast.Import):
            targets = [_resolve(a.name, known) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                targets.append(sub if sub in known else _resolve(base, known))
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "__import__":
            arg = node.args[0] if node.args else None
            if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
                targets = [_resolve(arg.value, known)]
        out += [Import(t, node.lineno, deferred, type_only) for t in targets if t is not None and t != module]
    return list(dict.fromkeys(out))  # one entry per module and line


def import_graph(root: Path = ROOT) -> dict[str, list[Import]]:
    files = module_files(root)
    return {mod: imports_of(path.read_text(), mod, path.name == "__init__.py", files) for mod, path in files.items()}


def layer_of(module: str) -> str | None:
    prefix = _resolve(module, LAYER_OF_PREFIX)
    return LAYER_OF_PREFIX[prefix] if prefix is not None else None


def layering_violations(graph: dict[str, list[Import]]) -> list[str]:
    out = []
    for mod, imports in sorted(graph.items()):
        layer = layer_of(mod)
        if layer is None:
            out.append(f"{mod}: in no layer (add its prefix to LAYER_OF_PREFIX)")
            continue
        for imp in imports:
            target = layer_of(imp.target)
            if target not in MAY_IMPORT[layer]:
                out.append(f"{mod}:{imp.line}: {layer} imports {imp.target} ({target})")
            elif target in LAZY_ONLY.get(layer, set()) and not imp.deferred:
                out.append(f"{mod}:{imp.line}: {layer} imports {imp.target} ({target}) at module level")
    return out


def import_cycles(graph: dict[str, list[Import]]) -> list[list[str]]:
    """Strongly connected components of more than one module over the imports that execute (Tarjan's)."""
    edges = {m: sorted({i.target for i in imps if not i.type_only and i.target in graph}) for m, imps in graph.items()}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in edges[v]:
            if w not in index:
                visit(w)
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
                cycles.append(sorted(comp))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return sorted(cycles)


GRAPH = import_graph()


def test_the_scan_sees_the_project() -> None:
    assert {"policies.builtin", "odhsim.sim.run", "runtime.serve", "odhsim.cli", "odhsim.results.status"} <= set(GRAPH)
    assert any(i.target == "odhsim.sim.run" and i.deferred for i in GRAPH["odhsim.commands.run"])


def test_every_module_is_in_a_layer_and_imports_only_layers_below_or_beside_it() -> None:
    assert layering_violations(GRAPH) == []


def test_no_import_cycles() -> None:
    assert import_cycles(GRAPH) == []


_FAKE = {
    "odhsim": "",
    "odhsim.sim": "",
    "odhsim.sim.run": "import runtime.serve\n",
    "odhsim.results": "",
    "odhsim.results.log": "def f():\n    from odhsim.sim import run\n",
    "odhsim.cli": "from runtime import serve\ndef g():\n    import odhsim.sim.run\n",
    "odhsim.scenario": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .. import results\n",
    "odhsim.rng": "",
    "odhsim.analysis": "",
    "runtime": "",
    "runtime.serve": "from odhsim.analysis import compare\nfrom .gateway import core\n",
    "runtime.gateway": "",
    "runtime.gateway.core": "from ..serve import x\n",
    "policies": "",
    "policies.a": "from policies import b\nimport odhsim.rng\n",
    "policies.b": "def f():\n    __import__('policies.a')\n",
}


def _fake_graph() -> dict[str, list[Import]]:
    packages = {m for m in _FAKE if any(o.startswith(m + ".") for o in _FAKE)}
    return {m: imports_of(src, m, m in packages, _FAKE) for m, src in _FAKE.items()}


def test_checker_catches_layering_violations() -> None:
    assert layering_violations(_fake_graph()) == [
        "odhsim.cli:1: cli imports runtime.serve (runtime) at module level",
        "odhsim.results.log:2: base imports odhsim.sim.run (sim)",
        "odhsim.sim.run:1: sim imports runtime.serve (runtime)",
        "policies.a:2: policies imports odhsim.rng (base)",
        "runtime.serve:1: runtime imports odhsim.analysis (tools)",
    ]


def test_checker_finds_cycles_through_deferred_imports_but_not_type_only_ones() -> None:
    assert import_cycles(_fake_graph()) == [["policies.a", "policies.b"], ["runtime.gateway.core", "runtime.serve"]]


def test_the_results_schema_owns_the_statuses_and_logs_any_engines_request() -> None:
    from odhsim.results.record import RequestRecord
    from odhsim.results.request_log import RequestLog
    from odhsim.results.status import STATUS_OK, STATUSES
    from odhsim.sim import request
    from odhsim.workload.schema import RequestBatch

    assert request.STATUSES is STATUSES and request.STATUS_OK is STATUS_OK  # re-exported, not redefined
    log = RequestLog()
    log.append_batch(RequestBatch.from_columns(np.array([0.5]), np.array([100]), np.array([10])))
    rec = RequestRecord(0, start_s=1.0, first_token_s=1.5, replica=0, retries=2, cached_tokens=16, fallback=True)
    log.finish(rec, 3.0, STATUS_OK)
    row = log.to_frame(["m"], ["t"], ["r0"]).iloc[0]
    assert (row["status"], row["retries"], row["cached_tokens"], row["finish_s"]) == ("ok", 2, 16, 3.0)
    assert (row["replica"], bool(row["fallback"]), bool(row["cache_hit"])) == ("r0", True, False)
