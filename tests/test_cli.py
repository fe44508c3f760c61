"""The command line as a user meets it: the default demo, validation, clear errors without tracebacks."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from odhsim.cli import app
from tests.conftest import REPO_ROOT, data_file

runner = CliRunner()


def test_default_demo_runs_and_writes_results(tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = runner.invoke(app, ["run", "--quiet", "--out", str(out), "--set", "duration_s=120"])
    assert result.exit_code == 0, result.output
    assert "ttft_p50_s" in result.output
    summary = json.loads((out / "summary.json").read_text())
    assert summary["requests"] == summary["completed"] + summary["shed"] + summary["failed"] + summary["timeout"]
    assert summary["requests"] > 300
    assert summary["failed"] == 0  # the default cluster serves every prompt the workload draws
    requests = pd.read_parquet(out / "requests.parquet")
    expected = {
        "request_id", "model", "priority", "tenant", "arrival_s", "first_token_s", "finish_s", "prompt_tokens",
        "output_tokens", "status", "replica", "retries", "cache_hit",
    }  # fmt: skip
    assert expected <= set(requests.columns)
    assert len(requests) == summary["requests"]
    timeseries = pd.read_parquet(out / "timeseries.parquet")
    ts_cols = {
        "time_s",
        "model",
        "arrivals",
        "queue_len",
        "running",
        "ready_replicas",
        "kv_usage",
        "gpu_busy",
        "cost_usd",
    }
    assert ts_cols <= set(timeseries.columns)
    assert timeseries["arrivals"].sum() == summary["requests"]
    assert {"time_s", "model", "replica", "state"} <= set(pd.read_parquet(out / "replicas.parquet").columns)
    assert {"time_s", "kind", "model", "replica", "detail"} <= set(pd.read_parquet(out / "events.parquet").columns)
    assert summary["cost_usd"] > 0 and summary["gpu_hours"] > 0


def test_run_seed_option_changes_results(tmp_path: Path) -> None:
    a = runner.invoke(app, ["run", "--quiet", "--seed", "1", "--set", "duration_s=60", "--out", str(tmp_path / "a")])
    b = runner.invoke(app, ["run", "--quiet", "--seed", "2", "--set", "duration_s=60", "--out", str(tmp_path / "b")])
    assert a.exit_code == b.exit_code == 0
    sa = json.loads((tmp_path / "a" / "summary.json").read_text())
    sb = json.loads((tmp_path / "b" / "summary.json").read_text())
    assert (sa["seed"], sb["seed"]) == (1, 2)
    assert sa["requests"] != sb["requests"] or sa["ttft_p50_s"] != sb["ttft_p50_s"]


def test_validate_ok_and_error_without_traceback(tmp_path: Path) -> None:
    ok = runner.invoke(app, ["validate", str(REPO_ROOT / "scenarios" / "default.yaml")])
    assert ok.exit_code == 0 and "ok" in ok.output
    bad = tmp_path / "bad.yaml"
    bad.write_text((REPO_ROOT / "scenarios" / "default.yaml").read_text().replace("gpu: A100-80GB\n", "gpu: A1000\n"))
    result = runner.invoke(app, ["validate", str(bad)])
    assert result.exit_code == 2
    assert "models[0].gpu: unknown GPU type 'A1000'" in result.output
    assert "Traceback" not in result.output


def test_bad_override_is_a_clear_error() -> None:
    result = runner.invoke(app, ["run", "--quiet", "--set", "models[0].replicas=-3"])
    assert result.exit_code == 2
    assert "models[0].replicas" in result.output and "Traceback" not in result.output


def test_traces_info_on_the_azure_trace() -> None:
    path = data_file("azure_llm_2023", "AzureLLMInferenceTrace_conv.csv")
    result = runner.invoke(app, ["traces", "info", str(path)])
    assert result.exit_code == 0, result.output
    assert "19366" in result.output.replace(",", "")


def test_traces_info_malformed_names_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_text("arrival_s,prompt_tokens,output_tokens\n0.0,10,5\n1.0,abc,5\n")
    result = runner.invoke(app, ["traces", "info", str(bad)])
    assert result.exit_code == 2
    assert "bad.csv" in result.output and "line 3" in result.output and "Traceback" not in result.output


def test_profiles_fit_prints_held_out_error() -> None:
    data_file("splitwise", "perf_model.csv")
    result = runner.invoke(app, ["profiles", "fit"])
    assert result.exit_code == 0, result.output
    assert "target < 10%: ok" in result.output


def test_compare_command_writes_the_comparison(tmp_path: Path) -> None:
    out = tmp_path / "cmp"
    args = ["compare", str(REPO_ROOT / "scenarios" / "default.yaml"), "--policy", "rr=round-robin"]
    args += ["--policy", "llmd=llm-d-default", "--seeds", "2", "--out", str(out)]
    args += ["--set", "duration_s=60", "--set", "workload.sources[0].duration_s=60"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    table = pd.read_csv(out / "comparison.csv")
    assert list(table.columns[:7]) == ["metric", "variant", "value", "diff", "ci_low", "ci_high", "p_value"]
    assert set(table["variant"]) == {"rr", "llmd"}
    assert (out / "comparison.png").read_bytes()[:4] == b"\x89PNG"
    bad = runner.invoke(app, ["compare", str(REPO_ROOT / "scenarios" / "default.yaml"), "--policy", "x=nope"])
    assert bad.exit_code == 2 and "nope" in bad.output and "Traceback" not in bad.output


def test_live_commands_without_the_live_extra_say_how_to_install_it(monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    for name in [m for m in sys.modules if m == "runtime" or m.startswith("runtime.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "fastapi", None)  # as if `pip install -e '.[live]'` had not run
    live = str(REPO_ROOT / "scenarios" / "live.yaml")
    result = runner.invoke(app, ["serve", live], env={"ODHSIM_API_KEYS": "k:t:normal"})
    assert result.exit_code == 2
    assert "missing module 'fastapi'" in result.output and "pip install -e '.[live]'" in result.output
    assert "Traceback" not in result.output
