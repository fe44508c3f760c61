"""How a replica start fails under a deploy fault: which start-up phases it goes through, how long each lasts
before the failure, and whether its restart must download the weights again. Pure: both engines may read it.

Choices (each a fact of how KServe starts a predictor pod, or a stated assumption):
- download_failure: the storage-initializer (an init container) loses its transfer halfway through the download
  (`DOWNLOAD_FAILS_AT` of the scheme's download time: a dropped connection mid-transfer; a 403/404 would fail at
  once). The init container restarts with CrashLoopBackOff and downloads from zero again (no resume).
- download_timeout: the transfer stalls; the storage-initializer gives up after `timeout_s` from the download's
  start, then restarts the same way (from zero).
- load_oom: the weights load, then the engine runs out of GPU memory while allocating its KV cache (vLLM profiles
  memory after loading the weights), so it fails at the end of the load phase.
- readiness_failure: the engine loads and its readiness test fails at the end of the test.
The last two fail in the serving container: the weights stay on the node (the pod's volume), so the restart in
place is warm (load + test). A warm start (weights in the node cache) has no download, so download faults do not
touch it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from policies.lifecycle.states import DOWNLOADING, LOADING, TESTING
from policies.lifecycle.storage import StartupPlan

DOWNLOAD_FAILS_AT: Final = 0.5
"""A failed download fails after this share of its download time (see the module docstring)."""

START_FAULT_KINDS: Final = ("download_failure", "download_timeout", "readiness_failure", "load_oom")


@dataclass(frozen=True, slots=True)
class FailedStart:
    """phases: (state, seconds in it) in order, the failure at the end of the last; reason: what failed;
    redownload: the restart downloads again (the weights never reached the node)."""

    phases: tuple[tuple[str, float], ...]
    reason: str
    redownload: bool

    @property
    def total_s(self) -> float:
        return sum(s for _, s in self.phases)


def failed_start(plan: StartupPlan, kind: str, timeout_s: float = 600.0) -> FailedStart | None:
    """The start that `plan` describes under a deploy fault of `kind`, or None when the fault cannot touch it
    (a download fault on a warm start)."""
    if kind not in START_FAULT_KINDS:
        raise ValueError(f"unknown deploy fault kind {kind!r}; known: {', '.join(START_FAULT_KINDS)}")
    download = () if plan.warm else ((DOWNLOADING, plan.download_s),)
    if kind == "download_failure":
        if plan.warm:
            return None
        at = plan.download_s * DOWNLOAD_FAILS_AT
        return FailedStart(((DOWNLOADING, at),), f"storage download failed after {at:.1f} s", True)
    if kind == "download_timeout":
        if plan.warm:
            return None
        return FailedStart(((DOWNLOADING, timeout_s),), f"storage download timed out after {timeout_s:g} s", True)
    if kind == "load_oom":
        return FailedStart((*download, (LOADING, plan.load_s)), "out of GPU memory at load", False)
    return FailedStart((*download, (LOADING, plan.load_s), (TESTING, plan.test_s)), "readiness test failed", False)
