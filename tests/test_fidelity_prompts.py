"""The live routing herding of issue 11: one `odhsim serve` takes every replay of a fidelity run (capacity probes,
loads, the noise run), and the replay's prompts were the same text row by row, so the gateway's prefix-cache
scorer (llm-d-default: weight 3, above queue 2 and KV 2) sent each request where its twin of an earlier replay had
gone. Each replay now tags its prompts (odhsim.fidelity.live.replay_tag): no block id is shared between two replays,
and the router sees no prefix match the simulation (which starts with an empty index) would not see."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

import runtime.replay
from odhsim.fidelity.live import replay_tag, run_live
from odhsim.fidelity.settings import FidelitySettings, Hooks, fidelity_scenario
from odhsim.fidelity.workloads import Requests
from odhsim.scenario.load import load_scenario
from policies.routing.config import RouterConfig, build_router
from policies.routing.types import EndpointState, RouteRequest
from runtime.gateway.limits import BLOCK_TOKENS, block_ids
from runtime.replay_plan import ReplayError, ReplayOptions, synth_prompt
from runtime.tokenizer import count_tokens, encode
from tests.runtime.test_replay import FakeTarget

ROWS = 60
_REAL_REPLAY = runtime.replay.replay_async


class _Server:
    """What run_live reads of a LiveServer: the gateway's URL and the keys."""

    url = "http://gateway.test"
    keys = ""


def _replay_prompts(tmp_path: Path, folder: Path, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The prompts one fidelity replay sends (run_live against an in-process fake gateway), in row order."""
    sc = load_scenario(Path("scenarios/fidelity.yaml"))
    sc = sc.model_copy(update={"models": [m for m in sc.models if m.name == "chat"]})
    sc = sc.model_copy(update={"workload": sc.workload.model_copy(update={"models": {"chat": 1.0}})})
    rng = np.random.default_rng(1)
    req = Requests(np.linspace(0.0, 0.3, ROWS), rng.integers(40, 300, ROWS), np.full(ROWS, 2), "test")
    settings = FidelitySettings(rates=(1.0,), absolute=True, duration_s=1.0, straggler_timeout_s=5.0)
    fid = fidelity_scenario(sc, req, folder.parent, settings)
    target = FakeTarget()

    async def through_fake(*args: Any, **kw: Any) -> Any:
        return await _REAL_REPLAY(*args, **kw, transport=httpx.MockTransport(target))

    monkeypatch.setattr(runtime.replay, "replay_async", through_fake)
    run_live(fid, _Server(), folder, settings, Hooks())  # type: ignore[arg-type]
    seen = sorted((b for b in target.seen if b["path"] == "/v1/completions"), key=lambda b: b["seed"])
    return [b["prompt"] for b in seen]


def _request(i: int, prompt: str) -> RouteRequest:
    ids = block_ids(encode(prompt))
    return RouteRequest(i, "chat", count_tokens(prompt), ids, BLOCK_TOKENS)


@pytest.mark.timeout(60)
def test_two_replays_on_one_serve_share_no_prompt_prefix_and_the_router_sees_none(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = _replay_prompts(tmp_path, tmp_path / "capacity" / "sustained" / "live", monkeypatch)
    later = _replay_prompts(tmp_path, tmp_path / "load-0.6" / "live", monkeypatch)
    assert len(first) == len(later) == ROWS
    first_ids = {int(b) for p in first for b in block_ids(encode(p))}
    later_ids = {int(b) for p in later for b in block_ids(encode(p))}
    assert len(first_ids) > 5 * ROWS and len(later_ids) > 5 * ROWS  # long enough prompts to have blocks to share
    assert first_ids.isdisjoint(later_ids)

    # The gateway's router (llm-d-default) served the first replay on two replicas, alternately; with both idle it
    # must then treat the later replay's requests alike: no prefix match anywhere, equal totals.
    totals = _totals_after(first, later)
    assert all(t["r0"] == t["r1"] for t in totals)

    # The same rows untagged (what every replay sent before): each request is pulled to its twin's replica.
    untagged = [[synth_prompt(i, count_tokens(p)) for i, p in enumerate(run)] for run in (first, later)]
    pulled = _totals_after(*untagged)
    assert sum(t[f"r{i % 2}"] > t[f"r{1 - i % 2}"] for i, t in enumerate(pulled)) == ROWS


def _totals_after(served: list[str], asked: list[str]) -> list[dict[str, float]]:
    """The llm-d-default router's totals for each of `asked` on two idle replicas, after it dispatched `served`
    to them alternately."""
    router = build_router(RouterConfig(profile="llm-d-default"), np.random.default_rng(0))
    for i, p in enumerate(served):
        router.on_dispatch(0.0, _request(i, p), f"r{i % 2}")
    idle = [EndpointState("r0", "chat"), EndpointState("r1", "chat")]
    return [router.totals(1.0, _request(len(served) + i, p), idle) for i, p in enumerate(asked)]


def test_each_replay_folder_gets_its_own_valid_tag() -> None:
    names = ["capacity/burst", "capacity/sustained", "load-0.6", "poisson/load-0.6", "noise/load-0.6", "azure/load-1"]
    folders = [Path("o") / n / "live" for n in names]
    tags = [replay_tag(f) for f in folders]
    assert len(set(tags)) == len(tags)
    assert all(ReplayOptions(prompt_tag=t).prompt_tag == t for t in tags)
    assert synth_prompt(7, 40, tags[0]) != synth_prompt(7, 40, tags[1])
    assert count_tokens(synth_prompt(7, 40, tags[0])) == 40
    assert synth_prompt(7, 40) == synth_prompt(7, 40, "")  # untagged replays send what they always sent
    with pytest.raises(ReplayError, match="prompt_tag"):
        ReplayOptions(prompt_tag="a b")
