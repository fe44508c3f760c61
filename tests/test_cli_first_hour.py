"""A newcomer's first hour with the CLI (issue 13): no silent wrong answers, no late tracebacks, text that survives
rich markup and pipes, reports as JSON, and `odhsim list` to find what a scenario may name."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from odhsim.cli import app
from tests.conftest import REPO_ROOT, data_file

runner = CliRunner()
DEFAULT = REPO_ROOT / "scenarios" / "default.yaml"
SHORT = ["--set", "duration_s=30", "--set", "workload.sources[0].duration_s=30"]


def _scenario(tmp_path: Path, name: str = "two.yaml", **changes: Any) -> Path:
    """default.yaml with a second model `big` (llama3-70b on one A100: rejected at deploy) taking 30% of traffic."""
    doc = yaml.safe_load(DEFAULT.read_text())
    doc["duration_s"] = 30
    doc["workload"]["sources"][0]["duration_s"] = 30
    doc["models"].append(
        {"name": "big", "kind": "llm", "profile": "llama3-70b", "gpu": "A100-80GB", "tp": 1, "replicas": 1}
    )
    doc["workload"]["models"] = {"chat": 0.7, "big": 0.3}
    doc.update(changes)
    path = tmp_path / name
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def _no_simulation(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make any simulation fail the test: the checks under test must come before the run."""

    import odhsim.analysis.compare  # binds `simulate` at import: imported first, so the patch is undone for it too

    def refuse(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("the simulation ran before the bad option was reported")

    monkeypatch.setattr("odhsim.sim.run.simulate", refuse)
    # compare now imports simulate where it runs a job (odhsim.experiments.jobs); an older binding is patched too
    monkeypatch.setattr(odhsim.analysis.compare, "simulate", refuse, raising=False)


# --- a run in which no model can serve ---------------------------------------------------------------------------


def test_run_with_no_replicas_and_no_autoscaler_exits_3_naming_the_model() -> None:
    result = runner.invoke(app, ["run", "--quiet", *SHORT, "--set", "models[0].replicas=0"])
    assert result.exit_code == 3, result.output
    assert "model chat could not serve: replicas: 0 and no autoscaler" in result.output
    assert "no model could serve any request" in result.output and "--allow-empty" in result.output
    accepted = runner.invoke(app, ["run", "--quiet", *SHORT, "--set", "models[0].replicas=0", "--allow-empty"])
    assert accepted.exit_code == 0, accepted.output
    assert "model chat could not serve" in accepted.output


def test_run_of_a_model_rejected_at_deploy_exits_3_with_the_rejection(tmp_path: Path) -> None:
    out = tmp_path / "out"
    args = ["run", "--quiet", *SHORT, "--set", "models[0].profile=llama3-70b", "--out", str(out)]
    result = runner.invoke(app, args)
    assert result.exit_code == 3, result.output
    assert "model chat could not serve: deploy rejected: llama3-70b" in result.output
    assert "does not fit 1 x A100-80GB" in result.output
    summary = json.loads((out / "summary.json").read_text())  # the results are still written, to look into
    assert list(summary["unserved_models"]) == ["chat"]


def test_one_model_unserved_while_another_serves_warns_and_exits_0(tmp_path: Path) -> None:
    result = runner.invoke(app, ["run", "--quiet", str(_scenario(tmp_path))])
    assert result.exit_code == 0, result.output
    assert "model big could not serve: deploy rejected: llama3-70b" in result.output
    assert "model chat could not serve" not in result.output
    assert "no model could serve" not in result.output


# --- --out and --seed are checked before anything runs ------------------------------------------------------------


@pytest.mark.parametrize("command", [["run", "--quiet", *SHORT], ["compare", str(DEFAULT), "--policy", "a=random"]])
def test_out_naming_a_file_or_a_path_under_a_file_fails_before_running(
    command: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _no_simulation(monkeypatch)
    a_file = tmp_path / "results.txt"
    a_file.write_text("not a folder\n")
    for out, says in ((a_file, "is a file; give a folder"), (a_file / "run1", "is a file, so no folder")):
        result = runner.invoke(app, [*command, "--out", str(out)])
        assert result.exit_code == 2, result.output
        assert f"--out {out}" in result.output and says in result.output
        assert "Traceback" not in result.output


def test_bench_out_naming_a_folder_fails_before_running(tmp_path: Path) -> None:
    start = time.perf_counter()
    result = runner.invoke(app, ["bench", "--out", str(tmp_path)])
    assert result.exit_code == 2, result.output
    assert "is a folder; give a file name" in result.output
    assert time.perf_counter() - start < 5  # the benchmark cases did not run


@pytest.mark.parametrize(
    "command",
    [
        ["run", "--quiet", "--seed", "-1"],
        ["cost", str(DEFAULT), "--seed", "-1"],
        ["run", "--quiet", "--set", "seed=-1"],
        ["compare", str(DEFAULT), "--policy", "a=random", "--set", "seed=-1"],
    ],
)
def test_negative_seed_is_refused_before_running(command: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    _no_simulation(monkeypatch)
    result = runner.invoke(app, command)
    assert result.exit_code == 2, result.output
    assert "-1" in result.output and "non-negative" in result.output
    assert "Traceback" not in result.output


# --- bracketed text survives rich markup ---------------------------------------------------------------------------


def test_paths_and_names_with_brackets_are_printed_verbatim(tmp_path: Path) -> None:
    folder = tmp_path / "[live]" / "[bold]x"
    folder.mkdir(parents=True)
    scenario = folder / "ok.yaml"
    scenario.write_text(DEFAULT.read_text().replace("name: default", "name: demo[red]"))
    ok = runner.invoke(app, ["validate", str(scenario)])
    assert ok.exit_code == 0, ok.output
    assert f"{scenario}: ok (demo[red]:" in ok.output
    missing = runner.invoke(app, ["validate", str(folder / "missing.yaml")])
    assert missing.exit_code == 2
    assert str(folder / "missing.yaml") in missing.output
    run = runner.invoke(app, ["run", "--quiet", str(scenario), *SHORT])
    assert run.exit_code == 0, run.output
    assert "demo[red] (seed 42)" in run.output


# --- huge durations: warned before the run, and the progress bar moves ----------------------------------------------


def test_validate_and_run_print_the_scenario_warnings(tmp_path: Path) -> None:
    result = runner.invoke(app, ["validate", str(DEFAULT), "--set", "duration_s=1e9"])
    assert result.exit_code == 0, result.output
    assert "warning: duration_s: 1e+09 s" in result.output


@pytest.mark.timeout(120)
def test_progress_moves_within_seconds_on_a_1e9_s_horizon() -> None:
    from odhsim.scenario.load import load_scenario
    from odhsim.sim.run import simulate

    sc = load_scenario(DEFAULT, ["duration_s=1e9"])
    calls: list[tuple[float, float, int]] = []
    start = time.perf_counter()

    class Enough(Exception):
        pass

    def progress(now: float, horizon: float | None, arrived: int) -> None:
        calls.append((time.perf_counter() - start, now, arrived))
        if len(calls) == 5:
            raise Enough

    with pytest.raises(Enough):
        simulate(sc, progress=progress)
    assert calls[0][0] < 5.0  # the first report comes within seconds, not after 5e6 simulated seconds
    assert [c[1] for c in calls] == sorted(c[1] for c in calls) and calls[-1][1] > 0
    assert calls[-1][1] < 1e6  # reports come at simulated times a user can follow
    assert calls[-1][2] > 0


# --- summary: warnings after the table, SLOs used, per model ----------------------------------------------------------


def test_run_warnings_are_printed_after_the_summary_table() -> None:
    result = runner.invoke(app, ["run", "--quiet", *SHORT, "--set", "workload.prefix=null"])
    assert result.exit_code == 0, result.output
    assert "warning: routing uses prefix plugins" in result.output
    assert result.output.index("warning: routing uses prefix plugins") > result.output.index("sim_requests_per_wall_s")


def test_compare_prints_each_variants_run_warnings() -> None:
    args = ["compare", str(DEFAULT), "--policy", "rr=round-robin", "--policy", "pa=prefix-aware", "--seeds", "1"]
    result = runner.invoke(app, [*args, *SHORT, "--set", "workload.prefix=null"])
    assert result.exit_code == 0, result.output
    assert "warning (pa): routing uses prefix plugins (prefix-cache-scorer) of prefix-aware" in result.output
    assert "warning (rr)" not in result.output


def test_run_table_has_per_model_columns_slo_missed_and_the_slos_used(tmp_path: Path) -> None:
    path = _scenario(tmp_path)
    doc = yaml.safe_load(path.read_text())
    doc["models"][1].update(profile="llama3.1-8b", replicas=2)  # now both models serve
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    result = runner.invoke(app, ["run", "--quiet", str(path)])
    assert result.exit_code == 0, result.output
    header = next(line for line in result.output.splitlines() if "metric" in line)
    assert "all models" in header and "chat" in header and "big" in header
    assert any(line.split("│")[1].strip() == "slo_missed" for line in result.output.splitlines() if "│" in line)
    assert "SLOs (TTFT / end-to-end) per priority class: critical 1 s / 30 s, high 3 s / 60 s" in result.output


def test_run_json_prints_the_summary_alone_on_stdout() -> None:
    result = runner.invoke(app, ["run", "--quiet", *SHORT, "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["by_model"]["chat"]["requests"] == summary["requests"] > 0
    assert summary["slos"]["normal"] == {"ttft_s": 10.0, "e2e_s": 120.0}


# --- piped output is not cut at 80 columns ----------------------------------------------------------------------------


def _odhsim_piped(*args: str) -> str:
    """The CLI of this checkout (cwd first on sys.path) with stdout a pipe, as `odhsim ... | less` has it."""
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES")}
    code = "import sys; from odhsim.cli import main; sys.argv[0] = 'odhsim'; main()"
    proc = subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, text=True, env=env, cwd=REPO_ROOT, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_piped_tables_are_not_cut_at_80_columns() -> None:
    out = _odhsim_piped("traces", "list")
    assert (
        "https://raw.githubusercontent.com/Azure/AzurePublicDataset/master/data/AzureLLMInferenceTrace_conv.csv" in out
    )
    assert "…" not in out
    assert max(len(line) for line in out.splitlines()) > 80


def test_a_console_takes_its_width_when_it_prints_not_when_it_is_made(monkeypatch: pytest.MonkeyPatch) -> None:
    """The commands' consoles are module-level: one made under another command's $COLUMNS must not keep it
    (under pytest-xdist an explain table was cut at 80 columns because of the test that imported it first)."""
    from odhsim.cli_support import PIPED_WIDTH, make_console

    monkeypatch.setenv("COLUMNS", "60")
    console = make_console()
    assert console.width == 60
    monkeypatch.setenv("COLUMNS", "200")
    assert console.width == 200
    monkeypatch.delenv("COLUMNS")
    assert console.width == PIPED_WIDTH  # pytest's stdout is not a terminal


# --- reports as JSON -----------------------------------------------------------------------------------------------


def test_traces_info_json() -> None:
    path = data_file("azure_llm_2023", "AzureLLMInferenceTrace_conv.csv")
    result = runner.invoke(app, ["traces", "info", str(path), "--json"])
    assert result.exit_code == 0, result.output
    info = json.loads(result.stdout)
    assert info["requests"] == 19366 and info["format"] == "azure2023"


def test_profiles_fit_json() -> None:
    result = runner.invoke(app, ["profiles", "fit", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    overall = next(r for r in report["held_out_error"] if r["model"] == "ALL")
    assert 0 < overall["prefill_mdape_pct"] < 10 and 0 < overall["decode_mdape_pct"] < 10
    assert len(report["coefficients"]) > 3


def test_cost_json() -> None:
    result = runner.invoke(app, ["cost", str(DEFAULT), *SHORT, "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["scenario"] == "default" and report["seed"] == 42
    (chat,) = report["models"]
    assert chat["model"] == "chat" and chat["cost_usd"] > 0 and chat["requests_ok"] > 0
    assert [r["model"] for r in report["rightsizing"]] == ["chat"]


# --- odhsim list ------------------------------------------------------------------------------------------------------


def test_list_autoscalers_gives_parameters_and_defaults() -> None:
    result = runner.invoke(app, ["list", "autoscalers", "--json"])
    assert result.exit_code == 0, result.output
    rows = {r["name"]: r for r in json.loads(result.stdout)}
    assert set(rows) == {"aibrix-apa", "kpa", "llm-d-saturation", "ray-serve", "seed-rule"}
    kpa = {p["name"]: p for p in rows["kpa"]["params"]}
    assert kpa["stable_window_s"]["default"] == 60.0 and kpa["panic_threshold"]["default"] == 2.0
    assert kpa["min_replicas"]["required"] is False


def test_list_policies_table_names_every_kind_and_router_profile() -> None:
    result = runner.invoke(app, ["list", "policies"])
    assert result.exit_code == 0, result.output
    for text in ("queue-scorer", "wfq-class", "shed-sheddable", "threshold=1.0", "llm-d-default", "round-robin"):
        assert text in result.output
    assert "kpa" not in result.output.split()  # autoscalers have their own list
    budget = runner.invoke(app, ["list", "policies", "--json"])
    rows = {(r["kind"], r["name"]): r for r in json.loads(budget.stdout)}
    (param,) = [p for p in rows[("budget", "max-usd-per-hour")]["params"] if p["name"] == "max_usd_per_hour"]
    assert param["required"] is True
    assert "queue-scorer x2" in rows[("router-profile", "llm-d-default")]["description"]


@pytest.mark.parametrize(
    ("what", "expect"), [("gpus", "H100-80GB"), ("profiles", "llama3-70b"), ("traces", "mooncake")]
)
def test_list_gpus_profiles_traces(what: str, expect: str) -> None:
    result = runner.invoke(app, ["list", what, "--json"])
    assert result.exit_code == 0, result.output
    assert any(expect in str(r["name"]) for r in json.loads(result.stdout))


def test_list_unknown_is_a_clear_error() -> None:
    result = runner.invoke(app, ["list", "gpu"])
    assert result.exit_code == 2
    assert "unknown list 'gpu'; choose one of: gpus, profiles, policies, autoscalers, traces" in result.output


def test_validate_for_the_live_engine_refuses_what_serve_would_refuse() -> None:
    """Parity (issue 9): a feature one engine lacks is refused by `validate --engine` for that engine, with why."""
    canary = REPO_ROOT / "scenarios" / "canary.yaml"
    sim = runner.invoke(app, ["validate", str(canary)])
    assert sim.exit_code == 0, sim.output
    live = runner.invoke(app, ["validate", str(canary), "--engine", "live"])
    assert live.exit_code == 2
    assert "models.0.canary" in live.output and "the live engine serves one revision" in live.output
    ok = runner.invoke(app, ["validate", str(REPO_ROOT / "scenarios" / "live.yaml"), "--engine", "live"])
    assert ok.exit_code == 0, ok.output
    bad = runner.invoke(app, ["validate", str(canary), "--engine", "k8s"])
    assert bad.exit_code == 2 and "--engine must be sim or live" in bad.output
