"""The fixed models (MLP, CNN) and the dynamic batcher that serves them."""

from __future__ import annotations

import asyncio

import pytest
import torch

from odhsim.scenario.live import CnnSpec, MlpSpec
from runtime.models.classifiers import build_classifier, predict
from runtime.models.dynamic_batching import DynamicBatcher
from runtime.models.weights import WeightsError

MLP = MlpSpec(input_dim=8, hidden=[16, 16], classes=5, seed=3)
CNN = CnnSpec(channels=2, height=12, width=10, conv_channels=[4, 8], classes=3, seed=4)

pytestmark = pytest.mark.timeout(30)


@pytest.mark.parametrize("spec", [MLP, CNN], ids=["mlp", "cnn"])
def test_probabilities_and_labels(spec):
    model = build_classifier(spec)
    x = torch.randn((6, *model.input_shape), generator=torch.Generator().manual_seed(0))
    probs, labels = predict(model, x)
    assert probs.shape == (6, spec.classes) and probs.dtype == torch.float32
    assert torch.allclose(probs.sum(-1), torch.ones(6), atol=1e-6)
    assert (probs >= 0).all()
    assert torch.equal(labels, probs.argmax(-1)) and labels.dtype == torch.int64
    again, _ = predict(build_classifier(spec), x)  # seeded: a second build is the same model
    assert torch.equal(probs, again)


def test_state_dict_round_trip_and_errors(tmp_path):
    model = build_classifier(MLP)
    torch.save(model.state_dict(), tmp_path / "mlp.pt")
    loaded = build_classifier(MLP.model_copy(update={"weights": "mlp.pt", "seed": 0}), base_dir=tmp_path)
    x = torch.ones(2, 8)
    assert torch.equal(predict(model, x)[0], predict(loaded, x)[0])
    with pytest.raises(WeightsError, match=r"nope\.pt"):
        build_classifier(MLP.model_copy(update={"weights": "nope.pt"}), base_dir=tmp_path)
    with pytest.raises(WeightsError, match=r"mlp\.pt does not match"):
        build_classifier(MLP.model_copy(update={"weights": "mlp.pt", "classes": 7}), base_dir=tmp_path)


def run_batcher(requests: list[torch.Tensor], *, max_batch_size: int, delay_ms: float, stagger_s: float = 0.0):
    model = build_classifier(MLP)

    async def main():
        fn = lambda x: predict(model, x)  # noqa: E731
        batcher = DynamicBatcher(fn, max_batch_size=max_batch_size, max_batch_delay_ms=delay_ms)
        await batcher.start()
        try:

            async def one(i: int, rows: torch.Tensor):
                await asyncio.sleep(stagger_s * i)
                return await batcher.submit(rows)

            outs = await asyncio.gather(*(one(i, r) for i, r in enumerate(requests)))
            return outs, batcher.stats()
        finally:
            await batcher.close()

    outs, stats = asyncio.run(main())
    for rows, (probs, labels) in zip(requests, outs, strict=True):
        ref_probs, ref_labels = predict(model, rows)
        assert probs.shape == (rows.shape[0], MLP.classes)
        assert torch.allclose(probs, ref_probs, atol=1e-6) and torch.equal(labels, ref_labels)
    return stats


def test_requests_within_the_delay_share_one_forward_pass():
    reqs = [torch.randn(n, 8) for n in (1, 2, 3)]
    stats = run_batcher(reqs, max_batch_size=16, delay_ms=200.0, stagger_s=0.005)
    assert (stats.batches_total, stats.rows_total, stats.requests_total) == (1, 6, 3)
    assert (stats.waiting, stats.running) == (0, 0)


def test_max_batch_size_closes_a_batch_and_big_requests_run_alone():
    reqs = [torch.randn(1, 8) for _ in range(10)]
    stats = run_batcher(reqs, max_batch_size=4, delay_ms=150.0)
    assert stats.batches_total == 3 and stats.rows_total == 10  # 4 + 4 + 2: the last waits out its delay
    stats = run_batcher([torch.randn(9, 8), torch.randn(1, 8)], max_batch_size=4, delay_ms=1.0)
    assert stats.batches_total == 2 and stats.rows_total == 10
