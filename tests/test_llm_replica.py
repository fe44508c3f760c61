"""The continuous-batching replica against hand-computed timelines (constant step costs make them exact)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import simpy

from odhsim.profiles.latency import LatencyModel
from odhsim.scenario.deployment import EngineLimits
from odhsim.sim.decode_batch import DecodeBatch, ceil_div
from odhsim.sim.llm_replica import LlmReplica
from odhsim.sim.request import SimRequest

PREFILL_S = 0.1
STEP_S = 0.01


def flat_latency(prefill_per_token: float = 0.0, per_ctx: float = 0.0) -> LatencyModel:
    return LatencyModel(
        model="test", gpu="test", tp=1, source="test",
        prefill_base_s=PREFILL_S, prefill_per_token_s=prefill_per_token, prefill_per_token_sq_s=0.0,
        decode_base_s=STEP_S, decode_per_seq_s=0.0, decode_per_context_token_s=per_ctx,
    )  # fmt: skip


class Harness:
    def __init__(
        self,
        kv_tokens: int = 100_000,
        block_size: int = 16,
        max_num_seqs: int = 256,
        scheduler: str = "prefill-first",
        **lat,
    ) -> None:
        self.env = simpy.Environment()
        self.done: dict[int, tuple[float, str, str, SimRequest]] = {}
        engine = EngineLimits(
            block_size=block_size, max_num_seqs=max_num_seqs, enable_prefix_caching=False, scheduler=scheduler
        )
        self.replica = LlmReplica(
            self.env, 0, "r0", "m", 0.05, self._finish, engine=engine, latency=flat_latency(**lat),
            kv_capacity_tokens=kv_tokens, prefix_block_tokens=16,
        )  # fmt: skip

    def _finish(self, req: SimRequest, now: float, status: str, reason: str) -> None:
        assert req.row not in self.done, "a request finished twice"
        self.done[req.row] = (now, status, reason, req)

    def submit_at(self, t: float, row: int, prompt: int, output: int) -> None:
        def proc():  # type: ignore[no-untyped-def]
            yield self.env.timeout(t)
            self.replica.submit(SimRequest(row, t, prompt, output, 0, 2, 0, -1, None))

        self.env.process(proc())


def test_single_request_timeline() -> None:
    h = Harness()
    h.submit_at(0.0, 0, prompt=100, output=5)
    h.env.run()
    finish, status, _, req = h.done[0]
    assert status == "ok"
    assert req.first_token_s == pytest.approx(PREFILL_S)
    assert finish == pytest.approx(PREFILL_S + 4 * STEP_S)  # 1 token from prefill, 4 decode steps
    assert req.generated == 5
    assert h.replica.used_blocks == 0


def test_arrival_mid_span_joins_at_next_step_boundary() -> None:
    h = Harness()
    h.submit_at(0.0, 0, prompt=100, output=11)  # decodes 10 steps: 0.10 .. 0.20
    h.submit_at(0.125, 1, prompt=100, output=3)  # arrives during step 3 (0.12-0.13)
    h.env.run()
    # request 1 is prefilled at the boundary 0.13, taking 0.1 s: first token at 0.23
    assert h.done[1][3].first_token_s == pytest.approx(0.23)
    # then both decode together: request 1 needs 2 steps -> 0.25
    assert h.done[1][0] == pytest.approx(0.25)
    # request 0 did 3 steps before the prefill and 7 after it: 0.23 + 7 * 0.01
    assert h.done[0][0] == pytest.approx(0.30)


def test_batch_limit_queues_requests() -> None:
    h = Harness(max_num_seqs=1)
    h.submit_at(0.0, 0, prompt=10, output=3)
    h.submit_at(0.0, 1, prompt=10, output=3)
    h.env.run()
    assert h.done[0][0] == pytest.approx(0.12)
    assert h.done[1][3].first_token_s == pytest.approx(0.22)
    assert h.done[1][0] == pytest.approx(0.24)


def test_kv_exhaustion_preempts_and_recomputes() -> None:
    # 8 blocks of 16 tokens (V0's 1% watermark rounds to 0 blocks); two requests of 40 prompt tokens need 3 blocks
    # each up front and grow to 6 blocks each: the cache cannot hold both to the end, so the later one is preempted.
    h = Harness(kv_tokens=8 * 16, block_size=16)
    h.submit_at(0.0, 0, prompt=40, output=50)
    h.submit_at(0.0, 1, prompt=40, output=50)
    h.env.run()
    assert {v[1] for v in h.done.values()} == {"ok"}
    assert h.replica.preemptions >= 1
    assert all(v[3].generated == 50 for v in h.done.values())
    assert h.replica.used_blocks == 0
    assert h.replica.in_flight == 0


def test_prompt_larger_than_cache_fails_with_reason() -> None:
    h = Harness(kv_tokens=4 * 16)
    h.submit_at(0.0, 0, prompt=1000, output=2)
    h.env.run()
    _, status, reason, _ = h.done[0]
    assert status == "failed" and "KV cache" in reason


def test_decode_span_uses_growing_context() -> None:
    h = Harness(per_ctx=1e-4)
    h.submit_at(0.0, 0, prompt=100, output=4)
    h.env.run()
    # steps at context 101, 102, 103
    expected = PREFILL_S + sum(STEP_S + 1e-4 * c for c in (101, 102, 103))
    assert h.done[0][0] == pytest.approx(expected)
    assert not math.isnan(h.done[0][3].start_s)


# -- chunked prefill (vLLM V1's scheduler) ------------------------------------------------------------------


def chunked(**kw) -> Harness:  # type: ignore[no-untyped-def]
    return Harness(scheduler="chunked-prefill", **kw)


def test_chunked_single_request_matches_prefill_first() -> None:
    h = chunked()
    h.submit_at(0.0, 0, prompt=100, output=5)
    h.env.run()
    assert h.done[0][3].first_token_s == pytest.approx(PREFILL_S)
    assert h.done[0][0] == pytest.approx(PREFILL_S + 4 * STEP_S)


def test_long_prompt_is_split_across_steps_by_the_token_budget() -> None:
    h = Harness(scheduler="chunked-prefill")
    h.replica.engine = h.replica.engine.model_copy(update={"max_num_batched_tokens": 64})
    h.submit_at(0.0, 0, prompt=100, output=2)
    h.env.run()
    # two steps of 64 and 36 prompt tokens, each costing the step's fixed 0.1 s; then one decode step
    assert h.done[0][3].first_token_s == pytest.approx(2 * PREFILL_S)
    assert h.done[0][0] == pytest.approx(2 * PREFILL_S + STEP_S)


def test_decoding_continues_while_a_new_prompt_is_prefilled() -> None:
    h = chunked()
    h.submit_at(0.0, 0, prompt=100, output=11)  # decodes from 0.10
    h.submit_at(0.125, 1, prompt=100, output=3)  # arrives during the decode step 0.12-0.13
    h.env.run()
    # at 0.13 a mixed step runs request 0's decode step (0.01) with request 1's whole prompt (0.1): ends 0.24
    assert h.done[1][3].first_token_s == pytest.approx(0.24)
    assert h.done[1][0] == pytest.approx(0.26)
    # request 0: 3 steps before, 1 in the mixed step, 6 after (unlike prefill-first, it was not paused)
    assert h.done[0][0] == pytest.approx(0.30)


def test_chunked_kv_exhaustion_still_preempts_and_finishes_everything() -> None:
    h = chunked(kv_tokens=8 * 16, block_size=16)
    for row in range(3):
        h.submit_at(0.0, row, prompt=40, output=50)
    h.env.run()
    assert {v[1] for v in h.done.values()} == {"ok"}
    assert h.replica.preemptions >= 1
    assert h.replica.used_blocks == 0 and h.replica.in_flight == 0


@pytest.mark.parametrize("bs", [1, 8, 16, 32])
def test_new_blocks_matches_per_request_block_counts(bs: int) -> None:
    """The histogram window gives what summing ceil((computed + k) / bs) - ceil(computed / bs) over requests gives,
    where a decoding request of context c has computed c - 1 tokens (vLLM V1 allocates at each step's start)."""
    rng = np.random.default_rng(bs)
    batch = DecodeBatch(bs)
    for row in range(30):
        req = SimRequest(row, 0.0, int(rng.integers(1, 300)), 10**6, 0, 2, 0, -1, None)
        req.ctx, req.generated = req.prompt_tokens + 1, 1
        batch.join(req)
        batch.steps += int(rng.integers(0, 7))
        for k in range(3 * bs + 2):
            computed = [r.ctx - r.join_step + batch.steps - 1 for r in batch.requests.values()]
            want = sum(ceil_div(c + k, bs) - ceil_div(c, bs) for c in computed)
            assert batch.new_blocks(k) == want, (row, k)


def test_steps_done_equals_the_latency_models_decode_steps_within() -> None:
    """The replica's own count of decode steps done mid-span (what kv usage reads at each scrape) is the latency
    model's, exact at step boundaries too, for spans with and without context growth."""
    rng = np.random.default_rng(3)
    h = Harness()
    rep = h.replica
    for trial in range(300):
        per_ctx = 0.0 if trial % 5 == 0 else float(rng.uniform(1e-9, 1e-5))
        lat = LatencyModel(
            model="t", gpu="t", tp=1, source="t", prefill_base_s=0.1, prefill_per_token_s=0.0,
            prefill_per_token_sq_s=0.0, decode_base_s=float(rng.uniform(1e-3, 0.05)),
            decode_per_seq_s=float(rng.uniform(0.0, 1e-3)), decode_per_context_token_s=per_ctx,
        )  # fmt: skip
        batch, context = int(rng.integers(1, 257)), int(rng.integers(1, 500_000))
        rep.latency = lat
        rep._set_span_terms(batch, context)
        boundaries = [lat.decode_span_s(batch, context, k) for k in range(1, 40)]
        for elapsed in [0.0, -1.0, *boundaries, *(math.nextafter(b, 0.0) for b in boundaries), *rng.uniform(0, 2, 20)]:
            assert rep._steps_done(float(elapsed)) == lat.decode_steps_within(batch, context, float(elapsed))
