"""Decision records: what the cores decided and what they saw when they did, one schema for both engines.

The gateway core (policies.gateway) and the controller core (policies.controlplane) hand a record to their
`recorder` at each decision when one is set; with none set (the default) they test that one attribute and build
nothing, so a run without decision tracing is unchanged, bit for bit. Records are immutable NamedTuples (built per
request on the hot path: a frozen dataclass's __init__ costs several times more) and carry `now` as the core was
given it, so the SimPy and asyncio adapters fed the same events produce equal records, times and all.

Kinds (the `kind` of each record, the `kind` column of decisions.parquet):
- route      a routing pick: every candidate with the filter that removed it, each scorer's raw and clamped score
             and weight, its total, its scraped state and the age of those metrics; the pick
- admission  the flow-control admission verdict (admitted or shed, with the reason and the pool's saturation), and
             a full queue refusing a request
- queue      a request leaving the flow-control queue (popped for dispatch, evicted, or expired: TTL) or the FIFO
- retry      what followed a failed attempt (retry, fallback, fail, excused) or a breaker sending an arrival to its
             fallback
- breaker / ejection   a circuit breaker's state change; an outlier detector ejecting or returning a replica
- scale      an autoscaler decision: its inputs (the metrics snapshot), the replicas counted, desired, reason
"""

from __future__ import annotations

import math
from typing import NamedTuple

ROUTE = "route"
ADMISSION = "admission"
QUEUE = "queue"
RETRY = "retry"
BREAKER = "breaker"
EJECTION = "ejection"
SCALE = "scale"
KINDS = (ROUTE, ADMISSION, QUEUE, RETRY, BREAKER, EJECTION, SCALE)

UNHEALTHY = "unhealthy"
"""`Candidate.filtered_by` for a replica dropped before the filters (outlier-ejected, or failing its probes)."""
NOT_SCORED = "-"
"""`Candidate.filtered_by` when the router is not a filter/scorer/picker pipeline (no breakdown to show)."""
NO_PREFIX = -1
"""`Candidate.prefix_blocks` when the router keeps no prefix index (nothing to estimate cache hits from)."""

_NAN = math.nan


class Candidate(NamedTuple):
    """One replica the router considered. `filtered_by`: "" when it reached the scorers, else the filter that
    removed it (UNHEALTHY before the filters); `raw` and `total` are empty / NaN then. `raw`: each scorer's score
    as it returned it, in the order of the record's `scorers` (its weight there; the clamped score, `clamp`, is
    what the total adds: total = sum of weight x clamp(raw)). The scraped state (waiting, running, kv_usage, age of
    the metrics, prefix blocks the router's index credits it with) is what a latency model needs to estimate the
    request's latency on it."""

    name: str
    filtered_by: str
    waiting: int
    running: int
    kv_usage: float
    metrics_age_s: float
    prefix_blocks: int
    raw: tuple[float, ...]
    total: float


class RouteRecord(NamedTuple):
    """A routing pick for attempt `attempt` of request `request_id` (`pick` "" when no candidate passed; `reason`
    says why, or names the picker). `metrics_age_s`: how old the picked replica's metrics were. `scorers`: the
    profile's (scorer name, weight) pairs, which every scored candidate's `raw` follows."""

    time_s: float
    request_id: int
    model: str
    attempt: int
    priority: str
    pick: str
    reason: str
    metrics_age_s: float
    scorers: tuple[tuple[str, float], ...]
    candidates: tuple[Candidate, ...]
    kind: str = ROUTE


def clamp(score: float) -> float:
    """A score as SchedulerProfile adds it: clamped to [0, 1], NaN counted as 0."""
    return score if 0.0 <= score <= 1.0 else (1.0 if score > 1.0 else 0.0)


class AdmissionRecord(NamedTuple):
    """Admission of request `request_id` to the flow-control queue: `admitted`, or shed with `reason`
    (`admission`'s own reason, or `queue_full`); `saturation` as the admission policy saw it; `queue_len` after."""

    time_s: float
    request_id: int
    model: str
    priority: str
    admitted: bool
    reason: str
    saturation: float
    queue_len: int
    kind: str = ADMISSION


class QueueRecord(NamedTuple):
    """Request `request_id` left the flow-control queue: `action` pop (to be dispatched), evict or expire, after
    `waited_s` in it; `queue_len` is what is left. Without flow control, a pop from the gateway's FIFO (when
    `max_in_flight_per_replica` holds requests back), with `waited_s` counted from the request's arrival."""

    time_s: float
    request_id: int
    model: str
    priority: str
    action: str
    waited_s: float
    queue_len: int
    kind: str = QUEUE


class RetryRecord(NamedTuple):
    """What followed a failed attempt `attempt` of `request_id` (`failure`: its kind): `action` retry, fallback,
    fail or excused (a free retry), on model `target`, after `backoff_s`; or, with attempt 0, an arrival sent to
    the fallback by an open breaker or a model that cannot serve (`failure` breaker_open / unserved)."""

    time_s: float
    request_id: int
    model: str
    attempt: int
    action: str
    failure: str
    target: str
    backoff_s: float
    reason: str
    kind: str = RETRY


class Transition(NamedTuple):
    """A breaker's state change (`kind` breaker: closed/open/half_open) or an ejection (`kind` ejection:
    `subject` the replica, healthy -> ejected or back), with why."""

    time_s: float
    kind: str
    model: str
    subject: str
    from_state: str
    to_state: str
    reason: str


class ScaleInputs(NamedTuple):
    """The metrics snapshot an autoscaler decided on (policies.autoscaling.types.ScalingMetrics' fields)."""

    ready_replicas: int
    pending_replicas: int
    in_flight: float
    avg_concurrency: float
    arrivals_per_s: float
    queue_len: int
    kv_usage: float
    waiting_per_replica: float
    seconds_since_last_request: float


class ScaleRecord(NamedTuple):
    """An autoscaler decision for `model`: from `current` replicas (those that count) to `desired`, with why."""

    time_s: float
    model: str
    current: int
    desired: int
    reason: str
    panic: bool
    inputs: ScaleInputs
    kind: str = SCALE


Decision = RouteRecord | AdmissionRecord | QueueRecord | RetryRecord | Transition | ScaleRecord


class DecisionRecorder:
    """Where the cores send records. This base records nothing; `wants(request_id)` lets a core skip building a
    request's records (the routing breakdown is the costly one) for requests a sampling recorder leaves out."""

    def wants(self, request_id: int) -> bool:
        return False

    def record(self, decision: Decision) -> None:
        return None


_GOLDEN = 0x9E3779B97F4A7C15
_MASK = (1 << 64) - 1


def sample_hash(request_id: int) -> float:
    """A request id mapped to [0, 1), well mixed (splitmix64's finaliser): sampling by it keeps or drops a whole
    request, in every engine and every run alike."""
    z = (request_id * _GOLDEN + _GOLDEN) & _MASK
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK
    return ((z ^ (z >> 31)) >> 11) * (1.0 / (1 << 53))


class ListRecorder(DecisionRecorder):
    """Keeps every record of the requests it samples (`share` 1.0: all), and every record not tied to a request
    (transitions, scale decisions), in order of arrival."""

    __slots__ = ("_keep", "records", "share")

    def __init__(self, share: float = 1.0) -> None:
        if not 0.0 < share <= 1.0:
            raise ValueError(f"decision sampling share must be in (0, 1], got {share}")
        self.share = share
        self.records: list[Decision] = []
        self._keep: dict[int, bool] = {}

    def wants(self, request_id: int) -> bool:
        if self.share >= 1.0:
            return True
        keep = self._keep.get(request_id)
        if keep is None:
            keep = self._keep[request_id] = sample_hash(request_id) < self.share
        return keep

    def record(self, decision: Decision) -> None:
        self.records.append(decision)


def parse_decisions(value: str) -> float:
    """`outputs.decisions` as a share of requests: all -> 1.0, none -> 0.0, sample:<share> -> share in (0, 1].
    Raises ValueError saying what is accepted."""
    text = value.strip().lower()
    if text == "all":
        return 1.0
    if text == "none":
        return 0.0
    if text.startswith("sample:"):
        raw = text[len("sample:") :]
        try:
            share = float(raw)
        except ValueError:
            share = _NAN
        if 0.0 < share <= 1.0:
            return share
        raise ValueError(f"decisions: sample share must be a number in (0, 1], got {raw!r}")
    raise ValueError(f"decisions must be 'all', 'none' or 'sample:<share>' (share in (0, 1]), got {value!r}")
