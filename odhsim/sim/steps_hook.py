"""The simulator's side of the step log (`outputs.steps: true`): rows for odhsim.results.steps from the replicas.

The replicas call these only after one attribute test (`self.step_log is not None`), so a run without the log pays
that test and nothing else, and its results do not change. Steps that compute prompt tokens are logged when they
start (their shape and latency-model duration are known then); a decode span, k pure-decode steps in closed form,
is logged when it ends (a new arrival may shorten it), one row per step. A span cut by an abort (drain timeout) or
a hard stop is not logged; a prompt step in flight at a hard stop is. Pipeline-parallel replicas log nothing yet.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from odhsim.sim.fixed_replica import FixedReplica
    from odhsim.sim.llm_replica import LlmReplica


def _new_preemptions(r: LlmReplica) -> int:
    """Preemptions since the replica's last logged step: those made while scheduling this one."""
    n = r.preemptions - r.step_preemptions_seen
    r.step_preemptions_seen = r.preemptions
    return n


def llm_step(
    r: LlmReplica, duration_s: float, prefill_tokens: int, prefill_seqs: int, attention: int, host_tokens: int,
    decode_seqs: int,
) -> None:  # fmt: skip
    """A step computing prompt chunks (and, under chunked prefill, one token of each of `decode_seqs`), starting
    now; its blocks are allocated, so the pool's count is what the step holds."""
    context = r.batch.context_tokens() if decode_seqs else 0
    log = r.step_log
    assert log is not None
    log.append((
        r.step_src, r.env.now, duration_s, prefill_seqs + decode_seqs, prefill_tokens, prefill_seqs, attention,
        decode_seqs, context, r.pool.used, _new_preemptions(r), host_tokens, 0,
    ))  # fmt: skip


def llm_span(r: LlmReplica) -> None:
    """The decode span that ends now (before its blocks are booked and its requests advance): step j of k holds
    the pool's blocks plus those the batch allocated at steps 0..j (`DecodeBatch.new_blocks(j + 1)`, from the
    phase histogram one step at a time), less what the step planner already took for step 0."""
    start, batch, context, k = r._span
    running = r.batch
    steps = running.steps + np.arange(k)
    per_step = np.asarray(running._phase_counts, dtype=np.int64)[(-steps) % r.bs]
    kv_used = r.pool.used - r._taken + np.cumsum(per_step)
    log = r.step_log
    assert log is not None
    log.llm_span(r.step_src, start, r._span_first, r._span_growth_s, batch, context, kv_used, _new_preemptions(r))


def fixed_batch(r: FixedReplica, duration_s: float, requests: int) -> None:
    """A fixed model's forward pass starting now: a dynamic batch, or one request in a concurrency slot."""
    log = r.step_log
    assert log is not None
    log.fixed(r.step_src, r.env.now, duration_s, requests)
