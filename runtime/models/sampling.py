"""Next-token choice: greedy, or temperature / top-p sampling from a per-request generator.

Each request owns its `torch.Generator`, so a seeded request draws the same tokens whatever else shares its batch.
Temperature is read as vLLM reads it (runtime/sampling_params.py): below SAMPLING_EPS greedy, else at least
MIN_TEMPERATURE, so no temperature a caller passes can overflow the scaled logits.
"""

from __future__ import annotations

import torch
from torch import Tensor

from runtime.sampling_params import effective_temperature


def request_generator(seed: int | None) -> torch.Generator:
    """A CPU generator seeded with `seed`, or from OS entropy when the request gave none."""
    gen = torch.Generator(device="cpu")
    if seed is None:
        gen.seed()
    else:
        gen.manual_seed(seed)
    return gen


def sample(logits: Tensor, temperature: float, top_p: float, generator: torch.Generator | None) -> int:
    """One token from `logits` [vocab] (CPU float32, finite): argmax when greedy, else nucleus sampling.

    Raises RuntimeError when the scaled distribution is not finite (logits near float32's limit); the caller fails
    that one sequence."""
    temperature = effective_temperature(temperature)
    if temperature == 0.0 or generator is None:
        return int(torch.argmax(logits))
    probs = torch.softmax(logits / temperature, dim=-1)
    if top_p < 1.0:
        sorted_p, order = torch.sort(probs, descending=True)
        keep = (torch.cumsum(sorted_p, dim=-1) - sorted_p) < top_p  # the smallest prefix reaching top_p
        keep[0] = True  # as vLLM: the top token always stays (a top_p below float32's range compares as 0)
        sorted_p = sorted_p * keep
        choice = torch.multinomial(sorted_p / sorted_p.sum(), 1, generator=generator)
        return int(order[choice])
    return int(torch.multinomial(probs, 1, generator=generator))
