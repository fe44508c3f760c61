"""The continuous-batching engine: results equal the model's own greedy decoding, requests join and leave the running
batch, finish reasons, context refusal, cancellation, seeded sampling, and the stats /metrics reports."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import pytest
import torch

from odhsim.scenario.live import TinyLmSpec
from runtime.models.continuous_batching import (
    ContextLengthError,
    ContinuousBatchingEngine,
    GenerationResult,
    SamplingParams,
    SequenceFailedError,
)
from runtime.models.sampling import request_generator, sample
from runtime.models.tiny_lm import TinyLm
from runtime.tokenizer import EOS, decode, encode

SPEC = TinyLmSpec(d_model=32, n_layers=2, n_heads=4, max_seq_len=96, seed=5)
GREEDY = SamplingParams(max_tokens=12, temperature=0.0, ignore_eos=True)

pytestmark = pytest.mark.timeout(30)


@pytest.fixture(scope="module")
def lm() -> TinyLm:
    return TinyLm.build(SPEC)


def with_engine(lm: TinyLm, body: Callable[[ContinuousBatchingEngine], Awaitable], **kw) -> object:
    async def main():
        engine = ContinuousBatchingEngine(lm, threads=1, **{"max_num_seqs": 4, **kw})
        await engine.start()
        try:
            return await body(engine)
        finally:
            await engine.close()

    return asyncio.run(main())


def reference_greedy(lm: TinyLm, prompt: list[int], n: int) -> list[int]:
    """Greedy decoding by full forward passes (no cache, no batching)."""
    ids = list(prompt)
    for _ in range(n):
        ids.append(int(lm(torch.tensor([ids]))[0, -1].argmax()))
    return ids[len(prompt) :]


def test_greedy_result_equals_reference_decoding(lm):
    prompt = encode("The quick brown fox")
    result: GenerationResult = with_engine(lm, lambda e: e.generate(prompt, GREEDY))
    assert list(result.token_ids) == reference_greedy(lm, prompt, 12)
    assert result.finish_reason == "length"
    assert (result.prompt_tokens, result.completion_tokens) == (len(prompt), 12)
    assert result.text == decode(result.token_ids)
    assert result.ttft_s is not None and 0 <= result.ttft_s <= result.finish_time - result.arrival_time


def test_staggered_requests_join_and_leave_the_running_batch(lm):
    prompts = [encode("x" * (3 * i + 1)) for i in range(6)]
    params = [SamplingParams(max_tokens=20 + i, temperature=0.0, ignore_eos=True) for i in range(6)]  # distinct ends

    async def body(engine: ContinuousBatchingEngine):
        seen: list[tuple[int, int]] = []  # (running, waiting) at every token delivered

        async def one(i: int) -> GenerationResult:
            await asyncio.sleep(0.003 * i)
            stream = engine.submit(prompts[i], params[i])
            async for _ in stream:
                s = engine.stats()
                seen.append((s.running, s.waiting))
            return await stream.result()

        results = await asyncio.gather(*(one(i) for i in range(len(prompts))))
        alone = [await engine.generate(p, q) for p, q in zip(prompts, params, strict=True)]
        return seen, results, alone, engine.stats()

    seen, results, alone, stats = with_engine(lm, body, max_num_seqs=4)
    running = [r for r, _ in seen]
    assert max(running) > 1, "requests never shared a decode step"
    assert max(running) <= 4  # max_num_seqs bounds the batch
    assert 1 in running[running.index(max(running)) :], "the batch never shrank as requests finished"
    for got, ref in zip(results, alone, strict=True):
        assert got.token_ids == ref.token_ids  # batching does not change a greedy answer
    assert (stats.running, stats.waiting, stats.kv_cache_usage) == (0, 0, 0.0)


def test_waiting_queue_when_the_batch_is_full(lm):
    async def body(engine: ContinuousBatchingEngine):
        streams = [engine.submit(encode(f"p{i}"), GREEDY) for i in range(5)]
        await asyncio.sleep(0)
        first = engine.stats()
        await asyncio.gather(*(s.result() for s in streams))
        return first, engine.stats()

    first, last = with_engine(lm, body, max_num_seqs=2)
    assert first.waiting + first.running == 5 and first.running <= 2
    assert last.request_success_total == 5
    assert last.generation_tokens_total == 5 * 12
    assert last.prompt_tokens_total == 5 * 3


def test_eos_stops_unless_ignore_eos(lm, tmp_path):
    steered = TinyLm.build(SPEC)
    with torch.no_grad():
        steered.head.bias[EOS] = 100.0  # EOS is always the argmax
    torch.save(steered.state_dict(), tmp_path / "eos.pt")
    eos_lm = TinyLm.build(SPEC.model_copy(update={"weights": "eos.pt"}), base_dir=tmp_path)

    async def body(engine: ContinuousBatchingEngine):
        stop = await engine.generate(encode("hi"), SamplingParams(max_tokens=8, temperature=0.0))
        ignored = await engine.generate(encode("hi"), SamplingParams(max_tokens=8, temperature=0.0, ignore_eos=True))
        return stop, ignored

    stop, ignored = with_engine(eos_lm, body)
    assert (stop.finish_reason, stop.token_ids, stop.text) == ("stop", (EOS,), "")
    assert (ignored.finish_reason, ignored.token_ids, ignored.text) == ("length", (EOS,) * 8, "")


def test_stop_string_truncates_and_streams_consistently(lm):
    prompt = encode("stop strings")

    async def body(engine: ContinuousBatchingEngine):
        full = await engine.generate(prompt, SamplingParams(max_tokens=30, temperature=0.0, ignore_eos=True))
        stop = full.text[5:7]
        cut = full.text.index(stop)
        stream = engine.submit(prompt, SamplingParams(max_tokens=30, temperature=0.0, ignore_eos=True, stop=(stop,)))
        streamed = "".join([ev.text async for ev in stream])
        return full, cut, streamed, await stream.result()

    full, cut, streamed, result = with_engine(lm, body)
    assert result.finish_reason == "stop"
    assert result.text == full.text[:cut] == streamed
    assert result.completion_tokens < 30


def test_prompt_plus_max_tokens_over_the_context_is_refused(lm):
    async def body(engine: ContinuousBatchingEngine):
        with pytest.raises(ContextLengthError, match=r"maximum context length is 64 tokens"):
            engine.submit(encode("x" * 40), SamplingParams(max_tokens=30))
        with pytest.raises(ContextLengthError, match=r"41 prompt tokens \+ max_tokens 24 = 65"):
            engine.submit(encode("x" * 40), SamplingParams(max_tokens=24))
        engine.submit(encode("x" * 40), SamplingParams(max_tokens=23))  # 41 + 23 = 64: exactly fits
        return engine.stats()

    stats = with_engine(lm, body, max_model_len=64)
    assert stats.waiting + stats.running == 1


def test_cancelled_request_leaves_the_batch(lm):
    async def body(engine: ContinuousBatchingEngine):
        params = SamplingParams(max_tokens=80, temperature=0.0, ignore_eos=True)
        long = engine.submit(encode("long"), params)
        other = engine.submit(encode("other"), params)
        got = 0
        async for _ in long:
            got += 1
            if got == 3:
                long.cancel()
                break
        cancelled = await long.result()
        done = await other.result()
        return cancelled, done, engine.stats()

    cancelled, done, stats = with_engine(lm, body)
    assert cancelled.finish_reason == "abort" and cancelled.completion_tokens < 80
    assert done.finish_reason == "length" and done.completion_tokens == 80
    assert (stats.running, stats.request_success_total) == (0, 1)


def test_seeded_sampling_is_deterministic_whatever_shares_the_batch(lm):
    sampled = SamplingParams(max_tokens=16, temperature=1.0, top_p=0.9, seed=1234, ignore_eos=True)

    async def body(engine: ContinuousBatchingEngine):
        alone = await engine.generate(encode("seeded"), sampled)
        noise = [engine.submit(encode(f"noise {i}"), SamplingParams(max_tokens=16, seed=i)) for i in range(3)]
        batched = await engine.generate(encode("seeded"), sampled)
        await asyncio.gather(*(n.result() for n in noise))
        other_seed = await engine.generate(encode("seeded"), SamplingParams(**{**sampled.__dict__, "seed": 99}))
        return alone, batched, other_seed

    alone, batched, other_seed = with_engine(lm, body)
    assert alone.token_ids == batched.token_ids
    assert alone.token_ids != other_seed.token_ids


def poisoned(spec: TinyLmSpec, byte: int) -> TinyLm:
    """`spec`'s model with a NaN embedding for `byte` (a prompt holding it gets NaN logits) that it never generates."""
    model = TinyLm.build(spec)
    with torch.no_grad():
        model.tok_emb.weight[byte] = float("nan")
        model.head.bias[byte] = -1e4
    return model


def test_a_non_finite_row_fails_its_sequence_alone_and_the_batch_goes_on():
    """A prompt whose logits are NaN (prefill row), and a running sequence whose decode row turns NaN, each fail
    alone with SequenceFailedError; the sequences beside them give exactly what they give alone; the engine goes
    on serving and the failed slots are freed."""
    model = poisoned(SPEC, 7)
    sampled = SamplingParams(max_tokens=24, temperature=1.0, seed=3, ignore_eos=True)
    real_decode = model.decode
    calls = {"n": 0, "nan_at": None}

    def decode(tokens, positions, cache, span=None):  # the 6th decode step of the batch turns row 1 NaN
        logits = real_decode(tokens, positions, cache, span)
        calls["n"] += 1
        if calls["nan_at"] is not None and calls["n"] == calls["nan_at"] and logits.shape[0] > 1:
            logits = logits.clone()
            logits[1] = float("nan")
        return logits

    model.decode = decode  # type: ignore[method-assign]

    async def body(engine: ContinuousBatchingEngine):
        alone = [await engine.generate(encode(p), sampled) for p in ("healthy one", "healthy two")]
        calls["nan_at"] = calls["n"] + 6
        first = engine.submit(encode("healthy one"), sampled)
        second = engine.submit(encode("healthy two"), sampled)  # row 1 of the batch: its decode row turns NaN
        await asyncio.sleep(0.01)
        poison = engine.submit(encode("poison \x07 here"), sampled)  # joins the running batch: a NaN prefill row
        outcomes = await asyncio.gather(first.result(), second.result(), poison.result(), return_exceptions=True)
        streamed = [ev async for ev in engine.submit(encode("healthy one"), sampled)]
        failed_stream = engine.submit(encode("\x07"), GREEDY)
        with pytest.raises(SequenceFailedError):
            async for _ in failed_stream:
                pass
        after = await engine.generate(encode("healthy two"), sampled)
        return alone, outcomes, streamed, after, engine.stats()

    alone, (first, second, poison), streamed, after, stats = with_engine(model, body)
    assert isinstance(first, GenerationResult) and first.token_ids == alone[0].token_ids
    assert isinstance(second, SequenceFailedError) and second.error_id.startswith("err-")
    assert isinstance(poison, SequenceFailedError) and "non-finite" not in str(poison)  # the detail is logged only
    assert [ev.token_id for ev in streamed] == list(alone[0].token_ids)
    assert after.token_ids == alone[1].token_ids  # a later sequence in a cleared slot is unaffected
    assert (stats.running, stats.waiting) == (0, 0)


def test_tiny_temperatures_are_greedy_and_small_ones_raised_as_vllm_does(lm):
    """temperature 1e-320 used to divide the logits into inf and NaN (multinomial raised); below 1e-5 it is greedy
    now, and a small positive one samples from a finite distribution."""
    logits = torch.tensor([0.5, 3.0, -1.0, 2.9])
    gen = request_generator(0)
    assert sample(logits, 1e-320, 1.0, gen) == 1
    assert sample(logits, 1e-6, 0.5, gen) == 1
    assert sample(torch.tensor([3e36, 0.0, -3e36]), 1e-3, 1.0, gen) == 0  # raised to 1e-2: no overflow
    tiny = SamplingParams(max_tokens=12, temperature=1e-320, seed=5, ignore_eos=True)
    prompt = encode("tiny temperature")
    result = with_engine(lm, lambda e: e.generate(prompt, tiny))
    assert list(result.token_ids) == reference_greedy(lm, prompt, 12)


def test_measure_batching_reports_a_speedup():
    from runtime.bench_batching import measure_batching

    out = measure_batching(SPEC, concurrency=8, requests=8, max_tokens=16)
    assert out["sequential_tokens_per_s"] > 0 and out["concurrent_tokens_per_s"] > 0
    assert out["ratio"] == pytest.approx(out["concurrent_tokens_per_s"] / out["sequential_tokens_per_s"])
    assert out["ratio"] > 1.5  # typically ~5x at this size on one CPU thread
