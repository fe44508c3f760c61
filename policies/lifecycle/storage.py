"""Where model weights come from and how long a replica takes to start: storageUri schemes, download and load
times, a per-node LRU model cache, and the start-up plan (cold: download + load + test; warm: load + test).

Default speeds (rough public figures; every one is a parameter, so a calibrated cluster overrides them):

scheme    bytes/s   latency  basis
s3://     2.0 GB/s  0.5 s    one S3 GET stream gives ~100-500 MB/s; AWS's S3 performance guidelines scale it with
                             parallel byte-range GETs (a parallel downloader) up to the NIC: 2 GB/s is ~16 Gb/s of a
                             25-100 Gb/s GPU node
gs://     2.0 GB/s  0.5 s    GCS: same per-stream and parallel behaviour as S3
pvc://    1.0 GB/s  0.1 s    a network volume (EBS gp3/io2, EFS, NFS, CephFS): ~250 MB/s - 1 GB/s; KServe mounts the
                             PVC, so this stands for the read over the network
hf://     0.2 GB/s  1.0 s    Hugging Face Hub download, ~100-200 MB/s per client (more with hf_transfer)
oci://    0.3 GB/s  2.0 s    a KServe modelcar: a container image pull (registry download + layer decompression,
                             ~100-500 MB/s)
https://  0.1 GB/s  0.5 s    one plain HTTP stream

Loading: weights go from the node (page cache / local NVMe) to the GPUs; each of the `tp` GPUs loads its own
1/tp shard in parallel at `host_to_gpu_bytes_per_s` (default 6 GB/s per GPU: a PCIe Gen4/Gen5 x16 link moves
25-50 GB/s, but safetensors loading from local disk in vLLM runs at a few GB/s per GPU), plus `engine_init_s`
(default 1 s: process start, KV-cache allocation; CUDA-graph capture is assumed off or cached, as the seed's
5-10 s warm start implies) and then the readiness test `readiness_test_s` (default 1 s: one /health probe that
succeeds as soon as the server is up; Kubernetes' own probe period, 10 s by default, would be added on top if
modelled).

With these defaults a 70B bf16 model (Llama-3-70B: 70.55e9 params x 2 bytes = 141.1 GB) at tensor parallelism 4
starts cold from s3:// in ~79 s (0.5 + 70.6 download + 1 + 5.9 load + 1 test) and warm (weights in the node
cache) in ~7.9 s, inside the seed's 60-90 s cold and 5-10 s warm. From pvc:// it takes ~149 s, from hf:// ~714 s
and from oci:// ~480 s cold: those are slower paths, not the seed's case.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Annotated

import numpy as np
from pydantic import Field

from policies.registry import PolicyParams

KNOWN_SCHEMES: tuple[str, ...] = ("s3", "gs", "pvc", "hf", "oci", "https")


class UnknownStorageScheme(ValueError):
    """A storageUri whose scheme KServe does not support here; the message lists the known schemes."""


@dataclass(frozen=True, slots=True)
class StorageUri:
    scheme: str
    path: str

    def __str__(self) -> str:
        return f"{self.scheme}://{self.path}"


def _known() -> str:
    return ", ".join(f"{s}://" for s in KNOWN_SCHEMES)


def parse_storage_uri(uri: str) -> StorageUri:
    """Split `scheme://path`; an unknown or missing scheme, or an empty path, is an error listing the known ones."""
    scheme, sep, path = uri.partition("://")
    if not sep:
        raise UnknownStorageScheme(f"storageUri '{uri}' has no scheme; known schemes: {_known()}")
    scheme = scheme.lower()
    if scheme not in KNOWN_SCHEMES:
        raise UnknownStorageScheme(f"unknown storage scheme '{scheme}://' in '{uri}'; known schemes: {_known()}")
    if not path:
        raise ValueError(f"storageUri '{uri}' has an empty path")
    return StorageUri(scheme, path)


def scheme_of(uri_or_scheme: str) -> str:
    """Accepts 's3', 's3://' or a full 's3://bucket/model' and returns 's3' (unknown: UnknownStorageScheme)."""
    if "://" in uri_or_scheme:
        head, _, rest = uri_or_scheme.partition("://")
        if not rest:
            uri_or_scheme = head
        else:
            return parse_storage_uri(uri_or_scheme).scheme
    scheme = uri_or_scheme.lower()
    if scheme not in KNOWN_SCHEMES:
        raise UnknownStorageScheme(f"unknown storage scheme '{uri_or_scheme}'; known schemes: {_known()}")
    return scheme


class SchemeSpeed(PolicyParams):
    """Sustained download bandwidth (bytes/s) and the fixed per-download latency (s) of one storage scheme."""

    bytes_per_s: Annotated[float, Field(gt=0.0)]
    latency_s: Annotated[float, Field(ge=0.0)] = 0.0


class StartupParams(PolicyParams):
    """`model-startup` / `storage-bandwidth`: per-scheme speeds and the load / readiness-test costs (module doc)."""

    s3: SchemeSpeed = SchemeSpeed(bytes_per_s=2.0e9, latency_s=0.5)
    gs: SchemeSpeed = SchemeSpeed(bytes_per_s=2.0e9, latency_s=0.5)
    pvc: SchemeSpeed = SchemeSpeed(bytes_per_s=1.0e9, latency_s=0.1)
    hf: SchemeSpeed = SchemeSpeed(bytes_per_s=0.2e9, latency_s=1.0)
    oci: SchemeSpeed = SchemeSpeed(bytes_per_s=0.3e9, latency_s=2.0)
    https: SchemeSpeed = SchemeSpeed(bytes_per_s=0.1e9, latency_s=0.5)
    host_to_gpu_bytes_per_s: Annotated[float, Field(gt=0.0)] = 6.0e9
    engine_init_s: Annotated[float, Field(ge=0.0)] = 1.0
    readiness_test_s: Annotated[float, Field(ge=0.0)] = 1.0

    def speed(self, scheme: str) -> SchemeSpeed:
        return getattr(self, scheme_of(scheme))


DEFAULT_STARTUP = StartupParams()


def download_time_s(size_bytes: float, scheme: str, params: StartupParams = DEFAULT_STARTUP) -> float:
    """latency + size / bandwidth of the scheme (`scheme` may be 's3' or a whole storageUri)."""
    if size_bytes < 0:
        raise ValueError("size_bytes must be >= 0")
    speed = params.speed(scheme)
    return speed.latency_s + size_bytes / speed.bytes_per_s


def load_time_s(size_bytes: float, host_to_gpu_bytes_per_s: float, tp: int = 1, engine_init_s: float = 0.0) -> float:
    """engine_init_s + (size / tp) / per-GPU bandwidth: the tp GPUs load their shards in parallel."""
    if size_bytes < 0:
        raise ValueError("size_bytes must be >= 0")
    if host_to_gpu_bytes_per_s <= 0:
        raise ValueError("host_to_gpu_bytes_per_s must be > 0")
    if tp < 1:
        raise ValueError("tp must be >= 1")
    return engine_init_s + size_bytes / tp / host_to_gpu_bytes_per_s


@dataclass(frozen=True, slots=True)
class StartupPlan:
    """How long each start-up phase takes; `states` is the path through the lifecycle after `pending`."""

    warm: bool
    download_s: float
    load_s: float
    test_s: float

    @property
    def total_s(self) -> float:
        return self.download_s + self.load_s + self.test_s

    @property
    def states(self) -> tuple[str, ...]:
        head = () if self.warm else ("downloading",)
        return (*head, "loading", "testing", "ready")


class StartupModel:
    """Start-up times from `StartupParams`: `plan(size, uri, tp, cached)` for a cold or a warm start."""

    __slots__ = ("params",)

    def __init__(self, params: StartupParams = DEFAULT_STARTUP) -> None:
        self.params = params

    @classmethod
    def from_params(cls, params: StartupParams, rng: np.random.Generator) -> StartupModel:
        return cls(params)

    def download_s(self, size_bytes: float, scheme: str) -> float:
        return download_time_s(size_bytes, scheme, self.params)

    def load_s(self, size_bytes: float, tp: int = 1) -> float:
        p = self.params
        return load_time_s(size_bytes, p.host_to_gpu_bytes_per_s, tp, p.engine_init_s)

    def plan(self, size_bytes: float, storage_uri: str, tp: int = 1, cached: bool = False) -> StartupPlan:
        """Cold (`cached=False`): download, load, test. Warm (the node cache has the model): load, test."""
        scheme = scheme_of(storage_uri)  # validated even when warm: a bad URI is a bad deployment
        download = 0.0 if cached else self.download_s(size_bytes, scheme)
        return StartupPlan(cached, download, self.load_s(size_bytes, tp), self.params.readiness_test_s)


@dataclass(frozen=True, slots=True)
class CacheAdd:
    """What `NodeModelCache.add` did: whether the model is now cached and which models it evicted (LRU first)."""

    stored: bool
    evicted: tuple[str, ...] = ()


class NodeModelCache:
    """One node's local model cache (KServe LocalModelCache / a hostPath of downloaded weights), LRU by use.

    `add` stores a model, evicting least-recently-used ones until it fits; a model larger than the whole cache is
    not stored (nothing is evicted for it). `touch` marks a use (a replica started from the cache).
    """

    __slots__ = ("_entries", "_last_used", "capacity_bytes")

    def __init__(self, capacity_bytes: float) -> None:
        if capacity_bytes < 0:
            raise ValueError("capacity_bytes must be >= 0")
        self.capacity_bytes = float(capacity_bytes)
        self._entries: OrderedDict[str, float] = OrderedDict()  # key -> size, least recently used first
        self._last_used: dict[str, float] = {}

    @property
    def used_bytes(self) -> float:
        return sum(self._entries.values())

    @property
    def free_bytes(self) -> float:
        return self.capacity_bytes - self.used_bytes

    def has(self, model_key: str) -> bool:
        return model_key in self._entries

    def __contains__(self, model_key: str) -> bool:
        return model_key in self._entries

    def keys(self) -> tuple[str, ...]:
        """Cached models, least recently used first."""
        return tuple(self._entries)

    def last_used(self, model_key: str) -> float | None:
        return self._last_used.get(model_key)

    def touch(self, now: float, model_key: str) -> bool:
        """Mark a use; False when the model is not cached."""
        if model_key not in self._entries:
            return False
        self._entries.move_to_end(model_key)
        self._last_used[model_key] = float(now)
        return True

    def add(self, now: float, model_key: str, size_bytes: float) -> CacheAdd:
        if size_bytes < 0:
            raise ValueError("size_bytes must be >= 0")
        if model_key in self._entries:
            self._entries.pop(model_key)  # re-added: its size may have changed
            self._last_used.pop(model_key, None)
            if size_bytes > self.capacity_bytes:
                return CacheAdd(False, (model_key,))
        elif size_bytes > self.capacity_bytes:
            return CacheAdd(False)
        evicted: list[str] = []
        while self.used_bytes + size_bytes > self.capacity_bytes and self._entries:
            key, _ = self._entries.popitem(last=False)
            self._last_used.pop(key, None)
            evicted.append(key)
        self._entries[model_key] = float(size_bytes)
        self._last_used[model_key] = float(now)
        return CacheAdd(True, tuple(evicted))

    def remove(self, model_key: str) -> bool:
        self._last_used.pop(model_key, None)
        return self._entries.pop(model_key, None) is not None
