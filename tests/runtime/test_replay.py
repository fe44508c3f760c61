"""The replayer against an in-process fake target (httpx.MockTransport): schema identical to the simulator's,
open-loop timing, prompts of the planned token count, statuses and reasons for errors, nothing dropped."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import httpx
import pandas as pd
import pytest
import yaml

from odhsim.results.run_result import load_results
from odhsim.scenario.load import load_scenario
from odhsim.sim.run import simulate
from odhsim.workload.schema import PRIORITY_CLASSES
from runtime.replay import KeyChooser, replay_async
from runtime.replay_plan import ReplayError, ReplayOptions, load_plan, synth_prompt
from runtime.tokenizer import count_tokens

SCENARIO: dict[str, Any] = {
    "name": "replay-small",
    "seed": 5,
    "gpu_pool": [{"gpu": "L4", "count": 4}],
    "models": [
        {
            "name": "chat",
            "profile": "llama3.2-1b",
            "gpu": "L4",
            "replicas": 1,
            "live": {"lm": {"d_model": 16, "n_layers": 1, "n_heads": 2, "max_seq_len": 128}},
        },
        {
            "name": "clf",
            "kind": "fixed",
            "gpu": "L4",
            "replicas": 1,
            "service_time": {"mean_s": 0.01},
            "live": {"mlp": {"input_dim": 8, "hidden": [8], "classes": 3}},
        },
    ],
    "workload": {
        "sources": [
            {
                "kind": "poisson",
                "rate": 40,
                "requests": 30,
                "prompt_tokens": {"dist": "fixed", "value": 400},
                "output_tokens": {"dist": "lognormal", "median": 8, "sigma": 0.5, "max": 40},
            },
        ],
        "models": {"chat": 0.7, "clf": 0.3},
        "tenants": {"team-a": 0.5, "team-b": 0.5},
        "priorities": {"high": 0.5, "low": 0.5},
    },
}


def write_scenario(tmp_path: Path) -> Path:
    path = tmp_path / "scenario.yaml"
    path.write_text(yaml.safe_dump(SCENARIO))
    return path


class FakeTarget:
    """Answers like the gateway: SSE completions, v2 metadata/infer; sheds prompts of row 3 with a reason."""

    def __init__(self) -> None:
        self.seen: list[dict[str, Any]] = []
        self.auth: list[str | None] = []

    async def __call__(self, request: httpx.Request) -> httpx.Response:
        self.auth.append(request.headers.get("authorization"))
        path = request.url.path
        if path == "/v2/health/live":
            return httpx.Response(200, json={"live": True})
        if path == "/v1/models":
            return httpx.Response(200, json={"object": "list", "data": [{"id": "chat"}]})
        if path == "/v2/models/clf":
            return httpx.Response(200, json={"name": "clf", "inputs": [{"name": "INPUT__0", "datatype": "FP32",
                                                                          "shape": [-1, 8]}]})  # fmt: skip
        body = json.loads(request.content)
        self.seen.append({"path": path, "priority": request.headers.get("x-odhsim-priority"), **body})
        await asyncio.sleep(0.005)
        headers = {"x-odhsim-replica": "chat-v1-0" if path.startswith("/v1") else "clf-v1-0"}
        if path == "/v1/completions":
            if body["prompt"].startswith("[3] "):
                err = {"error": {"message": "shed at admission", "type": "shed", "param": None, "code": "admission"}}
                return httpx.Response(429, json=err, headers=headers)
            n = body["max_tokens"]
            chunks = [{"object": "text_completion", "choices": [{"text": "x", "index": 0}]} for _ in range(n)]
            chunks[-1]["usage"] = {"prompt_tokens": count_tokens(body["prompt"]), "completion_tokens": n}
            text = "".join(f"data: {json.dumps(c)}\n\n" for c in chunks) + "data: [DONE]\n\n"
            return httpx.Response(200, content=text.encode(), headers={**headers, "content-type": "text/event-stream"})
        assert body["inputs"][0]["shape"] == [1, 8] and len(body["inputs"][0]["data"]) == 8
        return httpx.Response(200, json={"outputs": [{"name": "label", "data": [0]}]}, headers=headers)


@pytest.mark.timeout(60)
def test_replay_matches_the_simulators_schema_and_accounts_for_every_request(tmp_path: Path) -> None:
    path = write_scenario(tmp_path)
    target = FakeTarget()
    env = {"ODHSIM_API_KEYS": "ka:team-a:critical,kb:team-b:high"}
    out = tmp_path / "live"
    result = asyncio.run(
        replay_async(
            path,
            "http://gateway.test",
            speed=4.0,
            out_dir=out,
            env=env,
            transport=httpx.MockTransport(target),
            max_prompt_tokens=64,
            max_output_tokens=16,
        )
    )
    live = result.requests
    sim = simulate(load_scenario(path)).requests
    assert list(live.columns) == list(sim.columns)
    assert live.dtypes.astype(str).tolist() == sim.dtypes.astype(str).tolist()
    assert len(live) == len(sim) == 30  # the same workload, request for request
    assert (live["model"].astype(str).to_numpy() == sim["model"].astype(str).to_numpy()).all()
    assert (live["tenant"].astype(str).to_numpy() == sim["tenant"].astype(str).to_numpy()).all()
    assert (live["arrival_s"].to_numpy() * 4.0 - sim["arrival_s"].to_numpy()).max() < 1e-9  # speed 4

    status = live["status"].astype(str)
    assert set(status) <= {"ok", "shed"} and (status == "shed").sum() <= 1
    shed = live[status == "shed"]
    assert all(r.startswith("HTTP 429 admission: shed at admission") for r in shed["reason"].astype(str))
    ok = live[status == "ok"]
    assert (ok["first_token_s"] >= ok["arrival_s"]).all() and (ok["finish_s"] >= ok["first_token_s"]).all()
    assert set(ok["replica"].astype(str)) <= {"chat-v1-0", "clf-v1-0"}

    completions = [s for s in target.seen if s["path"] == "/v1/completions"]
    assert completions and all(s["stream"] and s["ignore_eos"] for s in completions)
    assert all(count_tokens(s["prompt"]) == 64 for s in completions)  # 400 clipped to 64, exactly
    assert all(1 <= s["max_tokens"] <= 16 for s in completions)
    assert {s["priority"] for s in target.seen} <= {"high", "low"}
    assert {"Bearer ka", "Bearer kb"} <= set(target.auth)  # each tenant's own key

    loaded = load_results(out)  # what odhsim's analysis tools read
    assert loaded["summary"]["requests"] == 30
    assert loaded["summary"]["completed"] + loaded["summary"]["shed"] == 30
    assert loaded["summary"]["run_id"] == "replay-small-live-seed5"
    assert {"run_id", "seed", "scenario"} <= set(loaded["requests"].columns)


@pytest.mark.timeout(60)
def test_limit_duration_and_errors_are_recorded(tmp_path: Path) -> None:
    path = write_scenario(tmp_path)

    async def broken(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v2/health/live":
            return httpx.Response(404)
        if request.url.path == "/v2/models/clf":
            return httpx.Response(200, json={"inputs": [{"name": "INPUT__0", "datatype": "FP32", "shape": [-1, 8]}]})
        if request.url.path.startswith("/v2"):
            raise httpx.ConnectError("connection refused")
        return httpx.Response(503, json={"error": {"message": "queued 1.00 s, over the TTL", "type": "timeout",
                                                   "code": "queue_ttl"}})  # fmt: skip

    result = asyncio.run(
        replay_async(path, "http://gw.test", limit=10, speed=10.0, transport=httpx.MockTransport(broken), env={})
    )
    req = result.requests
    assert len(req) == 10
    status = req["status"].astype(str)
    assert set(status) <= {"timeout", "failed"}
    reasons = req["reason"].astype(str)
    assert all(r.startswith("HTTP 503 queue_ttl") for r in reasons[status == "timeout"])
    assert all("ConnectError" in r for r in reasons[status == "failed"])
    assert result.summary["completed"] == 0 and result.summary["timeout"] + result.summary["failed"] == 10


@pytest.mark.timeout(60)
def test_plan_clips_and_bounds(tmp_path: Path) -> None:
    path = write_scenario(tmp_path)
    plan = load_plan(path, ReplayOptions(max_duration_s=0.2, max_prompt_tokens=32, max_output_tokens=4))
    assert 0 < len(plan.requests) < 30 and plan.requests.arrival_s.max() < 0.2
    assert plan.requests.prompt_tokens.max() == 32 and plan.requests.output_tokens.max() <= 4
    assert plan.clipped_prompts == len(plan.requests)
    assert set(plan.requests.priority.tolist()) <= {PRIORITY_CLASSES.index("high"), PRIORITY_CLASSES.index("low")}
    trace = tmp_path / "t.csv"
    trace.write_text("arrival_s,prompt_tokens,output_tokens\n0.0,10,5\n0.5,3000,500\n1.0,1,1\n")
    tplan = load_plan(trace, ReplayOptions(speed=2.0))
    assert tplan.requests.arrival_s.tolist() == [0.0, 0.25, 0.5]
    assert tplan.requests.prompt_tokens.tolist() == [10, 256, 2] and tplan.model_names == [""]
    with pytest.raises(ReplayError, match="no such file"):
        load_plan(tmp_path / "missing.csv", ReplayOptions())
    with pytest.raises(ReplayError, match="speed"):
        ReplayOptions(speed=0)


@pytest.mark.timeout(60)
def test_prompts_have_the_exact_token_count_and_keys_are_chosen_per_tenant() -> None:
    for n in (1, 2, 3, 17, 300):
        assert count_tokens(synth_prompt(12, n)) == max(2, n)
    assert synth_prompt(1, 50) != synth_prompt(2, 50)
    keys = KeyChooser(None, {"team-a": "A"}, {"ODHSIM_API_KEYS": "B:team-b:low:clf,C:ops:high"})
    assert keys.key("team-a", "chat") == "A"
    assert keys.key("team-b", "clf") == "B"
    assert keys.key("team-b", "chat") == "C"  # team-b's key may not use chat: another key that may
    assert KeyChooser("D", None, {"ODHSIM_API_KEYS": "B:x:low"}).key("x", "chat") == "D"  # --api-key wins
    assert KeyChooser(None, None, {}).key("x", "chat") is None


@pytest.mark.timeout(60)
def test_replay_results_frame_concatenates_with_the_simulators(tmp_path: Path) -> None:
    path = write_scenario(tmp_path)
    result = asyncio.run(replay_async(path, "http://gw.test", speed=8.0, transport=httpx.MockTransport(FakeTarget()),
                                      env={}, max_prompt_tokens=16, max_output_tokens=2))  # fmt: skip
    sim = simulate(load_scenario(path))
    both = pd.concat([result.requests, sim.requests], ignore_index=True)
    assert set(both["run_id"].astype(str)) == {"replay-small-live-seed5", "replay-small-seed5"}


@pytest.mark.timeout(60)
def test_replay_cli_errors_are_clear_without_traceback(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from odhsim.cli import app

    runner = CliRunner()
    missing = runner.invoke(app, ["replay", str(tmp_path / "nope.csv"), "--target", "http://127.0.0.1:9"])
    assert missing.exit_code == 2 and "no such file" in missing.output and "Traceback" not in missing.output
    path = write_scenario(tmp_path)
    bad_target = runner.invoke(app, ["replay", str(path), "--target", "127.0.0.1:8000"])
    assert bad_target.exit_code == 2 and "http(s) URL" in bad_target.output
    bad_speed = runner.invoke(app, ["replay", str(path), "--target", "http://x", "--speed", "0"])
    assert bad_speed.exit_code == 2 and "--speed must be > 0" in bad_speed.output
    down = runner.invoke(app, ["replay", str(path), "--target", "http://127.0.0.1:9", "--limit", "2", "--quiet"])
    assert down.exit_code == 2 and "cannot reach http://127.0.0.1:9" in down.output, down.output


class RetryingTarget(FakeTarget):
    """FakeTarget whose answers say the request took `row % 3` retries (`x-odhsim-retries`); row 3 fails with a
    502 after 2 retries."""

    async def __call__(self, request: httpx.Request) -> httpx.Response:
        if request.method != "POST":
            return await super().__call__(request)
        body = json.loads(request.content)
        row = int(body["prompt"][1:].split("]")[0]) if "prompt" in body else int(body["id"])
        if row == 3:
            err = {"error": {"message": "replica c failed", "type": "server_error", "param": None,
                             "code": "upstream_failed"}}  # fmt: skip
            headers = {"x-odhsim-reason": "upstream_failed", "x-odhsim-retries": "2"}
            return httpx.Response(502, json=err, headers=headers)
        resp = await super().__call__(request)
        headers = {**resp.headers, "x-odhsim-retries": str(row % 3)}
        return httpx.Response(resp.status_code, content=resp.content, headers=headers)


@pytest.mark.timeout(60)
def test_retries_column_comes_from_the_gateways_header(tmp_path: Path) -> None:
    path = write_scenario(tmp_path)
    target = httpx.MockTransport(RetryingTarget())
    result = asyncio.run(replay_async(path, "http://gw.test", speed=8.0, transport=target, env={},
                                      max_prompt_tokens=16, max_output_tokens=2))  # fmt: skip
    req = result.requests
    retries = req["retries"].to_numpy()
    expected = [2 if i == 3 else i % 3 for i in range(len(req))]
    assert len(req) == 30 and retries.tolist() == expected
    assert str(req["retries"].dtype) == "int64" and retries.sum() > 0
    status = req["status"].astype(str).tolist()
    assert status[3] == "failed" and retries[3] == 2  # an error answer carries its retries too
    assert set(status) == {"ok", "failed"}


def test_a_replay_is_bounded_by_default() -> None:
    opts = ReplayOptions()
    assert (opts.limit, opts.max_duration_s) == (10_000, 900.0)
    with pytest.raises(ReplayError, match="--limit"):
        ReplayOptions(limit=0)


def test_a_scenario_replay_clips_to_its_own_live_limits_by_default(tmp_path: Path) -> None:
    doc = {**SCENARIO, "live": {"limits": {"max_prompt_tokens": 300, "max_tokens": 20}}}
    path = tmp_path / "limits.yaml"
    path.write_text(yaml.safe_dump(doc))
    plan = load_plan(path, ReplayOptions())
    assert (plan.max_prompt_tokens, plan.max_output_tokens) == (300, 20)  # not the trace defaults 256 / 64
    assert plan.requests.prompt_tokens.max() == 300 and plan.requests.output_tokens.max() <= 20
    smaller = load_plan(path, ReplayOptions(max_prompt_tokens=100))
    assert smaller.max_prompt_tokens == 100 and smaller.requests.prompt_tokens.max() == 100
