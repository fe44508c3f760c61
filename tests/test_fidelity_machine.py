"""The machine's other load during a live run (odhsim.fidelity.machine): CPU used beyond the run's own processes."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from odhsim.fidelity.machine import CpuMeter


def test_the_meter_counts_cpu_outside_the_measured_processes_as_others() -> None:
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        only_sleeper, with_me = CpuMeter([sleeper.pid]), CpuMeter([os.getpid()])
        only_sleeper.start()
        with_me.start()
        t0, c0 = time.monotonic(), time.process_time()
        while time.monotonic() - t0 < 0.6:  # burn one core in this process
            sum(i * i for i in range(2000))
        mine = (time.process_time() - c0) / (time.monotonic() - t0)
        a, b = only_sleeper.others_cores(), with_me.others_cores()
        ours = with_me.read()[1]
    finally:
        sleeper.kill()
        sleeper.wait()
    assert mine > 0.4
    # this process's burn is "others" to a meter of the sleeper, and its own to a meter of this process
    assert a >= mine - 0.05
    assert a - b == pytest.approx(mine, abs=0.1)
    assert ours == pytest.approx(mine, abs=0.1)


def test_an_unstarted_meter_says_nan() -> None:
    assert CpuMeter([os.getpid()]).others_cores() != CpuMeter([os.getpid()]).others_cores()  # NaN
