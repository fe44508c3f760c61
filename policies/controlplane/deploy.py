"""The deploy verdict: may this model be deployed on this engine, and if not, why (one reason string).

The engines gather the facts (the catalogue's memory check lives with the scenario's `ModelDeployment`, which
knows the catalogue; the live engine adds what only it needs: a `live:` section saying which torch model to run,
and devices to run it on); the rule that turns them into a verdict is here, once.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from policies.lifecycle.validation import Verdict


@dataclass(frozen=True, slots=True)
class DeployFacts:
    """model_approved / model_reason: the scenario's own check (weights + KV fit the GPUs at this tp x pp).
    has_live_section and device_kinds matter only on the live engine; devices_per_replica is tp x pp."""

    name: str
    engine: Literal["sim", "live"]
    model_approved: bool
    model_reason: str
    has_live_section: bool = False
    device_kinds: tuple[str, ...] = ()
    devices_per_replica: int = 1
    device_count: int = 0


def deploy_verdict(f: DeployFacts) -> Verdict:
    """Approved with the scenario's reason, or rejected with the first reason that stops it."""
    if f.engine == "live":
        if not f.has_live_section:
            return Verdict(False, "rejected: no `live:` section (the torch model its replicas run)", ("live",))
        if f.device_count and f.devices_per_replica > f.device_count:
            reason = (
                f"rejected: a replica needs {f.devices_per_replica} devices (tp x pp) but live.devices declares "
                f"{f.device_count} ({', '.join(f.device_kinds)})"
            )
            return Verdict(False, reason, ("devices",))
    if not f.model_approved:
        return Verdict(False, f.model_reason, (f.model_reason,))
    return Verdict(True, f.model_reason)
