"""Shared test helpers: where the repository's public data lives, and small scenario builders."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
DATA_DIR = REPO_ROOT / "traces"
"""The public data the repository carries (traces, Splitwise's perf_model.csv, prices): see traces/README.md."""


def data_file(*parts: str) -> Path:
    """A committed data file under traces/; a missing one FAILS the test (every clone carries them, so never skip)."""
    path = DATA_DIR.joinpath(*parts)
    if not path.is_file():
        pytest.fail(f"committed data file missing: {path} (traces/README.md lists what the repository carries)")
    return path


def fixed_model_scenario(
    *,
    servers: int,
    rate: float,
    requests: int,
    mean_s: float = 1.0,
    limit: int | None = 1,
    profile: str = "least-request",
    seed: int = 1,
) -> dict[str, Any]:
    """An M/M/c (limit=1: central FCFS queue) or c x M/M/1 (limit=None, random routing) scenario."""
    return {
        "name": "queueing",
        "seed": seed,
        "gpu_pool": [{"gpu": "T4", "count": servers}],
        "models": [
            {
                "name": "clf",
                "kind": "fixed",
                "gpu": "T4",
                "replicas": servers,
                "concurrency": 1,
                "service_time": {"dist": "exponential", "mean_s": mean_s},
            }
        ],
        "gateway": {"max_in_flight_per_replica": limit, "router": {"profile": profile}},
        "workload": {
            "sources": [
                {
                    "kind": "poisson",
                    "rate": rate,
                    "requests": requests,
                    "prompt_tokens": {"dist": "fixed", "value": 1},
                    "output_tokens": {"dist": "fixed", "value": 1},
                }
            ]
        },
        "outputs": {"timeseries_bucket_s": 1.0},
    }
