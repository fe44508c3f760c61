"""Byte-level tokenizer shared by replicas and the gateway.

Bytes need no vocabulary file and no download, and every string round-trips, so the gateway can count prompt tokens
exactly as a replica does: `len(encode(prompt))`.
"""

from __future__ import annotations

from collections.abc import Iterable

BOS = 256
EOS = 257
VOCAB_SIZE = 258


def encode(text: str) -> list[int]:
    """BOS, then the UTF-8 bytes of `text`."""
    return [BOS, *text.encode("utf-8")]


def decode(ids: Iterable[int]) -> str:
    """The text of `ids`: BOS/EOS (and anything outside the vocabulary) dropped, invalid UTF-8 replaced."""
    return bytes(i for i in ids if 0 <= i < 256).decode("utf-8", errors="replace")


def count_tokens(text: str) -> int:
    """Prompt tokens of `text` (BOS included) without building the list."""
    return 1 + len(text.encode("utf-8"))
