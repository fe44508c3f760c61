"""A runnable scenario around imported models: a GPU pool that fits them and a placeholder workload."""

from __future__ import annotations

from typing import Any

from odhsim.importers.kserve_doc import KServeImport


def minimal_scenario(
    imports: list[KServeImport], *, rate: float = 1.0, duration_s: float = 300.0, name: str = "imported"
) -> dict[str, Any]:
    """A runnable scenario around imported models: a GPU pool that holds their largest scale-out and a Poisson
    workload (a placeholder to replace with the real traffic: `rate` requests/s shared evenly)."""
    pools: dict[str, dict[str, int]] = {}
    for imp in imports:
        m = imp.model
        per_replica = m.get("tp", 1) * m.get("pp", 1)
        most = max(m["replicas"], m.get("autoscaling", {}).get("params", {}).get("max_replicas", 0) or 8)
        if "autoscaling" not in m:
            most = m["replicas"]
        most += max(1, m["replicas"]) if "canary" in m else 0
        pool = pools.setdefault(m["gpu"], {"count": 0, "gpus_per_node": 8})
        pool["count"] += max(1, most) * per_replica
        pool["gpus_per_node"] = max(pool["gpus_per_node"], m.get("tp", 1))
    gateway: dict[str, Any] = {}
    for imp in imports:
        if "max_in_flight_per_replica" in imp.gateway:
            gateway["max_in_flight_per_replica"] = max(
                gateway.get("max_in_flight_per_replica", 0), imp.gateway["max_in_flight_per_replica"]
            )
    llm = any(imp.model["kind"] == "llm" for imp in imports)
    source: dict[str, Any] = {"kind": "poisson", "rate": rate, "duration_s": duration_s}
    if llm:
        source |= {
            "prompt_tokens": {"dist": "lognormal", "median": 800, "sigma": 0.8, "max": 8000},
            "output_tokens": {"dist": "lognormal", "median": 150, "sigma": 0.8, "max": 1000},
        }
    else:
        source |= {"prompt_tokens": {"dist": "fixed", "value": 1}, "output_tokens": {"dist": "fixed", "value": 1}}
    scenario: dict[str, Any] = {
        "name": name,
        "description": "imported from KServe InferenceService(s); the workload is a placeholder",
        "seed": 0,
        "duration_s": duration_s,
        "gpu_pool": [{"gpu": g, **p} for g, p in pools.items()],
        "models": [imp.model for imp in imports],
        "workload": {
            "sources": [source],
            "models": {imp.model["name"]: 1.0 for imp in imports},
        },
    }
    if gateway:
        scenario["gateway"] = gateway
    return scenario
