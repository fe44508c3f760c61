"""Deployments: the GPU pool and the models served on it (engine limits, service times)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from odhsim import catalog
from odhsim.errors import CatalogError
from odhsim.scenario.live import LiveModelSpec
from policies.autoscaling.config import AutoscalerConfig
from policies.lifecycle.storage import UnknownStorageScheme, parse_storage_uri


class Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _canonical_gpu(name: str) -> str:
    try:
        return catalog.gpu(name).name
    except CatalogError as err:
        raise ValueError(str(err)) from None


class GpuPool(Frozen):
    """A set of identical GPUs; `gpus_per_node` bounds tensor parallelism (TP stays inside one node)."""

    gpu: str
    count: Annotated[int, Field(ge=1)]
    gpus_per_node: Annotated[int, Field(ge=1)] = 8
    model_cache_gb: Annotated[float, Field(ge=0.0)] = 0.0
    """Node-local model cache per node (KServe LocalModelCache): a model found there starts warm (no download)."""

    @field_validator("gpu")
    @classmethod
    def _gpu(cls, v: str) -> str:
        return _canonical_gpu(v)


class EngineLimits(Frozen):
    """vLLM-like engine limits (names follow vLLM's engine arguments)."""

    max_num_seqs: Annotated[int, Field(ge=1)] = 256
    max_num_batched_tokens: Annotated[int, Field(ge=16)] = 16384
    block_size: Annotated[int, Field(ge=1, le=1024)] = 16
    gpu_memory_utilization: Annotated[float, Field(gt=0.0, le=1.0)] = 0.9
    enable_prefix_caching: bool = True
    scheduler: Literal["chunked-prefill", "prefill-first"] = "chunked-prefill"
    """vLLM V1 (chunked-prefill): each step decodes every running request and fills the rest of the token budget
    with prompt chunks. vLLM V0 (prefill-first): whole prompts in prefill-only steps that pause decoding."""
    kv_offload_gb: Annotated[float, Field(ge=0.0)] = 0.0
    """Host memory per replica for offloaded prefix KV blocks (vLLM KV offloading / LMCache); 0 = GPU only."""
    kv_offload_bandwidth_gb_s: Annotated[float, Field(gt=0.0)] = 25.0
    """Host-to-GPU copy bandwidth for offloaded blocks (PCIe Gen4/Gen5 x16, effective)."""
    max_model_len: Annotated[int, Field(ge=16)] | None = None
    """Longest context a request may have (vLLM's max_model_len); default: the model's own maximum. The KV
    cache must hold at least one sequence of this length, and longer prompts are refused."""


class ServiceTime(Frozen):
    """Service time of a `fixed` model: exponential (memoryless), deterministic, lognormal or gamma."""

    dist: Literal["exponential", "deterministic", "lognormal", "gamma"] = "exponential"
    mean_s: Annotated[float, Field(gt=0.0)]
    cv: Annotated[float, Field(gt=0.0)] = 1.0


class ModelDeployment(Frozen):
    """One served model: an LLM (continuous batching) or a `fixed` model (concurrency slots)."""

    name: str
    version: str = "v1"
    kind: Literal["llm", "fixed"] = "llm"
    profile: str | None = None
    gpu: str
    tp: Annotated[int, Field(ge=1, le=64)] = 1
    replicas: Annotated[int, Field(ge=0)] = 1
    engine: EngineLimits = EngineLimits()
    concurrency: Annotated[int, Field(ge=1)] = 1
    service_time: ServiceTime | None = None
    fallback: str | None = None
    """Backup model (another model's name) that serves this one's requests when it has no replica."""
    autoscaling: AutoscalerConfig | None = None
    """How many replicas to run over time (KPA, the seed's rule, APA, Ray Serve, llm-d saturation); null: fixed."""
    drain_timeout_s: Annotated[float, Field(gt=0.0)] = 300.0
    """How long a replica being scaled away may finish its requests (Knative's default revision timeout);
    requests still held then fail with that reason."""
    storage_uri: str | None = None
    """Where the weights come from (s3://, gs://, pvc://, hf://, oci://, https://); default pvc://models/<profile>."""
    live: LiveModelSpec | None = None
    """The torch model `odhsim serve` runs for it (see odhsim.scenario.live); the simulator ignores it."""

    def deploy_verdict(self) -> tuple[bool, str]:
        """The controller's validation at deploy time: (approved, reason). A model whose weights plus one
        max_model_len sequence of KV cache do not fit its GPUs at this TP degree is rejected, with the numbers."""
        if self.kind != "llm" or self.profile is None:
            return True, f"approved: {self.replicas} x {self.kind} model on {self.gpu}"
        spec, gpu = catalog.model(self.profile), catalog.gpu(self.gpu)
        need = self.engine.max_model_len or spec.max_context
        if not catalog.fits(self.profile, self.gpu, self.tp, self.engine.gpu_memory_utilization, need):
            return False, (
                f"rejected: {spec.name} ({spec.weight_bytes / 2**30:.0f} GiB of weights) does not fit {self.tp} x "
                f"{gpu.name} ({gpu.memory_gb:g} GB each) with room for a KV cache of {need} tokens; "
                "raise tp or lower engine.max_model_len"
            )
        return True, f"approved: {self.replicas} x {spec.name} on {self.tp} x {gpu.name}"

    @field_validator("storage_uri")
    @classmethod
    def _known_scheme(cls, v: str | None) -> str | None:
        if v is not None:
            try:
                parse_storage_uri(v)
            except UnknownStorageScheme as err:
                raise ValueError(str(err)) from None
        return v

    @field_validator("gpu")
    @classmethod
    def _gpu(cls, v: str) -> str:
        return _canonical_gpu(v)

    @field_validator("profile")
    @classmethod
    def _known_profile(cls, v: str | None) -> str | None:
        if v is None:
            return v
        try:
            return catalog.model(v).name
        except CatalogError as err:
            raise ValueError(str(err)) from None

    @model_validator(mode="after")
    def _kind_fields(self) -> ModelDeployment:
        if self.kind == "llm":
            if self.profile is None:
                raise ValueError(f"model '{self.name}': an llm needs `profile` (one of {catalog.model_names()})")
            if self.service_time is not None:
                raise ValueError(f"model '{self.name}': `service_time` is for kind 'fixed', not 'llm'")
            spec = catalog.model(self.profile)
            if self.engine.max_model_len is not None and self.engine.max_model_len > spec.max_context:
                raise ValueError(
                    f"model '{self.name}': engine.max_model_len {self.engine.max_model_len} exceeds "
                    f"{spec.name}'s context of {spec.max_context}"
                )
        elif self.service_time is None:
            raise ValueError(f"model '{self.name}': a 'fixed' model needs `service_time`")
        if self.live is not None and (self.live.architecture == "lm") != (self.kind == "llm"):
            want = "live.lm" if self.kind == "llm" else "live.mlp or live.cnn"
            raise ValueError(f"model '{self.name}': a {self.kind!r} model needs {want}, not live.{self.live.architecture}")
        return self
