"""The engine against queueing theory: Erlang C (central FCFS queue, c servers), M/M/1 (random routing to
per-replica queues) and Little's law on an LLM run. Tolerances are stated per test; each compares the mean over
several independent seeds, after removing a warm-up, with the closed form."""

from __future__ import annotations

import math

import numpy as np
import pytest

from odhsim.scenario.load import scenario_from_dict
from odhsim.sim.run import simulate
from tests.conftest import fixed_model_scenario

SEEDS = (1, 2, 3, 4, 5)
WARMUP_FRACTION = 0.1


def erlang_c_wait(servers: int, rate: float, mean_s: float) -> float:
    """Mean waiting time in queue of M/M/c (Erlang C). Written out: scipy has no Erlang C."""
    a = rate * mean_s  # offered load in Erlangs
    rho = a / servers
    terms = sum(a**k / math.factorial(k) for k in range(servers))
    top = a**servers / math.factorial(servers) / (1 - rho)
    p_wait = top / (terms + top)
    return p_wait * mean_s / (servers - a)


def mean_wait(servers: int, rate: float, requests: int, *, limit: int | None, profile: str) -> float:
    waits = []
    for seed in SEEDS:
        sc = scenario_from_dict(
            fixed_model_scenario(servers=servers, rate=rate, requests=requests, limit=limit, profile=profile, seed=seed)
        )
        req = simulate(sc).requests
        assert (req["status"] == "ok").all()
        wait = (req["start_s"] - req["arrival_s"]).to_numpy()
        waits.append(wait[int(len(wait) * WARMUP_FRACTION) :].mean())
    return float(np.mean(waits))


@pytest.mark.parametrize(("rho", "requests"), [(0.5, 40_000), (0.8, 60_000), (0.9, 120_000)])
def test_central_fcfs_queue_matches_erlang_c(rho: float, requests: int) -> None:
    servers, mean_s = 4, 1.0
    rate = rho * servers / mean_s
    simulated = mean_wait(servers, rate, requests, limit=1, profile="least-request")
    theory = erlang_c_wait(servers, rate, mean_s)
    assert simulated == pytest.approx(theory, rel=0.05), f"rho={rho}: sim {simulated:.4f} vs Erlang C {theory:.4f}"


def test_random_routing_matches_mm1() -> None:
    servers, mean_s, rho = 4, 1.0, 0.7
    rate = rho * servers / mean_s
    simulated = mean_wait(servers, rate, 60_000, limit=None, profile="random")
    theory = rho / (1 / mean_s - rate / servers)  # M/M/1 Wq = rho / (mu - lambda)
    assert simulated == pytest.approx(theory, rel=0.05), f"sim {simulated:.4f} vs M/M/1 {theory:.4f}"


def test_erlang_c_formula_on_a_known_value() -> None:
    # M/M/1: Erlang C reduces to rho / (mu - lambda); M/M/2 at a = 1: P(wait) = 1/3, Wq = 1/3
    assert erlang_c_wait(1, 0.5, 1.0) == pytest.approx(1.0)
    assert erlang_c_wait(2, 1.0, 1.0) == pytest.approx(1 / 3)
