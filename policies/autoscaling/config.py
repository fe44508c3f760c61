"""The scenario's autoscaler section and `build_autoscaler`.

    autoscaler:
      type: kpa                 # kpa | seed-rule | aibrix-apa | ray-serve | llm-d-saturation
      params: {min_replicas: 0, max_replicas: 8, container_concurrency: 4}
      interval_s: 2.0           # decide() every 2 s (Knative's tick-interval)
      metrics_interval_s: 1.0   # observe() every 1 s (Knative's 1 s scrape / bucket)

`autoscaler: kpa` is short for `autoscaler: {type: kpa}`. The type and its params are checked at load time by the
policy's own params model (unknown keys are errors).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from policies.autoscaling.types import AUTOSCALER_KIND, Autoscaler
from policies.errors import PolicyConfigError
from policies.registry import Registry


def default_registry() -> Registry:
    """The one built-in registry (imported late: policies.builtin imports this package's registration)."""
    from policies.builtin import REGISTRY

    return REGISTRY


class AutoscalerConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    type: Annotated[str, Field(min_length=1)] = "kpa"
    params: dict[str, Any] = Field(default_factory=dict)
    interval_s: Annotated[float, Field(gt=0.0, allow_inf_nan=False)] = 2.0
    metrics_interval_s: Annotated[float, Field(gt=0.0, allow_inf_nan=False)] = 1.0

    @model_validator(mode="before")
    @classmethod
    def _type_shorthand(cls, v: Any) -> Any:
        return {"type": v} if isinstance(v, str) else v

    @model_validator(mode="after")
    def _known_policy(self) -> AutoscalerConfig:
        default_registry().validate(AUTOSCALER_KIND, self.type, self.params)
        return self


def build_autoscaler(
    config: AutoscalerConfig | Mapping[str, Any] | str | None,
    rng: np.random.Generator,
    registry: Registry | None = None,
) -> Autoscaler:
    """Validate the config and build its autoscaler with `rng` (no built-in autoscaler draws from it)."""
    if config is None:
        config = AutoscalerConfig()
    elif not isinstance(config, AutoscalerConfig):
        config = AutoscalerConfig.model_validate(config if isinstance(config, str) else dict(config))
    reg = registry if registry is not None else default_registry()
    try:
        built = reg.build(AUTOSCALER_KIND, config.type, config.params, rng)
    except PolicyConfigError as err:
        raise PolicyConfigError(f"autoscaler: {err}") from None
    return built  # type: ignore[return-value]
