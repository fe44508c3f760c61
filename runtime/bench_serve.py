"""`odhsim serve` in a subprocess for the live benchmarks (bench_live, bench_priority): the scenario they start
from, the process wrapper that waits for ready replicas and stops everything, and their shared error type.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from odhsim.errors import OdhsimError

REPO_ROOT = Path(__file__).resolve().parents[1]
LIVE_SCENARIO = REPO_ROOT / "scenarios" / "live.yaml"
BENCH_KEY = "bench-key"
MAX_PROMPT, MAX_OUTPUT = 256, 64


class BenchError(OdhsimError):
    """The live benchmark could not run (serve did not start, no replica ready)."""


def bench_scenario() -> dict[str, Any]:
    """scenarios/live.yaml's chat model alone: 2 replicas, no autoscaling, any free port."""
    doc = yaml.safe_load(LIVE_SCENARIO.read_text())
    chat = next(m for m in doc["models"] if m["name"] == "chat")
    chat.pop("autoscaling", None)
    chat["replicas"] = 2
    doc["name"] = "bench-live"
    doc["models"] = [chat]
    doc["workload"]["models"] = {"chat": 1}
    doc["live"] = {**doc["live"], "port": 0, "limits": {"max_prompt_tokens": MAX_PROMPT, "max_tokens": MAX_OUTPUT}}
    return doc


class ServeProcess:
    """`odhsim serve` in a subprocess, stopped (SIGTERM, then SIGKILL of it and its replicas) on exit."""

    def __init__(self, scenario: Path, out: Path, device: str, keys: str = f"{BENCH_KEY}:bench:critical") -> None:
        self.out = out
        exe = Path(sys.executable).with_name("odhsim")
        cmd = [str(exe), "serve", str(scenario), "--port", "0", "--out", str(out), "--device", device]
        env = {**os.environ, "ODHSIM_API_KEYS": keys}
        self.log = (out.parent / f"{out.name}.log").open("wb")
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT, env=env, start_new_session=True)

    def status(self) -> dict[str, Any]:
        with contextlib.suppress(OSError, ValueError):
            return json.loads((self.out / "serve.json").read_text())
        return {}

    def wait_ready(self, replicas: int, timeout_s: float = 180.0) -> dict[str, Any]:
        end = time.monotonic() + timeout_s
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                raise BenchError(f"odhsim serve exited with {self.proc.returncode}; see {self.log.name}")
            st = self.status()
            ready = [r for m in st.get("models", []) for r in m["replicas"] if r["state"] == "ready"]
            if st.get("url") and len(ready) >= replicas:
                return st
            time.sleep(0.2)
        raise BenchError(f"no {replicas} ready replicas after {timeout_s:g} s; see {self.log.name}")

    def stop(self) -> None:
        pids = set()
        with contextlib.suppress(OSError):
            for line in (self.out / "events.jsonl").read_text().splitlines():
                pids.update(int(pid) for pid in re.findall(r"\bpid (\d+)", json.loads(line)["detail"]))
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        for pid in pids:  # a replica left behind; a pid the events name may since belong to another process
            with contextlib.suppress(OSError):
                if b"runtime.replica" in Path(f"/proc/{pid}/cmdline").read_bytes():
                    os.kill(pid, signal.SIGKILL)
        self.log.close()


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile, NaN for no values."""
    return float(np.percentile(values, q)) if values else float("nan")
