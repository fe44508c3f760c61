"""What the live controller needs from the other pieces (process, prober, spawner), as protocols, so it is tested
against fakes and wired to the real ones by `runtime.serve`."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any, Protocol

from odhsim.scenario.deployment import ModelDeployment


class ProcessLike(Protocol):
    """runtime.processes.ReplicaProcess as the controller uses it."""

    @property
    def url(self) -> str: ...

    @property
    def pid(self) -> int: ...

    @property
    def returncode(self) -> int | None: ...

    def alive(self) -> bool: ...

    def terminate(self, grace_s: float = ...) -> Any: ...

    def kill(self) -> Any: ...


class ProberLike(Protocol):
    """Waits for a replica's health, then runs its readiness test (runtime.readiness.HttpProber)."""

    async def wait_healthy(self, model: ModelDeployment, proc: ProcessLike, timeout_s: float) -> float: ...

    async def test(self, model: ModelDeployment, base_url: str) -> str: ...


SpawnFn = Callable[..., ProcessLike]
"""`spawn(model, name)` starts the replica process named `name` of `model` (non-blocking: it returns once the process
is launched); with `live.devices` declared it is called as `spawn(model, name, device)` ("cpu", "cuda:1")."""


async def _call(fn: Callable[..., Any], *args: Any) -> Any:
    """Call a gateway method that may be sync or async."""
    out = fn(*args)
    if inspect.isawaitable(out):
        out = await out
    return out


def exit_reason(returncode: int | None) -> str:
    if returncode is None:
        return "process stopped answering"
    if returncode < 0:
        return f"process killed by signal {-returncode}"
    return f"process exited with code {returncode}"
