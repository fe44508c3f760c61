"""Docs that run: every notebook under notebooks/ executes top to bottom without an error."""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from tests.conftest import REPO_ROOT

NOTEBOOKS = sorted((REPO_ROOT / "notebooks").glob("*.ipynb"))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_notebook_executes(path: Path) -> None:
    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}})
    client.execute()
    errors = [
        o for cell in nb.cells if cell.cell_type == "code" for o in cell.get("outputs", []) if o.output_type == "error"
    ]
    assert not errors
    images = [o for cell in nb.cells for o in cell.get("outputs", []) if "image/png" in o.get("data", {})]
    assert len(images) >= 2, "every notebook draws at least two figures (quickstart: TTFT and queue length)"


def test_quickstart_exists() -> None:
    assert (REPO_ROOT / "notebooks" / "quickstart.ipynb") in NOTEBOOKS


def test_capacity_planning_exists() -> None:
    assert (REPO_ROOT / "notebooks" / "capacity_planning.ipynb") in NOTEBOOKS


def test_fidelity_exists() -> None:
    assert (REPO_ROOT / "notebooks" / "fidelity.ipynb") in NOTEBOOKS


def test_resilience_exists() -> None:
    assert (REPO_ROOT / "notebooks" / "resilience.ipynb") in NOTEBOOKS


def test_explain_exists() -> None:
    assert (REPO_ROOT / "notebooks" / "explain.ipynb") in NOTEBOOKS
