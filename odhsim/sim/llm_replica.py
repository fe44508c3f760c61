"""A continuous-batching LLM replica shaped like vLLM's scheduler: chunked prefill (V1) or prefill-first (V0),
KV cache in blocks, recompute preemption, automatic prefix caching.

Cost grows with requests, not tokens: the replica schedules one event per step that computes prompt tokens and
one per *span* of pure decode steps during which the running batch does not change. A span ends at the first
of: a request finishing, the KV cache running out of blocks, or a new arrival (which shortens the span to the
end of the step in flight, as vLLM would admit it at the next step). Time over a span comes in closed form from
the latency model; `DecodeBatch` keeps the bookkeeping that makes a span O(1) in the batch size.

Context limit: a request's `output_tokens` is the max_tokens its client sent (a trace replay sends the trace's
output length with ignore_eos, as `odhsim replay` and `vllm bench serve` do). vLLM's OpenAI server refuses a
request with HTTP 400 when prompt + max_tokens > max_model_len, before the engine sees it
(vllm/entrypoints/openai/serving_engine.py, `OpenAIServing._validate_input`: "'max_tokens' or
'max_completion_tokens' is too large" up to v0.17, "you requested M output tokens and your prompt contains T input
tokens" since); the engine's own length cap (vllm/v1/core/sched/utils.py, `check_stop`: num_tokens >= max_model_len
-> FINISHED_LENGTH_CAPPED) is reached only when max_tokens was not given, and the server then sets it to
max_model_len - prompt, which is the same point. So the replica fails such a request at arrival with that reason
(as this project's live replicas answer 400) instead of capping it: no request generates past max_model_len, and
every `ok` row generated exactly its `output_tokens`.
"""

from __future__ import annotations

from collections import deque

import simpy

from odhsim.profiles.latency import LatencyModel
from odhsim.scenario.deployment import EngineLimits
from odhsim.sim.decode_batch import DecodeBatch, ceil_div
from odhsim.sim.prefix_cache import PrefixCache
from odhsim.sim.replica_base import FinishCallback, ReplicaBase
from odhsim.sim.request import STATUS_FAILED, STATUS_OK, SimRequest

_IDLE, _PREFILL, _DECODE = 0, 1, 2


class LlmReplica(ReplicaBase):
    def __init__(
        self,
        env: simpy.Environment,
        index: int,
        name: str,
        model_name: str,
        scrape_interval_s: float,
        on_finish: FinishCallback,
        engine: EngineLimits,
        latency: LatencyModel,
        kv_capacity_tokens: int,
        prefix_block_tokens: int,
        max_model_len: int | None = None,
        kv_bytes_per_token: int = 0,
    ) -> None:
        super().__init__(env, index, name, model_name, scrape_interval_s, on_finish)
        self.engine = engine
        self.latency = latency
        self.bs = engine.block_size
        self.total_blocks = kv_capacity_tokens // engine.block_size
        self.watermark_blocks = max(1, int(0.01 * self.total_blocks))  # vLLM keeps 1% free for decode growth
        self.used_blocks = 0
        self.max_model_len = max_model_len
        self._prompt_too_long = "prompt longer than the engine's max_model_len"
        self._request_too_long = f"prompt + max_tokens > max_model_len {max_model_len} (vLLM answers 400)"
        self.waiting_q: deque[SimRequest] = deque()
        self.batch = DecodeBatch(self.bs)
        self.preemptions = 0
        self._state = _IDLE
        self._token = 0  # invalidates a scheduled span end when the span is shortened
        self._prefill_batch: list[SimRequest] = []  # prefill-first: the prompts of the prefill step in flight
        self._prefilling: list[SimRequest] = []  # chunked prefill: admitted requests with prompt tokens left
        self._step_chunks: list[tuple[SimRequest, int]] = []
        self._step_decodes = False
        self._chunked = engine.scheduler == "chunked-prefill"
        self._span: tuple[float, int, int, int] = (0.0, 0, 0, 0)  # start, batch, context, steps
        self.prefix_block_tokens = prefix_block_tokens
        self.prefix_cache: PrefixCache | None = None
        self._offload_s_per_token = 0.0
        if engine.enable_prefix_caching:
            bytes_per_token = kv_bytes_per_token or 1
            cpu_tokens = int(engine.kv_offload_gb * 2**30 / bytes_per_token)
            self.prefix_cache = PrefixCache(
                kv_capacity_tokens // max(1, prefix_block_tokens), cpu_tokens // max(1, prefix_block_tokens),
                prefix_block_tokens,
            )  # fmt: skip
            # each of the tp x pp GPUs copies its shard of a token's KV over its own link
            links = latency.tp * latency.pp
            self._offload_s_per_token = bytes_per_token / (engine.kv_offload_bandwidth_gb_s * 1e9 * links)

    # -- metrics (vLLM names: num_requests_waiting, num_requests_running, kv_cache_usage_perc) ----------------
    def waiting(self) -> int:
        return len(self.waiting_q)

    def running(self) -> int:
        return len(self.batch) + len(self._prefill_batch) + len(self._prefilling)

    def kv_usage(self) -> float:
        return self.used_blocks / self.total_blocks if self.total_blocks else 1.0

    def abort_all(self) -> list[SimRequest]:
        """Drop every request this replica holds (its drain timed out) and return them; scheduled step ends
        then find nothing to do."""
        held = [*self.waiting_q, *self._prefill_batch, *self._prefilling, *self.batch.requests.values()]
        self.waiting_q.clear()
        self._prefill_batch, self._prefilling, self._step_chunks = [], [], []
        self._step_decodes = False
        self.batch = DecodeBatch(self.bs)
        self.used_blocks = 0
        self.in_flight = 0
        self._token += 1  # a scheduled decode-span end is void
        self._state = _IDLE
        self._mark_idle()
        return held

    # -- arrivals -------------------------------------------------------------------------------------------
    def submit(self, req: SimRequest) -> None:
        self._before_change()
        self.in_flight += 1
        req.replica = self.index
        limit = self.max_model_len
        if limit is not None and req.prompt_tokens + req.output_tokens > limit:
            self.in_flight -= 1
            reason = self._prompt_too_long if req.prompt_tokens >= limit else self._request_too_long
            self.on_finish(req, self.env.now, STATUS_FAILED, reason)
            return
        if ceil_div(req.prompt_tokens + 1, self.bs) > self.total_blocks:
            self.in_flight -= 1
            self.on_finish(req, self.env.now, STATUS_FAILED, "prompt exceeds the replica's KV cache")
            return
        self.waiting_q.append(req)
        if self._state == _IDLE:
            self._schedule()
        elif self._state == _DECODE and len(self.batch) < self.engine.max_num_seqs:
            self._shorten_span()

    def _shorten_span(self) -> None:
        """A request arrived mid-span: end the span after the decode step now in flight."""
        start, batch, context, k = self._span
        done = self.latency.decode_steps_within(batch, context, self.env.now - start)
        if done + 1 >= k:
            return
        self._token += 1
        end = start + self.latency.decode_span_s(batch, context, done + 1)
        self._span = (start, batch, context, done + 1)
        ev = self.env.timeout(max(0.0, end - self.env.now), self._token)
        ev.callbacks.append(self._on_span_end)

    # -- scheduling -----------------------------------------------------------------------------------------
    def _schedule(self) -> None:
        if self._chunked:
            self._schedule_chunked()
            return
        batch, tokens, sum_sq, host_tokens = self._admit()
        if batch:
            self._state = _PREFILL
            self._prefill_batch = batch
            self._mark_busy()
            load_s = host_tokens * self._offload_s_per_token  # copy host-tier KV back before the step
            ev = self.env.timeout(self.latency.prefill_s(tokens, sum_sq) + load_s)
            ev.callbacks.append(self._on_prefill_end)
        elif self.batch:
            self._start_span()
        else:
            self._state = _IDLE
            self._mark_idle()

    def _prefix_hit(self, req: SimRequest, ctx: int) -> tuple[int, int]:
        """(prompt tokens served from the prefix cache, of which copied back from host memory)."""
        cache = self.prefix_cache
        if cache is None or req.blocks is None or len(req.blocks) == 0:
            return 0, 0
        on_gpu, on_cpu = cache.lookup(req.blocks)
        bt = self.prefix_block_tokens
        hit = min((on_gpu + on_cpu) * bt, ctx - 1)
        return hit, max(0, hit - on_gpu * bt)

    def _admit(self) -> tuple[list[SimRequest], int, int, int]:
        """Take waiting requests (FCFS) into a prefill step within the engine's token, sequence and KV limits."""
        batch: list[SimRequest] = []
        tokens = sum_sq = host_tokens = 0
        free_seqs = self.engine.max_num_seqs - len(self.batch)
        budget = self.engine.max_num_batched_tokens
        while self.waiting_q and len(batch) < free_seqs:
            req = self.waiting_q[0]
            ctx = req.prompt_tokens + req.generated  # a preempted request recomputes what it had generated
            blocks = ceil_div(ctx + 1, self.bs)
            if self.used_blocks + blocks > self.total_blocks - self.watermark_blocks and (batch or self.batch):
                break
            cached, from_host = self._prefix_hit(req, ctx)
            compute = ctx - cached
            if batch and tokens + compute > budget:
                break  # a prompt longer than the budget runs alone in its own step (vLLM would chunk it)
            self.waiting_q.popleft()
            self.used_blocks += blocks
            req.ctx = ctx
            if req.generated == 0:
                req.cached_tokens = cached
                req.start_s = self.env.now
            batch.append(req)
            tokens += compute
            sum_sq += compute * compute
            host_tokens += from_host
        if batch:
            self._before_change()
        return batch, tokens, sum_sq, host_tokens

    def _on_prefill_end(self, _event: simpy.Event) -> None:
        now = self.env.now
        self._before_change()
        batch, self._prefill_batch = self._prefill_batch, []
        for req in batch:
            self._first_token(req, now)
        self._schedule()

    def _first_token(self, req: SimRequest, now: float) -> None:
        """The prompt is computed: cache its blocks, emit a token, then finish or join the running batch."""
        cache = self.prefix_cache
        if cache is not None and req.blocks is not None:
            cache.insert(req.blocks)
        req.generated += 1
        req.ctx += 1
        if req.first_token_s != req.first_token_s:  # NaN: first time through (not after a preemption)
            req.first_token_s = now
        if req.generated >= req.output_tokens:
            self._release(req)
            self.on_finish(req, now, STATUS_OK, "")
        else:
            self.batch.join(req)

    # -- chunked prefill (vLLM V1) -------------------------------------------------------------------------
    def _schedule_chunked(self) -> None:
        """One engine step: decode every running request and spend the rest of the token budget on prompt
        chunks (in-progress prompts first, then new ones FCFS); a pure decode span when no prompt is pending."""
        if self.batch and not self._ensure_decode_room():
            return
        chunks, tokens, attention, host_tokens = self._plan_chunks()
        if not chunks:
            if self.batch:
                self._start_span()
            else:
                self._state = _IDLE
                self._mark_idle()
            return
        batch = len(self.batch)
        duration = self.latency.prefill_s(tokens, attention) + host_tokens * self._offload_s_per_token
        if batch:
            duration += self.latency.decode_step_s(batch, self.batch.context_tokens())
        self._state = _PREFILL
        self._step_chunks = chunks
        self._step_decodes = batch > 0
        self._mark_busy()
        ev = self.env.timeout(duration)
        ev.callbacks.append(self._on_chunked_step_end)

    def _plan_chunks(self) -> tuple[list[tuple[SimRequest, int]], int, int, int]:
        """(request, prompt tokens this step) pairs, their total, the attention term sum(chunk x context) and
        the host-tier tokens to copy back, within the token budget, the sequence limit and the KV cache."""
        budget = self.engine.max_num_batched_tokens - len(self.batch)
        chunks: list[tuple[SimRequest, int]] = []
        tokens = attention = host_tokens = 0
        for req in self._prefilling:
            if budget <= 0:
                break
            chunk = min(req.prefill_left, budget)
            done = req.ctx - req.prefill_left
            chunks.append((req, chunk))
            tokens += chunk
            attention += chunk * (done + chunk)
            budget -= chunk
        free_seqs = self.engine.max_num_seqs - len(self.batch) - len(self._prefilling)
        while self.waiting_q and budget > 0 and free_seqs > 0:
            req = self.waiting_q[0]
            ctx = req.prompt_tokens + req.generated  # a preempted request recomputes what it had generated
            blocks = ceil_div(ctx + 1, self.bs)
            busy = len(self.batch) > 0 or self._prefilling
            if self.used_blocks + blocks > self.total_blocks - self.watermark_blocks and busy:
                break
            cached, from_host = self._prefix_hit(req, ctx)
            self.waiting_q.popleft()
            self.used_blocks += blocks
            req.ctx = ctx
            req.prefill_left = ctx - cached
            if req.generated == 0:
                req.cached_tokens = cached
                req.start_s = self.env.now
            self._prefilling.append(req)
            chunk = min(req.prefill_left, budget)
            chunks.append((req, chunk))
            tokens += chunk
            attention += chunk * (cached + chunk)
            host_tokens += from_host
            budget -= chunk
            free_seqs -= 1
        if chunks:
            self._before_change()
        return chunks, tokens, attention, host_tokens

    def _on_chunked_step_end(self, _event: simpy.Event) -> None:
        now = self.env.now
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
        self._schedule()

    def _ensure_decode_room(self) -> bool:
        """Preempt (recompute) until the running batch can take one more decode step; False if the step
        cannot happen (the scheduler was re-entered after a failure)."""
        while self._kv_step_limit(1) == 0:
            self._before_change()
            if len(self.batch) == 1 and not self._prefilling:
                req = self.batch.only()
                self.batch.leave(req)
                self._release(req)
                self.on_finish(req, self.env.now, STATUS_FAILED, "context outgrew the replica's KV cache")
                self._schedule()
                return False
            self._preempt_last()
            if not self.batch:
                return True
        return True

    # -- the running batch ----------------------------------------------------------------------------------
    def _release(self, req: SimRequest) -> None:
        self.used_blocks -= ceil_div(req.ctx, self.bs)
        self.in_flight -= 1

    def _kv_step_limit(self, k: int) -> int:
        return self.batch.step_limit(k, self.total_blocks - self.used_blocks)

    def _preempt_last(self) -> None:
        """vLLM's recompute preemption: the most recently admitted request gives back its KV blocks and waits
        at the head of the queue; its generated tokens are recomputed as part of the prompt."""
        victim = self.batch.last_admitted()
        self.batch.leave(victim)
        self.used_blocks -= ceil_div(victim.ctx, self.bs)
        self.waiting_q.appendleft(victim)
        self.preemptions += 1

    def _start_span(self) -> None:
        if not self._ensure_decode_room():
            return
        if not self.batch:  # all were preempted: their prompts wait to be recomputed
            self._schedule()
            return
        limit = self._kv_step_limit(self.batch.steps_to_next_finish())  # >= 1 once one step fits
        batch = len(self.batch)
        context = self.batch.context_tokens()
        self._state = _DECODE
        self._mark_busy()
        self._token += 1
        self._span = (self.env.now, batch, context, limit)
        ev = self.env.timeout(self.latency.decode_span_s(batch, context, limit), self._token)
        ev.callbacks.append(self._on_span_end)

    def _on_span_end(self, event: simpy.Event) -> None:
        if event.value != self._token:
            return  # a shortened span's original end
        self._before_change()
        self._advance_decodes(self._span[3], self.env.now)
        self._schedule()

    def _advance_decodes(self, k: int, now: float) -> None:
        """The running batch did k decode steps: grow its KV blocks and finish whoever produced its last token."""
        self.used_blocks += self.batch.new_blocks(k)
        for req in self.batch.advance(k):
            self._release(req)
            self.on_finish(req, now, STATUS_OK, "")
