"""What one replica process serves, passed to it as JSON on its command line (`--model-json`)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from odhsim.scenario.live import LiveModelSpec, TransportLimits

if TYPE_CHECKING:  # the scenario package pulls in policies/ and scipy; a replica process needs neither
    from odhsim.scenario.deployment import ModelDeployment


class ReplicaConfig(BaseModel):
    """The served model: name, version, kind, its live torch spec, the LM context, and where weights resolve.

    `max_model_len` (LM only) bounds prompt + max_tokens; default (None) is the LM's `max_seq_len`, and it may not
    exceed it (positions are learned up to `max_seq_len`)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    model: Annotated[str, Field(min_length=1)]
    version: str = "v1"
    kind: Literal["llm", "fixed"]
    spec: LiveModelSpec
    max_model_len: Annotated[int, Field(ge=2)] | None = None
    base_dir: str = "."
    transport: TransportLimits = TransportLimits()
    """The replica server's HTTP limits (the scenario's `live.transport`, as the gateway's)."""

    @model_validator(mode="after")
    def _consistent(self) -> ReplicaConfig:
        if (self.spec.architecture == "lm") != (self.kind == "llm"):
            raise ValueError(f"kind {self.kind!r} does not match the spec's architecture {self.spec.architecture!r}")
        if self.max_model_len is not None:
            if self.spec.lm is None:
                raise ValueError("max_model_len applies to an llm only")
            if self.max_model_len > self.spec.lm.max_seq_len:
                raise ValueError(
                    f"max_model_len {self.max_model_len} exceeds the LM's max_seq_len {self.spec.lm.max_seq_len}"
                )
        return self

    @property
    def context_len(self) -> int | None:
        """The LM's effective context (prompt + generated tokens, BOS included); None for a fixed model."""
        if self.spec.lm is None:
            return None
        return self.max_model_len or self.spec.lm.max_seq_len

    @classmethod
    def from_deployment(cls, m: ModelDeployment, base_dir: str | Path = ".") -> ReplicaConfig:
        """The config of a scenario model's replicas. `engine.max_model_len` (sized for the simulated profile) is
        capped at the tiny LM's `max_seq_len`."""
        if m.live is None:
            raise ValueError(f"model {m.name!r} has no `live:` section, so it has no replica to run")
        max_len = None
        if m.live.lm is not None and m.engine.max_model_len is not None:
            max_len = min(m.engine.max_model_len, m.live.lm.max_seq_len)
        return cls(
            model=m.name, version=m.version, kind=m.kind, spec=m.live, max_model_len=max_len, base_dir=str(base_dir)
        )
