"""A fresh clone passes its own tests: the public data is committed under traces/, intact, and nothing skips for
want of it or reads a folder outside the repository."""

from __future__ import annotations

import ast
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from odhsim.errors import CatalogError
from odhsim.workload.catalog import TRACES_DIR, load_catalog, local_copy, sha256_file
from tests.conftest import DATA_DIR, REPO_ROOT, data_file

README = DATA_DIR / "README.md"
NOT_DATA = {"README.md", "catalog.yaml", "NOTICE.md"}  # the folder's own documentation, not copied data
ROW = re.compile(r"^\| `(?P<file>[^`]+)` \|.*\| (?P<bytes>\d+) \| `(?P<sha256>[0-9a-f]{64})` \|$")
DATA_WORDS = re.compile(r"shared|data|trace|present|missing|exists|is_file|\.csv|\.jsonl|perf_model", re.IGNORECASE)
OUTSIDE = re.compile(r"\.\./shared|shared[/\\]data|\"shared\"\s*/\s*\"data\"|parent\s*/\s*\"shared\"")


def readme_table() -> dict[str, tuple[int, str]]:
    """{file relative to traces/: (bytes, sha256)} from the attribution table in traces/README.md."""
    rows = {}
    for line in README.read_text(encoding="utf-8").splitlines():
        if m := ROW.match(line):
            rows[m["file"]] = (int(m["bytes"]), m["sha256"])
    return rows


def test_the_attribution_table_lists_every_committed_data_file() -> None:
    table = readme_table()
    on_disk = {p.relative_to(DATA_DIR).as_posix() for p in DATA_DIR.rglob("*") if p.is_file()}
    data = {f for f in on_disk if Path(f).name not in NOT_DATA}
    assert set(table) == data
    assert {"mooncake/conversation_trace.jsonl", "splitwise/perf_model.csv", "splitwise/LICENSE"} <= data
    assert sum(size for size, _ in table.values()) < 5_000_000  # the budget: about 4.3 MB


@pytest.mark.parametrize("name", sorted(readme_table()))
def test_committed_file_matches_its_recorded_size_and_sha256(name: str) -> None:
    size, digest = readme_table()[name]
    path = data_file(*name.split("/"))
    assert path.stat().st_size == size  # a CRLF conversion (core.autocrlf) changes the size first
    assert sha256_file(path) == digest


def test_every_data_folder_carries_its_licence() -> None:
    for folder in ("azure_llm_2023", "azure_llm_2024", "mooncake", "splitwise"):
        licences = [p.name for p in (DATA_DIR / folder).glob("LICENSE*")]
        assert len(licences) == 1, folder
    for folder in ("azure_llm_2023", "azure_llm_2024"):  # CC-BY-4.0 requires the attribution
        notice = (DATA_DIR / folder / "NOTICE.md").read_text(encoding="utf-8")
        assert "creativecommons.org/licenses/by/4.0" in notice and "Cite:" in notice
    assert "Copyright (c) 2024 Pratyush Patel" in (DATA_DIR / "splitwise" / "LICENSE").read_text(encoding="utf-8")


def test_catalogue_entries_with_a_committed_copy_match_it() -> None:
    catalog = load_catalog()
    local = {name: e for name, e in catalog.items() if e.local is not None}
    assert set(local) == {"azure-2023-conv", "azure-2023-code", "mooncake-conversation"}
    assert TRACES_DIR == DATA_DIR
    for entry in local.values():
        path = local_copy(entry)
        assert path.name == entry.filename
        assert (path.stat().st_size, sha256_file(path)) == (entry.bytes, entry.sha256)
        assert readme_table()[entry.local] == (entry.bytes, entry.sha256)
    with pytest.raises(CatalogError, match=r"azure-2024-conv: no committed copy; .*traces fetch azure-2024-conv"):
        local_copy(catalog["azure-2024-conv"])


def test_a_missing_committed_copy_is_named(tmp_path: Path) -> None:
    entry = load_catalog()["mooncake-conversation"]
    missing = tmp_path / "mooncake" / "conversation_trace.jsonl"
    with pytest.raises(CatalogError, match=f"mooncake-conversation: committed copy missing: {re.escape(str(missing))}"):
        local_copy(entry, tmp_path)


def test_the_data_helper_fails_instead_of_skipping() -> None:
    with pytest.raises(pytest.fail.Exception, match=r"committed data file missing: .*no_such_trace\.csv"):
        data_file("no_such_trace.csv")
    assert data_file("mooncake", "conversation_trace.jsonl") == DATA_DIR / "mooncake" / "conversation_trace.jsonl"


def _skip_calls(tree: ast.AST) -> list[str]:
    """Source of every skip in a test module: the call, plus the `if` test that guards a `pytest.skip(...)`."""
    found = []

    def is_skip(node: ast.AST) -> bool:
        return isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and "skip" in node.func.attr

    for node in ast.walk(tree):
        if is_skip(node):
            found.append(ast.unparse(node))
        elif isinstance(node, ast.If) and any(is_skip(n) for stmt in node.body for n in ast.walk(stmt)):
            found.append(ast.unparse(node.test))
    return found


def test_no_test_skips_for_want_of_data() -> None:
    modules = sorted((REPO_ROOT / "tests").rglob("*.py"))
    assert len(modules) > 20
    offending = {
        f"{m.relative_to(REPO_ROOT)}: {s}"
        for m in modules
        if m.name != Path(__file__).name
        for s in _skip_calls(ast.parse(m.read_text(encoding="utf-8")))
        if DATA_WORDS.search(s)
    }
    assert not offending, sorted(offending)


def test_the_skip_scan_catches_a_data_skip() -> None:
    """The scan above must be able to fail: the old helper and marker would have been caught."""
    old = (
        "def shared_file(p):\n    if not p.exists():\n        pytest.skip(f'shared data not available: {p}')\n"
        "@pytest.mark.skipif(not PERF_CSV.exists(), reason='not present')\ndef test_x(): pass\n"
    )
    assert len([s for s in _skip_calls(ast.parse(old)) if DATA_WORDS.search(s)]) == 3
    redis = "if shutil.which('redis-server') is None:\n    pytest.skip('redis-server is not installed')\n"
    assert not [s for s in _skip_calls(ast.parse(redis)) if DATA_WORDS.search(s)]


def _project_files() -> list[Path]:
    """Tracked and untracked-but-not-ignored files (git), or every file outside hidden and cache folders."""
    try:
        out = subprocess.run(
            ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
            cwd=REPO_ROOT,
            capture_output=True,
            check=True,
            timeout=60,
        ).stdout
        files = [REPO_ROOT / f for f in out.decode().split("\0") if f]
    except (OSError, subprocess.SubprocessError):  # an unpacked archive without .git
        skip = {"__pycache__", "results", "out", "build"}
        files = [
            p
            for p in REPO_ROOT.rglob("*")
            if not any(part.startswith(".") or part in skip for part in p.relative_to(REPO_ROOT).parts[:-1])
        ]
    return [f for f in files if f.is_file() and f.suffix not in {".csv", ".jsonl", ".parquet", ".png"}]


def test_nothing_in_the_project_reads_outside_the_repository() -> None:
    files = _project_files()
    assert any(f.name == "conftest.py" for f in files)
    hits = [
        f"{f.relative_to(REPO_ROOT)}:{n}: {line.strip()}"
        for f in files
        for n, line in enumerate(f.read_text(encoding="utf-8", errors="replace").splitlines(), 1)
        if OUTSIDE.search(line)
    ]
    assert not hits, hits


def test_the_outside_pattern_catches_the_old_paths() -> None:
    old = [  # assembled from parts so that this file itself stays clean of them
        "/".join(["path: ..", "..", "shared", "data", "traces", "mooncake", "conversation_trace.jsonl"]),
        " / ".join(["SHARED = REPO_ROOT.parent", '"shared"', '"data"']),
        "/".join(["See `..", "shared", "docs", "ARCHITECTURE.md`"]),
    ]
    assert all(OUTSIDE.search(line) for line in old)
    assert not OUTSIDE.search("a shared prefix; shared_tier = data")


def _workload_paths(node: Any) -> list[str]:
    if isinstance(node, dict):
        return [v for k, v in node.items() if k == "path" and isinstance(v, str)] + [
            p for v in node.values() for p in _workload_paths(v)
        ]
    if isinstance(node, list):
        return [p for v in node for p in _workload_paths(v)]
    return []


def test_scenarios_read_the_repository_copies() -> None:
    used = {}
    for scenario in sorted((REPO_ROOT / "scenarios").glob("*.yaml")):
        doc = yaml.safe_load(scenario.read_text(encoding="utf-8")) or {}
        for rel in _workload_paths(doc.get("workload", {})):
            path = (scenario.parent / rel).resolve()
            assert path.is_file() and path.is_relative_to(REPO_ROOT), f"{scenario.name}: {rel}"
            used[scenario.name] = path
    assert used["mooncake_prefix.yaml"] == DATA_DIR / "mooncake" / "conversation_trace.jsonl"
