"""Request limits enforced before anything reaches a replica: body size (413), prompt length and max_tokens (400).

The body is never read unbounded: a Content-Length over the limit is refused before the first byte is read, and
the stream is counted while it is read, so a chunked upload (or a lying Content-Length) is cut off at the limit.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator, Mapping

import numpy as np

from odhsim.scenario.live import RequestLimits
from runtime.tokenizer import encode

BLOCK_TOKENS = 16
"""Tokens per prefix block id (llm-d's own prompt hashing uses 16-token blocks)."""


class LimitError(Exception):
    """A request over a limit: HTTP status (400, 408 or 413), the offending field (may be None) and a message."""

    def __init__(self, status: int, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param


async def read_body(
    headers: Mapping[str, str], chunks: AsyncIterator[bytes], max_bytes: int, deadline: float | None = None
) -> bytes:
    """The whole body, or LimitError(413) as soon as it is known to exceed `max_bytes` (400 for a bad length).

    `deadline` (event-loop time; the transport's REQUEST_DEADLINE): LimitError(408) if the body has not wholly
    arrived by then, so a client trickling its body cannot hold the request (and its memory) open."""
    if deadline is None:
        return await _read_body(headers, chunks, max_bytes)
    try:
        async with asyncio.timeout_at(deadline):
            return await _read_body(headers, chunks, max_bytes)
    except TimeoutError:
        message = "the request body was not received in time (live.transport.request_read_timeout_s)"
        raise LimitError(408, message) from None


async def _read_body(headers: Mapping[str, str], chunks: AsyncIterator[bytes], max_bytes: int) -> bytes:
    declared = headers.get("content-length")
    if declared is not None:
        try:
            n = int(declared)
        except ValueError:
            raise LimitError(400, "Content-Length is not an integer") from None
        if n < 0:
            raise LimitError(400, "Content-Length is negative")
        if n > max_bytes:
            raise LimitError(413, f"request body of {n} bytes exceeds the limit of {max_bytes} bytes")
    parts: list[bytes] = []
    total = 0
    async for chunk in chunks:
        total += len(chunk)
        if total > max_bytes:
            raise LimitError(413, f"request body exceeds the limit of {max_bytes} bytes")
        parts.append(chunk)
    return b"".join(parts)


def prompt_tokens(text: str) -> list[int]:
    """The prompt's token ids with the shared tokenizer (BOS + UTF-8 bytes)."""
    return encode(text)


def check_completion(n_prompt_tokens: int, max_tokens: int, limits: RequestLimits) -> None:
    """400 for a prompt over `max_prompt_tokens` or max_tokens outside [1, limits.max_tokens]."""
    if n_prompt_tokens > limits.max_prompt_tokens:
        raise LimitError(
            400, f"prompt has {n_prompt_tokens} tokens, more than the limit of {limits.max_prompt_tokens}", "prompt"
        )
    check_max_tokens(max_tokens, limits, "max_tokens")


def check_max_tokens(max_tokens: int, limits: RequestLimits, param: str) -> None:
    if max_tokens < 1:
        raise LimitError(400, f"max_tokens must be >= 1, got {max_tokens}", param)
    if max_tokens > limits.max_tokens:
        raise LimitError(400, f"max_tokens {max_tokens} exceeds the limit of {limits.max_tokens}", param)


def check_rows(rows: int, limits: RequestLimits, param: str) -> None:
    """v2 infer: most rows (the batch dimension) in one request's input tensor."""
    if rows > limits.max_batch_rows:
        raise LimitError(400, f"{rows} rows exceed the limit of {limits.max_batch_rows} per request", param)


def block_ids(tokens: list[int], block_tokens: int = BLOCK_TOKENS) -> np.ndarray:
    """Chained hashes of the prompt's full `block_tokens`-token blocks, as non-negative int64.

    Block i's id hashes block i-1's id and block i's tokens, so equal ids mean equal prefixes (what the
    prefix-cache scorers assume); the trailing partial block has no id.
    """
    n = len(tokens) // block_tokens
    out = np.empty(n, dtype=np.int64)
    prev = b""
    arr = np.asarray(tokens[: n * block_tokens], dtype="<u4")
    for i in range(n):
        h = hashlib.blake2b(prev, digest_size=8, person=b"odhsim-blocks")
        h.update(arr[i * block_tokens : (i + 1) * block_tokens].tobytes())
        prev = h.digest()
        out[i] = int.from_bytes(prev, "little") & 0x7FFF_FFFF_FFFF_FFFF
    return out


def shown_name(name: str, limit: int = 64) -> str:
    """A client-supplied name as an error message may quote it: at most `limit` characters, non-printable and
    non-ASCII characters escaped, and the original length said when it was cut (a 60 kB model name is not echoed)."""
    cut = name[:limit]
    escaped = cut.encode("ascii", "backslashreplace").decode("ascii")
    escaped = "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in escaped)
    if len(name) > limit:
        return f"{escaped}... ({len(name)} characters)"
    return escaped
