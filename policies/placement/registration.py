"""Registers the placement policies (kind "placement"); `policies.builtin` may call `register`.

kind       name                  builds
placement  first-fit-decreasing  FirstFitDecreasing  (default)
placement  best-fit              BestFit
"""

from __future__ import annotations

from policies.placement.binpack import PLACERS
from policies.registry import Registry

PLACEMENT_KIND = "placement"


def register(reg: Registry) -> None:
    for cls in PLACERS:
        reg.register(PLACEMENT_KIND, cls.TYPE, cls.from_params, cls.Params)
