"""Scenario validation beyond the schema: non-finite numbers, vLLM's tp and block_size rules, workload model
names, duplicate keys, --set blame, did-you-mean for unknown keys, trace files checked by `odhsim validate`,
and warnings (as data) for valid but enormous runs."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from odhsim.cli import app
from odhsim.errors import ScenarioError
from odhsim.scenario.load import load_scenario
from tests.conftest import REPO_ROOT

DEFAULT = REPO_ROOT / "scenarios" / "default.yaml"
TEXT = DEFAULT.read_text()
runner = CliRunner()


def line_of(text: str, needle: str) -> int:
    return next(i for i, line in enumerate(text.splitlines(), 1) if needle in line)


def scenario(tmp_path: Path, old: str, new: str, name: str = "s.yaml") -> Path:
    assert old in TEXT, old
    path = tmp_path / name
    path.write_text(TEXT.replace(old, new, 1))
    return path


def error_of(path: Path, overrides: list[str] | None = None, *, check_files: bool = False) -> str:
    with pytest.raises(ScenarioError) as info:
        load_scenario(path, overrides, check_files=check_files)
    return str(info.value)


def validate(*args: str) -> tuple[int, str]:
    result = runner.invoke(app, ["validate", *args])
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    return result.exit_code, result.output


# --- non-finite numbers --------------------------------------------------------------------------------------
@pytest.mark.parametrize("value", [".inf", ".nan", "-.inf", "1.0e999"])
def test_non_finite_duration_in_the_file_names_file_line_and_field(tmp_path: Path, value: str) -> None:
    path = scenario(tmp_path, "duration_s: 600\n", f"duration_s: {value}\n")
    msg = error_of(path)
    assert msg.startswith(f"{path} line {line_of(TEXT, 'duration_s: 600')}: duration_s: ")
    assert "not a finite number" in msg


@pytest.mark.parametrize("value", ["inf", ".inf", "nan", "Infinity"])
def test_non_finite_duration_from_set_blames_the_set(value: str) -> None:
    msg = error_of(DEFAULT, [f"duration_s={value}"])
    assert msg.startswith(f"--set duration_s={value}: duration_s: ") and "finite number" in msg
    assert "line" not in msg


def test_non_finite_number_anywhere_is_refused(tmp_path: Path) -> None:
    """Policy params are free-form dicts and ttl_s a policies/ model: the walk finds them all the same."""
    path = scenario(
        tmp_path, "  router: {profile: llm-d-default}\n",
        "  router: {profile: llm-d-default}\n  flow_control: {ttl_s: {low: .inf}}\n",
    )  # fmt: skip
    msg = error_of(path)
    assert f"line {line_of(TEXT, 'router:') + 1}: gateway.flow_control.ttl_s.low: inf is not a finite number" in msg
    msg = error_of(DEFAULT, ["models[0].autoscaling={type: kpa, params: {target: .nan}}"])
    assert "models[0].autoscaling.params.target: nan is not a finite number" in msg


def test_validate_command_refuses_infinite_duration_with_exit_2() -> None:
    code, out = validate(str(DEFAULT), "--set", "duration_s=inf")
    assert code == 2 and "duration_s" in out and "finite" in out and "Traceback" not in out


# --- warnings for valid but enormous runs --------------------------------------------------------------------
def validation_warnings(sc: object) -> list[str]:
    from odhsim.scenario.checks import validation_warnings as warnings_of  # new in this change

    return warnings_of(sc)  # type: ignore[arg-type]


def test_default_scenario_has_no_warnings() -> None:
    assert validation_warnings(load_scenario(DEFAULT)) == []


def test_huge_duration_warns_with_expected_requests_and_buckets() -> None:
    sc = load_scenario(DEFAULT, ["duration_s=1.0e9"])
    (warning,) = validation_warnings(sc)
    # gamma source: 5.6 req/s for its own 600 s; the run still lasts 1e9 s, sampled every 10 s
    assert warning.startswith("duration_s: 1e+09 s (31.7 years")
    assert "about 3,360 requests expected" in warning and "100,000,000 timeseries buckets of 10 s" in warning
    assert "arrivals end at about 600 s" in warning


def test_many_requests_warn() -> None:
    long_and_fast = ["duration_s=1.0e6", "workload.sources[0].duration_s=1.0e6", "workload.sources[0].rate=20"]
    warnings = validation_warnings(load_scenario(DEFAULT, long_and_fast))
    assert len(warnings) == 2 and "about 20,000,000 requests expected" in warnings[1]
    capped = load_scenario(DEFAULT, [*long_and_fast, "workload.max_requests=1000"])
    assert len(validation_warnings(capped)) == 1 and "about 1,000 requests" in validation_warnings(capped)[0]


# --- vLLM's rules --------------------------------------------------------------------------------------------
def test_tp_must_divide_the_attention_heads(tmp_path: Path) -> None:
    path = scenario(tmp_path, "    tp: 1\n", "    tp: 3\n")
    msg = error_of(path)
    assert (
        f"line {line_of(TEXT, '    tp: 1')}: models[0].tp: model 'chat': tp=3 does not divide llama3.1-8b's 32" in msg
    )
    assert "[1, 2, 4, 8, 16, 32]" in msg
    assert load_scenario(DEFAULT, ["models[0].tp=2"]).models[0].tp == 2


def test_tp_must_suit_the_kv_heads() -> None:
    """llama3.2-3b: 24 attention heads (6 divides them) but 8 KV heads (6 neither divides nor is a multiple)."""
    msg = error_of(DEFAULT, ["models[0].profile=llama3.2-3b", "models[0].tp=6", "models[0].replicas=1"])
    assert "tp=6 neither divides llama3.2-3b's 8 KV heads nor is a multiple of them" in msg
    assert "vLLM allows tp in [1, 2, 4, 8, 24]" in msg  # 24: each of the 8 KV heads replicated on 3 ranks
    assert load_scenario(DEFAULT, ["models[0].profile=llama3.2-3b", "models[0].tp=8", "models[0].replicas=1"])


def test_canary_tp_is_checked_too() -> None:
    msg = error_of(DEFAULT, ["models[0].replicas=1", "models[0].canary={version: v2, traffic_percent: 10, tp: 3}"])
    assert "models[0].canary.tp: model 'chat': tp=3 does not divide" in msg


def test_block_size_must_be_one_vllm_accepts() -> None:
    for size in (7, 0, 12, 512):
        msg = error_of(DEFAULT, [f"models[0].engine.block_size={size}"])
        assert (
            f"models[0].engine.block_size: block_size {size} is not one vLLM accepts: 1, 8, 16, 32, 64, 128, 256" in msg
        )
    for size in (1, 8, 32, 128, 256):
        assert load_scenario(DEFAULT, [f"models[0].engine.block_size={size}"]).models[0].engine.block_size == size


# --- names, keys, --set ---------------------------------------------------------------------------------------
def test_unknown_model_in_workload_models(tmp_path: Path) -> None:
    path = scenario(tmp_path, "  models: {chat: 1.0}\n", "  models: {chat: 0.5, chatt: 0.5}\n")
    msg = error_of(path)
    assert f"line {line_of(TEXT, '  models: {chat: 1.0}')}: workload.models.chatt: unknown model 'chatt'" in msg
    assert "known: chat" in msg
    code, out = validate(str(path))
    assert code == 2 and "unknown model 'chatt'" in out


def test_unknown_model_in_a_source_models() -> None:
    msg = error_of(DEFAULT, ["workload.sources[0].models={summarise: 1}"])
    assert "workload.sources[0].models.summarise: unknown model 'summarise'" in msg


def test_duplicate_keys_are_refused_with_both_lines(tmp_path: Path) -> None:
    path = scenario(tmp_path, "    replicas: 4\n", "    replicas: 4\n    replicas: 2\n")
    first = line_of(TEXT, "    replicas: 4")
    msg = error_of(path)
    assert f"line {first + 1}: invalid YAML: duplicate key 'replicas' (first given on line {first})" in msg
    flow = scenario(tmp_path, "  models: {chat: 1.0}\n", "  models: {chat: 1.0, chat: 2.0}\n", "flow.yaml")
    assert "duplicate key 'chat'" in error_of(flow)
    assert "duplicate key 'a'" in error_of(DEFAULT, ["workload.models={a: 1, a: 2}"])


def test_set_on_a_missing_path_blames_the_set_not_a_line() -> None:
    msg = error_of(DEFAULT, ["models[0].replicaz=1"])
    assert msg == "--set models[0].replicaz=1: models[0].replicaz: unknown field 'replicaz'; did you mean 'replicas'?"
    msg = error_of(DEFAULT, ["nope.x=1"])
    assert msg.startswith("--set nope.x=1: nope: unknown field 'nope'; known: name, description")


# --- did you mean ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("models[0].engine.max_num_seq=8", "models[0].engine.max_num_seq: unknown field 'max_num_seq'; did you mean "
                                           "'max_num_seqs'?"),
        ("gateway.router.profil=round-robin", "gateway.router.profil: unknown field 'profil'; did you mean 'profile'?"),
        ("workload.sources[0].rat=2", "workload.sources[0].rat: unknown field 'rat'; did you mean 'rate'?"),
        ("workload.sources[0].prompt_tokens.sigm=2", "workload.sources[0].prompt_tokens.sigm: unknown field 'sigm'; "
                                                    "did you mean 'sigma'?"),
        ("gpu_pool[0].gpus_per_nod=8", "gpu_pool[0].gpus_per_nod: unknown field 'gpus_per_nod'; did you mean "
                                       "'gpus_per_node'?"),
        ("models[0].autoscaling={type: kpa, params: {min_replica: 1}}",
         "invalid params for autoscaler 'kpa': min_replica: unknown parameter; did you mean 'min_replicas'?"),
    ],
)  # fmt: skip
def test_unknown_keys_suggest_the_closest_field(override: str, expected: str) -> None:
    assert expected in error_of(DEFAULT, [override])


def test_unknown_key_in_the_file_names_its_own_line_without_the_union_tag(tmp_path: Path) -> None:
    path = scenario(tmp_path, "      cv: 2.0\n", "      cv: 2.0\n      rat: 3\n")
    msg = error_of(path)
    line = line_of(TEXT, "      cv: 2.0") + 1
    assert msg == f"{path} line {line}: workload.sources[0].rat: unknown field 'rat'; did you mean 'rate'?"


# --- trace files, checked by validate -------------------------------------------------------------------------
def trace_scenario(tmp_path: Path, trace: str, body: str | None) -> Path:
    if body is not None:
        (tmp_path / trace).write_text(body)
    old = TEXT[TEXT.index("    - kind: gamma") : TEXT.index("  models: {chat: 1.0}")]
    path = tmp_path / "t.yaml"
    path.write_text(TEXT.replace(old, f"    - kind: trace\n      path: {trace}\n", 1))
    return path


def test_validate_refuses_a_missing_trace_file(tmp_path: Path) -> None:
    path = trace_scenario(tmp_path, "absent.csv", None)
    line = line_of(path.read_text(), "path: absent.csv")
    msg = error_of(path, check_files=True)
    assert msg.startswith(f"{path} line {line}: workload.sources[0].path: ") and "trace file not found" in msg
    load_scenario(path)  # without check_files nothing is opened
    code, out = validate(str(path))
    assert code == 2 and "trace file not found" in out and "Traceback" not in out


def test_validate_refuses_a_trace_lacking_a_column(tmp_path: Path) -> None:
    path = trace_scenario(tmp_path, "t.csv", "arrival_s,prompt_tokens\n0,5\n")
    msg = error_of(path, check_files=True)
    assert "workload.sources[0].path: " in msg and "missing column(s) ['output_tokens']" in msg
    code, _ = validate(str(path))
    assert code == 2


def test_validate_refuses_a_header_only_trace_and_reads_only_the_start(tmp_path: Path) -> None:
    path = trace_scenario(tmp_path, "t.csv", "arrival_s,prompt_tokens,output_tokens\n\n")
    assert "no data rows after its header" in error_of(path, check_files=True)
    code, out = validate(str(path))
    assert code == 2 and "no data rows" in out
    # a bad row further down is the run's business: validate checks header and first row, cheaply
    rows = "".join(f"{i},5,5\n" for i in range(1000)) + "x,5,5\n"
    (tmp_path / "t.csv").write_text("arrival_s,prompt_tokens,output_tokens\n" + rows)
    code, out = validate(str(path))
    assert code == 0, out


def test_validate_checks_resampled_traces(tmp_path: Path) -> None:
    msg = error_of(
        DEFAULT,
        ["workload.sources[0].prompt_tokens={dist: resample, path: none.csv, column: prompt}"],
        check_files=True,
    )
    assert msg.startswith("--set workload.sources[0].prompt_tokens=") and "trace file not found" in msg


def test_run_refuses_a_header_only_trace(tmp_path: Path) -> None:
    path = trace_scenario(tmp_path, "t.csv", "arrival_s,prompt_tokens,output_tokens\n")
    result = runner.invoke(app, ["run", "--quiet", str(path)])
    assert result.exit_code == 2 and "no data rows" in result.output
