"""Warnings about a run that is legal but likely to mislead, added to `summary["warnings"]`.

Why: prefix-aware routing scores endpoints by the prompt's prefix blocks (Mooncake's hash_ids, or the synthetic
blocks of `workload.prefix`). On a workload without them every prefix score is zero: the prefix-aware profile
then routes by tie-break alone and looks worse than round robin, and llm-d-default's prefix weight does nothing.
The run is right; the comparison a user draws from it is not, so the summary says so.
"""

from __future__ import annotations

from odhsim.scenario.model import Scenario
from odhsim.workload.build import Workload
from policies.routing.config import RouterConfig

PREFIX_PLUGIN_TYPES = frozenset({"prefix-cache-scorer", "prefix-cache-affinity-filter", "aibrix-prefix-cache-picker"})
"""Routing plugins whose decision rests on the request's prefix blocks."""


def prefix_plugins(router: RouterConfig) -> list[str]:
    """Types of the prefix-dependent plugins the router actually uses (a scorer with weight 0 does not count)."""
    cfg = router.expanded()
    types = {p.name: p.type for p in cfg.plugins or ()}
    used = [*(cfg.filters or ()), *(s.plugin for s in cfg.scorers or () if s.weight > 0), cfg.picker or ""]
    return sorted({types[name] for name in used if types.get(name) in PREFIX_PLUGIN_TYPES})


def has_prefix_data(scenario: Scenario, workload: Workload) -> bool:
    """True when requests carry prefix blocks: synthetic ones (`workload.prefix`) or a trace's (Mooncake hash_ids)."""
    return scenario.workload.prefix is not None or any("blocks" in r.provides for r in workload.readers)


def run_warnings(scenario: Scenario, workload: Workload) -> list[str]:
    """What to tell the user about this run besides its numbers (one sentence each)."""
    out: list[str] = []
    plugins = prefix_plugins(scenario.gateway.router)
    serves_llm = any(m.kind == "llm" for m in scenario.models)
    if plugins and serves_llm and not has_prefix_data(scenario, workload):
        router = scenario.gateway.router.profile or "the configured router"
        out.append(
            f"routing uses prefix plugins ({', '.join(plugins)}) of {router}, but the workload carries no prefix "
            "blocks (no trace hash_ids, no workload.prefix): every prefix score is zero, so prefix-aware routing "
            "is not being tested and may look worse than round robin; add workload.prefix or use a trace with "
            "hash_ids (Mooncake)"
        )
    return out
