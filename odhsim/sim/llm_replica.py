"""A continuous-batching LLM replica shaped like vLLM's scheduler: chunked prefill (V1) or prefill-first (V0),
KV cache in blocks (`BlockPool`: automatic prefix caching in the blocks themselves), recompute preemption.

Cost grows with requests, not tokens: the replica schedules one event per step that computes prompt tokens and
one per *span* of pure decode steps during which the running batch does not change. A span ends at the first
of: a request finishing, the step at which the free blocks would run out (where vLLM preempts), or a new arrival
(which shortens the span to the end of the step in flight, as vLLM would admit it at the next step). Time over a
span comes in closed form from the latency model; `DecodeBatch` keeps the bookkeeping that makes a span O(block
size) whatever the batch size, and the KV usage during a span is read in closed form too.

KV allocation follows vLLM V1 (vllm/v1/core/sched/scheduler.py `schedule`, kv_cache_manager.py `allocate_slots`,
read at b4622cf / ace980e): each step allocates blocks for the tokens computed so far plus the ones scheduled, a
prompt chunk hashes its full blocks when it is scheduled, and there is no watermark. When a running request cannot
get its blocks, the newest running request (a prefill in progress included) is preempted, and a step that
preempted admits no waiting request. V0 (`prefill-first`) keeps V0's 1% watermark at admission.

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

import math
from collections import deque

import numpy as np
import simpy

from odhsim.profiles.latency import LatencyModel
from odhsim.results.steps import StepLog
from odhsim.scenario.deployment import EngineLimits
from odhsim.sim import steps_hook
from odhsim.sim.decode_batch import DecodeBatch, ceil_div
from odhsim.sim.llm_chunked import DECODE, IDLE, PREFILL, ChunkedPrefill
from odhsim.sim.prefix_cache import BlockPool, block_keys
from odhsim.sim.replica_base import FinishCallback, ReplicaBase
from odhsim.sim.request import STATUS_FAILED, STATUS_OK, SimRequest
from odhsim.sim.wakeup import Wakeup, wake

V0_WATERMARK = 0.01  # vLLM V0 BlockSpaceManager's default watermark (V1 has none)
_NO_BLOCKS = np.zeros(0, dtype=np.int64)


class _Held:
    """The KV blocks one admitted request holds: `named` cached blocks it holds a reference on (in order, as
    arrays of block indices, `n_named` of them), `tokens` the token slots allocated while it prefills (decoding
    requests derive theirs from ctx)."""

    __slots__ = ("hashed", "keys", "n_named", "named", "tokens", "unique")

    def __init__(self, keys: np.ndarray, unique: bool) -> None:
        self.keys = keys  # the prompt's named full blocks (BlockPool indices)
        self.unique = unique  # no block repeats in keys
        self.named: list[np.ndarray] = []
        self.n_named = 0
        self.hashed = 0  # leading full blocks already hashed (named, duplicates or beyond the trace's ids)
        self.tokens = 0


class LlmReplica(ChunkedPrefill, ReplicaBase):
    """One vLLM engine: arrivals, KV blocks, the V0 prefill-first step and decode spans here; the V1 chunked-prefill
    step planner in `ChunkedPrefill`."""

    step_log: StepLog | None = None  # outputs.steps: a row per engine step (odhsim.sim.steps_hook); None: off
    step_src = 0
    step_preemptions_seen = 0
    cpu_seat = None  # a calibrated profile's place on a shared machine (odhsim.calibrate.cpu_model); None: off

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
        self._chunked = engine.scheduler == "chunked-prefill"
        self.watermark_blocks = 0 if self._chunked else int(V0_WATERMARK * self.total_blocks)
        self.max_model_len = max_model_len
        self._prompt_too_long = "prompt longer than the engine's max_model_len"
        self._request_too_long = f"prompt + max_tokens > max_model_len {max_model_len} (vLLM answers 400)"
        self.waiting_q: deque[SimRequest] = deque()
        self.batch = DecodeBatch(self.bs)
        self.preemptions = 0
        self._state = IDLE
        self._token = 0  # invalidates a scheduled span end when the span is shortened
        self._prefill_batch: list[SimRequest] = []  # prefill-first: the prompts of the prefill step in flight
        self._prefilling: list[SimRequest] = []  # chunked prefill: admitted requests with prompt tokens left
        self._step_chunks: list[tuple[SimRequest, int]] = []
        self._step_decodes = False
        self._span: tuple[float, int, int, int] = (0.0, 0, 0, 0)  # start, batch, context, steps
        # the span's first step time and per-step context growth cost, so `_steps_done` needs no model calls
        self._span_first = 0.0
        self._span_growth_s = 0.0
        self._span_roots = (0.0, 0.0, 0.0, 0.0)
        self._taken = 0  # blocks already allocated for the decode step(s) in flight
        self._span_growth = 0  # blocks the span in flight allocates after its first step (0: usage is flat)
        self._span_blocks = 0  # new_blocks(steps) of the span in flight (the batch cannot change until it ends)
        self._span_end = 0.0  # when the span in flight ends (its end event's time)
        self._span_event: Wakeup | None = None  # that end event (a shortened span cancels it)
        self._held: dict[int, _Held] = {}
        self.prefix_block_tokens = prefix_block_tokens
        self._offload_s_per_token = 0.0
        self._threshold = engine.long_prefill_token_threshold
        host_blocks = 0
        if engine.enable_prefix_caching:
            bytes_per_token = kv_bytes_per_token or 1
            host_blocks = int(engine.kv_offload_gb * 2**30 / bytes_per_token) // self.bs
            # each of the tp x pp GPUs copies its shard of a token's KV over its own link
            links = latency.tp * latency.pp
            self._offload_s_per_token = bytes_per_token / (engine.kv_offload_bandwidth_gb_s * 1e9 * links)
        self.pool = self._new_pool(engine.enable_prefix_caching, host_blocks)

    def _new_pool(self, caching: bool, host_blocks: int) -> BlockPool:
        return BlockPool(self.total_blocks, caching, host_blocks, self.bs, self.prefix_block_tokens)

    # -- metrics (vLLM names: num_requests_waiting, num_requests_running, kv_cache_usage_perc) ----------------
    def waiting(self) -> int:
        return len(self.waiting_q)

    def running(self) -> int:
        return len(self.batch.requests) + len(self._prefill_batch) + len(self._prefilling)

    @property
    def used_blocks(self) -> int:
        """Blocks some request holds now (idle cached blocks count as free), mid-span growth included."""
        used = self.pool.used
        if self._state == DECODE and self._span_growth:
            k = self._span[3]
            done = self._steps_done(self.env.now - self._span[0])
            used += self.batch.new_blocks(min(done + 1, k)) - self._taken  # vLLM allocates at each step's start
        return used

    def _set_span_terms(self, batch: int, context: int) -> tuple[float, float]:
        """A span starts: keep its first step's time, its per-step growth and `_steps_done`'s quadratic terms
        (c / 2, first - c / 2, their square, 4 x c / 2), fixed until it ends; returns (first, growth)."""
        first = self._span_first = self.latency.decode_step_s(batch, context)
        growth_s = self._span_growth_s = self.latency.decode_per_context_token_s * batch
        a = growth_s / 2.0
        b = first - a
        self._span_roots = (a, b, b * b, 4.0 * a)
        return first, growth_s

    def _steps_done(self, elapsed: float) -> int:
        """`latency.decode_steps_within(batch, context, elapsed)` for the span in flight, without its calls (kv
        usage asks this at every scrape): the largest k whose span time k * first + c * k(k-1)/2, computed with
        the float operations of `decode_span_s`, is <= elapsed. That time rises with k, so the k is unique."""
        if not elapsed > 0.0:
            return 0
        first = self._span_first
        c = self._span_growth_s
        a, b, b2, a4 = self._span_roots  # c / 2, first - a, b * b, 4 * a: the span's constants
        if a == 0.0:
            k_real = elapsed / b
        else:
            root = math.sqrt(b2 + a4 * elapsed)
            k_real = 2.0 * elapsed / (b + root) if b > 0.0 else (root - b) / (2.0 * a)
        k = math.floor(k_real)
        if k < 0:  # (max(0, k) without the builtin call: min / max parse their arguments, a comparison does not)
            k = 0
        while (k + 1) * first + c * ((k + 1) * k / 2) <= elapsed:
            k += 1
        while k > 0 and k * first + c * (k * (k - 1) / 2) > elapsed:
            k -= 1
        return k

    def kv_usage(self) -> float:
        """vLLM's kv_cache_usage_perc: 1 - free / total, per step, shared blocks once, idle cache as free (the
        body of `used_blocks`, inlined: every scrape tick asks each replica)."""
        total = self.total_blocks
        if not total:
            return 1.0
        pool = self.pool
        used = pool.num_blocks - pool.free  # pool.used
        if self._state == DECODE and self._span_growth:
            now = self.env._now
            if now >= self._span_end:  # its end is due: every step's blocks (what the general case gives then)
                used += self._span_blocks - self._taken
            else:
                steps = self._steps_done(now - self._span[0]) + 1  # the step in flight has its blocks
                k = self._span[3]
                used += self.batch.new_blocks(steps if steps < k else k) - self._taken
        return used / total

    def abort_all(self) -> list[SimRequest]:
        """Drop every request this replica holds (its drain timed out) and return them; scheduled step ends
        then find nothing to do."""
        held = [*self.waiting_q, *self._prefill_batch, *self._prefilling, *self.batch.requests.values()]
        self.waiting_q.clear()
        self._prefill_batch, self._prefilling, self._step_chunks = [], [], []
        self._step_decodes = False
        self.batch = DecodeBatch(self.bs)
        self._held.clear()
        self._taken = 0
        self.pool = self._new_pool(self.pool.caching, self.pool.host_blocks)
        self.in_flight = 0
        self._token += 1  # a scheduled decode-span end is void
        self._state = IDLE
        self._mark_idle()
        return held

    # -- arrivals -------------------------------------------------------------------------------------------
    def submit(self, req: SimRequest) -> None:
        self._before_change()
        self.in_flight += 1
        req.replica = self.index
        if self.cpu_seat is not None:  # the gateway's and the client's CPU for this request, on the machine
            self.cpu_seat.arrival(self.env._now)
        limit = self.max_model_len
        if limit is not None and req.prompt_tokens + req.output_tokens > limit:
            self.in_flight -= 1
            reason = self._prompt_too_long if req.prompt_tokens >= limit else self._request_too_long
            self.on_finish(req, self.env.now, STATUS_FAILED, reason)
            return
        if ceil_div(req.prompt_tokens + 1, self.bs) > self.total_blocks - self.watermark_blocks:
            self.in_flight -= 1
            self.on_finish(req, self.env.now, STATUS_FAILED, "prompt exceeds the replica's KV cache")
            return
        self.waiting_q.append(req)
        if self._state == IDLE:
            self._plan_next()
        elif self._state == DECODE and len(self.batch.requests) < self.engine.max_num_seqs:
            self._shorten_span()

    def _shorten_span(self) -> None:
        """A request arrived mid-span: end the span after the decode step now in flight."""
        start, batch, context, k = self._span
        now = self.env._now
        done = self._steps_done(now - start)
        if done + 1 >= k:
            return
        self._token += 1
        k = done + 1  # decode_span_s(batch, context, k) from the span's cached terms, the same float operations
        end = start + (k * self._span_first + self._span_growth_s * (k * (k - 1) / 2))
        self._span = (start, batch, context, k)
        self._span_blocks = self.batch.new_blocks(k)
        delay = end - now if end > now else 0.0  # (a conditional, not max(): this runs per arrival mid-span)
        self._span_end = now + delay  # as simpy times the event
        if self._span_event is not None:  # the original end: fired empty, not as a call that finds a stale token
            self._span_event.callbacks = ()
        self._span_event = wake(self.env, delay, self._on_span_end, self._token)

    # -- KV blocks ------------------------------------------------------------------------------------------
    def _keys(self, req: SimRequest) -> list[int]:
        """The keys of a prompt's named full blocks (what `_blocks` indexes)."""
        if not self.pool.caching or req.blocks is None or len(req.blocks) == 0:
            return []
        return block_keys(req.blocks, self.prefix_block_tokens, self.bs, req.prompt_tokens)

    def _blocks(self, req: SimRequest) -> _Held:
        if not self.pool.caching or req.blocks is None or len(req.blocks) == 0:
            return _Held(_NO_BLOCKS, True)
        return _Held(*self.pool.name_prompt(req.blocks, req.prompt_tokens))

    def _try_admit(self, req: SimRequest, budget: int | None, room: int) -> tuple[int, int, int] | None:
        """Allocate a waiting request's first chunk (vLLM get_computed_blocks + allocate_slots): (cached tokens,
        host-tier tokens to copy back, tokens to compute this step), or None if its blocks do not fit in `room`
        free blocks. A hit covers full blocks only, never the last token (at most floor((n - 1) / bs) blocks);
        cached blocks it reuses from the free queue count against `room` too."""
        ctx = req.prompt_tokens + req.generated  # a preempted request recomputes what it had generated
        held = self._blocks(req)
        pool = self.pool
        bs = self.bs
        if len(held.keys):
            on_gpu, hit = pool.lookup(held.keys, (ctx - 1) // bs, held.unique)
            cached = hit * bs
            chunk = ctx - cached if budget is None else self._chunk_cap(ctx - cached, budget)
            new = ceil_div(cached + chunk, bs) - len(on_gpu)
            if new + pool.idle_among(on_gpu) > room:
                return None
            pool.touch(on_gpu, held.unique)
        else:  # names no blocks (no trace ids, or caching off): no hit, and the pool's array operations are no-ops
            on_gpu, hit, cached = _NO_BLOCKS, 0, 0
            chunk = ctx if budget is None else self._chunk_cap(ctx, budget)
            new = -(-chunk // bs)
            if new > room:
                return None
        if new > 0:
            pool.take(new)
        held.named = [on_gpu]
        held.n_named = len(on_gpu)
        self._held[req.row] = held
        self._hash(req, held, cached + chunk)
        req.ctx = ctx
        return cached, (hit - len(on_gpu)) * self.bs, chunk

    def _hash(self, req: SimRequest, held: _Held, tokens: int) -> None:
        """The request now has slots for `tokens`: hash the prompt's full blocks scheduled so far (vLLM caches
        them at allocation, before they are computed)."""
        held.tokens = tokens
        if self.pool.caching:
            full = (tokens if tokens < req.prompt_tokens else req.prompt_tokens) // self.bs
            if full > held.hashed:
                if held.hashed < len(held.keys):  # else the slice below is empty: nothing to register
                    mine = self.pool.register(held.keys[held.hashed : min(full, len(held.keys))])
                    if len(mine):
                        held.named.append(mine)
                        held.n_named += len(mine)
                held.hashed = full

    def _release(self, req: SimRequest, tokens: int | None = None) -> None:
        """Free a request's blocks (slots for `tokens` tokens; default: what its prefill allocated), last first."""
        held = self._held.pop(req.row)
        if tokens is None:
            tokens = held.tokens
        blocks = ceil_div(tokens, self.bs)
        full = tokens // self.bs if self.pool.caching else 0
        named = held.named
        blocks_named = named[0] if len(named) == 1 else np.concatenate(named) if named else _NO_BLOCKS
        self.pool.release(blocks_named, full - held.n_named, blocks - full, held.unique)

    def _finish_request(self, req: SimRequest, now: float, status: str, reason: str) -> None:
        self._release(req, req.ctx - 1)
        self.in_flight -= 1
        self.on_finish(req, now, status, reason)

    # -- scheduling -----------------------------------------------------------------------------------------
    def _schedule(self) -> None:
        """Plan the next engine step. Announces the change here, so nothing it calls at this instant (admission,
        chunk planning, preemption) needs to: `_before_change` is a no-op until the next scrape tick."""
        self._before_change()
        self._plan_next()

    def _plan_next(self) -> None:
        """`_schedule` for a caller that has just called `_before_change` at this instant (an event handler)."""
        if self._chunked:
            self._schedule_chunked()
            return
        batch, tokens, sum_sq, host_tokens = self._admit()
        if batch:
            self._state = PREFILL
            self._prefill_batch = batch
            self._mark_busy()
            load_s = host_tokens * self._offload_s_per_token  # copy host-tier KV back before the step
            duration = self.latency.prefill_s(tokens, sum_sq) + load_s
            if self.step_log is not None:
                steps_hook.llm_step(self, duration, tokens, len(batch), sum_sq, host_tokens, 0)
            wake(self.env, duration, self._on_prefill_end)
        elif self.batch.requests:
            self._start_span()
        else:
            self._state = IDLE
            self._mark_idle()

    def _admit(self) -> tuple[list[SimRequest], int, int, int]:
        """V0: take waiting requests (FCFS) into a prefill-only step within the token and sequence limits, each
        allocating its whole prompt while the free blocks stay above the watermark (V0 can_allocate)."""
        batch: list[SimRequest] = []
        tokens = sum_sq = host_tokens = 0
        free_seqs = self.engine.max_num_seqs - len(self.batch.requests)
        budget = self.engine.max_num_batched_tokens
        while self.waiting_q and len(batch) < free_seqs:
            req = self.waiting_q[0]
            if batch and tokens + req.prompt_tokens + req.generated > budget:
                break  # V0 refuses max_num_batched_tokens < max_model_len, so every prompt fits one step
            got = self._try_admit(req, None, self.pool.free - self.watermark_blocks)
            if got is None:
                break
            cached, from_host, compute = got
            self.waiting_q.popleft()
            self._started(req, cached)
            batch.append(req)
            tokens += compute
            sum_sq += compute * compute
            host_tokens += from_host
        return batch, tokens, sum_sq, host_tokens

    def _started(self, req: SimRequest, cached: int) -> None:
        if req.start_s != req.start_s:  # NaN: first admission (vLLM counts num_cached_tokens once)
            req.cached_tokens = cached
            req.start_s = self.env._now

    def _on_prefill_end(self, _event: simpy.Event) -> None:
        now = self.env._now
        self._before_change()
        batch, self._prefill_batch = self._prefill_batch, []
        for req in batch:
            self._first_token(req, now)
        self._plan_next()

    def _first_token(self, req: SimRequest, now: float) -> None:
        """The prompt is computed: emit a token, then finish or join the running batch."""
        req.generated += 1
        req.ctx += 1
        if req.first_token_s != req.first_token_s:  # NaN: first time through (not after a preemption)
            req.first_token_s = now
        if req.generated >= req.output_tokens:
            self._finish_request(req, now, STATUS_OK, "")
        else:
            self.batch.join(req)

    def _ensure_decode_room(self) -> bool | None:
        """Preempt (recompute) the newest running requests until the running batch gets its blocks for one
        more decode step: whether it preempted, or None if the step cannot happen (the scheduler was re-entered
        after a request that can never fit failed)."""
        preempted = False
        while self.batch.requests and self.batch.new_blocks(1) > self.pool.free:
            if len(self.batch.requests) == 1 and not self._prefilling:
                req = self.batch.only()
                self.batch.leave(req)
                self._finish_request(req, self.env.now, STATUS_FAILED, "context outgrew the replica's KV cache")
                self._schedule()
                return None
            preempted = True
            if self._prefilling:  # prompts in progress were admitted after every decoding request
                self._preempt(self._prefilling.pop())
            else:
                victim = self.batch.last_admitted()
                self.batch.leave(victim)
                self._preempt(victim, victim.ctx - 1)
        return preempted

    def _preempt(self, victim: SimRequest, tokens: int | None = None) -> None:
        """vLLM's recompute preemption: the victim gives back its KV blocks and waits at the head of the queue;
        its generated tokens are recomputed as part of the prompt."""
        self._release(victim, tokens)
        victim.prefill_left = 0
        self.waiting_q.appendleft(victim)
        self.preemptions += 1

    # -- the running batch ----------------------------------------------------------------------------------
    def _start_span(self, ensured: bool = False, one_step: bool = False) -> None:
        if not ensured and self._ensure_decode_room() is None:
            return
        running = self.batch
        if not running.requests:  # all were preempted: their prompts wait to be recomputed
            self._schedule()
            return
        # blocks for k steps fit in the free pool plus what this step already took (V1 took it in _schedule)
        taken = self._taken
        steps = 1 if one_step else running.steps_to_next_finish()
        limit = running.step_limit(steps, self.pool.free + taken)  # >= 1 once one step fits
        batch = len(running.requests)
        context = running.context_tokens()
        self._state = DECODE
        self._mark_busy()
        self._token += 1
        self._span = (self.env._now, batch, context, limit)
        first, growth_s = self._set_span_terms(batch, context)
        blocks = self._span_blocks = running.new_blocks(limit)  # the batch cannot change until the span ends
        self._span_growth = blocks - taken
        # latency.decode_span_s(batch, context, limit), its float operations on the terms just computed
        delay = limit * first + growth_s * (limit * (limit - 1) / 2)
        self._span_end = self._span[0] + delay  # as simpy times the event
        self._span_event = wake(self.env, delay, self._on_span_end, self._token)

    def _on_span_end(self, event: simpy.Event) -> None:
        if event.value != self._token:
            return  # a voided span end (abort_all; a shortened span's original end is cancelled)
        if self.step_log is not None:
            steps_hook.llm_span(self)
        self._before_change()
        k = self._span[3]
        self._state = PREFILL  # the span is over: its blocks are booked below, not read in closed form
        new = self._span_blocks - self._taken
        if new > 0:
            self.pool.take(new)
        self._advance_decodes(k, self.env._now)
        self._plan_next()

    def _advance_decodes(self, k: int, now: float) -> None:
        """The running batch did k decode steps (their blocks are taken): finish whoever produced its last
        token."""
        self._taken = 0
        for req in self.batch.advance(k):
            self._finish_request(req, now, STATUS_OK, "")
