"""One root seed, one named random stream per component.

`numpy.random.SeedSequence(seed, spawn_key=(crc32(name),))` gives each component (arrivals, lengths, router, ...)
an independent stream that depends only on the root seed and the component's name, not on the order in which
components ask for it. So changing one policy never shifts another's random numbers: A/B comparisons get common
random numbers for free.
"""

from __future__ import annotations

import zlib

import numpy as np


class RngStreams:
    """Factory of named, reproducible numpy Generators derived from one root seed."""

    def __init__(self, seed: int) -> None:
        self.seed = int(seed)

    def get(self, name: str) -> np.random.Generator:
        """A fresh Generator for `name`; the same (seed, name) always gives the same stream."""
        key = zlib.crc32(name.encode("utf-8"))
        return np.random.Generator(np.random.PCG64(np.random.SeedSequence(self.seed, spawn_key=(key,))))
