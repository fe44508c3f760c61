"""The records and settings of anomaly detection (odhsim.explain.anomalies runs the detectors of
odhsim.explain.detectors over a run's tables): kinds, an episode, thresholds, the tables read."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from odhsim.workload.schema import PRIORITY_CLASSES

KINDS = (
    "priority_inversion",
    "head_of_line_blocking",
    "herding",
    "preemption_storm",
    "autoscaler_flapping",
    "cache_stampede",
    "replica_starved",
)


@dataclass(frozen=True)
class Anomaly:
    """One episode: `kind` (KINDS), the model and replica it happened on ("" when not one replica), its span
    [start_s, end_s], how many occurrences the episode groups (`count`), and what was seen (`detail`)."""

    kind: str
    model: str
    replica: str
    start_s: float
    end_s: float
    count: int
    detail: str


@dataclass(frozen=True)
class AnomalySettings:
    """Thresholds of the detectors (their docstrings say why each value).

    ttft_targets: per priority class (PRIORITY_CLASSES order) the TTFT target, None where the class has none.
    scrape_interval_s: how often the gateway scrapes replica metrics (herding windows are at least one tick).
    bucket_s: the timeseries bucket (preemption storms are judged per bucket)."""

    ttft_targets: tuple[float | None, ...] = (1.0, 3.0, 10.0, None)
    scrape_interval_s: float = 0.05
    bucket_s: float = 10.0
    episode_gap_s: float = 5.0
    hol_min_wait_s: float = 0.5
    hol_size_ratio: float = 4.0
    hol_min_blocked: int = 2
    hol_min_finishes: int = 2
    herding_min_window_s: float = 1.0
    herding_min_requests: int = 8
    herding_min_share: float = 0.75
    herding_p_value: float = 1e-4
    storm_min_rate_s: float = 1.0
    storm_per_completion: float = 0.5
    flap_window_s: float = 60.0
    stampede_min_concurrent: int = 3
    starve_min_s: float = 5.0
    starve_min_queue: int = 2
    starve_grid_s: float = 0.25

    @staticmethod
    def from_slos(slos: dict[str, dict[str, float | None]] | None, **kwargs: Any) -> AnomalySettings:
        """Settings whose TTFT targets are a summary's `slos` (the targets the run was held to)."""
        if not slos:
            return AnomalySettings(**kwargs)
        targets = tuple((slos.get(c) or {}).get("ttft_s") for c in PRIORITY_CLASSES)
        return AnomalySettings(ttft_targets=targets, **kwargs)

    @staticmethod
    def from_scenario(scenario: Any) -> AnomalySettings:
        """Settings from a scenario: its SLOs, scrape interval and timeseries bucket."""
        targets = tuple(scenario.slo_for(c).ttft_s for c in PRIORITY_CLASSES)
        return AnomalySettings(
            ttft_targets=targets,
            scrape_interval_s=float(scenario.gateway.scrape_interval_s),
            bucket_s=float(scenario.outputs.timeseries_bucket_s),
        )


@dataclass(frozen=True)
class RunTables:
    """What the detectors read. `cache_lookups`: columns time_s, key, hit, row (the request's row) per
    response-cache lookup, only known to the engine while it runs (None: not recorded, so stampedes cannot be
    looked for). Detection reads no decision records, so a run's results are the same whether it recorded them
    or not; `odhsim explain` adds what the decisions tell about an episode."""

    requests: pd.DataFrame
    events: pd.DataFrame
    timeseries: pd.DataFrame
    replicas: pd.DataFrame
    end_s: float
    cache_lookups: pd.DataFrame | None = None
    extra: dict[str, Any] = field(default_factory=dict)


Detector = Callable[[RunTables, AnomalySettings], list[Anomaly]]
