"""The model behind a replica: an LM under continuous batching, or a classifier under dynamic batching.

Both load in the background (the HTTP server answers health checks meanwhile), run one warm-up forward pass before
they call themselves ready, and report the numbers /metrics exposes.
"""

from __future__ import annotations

import asyncio
import logging
import os
from typing import Any

import numpy as np
import torch

from runtime.errors import new_error_id
from runtime.models.classifiers import Classifier, build_classifier, predict
from runtime.models.continuous_batching import ContinuousBatchingEngine, EngineStats, SequenceFailedError
from runtime.models.dynamic_batching import DynamicBatcher
from runtime.models.tiny_lm import TinyLm
from runtime.replica.config import ReplicaConfig
from runtime.replica.faults import ReplicaFaults

PLATFORM = "pytorch_torchscript"
log = logging.getLogger(__name__)


def default_threads() -> int:
    """Torch intra-op threads per replica: $ODHSIM_TORCH_THREADS, else half the cores (1..4), since replicas
    share the machine with each other and the gateway."""
    env = os.environ.get("ODHSIM_TORCH_THREADS")
    if env:
        return max(1, int(env))
    return max(1, min(4, (os.cpu_count() or 2) // 2))


def resolve_device(device: str) -> str:
    """`auto` is cuda when torch sees a GPU, else cpu."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device not in ("cpu", "cuda"):
        raise ValueError(f"device must be auto, cpu or cuda (got {device!r})")
    return device


def _tensor_meta(name: str, datatype: str, shape: list[int]) -> dict[str, Any]:
    return {"name": name, "datatype": datatype, "shape": shape}


class LmBackend:
    """A `TinyLm` with its `ContinuousBatchingEngine`."""

    def __init__(self, config: ReplicaConfig, device: str, threads: int, faults: ReplicaFaults | None = None) -> None:
        assert config.spec.lm is not None
        self.config, self.device, self.threads = config, device, threads
        self.faults = faults or ReplicaFaults()
        self.engine: ContinuousBatchingEngine | None = None

    async def start(self) -> None:
        cfg = self.config
        lm = cfg.spec.lm
        assert lm is not None
        model = await asyncio.to_thread(TinyLm.build, lm, base_dir=cfg.base_dir, device=self.device)
        engine = ContinuousBatchingEngine(
            model, max_num_seqs=cfg.spec.max_num_seqs, max_model_len=cfg.context_len, threads=self.threads
        )
        engine._step = self.faults.stretched(engine._step)  # type: ignore[method-assign]  # slow_replica faults
        await engine.start(warmup=True)
        self.engine = engine

    async def close(self) -> None:
        if self.engine is not None:
            await self.engine.close()

    def metrics(self) -> EngineStats:
        if self.engine is None:
            return EngineStats(0, 0, 0.0, 0, 0, 0)
        return self.engine.stats()

    def metadata(self) -> dict[str, Any]:
        return {
            "platform": PLATFORM,
            "inputs": [_tensor_meta("text_input", "BYTES", [1])],
            "outputs": [_tensor_meta("text_output", "BYTES", [1])],
        }


class ClassifierBackend:
    """An MLP or CNN behind a `DynamicBatcher`."""

    def __init__(self, config: ReplicaConfig, device: str, threads: int, faults: ReplicaFaults | None = None) -> None:
        self.config, self.device, self.threads = config, device, threads
        self.faults = faults or ReplicaFaults()
        self.spec = config.spec.mlp or config.spec.cnn
        assert self.spec is not None
        cnn = config.spec.cnn
        self.row_shape: tuple[int, ...] = (cnn.channels, cnn.height, cnn.width) if cnn else (self.spec.input_dim,)
        self.model: Classifier | None = None
        self.batcher: DynamicBatcher | None = None
        self.successes = 0

    async def start(self) -> None:
        model = await asyncio.to_thread(build_classifier, self.spec, base_dir=self.config.base_dir, device=self.device)
        batcher = DynamicBatcher(
            self.faults.stretched(lambda x: predict(model, x)),  # slow_replica faults stretch each batch
            max_batch_size=self.config.spec.max_batch_size,
            max_batch_delay_ms=self.config.spec.max_batch_delay_ms,
            threads=self.threads,
        )
        await batcher.start()
        await batcher.run_direct(torch.zeros((1, *self.row_shape)))
        self.model, self.batcher = model, batcher

    async def close(self) -> None:
        if self.batcher is not None:
            await self.batcher.close()

    async def infer(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Probabilities [batch, classes] (float32) and labels [batch] (int64) for `rows` [batch, *row_shape].

        Finite inputs can still overflow (values near float32's limit): such a request fails alone with
        `SequenceFailedError` (the rows batched beside it are computed row by row and stay finite)."""
        assert self.batcher is not None
        probs, labels = await self.batcher.submit(torch.from_numpy(np.ascontiguousarray(rows, dtype=np.float32)))
        if not bool(torch.isfinite(probs).all()):
            error_id = new_error_id()
            log.error("classifier request failed alone (error id %s): non-finite probabilities", error_id)
            raise SequenceFailedError(error_id)
        self.successes += 1
        return probs.numpy(), labels.numpy()

    def metrics(self) -> EngineStats:
        if self.batcher is None:
            return EngineStats(0, 0, 0.0, 0, 0, self.successes)
        s = self.batcher.stats()
        return EngineStats(s.waiting, s.running, 0.0, 0, 0, self.successes)

    def metadata(self) -> dict[str, Any]:
        return {
            "platform": PLATFORM,
            "inputs": [_tensor_meta("INPUT__0", "FP32", [-1, *self.row_shape])],
            "outputs": [
                _tensor_meta("probabilities", "FP32", [-1, self.spec.classes]),
                _tensor_meta("label", "INT64", [-1]),
            ],
        }


Backend = LmBackend | ClassifierBackend


def make_backend(
    config: ReplicaConfig, device: str = "cpu", threads: int | None = None, faults: ReplicaFaults | None = None
) -> Backend:
    cls = LmBackend if config.kind == "llm" else ClassifierBackend
    return cls(config, resolve_device(device), threads or default_threads(), faults)
