"""Envoy's outlier detection (passive health checking) for the hosts of one cluster.

Follows envoyproxy/envoy source/common/upstream/outlier_detection_impl.cc and
api/envoy/config/cluster/v3/outlier_detection.proto:

- Consecutive 5xx: the request that brings a host's run of failures to exactly `consecutive_5xx` tries to eject it
  at once (then the run restarts at 0); a success resets the run. If the host is already ejected nothing happens.
- Every `interval_s` the engine calls `evaluate` (Envoy's interval timer), which, in Envoy's order:
  1. returns each ejected host whose ejection time is over: min(base_ejection_time * backoff, max_ejection_time)
     + jitter <= now - ejected_at (so a host comes back at the first sweep after its time, not in between);
  2. closes the interval's request counts (the counts since the previous sweep are the ones judged);
  3. success-rate ejection: among hosts not ejected with >= `success_rate_request_volume` requests in the
     interval, if there are >= `success_rate_minimum_hosts` of them: success rates in percent, mean and population
     standard deviation; a host with rate < mean - `success_rate_stdev_factor` * stdev is ejected;
  4. failure-percentage ejection: among hosts not ejected with >= `failure_percentage_request_volume` requests,
     if there are >= `failure_percentage_minimum_hosts`: a host with 100 - rate >= `failure_percentage_threshold`
     is ejected (Envoy detects this always, but `enforcing_failure_percentage` defaults to 0: only counted);
  5. decays the ejection back-off of each host that is in service and was returned at least one interval ago.
- The back-off: on each enforced ejection the host's back-off counter goes up by one while
  backoff * base < max + base; ejection time is min(base * backoff, max). The counter goes down by one per sweep
  while the host stays in service, so the ejection time grows 30, 60, 90 ... 300 s only for a host that keeps
  being ejected soon after it returns.
- The cap on ejections (Envoy >= 1.27, PRs 27624 and 27909): a new ejection is allowed when
  100 * (ejected + 1) / hosts <= max_ejection_percent, or, with `always_eject_one_host` (Envoy >= 1.31, default
  false), when no host is ejected. So at the default 10% a cluster of fewer than 10 hosts ejects no one unless
  `always_eject_one_host` is set. A refused ejection counts as `ejections_overflow`.
- `enforcing_*` are the percent chances that a detected outlier is actually ejected, drawn from the injected
  generator (no draw at 0 or 100).

Host membership: `evaluate(now, hosts)` and `set_hosts(hosts)` set the cluster's hosts (a host not listed is
forgotten); `record` on an unknown host adds it. The ejection cap counts every known host.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Annotated, Literal

import numpy as np
from pydantic import Field, model_validator

from policies.registry import PolicyParams
from policies.resilience._stats import mean_and_pstdev

EjectionReason = Literal["consecutive_5xx", "success_rate", "failure_percentage"]
RETURNED_REASON = "ejection_time_elapsed"
# Envoy compares whole milliseconds; float seconds get this tolerance so 3.1 + 30 s is not one sweep late.
_EPS = 1e-9


class OutlierDetectionParams(PolicyParams):
    """`outlier-detection` / `envoy`: Envoy's field names (durations in seconds), Envoy's defaults.

    Deliberate differences: `success_rate_stdev_factor` is the factor itself (1.9), not Envoy's thousandths
    (1900); `enforce_failure_percentage` is a switch for Envoy's `enforcing_failure_percentage` (0 or 100).
    `always_eject_one_host` defaults to false as in Envoy's DetectorConfig: set it true for small clusters.
    """

    consecutive_5xx: Annotated[int, Field(ge=1)] = 5
    interval_s: Annotated[float, Field(gt=0.0)] = 10.0
    base_ejection_time_s: Annotated[float, Field(gt=0.0)] = 30.0
    max_ejection_time_s: Annotated[float | None, Field(gt=0.0)] = None  # None: max(300 s, base_ejection_time_s)
    max_ejection_time_jitter_s: Annotated[float, Field(ge=0.0)] = 0.0
    max_ejection_percent: Annotated[float, Field(ge=0.0, le=100.0)] = 10.0
    always_eject_one_host: bool = False
    enforcing_consecutive_5xx: Annotated[float, Field(ge=0.0, le=100.0)] = 100.0
    enforcing_success_rate: Annotated[float, Field(ge=0.0, le=100.0)] = 100.0
    success_rate_minimum_hosts: Annotated[int, Field(ge=0)] = 5
    success_rate_request_volume: Annotated[int, Field(ge=1)] = 100
    success_rate_stdev_factor: Annotated[float, Field(ge=0.0)] = 1.9
    failure_percentage_threshold: Annotated[float, Field(ge=0.0, le=100.0)] = 85.0
    failure_percentage_minimum_hosts: Annotated[int, Field(ge=0)] = 5
    failure_percentage_request_volume: Annotated[int, Field(ge=1)] = 50
    enforce_failure_percentage: bool = False

    @model_validator(mode="after")
    def _check(self) -> OutlierDetectionParams:
        if self.max_ejection_time_s is not None and self.max_ejection_time_s < self.base_ejection_time_s:
            raise ValueError("max_ejection_time_s cannot be smaller than base_ejection_time_s (Envoy rejects it)")
        return self

    @property
    def effective_max_ejection_time_s(self) -> float:
        if self.max_ejection_time_s is not None:
            return self.max_ejection_time_s
        return max(300.0, self.base_ejection_time_s)


@dataclass(slots=True)
class _Host:
    consecutive_5xx: int = 0
    ejected: bool = False
    ejected_at: float = 0.0
    returned_at: float | None = None
    backoff: int = 0  # Envoy's ejectTimeBackoff
    num_ejections: int = 0
    jitter_s: float = 0.0
    interval_total: int = 0  # requests since the last sweep
    interval_success: int = 0


@dataclass(frozen=True, slots=True)
class HostOutlierInfo:
    """A read-only view of one host's detector state."""

    host: str
    ejected: bool
    num_ejections: int
    backoff: int
    consecutive_5xx: int
    ejection_time_s: float  # min(base * backoff, max): the current ejection's length while ejected (no jitter)


class OutlierDetector:
    """Per-host passive outlier detection for one cluster (see the module doc for Envoy's rules)."""

    def __init__(self, params: OutlierDetectionParams | None = None, rng: np.random.Generator | None = None) -> None:
        self.params = params if params is not None else OutlierDetectionParams()
        self._rng = rng
        self._hosts: dict[str, _Host] = {}
        self._active = 0
        self.events: list[tuple[float, str, str, str]] = []  # (time, host, "ejected" | "returned", reason)
        self.counters: dict[str, int] = {
            "ejections_overflow": 0,
            "ejections_enforced_total": 0,
            "ejections_detected_consecutive_5xx": 0,
            "ejections_enforced_consecutive_5xx": 0,
            "ejections_detected_success_rate": 0,
            "ejections_enforced_success_rate": 0,
            "ejections_detected_failure_percentage": 0,
            "ejections_enforced_failure_percentage": 0,
        }
        self.last_success_rate_threshold: float | None = None  # percent, of the latest sweep (None: not computed)
        self.last_success_rate_mean: float | None = None
        p = self.params
        needs_rng = any(0.0 < x < 100.0 for x in (p.enforcing_consecutive_5xx, p.enforcing_success_rate))
        if (needs_rng or p.max_ejection_time_jitter_s > 0) and rng is None:
            raise ValueError("this configuration draws random numbers: pass a numpy Generator")

    @classmethod
    def from_params(cls, params: OutlierDetectionParams, rng: np.random.Generator) -> OutlierDetector:
        return cls(params, rng)

    @property
    def interval_s(self) -> float:
        return self.params.interval_s

    # -- membership ------------------------------------------------------------------------------------------
    def _host(self, host: str) -> _Host:
        state = self._hosts.get(host)
        if state is None:
            state = self._hosts[host] = _Host()
        return state

    def set_hosts(self, hosts: Iterable[str]) -> None:
        """The cluster's current hosts: new ones are added, missing ones forgotten (with their ejection)."""
        wanted = list(dict.fromkeys(hosts))
        keep = set(wanted)
        for name in [h for h in self._hosts if h not in keep]:
            if self._hosts.pop(name).ejected:
                self._active -= 1
        for name in wanted:
            self._host(name)

    @property
    def hosts(self) -> list[str]:
        return list(self._hosts)

    # -- queries ---------------------------------------------------------------------------------------------
    def is_ejected(self, now: float, host: str) -> bool:
        """Ejected hosts stay out until a sweep (`evaluate`) finds their time over, as in Envoy."""
        state = self._hosts.get(host)
        return state is not None and state.ejected

    def ejected(self, now: float) -> set[str]:
        return {h for h, s in self._hosts.items() if s.ejected}

    def ejection_time_s(self, backoff: int) -> float:
        """min(base * backoff, max): the ejection time for a back-off count (before jitter)."""
        return min(self.params.base_ejection_time_s * backoff, self.params.effective_max_ejection_time_s)

    def info(self, host: str) -> HostOutlierInfo:
        s = self._hosts[host]
        return HostOutlierInfo(host, s.ejected, s.num_ejections, s.backoff, s.consecutive_5xx, self._ejection_time(s))

    def _ejection_time(self, s: _Host) -> float:
        return self.ejection_time_s(s.backoff)

    # -- inputs ----------------------------------------------------------------------------------------------
    def record(self, now: float, host: str, ok: bool) -> None:
        """One response from `host`: ok, or a server-side failure (5xx, reset, connect failure, timeout)."""
        s = self._host(host)
        s.interval_total += 1
        if ok:
            s.interval_success += 1
            s.consecutive_5xx = 0
            return
        s.consecutive_5xx += 1
        if s.consecutive_5xx == self.params.consecutive_5xx and not s.ejected:
            self.counters["ejections_detected_consecutive_5xx"] += 1
            self._eject(now, host, s, "consecutive_5xx", self.params.enforcing_consecutive_5xx)
            s.consecutive_5xx = 0

    def evaluate(self, now: float, hosts: Iterable[str] | None = None) -> None:
        """The interval sweep: returns hosts whose time is over, judges the interval's counts, decays back-offs."""
        if hosts is not None:
            self.set_hosts(hosts)
        p = self.params
        for name, s in self._hosts.items():
            if s.ejected and self._ejection_time(s) + s.jitter_s <= now - s.ejected_at + _EPS:
                self._uneject(now, name, s)
        totals = {name: (s.interval_total, s.interval_success) for name, s in self._hosts.items()}
        for s in self._hosts.values():
            s.interval_total = 0
            s.interval_success = 0
        self._success_rate_sweep(now, totals)
        for s in self._hosts.values():
            healthy_for = None if s.returned_at is None else now - s.returned_at
            if not s.ejected and healthy_for is not None and healthy_for + _EPS >= p.interval_s and s.backoff > 0:
                s.backoff -= 1

    # -- internals -------------------------------------------------------------------------------------------
    def _success_rate_sweep(self, now: float, totals: dict[str, tuple[int, int]]) -> None:
        p = self.params
        self.last_success_rate_mean = None
        self.last_success_rate_threshold = None
        sr_hosts: list[tuple[str, float]] = []
        fp_hosts: list[tuple[str, float]] = []
        for name, s in self._hosts.items():
            total, success = totals[name]
            if s.ejected or total == 0:
                continue
            rate = 100.0 * success / total
            if total >= p.success_rate_request_volume:
                sr_hosts.append((name, rate))
            if total >= p.failure_percentage_request_volume:
                fp_hosts.append((name, rate))
        if sr_hosts and len(sr_hosts) >= p.success_rate_minimum_hosts:
            mean, stdev = mean_and_pstdev([r for _, r in sr_hosts])
            threshold = mean - p.success_rate_stdev_factor * stdev
            self.last_success_rate_mean = mean
            self.last_success_rate_threshold = threshold
            for name, rate in sr_hosts:
                s = self._hosts[name]
                if rate < threshold and not s.ejected:
                    self.counters["ejections_detected_success_rate"] += 1
                    self._eject(now, name, s, "success_rate", p.enforcing_success_rate)
        if fp_hosts and len(fp_hosts) >= p.failure_percentage_minimum_hosts:
            enforcing = 100.0 if p.enforce_failure_percentage else 0.0
            for name, rate in fp_hosts:
                s = self._hosts[name]
                if 100.0 - rate >= p.failure_percentage_threshold and not s.ejected:
                    self.counters["ejections_detected_failure_percentage"] += 1
                    self._eject(now, name, s, "failure_percentage", enforcing)

    def _may_eject(self) -> bool:
        p = self.params
        n = len(self._hosts)
        within_cap = n > 0 and 100.0 * (self._active + 1) / n <= p.max_ejection_percent
        return within_cap or (p.always_eject_one_host and self._active == 0)

    def _enforced(self, percent: float) -> bool:
        if percent >= 100.0:
            return True
        if percent <= 0.0:
            return False
        assert self._rng is not None
        return bool(self._rng.random() * 100.0 < percent)

    def _eject(self, now: float, name: str, s: _Host, reason: EjectionReason, enforcing: float) -> None:
        if not self._may_eject():
            self.counters["ejections_overflow"] += 1
            return
        if not self._enforced(enforcing):
            return
        p = self.params
        self._active += 1
        s.ejected = True
        s.ejected_at = now
        s.num_ejections += 1
        self.counters["ejections_enforced_total"] += 1
        self.counters[f"ejections_enforced_{reason}"] += 1
        if p.max_ejection_time_jitter_s > 0:
            assert self._rng is not None
            jitter_ms = round(p.max_ejection_time_jitter_s * 1000.0)
            s.jitter_s = int(self._rng.integers(0, jitter_ms + 1)) / 1000.0
        else:
            s.jitter_s = 0.0
        base = p.base_ejection_time_s
        if s.backoff * base < p.effective_max_ejection_time_s + base:
            s.backoff += 1
        self.events.append((now, name, "ejected", reason))

    def _uneject(self, now: float, name: str, s: _Host) -> None:
        self._active -= 1
        s.ejected = False
        s.returned_at = now
        s.consecutive_5xx = 0
        self.events.append((now, name, "returned", RETURNED_REASON))
