"""A model's canary rollout, as KServe runs one: two revisions, a traffic split, and timed promote or rollback.

At `canary.start_s` the new spec is applied: the latest revision's replicas start through the whole lifecycle
(pending, download, load, readiness test) while the previous rolled-out revision keeps all traffic. Once a canary
replica is ready (Knative routes to a revision only once it is Ready), `canaryTrafficPercent` of the model's
arrivals go to it; the split policy (`policies.routing.canary`, built through the registry) decides per request,
drawing from the model's own `canary.<model>` stream so no other component's random numbers move.

- promote (KServe: canaryTrafficPercent 100 or removed): all traffic to the latest revision, the previous one's
  replicas drain (they finish what they hold) and requests still waiting for it at the gateway move over. Before
  the canary is ready, promotion waits for it, as Knative keeps traffic on the last ready revision.
- rollback (canaryTrafficPercent 0): all traffic back to the previous revision; the canary drains the same way.
- traffic: a new percent while both stay (a progressive rollout step).

Nothing is lost: requests a draining revision holds finish there (up to its drain timeout), the rest move.
Every step is an event (kinds `canary`, `traffic`, `promote`, `rollback`).
"""

from __future__ import annotations

from typing import Any

import simpy

from odhsim.scenario.deployment import CanarySpec, ModelDeployment
from odhsim.sim.gateway import Gateway, ModelRoute
from policies.gateway.route import CanarySplit, SplitPolicy

__all__ = ["CanaryRollout", "SplitPolicy"]


class CanaryRollout:
    """One model's two revisions and the state of its rollout: pending -> rolling -> promoted | rolled_back."""

    def __init__(
        self,
        env: simpy.Environment,
        gateway: Gateway,
        previous: ModelRoute,
        latest: ModelRoute,
        spec: CanarySpec,
        deployment: ModelDeployment,
        split: SplitPolicy,
        events: list[dict[str, Any]],
    ) -> None:
        self.env = env
        self.gateway = gateway
        self.previous = previous
        self.latest = latest
        self.spec = spec
        self.deployment = deployment
        self.events = events
        self.state = CanarySplit(split, spec.traffic_percent)  # what the gateway core splits arrivals by
        previous.core.split = self.state
        self.approved, self.verdict = deployment.deploy_verdict()
        start = env.timeout(spec.start_s)
        start.callbacks.append(lambda _e: self.start())

    def _event(self, kind: str, detail: str) -> None:
        self.events.append(
            {"time_s": self.env.now, "kind": kind, "model": self.previous.name, "replica": "", "detail": detail}
        )

    @property
    def _names(self) -> tuple[str, str]:
        return self.previous.version, self.latest.version

    # -- the split's state (the gateway core picks the revision of each arrival from it) --------------------
    @property
    def percent(self) -> float:
        return self.state.percent

    @percent.setter
    def percent(self, value: float) -> None:
        self.state.percent = value

    @property
    def phase(self) -> str:
        return self.state.phase

    @phase.setter
    def phase(self, value: str) -> None:
        self.state.phase = value

    @property
    def ready(self) -> bool:
        """A canary replica has been ready: the split applies."""
        return self.state.ready

    @ready.setter
    def ready(self, value: bool) -> None:
        self.state.ready = value

    # -- steps --------------------------------------------------------------------------------------------
    def start(self) -> None:
        old, new = self._names
        self.phase = "rolling"
        self._event("deploy", f"{new}: {self.verdict}")
        if not self.approved:
            self.latest.rejection = f"model {new} {self.verdict}"
            self._event("canary", f"{new} rejected at deploy: {old} keeps all traffic")
            return
        d = self.deployment
        self._event(
            "canary",
            f"{new} rollout starts beside {old}: {d.replicas} replica(s) on {d.gpus_per_replica} x {d.gpu}; "
            f"{self.percent:g}% of traffic once ready ({self.spec.split})",
        )
        controller = self.latest.controller
        controller.scale_to(d.replicas, "canary rollout")
        if controller.autoscaler is not None:
            self.env.process(controller.run())

    def revision_ready(self, route: ModelRoute) -> None:
        """A replica of `route` became ready; the canary's first one opens its traffic (or completes a promote)."""
        if route is not self.latest or self.ready or self.phase == "rolled_back":
            return
        self.ready = True
        old, new = self._names
        if self.phase == "promoted":
            self._finish_promotion()
        else:
            self._event("canary", f"{new} ready: takes {self.percent:g}% of traffic, {old} the rest")

    def apply(self, action: str, percent: float | None = None) -> None:
        if action == "promote":
            self.promote()
        elif action == "rollback":
            self.rollback()
        elif action == "traffic":
            assert percent is not None
            self.set_traffic(percent)
        else:
            raise ValueError(f"unknown rollout action {action!r}")

    def set_traffic(self, percent: float) -> None:
        old, new = self._names
        self._event("traffic", f"{new} {self.percent:g}% -> {percent:g}% of traffic ({old} the rest)")
        self.percent = percent

    def promote(self) -> None:
        old, new = self._names
        self.phase = "promoted"
        if not self.approved:
            self._event("promote", f"{new} was rejected at deploy: nothing to promote, {old} keeps all traffic")
        elif self.ready:
            self._finish_promotion()
        else:
            self._event("promote", f"{new} promoted before it is ready: {old} serves until it is")

    def _finish_promotion(self) -> None:
        old, new = self._names
        moved = self._retire(self.previous, self.latest, "promoted away from")
        self._event("promote", f"{new} takes 100% of traffic; {old} drains (moved {moved} waiting request(s))")

    def rollback(self) -> None:
        old, new = self._names
        self.phase = "rolled_back"
        self.percent = 0.0
        moved = self._retire(self.latest, self.previous, "rolled back")
        self._event("rollback", f"{old} takes 100% of traffic again; {new} drains (moved {moved} waiting request(s))")

    def _retire(self, leaving: ModelRoute, staying: ModelRoute, why: str) -> int:
        """No new requests for `leaving`: its replicas drain, its waiting requests move to `staying`."""
        leaving.retired = True
        leaving.controller.retire_all(why)
        return self.gateway.rehome(leaving, staying)
