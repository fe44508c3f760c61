"""Replica processes never outlive their parent: a parent SIGKILLed (no exit handler runs) takes its replica
with it, whether it started the replica on its main thread (Linux's parent-death signal) or on a worker thread
(the replica's own poll of its parent pid)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

REPO = Path(__file__).resolve().parents[2]

PARENT = """
import sys, threading, time
from runtime.processes import ReplicaProcess
from tests.runtime.replica_helpers import TINY_MLP, fixed_config

def start():
    return ReplicaProcess.start(fixed_config("digits", TINY_MLP), name="orphan", device="cpu",
                                env={"ODHSIM_TORCH_THREADS": "1"}, log_path=sys.argv[2])

if sys.argv[1] == "main":
    rp = start()
else:  # started on a thread that then ends: the kernel's death signal would fire then, so it must not be asked
    box = []
    t = threading.Thread(target=lambda: box.append(start()))
    t.start()
    t.join()
    rp = box[0]
rp.wait_ready(45)
time.sleep(1.0)  # the starting thread is long gone: the replica must still serve
rp.wait_ready(5)
print(rp.pid, flush=True)
time.sleep(600)
"""


def _gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE  # exited, not yet reaped by init
    except psutil.NoSuchProcess:
        return True


@pytest.mark.timeout(90)
@pytest.mark.parametrize("starter", ["main", "thread"])
def test_replica_exits_when_its_parent_is_killed(tmp_path: Path, starter: str) -> None:
    log = tmp_path / "replica.log"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    parent = subprocess.Popen(
        [sys.executable, "-c", PARENT, starter, str(log)],
        cwd=REPO,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    replica_pid: int | None = None
    try:
        assert parent.stdout is not None
        line = parent.stdout.readline()  # bounded by the test's timeout; empty if the parent failed
        if not line.strip().isdigit():
            parent.kill()
            _, err = parent.communicate(timeout=10)
            pytest.fail(f"parent did not report a ready replica: {line!r}\n{err[-2000:]}")
        replica_pid = int(line)
        replica = psutil.Process(replica_pid)
        assert replica.ppid() == parent.pid and not _gone(replica_pid)
        expected = "1" if starter == "main" else "0"
        assert replica.environ()["ODHSIM_PARENT_DEATHSIG"] == expected

        t0 = time.monotonic()
        parent.send_signal(signal.SIGKILL)
        parent.wait(10)
        while not _gone(replica_pid) and time.monotonic() - t0 < 10.0:
            time.sleep(0.05)
        waited = time.monotonic() - t0
        assert _gone(replica_pid), f"replica {replica_pid} still alive {waited:.1f} s after its parent died"
        assert waited < 8.0
        if starter == "thread":
            assert "parent process" in log.read_text() and "is gone" in log.read_text()
    finally:
        if parent.poll() is None:
            parent.kill()
        parent.communicate(timeout=10)
        if replica_pid is not None and not _gone(replica_pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(replica_pid, signal.SIGKILL)
