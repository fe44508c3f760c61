"""Continuous batching (vLLM-style) around `TinyLm`: requests join and leave the running batch between decode steps.

One scheduler task on the event loop owns the waiting queue and the running batch. Each step it admits waiting
requests into free slots (their prompts are prefilled in that step), decodes one token for every running sequence
in a single forward pass, then delivers each token to its request's stream and retires finished or cancelled
sequences. All torch work runs on one dedicated worker thread, so the event loop stays free to serve HTTP while the
model computes, and the cache is never touched by two threads at once.

Every step appends one tuple to `step_rows`, a bounded ring in steps.parquet's field order
(odhsim.results.steps: time, duration, batch, prefill tokens / sequences / attention, decode sequences, context,
KV tokens held, preemptions, host tokens, input rows) that the replica spools to a file (runtime.replica.steps_spool).
The slot cache reserves `max_model_len` per sequence and never preempts, so a KV "block" is one token here.
"""

from __future__ import annotations

import asyncio
import codecs
import contextlib
import logging
import math
import time
import uuid
from collections import deque
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Literal

import torch

from runtime.errors import new_error_id
from runtime.models.sampling import request_generator, sample
from runtime.models.tiny_lm import KvCache, TinyLm
from runtime.tokenizer import EOS, VOCAB_SIZE

log = logging.getLogger(__name__)

FinishReason = Literal["length", "stop", "abort"]
STEP_RING = 65536
"""Engine steps kept in memory until the replica's spooler drains them (oldest dropped beyond)."""


class ContextLengthError(ValueError):
    """The prompt plus max_tokens does not fit the model's context; refused before it enters the queue."""


class EngineClosedError(RuntimeError):
    """The engine is not running (not started yet, or closed)."""


class SequenceFailedError(RuntimeError):
    """This request's own step failed (non-finite logits, or its sampling raised); the rest of its batch went on.

    Carries only an error id: the detail is logged under it, never shown to the client."""

    def __init__(self, error_id: str) -> None:
        super().__init__(f"sequence failed; error id {error_id}")
        self.error_id = error_id


def _finite_rows(logits: torch.Tensor) -> list[bool]:
    """Whether each row of `logits` [B, vocab] is all finite. Fast path: a finite sum means every value is finite
    (a NaN or inf makes the sum non-finite); only then, or when finite values overflow the sum, check row by row."""
    if math.isfinite(float(logits.sum())):
        return [True] * logits.shape[0]
    return torch.isfinite(logits).all(dim=-1).tolist()


@dataclass(frozen=True, slots=True)
class _RowFault:
    """What `_step` returns in place of a token for a row that failed alone."""

    detail: str


@dataclass(frozen=True)
class SamplingParams:
    """Per-request generation settings (OpenAI / vLLM names). temperature 0 is greedy."""

    max_tokens: int = 16
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int | None = None
    ignore_eos: bool = False
    stop: tuple[str, ...] = ()


@dataclass(frozen=True)
class TokenEvent:
    """One generated token and the text it released (empty while a UTF-8 character or a possible stop string is
    incomplete; the held-back text arrives with a later token or with the last one). The request's last token
    carries its `finish_reason`."""

    token_id: int
    text: str
    finish_reason: FinishReason | None = None


@dataclass(frozen=True)
class GenerationResult:
    """A finished request. Times are `time.monotonic()` seconds; `first_token_time` is None when no token came."""

    request_id: str
    text: str
    token_ids: tuple[int, ...]
    finish_reason: FinishReason
    prompt_tokens: int
    completion_tokens: int
    arrival_time: float
    first_token_time: float | None
    finish_time: float

    @property
    def ttft_s(self) -> float | None:
        return None if self.first_token_time is None else self.first_token_time - self.arrival_time


@dataclass(frozen=True)
class EngineStats:
    """What /metrics reports (vLLM's gauges and counters)."""

    waiting: int
    running: int
    kv_cache_usage: float
    prompt_tokens_total: int
    generation_tokens_total: int
    request_success_total: int


_END = object()


@dataclass(eq=False)
class _Sequence:
    request_id: str
    prompt_ids: list[int]
    params: SamplingParams
    arrival_time: float
    generator: torch.Generator | None
    events: asyncio.Queue = field(default_factory=asyncio.Queue)
    result: asyncio.Future | None = None
    output_ids: list[int] = field(default_factory=list)
    cache_len: int = 0
    text: str = ""
    emitted: int = 0
    first_token_time: float | None = None
    cancelled: bool = False
    finished: bool = False
    decoder: codecs.IncrementalDecoder = field(default_factory=lambda: codecs.getincrementaldecoder("utf-8")("replace"))

    @property
    def holdback(self) -> int:
        return max((len(s) for s in self.params.stop), default=1) - 1


class GenerationStream:
    """The handle of one submitted request: `async for event in stream` yields `TokenEvent`s until the request ends;
    `await stream.result()` gives the `GenerationResult`; `cancel()` takes it out of the batch (client gone)."""

    def __init__(self, seq: _Sequence, engine: ContinuousBatchingEngine) -> None:
        self._seq, self._engine = seq, engine

    @property
    def request_id(self) -> str:
        return self._seq.request_id

    @property
    def prompt_tokens(self) -> int:
        return len(self._seq.prompt_ids)

    def __aiter__(self) -> GenerationStream:
        return self

    async def __anext__(self) -> TokenEvent:
        item = await self._seq.events.get()
        if item is _END:
            self._seq.events.put_nowait(_END)  # further reads end too
            raise StopAsyncIteration
        if isinstance(item, BaseException):
            self._seq.events.put_nowait(_END)
            raise item
        return item

    async def result(self) -> GenerationResult:
        assert self._seq.result is not None
        return await asyncio.shield(self._seq.result)

    def cancel(self) -> None:
        """Abort the request; its slot is freed before the next step. No effect once it finished."""
        if not self._seq.finished:
            self._seq.cancelled = True
            self._engine._wake.set()


class ContinuousBatchingEngine:
    """A running batch of at most `max_num_seqs` sequences over one `TinyLm` and its slot cache.

    Call `await start()` inside the event loop that will submit requests, and `await close()` at the end."""

    def __init__(
        self, model: TinyLm, *, max_num_seqs: int = 16, max_model_len: int | None = None, threads: int | None = None
    ) -> None:
        self.model = model
        self.max_num_seqs = max_num_seqs
        self.max_model_len = max_model_len or model.spec.max_seq_len
        if not 2 <= self.max_model_len <= model.spec.max_seq_len:
            raise ValueError(f"max_model_len {self.max_model_len} must be in [2, max_seq_len {model.spec.max_seq_len}]")
        self._threads = threads
        self._executor: ThreadPoolExecutor | None = None
        self._cache: KvCache | None = None
        self._waiting: deque[_Sequence] = deque()
        self._running: list[_Sequence] = []  # index == cache slot
        self._moves: list[tuple[int, int, int]] = []  # (src, dst, length) slot copies owed to the worker
        self._wake = asyncio.Event()
        self._task: asyncio.Task | None = None
        self._closing = False
        self._prompt_tokens = self._generation_tokens = self._successes = 0
        self.step_rows: deque[tuple] = deque(maxlen=STEP_RING)

    # lifecycle -------------------------------------------------------------------------------------------------

    async def start(self, *, warmup: bool = True) -> None:
        """Allocate the cache on the worker thread, optionally run one warm-up pass, and start scheduling."""
        if self._task is not None:
            return
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="lm-worker", initializer=self._init_thread)
        loop = asyncio.get_running_loop()
        self._cache = await loop.run_in_executor(
            self._executor, self.model.new_cache, self.max_num_seqs, self.max_model_len
        )
        if warmup:
            await loop.run_in_executor(self._executor, self._warmup)
        self._task = asyncio.create_task(self._schedule(), name="continuous-batching")

    async def close(self) -> None:
        """Abort every request still held, stop scheduling, and release the worker thread."""
        self._closing = True
        for seq in [*self._waiting, *self._running]:
            seq.cancelled = True
        self._wake.set()
        if self._task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None

    def _init_thread(self) -> None:
        if self._threads:
            torch.set_num_threads(self._threads)

    def _warmup(self) -> None:
        assert self._cache is not None
        self.model.prefill([0, 1, 2], self._cache, 0)
        self.model.decode(torch.tensor([3]), torch.tensor([3]), self._cache, span=4)

    # requests --------------------------------------------------------------------------------------------------

    def check(self, prompt_tokens: int, max_tokens: int) -> None:
        """Raise `ContextLengthError` unless a prompt of this size with this max_tokens fits the context."""
        if max_tokens < 1:
            raise ValueError(f"max_tokens must be at least 1 (got {max_tokens})")
        if prompt_tokens < 1:
            raise ValueError("the prompt needs at least one token")
        if prompt_tokens + max_tokens > self.max_model_len:
            raise ContextLengthError(
                f"This model's maximum context length is {self.max_model_len} tokens; the request has "
                f"{prompt_tokens} prompt tokens + max_tokens {max_tokens} = {prompt_tokens + max_tokens}"
            )

    def submit(
        self, prompt_ids: Sequence[int], params: SamplingParams = SamplingParams(), request_id: str | None = None
    ) -> GenerationStream:
        """Queue a request; raises `ContextLengthError` / `ValueError` before it enters if it cannot be served."""
        if self._task is None or self._closing:
            raise EngineClosedError("the engine is not running")
        ids = [int(t) for t in prompt_ids]
        self.check(len(ids), params.max_tokens)
        if any(not 0 <= t < VOCAB_SIZE for t in ids):
            raise ValueError(f"prompt token ids must be in [0, {VOCAB_SIZE})")
        seq = _Sequence(
            request_id=request_id or uuid.uuid4().hex,
            prompt_ids=ids,
            params=params,
            arrival_time=time.monotonic(),
            generator=request_generator(params.seed) if params.temperature > 0 else None,
        )
        seq.result = asyncio.get_running_loop().create_future()
        self._waiting.append(seq)
        self._wake.set()
        return GenerationStream(seq, self)

    async def generate(
        self, prompt_ids: Sequence[int], params: SamplingParams = SamplingParams(), request_id: str | None = None
    ) -> GenerationResult:
        """Submit and wait for the whole result (cancels the request if the caller is cancelled)."""
        stream = self.submit(prompt_ids, params, request_id)
        try:
            return await stream.result()
        finally:
            stream.cancel()

    def stats(self) -> EngineStats:
        capacity = self.max_num_seqs * self.max_model_len
        held = sum(s.cache_len for s in self._running)
        return EngineStats(
            waiting=len(self._waiting),
            running=len(self._running),
            kv_cache_usage=min(1.0, held / capacity),
            prompt_tokens_total=self._prompt_tokens,
            generation_tokens_total=self._generation_tokens,
            request_success_total=self._successes,
        )

    # scheduling ------------------------------------------------------------------------------------------------

    async def _schedule(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            self._retire()
            if not self._running and not self._waiting:
                if self._closing:
                    return
                self._wake.clear()
                await self._wake.wait()
                continue
            started = time.monotonic()
            decode = list(self._running)
            admitted: list[_Sequence] = []
            while self._waiting and len(decode) + len(admitted) < self.max_num_seqs:
                admitted.append(self._waiting.popleft())
            self._running.extend(admitted)
            moves, self._moves = self._moves, []
            inputs = ([s.output_ids[-1] for s in decode], [s.cache_len for s in decode])
            prefill = [(len(decode) + i, s.prompt_ids) for i, s in enumerate(admitted)]
            sampling = [(s.params, s.generator) for s in (*decode, *admitted)]
            try:
                tokens = await loop.run_in_executor(self._executor, self._step, moves, inputs, prefill, sampling)
            except Exception:  # the forward pass itself failed: that fails the batch, not the engine
                error_id = new_error_id()
                log.exception("engine step failed (error id %s); failing the %d running", error_id, len(self._running))
                err = RuntimeError(f"engine step failed; error id {error_id}")
                for seq in self._running:
                    self._finish(seq, "abort", time.monotonic(), error=err)
                self._running.clear()
                continue
            now = time.monotonic()
            for seq in admitted:
                seq.cache_len = len(seq.prompt_ids)
                seq.first_token_time = now
                self._prompt_tokens += len(seq.prompt_ids)
            for seq in decode:
                seq.cache_len += 1
            for seq, tok in zip((*decode, *admitted), tokens, strict=True):
                if isinstance(tok, _RowFault):
                    self._fail_alone(seq, tok, now)
                else:
                    self._accept(seq, tok, now)
            self._record_step(started, inputs[1], prefill)

    def _record_step(self, started: float, positions: list[int], prefill: list[tuple[int, list[int]]]) -> None:
        """One row of the step log: a decode row at position p reads p + 1 tokens of context (its newest token
        included, as the simulator counts it); a prompt of n tokens costs n x n attention."""
        n_decode = len(positions)
        context = sum(positions) + n_decode
        lengths = [len(ids) for _, ids in prefill]
        prefill_tokens = sum(lengths)
        self.step_rows.append((
            started, time.monotonic() - started, n_decode + len(lengths), prefill_tokens, len(lengths),
            sum(n * n for n in lengths), n_decode, context, context + prefill_tokens, 0, 0, 0,
        ))  # fmt: skip

    def _step(
        self,
        moves: list[tuple[int, int, int]],
        inputs: tuple[list[int], list[int]],
        prefill: list[tuple[int, list[int]]],
        sampling: list[tuple[SamplingParams, torch.Generator | None]],
    ) -> list[int | _RowFault]:
        """Worker thread: compact the cache, decode the running rows in one pass, prefill the new ones; sample.

        A row whose logits are not finite, or whose sampling raises, yields a `_RowFault` for its sequence alone
        (its cache slot is cleared, so a later sequence in that slot cannot read a stale NaN); the other rows are
        sampled as usual. The finiteness check costs one sum over the decode batch unless a row is bad."""
        cache = self._cache
        assert cache is not None
        for src, dst, length in moves:
            cache.move(src, dst, length)
        rows: list[torch.Tensor] = []
        finite: list[bool] = []
        tokens, positions = inputs
        if tokens:
            logits = self.model.decode(
                torch.tensor(tokens), torch.tensor(positions), cache, span=max(positions) + 1
            ).cpu()
            rows.extend(logits.unbind(0))
            finite.extend(_finite_rows(logits))
        for slot, ids in prefill:
            row = self.model.prefill(ids, cache, slot).cpu()
            rows.append(row)
            finite.extend(_finite_rows(row.view(1, -1)))
        out: list[int | _RowFault] = []
        for slot, (row, (p, gen)) in enumerate(zip(rows, sampling, strict=True)):
            if not finite[slot]:
                out.append(self._fault(cache, slot, "the model produced non-finite logits for this sequence"))
                continue
            try:
                out.append(sample(row, p.temperature, p.top_p, gen))
            except (RuntimeError, ValueError) as err:
                out.append(self._fault(cache, slot, f"sampling failed: {err}"))
        return out

    @staticmethod
    def _fault(cache: KvCache, slot: int, detail: str) -> _RowFault:
        cache.k[:, slot].zero_()
        cache.v[:, slot].zero_()
        return _RowFault(detail)

    def _fail_alone(self, seq: _Sequence, fault: _RowFault, now: float) -> None:
        """Fail one sequence with a generic error carrying an id; the detail goes to the log under that id."""
        error_id = new_error_id()
        log.error("request %s failed alone (error id %s): %s", seq.request_id, error_id, fault.detail)
        self._finish(seq, "abort", now, error=SequenceFailedError(error_id))

    def _accept(self, seq: _Sequence, tok: int, now: float) -> None:
        seq.output_ids.append(tok)
        self._generation_tokens += 1
        if seq.cancelled:
            return
        p = seq.params
        finish: FinishReason | None = None
        if tok == EOS and not p.ignore_eos:
            finish = "stop"
        else:
            before = len(seq.text)
            if tok < 256:
                seq.text += seq.decoder.decode(bytes((tok,)))
            if p.stop:
                hits = [i for s in p.stop if (i := seq.text.find(s, max(0, before - len(s) + 1))) >= 0]
                if hits:
                    seq.text, finish = seq.text[: min(hits)], "stop"
            if finish is None and len(seq.output_ids) >= p.max_tokens:
                finish = "length"
        if finish is not None and not (finish == "stop" and p.stop and tok != EOS):
            seq.text += seq.decoder.decode(b"", final=True)
        release = len(seq.text) if finish else max(seq.emitted, len(seq.text) - seq.holdback)
        seq.events.put_nowait(TokenEvent(tok, seq.text[seq.emitted : release], finish))
        seq.emitted = release
        if finish is not None:
            self._successes += 1
            self._finish(seq, finish, now)

    def _finish(self, seq: _Sequence, reason: FinishReason, now: float, error: BaseException | None = None) -> None:
        if seq.finished:
            return
        seq.finished = True
        if error is not None:
            seq.events.put_nowait(error)
            if seq.result is not None and not seq.result.done():
                seq.result.set_exception(error)
                seq.result.exception()  # mark retrieved: a caller that only streams must not trigger a warning
            return
        seq.events.put_nowait(_END)
        if seq.result is not None and not seq.result.done():
            seq.result.set_result(
                GenerationResult(
                    request_id=seq.request_id,
                    text=seq.text,
                    token_ids=tuple(seq.output_ids),
                    finish_reason=reason,
                    prompt_tokens=len(seq.prompt_ids),
                    completion_tokens=len(seq.output_ids),
                    arrival_time=seq.arrival_time,
                    first_token_time=seq.first_token_time,
                    finish_time=now,
                )
            )

    def _retire(self) -> None:
        """Drop cancelled waiting requests; free the slots of finished or cancelled running ones (swap with last)."""
        now = time.monotonic()
        if any(s.cancelled for s in self._waiting):
            for seq in [s for s in self._waiting if s.cancelled]:
                self._finish(seq, "abort", now)
            self._waiting = deque(s for s in self._waiting if not s.cancelled)
        for slot in range(len(self._running) - 1, -1, -1):  # highest first: the last slot is never one to drop
            seq = self._running[slot]
            if not (seq.finished or seq.cancelled):
                continue
            self._finish(seq, "abort", now)
            last = self._running.pop()
            if last is not seq:
                self._moves.append((len(self._running), slot, last.cache_len))
                self._running[slot] = last
