"""Torch models and the batching engines that drive them (no HTTP here).

Import the submodules directly (`runtime.models.tiny_lm`, ...): this package's `__init__` stays free of torch so that
importing `runtime.models.weights` helpers or specs elsewhere does not pay for torch's import.
"""
