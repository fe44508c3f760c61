"""The probes' served steps (issue 11): each probe split into its phases on one clock, the overheads charged where
they happen (prefill and decode steps' extra in the engine, in + out on the first token, tail - out per later
token), and the simulator charging the prefill step's extra in the step itself."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from odhsim.calibrate.overheads import Probe, llm_overheads, probe_summary
from odhsim.calibrate.profile_file import load_profile
from odhsim.calibrate.served import ProbeTimes, decomposition, phases, served_overheads
from odhsim.profiles.coefficients import LatencyModel
from odhsim.scenario.load import load_scenario
from odhsim.sim.run import simulate
from tests.test_calibrate import TRUE, chat_model, llm_profile, poisson, scenario, write_json

LM = LatencyModel(model="t", gpu="cpu", tp=1, source="calibrated", **TRUE.model_dump())
IN_S, OUT_S, TAIL_S, GAP_S = 0.004, 0.002, 0.003, 0.0001
PREFILL_EXTRA_S = 0.001
STEP_S, PER_SEQ_S = 0.0003, 0.0003
"""The scripted serving costs: the served decode step at batch k is the fit's + STEP_S + PER_SEQ_S x k - GAP_S
(plus GAP_S before the next step)."""


def _row(t: float, d: float, prefill: int, decode: int, ctx: int) -> dict[str, object]:
    return {"time_s": t, "duration_s": d, "model": "chat", "prefill_tokens": prefill, "prefill_seqs": int(prefill > 0),
            "decode_seqs": decode, "context_tokens": ctx}  # fmt: skip


def alone(sent: float, prompt: int, output: int) -> tuple[ProbeTimes, list[dict[str, object]]]:
    """A probe sent alone and the steps its replica ran for it, with the scripted costs."""
    t = sent + IN_S
    d = LM.prefill_s(prompt) + PREFILL_EXTRA_S
    rows = [_row(t, d, prompt, 0, 0)]
    first = t + d + OUT_S
    for k in range(output - 1):
        t = t + d + GAP_S
        d = LM.decode_step_s(1, prompt + 1 + k) + STEP_S + PER_SEQ_S - GAP_S
        rows.append(_row(t, d, 0, 1, prompt + 1 + k))
    return ProbeTimes(prompt, output, sent, first, t + d + TAIL_S), rows


def together(sent: float, k: int, prompt: int, output: int) -> tuple[list[ProbeTimes], list[dict[str, object]]]:
    """k probes admitted in one step (k prompts), then decoding as a batch of k."""
    t = sent + IN_S
    d = LM.prefill_s(k * prompt, k * prompt * prompt)
    rows = [{**_row(t, d, k * prompt, 0, 0), "prefill_seqs": k}]
    first = t + d + OUT_S
    for j in range(output - 1):
        t = t + d + GAP_S
        ctx = k * (prompt + 1 + j)
        d = LM.decode_step_s(k, ctx) + STEP_S + PER_SEQ_S * k - GAP_S
        rows.append(_row(t, d, 0, k, ctx))
    return [ProbeTimes(prompt, output, sent, first, t + d + TAIL_S, together=k)] * k, rows


def scripted() -> tuple[list[ProbeTimes], pd.DataFrame]:
    probes, rows = [], []
    sent = 100.0
    for prompt, output in ((16, 8), (64, 16), (128, 32), (256, 8)):
        p, r = alone(sent, prompt, output)
        probes.append(p)
        rows += r
        sent = p.finish_s + 0.05
    for k in (4, 8):
        ps, r = together(sent, k, 64, 32)
        probes += ps
        rows += r
        sent = ps[0].finish_s + 0.05
    return probes, pd.DataFrame(rows)


def test_a_probe_sent_alone_splits_into_its_phases_exactly() -> None:
    probes, steps = scripted()
    ph = phases(probes[1], steps, TRUE)  # prompt 64, 16 tokens
    assert ph is not None
    assert ph.in_s == pytest.approx(IN_S, abs=1e-12)
    assert ph.out_s == pytest.approx(OUT_S, abs=1e-12)
    assert ph.tail_s == pytest.approx(TAIL_S, abs=1e-12)
    assert ph.prefill_s - ph.prefill_fit_s == pytest.approx(PREFILL_EXTRA_S, abs=1e-12)
    assert ph.decode_steps == 15
    assert ph.gaps_s == pytest.approx(15 * GAP_S, abs=1e-12)
    assert ph.decode_s + ph.gaps_s - ph.decode_fit_s == pytest.approx(15 * (STEP_S + PER_SEQ_S), abs=1e-12)
    # a probe whose steps are not all in the log is not split (a decode step missing)
    assert phases(probes[1], steps.drop(index=steps.index[12]), TRUE) is None


def test_the_served_overheads_are_the_scripted_costs() -> None:
    probes, steps = scripted()
    oh = served_overheads(probes, steps, TRUE)
    assert oh is not None
    assert oh.prefill_step_s == pytest.approx(PREFILL_EXTRA_S, abs=1e-9)
    assert oh.request_s == pytest.approx(IN_S + OUT_S, abs=1e-9)
    assert oh.step_s == pytest.approx(STEP_S, abs=1e-9)
    assert oh.step_per_seq_s == pytest.approx(PER_SEQ_S, abs=1e-9)
    # tail - out (1 ms) per request, spread over its later tokens: the median over 7, 15, 31, 7 tokens
    assert oh.per_token_s == pytest.approx(((TAIL_S - OUT_S) / 15 + (TAIL_S - OUT_S) / 7) / 2, abs=1e-7)
    doc = decomposition(probes, steps, TRUE)
    assert doc["matched"] == 4 and doc["in_s"] == pytest.approx(IN_S) and doc["tail_s"] == pytest.approx(TAIL_S)
    assert doc["decode_extra_batch_8_s"] == pytest.approx(STEP_S + 8 * PER_SEQ_S)


def test_calibrate_reads_the_overheads_from_the_served_steps_when_it_has_them() -> None:
    probes, steps = scripted()
    as_probe = [Probe("chat", p.prompt_tokens, p.output_tokens, p.first_token_s - p.sent_s, p.finish_s - p.sent_s,
                      p.together, sent_s=p.sent_s) for p in probes]  # fmt: skip
    served = llm_overheads(as_probe, TRUE, steps)
    assert served.prefill_step_s == pytest.approx(PREFILL_EXTRA_S, abs=1e-9)
    # without the step log: the client-side estimate, which cannot tell the prefill step's extra from the HTTP
    # around it (all of it in request_s)
    client = llm_overheads(as_probe, TRUE)
    assert client.prefill_step_s == 0.0
    assert client.request_s == pytest.approx(IN_S + OUT_S + PREFILL_EXTRA_S, abs=1e-9)
    assert "served" in probe_summary(as_probe, TRUE, steps) and "served" not in probe_summary(as_probe, TRUE)
    json.dumps(probe_summary(as_probe, TRUE, steps), allow_nan=False)  # the provenance stays valid JSON


def test_the_simulator_charges_the_prefill_step_extra_in_the_engine_step(tmp_path: Path) -> None:
    request_s, prefill_step_s = 0.004, 0.0015
    overheads = {"request_s": request_s, "prefill_step_s": prefill_step_s}
    write_json(tmp_path / "calib" / "chat.json", llm_profile(overheads))
    sc = load_scenario(scenario(tmp_path, [chat_model()], poisson(0.5, out_median=4), {"chat": 1.0}))
    res = simulate(sc)
    req = res.requests[res.requests["status"] == "ok"].sort_values("arrival_s")
    prev_finish = req["finish_s"].shift(1).fillna(-1.0).cummax()
    first = req[req["arrival_s"] > prev_finish]
    assert len(first) > 10
    p = first["prompt_tokens"].to_numpy(float)
    prefill = TRUE.prefill_base_s + TRUE.prefill_per_token_s * p + TRUE.prefill_per_token_sq_s * p * p
    ttft = (first["first_token_s"] - first["arrival_s"]).to_numpy()
    np.testing.assert_allclose(ttft, prefill + prefill_step_s + request_s, rtol=1e-9, atol=1e-12)


def test_a_profile_written_before_prefill_step_s_reads_it_as_zero(tmp_path: Path) -> None:
    old = llm_profile({"request_s": 0.01, "per_token_s": 0.0, "step_s": 0.0008, "step_per_seq_s": 0.0004})
    write_json(tmp_path / "old.json", old)
    prof = load_profile(tmp_path / "old.json")
    assert prof.overheads.prefill_step_s == 0.0
    assert prof.latency_model("L4").prefill_base_s == TRUE.prefill_base_s
