"""`gateway.router` accepts llm-d's EndpointPickerConfig as users write it: pasted, or `{file: epp.yaml}`.

The configs below are upstream's, verbatim (llm-d/llm-d-inference-scheduler at 520af47, now llm-d-router):
deploy/config/epp-config.yaml, deploy/config/sim-epp-config.yaml, deploy/config/epp-estimate-prefix-cache-config.yaml,
deploy/config/pd-epp-config.yaml, and the default plugins of config/charts/epplib/templates/_config.yaml (the same
weights as pkg/epp/config/loader/defaults.go loadDefaultConfig).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import yaml

from odhsim.errors import ScenarioError
from odhsim.scenario.load import load_scenario, scenario_from_dict
from odhsim.sim.run import simulate
from policies.builtin import REGISTRY
from policies.routing.config import RouterConfig, build_router
from policies.routing.epp_config import EppConfigError, go_duration_s, translate_epp
from policies.routing.framework import plugin_name

# llm-d-router 520af47: config/charts/epplib/templates/_config.yaml, default-plugins.yaml (latency predictor off;
# the data-layer plugins as the chart declares them).
UPSTREAM_DEFAULT = """
apiVersion: inference.networking.x-k8s.io/v1alpha1
kind: EndpointPickerConfig
plugins:
- type: queue-scorer
- type: kv-cache-utilization-scorer
- type: prefix-cache-scorer
- type: metrics-data-source
  parameters:
    scheme: "http"
    path: "/metrics"
    insecureSkipVerify: true
- type: core-metrics-extractor
schedulingProfiles:
- name: default
  plugins:
  - pluginRef: queue-scorer
    weight: 2
  - pluginRef: kv-cache-utilization-scorer
    weight: 2
  - pluginRef: prefix-cache-scorer
    weight: 3
"""

# llm-d-router 520af47: deploy/config/epp-config.yaml
DEPLOY_EPP_CONFIG = """
# Sample EPP configuration for running without P/D
#
apiVersion: llm-d.ai/v1alpha1
kind: EndpointPickerConfig
plugins:
- type: prefix-cache-scorer
- type: decode-filter
- type: max-score-picker
- type: single-profile-handler
schedulingProfiles:
- name: default
  plugins:
  - pluginRef: decode-filter
  - pluginRef: max-score-picker
  - pluginRef: prefix-cache-scorer
    weight: 2
"""

# llm-d-router 520af47: deploy/config/sim-epp-config.yaml
DEPLOY_SIM_EPP_CONFIG = """
apiVersion: llm-d.ai/v1alpha1
kind: EndpointPickerConfig
plugins:
- type: prefix-cache-scorer
  parameters:
    maxPrefixBlocksToMatch: 256
    lruCapacityPerServer: 31250
- type: decode-filter
- type: max-score-picker
- type: single-profile-handler
schedulingProfiles:
- name: default
  plugins:
  - pluginRef: decode-filter
  - pluginRef: max-score-picker
  - pluginRef: prefix-cache-scorer
    weight: 2
"""

# llm-d-router 520af47: deploy/config/epp-estimate-prefix-cache-config.yaml
DEPLOY_ESTIMATE_CONFIG = """
apiVersion: llm-d.ai/v1alpha1
kind: EndpointPickerConfig
plugins:
- type: single-profile-handler
- type: decode-filter
- type: prefix-cache-scorer
- type: load-aware-scorer
- type: max-score-picker
schedulingProfiles:
- name: default
  plugins:
  - pluginRef: decode-filter
  - pluginRef: prefix-cache-scorer
    weight: 1.0
  - pluginRef: load-aware-scorer
    weight: 1.0
  - pluginRef: max-score-picker
"""

# llm-d-inference-scheduler 0bb9fa8: deploy/config/pd-epp-config.yaml (two profiles, P/D)
DEPLOY_PD_CONFIG = """
apiVersion: inference.networking.x-k8s.io/v1alpha1
kind: EndpointPickerConfig
plugins:
- type: disagg-headers-handler
- type: prefix-cache-scorer
  parameters:
    maxPrefixBlocksToMatch: 256
    lruCapacityPerServer: 31250
- type: queue-scorer
- type: prefill-filter
- type: decode-filter
- type: max-score-picker
schedulingProfiles:
- name: prefill
  plugins:
  - pluginRef: prefill-filter
  - pluginRef: max-score-picker
  - pluginRef: prefix-cache-scorer
    weight: 2
- name: decode
  plugins:
  - pluginRef: decode-filter
  - pluginRef: max-score-picker
  - pluginRef: prefix-cache-scorer
    weight: 2
"""


def _shape(router: Any) -> tuple[list[tuple[str, str]], list[tuple[str, str, float]], tuple[str, str]]:
    """(filters, scorers with weights, picker) of a built router, by configured name and type."""
    filters = [(plugin_name(f), type(f).TYPE) for f in router.filters]
    scorers = [(plugin_name(s), type(s).TYPE, w) for s, w in router.scorers]
    return filters, scorers, (plugin_name(router.picker), type(router.picker).TYPE)


def _build(config: dict[str, Any]) -> Any:
    return build_router(RouterConfig.model_validate(config), np.random.default_rng(0))


def test_upstream_default_config_builds_the_llm_d_default_profile() -> None:
    pasted = _build(yaml.safe_load(UPSTREAM_DEFAULT))
    profile = _build({"profile": "llm-d-default"})
    assert _shape(pasted) == _shape(profile)
    assert _shape(pasted)[1] == [
        ("queue-scorer", "queue-scorer", 2.0),
        ("kv-cache-utilization-scorer", "kv-cache-utilization-scorer", 2.0),
        ("prefix-cache-scorer", "prefix-cache-scorer", 3.0),
    ]
    assert _shape(pasted)[2] == ("max-score-picker", "max-score-picker")  # upstream's injected default picker


def test_deploy_epp_config_equals_the_odhsim_long_form() -> None:
    odhsim_form = {
        "plugins": [
            {"name": "prefix-cache-scorer", "type": "prefix-cache-scorer"},
            {"name": "max-score-picker", "type": "max-score-picker"},
        ],
        "filters": [],
        "scorers": [{"plugin": "prefix-cache-scorer", "weight": 2}],
        "picker": "max-score-picker",
    }
    assert RouterConfig.model_validate(yaml.safe_load(DEPLOY_EPP_CONFIG)) == RouterConfig.model_validate(odhsim_form)
    filters, scorers, _ = _shape(_build(yaml.safe_load(DEPLOY_EPP_CONFIG)))
    assert filters == []  # decode-filter keeps every endpoint: odhsim's replicas serve prefill and decode
    assert scorers == [("prefix-cache-scorer", "prefix-cache-scorer", 2.0)]


def test_camel_case_parameters_reach_the_odhsim_plugin() -> None:
    pasted = RouterConfig.model_validate(yaml.safe_load(DEPLOY_SIM_EPP_CONFIG))
    odhsim_form = {
        "plugins": [
            {
                "name": "prefix-cache-scorer",
                "type": "prefix-cache-scorer",
                "params": {"max_prefix_blocks_to_match": 256, "lru_capacity_per_endpoint": 31250},
            },
            {"name": "max-score-picker", "type": "max-score-picker"},
        ],
        "filters": [],
        "scorers": [{"plugin": "prefix-cache-scorer", "weight": 2}],
        "picker": "max-score-picker",
    }
    assert pasted == RouterConfig.model_validate(odhsim_form)  # lruCapacityPerServer -> lru_capacity_per_endpoint
    params = REGISTRY.validate("scorer", "prefix-cache-scorer", pasted.plugins[0].params)
    assert (params.lru_capacity_per_endpoint, params.max_prefix_blocks_to_match) == (31250, 256)
    (scorer, weight), *_ = _build(yaml.safe_load(DEPLOY_SIM_EPP_CONFIG)).scorers
    assert (type(scorer).TYPE, weight) == ("prefix-cache-scorer", 2.0)


def test_estimate_config_keeps_declared_picker_and_both_scorers() -> None:
    _, scorers, picker = _shape(_build(yaml.safe_load(DEPLOY_ESTIMATE_CONFIG)))
    assert scorers == [
        ("prefix-cache-scorer", "prefix-cache-scorer", 1.0),
        ("load-aware-scorer", "load-aware-scorer", 1.0),
    ]
    assert picker == ("max-score-picker", "max-score-picker")


def test_older_names_and_upstream_defaults() -> None:
    # llm-d-inference-scheduler's older spellings (deploy/config/epp-kvcache-load-config.yaml used `max-score`,
    # epp-prefix-cache-tracking-config.yaml `kv-cache-scorer`); a scorer without weight weighs 1; named plugins.
    cfg = {
        "apiVersion": "inference.networking.x-k8s.io/v1alpha1",
        "kind": "EndpointPickerConfig",
        "plugins": [
            {"type": "single-profile"},
            {"name": "kv", "type": "kv-cache-scorer"},
            {"name": "busy", "type": "active-request-scorer", "parameters": {"idleThreshold": 2, "maxBusyScore": 0.5}},
            {"name": "pick", "type": "max-score"},
        ],
        "schedulingProfiles": [
            {"name": "default", "plugins": [{"pluginRef": "kv", "weight": 2.5}, {"pluginRef": "busy"}]},
        ],
    }
    router = _build(cfg)
    assert _shape(router)[1] == [
        ("kv", "kv-cache-utilization-scorer", 2.5),
        ("busy", "active-request-scorer", 1.0),
    ]
    assert _shape(router)[2] == ("pick", "max-score-picker")
    busy = router.scorers[1][0]
    assert (busy.idle_threshold, busy.max_busy_score) == (2, 0.5)


def test_no_profile_means_every_scheduling_plugin_with_weight_one() -> None:
    cfg = {"kind": "EndpointPickerConfig", "plugins": [{"type": "queue-scorer"}, {"type": "random-picker"}]}
    assert _shape(_build(cfg))[1:] == ([("queue-scorer", "queue-scorer", 1.0)], ("random-picker", "random-picker"))


def test_affinity_filter_ms_parameter_becomes_seconds() -> None:
    cfg = {
        "kind": "EndpointPickerConfig",
        "plugins": [
            {"type": "prefix-cache-scorer"},
            {
                "type": "prefix-cache-affinity-filter",
                "parameters": {"affinityThreshold": 0.9, "maxTTFTPenaltyMs": 2500},
            },
        ],
        "schedulingProfiles": [
            {
                "name": "d",
                "plugins": [{"pluginRef": "prefix-cache-affinity-filter"}, {"pluginRef": "prefix-cache-scorer"}],
            }
        ],
    }
    params = translate_epp(cfg).router["plugins"][1]["params"]
    assert params == {"affinity_threshold": 0.9, "max_ttft_penalty_s": 2.5}
    assert _shape(_build(cfg))[0] == [("prefix-cache-affinity-filter", "prefix-cache-affinity-filter")]


MISTAKES: list[tuple[Any, str]] = [
    (
        lambda c: c["plugins"].append({"type": "no-such-scorer"}),
        "plugins[5].type: unknown plugin type 'no-such-scorer'; known: ",
    ),
    (
        lambda c: c["plugins"][2].update(parameters={"lruCapacity": 5}),
        "plugins[2].parameters.lruCapacity: unknown parameter of prefix-cache-scorer",
    ),
    (
        lambda c: c["plugins"][2].update(parameters={"blockSize": 0}),
        "plugins[2].parameters.blockSize: must be a positive integer",
    ),
    (
        lambda c: c["plugins"][2].update(parameters={"maxPrefixBlocksToMatch": 0}),
        "plugins[2].parameters: invalid params",
    ),
    (
        lambda c: c["schedulingProfiles"][0]["plugins"].append({"pluginRef": "nope"}),
        "schedulingProfiles[0].plugins[3].pluginRef: unknown plugin 'nope'; defined plugins: ",
    ),
    (
        lambda c: c["schedulingProfiles"][0]["plugins"][0].update(weight=-1),
        "schedulingProfiles[0].plugins[0].weight: must be a number >= 0",
    ),
    (lambda c: c.update(apiVersion="v9"), "apiVersion: 'v9' is not an EndpointPickerConfig version"),
    (lambda c: c["plugins"].append({"type": "precise-prefix-cache-scorer"}), "KV-cache events"),
    (lambda c: c.update(flowControl={}), "flowControl: not supported in gateway.router (set odhsim's"),
]


@pytest.mark.parametrize(("mutate", "needle"), MISTAKES)
def test_mistakes_name_the_field_and_list_what_is_known(mutate: Any, needle: str) -> None:
    cfg = yaml.safe_load(UPSTREAM_DEFAULT)
    mutate(cfg)
    with pytest.raises(EppConfigError) as err:
        translate_epp(cfg)
    assert needle in str(err.value)
    if "unknown parameter" in needle:
        known = str(err.value).split("known: ", 1)[1].split(", ")
        assert {"lruCapacityPerServer", "maxPrefixBlocksToMatch", "salt"} <= set(known)


def test_two_profiles_p_d_is_refused_with_the_reason() -> None:
    with pytest.raises(EppConfigError, match="prefill/decode disaggregation, which odhsim's engine does not model"):
        translate_epp(yaml.safe_load(DEPLOY_PD_CONFIG))
    two = yaml.safe_load(DEPLOY_EPP_CONFIG)
    two["schedulingProfiles"].append({"name": "other", "plugins": [{"pluginRef": "prefix-cache-scorer"}]})
    with pytest.raises(EppConfigError, match=r"schedulingProfiles: 2 profiles \(default, other\)"):
        translate_epp(two)


def test_go_durations() -> None:
    assert go_duration_s("1m30s", "x") == 90.0
    assert go_duration_s("250ms", "x") == 0.25
    with pytest.raises(EppConfigError, match="x: '2 minutes' is not a duration"):
        go_duration_s("2 minutes", "x")


def _scenario(router: Any) -> dict[str, Any]:
    return {
        "name": "epp",
        "seed": 5,
        "gpu_pool": [{"gpu": "A100-80GB", "count": 4}],
        "models": [{"name": "chat", "profile": "llama3-8b", "gpu": "A100-80GB", "replicas": 4}],
        "gateway": {"router": router},
        "workload": {
            "sources": [
                {
                    "kind": "gamma",
                    "rate": 12.0,
                    "cv": 2.0,
                    "duration_s": 120,
                    "prompt_tokens": {"dist": "lognormal", "median": 900, "sigma": 0.8, "max": 6000},
                    "output_tokens": {"dist": "lognormal", "median": 100, "sigma": 0.8, "max": 800},
                }
            ],
            "tenants": {"a": 0.5, "b": 0.3, "c": 0.2},
            "sessions": {"continue_prob": 0.6},
            "prefix": {"system_blocks": 16},
        },
    }


def test_pasted_upstream_default_simulates_bit_identically_to_the_odhsim_profile() -> None:
    pasted = simulate(scenario_from_dict(_scenario(yaml.safe_load(UPSTREAM_DEFAULT))))
    profile = simulate(scenario_from_dict(_scenario({"profile": "llm-d-default"})))
    rr = simulate(scenario_from_dict(_scenario({"profile": "round-robin"})))
    pd.testing.assert_frame_equal(pasted.requests.drop(columns="run_id"), profile.requests.drop(columns="run_id"))
    assert pasted.summary["prefix_cache_hit_rate"] == profile.summary["prefix_cache_hit_rate"]
    # the comparison can fail: another router places requests differently
    assert not rr.requests["replica"].equals(profile.requests["replica"])


def test_router_file_is_read_relative_to_the_scenario_file(tmp_path: Path) -> None:
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "epp.yaml").write_text(DEPLOY_SIM_EPP_CONFIG)
    scenario = _scenario({"file": "configs/epp.yaml"})
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(scenario))
    sc = load_scenario(tmp_path / "s.yaml")
    assert sc.gateway.router == RouterConfig.model_validate(yaml.safe_load(DEPLOY_SIM_EPP_CONFIG))
    assert sc.gateway.router.scorers[0].weight == 2.0


def test_router_file_errors_name_the_file_and_line(tmp_path: Path) -> None:
    bad = DEPLOY_SIM_EPP_CONFIG.replace("lruCapacityPerServer", "lruCapacityPerPod")
    (tmp_path / "epp.yaml").write_text(bad)
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(_scenario({"file": "epp.yaml"})))
    with pytest.raises(ScenarioError) as err:
        load_scenario(tmp_path / "s.yaml")
    line = 1 + bad.splitlines().index("    lruCapacityPerPod: 31250")
    assert f"epp.yaml line {line}: plugins[0].parameters.lruCapacityPerPod: unknown parameter" in str(err.value)
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(_scenario({"file": "missing.yaml"})))
    with pytest.raises(ScenarioError, match=r"missing\.yaml: no such file"):
        load_scenario(tmp_path / "s.yaml")
