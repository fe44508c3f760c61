"""Executors: run many independent jobs, here or on a Ray cluster, and yield each outcome as it finishes.

Contract (what sweeps, compare, capacity search and right-sizing rely on):

    executor = make_executor("inline" | "local" | "ray", workers=N, address=None)
    with executor:
        for out in executor.map(jobs, fn):      # out: Outcome, in order of completion (not submission)
            out.job, out.ok, out.result, out.error, out.attempts, out.wall_s

- `fn(job) -> result` must be a module-level function (or functools.partial of one) with picklable arguments and
  result: `local` spawns fresh worker processes (spawn, never fork: safe with threads and torch) and `ray` ships it
  with cloudpickle. `odhsim.experiments.jobs.run_job` is the usual `fn`; `Job` is the usual job, but any
  picklable object works.
- Every job yields exactly one Outcome. An exception raised by `fn` is not retried (the simulator is
  deterministic: it would fail again); it becomes `ok=False`, `error` = its message (an OdhsimError's own
  text, which names the field; any other exception as "<Type>: <message> (at file:line)").
- A worker that dies (killed, out of memory, segfault) costs its job one retry: `local` rebuilds the process
  pool and resubmits every job the broken pool lost, once; `ray` uses the task's `max_retries=1`. A job lost
  twice is recorded as failed with the error. (`local` cannot tell which job killed the pool, so a job lost
  alongside the culprit also spends its retry.)
- Results do not depend on the executor or the number of workers: a job's result is a function of the job.
- `inline` runs jobs one after another in the calling process (no pickling, nothing to start: today's
  behaviour of `compare`); a worker death there is the caller's death.
- `ray` with `address=None` starts a private local Ray on loopback with `num_cpus=workers` and no dashboard, and
  shuts it down on close; with `address` ("ray://head:10001" for a KubeRay cluster, or "auto") it connects to
  that cluster, uses what it has, and disconnects on close. The cluster needs the same odhsim version installed.
"""

from __future__ import annotations

import multiprocessing
import os
import time
import traceback
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Protocol

from odhsim.errors import OdhsimError

EXECUTORS = ("inline", "local", "ray")
MAX_ATTEMPTS = 2
"""A job runs at most twice: once, and once more if its worker died."""


class ExecutorError(OdhsimError):
    """An executor that cannot start (bad worker count, Ray missing or unreachable)."""


@dataclass(frozen=True, eq=False)
class Outcome:
    """One job's end: `result` when ok, else `error`. `attempts` is None where the executor cannot tell (Ray)."""

    job: Any
    result: Any = None
    error: str | None = None
    attempts: int | None = 1
    wall_s: float = 0.0
    """Seconds the job took in its worker (its last attempt), measured around `fn`."""

    @property
    def ok(self) -> bool:
        return self.error is None


class Executor(Protocol):
    """Runs `fn` over `jobs` and yields one Outcome per job as each finishes; a context manager for its workers."""

    name: str
    workers: int

    def map(self, jobs: Iterable[Any], fn: Callable[[Any], Any]) -> Iterator[Outcome]: ...

    def close(self) -> None: ...

    def __enter__(self) -> Executor: ...

    def __exit__(self, *exc: object) -> None: ...


def _describe(err: BaseException) -> str:
    text = str(err).strip()
    return f"{type(err).__name__}: {text}" if text else type(err).__name__


def call_job(fn: Callable[[Any], Any], job: Any) -> tuple[bool, Any, float]:
    """Run fn(job) in the worker: (True, result, seconds) or (False, "<Type>: <message>", seconds)."""
    t0 = time.perf_counter()
    try:
        return True, fn(job), time.perf_counter() - t0
    except Exception as err:  # any failure of one job is that job's recorded error
        if not isinstance(err, OdhsimError):
            text = "".join(traceback.format_exception_only(err)).strip()
            return False, f"{text} (at {_last_frame(err)})", time.perf_counter() - t0
        return False, str(err), time.perf_counter() - t0


def _last_frame(err: BaseException) -> str:
    tb = traceback.extract_tb(err.__traceback__)
    return f"{os.path.basename(tb[-1].filename)}:{tb[-1].lineno}" if tb else "?"


def _check_workers(workers: int) -> int:
    if not isinstance(workers, int) or workers < 1:
        raise ExecutorError(f"--workers must be a positive integer, got {workers!r}")
    return workers


class _Closing:
    def __enter__(self) -> Any:
        return self

    def __exit__(self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    def close(self) -> None:  # pragma: no cover - overridden
        pass


class InlineExecutor(_Closing):
    """Jobs one after another in this process."""

    name = "inline"

    def __init__(self, workers: int = 1) -> None:
        self.workers = 1

    def map(self, jobs: Iterable[Any], fn: Callable[[Any], Any]) -> Iterator[Outcome]:
        for job in jobs:
            ok, value, took = call_job(fn, job)
            yield Outcome(job, value if ok else None, None if ok else value, 1, took)


class LocalExecutor(_Closing):
    """A spawn-context process pool of `workers` processes, rebuilt if a worker dies."""

    name = "local"

    def __init__(self, workers: int = 1) -> None:
        self.workers = _check_workers(workers)
        self._pool: ProcessPoolExecutor | None = None

    def _new_pool(self) -> ProcessPoolExecutor:
        self._pool = ProcessPoolExecutor(self.workers, mp_context=multiprocessing.get_context("spawn"))
        return self._pool

    def map(self, jobs: Iterable[Any], fn: Callable[[Any], Any]) -> Iterator[Outcome]:
        pending = list(jobs)
        attempts = [0] * len(pending)
        todo = list(range(len(pending)))
        while todo:
            pool = self._pool or self._new_pool()
            futures: dict[Future[tuple[bool, Any, float]], int] = {}
            for i in todo:
                attempts[i] += 1
                futures[pool.submit(call_job, fn, pending[i])] = i
            todo = []
            lost: list[int] = []
            waiting = set(futures)
            while waiting:
                done, waiting = wait(waiting, return_when=FIRST_COMPLETED)
                for fut in done:
                    i = futures[fut]
                    try:
                        ok, value, took = fut.result()
                    except BrokenProcessPool:
                        lost.append(i)
                        continue
                    yield Outcome(pending[i], value if ok else None, None if ok else value, attempts[i], took)
            if lost:
                self._shutdown()  # the broken pool is unusable: the next round starts a fresh one
                for i in sorted(lost):
                    if attempts[i] < MAX_ATTEMPTS:
                        todo.append(i)
                    else:
                        error = f"worker process died on each of {attempts[i]} attempts (killed or out of memory)"
                        yield Outcome(pending[i], None, error, attempts[i], 0.0)

    def _shutdown(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None

    def close(self) -> None:
        self._shutdown()


def _ray_call(fn: Callable[[Any], Any], job: Any) -> tuple[bool, Any, float]:
    return call_job(fn, job)


class RayExecutor(_Closing):
    """Ray tasks (max_retries=1, num_cpus=1 each): a private local Ray on loopback, or a cluster at `address`."""

    name = "ray"

    def __init__(self, workers: int = 1, address: str | None = None) -> None:
        self.workers = _check_workers(workers)
        self.address = address
        try:
            import ray
        except ModuleNotFoundError:
            raise ExecutorError("--executor ray needs Ray: pip install -e '.[ray]'") from None
        self._ray = ray
        self._started = False
        if not ray.is_initialized():
            try:
                if address is None:
                    ray.init(num_cpus=self.workers, include_dashboard=False, _node_ip_address="127.0.0.1",
                             log_to_driver=False, configure_logging=False)  # fmt: skip
                else:
                    ray.init(address=address, log_to_driver=False, configure_logging=False)
            except Exception as err:  # Ray raises many types; the user needs the address and why
                where = f"the Ray cluster at {address}" if address else "a local Ray"
                raise ExecutorError(f"cannot start {where}: {_describe(err)}") from None
            self._started = True
        self._task = ray.remote(num_cpus=1, max_retries=MAX_ATTEMPTS - 1)(_ray_call)

    def map(self, jobs: Iterable[Any], fn: Callable[[Any], Any]) -> Iterator[Outcome]:
        ray = self._ray
        fn_ref = ray.put(fn)
        refs = {self._task.remote(fn_ref, job): job for job in jobs}
        waiting = list(refs)
        while waiting:
            done, waiting = ray.wait(waiting, num_returns=1)
            for ref in done:
                job = refs.pop(ref)
                try:
                    ok, value, took = ray.get(ref)
                except Exception as err:  # a worker died on every attempt (or the task was lost)
                    yield Outcome(job, None, f"worker died on each of {MAX_ATTEMPTS} attempts: {_describe(err)}",
                                  None, 0.0)  # fmt: skip
                    continue
                yield Outcome(job, value if ok else None, None if ok else value, None, took)

    def close(self) -> None:
        if self._started and self._ray.is_initialized():
            self._ray.shutdown()
        self._started = False


def make_executor(name: str = "inline", *, workers: int = 1, address: str | None = None) -> Executor:
    """The executor called `name`: inline, local (process pool) or ray (local Ray, or the cluster at address)."""
    if address is not None and name != "ray":
        raise ExecutorError(f"--address is for --executor ray, not {name!r}")
    if name == "inline":
        if workers != 1:
            raise ExecutorError(f"--executor inline runs one job at a time; use local for --workers {workers}")
        return InlineExecutor()
    if name == "local":
        return LocalExecutor(workers)
    if name == "ray":
        return RayExecutor(workers, address)
    raise ExecutorError(f"unknown executor {name!r}; known: {', '.join(EXECUTORS)}")
