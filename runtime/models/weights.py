"""Deterministic weights for the live models: seeded draws or a local state_dict file.

Seeded weights come from one `torch.Generator` walked over the parameters in name order, so two replica processes of
the same spec hold bit-identical weights without sharing a file, whatever the global RNG state.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
from torch import nn


class WeightsError(RuntimeError):
    """A weights file is missing, unreadable, or does not fit the model's spec."""


def seeded_init(module: nn.Module, seed: int) -> None:
    """Fill every parameter from a generator seeded with `seed`.

    Matrices and embeddings: normal with std 1/sqrt(fan_in) (0.02 for embeddings); biases zero; norm weights one."""
    gen = torch.Generator(device="cpu").manual_seed(seed)
    with torch.no_grad():
        for name, param in sorted(module.named_parameters(), key=lambda kv: kv[0]):
            leaf = name.rsplit(".", 1)[-1]
            if leaf == "bias":
                param.zero_()
            elif param.ndim == 1:
                param.fill_(1.0)
            else:
                fan_in = math.prod(param.shape[1:])
                std = 0.02 if "emb" in name else 1.0 / math.sqrt(fan_in)
                draw = torch.randn(param.shape, generator=gen, dtype=torch.float32) * std
                param.copy_(draw.to(param.dtype))


def resolve(path: str, base_dir: str | Path) -> Path:
    """`path` as given if absolute, else relative to `base_dir` (the scenario file's folder)."""
    p = Path(path).expanduser()
    return p if p.is_absolute() else Path(base_dir) / p


def load_state_dict(module: nn.Module, path: str, base_dir: str | Path) -> None:
    """Load a `torch.save(module.state_dict())` file into `module`, naming the file in every failure."""
    file = resolve(path, base_dir)
    if not file.is_file():
        raise WeightsError(f"weights file not found: {file} (from weights: {path!r}, base_dir {base_dir})")
    try:
        state = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as err:
        raise WeightsError(f"cannot read weights file {file}: {err}") from err
    if not isinstance(state, dict):
        raise WeightsError(f"weights file {file} does not hold a state_dict (got {type(state).__name__})")
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise WeightsError(f"weights file {file} does not match the model spec: {err}") from err
