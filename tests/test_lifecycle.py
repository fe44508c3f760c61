"""Replica lifecycle: the state table, GPU holding, restart back-off, deploy validation, storage and start-up times."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from policies.lifecycle import (
    KNOWN_SCHEMES,
    LEGAL_TRANSITIONS,
    NEXT_STATES,
    STATES,
    IllegalTransition,
    Lifecycle,
    NodeModelCache,
    RestartBackoff,
    StartupModel,
    StartupParams,
    UnknownStorageScheme,
    download_time_s,
    holds_gpus,
    load_time_s,
    parse_storage_uri,
    serves,
    validate_deployment,
)
from policies.lifecycle.registration import register
from policies.registry import Registry

GIB = 2**30
# Llama-3-70B in bf16 (odhsim/data/models.yaml: 70.554e9 params x 2 bytes; 80 layers x 8 KV heads x 128 x 2 x 2).
W70B = 141_108_000_000
KV70B = 327_680
L40S_BYTES = 48 * GIB
H100_BYTES = 80 * GIB

EXPECTED_LEGAL = {
    ("pending", "downloading"),
    ("pending", "loading"),
    ("pending", "gone"),
    ("downloading", "loading"),
    ("downloading", "failed"),
    ("downloading", "gone"),
    ("loading", "testing"),
    ("loading", "failed"),
    ("loading", "gone"),
    ("testing", "ready"),
    ("testing", "failed"),
    ("testing", "gone"),
    ("ready", "draining"),
    ("ready", "failed"),
    ("draining", "gone"),
    ("failed", "restarting"),
    ("failed", "gone"),
    ("restarting", "pending"),
    ("restarting", "downloading"),
    ("restarting", "loading"),
    ("restarting", "gone"),
}


def _reach(state: str) -> Lifecycle:
    """A lifecycle driven along legal moves from pending into `state`."""
    paths = {
        "pending": [],
        "downloading": ["downloading"],
        "loading": ["downloading", "loading"],
        "testing": ["downloading", "loading", "testing"],
        "ready": ["loading", "testing", "ready"],
        "draining": ["loading", "testing", "ready", "draining"],
        "gone": ["gone"],
        "failed": ["downloading", "failed"],
        "restarting": ["downloading", "failed", "restarting"],
    }
    lc = Lifecycle(0.0, "r")
    for i, s in enumerate(paths[state], start=1):
        lc.transition(float(i), s)
    assert lc.state == state
    return lc


def test_table_is_the_documented_one() -> None:
    assert set(LEGAL_TRANSITIONS) == EXPECTED_LEGAL
    assert set(NEXT_STATES) == set(STATES)
    assert NEXT_STATES["gone"] == frozenset()


@pytest.mark.parametrize(("src", "dst"), list(itertools.product(STATES, STATES)))
def test_full_grid(src: str, dst: str) -> None:
    lc = _reach(src)
    n = len(lc.transitions)
    if (src, dst) in EXPECTED_LEGAL:
        t = lc.transition(100.0, dst, "why")
        assert (t.time, t.from_state, t.to_state, t.detail) == (100.0, src, dst, "why")
        assert lc.state == dst and lc.entered_at == 100.0 and len(lc.transitions) == n + 1
    else:
        with pytest.raises(IllegalTransition) as err:
            lc.transition(100.0, dst)
        assert f"{src} -> {dst}" in str(err.value)
        assert err.value.from_state == src and err.value.to_state == dst
        assert lc.state == src and len(lc.transitions) == n  # unchanged


def test_ready_must_drain_before_gone() -> None:
    lc = _reach("ready")
    with pytest.raises(IllegalTransition, match="legal from ready: draining, failed"):
        lc.transition(10.0, "gone")


def test_unknown_state_and_time_going_backwards() -> None:
    lc = Lifecycle(5.0)
    with pytest.raises(ValueError, match="unknown replica state 'warming'"):
        lc.transition(6.0, "warming")
    with pytest.raises(ValueError, match="time went backwards"):
        lc.transition(4.0, "downloading")
    with pytest.raises(ValueError):
        holds_gpus("nope")


def test_holds_gpus_and_serves() -> None:
    holding = {s for s in STATES if holds_gpus(s)}
    assert holding == set(STATES) - {"pending", "gone"}
    assert [s for s in STATES if serves(s)] == ["ready"]


def test_counters_and_time_in_state() -> None:
    lc = _reach("restarting")
    assert (lc.failures, lc.restarts) == (1, 1)
    assert lc.time_in_state(10.0) == 7.0
    lc.transition(20.0, "loading")
    lc.transition(30.0, "failed")
    assert lc.failures == 2 and not lc.serves and lc.holds_gpus and not lc.done


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 50), st.floats(0.0, 100.0)), max_size=60))
def test_random_walks_over_legal_moves(steps: list[tuple[int, float]]) -> None:
    lc = Lifecycle(0.0, "walk")
    now = 0.0
    for choice, dt in steps:
        options = sorted(NEXT_STATES[lc.state])
        if not options:
            break
        now += dt
        before = lc.state
        t = lc.transition(now, options[choice % len(options)])
        assert (t.from_state, t.to_state) in LEGAL_TRANSITIONS and t.from_state == before
    # The history is a connected, time-ordered chain ending in the current state.
    chain = [t.from_state for t in lc.transitions] + [lc.state]
    assert chain[0] == "pending"
    assert all(a.to_state == b.from_state for a, b in itertools.pairwise(lc.transitions))
    assert all(a.time <= b.time for a, b in itertools.pairwise(lc.transitions))
    assert lc.failures == sum(t.to_state == "failed" for t in lc.transitions)
    assert lc.restarts == sum(t.to_state == "restarting" for t in lc.transitions)
    if lc.state == "gone":
        assert lc.done and not lc.holds_gpus and not NEXT_STATES[lc.state]
    # Every ready spell of a replica that left it ended in draining or failed.
    assert all(t.to_state in {"draining", "failed"} for t in lc.transitions if t.from_state == "ready")


# --- restart back-off ---------------------------------------------------------------------------------------


def test_crashloop_backoff_defaults() -> None:
    b = RestartBackoff()
    assert [b.next_delay(a) for a in range(1, 9)] == [10, 20, 40, 80, 160, 300, 300, 300]
    assert b.next_delay(10_000) == 300
    assert b.attempt_after(3, ran_for_s=30.0) == 4
    assert b.attempt_after(6, ran_for_s=600.0) == 1
    with pytest.raises(ValueError):
        b.next_delay(0)
    assert RestartBackoff(base_s=5, factor=1, max_s=60).next_delay(7) == 5
    with pytest.raises(ValueError):
        RestartBackoff(base_s=10, max_s=5)


# --- deploy validation --------------------------------------------------------------------------------------


def test_70b_on_one_48gb_gpu_is_rejected_naming_memory() -> None:
    v = validate_deployment(
        weight_bytes=W70B, kv_bytes_per_token=KV70B, gpu_memory_bytes=L40S_BYTES, tp=1, min_kv_tokens=8192
    )
    assert not v.approved and not v
    assert "does not fit GPU memory" in v.reason and "48.0 GiB" in v.reason and "tp=1" in v.reason
    assert len(v.problems) == 1


def test_70b_fits_on_four_h100s_but_not_on_two_l40s() -> None:
    kw = {"weight_bytes": W70B, "kv_bytes_per_token": KV70B, "min_kv_tokens": 8192}
    ok = validate_deployment(**kw, gpu_memory_bytes=H100_BYTES, tp=4, pool_gpus=8, gpus_per_node=8, name="chat")
    assert ok.approved and ok.reason == "deployment 'chat' approved"
    assert not validate_deployment(**kw, gpu_memory_bytes=L40S_BYTES, tp=2).approved
    assert validate_deployment(**kw, gpu_memory_bytes=L40S_BYTES, tp=4).approved
    # memory_utilization is what makes the difference at the edge: 2 x H100 holds 70.6 GB + KV per GPU only at 0.9.
    assert validate_deployment(**kw, gpu_memory_bytes=H100_BYTES, tp=2).approved
    assert not validate_deployment(**kw, gpu_memory_bytes=H100_BYTES, tp=2, memory_utilization=0.8).approved


def test_unknown_scheme_and_pool_and_node_limits() -> None:
    base = {"weight_bytes": 16e9, "kv_bytes_per_token": 131072, "gpu_memory_bytes": H100_BYTES}
    v = validate_deployment(**base, storage_uri="ftp://models/llama")
    assert not v.approved and "unknown storage scheme 'ftp://'" in v.reason and "s3://" in v.reason
    v = validate_deployment(**base, tp=2, replicas=5, pool_gpus=8)
    assert not v.approved and "needs 10 GPUs (5 replicas x tp=2) but the pool has 8" in v.reason
    v = validate_deployment(**base, tp=8, gpus_per_node=4)
    assert not v.approved and "tp=8 is larger than the 4 GPUs per node" in v.reason
    v = validate_deployment(**base, tp=8, gpus_per_node=4, pool_gpus=4, storage_uri="nfs://x")
    assert len(v.problems) == 3  # every problem is reported, not just the first
    assert validate_deployment(**base, storage_uri="hf://meta-llama/Meta-Llama-3-8B").approved


# --- storage ------------------------------------------------------------------------------------------------


def test_parse_storage_uri() -> None:
    for scheme in KNOWN_SCHEMES:
        u = parse_storage_uri(f"{scheme}://bucket/model")
        assert (u.scheme, u.path, str(u)) == (scheme, "bucket/model", f"{scheme}://bucket/model")
    with pytest.raises(UnknownStorageScheme, match=r"unknown storage scheme 'ftp://'.*s3://, gs://, pvc://"):
        parse_storage_uri("ftp://x/y")
    with pytest.raises(UnknownStorageScheme, match="no scheme"):
        parse_storage_uri("/models/llama")
    with pytest.raises(ValueError, match="empty path"):
        parse_storage_uri("s3://")


def test_download_and_load_formulas() -> None:
    assert download_time_s(2e9, "s3") == pytest.approx(0.5 + 1.0)
    assert download_time_s(1e9, "pvc://vol/m") == pytest.approx(0.1 + 1.0)
    assert download_time_s(0, "hf") == pytest.approx(1.0)
    assert load_time_s(24e9, 6e9, tp=4) == pytest.approx(1.0)
    assert load_time_s(24e9, 6e9, tp=1, engine_init_s=2.0) == pytest.approx(6.0)
    custom = StartupParams(s3={"bytes_per_s": 1e9, "latency_s": 0.0})
    assert download_time_s(5e9, "s3", custom) == pytest.approx(5.0)
    with pytest.raises(UnknownStorageScheme):
        download_time_s(1, "ftp")
    with pytest.raises(ValueError):
        load_time_s(1, 1e9, tp=0)


def test_70b_cold_start_60_to_90_s_and_warm_5_to_10_s_with_defaults() -> None:
    """Assumed: Llama-3-70B bf16 (141.1 GB of weights), tp=4, weights in s3:// (or gs://), default speeds."""
    model = StartupModel()
    for uri in ("s3://models/llama-3-70b", "gs://models/llama-3-70b"):
        cold = model.plan(W70B, uri, tp=4, cached=False)
        assert 60.0 <= cold.total_s <= 90.0, cold
        assert cold.states == ("downloading", "loading", "testing", "ready")
    warm = model.plan(W70B, "s3://models/llama-3-70b", tp=4, cached=True)
    assert 5.0 <= warm.total_s <= 10.0, warm
    assert warm.download_s == 0.0 and warm.states == ("loading", "testing", "ready")
    assert warm.total_s < cold.total_s


@pytest.mark.parametrize("scheme", KNOWN_SCHEMES)
def test_warm_start_is_faster_than_cold_for_every_scheme(scheme: str) -> None:
    model = StartupModel()
    cold = model.plan(16e9, f"{scheme}://m", tp=1)
    warm = model.plan(16e9, f"{scheme}://m", tp=1, cached=True)
    assert warm.total_s < cold.total_s
    assert warm.load_s == cold.load_s and warm.test_s == cold.test_s


def test_node_model_cache_lru() -> None:
    cache = NodeModelCache(capacity_bytes=300)
    assert cache.add(0.0, "a", 100).stored
    assert cache.add(1.0, "b", 100).stored
    assert cache.add(2.0, "c", 100).stored
    assert cache.has("a") and "b" in cache and cache.used_bytes == 300
    assert cache.touch(3.0, "a")  # a is now the most recently used
    added = cache.add(4.0, "d", 150)
    assert added.stored and added.evicted == ("b", "c")
    assert cache.keys() == ("a", "d") and cache.last_used("a") == 3.0
    assert cache.add(5.0, "huge", 301) == type(added)(False, ())  # too big: stored nowhere, nothing evicted
    assert cache.keys() == ("a", "d")
    assert not cache.touch(5.0, "zzz")
    assert cache.add(6.0, "a", 400).evicted == ("a",)  # re-added larger than the cache: dropped
    assert cache.remove("d") and not cache.remove("d") and cache.used_bytes == 0


def test_cache_decides_cold_or_warm_start() -> None:
    cache = NodeModelCache(capacity_bytes=1e12)
    model = StartupModel()
    key, uri = "llama-3-70b", "s3://models/llama-3-70b"
    first = model.plan(W70B, uri, tp=4, cached=cache.has(key))
    cache.add(first.total_s, key, W70B)
    second = model.plan(W70B, uri, tp=4, cached=cache.has(key))
    assert not first.warm and second.warm and second.total_s < first.total_s


def test_registration() -> None:
    reg = Registry()
    register(reg)
    rng = np.random.default_rng(0)
    backoff = reg.build("restart-backoff", "crashloop", {"max_s": 60}, rng)
    assert isinstance(backoff, RestartBackoff) and backoff.next_delay(5) == 60
    startup = reg.build("model-startup", "storage-bandwidth", {"engine_init_s": 0}, rng)
    assert isinstance(startup, StartupModel) and startup.params.engine_init_s == 0
