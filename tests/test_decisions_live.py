"""Decision records of a live run, joined to the replay that drove it: the replay's request ids in decisions.parquet
(runtime.decision_ids.with_client_ids), serve_replay's DIR/decisions.parquet on the replay's clock, each fidelity load's
own decisions (odhsim.fidelity.live.live_decisions), and `odhsim explain` telling a live request's routing."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from typer.testing import CliRunner

from odhsim.cli import app
from odhsim.fidelity.live import live_decisions
from odhsim.results.decisions import decisions_frame, read_decisions, write_decisions
from odhsim.scenario.load import load_scenario
from policies.decisions import AdmissionRecord, Candidate, RouteRecord, ScaleInputs, ScaleRecord
from runtime.decision_ids import client_request_id, with_client_ids

REPO = Path(__file__).resolve().parents[1]


def _route(t: float, rid: int, pick: str = "r0") -> RouteRecord:
    cands = (Candidate("r0", "", 0, 1, 0.1, 0.05, 0, (1.0,), 1.0), Candidate("r1", "", 2, 3, 0.5, 0.05, 0, (0.2,), 0.2))
    return RouteRecord(t, rid, "chat", 1, "normal", pick, "max-score-picker", 0.05, (("queue-scorer", 1.0),), cands)


def _admit(t: float, rid: int) -> AdmissionRecord:
    return AdmissionRecord(t, rid, "chat", "normal", True, "", 0.0, 0)


def _scale(t: float) -> ScaleRecord:
    return ScaleRecord(t, "chat", 2, 2, "stable", False, ScaleInputs(2, 0, 0.0, 0.0, 0.0, 0, 0.0, 0.0, 1.0))


# -- the client's ids --------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("value", "number"),
    [("0", 0), ("17", 17), ("123456789012345678", 123456789012345678), ("007", None), ("-1", None), ("1e3", None),
     ("abc", None), ("", None), (None, None), ("1234567890123456789", None), ("٣", None)],
)  # fmt: skip
def test_a_client_request_id_is_a_number_only_when_written_plainly(value: str | None, number: int | None) -> None:
    assert client_request_id(value) == number


def test_decisions_take_the_clients_integer_ids_and_keep_the_rest() -> None:
    frame = decisions_frame([_scale(0.5), _admit(1.0, 1), _route(1.0, 1), _admit(1.2, 2), _route(1.2, 2)])
    out, note = with_client_ids(frame, {1: "40", 2: "7"})
    assert note == ""
    assert out["request_id"].tolist() == [-1, 40, 40, 7, 7]
    assert frame["request_id"].tolist() == [-1, 1, 1, 2, 2]  # the input is not changed
    pd.testing.assert_frame_equal(out.drop(columns="request_id"), frame.drop(columns="request_id"))


def test_one_non_integer_client_id_keeps_every_ticket_id_and_says_so() -> None:
    frame = decisions_frame([_admit(1.0, 1), _route(1.0, 1), _admit(1.2, 2), _route(1.2, 2)])
    out, note = with_client_ids(frame, {1: "40", 2: "f00dcafe"})
    assert out["request_id"].tolist() == [1, 1, 2, 2]  # never a mix of the two numberings
    assert "ticket ids" in note and "1 of 2" in note and "f00dcafe" in note


# -- fidelity: each load's own decisions ---------------------------------------------------------------------------
def test_each_fidelity_load_gets_the_decisions_of_its_own_window(tmp_path: Path) -> None:
    """One serve took two replays, each numbering its requests 0, 1: on serve's clock the first ran 10-12 s, the
    second 20-22 s. The second load's folder gets its own decisions only, on its replay's clock."""
    recs = [_scale(9.0), _route(10.1, 0), _route(10.5, 1), _scale(15.0), _route(20.2, 0, "r1"), _route(20.6, 1, "r1"),
            _scale(21.0), _route(40.0, 0)]  # fmt: skip
    write_decisions(decisions_frame(recs), tmp_path / "decisions.parquet")
    requests = pd.DataFrame({"request_id": [0, 1], "arrival_s": [0.1, 0.5], "start_s": [0.1, 0.5],
                             "finish_s": [0.9, np.nan]})  # fmt: skip
    mine = live_decisions(tmp_path, 20.0, requests)
    assert mine is not None
    assert np.allclose(mine["time_s"], [0.2, 0.6, 1.0])
    assert mine["kind"].tolist() == ["route", "route", "scale"]
    assert mine["replica"].tolist()[:2] == ["r1", "r1"] and mine["request_id"].tolist() == [0, 1, -1]
    assert live_decisions(tmp_path / "none", 0.0, requests) is None  # serve recorded none


# -- a real serve + replay ---------------------------------------------------------------------------------------
def _two_replica_chat(tmp_path: Path, name: str) -> Path:
    """scenarios/live.yaml's tiny LM alone on two fixed replicas, decisions recorded: two candidates per pick."""
    doc = yaml.safe_load((REPO / "scenarios" / "live.yaml").read_text())
    chat = next(m for m in doc["models"] if m["name"] == "chat")
    chat.pop("autoscaling")
    chat["replicas"] = 2
    doc.update(name=name, models=[chat])
    doc["workload"]["models"] = {"chat": 1}
    doc["live"]["port"] = 0
    doc["live"]["host"] = "127.0.0.1"
    doc["outputs"]["decisions"] = "all"
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def _explain(folder: Path, request: int) -> str:
    res = CliRunner().invoke(app, ["explain", str(folder), "--request", str(request)], env={"COLUMNS": "200"})
    assert res.exit_code == 0, res.output
    return res.output


def _assert_picks_join_requests(folder: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Every routed request of requests.parquet has its pick under its own id, inside its own service time."""
    dec = read_decisions(folder / "decisions.parquet")
    req = pd.read_parquet(folder / "requests.parquet")
    picks = dec[(dec["kind"] == "route") & (dec["action"] == "pick")]
    routed = req[req["attempts"] > 0]
    assert len(routed) > 0
    assert sorted(picks["request_id"]) == sorted(routed["request_id"])
    joined = picks.merge(routed[["request_id", "start_s", "finish_s", "replica"]], on="request_id")
    assert (joined["replica_x"] == joined["replica_y"].astype(str)).all()  # the pick served it (no retries here)
    # on the replay's clock: each pick lies between the request's send and its answer (50 ms for clock reading)
    assert ((joined["time_s"] >= joined["start_s"] - 0.05) & (joined["time_s"] <= joined["finish_s"])).all()
    return picks, req


@pytest.mark.timeout(300)
def test_serve_replay_decisions_carry_the_replays_ids_and_explain_tells_a_live_request(tmp_path: Path) -> None:
    pytest.importorskip("torch")
    from runtime.serve_replay import serve_replay

    path = _two_replica_chat(tmp_path, "live-ids")
    out = tmp_path / "run"
    res = serve_replay(load_scenario(path), path, out, limit=12, speed=4.0)
    assert res.summary["requests"] == 12 and res.summary["completed"] == 12
    assert res.decisions is not None and len(res.decisions) > 0
    picks, req = _assert_picks_join_requests(out)
    assert sorted(picks["request_id"]) == list(range(12))  # the replay's ids 0..11, not the gateway's tickets
    n = int(picks["request_id"].iloc[-1])
    row = req[req["request_id"] == n].iloc[0]
    text = _explain(out, n)
    assert re.search(rf"^request {n} \(chat, {row['priority']}", text, re.M)
    assert re.search(rf"route: attempt 1 -> {re.escape(str(row['replica']))} \(picked by ", text)
    chosen = [line for line in text.splitlines() if line.strip().startswith("->")]
    assert len(chosen) == 1 and str(row["replica"]) in chosen[0]
    for name in ("chat-v1-0", "chat-v1-1"):  # both candidates, each with its scores
        assert re.search(rf"^\s*(->)?\s*{name}\s+\d+\s+\d+", text, re.M), text
    assert "queue-scorer" in text and "prefix-cache-scorer" in text


@pytest.mark.timeout(400)
def test_fidelity_gives_each_load_the_decisions_of_its_replay(tmp_path: Path) -> None:
    """Two loads on one serve (fixed replicas), each numbering its requests from 0: each load's live folder holds
    exactly its own picks, under its requests' ids, and `odhsim explain` tells one of them."""
    pytest.importorskip("torch")
    out = tmp_path / "fid"
    args = ["fidelity", str(_two_replica_chat(tmp_path, "fid-ids")), "--rates", "2,3", "--absolute", "--duration",
            "4", "--out", str(out)]  # fmt: skip
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    total = 0
    for load in ("load-2", "load-3"):
        picks, _ = _assert_picks_join_requests(out / load / "live")
        assert picks["request_id"].is_unique
        total += len(picks)
    serve = read_decisions(out / "load-2" / "serve" / "decisions.parquet")  # the one serve's, every load's
    assert total == ((serve["kind"] == "route") & (serve["action"] == "pick")).sum()
    text = _explain(out / "load-3" / "live", 3)
    assert re.search(r"^request 3 \(chat", text, re.M) and "route: attempt 1 -> chat-v1-" in text


def test_explain_says_when_a_live_run_kept_the_gateways_ticket_ids(tmp_path: Path) -> None:
    """serve kept ticket ids (a client sent non-integer ids): a request without records names that reason."""
    req = pd.DataFrame({"request_id": [0, 1], "model": "chat", "arrival_s": [0.1, 0.2], "finish_s": [0.3, 0.4]})
    req.to_parquet(tmp_path / "requests.parquet")
    for name in ("replicas", "timeseries"):
        pd.DataFrame({"time_s": pd.Series(dtype=float)}).to_parquet(tmp_path / f"{name}.parquet")
    note = "decisions.parquet keeps the gateway's ticket ids in request_id: 2 of 2 recorded requests had no integer"
    events = pd.DataFrame({"time_s": [5.0], "kind": ["decision_ids"], "model": [""], "replica": [""], "detail": [note]})
    events.to_parquet(tmp_path / "events.parquet")
    (tmp_path / "summary.json").write_text("{}")
    write_decisions(decisions_frame([_admit(0.1, 1), _route(0.1, 1), _admit(0.2, 2), _route(0.2, 2)]),
                    tmp_path / "decisions.parquet")  # fmt: skip
    res = CliRunner().invoke(app, ["explain", str(tmp_path), "--request", "0"], env={"COLUMNS": "200"})
    assert res.exit_code == 2 and "Traceback" not in res.output
    assert "request 0 has no decision records" in res.output and "keeps the gateway's ticket ids" in res.output
