"""Registers the lifecycle policies; `policies.builtin` may call `register` (never an import side effect).

kind             name                builds
restart-backoff  crashloop           RestartBackoff  (Kubernetes CrashLoopBackOff: 10 s doubling to 300 s)
model-startup    storage-bandwidth   StartupModel    (per-scheme download speeds, load and readiness-test times)

The state machine (`Lifecycle`) and `validate_deployment` are not policies (there is one correct table and one
set of checks), so they are not registered.
"""

from __future__ import annotations

from policies.lifecycle.states import RestartBackoff, RestartBackoffParams
from policies.lifecycle.storage import StartupModel, StartupParams
from policies.registry import Registry

BACKOFF_KIND = "restart-backoff"
STARTUP_KIND = "model-startup"
KINDS = (BACKOFF_KIND, STARTUP_KIND)


def register(reg: Registry) -> None:
    reg.register(BACKOFF_KIND, "crashloop", RestartBackoff.from_params, RestartBackoffParams)
    reg.register(STARTUP_KIND, "storage-bandwidth", StartupModel.from_params, StartupParams)
