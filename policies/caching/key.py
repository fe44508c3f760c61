"""A stable 64-bit key for an exact-repeat response cache.

The key is blake2b (8-byte digest, personalised) over a canonical, length-prefixed encoding of the model, its
version, the sampling parameters (a mapping is sorted by key, so dict ordering never matters) and the prompt's
identity (its text, its prefix block ids, its token count: whichever the caller has) and, unless the cache is shared
across tenants, the tenant: a tenant must never receive another tenant's answer (nor learn from a hit that someone
sent the same prompt). Python's `hash()` is salted
per process (PYTHONHASHSEED) and is never used, so a key computed by the simulator, the gateway and a Redis-backed
shared tier in another process agree.

Canonical values: None, bools, ints, floats (an integral float encodes as the int, so temperature 1 and 1.0 are the
same request), strings, bytes, sequences (ordered) and mappings (sorted by key); anything else is a TypeError
rather than a silently unstable key.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping, Sequence

import numpy as np

_PERSON = b"odhsim-rcache-1"  # blake2b personalisation (<= 16 bytes); bump it to invalidate every old key
_INT64_MIN = -(2**63)
_INT64_MAX = 2**63 - 1


def _frame(tag: bytes, payload: bytes) -> bytes:
    """A tag byte, the payload's length, the payload: no two different values share an encoding."""
    return tag + len(payload).to_bytes(8, "little") + payload


def _encode(value: object) -> bytes:
    if value is None:
        return _frame(b"N", b"")
    if isinstance(value, bool | np.bool_):
        return _frame(b"B", b"1" if value else b"0")
    if isinstance(value, int | np.integer):
        return _frame(b"I", str(int(value)).encode())
    if isinstance(value, float | np.floating):
        f = float(value)
        if math.isfinite(f) and f.is_integer():
            return _frame(b"I", str(int(f)).encode())
        return _frame(b"F", repr(f).encode())  # repr round-trips a double exactly, the same in every process
    if isinstance(value, str):
        return _frame(b"S", value.encode("utf-8"))
    if isinstance(value, bytes):
        return _frame(b"Y", value)
    if isinstance(value, Mapping):
        items = sorted((str(k), v) for k, v in value.items())
        if len({k for k, _ in items}) != len(items):
            raise TypeError("sampling keys must be distinct after conversion to str")
        return _frame(b"M", b"".join(_encode(k) + _encode(v) for k, v in items))
    if isinstance(value, list | tuple | np.ndarray):
        return _frame(b"L", b"".join(_encode(v) for v in value))
    raise TypeError(f"cannot build a stable cache key from a {type(value).__name__}")


def _sampling_bytes(sampling: Mapping[str, object] | tuple) -> bytes:
    """A mapping, or a tuple of (name, value) pairs (both sorted by name), or a tuple of positional values."""
    if isinstance(sampling, Mapping):
        return _encode(sampling)
    if isinstance(sampling, tuple):
        if not sampling:
            return _encode({})  # no parameters: the same as an empty mapping
        if all(isinstance(p, tuple) and len(p) == 2 and isinstance(p[0], str) for p in sampling):
            names = [p[0] for p in sampling]
            if len(set(names)) != len(names):
                raise ValueError("sampling pairs name a parameter twice")
            return _encode(dict(sampling))
        return _encode(sampling)
    raise TypeError(f"sampling must be a mapping or a tuple, not {type(sampling).__name__}")


def _block_bytes(block_ids: Sequence[int] | np.ndarray) -> bytes:
    """Block ids as little-endian int64 when they all fit (the usual case), else as decimal text.

    A list is never converted by numpy (which turns ints beyond int64 into lossy floats); the encoding depends on
    the values only, so a list and an array of the same ids give the same bytes.
    """
    if isinstance(block_ids, np.ndarray):
        if block_ids.ndim != 1:
            raise ValueError("block_ids must be one-dimensional")
        kind = block_ids.dtype.kind
        if block_ids.size and kind not in "iuO":
            raise TypeError(f"block_ids must be integers, not {block_ids.dtype}")
        if kind == "i" or (kind == "u" and (block_ids.size == 0 or int(block_ids.max()) <= _INT64_MAX)):
            return _frame(b"K", block_ids.astype("<i8").tobytes())
        values = block_ids.tolist()
    else:
        values = list(block_ids)
    ints = []
    for v in values:
        if isinstance(v, bool | np.bool_) or not isinstance(v, int | np.integer):
            raise TypeError("block_ids must be integers")
        ints.append(int(v))
    if all(_INT64_MIN <= v <= _INT64_MAX for v in ints):
        return _frame(b"K", np.asarray(ints, dtype="<i8").tobytes())
    return _frame(b"D", ",".join(str(v) for v in ints).encode())


def response_key(
    model: str,
    version: str,
    sampling: Mapping[str, object] | tuple,
    prompt: str | None = None,
    block_ids: Sequence[int] | np.ndarray | None = None,
    prompt_tokens: int | None = None,
    tenant: str | None = None,
) -> int:
    """The unsigned 64-bit cache key of one request; equal requests give equal keys in every process.

    At least one of `prompt`, `block_ids`, `prompt_tokens` must name the prompt (a key without one would make every
    request of a model look like a repeat). Each given field is part of the key, and an absent field differs from
    any present value. `tenant` scopes the key to one tenant (None: a key every tenant shares, for caches configured
    with `share_across_tenants`); a key without a tenant equals the key this function gave before tenants existed.
    """
    if prompt is None and block_ids is None and prompt_tokens is None:
        raise ValueError("a response key needs the prompt, its block ids or its token count")
    if prompt_tokens is not None and (isinstance(prompt_tokens, bool) or int(prompt_tokens) != prompt_tokens):
        raise TypeError("prompt_tokens must be an integer")
    parts = [
        _encode(str(model)),
        _encode(str(version)),
        _sampling_bytes(sampling),
        _encode(prompt),
        _frame(b"N", b"") if block_ids is None else _block_bytes(block_ids),
        _encode(None if prompt_tokens is None else int(prompt_tokens)),
    ]
    if tenant is not None:  # an extra frame: framing keeps it apart from every tenant-less key
        parts.append(_frame(b"T", str(tenant).encode("utf-8")))
    digest = hashlib.blake2b(b"".join(parts), digest_size=8, person=_PERSON).digest()
    return int.from_bytes(digest, "big")
