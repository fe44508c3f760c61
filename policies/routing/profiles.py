"""Named routing profiles: shorthands for a long-form router configuration (`router: {profile: NAME}`).

Each is plain data in the same shape as the long form, so a profile and its spelled-out equivalent build the
same router.
"""

from __future__ import annotations

from typing import Any

from policies.errors import PolicyConfigError


def _single(picker: str, *scorers: tuple[str, float]) -> dict[str, Any]:
    plugins = [{"name": t, "type": t} for t, _ in scorers] + [{"name": picker, "type": picker}]
    return {
        "plugins": plugins,
        "filters": [],
        "scorers": [{"plugin": t, "weight": w} for t, w in scorers],
        "picker": picker,
    }


PROFILES: dict[str, dict[str, Any]] = {
    # llm-d's default: queue x2, KV-cache utilization x2, prefix cache x3, max score.
    "llm-d-default": _single(
        "max-score-picker",
        ("queue-scorer", 2.0),
        ("kv-cache-utilization-scorer", 2.0),
        ("prefix-cache-scorer", 3.0),
    ),
    "round-robin": _single("round-robin-picker"),
    "random": _single("random-picker"),
    # Fewest router-local in-flight requests (counted at dispatch), random tie-break.
    "least-request": _single("max-score-picker", ("active-request-scorer", 1.0)),
    # Sample two, take the one with fewer waiting + running (Ray Serve's default).
    "power-of-two": _single("power-of-two-picker"),
    # Least KV-cache utilization.
    "kv-aware": _single("max-score-picker", ("kv-cache-utilization-scorer", 1.0)),
    # Longest prefix-cache match only (no load term: hot prefixes pile onto one endpoint).
    "prefix-aware": _single("max-score-picker", ("prefix-cache-scorer", 1.0)),
    # Lowest EWMA of observed latency per endpoint; endpoints never observed first.
    "least-latency": _single("least-latency-picker"),
    # AIBrix's prefix-cache router: least-loaded only when in-flight counts differ by more than 8, else the best
    # prefix match among endpoints loaded at most mean + 1 std (the picker keeps its own prefix index).
    "aibrix-prefix-cache": {
        "plugins": [
            {"name": "aibrix-imbalance-filter", "type": "aibrix-imbalance-filter"},
            {"name": "aibrix-prefix-cache-picker", "type": "aibrix-prefix-cache-picker"},
        ],
        "filters": ["aibrix-imbalance-filter"],
        "scorers": [],
        "picker": "aibrix-prefix-cache-picker",
    },
}


def profile_names() -> list[str]:
    return sorted(PROFILES)


def profile_spec(name: str) -> dict[str, Any]:
    """The long-form configuration of a named profile (a fresh copy)."""
    spec = PROFILES.get(name)
    if spec is None:
        raise PolicyConfigError(f"unknown router profile '{name}'; known profiles: {', '.join(profile_names())}")
    return {
        "plugins": [dict(p) for p in spec["plugins"]],
        "filters": list(spec["filters"]),
        "scorers": [dict(s) for s in spec["scorers"]],
        "picker": spec["picker"],
    }
