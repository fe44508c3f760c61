"""policies/ is pure: no engine, clock or global-randomness imports (walk every module's AST)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

POLICIES = Path(__file__).resolve().parents[1] / "policies"
FORBIDDEN = {"simpy", "torch", "asyncio", "time", "odhsim", "runtime", "random"}
MODULES = sorted(POLICIES.rglob("*.py"))


def _violations(tree: ast.AST) -> list[str]:
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [f"import {a.name}" for a in node.names if a.name.split(".")[0] in FORBIDDEN]
        elif isinstance(node, ast.ImportFrom):
            root = (node.module or "").split(".")[0]
            if node.level == 0 and root in FORBIDDEN:
                out.append(f"from {node.module} import ...")
        elif isinstance(node, ast.Attribute) and node.attr in {"time", "monotonic", "perf_counter"}:
            if isinstance(node.value, ast.Name) and node.value.id == "time":
                out.append(f"time.{node.attr}")
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "__import__":
            out.append("__import__(...)")
    return out


def test_there_are_modules_to_check() -> None:
    names = {p.name for p in MODULES}
    assert {"framework.py", "scorers.py", "pickers.py", "registry.py", "config.py"} <= names


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(POLICIES)))
def test_module_has_no_forbidden_imports(path: Path) -> None:
    tree = ast.parse(path.read_text(), filename=str(path))
    assert _violations(tree) == []


def test_checker_catches_violations() -> None:
    bad = "import simpy\nfrom odhsim.sim import x\nimport time\nt = time.time()\nimport numpy.random\n"
    assert _violations(ast.parse(bad)) == [
        "import simpy",
        "from odhsim.sim import ...",
        "import time",
        "time.time",
    ]


def test_importing_policies_pulls_in_no_engine() -> None:
    code = (
        "import sys, policies.builtin, policies.routing.config, policies.routing.framework\n"
        "bad = [m for m in ('simpy', 'torch', 'asyncio', 'odhsim', 'runtime') if m in sys.modules]\n"
        "print(','.join(bad))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=POLICIES.parent)
    assert done.stdout.strip() == ""
