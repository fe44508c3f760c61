"""The `faults:` section: each kind's fields checked, targets checked against the scenario, one seeded schedule."""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import numpy as np
import pytest
import yaml
from pydantic import ValidationError

from odhsim.errors import OdhsimError
from odhsim.scenario.faults import Distribution, FaultSpec, draw, fault_windows
from odhsim.scenario.load import load_scenario

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"kind": "error_rate", "model": "m", "at_s": 1}, "error_rate needs `share`"),
        ({"kind": "error_rate", "model": "m", "at_s": 1, "share": 0.5, "factor": 2}, "`factor` is for slow_replica"),
        ({"kind": "slow_replica", "model": "m", "at_s": 1}, "slow_replica needs `factor`"),
        ({"kind": "replica_crash", "model": "m"}, "exactly one of `at_s`"),
        ({"kind": "replica_crash", "model": "m", "at_s": 1, "time_to_failure": {"mean_s": 5}}, "exactly one"),
        ({"kind": "replica_crash", "model": "m", "at_s": 1, "duration_s": 5}, "a crash is an instant"),
        ({"kind": "replica_crash", "at_s": 1}, "name the `model`"),
        ({"kind": "network", "model": "m", "at_s": 1}, "`latency_s`/`jitter_s` or `partition: true`"),
        ({"kind": "cache_down", "at_s": 1, "latency_s": 0.1}, "are for network"),
        ({"kind": "cache_down", "model": "m", "at_s": 1}, "drop `model`"),
        ({"kind": "node_failure", "model": "m", "at_s": 1}, "hits a node"),
        ({"kind": "stale_metrics", "model": "m", "time_to_failure": {"mean_s": 9}}, "needs `repair_time`"),
        ({"kind": "load_oom", "model": "m", "at_s": 1, "replica": 0}, "`replica` is for"),
        ({"kind": "load_oom", "model": "m", "at_s": 1, "status": 500}, "`status` is for error_rate"),
        ({"kind": "error_rate", "model": "m", "at_s": 1, "share": 1.5}, "less than or equal to 1"),
    ],
)
def test_each_kind_refuses_fields_that_do_not_apply(spec: dict, message: str) -> None:
    with pytest.raises(ValidationError, match=message.replace("`", ".").replace("/", ".")):
        FaultSpec.model_validate(spec)


def _scenario_with(tmp_path: Path, faults: list[dict]) -> Path:
    raw = yaml.safe_load((ROOT / "scenarios" / "default.yaml").read_text())
    raw["faults"] = faults
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_targets_must_exist_in_the_scenario(tmp_path: Path) -> None:
    model = yaml.safe_load((ROOT / "scenarios" / "default.yaml").read_text())["models"][0]["name"]
    ok = _scenario_with(tmp_path, [{"kind": "replica_crash", "model": model, "at_s": 5}])
    assert load_scenario(ok).faults[0].model == model
    for fault, message in [
        ({"kind": "replica_crash", "model": "nope", "at_s": 5}, "model 'nope' is not in the scenario"),
        ({"kind": "node_failure", "pool": "B200", "at_s": 5}, "pool 'B200' is not in gpu_pool"),
        ({"kind": "node_failure", "node": 99, "at_s": 5}, "nodes"),
    ]:
        with pytest.raises(OdhsimError, match=message):
            load_scenario(_scenario_with(tmp_path, [fault]))


def test_timed_windows() -> None:
    rng = np.random.default_rng(0)
    crash = FaultSpec(kind="replica_crash", model="m", at_s=7.0)
    slow = FaultSpec(kind="slow_replica", model="m", at_s=3.0, duration_s=4.0, factor=2.0)
    forever = FaultSpec(kind="cache_down", at_s=3.0)
    assert list(fault_windows(crash, rng)) == [(7.0, 7.0)]
    assert list(fault_windows(slow, rng)) == [(3.0, 7.0)]
    assert list(fault_windows(forever, rng)) == [(3.0, math.inf)]


def test_random_windows_are_seeded_ordered_and_have_the_stated_means() -> None:
    spec = FaultSpec(
        kind="slow_replica",
        model="m",
        factor=2.0,
        time_to_failure={"dist": "weibull", "mean_s": 100.0, "shape": 1.5},
        repair_time={"mean_s": 10.0},
    )
    first = list(itertools.islice(fault_windows(spec, np.random.default_rng(1)), 4000))
    again = list(itertools.islice(fault_windows(spec, np.random.default_rng(1)), 4000))
    other = list(itertools.islice(fault_windows(spec, np.random.default_rng(2)), 4000))
    assert first == again and first != other
    starts = np.array([s for s, _ in first])
    ends = np.array([e for _, e in first])
    assert np.all(ends > starts) and np.all(starts[1:] > ends[:-1])  # fail, repair, fail: never overlapping
    up = starts - np.concatenate([[0.0], ends[:-1]])
    # 4,000 draws: the sample mean is within 4 standard errors of the stated mean (Weibull k=1.5: cv 0.68)
    assert abs(up.mean() - 100.0) < 4 * 100.0 * 0.68 / math.sqrt(4000)
    assert abs((ends - starts).mean() - 10.0) < 4 * 10.0 / math.sqrt(4000)


def test_weibull_needs_shape_and_exponential_refuses_it() -> None:
    with pytest.raises(ValidationError, match="needs `shape`"):
        Distribution(dist="weibull", mean_s=1.0)
    with pytest.raises(ValidationError, match="for weibull only"):
        Distribution(dist="exponential", mean_s=1.0, shape=2.0)
    d = Distribution(dist="weibull", mean_s=50.0, shape=0.7)
    rng = np.random.default_rng(3)
    mean = np.mean([draw(d, rng) for _ in range(20000)])
    assert abs(mean - 50.0) / 50.0 < 0.05  # k=0.7: cv 1.46, 20,000 draws -> 4 standard errors ~ 4%
