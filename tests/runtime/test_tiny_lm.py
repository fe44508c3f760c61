"""The tiny LM: seeded/loaded weights, and the KV cache reproducing a full causal pass (alone and batched)."""

from __future__ import annotations

import pytest
import torch

from odhsim.scenario.live import TinyLmSpec
from runtime.models.sampling import request_generator, sample
from runtime.models.tiny_lm import TinyLm
from runtime.models.weights import WeightsError
from runtime.tokenizer import EOS, VOCAB_SIZE, encode

SPEC = TinyLmSpec(d_model=32, n_layers=2, n_heads=4, max_seq_len=64, seed=11)
ATOL = 1e-5  # float32; the cached and full passes differ only in summation order


@pytest.fixture(scope="module")
def lm() -> TinyLm:
    torch.set_num_threads(1)
    return TinyLm.build(SPEC)


def full_last(lm: TinyLm, ids: list[int]) -> torch.Tensor:
    return lm(torch.tensor([ids]))[0, -1]


def test_seeded_weights_are_deterministic_and_seed_dependent(lm):
    torch.manual_seed(123)  # the global RNG must not matter
    again = TinyLm.build(SPEC)
    other = TinyLm.build(SPEC.model_copy(update={"seed": 12}))
    for (name, a), b in zip(lm.state_dict().items(), again.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    assert not torch.equal(lm.tok_emb.weight, other.tok_emb.weight)
    assert lm(torch.tensor([encode("abc")])).shape == (1, 4, VOCAB_SIZE)


def test_cached_prefill_and_decode_match_full_forward(lm):
    cache = lm.new_cache(slots=1)
    ids = encode("hello")
    logits = lm.prefill(ids, cache, 0)
    assert torch.allclose(logits, full_last(lm, ids), atol=ATOL)
    for _ in range(10):
        ids.append(int(logits.argmax()))
        logits = lm.decode(torch.tensor([ids[-1]]), torch.tensor([len(ids) - 1]), cache)[0]
        assert torch.allclose(logits, full_last(lm, ids), atol=ATOL)


def test_batched_decode_of_different_lengths_equals_each_alone(lm):
    prompts = [encode("a"), encode("a much longer prompt"), encode("mid size")]
    cache = lm.new_cache(slots=4)
    nexts = [int(lm.prefill(p, cache, slot).argmax()) for slot, p in enumerate(prompts)]
    seqs = [list(p) for p in prompts]
    for _ in range(6):
        positions = [len(s) for s in seqs]
        batched = lm.decode(torch.tensor(nexts), torch.tensor(positions), cache)
        for i, s in enumerate(seqs):
            s.append(nexts[i])
            alone_cache = lm.new_cache(slots=1)
            lm.prefill(s[:-1], alone_cache, 0)
            alone = lm.decode(torch.tensor([s[-1]]), torch.tensor([len(s) - 1]), alone_cache)[0]
            assert torch.allclose(batched[i], alone, atol=ATOL)
            assert torch.allclose(batched[i], full_last(lm, s), atol=ATOL)
        nexts = batched.argmax(-1).tolist()


def test_cache_move_keeps_a_sequence_intact(lm):
    """Compaction copies a sequence's cache to a lower slot; decoding from there gives the same logits."""
    cache = lm.new_cache(slots=3)
    ids = encode("moved")
    lm.prefill(encode("other"), cache, 0)
    nxt = int(lm.prefill(ids, cache, 2).argmax())
    cache.move(2, 0, len(ids))
    got = lm.decode(torch.tensor([nxt]), torch.tensor([len(ids)]), cache)[0]
    assert torch.allclose(got, full_last(lm, [*ids, nxt]), atol=ATOL)


def test_state_dict_file_round_trip_and_clear_errors(lm, tmp_path):
    torch.save(lm.state_dict(), tmp_path / "lm.pt")
    loaded = TinyLm.build(SPEC.model_copy(update={"weights": "lm.pt", "seed": 99}), base_dir=tmp_path)
    ids = torch.tensor([encode("same weights")])
    assert torch.equal(loaded(ids), lm(ids))

    with pytest.raises(WeightsError, match=r"missing\.pt"):
        TinyLm.build(SPEC.model_copy(update={"weights": "missing.pt"}), base_dir=tmp_path)
    wider = SPEC.model_copy(update={"d_model": 64, "weights": "lm.pt"})
    with pytest.raises(WeightsError, match=r"lm\.pt does not match"):
        TinyLm.build(wider, base_dir=tmp_path)


def test_bfloat16_model_runs_with_float32_logits():
    model = TinyLm.build(SPEC.model_copy(update={"dtype": "bfloat16"}))
    cache = model.new_cache(slots=1)
    logits = model.prefill(encode("hi"), cache, 0)
    assert logits.dtype == torch.float32 and torch.isfinite(logits).all()


def test_sampling_greedy_top_p_and_seeded_determinism():
    logits = torch.tensor([0.0, 3.0, 1.0, 2.9])
    assert sample(logits, 0.0, 1.0, None) == 1
    assert sample(logits, 1.0, 1e-6, request_generator(5)) == 1  # top_p this small keeps only the best token
    draws_a = [sample(logits, 1.0, 1.0, g) for g in [request_generator(42)] * 20]
    draws_b = [sample(logits, 1.0, 1.0, g) for g in [request_generator(42)] * 20]
    assert draws_a == draws_b and len(set(draws_a)) > 1
    assert EOS == VOCAB_SIZE - 1
