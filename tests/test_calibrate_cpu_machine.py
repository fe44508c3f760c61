"""The simulator's CPU model with the measured streaming cost and the machine's other load (issue 11): a decoding
batch's token stream adds its cores of demand, other tenants' cores shrink what the replicas have, and the
gateway's and client's CPU per request and per token are solved from the probe phases."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest

from odhsim.calibrate.cpu_model import CpuMachine, CpuSeat, shared_latency
from odhsim.calibrate.profile_file import CpuShare
from odhsim.calibrate.stream_cpu import CpuPhase, stream_costs
from odhsim.fidelity.loop import with_machine_load
from odhsim.profiles.coefficients import LatencyModel
from odhsim.scenario.load import load_scenario
from odhsim.sim.run import simulate
from tests.test_calibrate import TRUE, chat_model, llm_profile, scenario, write_json

LM = LatencyModel(model="t", gpu="cpu", tp=1, source="calibrated", **TRUE.model_dump())


class _Replica:
    def __init__(self, busy: bool) -> None:
        self._busy_since = 0.0 if busy else math.nan


def test_a_decoding_batch_adds_its_stream_to_the_demand_and_others_take_cores() -> None:
    share = CpuShare(cores=2, slowdown_per_extra_busy=0.5, stream_cpu_per_token_s=0.0002, others_cores=0.6)
    machine = CpuMachine(share)
    a, b = CpuSeat(machine), CpuSeat(machine)
    a.take(_Replica(busy=True))
    b.take(_Replica(busy=False))
    lat_a, lat_b = shared_latency(LM, a), shared_latency(LM, b)
    # a prefills: no stream of its own; alone it is 1 core of demand, under the 1.4 cores the others leave
    assert lat_a.prefill_s(100) == pytest.approx(LM.prefill_s(100), rel=1e-12)
    # b starts a decode step of 8 while a computes: demand 1 (a) + 1 (b) + b's stream 8 x 0.2 ms / t
    t = LM.decode_step_s(8, 800)
    stream = 8 * 0.0002 / t
    expect = 1.0 + 0.5 * (2.0 + stream - (2 - 0.6))
    assert lat_b.decode_step_s(8, 800) == pytest.approx(t * expect, rel=1e-12)
    assert b.stream_cores == pytest.approx(stream, rel=1e-12)
    # without a stream cost and with no others, two busy replicas on two cores stretch nothing (as before)
    plain = CpuMachine(CpuShare(cores=2, slowdown_per_extra_busy=0.5))
    c, d = CpuSeat(plain), CpuSeat(plain)
    c.take(_Replica(busy=True))
    d.take(_Replica(busy=False))
    assert shared_latency(LM, d).decode_step_s(8, 800) == pytest.approx(t, rel=1e-12)


def test_stream_costs_solve_the_probe_phases() -> None:
    per_request, per_token, background = 0.009, 0.0002, 0.05
    phases = [
        CpuPhase(25, 450, 25 * per_request + 450 * per_token + background * 1.2, 1.2),
        CpuPhase(39, 1248, 39 * per_request + 1248 * per_token + background * 0.9, 0.9),
    ]
    got = stream_costs(phases, background)
    assert got is not None
    assert got[0] == pytest.approx(per_request, rel=1e-9) and got[1] == pytest.approx(per_token, rel=1e-9)
    # one phase, or phases with the same tokens per request, cannot tell the two apart
    assert stream_costs(phases[:1], background) is None
    assert stream_costs([phases[0], CpuPhase(50, 900, 1.0, 1.0)], background) is None


def test_fidelity_gives_the_simulation_the_live_runs_other_load(tmp_path: Path) -> None:
    cpu: dict[str, Any] = {"cores": 1, "slowdown_per_extra_busy": 1.0}
    write_json(tmp_path / "calib" / "chat.json", llm_profile() | {"cpu": cpu})
    trace = tmp_path / "t.csv"
    trace.write_text("arrival_s,prompt_tokens,output_tokens\n0.0,100,1\n")
    src = {"kind": "trace", "path": "t.csv", "format": "csv"}
    sc = load_scenario(scenario(tmp_path, [chat_model()], src, {"chat": 1.0}))
    prefill = LM.prefill_s(100)

    def ttft(s: Any) -> float:
        req = simulate(s).requests
        return float((req["first_token_s"] - req["arrival_s"]).iloc[0])

    assert ttft(sc) == pytest.approx(prefill, rel=1e-12)
    loaded = with_machine_load(sc, 0.25)  # a quarter core taken: 1 busy replica on 0.75 of a core
    assert loaded.models[0].profile_file.cpu.others_cores == 0.25
    assert ttft(loaded) == pytest.approx(prefill * 1.25, rel=1e-12)
    assert with_machine_load(sc, math.nan) is sc  # not measured: unchanged


def test_the_requests_of_the_last_second_add_their_gateway_and_client_cpu(tmp_path: Path) -> None:
    """Two replicas (round robin) on two cores, 0.5 s of gateway + client CPU per request, 0.4 slowdown per core of
    demand beyond the cores; replica 0 decodes a long answer all along. Demand at each prefill on replica 1:
    busy replicas + arrivals of the last second x 0.5 s / 1 s."""
    cpu: dict[str, Any] = {"cores": 2, "slowdown_per_extra_busy": 0.4, "request_cpu_s": 0.5}
    write_json(tmp_path / "calib" / "chat.json", llm_profile() | {"cpu": cpu})
    trace = tmp_path / "t.csv"
    rows = ["0.0,100,400", "0.001,100,1", "0.002,100,1", "0.2,100,1"]  # replicas 0, 1, 0, 1
    trace.write_text("arrival_s,prompt_tokens,output_tokens\n" + "\n".join(rows) + "\n")
    src = {"kind": "trace", "path": "t.csv", "format": "csv"}
    sc = load_scenario(scenario(tmp_path, [chat_model(replicas=2)], src, {"chat": 1.0}))
    req = simulate(sc).requests.sort_values("arrival_s")
    assert req["replica"].tolist() == ["chat-v1-0", "chat-v1-1", "chat-v1-0", "chat-v1-1"]
    prefill = LM.prefill_s(100)
    ttft = (req["first_token_s"] - req["arrival_s"]).to_numpy()
    assert ttft[0] == pytest.approx(prefill, rel=1e-12)  # alone, 1 arrival: 1 + 0.5 <= 2 cores
    assert ttft[1] == pytest.approx(prefill * (1 + 0.4 * 1.0), rel=1e-12)  # 2 busy + 2 x 0.5 = 3
    assert ttft[3] == pytest.approx(prefill * (1 + 0.4 * 2.0), rel=1e-12)  # 2 busy + 4 x 0.5 = 4
