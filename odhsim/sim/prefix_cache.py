"""A replica's prefix (KV) cache: vLLM's automatic prefix caching in GPU memory, optionally backed by a host-memory
tier (vLLM KV offloading / LMCache, llm-d's "tiered prefix cache").

Blocks are named by the trace's ids (Mooncake hash ids: one id per 512-token block, naming the whole prefix).
Both tiers are LRU; a block evicted from the GPU tier moves to the host tier. A hit is the longest run of
leading blocks present in either tier; host-tier hits must be copied back over PCIe before the prefill step.
"""

from __future__ import annotations

from collections import OrderedDict

import numpy as np


class PrefixCache:
    def __init__(self, gpu_blocks: int, cpu_blocks: int, block_tokens: int) -> None:
        self.gpu: OrderedDict[int, None] = OrderedDict()
        self.cpu: OrderedDict[int, None] = OrderedDict()
        self.gpu_blocks = max(1, gpu_blocks)
        self.cpu_blocks = max(0, cpu_blocks)
        self.block_tokens = block_tokens

    def lookup(self, blocks: np.ndarray) -> tuple[int, int]:
        """(blocks hit in GPU memory, blocks hit in host memory) along the longest cached leading run."""
        gpu, cpu = self.gpu, self.cpu
        on_gpu = on_cpu = 0
        for block in blocks.tolist():
            if block in gpu:
                gpu.move_to_end(block)
                on_gpu += 1
            elif block in cpu:
                on_cpu += 1
            else:
                break
        return on_gpu, on_cpu

    def insert(self, blocks: np.ndarray) -> None:
        """The request's prompt blocks are now in GPU memory (host copies are promoted); evict LRU overflow."""
        gpu, cpu = self.gpu, self.cpu
        for block in blocks.tolist():
            if cpu:
                cpu.pop(block, None)
            gpu[block] = None
            gpu.move_to_end(block)
        while len(gpu) > self.gpu_blocks:
            block, _ = gpu.popitem(last=False)
            if self.cpu_blocks:
                cpu[block] = None
        while len(cpu) > self.cpu_blocks:
            cpu.popitem(last=False)
