"""vLLM V1's chunked-prefill step planner for `LlmReplica` (scheduler "chunked-prefill"): each engine step
decodes every running request and spends the rest of `max_num_batched_tokens` on prompt chunks, prompts in progress
first, then waiting ones FCFS (none after a preemption), each capped by `long_prefill_token_threshold`.

A mixin rather than a helper object so that the replica calls these methods exactly as often as before the split,
with no extra layer on the event loop; it holds no state of its own and works on `LlmReplica`'s attributes.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import simpy

from odhsim.sim import steps_hook
from odhsim.sim.decode_batch import ceil_div
from odhsim.sim.request import SimRequest
from odhsim.sim.wakeup import wake

if TYPE_CHECKING:
    from odhsim.sim.llm_replica import LlmReplica

IDLE, PREFILL, DECODE = 0, 1, 2  # the replica's engine state: idle, a step computing prompt tokens, a decode span


class ChunkedPrefill:
    """The chunked-prefill (V1) scheduling methods of `LlmReplica`."""

    def _schedule_chunked(self: LlmReplica) -> None:
        """One engine step: decode every running request and spend the rest of the token budget on prompt
        chunks (in-progress prompts first, then new ones FCFS unless this step preempted); a pure decode span
        when no prompt is scheduled."""
        while True:
            running = self.batch
            decode_blocks = running.new_blocks(1) if running.requests else 0
            if decode_blocks > self.pool.free:  # the test `_ensure_decode_room` starts with, done once here
                preempted = self._ensure_decode_room()
                if preempted is None:
                    return
                decode_blocks = running.new_blocks(1) if running.requests else 0
            else:
                preempted = False
            if decode_blocks:
                self.pool.take(decode_blocks)
            self._taken = decode_blocks
            if not self._prefilling and not self.waiting_q:  # no prompt to plan (so none was preempted either)
                if running.requests:
                    self._start_span(ensured=True)
                else:
                    self._state = IDLE
                    self._mark_idle()
                return
            chunks, tokens, attention, host_tokens, chunk_preempted = self._plan_chunks(preempted)
            if chunks or self.batch.requests or not (preempted or chunk_preempted) or not self.waiting_q:
                break
            # the step preempted everything it had: vLLM's next (empty) step admits the waiting requests
        if not chunks:
            if self.batch.requests:  # after a preemption the next step may admit again: a span of one step
                self._start_span(ensured=True, one_step=(preempted or chunk_preempted) and bool(self.waiting_q))
            else:
                self._state = IDLE
                self._mark_idle()
            return
        batch = len(self.batch.requests)
        duration = self.latency.prefill_s(tokens, attention) + host_tokens * self._offload_s_per_token
        if batch:  # one iteration: its CPU step term (in both forms) once; bit-identical when it is 0
            duration += self.latency.decode_step_s(batch, self.batch.context_tokens()) - self.latency.cpu_step_s
        if self.step_log is not None:
            steps_hook.llm_step(self, duration, tokens, len(chunks), attention, host_tokens, batch)
        self._state = PREFILL
        self._step_chunks = chunks
        self._step_decodes = batch > 0
        self._mark_busy()
        wake(self.env, duration, self._on_chunked_step_end)

    def _chunk_cap(self: LlmReplica, left: int, budget: int) -> int:
        chunk = left if left < budget else budget  # (conditionals, not min(): a builtin call with two arguments
        threshold = self._threshold  # parses them as a tuple, several times the cost of a comparison)
        return threshold if threshold and threshold < chunk else chunk

    def _plan_chunks(self: LlmReplica, preempted: bool) -> tuple[list[tuple[SimRequest, int]], int, int, int, bool]:
        """(request, prompt tokens this step) pairs, their total, the attention term sum(chunk x context), the
        host-tier tokens to copy back and whether a prompt in progress was preempted, within the token budget,
        the sequence limit and the free blocks."""
        budget = self.engine.max_num_batched_tokens - len(self.batch.requests)
        chunks: list[tuple[SimRequest, int]] = []
        tokens = attention = host_tokens = 0
        i = 0
        while i < len(self._prefilling) and budget > 0:
            req = self._prefilling[i]
            held = self._held[req.row]
            chunk = self._chunk_cap(req.prefill_left, budget)
            done = req.ctx - req.prefill_left
            need = ceil_div(done + chunk, self.bs) - ceil_div(held.tokens, self.bs)
            while need > self.pool.free:  # preempt the newest running request: the last prompt in progress
                preempted = True
                victim = self._prefilling.pop()
                self._preempt(victim)
                if victim is req:
                    break
            if i >= len(self._prefilling):  # it preempted itself: vLLM stops scheduling running requests
                break
            self.pool.take(need)
            self._hash(req, held, done + chunk)
            chunks.append((req, chunk))
            tokens += chunk
            attention += chunk * (done + chunk)
            budget -= chunk
            i += 1
        if preempted:  # vLLM: a step that preempted schedules no waiting request
            return chunks, tokens, attention, host_tokens, True
        free_seqs = self.engine.max_num_seqs - len(self.batch.requests) - len(self._prefilling)
        while self.waiting_q and budget > 0 and free_seqs > 0:
            req = self.waiting_q[0]
            got = self._try_admit(req, budget, self.pool.free)
            if got is None:
                break
            cached, from_host, chunk = got
            self.waiting_q.popleft()
            req.prefill_left = req.ctx - cached
            self._started(req, cached)
            self._prefilling.append(req)
            chunks.append((req, chunk))
            tokens += chunk
            attention += chunk * (cached + chunk)
            host_tokens += from_host
            budget -= chunk
            free_seqs -= 1
        return chunks, tokens, attention, host_tokens, False

    def _on_chunked_step_end(self: LlmReplica, _event: simpy.Event) -> None:
        now = self.env._now
        self._before_change()
        if self._step_decodes:
            self._advance_decodes(1, now)
        finished_prompts = False
        for req, chunk in self._step_chunks:
            req.prefill_left -= chunk
            if req.prefill_left == 0:
                finished_prompts = True
                self._first_token(req, now)
        if finished_prompts:
            self._prefilling = [r for r in self._prefilling if r.prefill_left > 0]
        self._step_chunks = []
        self._plan_next()
