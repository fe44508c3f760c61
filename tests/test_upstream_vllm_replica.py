"""The LLM replica against vLLM V1's KV-cache and scheduler code, case by case (issue 16, the replica half).

Upstream read (vllm-project/vllm):
- vllm/v1/core/kv_cache_manager.py @ ace980e6de0540f49b0c63248437a1a7807590c1: get_computed_blocks caps a hit at
  num_tokens - 1; allocate_slots allocates for computed + new tokens and caches (hashes) full blocks at schedule.
- vllm/v1/core/single_type_kv_cache_manager.py (FullAttentionManager.find_longest_cache_hit): max_num_blocks =
  max_length // block_size, leading blocks until the first miss.
- vllm/v1/core/block_pool.py @ c59cb7941357443da7c5eef75cfa8697d683d228: touch takes hit blocks out of the free
  queue, free_blocks puts hashed blocks at its tail and fresh ones at its head, get_new_blocks evicts from the
  head; get_usage = 1 - free / total.
- vllm/v1/core/sched/scheduler.py @ b4622cf924bc72504aed99e486062d6633fde39e: schedule() preempts
  self.running.pop() (the newest, a prefill in progress included) until the request fits, and schedules no
  WAITING request when preempted_reqs is not empty; long_prefill_token_threshold caps each request's tokens.
- V0 (prefill-first): vllm/config.py SchedulerConfig._verify_args refuses max_num_batched_tokens < max_model_len
  without chunked prefill; vllm/core/block_manager.py keeps watermark=0.01 of the blocks free at admission.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest
import simpy

from odhsim.errors import ScenarioError
from odhsim.scenario.deployment import EngineLimits
from odhsim.scenario.load import scenario_from_dict
from odhsim.sim.llm_replica import LlmReplica
from odhsim.sim.request import SimRequest
from tests.test_llm_replica import PREFILL_S, STEP_S, flat_latency

BS = 16


class Replica:
    """One replica on flat step costs (prefill step 0.1 s, decode step 0.01 s) with `blocks` KV blocks of 16."""

    def __init__(self, blocks: int, unit: int = BS, per_token: float = 0.0, **engine: object) -> None:
        self.env = simpy.Environment()
        self.done: dict[int, SimRequest] = {}
        self.replica = LlmReplica(
            self.env, 0, "r", "m", 0.05, self._finish, engine=EngineLimits(**engine),
            latency=flat_latency(prefill_per_token=per_token), kv_capacity_tokens=blocks * BS,
            prefix_block_tokens=unit,
        )  # fmt: skip
        self.reqs: dict[int, SimRequest] = {}

    def _finish(self, req: SimRequest, now: float, status: str, reason: str) -> None:
        assert status == "ok", reason
        self.done[req.row] = req

    def at(self, t: float, row: int, prompt: int, output: int, ids: np.ndarray | None = None) -> None:
        req = SimRequest(row, t, prompt, output, 0, 2, 0, -1, ids)
        self.reqs[row] = req

        def proc() -> Iterator[simpy.Event]:
            yield self.env.timeout(t)
            self.replica.submit(req)

        self.env.process(proc())


def ids(n: int, start: int = 0) -> np.ndarray:
    return np.arange(start, start + n, dtype=np.int64)


# -- prefix cache in the KV blocks -----------------------------------------------------------------------------
# (prompt tokens, expected cached tokens on an exact repeat): hits are full blocks, at most (n - 1) // 16 of them
# (kv_cache_manager.get_computed_blocks: max_cache_hit_length = num_tokens - 1; find_longest_cache_hit: // bs).
REPEATS = [(60, 48), (64, 48), (65, 64), (16, 0), (17, 16), (4096, 4080)]


@pytest.mark.parametrize(("prompt", "cached"), REPEATS)
def test_repeat_hits_full_blocks_never_the_last_token(prompt: int, cached: int) -> None:
    r = Replica(1000)
    n_ids = -(-prompt // BS)
    r.at(0.0, 0, prompt, 2, ids(n_ids))
    r.at(1.0, 1, prompt, 2, ids(n_ids))
    r.env.run()
    assert r.done[1].cached_tokens == cached
    assert r.replica.used_blocks == 0  # the cached blocks are idle: they count as free


def test_trace_units_larger_than_blocks_name_every_full_block() -> None:
    # Mooncake's 512-token units: a 600-token prompt has ids [a, b]; its 37 full blocks are all named
    r = Replica(1000, unit=512)
    r.at(0.0, 0, 600, 2, ids(2))
    r.at(1.0, 1, 600, 2, ids(2))
    r.at(2.0, 2, 1024, 2, np.array([0, 7]))  # same first unit, different second: 32 blocks
    r.env.run()
    assert r.done[1].cached_tokens == 592
    assert r.done[2].cached_tokens == 512


def test_concurrent_requests_share_one_copy_of_their_prefix() -> None:
    # issue 16: two concurrent 4,096-token requests sharing the prefix held 517 blocks; vLLM holds 259: 255 shared
    # blocks (the hit stops at (4096 - 1) // 16), one last prompt block each and one decode block each
    r = Replica(1000)
    r.at(0.0, 0, 4096, 50, ids(256))
    r.at(0.0, 1, 4096, 50, ids(256))
    r.env.run(until=0.3)  # both are decoding their first 16 tokens
    assert len(r.replica.batch) == 2
    assert r.replica.used_blocks == 259
    assert r.replica.kv_usage() == pytest.approx(0.259)
    r.env.run()
    assert r.done[1].cached_tokens == 4080


def test_prompt_arriving_during_an_identical_prefill_hits_its_blocks() -> None:
    # issue 16: blocks are hashed when scheduled, so the second 5,000-token prompt (arriving mid-prefill) hits
    # the first one's 312 full blocks: 4,992 tokens (odhsim gave 0)
    r = Replica(1000)
    r.at(0.0, 0, 5000, 5, ids(313))
    r.at(0.05, 1, 5000, 5, ids(313))
    r.env.run()
    assert r.done[1].cached_tokens == 4992


def test_only_free_blocks_hold_cache_and_the_tail_is_evicted_first() -> None:
    # issue 16: 100 blocks; a 64-token prompt leaves 4 cached blocks, freed last-first, so the head of the free
    # queue takes its 4th, 3rd, 2nd block before its 1st. After another request used 99 of the 100 blocks only
    # the first block is left: the repeat hits 16 tokens (odhsim hit 63 from an LRU beside the used blocks)
    r = Replica(100)
    r.at(0.0, 0, 64, 1, ids(4))
    r.at(1.0, 1, 1580, 4, None)  # 99 blocks by its last step
    r.at(2.0, 2, 64, 1, ids(4))
    r.env.run(until=1.5)
    assert list(r.replica.pool.ref) == [r.replica._keys(r.reqs[0])[0]]  # one named block is left, the first
    r.env.run()
    assert r.done[2].cached_tokens == 16


def test_idle_cached_blocks_are_reused_in_free_queue_order() -> None:
    # two prefixes cached one after the other; new blocks come from the head (fresh ones first, then the older
    # prefix), so the younger prefix survives
    r = Replica(20)
    r.at(0.0, 0, 64, 1, ids(4, 100))  # freed first
    r.at(1.0, 1, 64, 1, ids(4, 200))  # freed second
    r.at(2.0, 2, 16 * 14, 1, None)  # 14 blocks: the 12 fresh ones and 2 of prefix 100
    r.at(3.0, 3, 64, 1, ids(4, 200))
    r.at(4.0, 4, 64, 1, ids(4, 100))
    r.env.run()
    assert r.done[3].cached_tokens == 48
    # prefix 100 lost its last two blocks, tail first, to request 2; request 3's 4th block (the hit stops at 3)
    # is a new block from the head of the queue: prefix 100's 2nd. One block is left to hit.
    assert r.done[4].cached_tokens == 16


# -- allocation per step, no watermark in V1 -------------------------------------------------------------------
def test_blocks_are_allocated_per_step_for_computed_plus_new_tokens() -> None:
    # a 96-token prompt holds 6 blocks while it prefills (odhsim reserved prompt + 1 = 7); its first decode step
    # computes token 97 and needs the 7th
    r = Replica(100, enable_prefix_caching=False)
    r.at(0.0, 0, 96, 40, None)
    r.env.run(until=0.05)
    assert r.replica.used_blocks == 6
    r.env.run(until=0.105)
    assert r.replica.used_blocks == 7
    r.env.run()
    assert r.replica.used_blocks == 0


def test_chunked_prefill_allocates_chunk_by_chunk() -> None:
    r = Replica(100, enable_prefix_caching=False, max_num_batched_tokens=64)
    r.at(0.0, 0, 150, 2, None)
    r.env.run(until=0.05)
    assert r.replica.used_blocks == 4  # the first 64 tokens
    r.env.run(until=0.15)
    assert r.replica.used_blocks == 8  # 128 tokens


def test_v1_has_no_watermark() -> None:
    # 10 blocks: a request running in 4 blocks, then one whose prompt takes the other 6 is admitted at once
    r = Replica(10, enable_prefix_caching=False)
    r.at(0.0, 0, 60, 4, None)  # 4 blocks through its last step (63 tokens)
    r.at(0.115, 1, 96, 1, None)
    r.env.run()
    assert r.reqs[1].start_s == pytest.approx(0.12)  # the next step boundary, not after request 0 finished


def test_v0_prefill_first_keeps_its_watermark() -> None:
    # 200 blocks, V0 watermark int(0.01 * 200) = 2: a prompt that would leave 1 block free waits
    r = Replica(200, enable_prefix_caching=False, scheduler="prefill-first")
    r.at(0.0, 0, 16 * 10, 30, None)  # 10 blocks, 11 once decoding
    r.at(0.11, 1, 16 * 188, 1, None)  # 188 blocks: 200 - 11 - 188 = 1 < 2
    r.env.run()
    assert r.reqs[1].start_s > r.done[0].first_token_s + 28 * STEP_S


# -- preemption --------------------------------------------------------------------------------------------------
def test_newest_request_is_preempted_even_mid_prefill_and_the_step_admits_no_one() -> None:
    # 10 blocks, 64-token budget. Request 0 (31 tokens) decodes; request 1 (150 tokens) is chunked beside it.
    # At 0.21 request 0's decode and request 1's 54-token chunk need 13 blocks: vLLM preempts the newest running
    # request, request 1 itself, mid-prefill (odhsim used to preempt the decoding request 0), and that step admits
    # no waiting request, though request 2 is waiting and would fit.
    r = Replica(10, enable_prefix_caching=False, max_num_batched_tokens=64)
    victims: list[int] = []
    preempt = r.replica._preempt

    def spy(victim: SimRequest, tokens: int | None = None) -> None:
        victims.append(victim.row)
        preempt(victim, tokens)

    r.replica._preempt = spy  # type: ignore[method-assign]
    r.at(0.0, 0, 31, 40, None)
    r.at(0.0, 1, 150, 2, None)
    r.at(0.15, 2, 16, 2, None)
    peak = [0]

    def watch() -> Iterator[simpy.Event]:
        while True:
            peak[0] = max(peak[0], r.replica.used_blocks)
            yield r.env.timeout(0.001)

    r.env.process(watch())
    r.env.run(until=5.0)
    assert victims[0] == 1
    assert 0 not in victims
    assert r.done[0].first_token_s == pytest.approx(PREFILL_S)  # never recomputed
    assert peak[0] <= 10  # odhsim reached 102 of 100
    assert set(r.done) == {0, 1, 2}


def test_step_that_preempts_admits_nothing_and_the_next_does() -> None:
    r = Replica(10, enable_prefix_caching=False, max_num_batched_tokens=64)
    r.at(0.0, 0, 31, 40, None)
    r.at(0.0, 1, 150, 2, None)
    r.at(0.15, 2, 16, 2, None)
    r.env.run(until=0.215)  # the step from 0.21 preempted request 1: a decode-only step, request 2 still waits
    assert r.replica._prefilling == [] and list(r.replica.waiting_q) == [r.reqs[1], r.reqs[2]]
    assert r.replica.used_blocks == 3
    r.env.run(until=0.225)  # the next step re-admits request 1 (63 tokens of the budget's 63: 4 more blocks)
    assert list(r.replica.waiting_q) == [r.reqs[2]] and r.replica.used_blocks == 7
    r.env.run()
    assert set(r.done) == {0, 1, 2}


# -- kv_cache_usage_perc -------------------------------------------------------------------------------------------
def test_kv_usage_climbs_within_a_fast_forwarded_span() -> None:
    # 100 blocks, one request of 16 prompt tokens decoding 200 tokens in one span from 0.1 s: vLLM's usage after
    # step i is ceil((16 + i) / 16) / 100 (odhsim used to book the span's blocks only at its end)
    r = Replica(100, enable_prefix_caching=False)
    r.at(0.0, 0, 16, 201, None)
    for steps in (0, 1, 15, 16, 17, 100, 150):
        r.env.run(until=PREFILL_S + steps * STEP_S + STEP_S / 2)
        assert r.replica.kv_usage() == pytest.approx(-(-(16 + steps + 1) // 16) / 100), steps


def test_kv_usage_counts_idle_cached_blocks_as_free() -> None:
    r = Replica(100)
    r.at(0.0, 0, 640, 1, ids(40))
    r.env.run()
    assert r.replica.pool.idle_blocks == 40 and r.replica.kv_usage() == 0.0


# -- long_prefill_token_threshold and V0's rule ------------------------------------------------------------------
def test_long_prefill_token_threshold_caps_each_step() -> None:
    r = Replica(100, enable_prefix_caching=False, long_prefill_token_threshold=32)
    r.at(0.0, 0, 100, 1, None)
    r.env.run()
    assert r.done[0].first_token_s == pytest.approx(4 * PREFILL_S)  # 32 + 32 + 32 + 4


def _scenario(engine: dict[str, object]) -> dict[str, object]:
    return {
        "name": "v0",
        "gpu_pool": [{"gpu": "H100-80GB", "count": 1}],
        "models": [{"name": "m", "profile": "llama3.1-8b", "gpu": "H100-80GB", "replicas": 1, "engine": engine}],
        "workload": {"sources": [{"kind": "poisson", "rate": 1.0, "duration_s": 1}]},
    }


@pytest.mark.parametrize(
    ("engine", "ok"),
    [
        ({"scheduler": "prefill-first"}, False),  # llama3.1's 131,072 context > 16,384
        ({"scheduler": "prefill-first", "max_model_len": 16384}, True),
        ({"scheduler": "prefill-first", "max_model_len": 8192, "max_num_batched_tokens": 4096}, False),
        ({"scheduler": "chunked-prefill"}, True),
    ],
)
def test_prefill_first_needs_a_budget_of_max_model_len(engine: dict[str, object], ok: bool) -> None:
    if ok:
        scenario_from_dict(_scenario(engine))
        return
    with pytest.raises(ScenarioError, match="max_num_batched_tokens >= max_model_len"):
        scenario_from_dict(_scenario(engine))
