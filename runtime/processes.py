"""Replica processes: start `python -m runtime.replica` on a free local port, wait until it is ready, stop it.

Used by the controller and by tests. Output goes to a log file (never a pipe, which would fill and block the
replica); errors quote the log's tail. Every `ReplicaProcess` still alive when this interpreter exits is killed,
and a replica whose parent dies (even by SIGKILL, when no exit handler runs) shuts itself down: see
`parent_watch_env` and `runtime.replica.__main__`.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterable
from pathlib import Path
from types import TracebackType

import httpx

from runtime.replica.config import ReplicaConfig
from runtime.replica_secret import replica_environment, secret_headers

_REPO_ROOT = Path(__file__).resolve().parents[1]
_LIVE: set[ReplicaProcess] = set()  # strong refs: a forgotten handle must still be killed at exit
PARENT_PID_ENV = "ODHSIM_PARENT_PID"
PARENT_DEATHSIG_ENV = "ODHSIM_PARENT_DEATHSIG"


class ReplicaStartError(RuntimeError):
    """A replica exited, or was not ready in time; the message carries its log's tail."""


def free_port(host: str = "127.0.0.1") -> int:
    """A port the OS says is free on `host` now (another process could still take it before the replica binds)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def parent_watch_env() -> dict[str, str]:
    """What tells a replica to exit when this process dies: this pid (the replica polls `os.getppid()` for a
    change), and on Linux whether it may also ask the kernel for SIGTERM at its parent's death
    (prctl PR_SET_PDEATHSIG). The kernel sends that signal when the *thread* that started the child exits, so it is
    asked for only when the start runs on the main thread; a start from a worker thread (`asyncio.to_thread`)
    relies on the poll alone."""
    on_main = threading.current_thread() is threading.main_thread()
    deathsig = sys.platform.startswith("linux") and on_main
    return {PARENT_PID_ENV: str(os.getpid()), PARENT_DEATHSIG_ENV: "1" if deathsig else "0"}


class ReplicaProcess:
    """One replica subprocess. Create with `ReplicaProcess.start(...)`; use as a (sync) context manager so it is
    always stopped: `with ReplicaProcess.start(cfg, name="chat-0") as rp: rp.wait_ready(30); ...`."""

    def __init__(
        self,
        popen: subprocess.Popen,
        *,
        name: str,
        host: str,
        port: int,
        log_path: Path,
        own_log: bool,
        secret: str | None = None,
    ) -> None:
        self._popen = popen
        self.name, self.host, self.port = name, host, port
        self.secret = secret
        self.log_path = log_path
        self._own_log = own_log
        _LIVE.add(self)

    @classmethod
    def start(
        cls,
        config: ReplicaConfig,
        *,
        name: str,
        port: int | None = None,
        device: str = "auto",
        log_path: str | Path | None = None,
        host: str = "127.0.0.1",
        env: dict[str, str] | None = None,
        secret: str | None = None,
    ) -> ReplicaProcess:
        """Launch a replica of `config` (returns at once; call `wait_ready`). `env` entries are added to the child's
        environment (e.g. ODHSIM_TORCH_THREADS); the gateway's credentials ($ODHSIM_API_KEYS, the Redis password)
        never are. With `secret` (runtime.replica_secret; `odhsim serve` always passes its run's) the replica
        answers only requests that carry it (`headers`). Without `log_path` the log is a temporary file, removed on
        stop. The replica exits by itself if this process dies (`parent_watch_env`)."""
        port = port or free_port(host)
        own_log = log_path is None
        if log_path is None:
            fd, tmp = tempfile.mkstemp(prefix=f"odhsim-replica-{name}-", suffix=".log")
            os.close(fd)
            log_path = tmp
        log_path = Path(log_path)
        base = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {}), **parent_watch_env()}
        child_env = replica_environment(base, secret)
        child_env["PYTHONPATH"] = os.pathsep.join(p for p in (str(_REPO_ROOT), child_env.get("PYTHONPATH")) if p)
        cmd = [
            sys.executable, "-m", "runtime.replica", "--model-json", config.model_dump_json(),
            "--port", str(port), "--host", host, "--device", device, "--replica-name", name,
        ]  # fmt: skip
        with open(log_path, "ab") as log:
            popen = subprocess.Popen(
                cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=child_env, close_fds=True
            )
        return cls(popen, name=name, host=host, port=port, log_path=log_path, own_log=own_log, secret=secret)

    # -- state -------------------------------------------------------------------------------------------------

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def headers(self) -> dict[str, str]:
        """What a request to this replica must carry (its secret's header; nothing without a secret)."""
        return secret_headers(self.secret)

    @property
    def pid(self) -> int:
        return self._popen.pid

    @property
    def returncode(self) -> int | None:
        """None while running; the exit status once it ended (negative: killed by that signal)."""
        return self._popen.poll()

    def alive(self) -> bool:
        return self._popen.poll() is None

    def log_tail(self, lines: int = 30) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    def _not_ready(self, why: str) -> ReplicaStartError:
        where = f"replica {self.name} ({self.url}, pid {self.pid})"
        return ReplicaStartError(f"{where} {why}; log tail:\n{self.log_tail()}")

    # -- readiness ---------------------------------------------------------------------------------------------

    def wait_ready(self, timeout_s: float = 60.0, poll_s: float = 0.05) -> float:
        """Block until GET /v2/health/ready answers 200; the seconds waited. Raises `ReplicaStartError` if the
        process exits first or `timeout_s` passes (the process is left as it is)."""
        t0 = time.monotonic()
        with httpx.Client(timeout=1.0, headers=self.headers) as client:
            while True:
                if not self.alive():
                    raise self._not_ready(f"exited with code {self.returncode} before it was ready")
                with contextlib.suppress(httpx.HTTPError):
                    if client.get(f"{self.url}/v2/health/ready").status_code == 200:
                        return time.monotonic() - t0
                if time.monotonic() - t0 > timeout_s:
                    raise self._not_ready(f"was not ready after {timeout_s:g} s")
                time.sleep(poll_s)

    async def wait_ready_async(self, timeout_s: float = 60.0, poll_s: float = 0.05) -> float:
        """`wait_ready` for an event loop (never blocks it)."""
        t0 = time.monotonic()
        async with httpx.AsyncClient(timeout=1.0, headers=self.headers) as client:
            while True:
                if not self.alive():
                    raise self._not_ready(f"exited with code {self.returncode} before it was ready")
                with contextlib.suppress(httpx.HTTPError):
                    if (await client.get(f"{self.url}/v2/health/ready")).status_code == 200:
                        return time.monotonic() - t0
                if time.monotonic() - t0 > timeout_s:
                    raise self._not_ready(f"was not ready after {timeout_s:g} s")
                await asyncio.sleep(poll_s)

    # -- stopping ----------------------------------------------------------------------------------------------

    def _signal(self, sig: signal.Signals) -> None:
        if self.alive():
            with contextlib.suppress(ProcessLookupError):
                self._popen.send_signal(sig)

    def terminate(self, grace_s: float = 10.0) -> int:
        """SIGTERM (graceful: open requests finish), then SIGKILL after `grace_s`; the exit status."""
        self._signal(signal.SIGTERM)
        try:
            self._popen.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            self._popen.kill()
            self._popen.wait()
        return self._done()

    async def terminate_async(self, grace_s: float = 10.0) -> int:
        """`terminate` for an event loop."""
        self._signal(signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        while self.alive() and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        if self.alive():
            self._popen.kill()
            await asyncio.to_thread(self._popen.wait)
        return self._done()

    def kill(self) -> int:
        """SIGKILL at once (a crash, for tests and for giving up on a stuck replica); the exit status."""
        self._signal(signal.SIGKILL)
        self._popen.wait()
        return self._done()

    def _done(self) -> int:
        rc = self._popen.wait()
        _LIVE.discard(self)
        if self._own_log:
            with contextlib.suppress(OSError):
                self.log_path.unlink()
        return rc

    def __enter__(self) -> ReplicaProcess:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.terminate(grace_s=5.0)

    def __repr__(self) -> str:
        state = "alive" if self.alive() else f"exited {self.returncode}"
        return f"ReplicaProcess({self.name!r}, {self.url}, pid={self.pid}, {state})"


def terminate_all(processes: Iterable[ReplicaProcess], grace_s: float = 10.0) -> dict[str, int]:
    """SIGTERM every process at once, then wait for each (SIGKILL past the shared `grace_s`); exit status by name."""
    procs = list(processes)
    for proc in procs:
        proc._signal(signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    return {proc.name: proc.terminate(grace_s=max(0.0, deadline - time.monotonic())) for proc in procs}


@atexit.register
def _kill_leftovers() -> None:
    for proc in list(_LIVE):
        with contextlib.suppress(Exception):
            proc.kill()
