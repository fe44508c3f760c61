"""The `gateway.resilience` section: validation at load time and fresh objects from build_*."""

from __future__ import annotations

import numpy as np
import pytest
import yaml

from policies.resilience import CircuitBreaker, LadderRetry, OutlierDetector
from policies.resilience.config import ResilienceConfig, build_breaker, build_outlier_detector, build_retry

YAML = """
breaker:
  type: consecutive-failures
  params: {failure_threshold: 3, cooldown_s: 10}
outlier_detection:
  type: envoy
  params: {consecutive_5xx: 4, max_ejection_percent: 50}
retry:
  type: ladder
  params: {budget_percent: 25, min_retry_concurrency: 2, fallback_after: 3}
"""


def test_full_section_builds_configured_objects() -> None:
    cfg = ResilienceConfig.model_validate(yaml.safe_load(YAML))
    rng = np.random.default_rng(0)
    b1, b2 = build_breaker(cfg, rng), build_breaker(cfg, rng)
    assert isinstance(b1, CircuitBreaker) and b1 is not b2
    assert (b1.failure_threshold, b1.base_cooldown_s) == (3, 10.0)
    od = build_outlier_detector(cfg, rng)
    assert isinstance(od, OutlierDetector)
    assert (od.params.consecutive_5xx, od.params.max_ejection_percent) == (4, 50.0)
    retry = build_retry(cfg, rng)
    assert isinstance(retry, LadderRetry)
    assert retry.budget.max_retries_in_flight(40, 0) == 10 and retry.ladder.fallback_after == 3


def test_absent_sections_are_off() -> None:
    rng = np.random.default_rng(0)
    for cfg in (None, {}, ResilienceConfig()):
        assert build_breaker(cfg, rng) is None
        assert build_outlier_detector(cfg, rng) is None
        assert build_retry(cfg, rng) is None
    assert isinstance(build_breaker({"breaker": {"type": "consecutive-failures"}}, rng), CircuitBreaker)


@pytest.mark.parametrize(
    ("raw", "needle"),
    [
        ({"breaker": {"type": "sliding-window"}}, "unknown circuit-breaker 'sliding-window'"),
        ({"breaker": {"type": "consecutive-failures", "params": {"cooldown": 3}}}, "cooldown"),
        ({"outlier_detection": {"type": "envoy", "params": {"interval_s": 0}}}, "interval_s"),
        ({"retry": {"type": "envoy-budget", "params": {"max_retries": -1}}}, "max_retries"),
        ({"retries": {}}, "retries"),
        ({"retry": {"params": {}}}, "type"),
    ],
)
def test_mistakes_fail_at_load_naming_the_field(raw: dict, needle: str) -> None:
    with pytest.raises(ValueError, match=needle):
        ResilienceConfig.model_validate(raw)


def test_config_is_frozen() -> None:
    cfg = ResilienceConfig()
    with pytest.raises(ValueError):
        cfg.breaker = None  # type: ignore[misc]


def test_registers_coexist_with_the_builtin_policies(monkeypatch: pytest.MonkeyPatch) -> None:
    import policies.builtin as builtin
    from policies.caching import config as cache_config
    from policies.resilience import config as res_config

    reg = builtin.build_default_registry()
    assert reg.names("retry") == ["envoy-budget", "ladder"]
    assert reg.names("circuit-breaker") == ["consecutive-failures"]
    assert reg.names("outlier-detection") == ["envoy"]
    assert reg.names("response-cache") == ["none", "tiered"]
    monkeypatch.setattr(builtin, "REGISTRY", reg)
    assert res_config.default_registry() is reg
    assert cache_config.default_registry() is reg
