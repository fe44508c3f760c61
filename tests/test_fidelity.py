"""odhsim fidelity: the comparison of two result folders (exact errors on synthetic runs), the CSV, the plots,
and a short real serve + replay + simulate loop on the tiny models."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from odhsim.cli import app
from odhsim.fidelity.compare import COLUMNS, compare_folders, error_pct
from odhsim.fidelity.series import ready_replicas, time_grid, waiting_for_first_token

ARRIVALS = np.array([0.0, 1.0, 2.0, 3.0, 4.0])
TTFT = np.array([0.1, 0.2, 0.3, 0.4, 0.5])
E2E = np.array([1.0, 1.5, 2.0, 2.5, 3.0])


def _requests(ttft_scale: float, e2e_scale: float) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "request_id": np.arange(5),
            "model": "chat",
            "arrival_s": ARRIVALS,
            "start_s": ARRIVALS,
            "first_token_s": ARRIVALS + TTFT * ttft_scale,
            "finish_s": ARRIVALS + E2E * e2e_scale,
            "prompt_tokens": 10,
            "output_tokens": 4,
            "status": "ok",
        }
    )


def _replicas(ready_at: list[float]) -> pd.DataFrame:
    rows = [(0.0 if t > 0 else t, "chat", f"chat-{i}", "loading") for i, t in enumerate(ready_at)]
    rows += [(t, "chat", f"chat-{i}", "ready") for i, t in enumerate(ready_at)]
    return pd.DataFrame(rows, columns=["time_s", "model", "replica", "state"])


def _folder(path: Path, requests: pd.DataFrame, replicas: pd.DataFrame) -> Path:
    path.mkdir(parents=True)
    requests.to_parquet(path / "requests.parquet")
    replicas.to_parquet(path / "replicas.parquet")
    return path


@pytest.fixture
def folders(tmp_path: Path) -> tuple[Path, Path]:
    """sim: TTFT 20% and E2E 4% longer than live, two replicas ready from the start; live: the second at 2.2 s."""
    sim = _folder(tmp_path / "sim", _requests(1.2, 1.04), _replicas([-5.0, -5.0]))
    live = _folder(tmp_path / "live", _requests(1.0, 1.0), _replicas([-5.0, 2.2]))
    return sim, live


def _value(table: pd.DataFrame, metric: str, column: str) -> object:
    return table.loc[table["metric"] == metric, column].iloc[0]


def test_comparison_of_two_synthetic_runs_gives_the_known_errors(folders: tuple[Path, Path]) -> None:
    table, series = compare_folders(*folders, load=0.5, step_s=0.5)
    for metric in ("ttft_p50_s", "ttft_p99_s"):
        assert _value(table, metric, "error_pct") == pytest.approx(20.0)
        assert _value(table, metric, "passed") is False  # 20% > 10%
    for metric in ("e2e_p50_s", "e2e_p99_s"):
        assert _value(table, metric, "error_pct") == pytest.approx(4.0)
    assert _value(table, "e2e_p50_s", "live") == pytest.approx(2.0)
    assert _value(table, "e2e_p50_s", "passed") is True  # 4% <= 5%
    # throughput: 5 ok over first arrival -> last answer: live 4 + 3.0 = 7 s, sim 4 + 3.12 = 7.12 s
    assert _value(table, "throughput_rps", "live") == pytest.approx(5 / 7.0)
    assert _value(table, "throughput_rps", "sim") == pytest.approx(5 / 7.12)
    assert _value(table, "throughput_rps", "error_pct") == pytest.approx(100 * (7.0 / 7.12 - 1))
    assert _value(table, "throughput_rps", "passed") is True  # -1.69%: within 2%
    ready = table[table["metric"] == "ready_replicas"].iloc[0]
    assert ready["model"] == "chat" and ready["abs_diff"] == 1.0 and bool(ready["passed"]) is True
    assert ready["target"] == 1.0
    # before 2.2 s one live replica is ready, then two; the sim had two all along
    assert series.ready_live["chat"][series.grid < 2.2].tolist() == [1] * int((series.grid < 2.2).sum())
    assert set(series.ready_live["chat"][series.grid >= 2.2]) == {2}
    assert set(series.ready_sim["chat"]) == {2}
    assert (table["load"] == 0.5).all()


def test_fidelity_cli_writes_the_csv_and_the_plot(folders: tuple[Path, Path], tmp_path: Path) -> None:
    sim, live = folders
    out = tmp_path / "out"
    res = CliRunner().invoke(app, ["fidelity", "--sim", str(sim), "--live", str(live), "--out", str(out)])
    assert res.exit_code == 0, res.output
    csv = pd.read_csv(out / "fidelity.csv")
    assert list(csv.columns[: len(COLUMNS)]) == COLUMNS
    assert {"ttft_p50_s", "ttft_p99_s", "e2e_p50_s", "e2e_p99_s", "throughput_rps"} <= set(csv["metric"])
    assert csv.loc[csv["metric"] == "ttft_p50_s", "error_pct"].iloc[0] == pytest.approx(20.0)
    png = out / "plots" / "fidelity.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000


def test_fidelity_cli_names_a_folder_without_results(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    res = CliRunner().invoke(
        app,
        ["fidelity", "--sim", str(tmp_path / "empty"), "--live", str(tmp_path / "empty"), "--out", str(tmp_path / "o")],
    )
    assert res.exit_code == 2
    assert "no requests.parquet" in res.output and "Traceback" not in res.output


def test_queue_length_counts_requests_waiting_for_their_first_token() -> None:
    req = pd.DataFrame(
        {
            "arrival_s": [0.0, 0.5, 1.0, 1.0],
            "first_token_s": [0.2, 2.0, math.nan, math.nan],
            "finish_s": [1.0, 3.0, 1.5, math.nan],
        }
    )  # the third is refused at 1.5 s without a token; the fourth never ends
    grid = time_grid(2.0, 0.5)
    assert grid.tolist() == [0.0, 0.5, 1.0, 1.5, 2.0]
    assert waiting_for_first_token(req, grid).tolist() == [1, 1, 3, 2, 1]


def test_ready_replicas_take_the_latest_transition_at_or_before_each_time() -> None:
    reps = pd.DataFrame(
        [
            (0.0, "m", "a", "ready"),
            (0.0, "m", "b", "loading"),
            (1.0, "m", "b", "ready"),
            (2.0, "m", "a", "draining"),
            (2.0, "m", "a", "gone"),
        ],
        columns=["time_s", "model", "replica", "state"],
    )
    assert ready_replicas(reps, time_grid(3.0, 1.0))["m"].tolist() == [1, 2, 1, 1]


def test_error_pct_edge_cases() -> None:
    assert error_pct(1.1, 1.0) == pytest.approx(10.0)
    assert error_pct(0.0, 0.0) == 0.0
    assert math.isnan(error_pct(1.0, 0.0)) and math.isnan(error_pct(math.nan, 1.0))


def test_fidelity_refuses_a_scenario_without_live_sections(tmp_path: Path) -> None:
    res = CliRunner().invoke(app, ["fidelity", "scenarios/default.yaml", "--out", str(tmp_path / "o")])
    assert res.exit_code == 2
    assert "no model has a `live:` section" in res.output and "Traceback" not in res.output


def _tiny_scenario(tmp_path: Path) -> Path:
    """scenarios/live.yaml's tiny LM alone, one replica, no autoscaling: a fixed capacity."""
    import yaml

    doc = yaml.safe_load((Path(__file__).resolve().parents[1] / "scenarios" / "live.yaml").read_text())
    chat = next(m for m in doc["models"] if m["name"] == "chat")
    chat.pop("autoscaling")
    chat["replicas"] = 1
    doc.update(name="tiny-fidelity", models=[chat])
    doc["workload"]["models"] = {"chat": 1}
    doc["live"]["port"] = 0
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


THROUGHPUT_BOUND_PCT = 10.0
"""At 2 req/s (well under the tiny LM's capacity) both engines answer every request as it comes, so ok throughput
over first arrival -> last answer differs only by the last answers' latency: within 10% over 8 s."""


@pytest.mark.timeout(400)
def test_a_short_real_fidelity_run_finishes_and_its_throughput_matches(tmp_path: Path) -> None:
    pytest.importorskip("torch")
    out = tmp_path / "fid"
    args = [
        "fidelity",
        str(_tiny_scenario(tmp_path)),
        "--rates",
        "2",
        "--absolute",
        "--duration",
        "8",
        "--out",
        str(out),
    ]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    table = pd.read_csv(out / "fidelity.csv")
    assert set(table["load"]) == {2.0}
    err = table.loc[table["metric"] == "throughput_rps", "error_pct"].iloc[0]
    assert abs(err) < THROUGHPUT_BOUND_PCT, table.to_string()
    assert table.loc[table["metric"] == "ok_fraction", "live"].iloc[0] == 1.0
    assert (table["others_cpu_cores"] >= 0).all()  # the machine's other load during the live run, measured
    live = pd.read_parquet(out / "load-2" / "live" / "requests.parquet")
    sim = pd.read_parquet(out / "load-2" / "sim" / "requests.parquet")
    assert len(live) == len(sim) > 8  # the same requests on both sides
    assert live["prompt_tokens"].tolist() == sim["prompt_tokens"].tolist()
    ready = table[table["metric"] == "ready_replicas"]
    assert ready["live"].iloc[0] == 1.0 and ready["sim"].iloc[0] == 1.0  # one replica ready throughout, both engines
    assert (out / "plots" / "load-2.png").stat().st_size > 10_000


def _cuda() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return bool(torch.cuda.is_available())


@pytest.mark.skipif(not _cuda(), reason="needs a CUDA GPU and a CUDA build of torch (never required by CI)")
@pytest.mark.timeout(400)
def test_fidelity_runs_its_replicas_on_cuda(tmp_path: Path) -> None:
    out = tmp_path / "fid"
    args = ["fidelity", str(_tiny_scenario(tmp_path)), "--rates", "2", "--absolute", "--duration", "8",
            "--device", "cuda", "--out", str(out)]  # fmt: skip
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    table = pd.read_csv(out / "fidelity.csv")
    assert abs(table.loc[table["metric"] == "throughput_rps", "error_pct"].iloc[0]) < THROUGHPUT_BOUND_PCT
    assert table.loc[table["metric"] == "ok_fraction", "live"].iloc[0] == 1.0


def test_capacity_figures_of_a_burst_and_of_a_sustained_overload() -> None:
    from odhsim.fidelity.capacity import burst_throughput, sustained_throughput

    req = pd.DataFrame(
        {
            "arrival_s": [0.0, 0.0, 0.5, 1.0] * 5,
            "finish_s": np.linspace(1.0, 10.0, 20),
            "status": ["ok"] * 19 + ["failed"],
        }
    )
    assert burst_throughput(req) == pytest.approx(19 / np.linspace(1.0, 10.0, 20)[18])  # 19 ok, last ok answer
    finish = req["finish_s"].to_numpy()
    inside = int(((finish >= 3.0) & (finish < 7.0))[:19].sum())
    assert sustained_throughput(req, 3.0, 7.0) == pytest.approx(inside / 4.0)


def test_measured_startup_reads_the_deploy_before_the_replay() -> None:
    from odhsim.fidelity.loop import measured_startup

    rows = [(-9.0, "a", "pending"), (-8.9, "a", "loading"), (-2.9, "a", "testing"), (-2.5, "a", "ready"),
            (-9.0, "b", "pending"), (-8.8, "b", "loading"), (-0.8, "b", "testing"), (-0.2, "b", "ready"),
            (5.0, "a", "failed"), (15.0, "a", "loading")]  # fmt: skip
    reps = pd.DataFrame(rows, columns=["time_s", "replica", "state"]).assign(model="chat")
    load_s, test_s = measured_startup(reps)
    assert load_s == pytest.approx((6.0 + 8.0) / 2) and test_s == pytest.approx((0.4 + 0.6) / 2)
    assert measured_startup(reps[reps["time_s"] > 0]) is None
