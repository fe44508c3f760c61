"""Decision records (issue 15): one schema from both engines, consistent with the results, sampled by request, and
free when off.

- The scripted event sequences of tests/test_gateway_equivalence.py, run through the SimPy and the asyncio gateway
  adapters with a recorder on each core, give equal records (times included); the controller equivalence script
  gives equal scale records.
- On simulated runs: every dispatched attempt has a routing record whose pick is the replica the results name,
  every flow-control pop is routed at once, retries and transitions match the events table.
- `sample:<share>` keeps whole requests: a sampled request's records are exactly its records under `all`.
- `none` (and `all`) leave every results table bit-identical; `explain_pick` picks what `pick` picks.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

import tests.test_controller_equivalence as ctl_eq
import tests.test_gateway_equivalence as gw_eq
from odhsim.results.decisions import COLUMNS, candidates_frame, decisions_frame, read_decisions
from odhsim.results.run_result import RunResult, load_results
from odhsim.scenario.load import load_scenario, scenario_from_dict
from odhsim.scenario.model import Scenario
from odhsim.sim.run import simulate
from policies.controlplane.core import ControllerCore
from policies.decisions import (
    ROUTE,
    AdmissionRecord,
    ListRecorder,
    QueueRecord,
    RetryRecord,
    RouteRecord,
    ScaleRecord,
    parse_decisions,
    sample_hash,
)
from policies.gateway.core import GatewayCore
from policies.gateway.recording import transition_records
from policies.routing.config import build_router
from policies.routing.profiles import profile_names
from policies.routing.types import EndpointState, RouteRequest

REPO = Path(__file__).resolve().parents[1]


def plain(x: Any) -> Any:
    """Records as nested tuples with NaN made comparable (NaN != NaN)."""
    if isinstance(x, tuple):
        return tuple(plain(v) for v in x)
    if isinstance(x, float) and math.isnan(x):
        return "nan"
    return x


@pytest.fixture
def gateway_cores(monkeypatch: pytest.MonkeyPatch) -> list[GatewayCore]:
    """Every GatewayCore built while the test runs, each with a ListRecorder(all) set at construction."""
    made: list[GatewayCore] = []
    init = GatewayCore.__init__

    def recording_init(self: GatewayCore, *args: Any, **kwargs: Any) -> None:
        init(self, *args, **kwargs)
        self.recorder = ListRecorder()
        made.append(self)

    monkeypatch.setattr(GatewayCore, "__init__", recording_init)
    return made


def records_of(core: GatewayCore) -> list[Any]:
    assert isinstance(core.recorder, ListRecorder)
    return [*core.recorder.records, *transition_records(core.models)]


# -- one schema from both engines ---------------------------------------------------------------------------------
@pytest.mark.timeout(60)
@pytest.mark.parametrize("case", list(gw_eq.CASES))
def test_both_gateway_adapters_record_the_same_decisions(case: str, gateway_cores: list[GatewayCore]) -> None:
    gateway, script = gw_eq.CASES[case]
    sc = gw_eq.make_scenario(gateway)
    gw_eq.run_sim(sc, script)
    gw_eq.run_live(sc, script)
    assert len(gateway_cores) == 2, "one core per adapter"
    sim, live = (records_of(c) for c in gateway_cores)
    routes = [r for r in sim if isinstance(r, RouteRecord)]
    assert routes and all(r.candidates for r in routes), "the script routed, and each pick lists its candidates"
    assert plain(live) == plain(sim)
    # and the table built from them is the same, column by column
    pd.testing.assert_frame_equal(decisions_frame(live), decisions_frame(sim))


def test_the_scripts_produce_every_gateway_kind(gateway_cores: list[GatewayCore]) -> None:
    kinds: set[str] = set()
    actions: set[str] = set()
    for gateway, script in gw_eq.CASES.values():
        gw_eq.run_sim(gw_eq.make_scenario(gateway), script)
        for r in records_of(gateway_cores[-1]):
            kinds.add(r.kind)
            if isinstance(r, QueueRecord | RetryRecord):
                actions.add(f"{r.kind}:{r.action}")
            elif isinstance(r, AdmissionRecord):
                actions.add(f"admission:{r.admitted}:{r.reason}")
    assert kinds == {"route", "admission", "queue", "retry", "breaker"}  # ejections: the faults run below
    assert {"queue:pop", "queue:expire", "retry:retry", "retry:fallback", "retry:fail"} <= actions
    assert {"admission:True:", "admission:False:queue_full"} <= actions  # the low class's capacity of 2


def test_both_controller_adapters_record_the_same_scale_decisions(monkeypatch: pytest.MonkeyPatch) -> None:
    made: list[ControllerCore] = []
    init = ControllerCore.__init__

    def recording_init(self: ControllerCore, *args: Any, **kwargs: Any) -> None:
        init(self, *args, **kwargs)
        self.recorder = ListRecorder()
        made.append(self)

    monkeypatch.setattr(ControllerCore, "__init__", recording_init)
    ctl_eq.run_sim()
    ctl_eq.run_live()
    assert len(made) == 2
    sim, live = (c.recorder.records for c in made)  # type: ignore[union-attr]
    assert sim and all(isinstance(r, ScaleRecord) for r in sim)
    assert plain(live) == plain(sim)
    # the script's autoscaler always answers 4: from 2 replicas, then from 3 (one start fit the budget)
    assert [(r.current, r.desired, r.reason) for r in sim] == [(2, 4, "scripted"), (3, 4, "scripted")]
    assert sim[0].inputs.ready_replicas == 2


# -- records against results --------------------------------------------------------------------------------------
FLOW_SCENARIO: dict[str, Any] = {
    "name": "decisions-flow",
    "seed": 3,
    "duration_s": 40,
    "gpu_pool": [{"gpu": "A100-80GB", "count": 8}],
    "models": [
        {
            "name": "chat",
            "kind": "llm",
            "profile": "llama3-8b",
            "gpu": "A100-80GB",
            "replicas": 1,
            "engine": {"max_num_seqs": 16},
            "autoscaling": {
                "type": "kpa",
                "params": {"min_replicas": 1, "max_replicas": 4, "container_concurrency": 4},
            },
        },
    ],
    "gateway": {
        "max_in_flight_per_replica": 24,  # replicas of 16 seqs queue up to 8: saturation, and low ones are shed
        "flow_control": {"queue": "strict-priority", "ttl_s": {"low": 2.0}, "admission": "shed-sheddable"},
    },
    "workload": {
        "sources": [
            {
                "kind": "poisson",
                "rate": 12,
                "duration_s": 40,
                "prompt_tokens": {"dist": "lognormal", "median": 600, "sigma": 0.6, "max": 4000},
                "output_tokens": {"dist": "lognormal", "median": 150, "sigma": 0.6, "max": 800},
            }
        ],
        "priorities": {"critical": 0.1, "high": 0.2, "normal": 0.4, "low": 0.3},
    },
}


def flow_scenario(decisions: str) -> Scenario:
    return scenario_from_dict({**FLOW_SCENARIO, "outputs": {"decisions": decisions}})


def faults_scenario(decisions: str) -> Scenario:
    sc = load_scenario(REPO / "scenarios" / "faults.yaml", [f"outputs.decisions={decisions}"])
    return sc


@pytest.fixture(scope="module")
def faults_runs() -> dict[str, RunResult]:
    return {d: simulate(faults_scenario(d)) for d in ("none", "all", "sample:0.3")}


@pytest.fixture(scope="module")
def flow_runs() -> dict[str, RunResult]:
    return {d: simulate(flow_scenario(d)) for d in ("none", "all", "sample:0.3")}


def check_attempts_routed(res: RunResult) -> pd.DataFrame:
    """Every dispatched attempt has a routing record naming the replica the results name (the final attempt's),
    one routing record with a pick per attempt."""
    req, dec = res.requests, res.decisions
    assert dec is not None
    picks = dec[(dec["kind"] == ROUTE) & (dec["action"] == "pick")]
    per_request = picks.groupby("request_id").size()
    dispatched = req[req["attempts"] > 0]
    assert len(dispatched) > 0
    counted = per_request.reindex(dispatched["request_id"].to_numpy(), fill_value=0).to_numpy()
    assert (counted == dispatched["attempts"].to_numpy()).all()
    last = picks.drop_duplicates("request_id", keep="last").set_index("request_id")
    assert (last.loc[dispatched["request_id"], "attempt"].to_numpy() == dispatched["attempts"].to_numpy()).all()
    named = dispatched["replica"].astype(str).to_numpy()
    assert (last.loc[dispatched["request_id"], "replica"].to_numpy() == named).all()
    assert not picks["request_id"].isin(req.loc[req["attempts"] == 0, "request_id"]).any()
    return picks


@pytest.mark.timeout(120)
def test_faults_run_records_agree_with_results(faults_runs: dict[str, RunResult]) -> None:
    res = faults_runs["all"]
    picks = check_attempts_routed(res)
    assert res.requests["attempts"].max() >= 3, "the faults scenario retries"
    dec = res.decisions
    assert dec is not None
    # the retry records are the events table's retry / fallback rows, one for one, at the same times
    retries = dec[(dec["kind"] == "retry") & dec["action"].isin(["retry", "fallback"])]
    ev = res.events[res.events["kind"].isin(["retry", "fallback"])]
    assert list(zip(retries["time_s"], retries["action"], strict=True)) == list(
        zip(ev["time_s"], ev["kind"], strict=True)
    )
    # ejections: the detector's, each with its replica and time, as in the events table
    ej = dec[dec["kind"] == "ejection"]
    ev_ej = res.events[res.events["kind"].isin(["ejection", "ejection_end"])]
    assert len(ej) == len(ev_ej) > 0
    assert sorted(zip(ej["time_s"], ej["replica"], strict=True)) == sorted(
        zip(ev_ej["time_s"], ev_ej["replica"].astype(str), strict=True)
    )
    # while a replica is ejected the router sees it unhealthy: some pick lists an unhealthy candidate
    cands = candidates_frame(picks)
    assert (cands["filtered_by"] == "unhealthy").any()
    assert not cands.loc[cands["picked"], "filtered_by"].astype(bool).any(), "a pick was never filtered out"
    # least-request is a pipeline: every scored candidate carries its scorer's raw, clamped score and weight
    scored = cands[cands["filtered_by"] == ""]
    assert scored["scorer"].notna().all() and (scored["clamped"] == scored["raw"].clip(0, 1)).all()
    assert ((scored["weight"] * scored["clamped"]).groupby([scored["time_s"], scored["name"]]).sum().round(12)
            == scored.groupby(["time_s", "name"])["total"].first().round(12)).all()  # fmt: skip
    assert (picks["metrics_age_s"] >= 0).all()


@pytest.mark.timeout(120)
def test_flow_control_run_records_agree_with_results(flow_runs: dict[str, RunResult]) -> None:
    res = flow_runs["all"]
    req, dec = res.requests, res.decisions
    assert dec is not None
    check_attempts_routed(res)
    # one admission record per request that reached the queue; each shed one is shed in the results
    adm = dec[dec["kind"] == "admission"]
    assert adm["request_id"].is_unique and len(adm) == len(req)
    shed = adm[adm["action"] == "shed"]
    assert len(shed) > 0 and set(shed["request_id"]) == set(req.loc[req["status"] == "shed", "request_id"])
    assert (shed["priority"] == "low").all() and (shed["saturation"] >= 1.0).all()  # shed-sheddable at saturation
    # every pop is followed at once by the same request's routing record
    queue = dec[dec["kind"] == "queue"]
    pops = queue[queue["action"] == "pop"]
    assert len(pops) > 0 and (pops["waited_s"] >= 0).all()
    nxt = dec.shift(-1).loc[pops.index]
    assert (nxt["kind"] == ROUTE).all() and (nxt["request_id"].to_numpy() == pops["request_id"].to_numpy()).all()
    assert (nxt["time_s"].to_numpy() == pops["time_s"].to_numpy()).all()
    # expiries are the results' queue_ttl timeouts, with the priority class they had
    expired = queue[queue["action"] == "expire"]
    timed_out = req[req["status"] == "timeout"]
    assert set(expired["request_id"]) == set(timed_out["request_id"]) and len(expired) > 0
    assert (expired["priority"] == "low").all() and (expired["waited_s"] >= 2.0 - 1e-9).all()
    # the autoscaler's decisions, with their inputs
    scale = dec[dec["kind"] == "scale"]
    assert len(scale) > 0 and (scale["desired"] > 1).any()
    inputs = pd.json_normalize(scale["inputs"].tolist())
    assert (inputs["ready_replicas"] >= 1).all() and (inputs["in_flight"] >= 0).all()


def test_fifo_pops_are_recorded_without_flow_control() -> None:
    data = {**FLOW_SCENARIO, "gateway": {"max_in_flight_per_replica": 8}, "outputs": {"decisions": "all"}}
    res = simulate(scenario_from_dict(data))
    dec, req = res.decisions, res.requests
    assert dec is not None
    check_attempts_routed(res)
    pops = dec[(dec["kind"] == "queue") & (dec["action"] == "pop")]
    nxt = dec.shift(-1).loc[pops.index]
    assert (nxt["kind"] == ROUTE).all() and (nxt["request_id"].to_numpy() == pops["request_id"].to_numpy()).all()
    # exactly the requests routed after they arrived waited in the FIFO, for as long as the records say
    first = dec[dec["kind"] == ROUTE].drop_duplicates("request_id").set_index("request_id")["time_s"]
    arrival = req.set_index("request_id")["arrival_s"]
    late = first[first > arrival.reindex(first.index)]
    assert len(late) > 0 and set(pops["request_id"]) == set(late.index)
    waited = pops.set_index("request_id")["waited_s"]
    assert np.allclose(waited.loc[late.index], (late - arrival.loc[late.index]).to_numpy())


# -- sampling -------------------------------------------------------------------------------------------------------
@pytest.mark.timeout(120)
@pytest.mark.parametrize("runs", ["faults_runs", "flow_runs"])
def test_sampling_keeps_whole_requests(runs: str, request: pytest.FixtureRequest) -> None:
    by: dict[str, RunResult] = request.getfixturevalue(runs)
    full, sampled = by["all"].decisions, by["sample:0.3"].decisions
    assert full is not None and sampled is not None
    ids = set(full.loc[full["request_id"] >= 0, "request_id"])
    kept = {i for i in ids if sample_hash(int(i)) < 0.3}
    assert 0.15 < len(kept) / len(ids) < 0.45
    assert set(sampled.loc[sampled["request_id"] >= 0, "request_id"]) == kept
    expected = full[full["request_id"].isin(kept) | (full["request_id"] < 0)].reset_index(drop=True)
    pd.testing.assert_frame_equal(sampled.reset_index(drop=True), expected)


def test_sample_hash_is_uniform_and_stable() -> None:
    values = np.array([sample_hash(i) for i in range(20000)])
    assert values.min() >= 0.0 and values.max() < 1.0
    assert np.histogram(values, bins=10, range=(0, 1))[0].min() > 1800
    assert sample_hash(12345) == sample_hash(12345)


# -- off costs nothing and changes nothing --------------------------------------------------------------------------
@pytest.mark.timeout(120)
@pytest.mark.parametrize("runs", ["faults_runs", "flow_runs"])
def test_recording_leaves_results_bit_identical(runs: str, request: pytest.FixtureRequest) -> None:
    by: dict[str, RunResult] = request.getfixturevalue(runs)
    off = by["none"]
    assert off.decisions is None
    for mode in ("all", "sample:0.3"):
        on = by[mode]
        for table in ("requests", "replicas", "timeseries"):
            pd.testing.assert_frame_equal(getattr(on, table), getattr(off, table), check_exact=True)
        # events too, except that an anomaly event's detail may add what the decisions tell (e.g. herding's metric
        # age): the same anomalies at the same times, the same simulation events word for word
        anomaly_on, anomaly_off = on.events["kind"] == "anomaly", off.events["kind"] == "anomaly"
        pd.testing.assert_frame_equal(on.events[~anomaly_on], off.events[~anomaly_off], check_exact=True)
        cols = ["time_s", "kind", "model", "replica"]
        pd.testing.assert_frame_equal(on.events.loc[anomaly_on, cols], off.events.loc[anomaly_off, cols])
        assert all(a.startswith(b) for a, b in zip(on.events.loc[anomaly_on, "detail"],
                                                   off.events.loc[anomaly_off, "detail"], strict=True))  # fmt: skip
        # (a traced run's summary may add what is computed from the decisions, e.g. regret; the rest is equal)
        assert without_wall({k: on.summary[k] for k in off.summary}) == without_wall(off.summary)


def without_wall(summary: Any) -> Any:
    """A summary without its wall-clock figures (wall_s, sim_requests_per_wall_s), at every level; NaN made
    comparable."""
    if isinstance(summary, dict):
        return {k: without_wall(v) for k, v in summary.items() if "wall" not in k}
    if isinstance(summary, list | tuple):
        return [without_wall(v) for v in summary]
    return plain(summary)


@pytest.mark.parametrize(
    "profile", ["round-robin", "random", "least-request", "power-of-two", "kv-aware", "prefix-aware",
                "llm-d-default", "least-latency", "aibrix-prefix-cache"],
)  # fmt: skip
def test_explain_pick_picks_what_pick_picks(profile: str) -> None:
    """Two routers built alike, one asked `pick`, the other `explain_pick`, over the same stream of requests and
    dispatches: the same pick every time (random pickers draw the same numbers)."""
    assert profile in profile_names()
    a = build_router({"profile": profile}, np.random.default_rng(1))
    b = build_router({"profile": profile}, np.random.default_rng(1))
    rng = np.random.default_rng(7)
    for i in range(400):
        now = i * 0.01
        eps = [EndpointState(f"e{k}", "m", int(rng.integers(0, 6)), int(rng.integers(0, 6)), float(rng.random()),
                             scraped_at=now - 0.02, healthy=bool(rng.random() > 0.1)) for k in range(5)]  # fmt: skip
        blocks = np.array([int(rng.integers(0, 4)), int(rng.integers(0, 50))], np.int64)
        req = RouteRequest(i, "m", 64, blocks, 16)
        pa, (pb, scorers, cands) = a.pick(now, req, eps), b.explain_pick(now, req, eps)
        assert pa == pb
        assert [w for _, w in scorers] == [w for _, w in b.scorers]
        assert [c.name for c in cands] == [e.name for e in eps]
        if pb.endpoint is not None:
            a.on_dispatch(now, req, pb.endpoint)
            b.on_dispatch(now, req, pb.endpoint)
            picked = next(c for c in cands if c.name == pb.endpoint)
            assert picked.filtered_by == "" and math.isclose(picked.metrics_age_s, 0.02)
            if i % 3 == 0:
                a.on_complete(now, req, pb.endpoint, 0.1, True)
                b.on_complete(now, req, pb.endpoint, 0.1, True)


# -- the table and the option ---------------------------------------------------------------------------------------
def test_table_round_trips_and_explodes(tmp_path: Path, flow_runs: dict[str, RunResult]) -> None:
    res = flow_runs["all"]
    assert res.decisions is not None
    assert list(res.decisions.columns) == ["run_id", "seed", "scenario", *COLUMNS]
    res.write(tmp_path)
    back = load_results(tmp_path)["decisions"]
    pd.testing.assert_frame_equal(back, read_decisions(tmp_path / "decisions.parquet"))
    assert len(back) == len(res.decisions) and back["time_s"].is_monotonic_increasing
    cands = candidates_frame(back)
    routes = back[back["kind"] == ROUTE]
    # llm-d-default: 3 scorers on every scored candidate, one row per (decision, candidate, scorer)
    n_cands = routes["candidates"].map(len).sum()
    assert len(cands) == 3 * n_cands
    assert (cands.groupby(["time_s", "request_id", "attempt"])["picked"].sum() == 3).all()
    assert set(cands["scorer"]) == {"queue-scorer", "kv-cache-utilization-scorer", "prefix-cache-scorer"}


@pytest.mark.parametrize(("value", "share"), [("all", 1.0), ("none", 0.0), ("sample:0.25", 0.25), (" Sample:1 ", 1.0)])
def test_decisions_option_parses(value: str, share: float) -> None:
    assert parse_decisions(value) == share


@pytest.mark.parametrize("value", ["some", "sample:0", "sample:1.5", "sample:x", "sample:"])
def test_bad_decisions_option_is_a_clear_error(value: str, tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(
        "name: bad\ngpu_pool: [{gpu: T4, count: 1}]\n"
        "models: [{name: clf, kind: fixed, gpu: T4, replicas: 1, concurrency: 1,\n"
        "          service_time: {dist: exponential, mean_s: 0.05}}]\n"
        "workload: {sources: [{kind: poisson, rate: 1, requests: 3}]}\n"
        f"outputs: {{decisions: '{value}'}}\n"
    )
    from odhsim.errors import OdhsimError

    with pytest.raises(OdhsimError) as err:
        load_scenario(path)
    text = str(err.value)
    assert "line 6" in text and "outputs.decisions" in text
    assert "sample:<share>" in text or "(0, 1]" in text


# -- the live engine ------------------------------------------------------------------------------------------------
@pytest.mark.timeout(300)
def test_odhsim_serve_writes_decisions_parquet_from_the_asyncio_adapter(tmp_path: Path) -> None:
    """`odhsim serve --replay ... --out` (real gateway, real replica processes) with `decisions: all`: the stack's
    decisions.parquet has the simulator's columns, one admission, one pop and one routing pick per request, each
    pick one of the model's replicas with its scraped metrics' age."""
    pytest.importorskip("torch")
    from runtime.serve_replay import serve_replay

    sc = load_scenario(REPO / "scenarios" / "live.yaml", ["outputs.decisions=all"])
    res = serve_replay(sc, REPO / "scenarios" / "live.yaml", tmp_path, limit=12, speed=4.0)
    n = int(res.summary["requests"])
    assert n == 12 and res.summary["completed"] == n
    dec = read_decisions(tmp_path / "serve" / "decisions.parquet")
    assert list(dec.columns) == ["run_id", "seed", "scenario", *COLUMNS]
    picks = dec[(dec["kind"] == ROUTE) & (dec["action"] == "pick")]
    assert len(picks) == n and picks["request_id"].is_unique
    assert (dec["kind"] == "admission").sum() == n and ((dec["kind"] == "queue") & (dec["action"] == "pop")).sum() == n
    replicas = pd.read_parquet(tmp_path / "serve" / "replicas.parquet")
    by_model = replicas.groupby("model", observed=True)["replica"].agg(lambda s: set(s.astype(str)))
    assert all(p in by_model[m] for m, p in zip(picks["model"], picks["replica"], strict=True))
    assert ((picks["metrics_age_s"] >= 0) & (picks["metrics_age_s"] < 5)).all()
    cands = candidates_frame(picks)
    assert cands.loc[cands["picked"], "scorer"].notna().all()  # llm-d-default's scorers, per picked candidate
