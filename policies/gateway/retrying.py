"""Failed attempts: the retry policy's verdict (Envoy's budget and back-off, or the seed's ladder), the excused
attempt's free retry, the fallback switch, and the re-queue ahead of new arrivals. A mixin of GatewayCore, kept apart
so the core's request path reads in one sitting."""

from __future__ import annotations

from typing import TYPE_CHECKING

from policies.decisions import DecisionRecorder
from policies.gateway.recording import record_retry
from policies.gateway.route import RouteState
from policies.gateway.types import BACKOFF, FAILED, Action, Record, Ticket, WakeAt

NO_REPLICAS = "model has no replicas, no autoscaler and no fallback"


class Retrying:
    """What GatewayCore does when an attempt failed with a retry failure kind."""

    if TYPE_CHECKING:
        recorder: DecisionRecorder | None

        def _respond(self, now: float, t: Ticket, status: str, reason: str, detail: str, out: list[Action]) -> None: ...
        def _pump(self, now: float, route: RouteState, out: list[Action]) -> None: ...
        def _split(self, now: float, model: RouteState, t: Ticket) -> RouteState: ...

    # -- failures and retries ---------------------------------------------------------------------------------
    def _failed(
        self, now: float, t: Ticket, route: RouteState, replica: str, kind: str, detail: str, excused: bool,
        out: list[Action],
    ) -> None:  # fmt: skip
        out.append(Record("upstream-failure", route.name, kind))
        if excused:
            out.append(Record("excused", route.name, kind))
            if t.excused == 0:  # one free retry: the replica may well have answered in time
                t.excused += 1
                if self.recorder is not None:
                    record_retry(self.recorder, now, t, route, "excused", kind, route.name, 0.0, "gateway stall")
                self._requeue(now, route, t, out)
                return
        t.failures += 1
        if t.exclude is None:
            t.exclude = set()
        t.exclude.add(replica)
        primary = route.primary
        policy = primary.retry
        what = f"replica {replica} failed ({kind}: {detail})" if detail else f"replica {replica} failed ({kind})"
        if policy is None:
            if self.recorder is not None:
                record_retry(self.recorder, now, t, route, "fail", kind, "", 0.0, "no retry policy")
            self._respond(now, t, FAILED, "upstream_failed", what, out)
            return
        fallback = primary.fallback
        decision = policy.decide(
            t.failures, kind, fallback is not None, route.in_flight(), route.queued(), route.retries_in_flight
        )
        if decision.action == "fail" or (decision.action == "fallback" and fallback is None):
            if self.recorder is not None:
                record_retry(self.recorder, now, t, route, "fail", kind, "", 0.0, decision.reason)
            if t.failures == getattr(policy, "open_breaker_after", 0):  # the ladder's last rung: tell the operator
                out.append(Record("alert", route.name, f"request {t.id}: {what}; {decision.reason}"))
            self._respond(now, t, FAILED, "upstream_failed", f"{what}; {decision.reason}", out)
            return
        target = route
        if decision.action == "fallback" and fallback is not None:
            target = self._split(now, fallback, t)
            t.exclude = None
            t.rr = None
        t.route = target
        t.retrying = True
        target.retries_in_flight += 1
        out.append(Record(decision.action, route.name, f"{what}; {decision.reason}"))
        if self.recorder is not None:
            record_retry(self.recorder, now, t, route, decision.action, kind, target.name, decision.backoff_s,
                         decision.reason)  # fmt: skip
        if decision.backoff_s > 0:
            out.append(WakeAt(decision.backoff_s, BACKOFF, t))
        else:
            self._requeue(now, target, t, out)

    def _requeue(self, now: float, route: RouteState, t: Ticket, out: list[Action]) -> None:
        """Another attempt for an admitted request: ahead of new arrivals, on `route`."""
        t.route = route
        if not route.ready and (route.rejection or not route.scales):
            self._respond(now, t, FAILED, "no_replica", route.rejection or NO_REPLICAS, out)
            return
        route.retries.append(t)
        t.waiting = True
        self._pump(now, route, out)
