"""Scenario files: validation errors name file, line and field; --set overrides are validated the same way."""

from __future__ import annotations

from pathlib import Path

import pytest

from odhsim.errors import ScenarioError
from odhsim.scenario.load import load_scenario, parse_path
from tests.conftest import REPO_ROOT

DEFAULT = REPO_ROOT / "scenarios" / "default.yaml"


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    return path


def default_with(tmp_path: Path, old: str, new: str) -> Path:
    text = DEFAULT.read_text()
    assert old in text, old
    return write(tmp_path, text.replace(old, new, 1))


def error_of(path: Path, overrides: list[str] | None = None) -> str:
    with pytest.raises(ScenarioError) as info:
        load_scenario(path, overrides)
    return str(info.value)


def test_default_scenario_is_valid() -> None:
    sc = load_scenario(DEFAULT)
    assert sc.name == "default"
    assert sc.models[0].gpu == "A100-80GB"
    assert sc.gateway.router.profile == "llm-d-default"


def test_unknown_gpu_names_field_line_and_known_types(tmp_path: Path) -> None:
    path = default_with(tmp_path, "    gpu: A100-80GB\n", "    gpu: A1000\n")
    msg = error_of(path)
    line = DEFAULT.read_text().splitlines().index("    gpu: A100-80GB") + 1
    assert f"bad.yaml line {line}: models[0].gpu: unknown GPU type 'A1000'" in msg
    assert "A100-80GB" in msg and "H100-80GB" in msg


def test_unknown_key_is_rejected_with_its_path(tmp_path: Path) -> None:
    path = default_with(tmp_path, "    replicas: 4\n", "    replicas: 4\n    replicaz: 5\n")
    assert "models[0].replicaz: unknown field 'replicaz'" in error_of(path)


def test_wrong_type_and_missing_field(tmp_path: Path) -> None:
    assert "models[0].replicas" in error_of(default_with(tmp_path, "replicas: 4", "replicas: many"))
    text = DEFAULT.read_text().replace("name: default\n", "", 1)
    assert "name: required field is missing" in error_of(write(tmp_path, text))


def test_too_many_gpus_for_the_pool(tmp_path: Path) -> None:
    msg = error_of(DEFAULT, ["models[0].replicas=9"])
    assert "need 9 x A100-80GB" in msg and "gpu_pool has 8" in msg


def test_model_that_does_not_fit_is_rejected_at_deploy_with_the_reason() -> None:
    from odhsim.sim.run import simulate

    sc = load_scenario(DEFAULT, ["models[0].profile=llama2-70b", "duration_s=30", "workload.sources[0].duration_s=30"])
    res = simulate(sc)
    deploy = res.events[res.events["kind"] == "deploy"]["detail"].iloc[0]
    assert deploy.startswith("rejected: llama2-70b") and "does not fit 1 x A100-80GB" in deploy and "raise tp" in deploy
    r = res.requests
    assert (r["status"] == "failed").all() and r["reason"].astype(str).str.contains("does not fit").all()
    ok = load_scenario(DEFAULT, ["models[0].profile=llama2-70b", "models[0].tp=2", "models[0].replicas=4"])
    assert ok.models[0].deploy_verdict()[0]


def test_invalid_yaml_names_the_line(tmp_path: Path) -> None:
    msg = error_of(write(tmp_path, "name: x\nmodels: [\n  - a\n  b: c\n"))
    assert "bad.yaml line" in msg and "invalid YAML" in msg


def test_missing_file() -> None:
    assert "no such scenario file" in error_of(Path("does/not/exist.yaml"))


def test_set_overrides_are_applied_and_validated() -> None:
    sc = load_scenario(DEFAULT, ["seed=7", "gateway.router.profile=round-robin", "models[0].engine.block_size=32"])
    assert (sc.seed, sc.gateway.router.profile, sc.models[0].engine.block_size) == (7, "round-robin", 32)
    assert "models[0].engine.block_size" in error_of(DEFAULT, ["models[0].engine.block_size=-1"])
    assert "gateway.router" in error_of(DEFAULT, ["gateway.router.profile=no-such-profile"])
    assert "no element models[3]" in error_of(DEFAULT, ["models[3].replicas=1"])
    assert "expected path=value" in error_of(DEFAULT, ["seed"])


@pytest.mark.parametrize(
    ("path", "tokens"),
    [("a", ["a"]), ("models[0].gpu", ["models", 0, "gpu"]), ("a.b[2][1].c", ["a", "b", 2, 1, "c"])],
)
def test_parse_path(path: str, tokens: list[object]) -> None:
    assert parse_path(path) == tokens


@pytest.mark.parametrize("path", ["", "a..b", "a[x]", "[0]a b", "a[0"])
def test_parse_path_rejects_garbage(path: str) -> None:
    with pytest.raises(ScenarioError):
        parse_path(path)


def test_every_shipped_scenario_validates() -> None:
    for path in sorted((REPO_ROOT / "scenarios").glob("*.yaml")):
        load_scenario(path)
