"""Tiny replica configs and helpers that run replicas in-process (ASGI) or as real processes, always cleaned up."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx

from odhsim.scenario.live import CnnSpec, LiveModelSpec, MlpSpec, TinyLmSpec
from runtime.processes import ReplicaProcess, terminate_all
from runtime.replica.config import ReplicaConfig

TINY_LM = TinyLmSpec(d_model=32, n_layers=2, n_heads=4, max_seq_len=128, seed=7)
TINY_MLP = MlpSpec(input_dim=8, hidden=[16], classes=4, seed=3)
TINY_CNN = CnnSpec(channels=1, height=8, width=8, conv_channels=[4], classes=3, seed=5)


def lm_config(
    name: str = "chat", lm: TinyLmSpec = TINY_LM, base_dir: str | Path = ".", max_num_seqs: int = 4
) -> ReplicaConfig:
    return ReplicaConfig(
        model=name, kind="llm", spec=LiveModelSpec(lm=lm, max_num_seqs=max_num_seqs), base_dir=str(base_dir)
    )


def fixed_config(name: str, spec: MlpSpec | CnnSpec, *, max_batch_size: int = 8) -> ReplicaConfig:
    key = "mlp" if isinstance(spec, MlpSpec) else "cnn"
    live = LiveModelSpec(**{key: spec}, max_batch_size=max_batch_size, max_batch_delay_ms=2.0)
    return ReplicaConfig(model=name, kind="fixed", spec=live)


@contextlib.asynccontextmanager
async def app_client(config: ReplicaConfig, *, wait_ready: bool = True) -> AsyncIterator[httpx.AsyncClient]:
    """The replica app in this process (lifespan run, model loaded) behind an httpx client."""
    from runtime.replica.app import create_app

    app = create_app(config, replica_name="test-replica", device="cpu", threads=1)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://replica") as client:
            if wait_ready:
                for _ in range(400):
                    if (await client.get("/v2/health/ready")).status_code == 200:
                        break
                    await asyncio.sleep(0.01)
                else:
                    raise TimeoutError("in-process replica not ready")
            client.app = app  # type: ignore[attr-defined]
            yield client


@contextlib.contextmanager
def running_replicas(*named: tuple[str, ReplicaConfig], timeout_s: float = 60.0) -> Iterator[dict[str, ReplicaProcess]]:
    """Start real replica processes together (their startups overlap), wait until all are ready, and always stop
    them, even if starting one fails."""
    procs: dict[str, ReplicaProcess] = {}
    try:
        for name, cfg in named:
            procs[name] = ReplicaProcess.start(cfg, name=name, device="cpu", env={"ODHSIM_TORCH_THREADS": "1"})
        for proc in procs.values():
            proc.wait_ready(timeout_s)
        yield procs
    finally:
        terminate_all(procs.values(), grace_s=5.0)


def stop_serve(proc: subprocess.Popen, replica_pids: set[int] | list[int]) -> None:
    """Stop an `odhsim serve` subprocess (SIGTERM, then SIGKILL after 60 s) and SIGKILL the replica processes it
    started, so a failed test never leaves a replica behind, even if serve itself was killed."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    for pid in replica_pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
