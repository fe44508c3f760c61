"""The replica's /metrics in Prometheus text format with vLLM's metric names (what llm-d's scorers scrape).

Written by hand rather than through prometheus_client: six samples, and no registry to keep per app."""

from __future__ import annotations

from runtime.models.continuous_batching import EngineStats

_FAMILIES = (
    ("vllm:num_requests_waiting", "gauge", "Number of requests waiting to be processed.", "waiting"),
    ("vllm:num_requests_running", "gauge", "Number of requests in model execution batches.", "running"),
    ("vllm:kv_cache_usage_perc", "gauge", "KV-cache usage. 1 means 100 percent usage.", "kv_cache_usage"),
    ("vllm:prompt_tokens_total", "counter", "Number of prefill tokens processed.", "prompt_tokens_total"),
    ("vllm:generation_tokens_total", "counter", "Number of generation tokens processed.", "generation_tokens_total"),
    ("vllm:request_success_total", "counter", "Count of successfully processed requests.", "request_success_total"),
)


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def exposition(model: str, snap: EngineStats) -> str:
    """Text exposition format 0.0.4, every sample labelled `model_name`."""
    label = f'{{model_name="{_label(model)}"}}'
    lines: list[str] = []
    for name, kind, help_text, attr in _FAMILIES:
        lines += [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}", f"{name}{label} {float(getattr(snap, attr))}"]
    return "\n".join(lines) + "\n"
