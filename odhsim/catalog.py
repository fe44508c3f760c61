"""GPU and model catalogues (odhsim/data/*.yaml) and the memory arithmetic that decides what fits where.

Names are looked up case-insensitively (``h100-80gb`` -> ``H100-80GB``, Splitwise's ``a100-80gb`` included);
unknown names raise :class:`CatalogError` listing the known ones, so a typo in a scenario is a one-line fix.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Annotated, Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from odhsim.errors import CatalogError

DATA_DIR = Path(__file__).parent / "data"
GIB = 2**30

Pos = Annotated[float, Field(gt=0)]
PosInt = Annotated[int, Field(gt=0)]


class _Spec(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class GpuSpec(_Spec):
    """One GPU type. Throughput and bandwidth are vendor peaks; the roofline applies calibrated efficiencies."""

    name: str
    aliases: tuple[str, ...] = ()
    memory_gb: Pos
    bf16_tflops: Pos
    mem_bw_gb_s: Pos
    interconnect: str
    interconnect_gb_s: Pos
    tdp_w: Pos
    idle_w: Pos
    prefill_w: Pos
    decode_w: Pos
    price_per_gpu_hour: Pos
    price_source: Annotated[str, Field(min_length=1)]
    spec_source: Annotated[str, Field(min_length=1)]
    power_source: Annotated[str, Field(min_length=1)]

    @property
    def memory_bytes(self) -> int:
        return int(self.memory_gb * GIB)

    @property
    def peak_flops(self) -> float:
        return self.bf16_tflops * 1e12

    @property
    def mem_bw_bytes_s(self) -> float:
        return self.mem_bw_gb_s * 1e9

    @property
    def interconnect_bytes_s(self) -> float:
        return self.interconnect_gb_s * 1e9


class ModelSpec(_Spec):
    """One LLM's architecture: enough to size its weights and KV cache and to count its FLOPs."""

    name: str
    hf_id: str = ""
    params_b: Pos
    layers: PosInt
    hidden_size: PosInt
    num_heads: PosInt
    num_kv_heads: PosInt
    head_dim: PosInt
    vocab_size: PosInt
    max_context: PosInt
    dtype_bytes: PosInt = 2

    @property
    def params(self) -> float:
        return self.params_b * 1e9

    @property
    def weight_bytes(self) -> int:
        return round(self.params * self.dtype_bytes)

    @property
    def kv_bytes_per_token(self) -> int:
        """K and V, every layer, every KV head: what one cached token costs in GPU memory."""
        return 2 * self.layers * self.num_kv_heads * self.head_dim * self.dtype_bytes


def _norm(name: str) -> str:
    return name.strip().lower().replace("_", "-").replace(" ", "-")


def _load(file: str, cls: type[_Spec]) -> dict[str, Any]:
    path = DATA_DIR / file
    raw = yaml.safe_load(path.read_text())
    specs: dict[str, Any] = {}
    for name, fields in raw.items():
        try:
            specs[name] = cls(name=name, **fields)
        except ValidationError as err:
            raise CatalogError(f"{path}: entry '{name}' is invalid: {err}") from None
    return specs


def _index(specs: dict[str, Any], extra_names: Any) -> dict[str, Any]:
    index: dict[str, Any] = {}
    for name, spec in specs.items():
        for key in (name, *extra_names(spec)):
            index[_norm(key)] = spec
    return index


@functools.cache
def _gpus() -> tuple[dict[str, GpuSpec], dict[str, GpuSpec]]:
    specs = _load("gpus.yaml", GpuSpec)
    return specs, _index(specs, lambda s: s.aliases)


@functools.cache
def _models() -> tuple[dict[str, ModelSpec], dict[str, ModelSpec]]:
    specs = _load("models.yaml", ModelSpec)

    def extra(s: ModelSpec) -> tuple[str, ...]:
        return (s.hf_id, s.hf_id.rsplit("/", 1)[-1]) if s.hf_id else ()

    return specs, _index(specs, extra)


def gpu_names() -> list[str]:
    return list(_gpus()[0])


def model_names() -> list[str]:
    return list(_models()[0])


def gpu(name: str | GpuSpec) -> GpuSpec:
    """The GPU called `name` (case-insensitive, aliases accepted)."""
    if isinstance(name, GpuSpec):
        return name
    spec = _gpus()[1].get(_norm(name))
    if spec is None:
        raise CatalogError(f"unknown GPU type '{name}'; known: {', '.join(gpu_names())}")
    return spec


def model(name: str | ModelSpec) -> ModelSpec:
    """The model called `name` (case-insensitive; its Hugging Face id is accepted too)."""
    if isinstance(name, ModelSpec):
        return name
    spec = _models()[1].get(_norm(name))
    if spec is None:
        raise CatalogError(f"unknown model '{name}'; known: {', '.join(model_names())}")
    return spec


def kv_cache_capacity_tokens(
    model_name: str | ModelSpec,
    gpu_name: str | GpuSpec,
    tp: int,
    gpu_memory_utilization: float = 0.9,
    overhead_gb: float = 1.0,
    pp: int = 1,
) -> int:
    """Tokens of KV cache left on a replica's GPUs after weights and runtime overhead, as vLLM sizes its block pool.

    One stage of `tp` GPUs: capacity = (memory * tp * utilization - weights - overhead_gb * tp) / kv_bytes_per_token,
    floored, >= 0. `overhead_gb` (GiB per GPU) stands for the CUDA context, activations and CUDA graphs. KV heads
    are assumed to shard evenly over the TP ranks (true for every catalogued model at tp <= 8).

    With `pp` pipeline stages (one node each) the layers are split as evenly as they go, so the fullest stage holds
    ceil(layers / pp) of them: that share of the weights and of every token's KV. A token's KV lives on every
    stage, so the replica holds as many tokens as that fullest stage has room for.
    """
    if tp < 1:
        raise ValueError(f"tp must be >= 1, got {tp}")
    if pp < 1:
        raise ValueError(f"pp must be >= 1, got {pp}")
    if not 0.0 < gpu_memory_utilization <= 1.0:
        raise ValueError(f"gpu_memory_utilization must be in (0, 1], got {gpu_memory_utilization}")
    m, g = model(model_name), gpu(gpu_name)
    if pp > m.layers:
        raise ValueError(f"pp={pp} exceeds {m.name}'s {m.layers} layers")
    if pp == 1:
        free = g.memory_bytes * tp * gpu_memory_utilization - m.weight_bytes - overhead_gb * GIB * tp
        return max(0, int(free // m.kv_bytes_per_token))
    share = -(-m.layers // pp) / m.layers
    free = g.memory_bytes * tp * gpu_memory_utilization - m.weight_bytes * share - overhead_gb * GIB * tp
    return max(0, int(free // (m.kv_bytes_per_token * share)))


def fits(
    model_name: str | ModelSpec,
    gpu_name: str | GpuSpec,
    tp: int,
    gpu_memory_utilization: float = 0.9,
    min_kv_tokens: int | None = None,
    pp: int = 1,
) -> bool:
    """Whether the weights fit on `tp` GPUs (per stage, `pp` stages) with room for `min_kv_tokens` of KV cache.

    By default that room is one full-length sequence (model.max_context), the check vLLM makes at start-up. With
    pipeline stages the simulator serves a replica as vLLM V0 does, with `pp` virtual engines that split the KV
    blocks evenly (odhsim.sim.pipeline_replica), so each engine's 1/pp share must hold that sequence.
    """
    m = model(model_name)
    need = m.max_context if min_kv_tokens is None else min_kv_tokens
    capacity = kv_cache_capacity_tokens(m, gpu_name, tp, gpu_memory_utilization, pp=pp)
    return capacity > 0 and capacity // pp >= need
