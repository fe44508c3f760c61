"""Vidur-fitted GPU profiles (issue 11): the composition is Vidur's, the fit holds on held-out shapes, the issue's
7B / A100 example now matches Vidur instead of the roofline, and the carried data are intact."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from odhsim.cli import app
from odhsim.errors import OdhsimError
from odhsim.profiles.coefficients import COEFFICIENT_FIELDS, LatencyModel
from odhsim.profiles.latency import COEFFICIENTS_PATH, latency_model
from odhsim.profiles.roofline import roofline_model
from odhsim.profiles.vidur import LAYER_OPS, Group, VidurComposer, load_vidur, round_kv
from odhsim.profiles.vidur_fit import evaluate_vidur_holdout, example_check, fit_vidur_profiles
from odhsim.scenario.load import scenario_from_dict
from odhsim.sim.run import simulate
from odhsim.workload.catalog import sha256_file
from tests.conftest import data_file
from tests.test_repository_data import readme_table

VIDUR_FILES = {
    "vidur/operators.csv.gz",
    "vidur/attention_llama2_7b_a100_tp1.csv.gz",
    "vidur/all_reduce.csv.gz",
    "vidur/cpu_overheads_a100.csv",
    "vidur/LICENSE-MIT",
}
# bounds on the held-out error of the fitted GPU terms against the composed Vidur step times, per group
PREFILL_MDAPE_BOUND, DECODE_MDAPE_BOUND, MAX_APE_BOUND = 5.0, 8.0, 25.0


@pytest.fixture(scope="module")
def holdout() -> pd.DataFrame:
    return evaluate_vidur_holdout()


def _ops_row(model: str, device: str, tp: int, tokens: int) -> pd.Series:
    """Hand lookup in the carried operator table: the median of the profiled rows at exactly `tokens`."""
    ops = pd.read_csv(data_file("vidur", "operators.csv.gz"))
    rows = ops[(ops["model"] == model) & (ops["device"] == device) & (ops["tp"] == tp) & (ops["num_tokens"] == tokens)]
    assert len(rows) >= 1
    return rows[list(LAYER_OPS)].fillna(0.0).median()


def _attention(prefill: bool, **shape: int) -> float:
    att = pd.read_csv(data_file("vidur", "attention_llama2_7b_a100_tp1.csv.gz"))
    rows = att[att["is_prefill"] == prefill]
    for col, value in shape.items():
        rows = rows[rows[col] == value]
    assert len(rows) >= 1
    return float(rows[f"time_stats.attn_{'prefill' if prefill else 'decode'}.median"].median())


def test_composition_reproduces_hand_summed_vidur_steps() -> None:
    """32 layers x (nine operator medians at the batch's tokens + the attention kernel, x 1.1 when batched)."""
    c = VidurComposer(Group("llama2-7b", "A100-80GB", 1))
    ops16 = _ops_row("meta-llama/Llama-2-7b-hf", "a100", 1, 16).sum()
    attn = _attention(False, batch_size=16, kv_cache_size=1024)
    assert c.decode_ms(16, 1024) == pytest.approx(32 * (ops16 + 1.1 * attn), rel=1e-12)
    ops1024 = _ops_row("meta-llama/Llama-2-7b-hf", "a100", 1, 1024).sum()
    attn = _attention(True, prefill_chunk_size=1024, kv_cache_size=0)
    assert c.prefill_ms(1024, 0) == pytest.approx(32 * (ops1024 + attn), rel=1e-12)


def test_composition_at_tp2_adds_two_all_reduces_and_scales_attention() -> None:
    """Llama-2-70B / A100 / TP2: 80 layers, two all-reduces of 64 x 8192 x 2 bytes each (+ 0.02 ms launch), and the
    7B kernel scaled by KV bytes per GPU (8 KV heads / 2 vs 32) above its launch floor."""
    c = VidurComposer(Group("llama2-70b", "A100-80GB", 2))
    ops = _ops_row("meta-llama/Llama-2-70b-hf", "a100", 2, 64).sum()
    ar = pd.read_csv(data_file("vidur", "all_reduce.csv.gz"))
    ar = ar[(ar["network_device"] == "a100_dgx") & (ar["num_workers"] == 2) & (ar["size"] == 64 * 8192 * 2)]
    assert len(ar) == 1
    all_reduce = float(ar["all_reduce_median_ms"].iloc[0]) + 0.02
    att = pd.read_csv(data_file("vidur", "attention_llama2_7b_a100_tp1.csv.gz"))
    floor = float(att.loc[~att["is_prefill"], "time_stats.attn_decode.median"].min())
    attn = floor + (_attention(False, batch_size=64, kv_cache_size=1024) - floor) * (8 / 2) / 32
    assert c.decode_ms(64, 1024) == pytest.approx(80 * (ops + 2 * all_reduce + 1.1 * attn), rel=1e-12)


def test_held_out_error_below_bounds_in_every_group(holdout: pd.DataFrame) -> None:
    assert len(holdout) == 21  # 7B x {A100, H100} x TP 1-8, 70B x {A100, H100} x TP 2-8, Llama-3 8B/70B on A100
    assert (holdout["n_test_prefill"] > 50).all() and (holdout["n_test_decode"] > 200).all()
    assert (holdout["prefill_mdape_pct"] < PREFILL_MDAPE_BOUND).all(), holdout
    assert (holdout["decode_mdape_pct"] < DECODE_MDAPE_BOUND).all(), holdout
    assert (holdout[["prefill_max_ape_pct", "decode_max_ape_pct"]] < MAX_APE_BOUND).all().all(), holdout
    assert (holdout["cpu_max_ape_pct"] < 5.0).all()
    reference = holdout[(holdout["model"] == "llama2-7b") & (holdout["gpu"] == "A100-80GB") & (holdout["tp"] == 1)]
    assert reference["attention"].item() == "measured"


def test_llama2_7b_a100_example_is_close_to_vidur_not_the_roofline() -> None:
    """Issue 11: decode at batch 128 x 900 tokens was 84 ms in odhsim, 46 ms from Vidur's predictor."""
    lm = latency_model("llama2-7b", "A100-80GB", 1)
    assert lm.source == "fitted-vidur"
    cpu_ms = (lm.cpu_step_s + lm.cpu_per_seq_s * 128) * 1e3
    gpu_ms = lm.decode_step_s(128, 128 * 900) * 1e3 - cpu_ms
    composed = VidurComposer(Group("llama2-7b", "A100-80GB", 1)).decode_ms(128, round_kv(900))
    assert composed == pytest.approx(46.0, rel=0.06)  # the composition itself agrees with Vidur's predictor
    assert gpu_ms == pytest.approx(composed, rel=0.06)
    assert gpu_ms == pytest.approx(46.0, rel=0.10)
    assert roofline_model("llama2-7b", "A100-80GB", 1).decode_step_s(128, 128 * 900) * 1e3 > 80.0
    assert 5.0 < cpu_ms < 9.0  # vLLM's CPU work at batch 128 (Vidur measured 7.2 ms), on top of the GPU time
    example = example_check()
    assert example["stored_step_ms"] == pytest.approx(gpu_ms + cpu_ms)
    assert example["stored_step_ms"] < 0.75 * example["roofline_ms"]


def test_cpu_term_is_separate_and_follows_vidur_measurements() -> None:
    lm = latency_model("llama2-7b", "A100-80GB", 1)
    cpu = pd.read_csv(data_file("vidur", "cpu_overheads_a100.csv"))
    cpu = cpu[(cpu["model_name"] == "meta-llama/Llama-2-7b-hf") & (cpu["tensor_parallel_degree"] == 1)]
    terms = ["schedule_median", "sampler_e2e_median", "prepare_inputs_e2e_median", "process_model_outputs_median"]
    for batch in (8, 128):
        row = cpu[cpu["batch_size"] == batch].iloc[0]
        measured_ms = row[terms].sum() + row["ray_comm_time_mean"]
        assert (lm.cpu_step_s + lm.cpu_per_seq_s * batch) * 1e3 == pytest.approx(measured_ms, rel=0.05)
    gpu_only = dataclasses.replace(lm, cpu_step_s=0.0, cpu_per_seq_s=0.0)
    assert lm.decode_step_s(8, 8000) - gpu_only.decode_step_s(8, 8000) == pytest.approx(
        lm.cpu_step_s + 8 * lm.cpu_per_seq_s, rel=1e-9
    )
    assert lm.prefill_s(512) - gpu_only.prefill_s(512) == pytest.approx(lm.cpu_step_s + lm.cpu_per_seq_s, rel=1e-9)
    splitwise = latency_model("llama2-70b", "H100-80GB", 8)  # measured end to end: CPU work is in its base already
    assert splitwise.source == "fitted" and splitwise.cpu_step_s == splitwise.cpu_per_seq_s == 0.0


def test_latency_model_rejects_a_negative_cpu_term() -> None:
    kw = {name: 1e-3 for name in COEFFICIENT_FIELDS} | {"prefill_knee_tokens": 0}
    with pytest.raises(ValueError, match="cpu_per_seq_s"):
        LatencyModel(model="m", gpu="g", tp=1, source="fitted", cpu_per_seq_s=-1e-5, **kw)


def test_committed_vidur_coefficients_match_a_fresh_fit() -> None:
    committed = json.loads(COEFFICIENTS_PATH.read_text())["profiles"]
    fresh = fit_vidur_profiles()
    stored = {k: v for k, v in committed.items() if v.get("source") == "vidur"}
    splitwise = {k for k, v in committed.items() if v.get("source", "splitwise") == "splitwise"}
    assert stored.keys() == fresh.keys() - splitwise and len(stored) == 15
    for key, entry in stored.items():
        for name in (*COEFFICIENT_FIELDS, "cpu_step_s", "cpu_per_seq_s"):
            assert entry[name] == pytest.approx(fresh[key][name], rel=1e-4, abs=1e-12), (key, name)


def test_carried_vidur_data_matches_its_checksums_and_licence() -> None:
    table = readme_table()
    assert table.keys() >= VIDUR_FILES
    for name in VIDUR_FILES:
        size, digest = table[name]
        path = data_file(*name.split("/"))
        assert path.stat().st_size == size and sha256_file(path) == digest
    assert sum(table[n][0] for n in VIDUR_FILES) < 300_000
    assert "Copyright (c) Microsoft Corporation" in data_file("vidur", "LICENSE-MIT").read_text(encoding="utf-8")


def test_missing_vidur_data_is_named(tmp_path: Path) -> None:
    with pytest.raises(OdhsimError, match=r"operators\.csv\.gz"):
        load_vidur(tmp_path)


def test_profiles_fit_vidur_prints_the_table_and_writes_the_csv(tmp_path: Path) -> None:
    out = tmp_path / "vidur.csv"
    result = CliRunner().invoke(app, ["profiles", "fit", "--vidur", "--csv-out", str(out), "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    table = pd.read_csv(out)
    assert len(table) == len(report["held_out_error"]) == 21
    assert set(table["stored"]) == {"vidur", "splitwise kept"}
    assert np.isclose(report["vidur_composed_gpu_ms"], 48.2, atol=0.1)
    assert len(report["splitwise_crosscheck"]) == 6
    refused = CliRunner().invoke(app, ["profiles", "fit", "--csv-out", str(out)])
    assert refused.exit_code != 0 and "--vidur" in refused.output


def test_a_slow_replica_fault_slows_the_cpu_term_too() -> None:
    """slow_replica makes every step `factor` times longer, the CPU work per step included."""
    from odhsim.sim.faults import slowed

    lm = latency_model("llama2-7b", "A100-80GB", 1)
    slow = slowed(lm, 2.0)
    assert slow.decode_step_s(64, 64_000) == pytest.approx(2.0 * lm.decode_step_s(64, 64_000), rel=1e-12)
    assert slow.prefill_s(1000) == pytest.approx(2.0 * lm.prefill_s(1000), rel=1e-12)


def test_vidur_composition_agrees_with_splitwise_measurements_where_both_exist() -> None:
    """The only real end-to-end check of the scaled attention kernel and the CPU term: llama2-70b, 6 groups."""
    from odhsim.profiles.vidur_fit import splitwise_crosscheck

    table = splitwise_crosscheck()
    assert len(table) == 6 and set(table["model"]) == {"llama2-70b"}
    assert table["prefill_ratio_median"].between(0.75, 1.10).all(), table
    assert table["decode_ratio_median"].between(0.65, 1.20).all(), table


def test_a_mixed_chunked_step_pays_the_cpu_step_term_once(tmp_path: Path) -> None:
    """A V1 step that prefills a prompt while decoding the running batch is one engine iteration: the Vidur
    profile's CPU step term (scheduling, sampling, input preparation) is paid once, not once in prefill_s and
    again in decode_step_s."""
    lm = latency_model("llama3-8b", "A100-80GB", 1)
    assert lm.source == "fitted-vidur" and lm.cpu_step_s > 0
    sc = {
        "name": "mixed", "seed": 1, "duration_s": 1, "gpu_pool": [{"gpu": "A100-80GB", "count": 1}],
        "models": [{"name": "chat", "profile": "llama3-8b", "gpu": "A100-80GB", "replicas": 1,
                    "engine": {"max_num_seqs": 16, "max_num_batched_tokens": 8192, "enable_prefix_caching": False}}],
        "workload": {"sources": [{"kind": "trace", "path": "t.csv", "format": "csv"}], "models": {"chat": 1.0}},
        "outputs": {"steps": True},
    }  # fmt: skip
    (tmp_path / "t.csv").write_text("arrival_s,prompt_tokens,output_tokens\n0.0,100,200\n0.5,300,1\n")
    res = simulate(scenario_from_dict(sc, base_dir=tmp_path))
    steps = res.steps
    assert steps is not None
    mixed = steps[(steps["prefill_tokens"] > 0) & (steps["decode_seqs"] > 0)]
    assert len(mixed) == 1
    row = mixed.iloc[0]
    assert int(row["prefill_tokens"]) == 300 and int(row["decode_seqs"]) == 1
    expect = lm.prefill_s(300, 300 * 300) + lm.decode_step_s(1, int(row["context_tokens"])) - lm.cpu_step_s
    assert row["duration_s"] == pytest.approx(expect, rel=1e-12)
