"""odhsim.sim.wakeup: bare events must fire exactly where env.timeout's would (results depend on the order)."""

from __future__ import annotations

import pytest
import simpy

from odhsim.sim.wakeup import wake


def test_wakeups_and_timeouts_fire_in_time_then_scheduling_order() -> None:
    env = simpy.Environment()
    fired: list[tuple[float, str, object]] = []

    def note(label: str):  # type: ignore[no-untyped-def]
        return lambda event: fired.append((env.now, label, event.value))

    for i, delay in enumerate([2.0, 1.0, 2.0, 0.0, 1.0, 2.0]):
        if i % 2:
            wake(env, delay, note(f"w{i}"), i)
        else:
            env.timeout(delay, i).callbacks.append(note(f"t{i}"))

    def later():  # type: ignore[no-untyped-def]
        yield env.timeout(1.0)
        wake(env, 1.0, note("w-late"), "late")  # scheduled at t=1 for t=2: after everything already at t=2
        env.timeout(0.0, "now").callbacks.append(note("t-now"))

    env.process(later())
    env.run()
    assert fired == [
        (0.0, "w3", 3),
        (1.0, "w1", 1),
        (1.0, "t4", 4),
        (1.0, "t-now", "now"),
        (2.0, "t0", 0),
        (2.0, "t2", 2),
        (2.0, "w5", 5),
        (2.0, "w-late", "late"),
    ]


def test_a_negative_delay_is_refused_like_env_timeout() -> None:
    env = simpy.Environment()
    with pytest.raises(ValueError, match="negative delay"):
        wake(env, -1e-9, lambda event: None)
