"""Generators, transforms, merge and the config-driven builder: statistical shape, determinism, errors."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from pydantic import ValidationError

from odhsim.errors import ScenarioError, TraceError
from odhsim.rng import RngStreams
from odhsim.workload import transforms as tf
from odhsim.workload.build import build_workload
from odhsim.workload.config import WorkloadConfig
from odhsim.workload.generators import (
    AttributeAssigner,
    AttributeSpec,
    EmpiricalLength,
    FixedLength,
    LogNormalLength,
    diurnal_arrivals,
    gamma_arrivals,
    poisson_arrivals,
    spike_arrivals,
    synthetic_batches,
)
from odhsim.workload.loaders import summarize
from odhsim.workload.schema import NO_SESSION, RequestBatch, concat
from tests.conftest import DATA_DIR, data_file

TRACES = DATA_DIR
CONV_2023 = "azure_llm_2023/AzureLLMInferenceTrace_conv.csv"
COLUMNS = ("arrival_s", "prompt_tokens", "output_tokens", "model", "priority", "tenant", "session", "block_ids")


def rng(seed: int) -> np.random.Generator:
    return np.random.default_rng(seed)


def times(chunks: Any) -> np.ndarray:
    return np.concatenate(list(chunks))


def same(a: RequestBatch, b: RequestBatch) -> bool:
    return all(np.array_equal(getattr(a, c), getattr(b, c)) for c in (*COLUMNS, "block_offsets"))


def batches(n: int, seed: int = 0, rate: float = 100.0) -> list[RequestBatch]:
    arr = poisson_arrivals(rng(seed), rate, requests=n, chunk_rows=1000)
    return list(synthetic_batches(arr, FixedLength(100), FixedLength(10), rng(1), rng(2)))


# --- arrivals -----------------------------------------------------------------------------------------------------
def test_poisson_rate_and_cv() -> None:
    t = times(poisson_arrivals(rng(1), 20.0, duration_s=2000.0, chunk_rows=4096))
    assert np.all(np.diff(t) >= 0) and t[0] >= 0 and t[-1] < 2000.0
    assert len(t) / 2000.0 == pytest.approx(20.0, rel=0.03)  # 40,000 expected: 3 % is > 5 sigma
    gaps = np.diff(t)
    assert gaps.std() / gaps.mean() == pytest.approx(1.0, abs=0.03)


@pytest.mark.parametrize("cv", [0.5, 1.0, 3.0])
def test_gamma_cv_and_mean_rate(cv: float) -> None:
    t = times(gamma_arrivals(rng(2), 10.0, cv, requests=200_000, chunk_rows=10_000))
    assert len(t) == 200_000
    gaps = np.diff(t)
    assert 1 / gaps.mean() == pytest.approx(10.0, rel=0.05)
    assert gaps.std() / gaps.mean() == pytest.approx(cv, rel=0.05)  # tolerance: 5 % of the target CV


def test_diurnal_follows_the_sinusoid() -> None:
    t = times(diurnal_arrivals(rng(3), 20.0, 0.8, 600.0, phase_s=50.0, duration_s=3600.0, chunk_rows=1000))
    counts, edges = np.histogram(t, bins=120, range=(0, 3600))
    mid = (edges[:-1] + edges[1:]) / 2
    expected = 20.0 * 30 * (1 + 0.8 * np.sin(2 * np.pi * (mid - 50.0) / 600.0))
    assert np.corrcoef(counts, expected)[0, 1] > 0.95
    assert len(t) == pytest.approx(20.0 * 3600, rel=0.03)  # whole periods: mean rate is the base rate
    assert len(times(diurnal_arrivals(rng(3), 5.0, 0.5, 60.0, requests=777))) == 777


def test_spike_adds_exactly_n_in_its_window() -> None:
    s = times(spike_arrivals(rng(4), 2500, 100.0, 30.0, chunk_rows=1000))
    assert len(s) == 2500 and np.all((s >= 100.0) & (s < 130.0)) and np.all(np.diff(s) >= 0)
    base = [
        RequestBatch.from_columns(t, np.ones(len(t)), np.ones(len(t)))
        for t in poisson_arrivals(rng(5), 5, duration_s=300)
    ]
    spike = [RequestBatch.from_columns(t, np.ones(len(t)), np.ones(len(t))) for t in [s]]
    merged = concat(tf.merge([base, spike], chunk_rows=500))
    inside = lambda b: int(np.sum((b.arrival_s >= 100) & (b.arrival_s < 130)))  # noqa: E731
    assert inside(merged) == inside(concat(base)) + 2500


def test_generators_are_seeded_and_chunk_size_independent() -> None:
    for make in (
        lambda r, c: poisson_arrivals(r, 7.0, duration_s=500, chunk_rows=c),
        lambda r, c: gamma_arrivals(r, 7.0, 2.0, requests=3000, chunk_rows=c),
        lambda r, c: diurnal_arrivals(r, 7.0, 0.5, 100.0, duration_s=500, chunk_rows=c),
    ):
        a, b = times(make(rng(9), 100)), times(make(rng(9), 1777))
        assert np.array_equal(a, b)
        assert not np.array_equal(a[:100], times(make(rng(10), 100))[:100])


def test_requests_and_duration_whichever_first() -> None:
    assert len(times(poisson_arrivals(rng(1), 10.0, duration_s=1e6, requests=50))) == 50
    t = times(poisson_arrivals(rng(1), 10.0, duration_s=10.0, requests=10**6, start_s=5.0))
    assert t[0] >= 5.0 and t[-1] < 15.0
    with pytest.raises(ValueError, match="duration_s or requests"):
        poisson_arrivals(rng(1), 1.0)


# --- lengths and attributes ---------------------------------------------------------------------------------------
def test_length_samplers() -> None:
    x = LogNormalLength.from_median(1020, 1.0, 1, 16000).sample(rng(1), 100_000)
    assert np.median(x) == pytest.approx(1020, rel=0.03) and x.min() >= 1 and x.max() <= 16000
    y = LogNormalLength.from_mean_cv(300, 0.5).sample(rng(2), 100_000)
    assert y.mean() == pytest.approx(300, rel=0.02) and y.std() / y.mean() == pytest.approx(0.5, rel=0.05)
    assert FixedLength(128).sample(rng(0), 3).tolist() == [128, 128, 128]
    e = EmpiricalLength(np.array([5, 7])).sample(rng(3), 10_000)
    assert set(e.tolist()) == {5, 7} and np.mean(e == 5) == pytest.approx(0.5, abs=0.03)


def test_attribute_weights() -> None:
    spec = AttributeSpec(model_weights=[1, 3], priority_weights=[0.1, 0.2, 0.6, 0.1], tenant_weights=[2, 0, 1])
    label = AttributeAssigner(spec, lambda k: RngStreams(7).get(k))
    b = concat(label(x) for x in batches(40_000))
    assert np.bincount(b.model) / len(b) == pytest.approx([0.25, 0.75], abs=0.015)
    assert np.bincount(b.priority) / len(b) == pytest.approx([0.1, 0.2, 0.6, 0.1], abs=0.015)
    assert np.bincount(b.tenant, minlength=3) / len(b) == pytest.approx([2 / 3, 0, 1 / 3], abs=0.015)
    assert np.all(b.session == NO_SESSION) and not b.has_blocks


def test_sessions_and_synthetic_prefix_blocks() -> None:
    spec = AttributeSpec(tenant_weights=[1, 1], continue_prob=0.75, recent_sessions=8, system_blocks=3, block_tokens=16)
    label = AttributeAssigner(spec, lambda k: RngStreams(3).get(k))
    b = concat(label(x) for x in batches(20_000))
    ids, turns = np.unique(b.session, return_counts=True)
    assert ids.min() >= 0 and turns.mean() == pytest.approx(1 / (1 - 0.75), rel=0.05)
    tenants_per_session = {s: set(b.tenant[b.session == s].tolist()) for s in ids[:200]}
    assert all(len(t) == 1 for t in tenants_per_session.values())
    assert np.all(np.diff(b.block_offsets) == 100 // 16 + 1)  # ceil(100 / 16) blocks per request
    first = {t: b.blocks_of(int(np.flatnonzero(b.tenant == t)[0]))[:3].tolist() for t in (0, 1)}
    for i in range(50):  # every request starts with its tenant's system prompt
        assert b.blocks_of(i)[:3].tolist() == first[int(b.tenant[i])]
    assert first[0] != first[1]
    s = int(ids[np.argmax(turns)])
    rows = np.flatnonzero(b.session == s)
    assert b.blocks_of(int(rows[0])).tolist() == b.blocks_of(int(rows[-1])).tolist()  # turns share history
    assert summarize([b])["prefix_reuse_fraction"] > 0.7


# --- transforms and merge -----------------------------------------------------------------------------------------
def test_transforms() -> None:
    src = batches(5000, rate=10.0)
    span = concat(src).arrival_s[-1]
    assert concat(tf.time_scale(src, 0.5)).arrival_s[-1] == pytest.approx(span / 2)
    assert concat(tf.rate_scale(src, 4.0)).arrival_s[-1] == pytest.approx(span / 4)
    w = concat(tf.window(src, 100.0, 200.0))
    assert w.arrival_s.min() >= 0 and w.arrival_s.max() < 100 and len(w) == pytest.approx(1000, rel=0.15)
    w2 = concat(tf.window(src, 100.0, 200.0, rebase=False))
    assert w2.arrival_s.min() >= 100 and np.allclose(w2.arrival_s - 100, w.arrival_s)
    kept = concat(tf.sample(src, 0.3, rng(1)))
    assert len(kept) / 5000 == pytest.approx(0.3, abs=0.03)
    assert len(concat(tf.limit(src, 1234))) == 1234
    assert concat(tf.shift(src, 5.0)).arrival_s[0] == pytest.approx(concat(src).arrival_s[0] + 5)
    assert [len(b) for b in tf.rechunk(src, 2000)] == [2000, 2000, 1000]


def test_merge_sorted_lossless_deterministic() -> None:
    def sources(sizes: tuple[int, int, int]) -> list[list[RequestBatch]]:
        out = []
        for seed, (rate, n) in enumerate(zip((50.0, 1.0, 200.0), (3000, 40, 9000), strict=True)):
            arr = poisson_arrivals(rng(seed), rate, requests=n, chunk_rows=sizes[seed])
            out.append(list(synthetic_batches(arr, FixedLength(seed + 1), FixedLength(1), rng(0), rng(0))))
        return out

    a = concat(tf.merge(sources((100, 7, 1000)), chunk_rows=333))
    b = concat(tf.merge(sources((1000, 3, 64)), chunk_rows=4096))
    assert len(a) == 3000 + 40 + 9000 and np.all(np.diff(a.arrival_s) >= 0)
    assert np.bincount(a.prompt_tokens).tolist() == [0, 3000, 40, 9000]
    assert same(a, b)
    assert np.array_equal(
        np.sort(a.arrival_s), np.sort(np.concatenate([concat(s).arrival_s for s in sources((9, 9, 9))]))
    )


# --- config and builder -------------------------------------------------------------------------------------------
BASE = {
    "kind": "poisson",
    "name": "base",
    "rate": 20.0,
    "duration_s": 300,
    "prompt_tokens": {"dist": "fixed", "value": 7},
}
SPIKE = {
    "kind": "spike",
    "requests": 400,
    "start_s": 100,
    "length_s": 20,
    "prompt_tokens": {"dist": "fixed", "value": 9},
}


def build(cfg: dict[str, Any], seed: int = 1, chunk_rows: int = 1000, **kw: Any) -> Any:
    kw.setdefault("model_names", ["chat", "code"])
    return build_workload(cfg, streams=RngStreams(seed), base_dir=TRACES, chunk_rows=chunk_rows, **kw)


def test_build_is_deterministic_and_reiterable() -> None:
    cfg = {
        "sources": [BASE, SPIKE],
        "models": {"chat": 1, "code": 1},
        "priorities": {"high": 1, "low": 1},
        "tenants": {"a": 1, "b": 2},
        "sessions": {"continue_prob": 0.5},
        "prefix": {"system_blocks": 1},
    }
    w = build(cfg)
    assert w.tenant_names == ("a", "b") and w.block_tokens == 16 and w.source_names == ("base", "source1")
    a, b = concat(w.batches()), concat(w.batches())
    assert same(a, b) and same(a, concat(build(cfg, chunk_rows=77).batches()))
    assert not np.array_equal(a.arrival_s[:50], concat(build(cfg, seed=2).batches()).arrival_s[:50])
    assert np.sum(a.prompt_tokens == 9) == 400 and np.all(np.diff(a.arrival_s) >= 0)
    assert set(np.unique(a.priority).tolist()) == {1, 3} and a.has_blocks


def test_adding_a_source_keeps_the_others_numbers() -> None:
    alone = concat(build({"sources": [BASE], "tenants": {"a": 1, "b": 1}}).batches())
    both = concat(build({"sources": [SPIKE, BASE], "tenants": {"a": 1, "b": 1}}).batches())
    assert same(alone, both.take(both.prompt_tokens == 7))


def test_build_with_traces() -> None:
    data_file("mooncake", "conversation_trace.jsonl")
    cfg = {
        "sources": [
            {"kind": "trace", "path": "mooncake/conversation_trace.jsonl", "window": [0, 600], "time_scale": 0.5},
            {"kind": "gamma", "rate": 2.0, "cv": 2.0, "duration_s": 300,
             "output_tokens": {"dist": "resample", "path": CONV_2023, "column": "output"}},
        ],
        "max_requests": 1500,
    }  # fmt: skip
    w = build(cfg)
    b = concat(w.batches())
    assert w.block_tokens == 512 and len(b) == 1500 and b.arrival_s.max() < 300
    assert w.readers[0].stats.rows > 0


@pytest.mark.parametrize(
    ("cfg", "error", "match"),
    [
        ({"sources": [BASE], "models": {"gpt": 1}}, ScenarioError, r"workload\.models: unknown name"),
        ({"sources": [{**BASE, "models": {"gpt": 1}}]}, ScenarioError, r"sources\[0\]\.models: unknown name"),
        ({"sources": [BASE], "tenants": {"z": 1}}, ScenarioError, "unknown tenant"),
        ({"sources": [{"kind": "trace", "path": "nope.csv"}]}, TraceError, "nope.csv: trace file not found"),
    ],
)
def test_build_errors(cfg: dict[str, Any], error: type, match: str) -> None:
    with pytest.raises(error, match=match):
        build(cfg, tenant_names=["a"])


def test_source_names_must_be_unique() -> None:
    with pytest.raises(ValidationError, match="source names must be unique"):
        WorkloadConfig.model_validate({"sources": [BASE, BASE]})


@pytest.mark.parametrize(
    ("source", "field"),
    [
        ({"kind": "poisson", "rate": -1, "duration_s": 1}, "rate"),
        ({"kind": "gamma", "rate": 1, "cv": 0, "requests": 3}, "cv"),
        ({"kind": "poisson", "rate": 1, "requests": 3, "prompt_tokens": {"dist": "weird"}}, "prompt_tokens"),
        ({"kind": "poisson", "rate": 1, "requests": 3, "tenants": {"a": 0}}, "tenants"),
        ({"kind": "poisson", "rate": 1, "requests": 3, "priorities": {"urgent": 1}}, "priorities"),
        ({"kind": "poisson", "rate": 1, "requests": 3, "typo": 1}, "typo"),
        ({"kind": "trace", "path": "x.csv", "window": [5, 1]}, "window"),
    ],
)
def test_config_validation_names_the_field(source: dict[str, Any], field: str) -> None:
    with pytest.raises(ValidationError) as err:
        WorkloadConfig.model_validate({"sources": [source]})
    assert any(field in err_["loc"] for err_ in err.value.errors())


def test_jitter_spreads_quantized_arrivals_and_keeps_order() -> None:
    from odhsim.workload import transforms as tf
    from odhsim.workload.schema import RequestBatch, concat

    raw = np.repeat(np.arange(0.0, 300.0, 3.0), 9)  # 9 requests on each 3-second instant
    batch = RequestBatch.from_columns(raw, np.arange(len(raw)) + 1, np.ones(len(raw)))
    chunks = [batch.take(np.arange(i, min(i + 50, len(raw)))) for i in range(0, len(raw), 50)]
    out = concat(list(tf.jitter(iter(chunks), 3.0, np.random.default_rng(1))))
    assert len(out) == len(raw)
    assert np.all(np.diff(out.arrival_s) >= 0)
    assert sorted(out.prompt_tokens.tolist()) == list(range(1, len(raw) + 1))  # nothing lost or duplicated
    moved = out.arrival_s - raw[out.prompt_tokens - 1]
    assert moved.min() >= 0 and moved.max() < 3.0
    assert len(np.unique(out.arrival_s)) == len(raw)
    one_chunk = concat(list(tf.jitter(iter([batch]), 3.0, np.random.default_rng(1))))
    np.testing.assert_array_equal(one_chunk.arrival_s, out.arrival_s)  # chunking does not change the draws
