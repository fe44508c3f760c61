"""The scenario's `gateway.response_cache` section and `build_response_cache`.

    gateway:
      response_cache:
        type: tiered            # or: none
        share_across_tenants: false   # default: each tenant has its own entries (true: one tenant's answer serves all)
        params:                 # TieredCacheParams; every key optional
          local_max_entries: 10000
          local_max_bytes: 268435456
          ttl_s: 300
          shared: true

The type and its params are validated when the configuration is loaded, so a typo fails at load time. Entries are
scoped per tenant by default: a shared entry would hand tenant B tenant A's answer and tell B, through the hit, that
someone sent the same prompt. `share_across_tenants: true` trades that isolation for hit rate, explicitly.
"""

from __future__ import annotations

from typing import Annotated, Any, cast

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from policies.caching.registration import KIND
from policies.caching.response_cache import NullResponseCache, TieredResponseCache
from policies.registry import Registry


def default_registry() -> Registry:
    """The one built-in registry (imported late: policies.builtin imports this package's registration)."""
    from policies.builtin import REGISTRY

    return REGISTRY


class ResponseCacheConfig(BaseModel):
    """`type` names a registered response-cache policy; `params` are validated by that policy's model."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    type: Annotated[str, Field(min_length=1)] = "tiered"
    params: dict[str, Any] = Field(default_factory=dict)
    share_across_tenants: bool = False

    @model_validator(mode="after")
    def _check(self) -> ResponseCacheConfig:
        default_registry().validate(KIND, self.type, self.params)
        return self


def build_response_cache(
    config: ResponseCacheConfig | dict[str, Any] | None,
    rng: np.random.Generator,
    registry: Registry | None = None,
) -> TieredResponseCache | NullResponseCache:
    """A fresh cache as configured; no section (None) means caching off."""
    if config is None:
        return NullResponseCache()
    cfg = config if isinstance(config, ResponseCacheConfig) else ResponseCacheConfig.model_validate(config)
    reg = registry if registry is not None else default_registry()
    cache = cast(TieredResponseCache | NullResponseCache, reg.build(KIND, cfg.type, cfg.params, rng))
    cache.share_across_tenants = cfg.share_across_tenants
    return cache
