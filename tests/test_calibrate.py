"""Calibration (issue 11, C2): the step fit, the profile file a scenario names, the simulator's use of it (latency,
overheads, the dynamic batcher), --from-requests, and a quick real calibrate of the live tiny LM."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from odhsim.calibrate.fit import fit_steps, fit_with_holdout, predict_steps
from odhsim.calibrate.from_requests import compare_fits, fit_from_requests
from odhsim.calibrate.profile_file import CalibratedProfile, StepCoefficients, load_profile, write_profile
from odhsim.cli import app
from odhsim.errors import ScenarioError
from odhsim.scenario.load import load_scenario
from odhsim.sim.run import simulate

ROOT = Path(__file__).resolve().parents[1]
TRUE = StepCoefficients(
    prefill_base_s=0.002,
    prefill_per_token_s=1e-5,
    prefill_per_token_sq_s=2e-9,
    decode_base_s=0.003,
    decode_per_seq_s=2e-4,
    decode_per_context_token_s=1e-7,
)
PROVENANCE = {"machine": "test", "device": "cpu", "date": "2026-12-02"}


def llm_profile(overheads: dict[str, float] | None = None) -> dict[str, Any]:
    return {
        "model": "chat",
        "kind": "llm",
        "latency": TRUE.model_dump(),
        "engine": {"kv_capacity_tokens": 8192, "max_context": 512, "kv_bytes_per_token": 2048, "weight_bytes": 10**6},
        "overheads": overheads or {},
        "provenance": PROVENANCE,
    }


BATCHING = {"service_time_s_by_batch": {"1": 0.001, "4": 0.002, "16": 0.005}, "max_batch_size": 16,
            "max_batch_delay_ms": 5.0}  # fmt: skip


def fixed_profile(request_s: float = 0.0) -> dict[str, Any]:
    return {"model": "digits", "kind": "fixed", "batching": BATCHING, "overheads": {"request_s": request_s},
            "provenance": PROVENANCE}  # fmt: skip


def scenario(tmp: Path, models: list[dict[str, Any]], source: dict[str, Any], weights: dict[str, float]) -> Path:
    doc = {
        "name": "calib-test",
        "seed": 1,
        "duration_s": source.get("duration_s", 60),
        "gpu_pool": [{"gpu": "L4", "count": 4}],
        "models": models,
        "gateway": {"router": {"profile": "round-robin"}},
        "workload": {"sources": [source], "models": weights},
    }
    path = tmp / "s.yaml"
    path.write_text(json.dumps(doc))  # JSON is YAML
    return path


def chat_model(replicas: int = 1) -> dict[str, Any]:
    return {"name": "chat", "kind": "llm", "profile": {"file": "calib/chat.json"}, "gpu": "L4", "replicas": replicas,
            "engine": {"max_num_seqs": 16, "max_model_len": 512, "max_num_batched_tokens": 8192,
                       "enable_prefix_caching": False}}  # fmt: skip


def poisson(rate: float, duration: float = 60.0, out_median: int = 16) -> dict[str, Any]:
    return {"kind": "poisson", "rate": rate, "duration_s": duration,
            "prompt_tokens": {"dist": "lognormal", "median": 120, "sigma": 0.6, "max": 400},
            "output_tokens": {"dist": "lognormal", "median": out_median, "sigma": 0.6, "max": 64}}  # fmt: skip


def write_json(path: Path, doc: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc))


# -- the fit ------------------------------------------------------------------------------------------------------
def synthetic_steps(coef: StepCoefficients, noise: float, seed: int = 0) -> pd.DataFrame:
    rows = [{"prefill_tokens": p, "prefill_sum_sq": p * p, "decode_batch": 0, "decode_context": 0}
            for p in (8, 16, 32, 48, 64, 96, 128, 192, 256, 320, 384, 448)]  # fmt: skip
    rows += [{"prefill_tokens": 0, "prefill_sum_sq": 0, "decode_batch": b, "decode_context": b * c}
             for b in (1, 2, 3, 4, 6, 8, 10, 12, 16) for c in (16, 64, 128, 256, 480)]  # fmt: skip
    df = pd.DataFrame(rows)
    rng = np.random.default_rng(seed)
    df["duration_s"] = predict_steps(coef, df) * (1.0 + rng.normal(0.0, noise, len(df)))
    return df


def test_the_fit_recovers_known_coefficients_from_synthetic_steps_within_10_percent() -> None:
    exact = fit_steps(synthetic_steps(TRUE, noise=0.0))
    for name, want in TRUE.model_dump().items():
        assert getattr(exact, name) == pytest.approx(want, rel=1e-3, abs=1e-12), name
    steps = synthetic_steps(TRUE, noise=0.02)  # 2% measurement noise
    coef, held = fit_with_holdout(steps, holdout_prompts=(48, 192, 320), holdout_batches=(3, 10))
    for name in ("prefill_base_s", "prefill_per_token_s", "decode_base_s", "decode_per_seq_s"):
        assert getattr(coef, name) == pytest.approx(getattr(TRUE, name), rel=0.10), name
    assert held.points == 3 + 2 * 5
    assert held.median_pct < 3.0 and held.p90_pct < 6.0


# -- the profile file ---------------------------------------------------------------------------------------------
def test_a_profile_file_round_trips(tmp_path: Path) -> None:
    prof = CalibratedProfile.model_validate(llm_profile({"request_s": 0.004, "per_token_s": 0.0005}))
    path = write_profile(prof, tmp_path / "calib" / "chat.json")
    assert load_profile(path) == prof
    assert load_profile("calib/chat.json", tmp_path) == prof  # relative to the scenario's folder
    fixed = CalibratedProfile.model_validate(fixed_profile())
    assert load_profile(write_profile(fixed, tmp_path / "d.json")) == fixed
    assert fixed.batching is not None and fixed.batching.service_s(2) == pytest.approx(0.001 + 0.001 / 3)


@pytest.mark.parametrize(
    ("mutate", "expect"),
    [
        (lambda d: d["latency"].update(decode_base_s=-1.0), "latency.decode_base_s: Input should be greater than"),
        (lambda d: d["engine"].pop("kv_capacity_tokens"), "engine.kv_capacity_tokens: required field is missing"),
        (lambda d: d.update(batching=BATCHING), "batching: not for kind 'llm'"),
        (lambda d: d["latency"].update(decode_speed=1.0), "latency.decode_speed: unknown field"),
    ],
)
def test_profile_validation_errors_name_the_file_and_the_field(tmp_path: Path, mutate: Any, expect: str) -> None:
    doc = llm_profile()
    mutate(doc)
    write_json(tmp_path / "calib" / "chat.json", doc)
    path = scenario(tmp_path, [chat_model()], poisson(1.0), {"chat": 1.0})
    with pytest.raises(ScenarioError) as err:
        load_scenario(path)
    msg = str(err.value)
    assert f"{path} line" in msg and "models[0].profile.file" in msg
    assert str(tmp_path / "calib" / "chat.json") in msg and expect in msg


def test_a_missing_profile_file_or_one_of_the_wrong_kind_is_refused(tmp_path: Path) -> None:
    path = scenario(tmp_path, [chat_model()], poisson(1.0), {"chat": 1.0})
    with pytest.raises(ScenarioError, match=r"models\[0\]\.profile\.file: .*calib/chat.json: no such profile file"):
        load_scenario(path)
    write_json(tmp_path / "calib" / "chat.json", fixed_profile())
    with pytest.raises(ScenarioError, match="is a 'fixed' profile, the model is kind 'llm'"):
        load_scenario(path)


# -- the simulator with a profile file ----------------------------------------------------------------------------
def test_the_simulator_uses_the_calibrated_latency_and_overheads(tmp_path: Path) -> None:
    request_s, per_token_s, step_s, step_per_seq_s = 0.004, 0.0005, 0.001, 0.0001
    overheads = {"request_s": request_s, "per_token_s": per_token_s, "step_s": step_s, "step_per_seq_s": step_per_seq_s}
    write_json(tmp_path / "calib" / "chat.json", llm_profile(overheads))
    sc = load_scenario(scenario(tmp_path, [chat_model()], poisson(0.5, out_median=4), {"chat": 1.0}))
    assert sc.models[0].profile_file is not None and sc.models[0].profile == "calib/chat.json"
    req = simulate(sc).requests
    req = req[req["status"] == "ok"].sort_values("arrival_s")
    # requests that met an idle replica: TTFT = one prefill step over the prompt + the request overhead
    prev_finish = req["finish_s"].shift(1).fillna(-1.0).cummax()
    alone = req[req["arrival_s"] > prev_finish]
    assert len(alone) > 10
    p = alone["prompt_tokens"].to_numpy(float)
    prefill = TRUE.prefill_base_s + TRUE.prefill_per_token_s * p + TRUE.prefill_per_token_sq_s * p * p
    ttft = (alone["first_token_s"] - alone["arrival_s"]).to_numpy()
    np.testing.assert_allclose(ttft, prefill + request_s, rtol=1e-9, atol=1e-12)
    # and the end: (output - 1) decode steps at batch 1 (context: prompt + tokens so far) with the live loop's
    # step overhead, plus per_token_s each
    one = alone[alone["output_tokens"] >= 2].iloc[0]
    n, ctx = int(one["output_tokens"]) - 1, int(one["prompt_tokens"])
    step = TRUE.decode_base_s + step_s + TRUE.decode_per_seq_s + step_per_seq_s
    steps = sum(step + TRUE.decode_per_context_token_s * (ctx + 1 + k) for k in range(n))
    e2e_after_first = one["finish_s"] - one["first_token_s"]
    assert e2e_after_first == pytest.approx(steps + per_token_s * n, rel=1e-6)


def test_a_fixed_model_with_a_batching_profile_batches_as_the_live_batcher(tmp_path: Path) -> None:
    write_json(tmp_path / "calib" / "digits.json", fixed_profile(request_s=0.003))
    trace = tmp_path / "t.csv"
    # three requests within the first one's 5 ms delay, then 20 at once (16 fill a batch, 4 wait), then one alone
    times = [0.0, 0.001, 0.002] + [1.0] * 20 + [3.0]
    trace.write_text("arrival_s,prompt_tokens,output_tokens\n" + "".join(f"{t},1,1\n" for t in times))
    digits = {"name": "digits", "kind": "fixed", "profile": {"file": "calib/digits.json"}, "gpu": "L4", "replicas": 1,
              "service_time": {"dist": "deterministic", "mean_s": 0.001}}  # fmt: skip
    src = {"kind": "trace", "path": "t.csv", "format": "csv"}
    sc = load_scenario(scenario(tmp_path, [digits], src, {"digits": 1.0}))
    req = simulate(sc).requests.sort_values(["arrival_s", "request_id"])
    assert (req["status"] == "ok").all() and len(req) == 24
    fin = req["finish_s"].to_numpy()
    svc = {1: 0.001, 3: 0.001 + 2 * (0.001 / 3), 4: 0.002, 16: 0.005}
    np.testing.assert_allclose(fin[:3], 0.005 + svc[3] + 0.003)  # one batch of 3, closed at the delay
    np.testing.assert_allclose(fin[3:19], 1.0 + svc[16] + 0.003)  # a full batch runs at once
    # the other 4 waited for that pass, then a new delay: the live batcher's deadline starts when it looks again
    np.testing.assert_allclose(fin[19:23], 1.0 + svc[16] + 0.005 + svc[4] + 0.003)
    np.testing.assert_allclose(fin[23], 3.0 + 0.005 + svc[1] + 0.003)


# -- from requests ------------------------------------------------------------------------------------------------
def test_from_requests_recovers_the_coefficients_of_a_simulated_run(tmp_path: Path) -> None:
    write_json(tmp_path / "calib" / "chat.json", llm_profile())
    sc = load_scenario(scenario(tmp_path, [chat_model(replicas=2)], poisson(20.0, 120.0), {"chat": 1.0}))
    req = simulate(sc).requests
    req.to_parquet(tmp_path / "requests.parquet")
    coef, counts = fit_from_requests(req[req["status"] == "ok"].reset_index(drop=True))
    assert counts["decode_rows"] > 1000 and counts["prefill_rows"] > 100
    for name in ("prefill_base_s", "prefill_per_token_s", "decode_base_s", "decode_per_seq_s"):
        assert getattr(coef, name) == pytest.approx(getattr(TRUE, name), rel=0.05), name
    cmp = compare_fits(coef, TRUE)
    assert cmp["diff_pct"].abs().max() < 2.0  # step times within 2% of the true ones
    # the command prints both fits and their difference, and writes the fit
    out = CliRunner().invoke(app, ["calibrate", "--from-requests", str(tmp_path / "requests.parquet"), "--model",
                                   "chat", "--instrumented", str(tmp_path / "calib" / "chat.json"), "--out",
                                   str(tmp_path / "fr"), "--json"])  # fmt: skip
    assert out.exit_code == 0, out.output
    doc = json.loads(out.output)
    assert doc["latency"]["decode_base_s"] == pytest.approx(TRUE.decode_base_s, rel=0.05)
    assert len(doc["comparison"]) == 7 and (tmp_path / "fr" / "chat-from-requests.json").exists()


def test_from_requests_errors_name_the_file_and_column(tmp_path: Path) -> None:
    bad = tmp_path / "r.parquet"
    pd.DataFrame({"arrival_s": [0.0], "finish_s": [1.0]}).to_parquet(bad)
    out = CliRunner().invoke(app, ["calibrate", "--from-requests", str(bad), "--out", str(tmp_path)])
    assert out.exit_code == 2
    assert str(bad) in out.output and "missing column(s) first_token_s, prompt_tokens, output_tokens" in out.output


# -- a real calibrate ---------------------------------------------------------------------------------------------
HELD_OUT_MEDIAN_BOUND_PCT = 40.0
"""On a loaded 2-core machine a quick grid's steps (a few ms each) are noisy; on an idle one the median is ~5-15%."""


def test_a_quick_real_calibrate_of_the_live_scenario(tmp_path: Path) -> None:
    pytest.importorskip("torch")
    from odhsim.calibrate.instrumented import CalibrateOptions, calibrate_scenario

    result = calibrate_scenario(ROOT / "scenarios" / "live.yaml", CalibrateOptions(quick=True), tmp_path)
    chat, digits = result.profiles["chat"], result.profiles["digits"]
    assert chat.provenance.held_out is not None and digits.provenance.held_out is not None
    assert chat.provenance.held_out.points == 1 + 3  # prompt 64, and batch 4 at three contexts
    assert chat.provenance.held_out.median_pct < HELD_OUT_MEDIAN_BOUND_PCT
    assert chat.latency is not None and chat.latency.decode_base_s + chat.latency.decode_per_seq_s > 0
    assert chat.overheads.request_s > 0  # HTTP + gateway cost something
    assert digits.batching is not None and sorted(digits.batching.service_time_s_by_batch) == [1, 2, 4, 8, 16]
    assert sorted(Path(f).name for f in result.files) == ["chat.json", "digits.json", "live-calibrated.yaml"]
    sc = load_scenario(tmp_path / "live-calibrated.yaml")
    assert [m.profile for m in sc.models] == ["chat.json", "digits.json"]
    assert sc.gateway.scrape_interval_s == sc.live.scrape_interval_s
    res = simulate(load_scenario(tmp_path / "live-calibrated.yaml", ["duration_s=10"]))
    assert (res.requests["status"] == "ok").mean() > 0.95


def test_replicas_sharing_too_few_cores_stretch_their_steps(tmp_path: Path) -> None:
    trace = tmp_path / "t.csv"
    trace.write_text("arrival_s,prompt_tokens,output_tokens\n0.0,100,1\n0.0,100,1\n")  # one to each replica
    src = {"kind": "trace", "path": "t.csv", "format": "csv"}
    prefill = TRUE.prefill_base_s + TRUE.prefill_per_token_s * 100 + TRUE.prefill_per_token_sq_s * 100**2

    def ttfts(cpu: dict[str, Any] | None) -> list[float]:
        doc = llm_profile() | ({"cpu": cpu} if cpu else {})
        write_json(tmp_path / "calib" / "chat.json", doc)
        req = simulate(load_scenario(scenario(tmp_path, [chat_model(replicas=2)], src, {"chat": 1.0}))).requests
        assert req["replica"].nunique() == 2
        return sorted((req["first_token_s"] - req["arrival_s"]).tolist())

    assert ttfts(None) == pytest.approx([prefill, prefill], rel=1e-12)
    # one core, +50% per busy replica beyond it: the second replica starts its step while the first computes
    cpu = {"cores": 1, "slowdown_per_extra_busy": 0.5, "measured": {"1": 1.0, "2": 1.5}}
    assert ttfts(cpu) == pytest.approx([prefill, 1.5 * prefill], rel=1e-12)


def test_device_cuda_without_a_gpu_says_so_and_runs_on_one_when_present(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    args = ["calibrate", str(ROOT / "scenarios" / "live.yaml"), "--device", "cuda", "--quick", "--out", str(tmp_path)]
    out = CliRunner().invoke(app, args)
    if not torch.cuda.is_available():
        assert out.exit_code == 2 and "--device cuda: torch sees no CUDA device on this machine" in out.output
        return
    assert out.exit_code == 0, out.output  # a GPU machine: the same quick calibrate, timed on the GPU
    prof = load_profile(tmp_path / "chat.json")
    assert prof.provenance.device.startswith("cuda: ") and prof.provenance.held_out is not None
