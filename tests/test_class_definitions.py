"""Priority classes and their default SLO targets are defined once (policies/flowcontrol/priority.py), and a
scenario's `slos` section merges over the defaults target by target."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from odhsim.errors import ScenarioError
from odhsim.scenario.load import scenario_from_dict
from odhsim.scenario.model import Slo, default_slos
from policies.flowcontrol import priority

ROOT = Path(__file__).resolve().parents[1]
CLASSES = ("critical", "high", "normal", "low")


def _scenario(slos: object = None) -> dict:
    doc: dict = {
        "name": "slos",
        "gpu_pool": [{"gpu": "T4", "count": 1}],
        "models": [
            {
                "name": "clf",
                "kind": "fixed",
                "gpu": "T4",
                "replicas": 1,
                "service_time": {"dist": "exponential", "mean_s": 0.05},
            }
        ],
        "workload": {"sources": [{"kind": "poisson", "rate": 1.0, "duration_s": 1.0}]},
    }
    if slos is not None:
        doc["slos"] = slos
    return doc


def _class_tuples(tree: ast.AST) -> list[int]:
    """Lines holding a literal tuple or list of exactly the four class names."""
    return [
        node.lineno
        for node in ast.walk(tree)
        if isinstance(node, ast.Tuple | ast.List)
        and len(node.elts) == 4
        and all(isinstance(e, ast.Constant) for e in node.elts)
        and tuple(e.value for e in node.elts) == CLASSES  # type: ignore[attr-defined]
    ]


def test_the_class_tuple_is_written_once() -> None:
    found = {
        f"{path.relative_to(ROOT)}:{line}"
        for pkg in ("policies", "odhsim", "runtime")
        for path in sorted((ROOT / pkg).rglob("*.py"))
        for line in _class_tuples(ast.parse(path.read_text()))
    }
    assert found == {
        f"policies/flowcontrol/priority.py:{_class_tuples(ast.parse(Path(priority.__file__).read_text()))[0]}"
    }


def test_every_place_uses_the_one_tuple_and_the_one_slo_table() -> None:
    from odhsim.workload import schema

    assert schema.PRIORITY_CLASSES is priority.PRIORITY_CLASSES
    assert tuple(priority.DEFAULT_SLOS) == priority.PRIORITY_CLASSES
    assert {c: (s.ttft_s, s.e2e_s) for c, s in default_slos().items()} == {
        "critical": (1.0, 30.0),
        "high": (3.0, 60.0),
        "normal": (10.0, 120.0),
        "low": (None, None),
    }
    assert dict(priority.LATENCY_TARGETS_S) == {"critical": 1.0, "high": 3.0, "normal": 10.0, "low": float("inf")}


def test_no_slos_section_gives_the_defaults() -> None:
    assert scenario_from_dict(_scenario()).slos == default_slos()


def test_a_slos_section_merges_over_the_defaults_target_by_target() -> None:
    sc = scenario_from_dict(_scenario({"critical": {"ttft_s": 0.5}, "normal": {"e2e_s": None}, "low": {"e2e_s": 600}}))
    assert list(sc.slos) == list(CLASSES)
    assert sc.slo_for("critical") == Slo(ttft_s=0.5, e2e_s=30.0)  # e2e keeps its default
    assert sc.slo_for("high") == Slo(ttft_s=3.0, e2e_s=60.0)  # left out: the defaults
    assert sc.slo_for("normal") == Slo(ttft_s=10.0, e2e_s=None)  # null removes a target
    assert sc.slo_for("low") == Slo(ttft_s=None, e2e_s=600.0)
    again = scenario_from_dict({**_scenario(), "slos": sc.model_dump()["slos"]})
    assert again.slos == sc.slos  # a dumped scenario loads back to the same targets


def test_a_slos_section_still_refuses_unknown_classes_and_bad_targets() -> None:
    with pytest.raises(ScenarioError, match="unknown priority class 'urgent'"):
        scenario_from_dict(_scenario({"urgent": {"ttft_s": 1.0}}))
    with pytest.raises(ScenarioError, match=r"slos\.critical\.ttft_s"):
        scenario_from_dict(_scenario({"critical": {"ttft_s": -1.0}}))
