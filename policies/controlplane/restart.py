"""CrashLoopBackOff: whether and when a crashed replica restarts in place (both engines).

The kubelet restarts a crashed container after a back-off that doubles per restart (10 s, 20 s, ... capped at
300 s) and resets once the container ran 10 minutes (`policies.lifecycle.RestartBackoff`). A replica that is
retiring (scaled down, shut down) is not restarted: it leaves.
"""

from __future__ import annotations

from dataclasses import dataclass

from policies.lifecycle.states import RestartBackoff


@dataclass(frozen=True, slots=True)
class RestartDecision:
    """restart: False when the replica should leave instead; attempt: the CrashLoopBackOff attempt (1-based);
    at_s: when the restart begins."""

    restart: bool
    attempt: int
    delay_s: float
    at_s: float
    reason: str


class RestartPolicy:
    __slots__ = ("backoff",)

    def __init__(self, backoff: RestartBackoff | None = None) -> None:
        self.backoff = backoff or RestartBackoff()

    def on_failure(
        self, now: float, previous_attempt: int, ran_for_s: float, retiring: bool = False
    ) -> RestartDecision:
        """The replica failed at `now` after serving `ran_for_s` seconds (0 if it never became ready)."""
        if retiring:
            return RestartDecision(False, previous_attempt, 0.0, now, "retiring: not restarted")
        attempt = self.backoff.attempt_after(previous_attempt, ran_for_s)
        delay = self.backoff.next_delay(attempt)
        return RestartDecision(
            True, attempt, delay, now + delay, f"restart {attempt} after {delay:g} s (CrashLoopBackOff)"
        )
