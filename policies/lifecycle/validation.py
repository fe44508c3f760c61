"""Deploy-time validation of an InferenceService-like request: approve it, or reject it with every reason.

Checks (all are run; the reason lists each problem found, separated by "; "):
1. the storageUri scheme is one KServe knows (s3, gs, pvc, hf, oci, https);
2. tp >= 1 and replicas >= 1;
3. tp <= GPUs per node (tensor parallelism stays inside one node's NVLink/PCIe domain);
4. replicas * tp <= GPUs in the pool;
5. memory: per GPU, weights / tp + kv_bytes_per_token * min_kv_tokens / tp <= gpu_memory_bytes *
   memory_utilization (vLLM's --gpu-memory-utilization, default 0.9; vLLM refuses to start when the KV cache
   cannot hold at least one max_model_len sequence, so min_kv_tokens is usually max_model_len).
   Activations and CUDA graphs are taken as inside the (1 - memory_utilization) headroom.

Inputs are plain numbers (the caller reads them from its catalog: ModelSpec.weight_bytes, kv_bytes_per_token,
GpuSpec.memory_bytes), so this module needs no simulator import.
"""

from __future__ import annotations

from dataclasses import dataclass

from policies.lifecycle.storage import UnknownStorageScheme, scheme_of

GIB = 2**30


@dataclass(frozen=True, slots=True)
class Verdict:
    approved: bool
    reason: str
    problems: tuple[str, ...] = ()

    def __bool__(self) -> bool:
        return self.approved


def per_gpu_bytes(weight_bytes: float, kv_bytes_per_token: float, min_kv_tokens: int, tp: int) -> float:
    """What one GPU must hold: its 1/tp shard of the weights and of the minimal KV cache."""
    return (weight_bytes + kv_bytes_per_token * min_kv_tokens) / tp


def validate_deployment(
    *,
    weight_bytes: float,
    kv_bytes_per_token: float,
    gpu_memory_bytes: float,
    tp: int = 1,
    min_kv_tokens: int = 1,
    memory_utilization: float = 0.9,
    storage_uri: str = "s3://models/model",
    replicas: int = 1,
    pool_gpus: int | None = None,
    gpus_per_node: int | None = None,
    name: str = "",
) -> Verdict:
    """Approve, or reject with a reason naming each violated limit. `None` pool / node sizes skip those checks."""
    if weight_bytes < 0 or kv_bytes_per_token < 0 or min_kv_tokens < 0:
        raise ValueError("weight_bytes, kv_bytes_per_token and min_kv_tokens must be >= 0")
    if gpu_memory_bytes <= 0:
        raise ValueError("gpu_memory_bytes must be > 0")
    if not 0.0 < memory_utilization <= 1.0:
        raise ValueError("memory_utilization must be within (0, 1]")
    problems: list[str] = []
    try:
        scheme_of(storage_uri)
    except UnknownStorageScheme as err:
        problems.append(str(err))
    except ValueError as err:  # an empty path
        problems.append(str(err))
    if tp < 1:
        problems.append(f"tensor parallelism tp={tp} must be >= 1")
    if replicas < 1:
        problems.append(f"replicas={replicas} must be >= 1")
    if gpus_per_node is not None and tp > gpus_per_node:
        problems.append(
            f"tp={tp} is larger than the {gpus_per_node} GPUs per node (tensor parallelism cannot span nodes)"
        )
    if pool_gpus is not None and tp >= 1 and replicas >= 1 and replicas * tp > pool_gpus:
        gpus = "GPU" if replicas * tp == 1 else "GPUs"
        reps = "replica" if replicas == 1 else "replicas"
        problems.append(f"needs {replicas * tp} {gpus} ({replicas} {reps} x tp={tp}) but the pool has {pool_gpus}")
    if tp >= 1:
        need = per_gpu_bytes(weight_bytes, kv_bytes_per_token, min_kv_tokens, tp)
        usable = gpu_memory_bytes * memory_utilization
        if need > usable:
            problems.append(
                f"does not fit GPU memory: weights {weight_bytes / tp / GIB:.1f} GiB + KV for {min_kv_tokens} tokens "
                f"{kv_bytes_per_token * min_kv_tokens / tp / GIB:.2f} GiB = {need / GIB:.1f} GiB per GPU at tp={tp} "
                f"> {usable / GIB:.1f} GiB usable ({gpu_memory_bytes / GIB:.1f} GiB x {memory_utilization:.2f} "
                f"memory_utilization)"
            )
    who = f"deployment '{name}'" if name else "deployment"
    if problems:
        return Verdict(False, f"{who} rejected: " + "; ".join(problems), tuple(problems))
    return Verdict(True, f"{who} approved", ())
