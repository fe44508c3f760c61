"""What the request log reads from a finished request, so either engine's request object can be logged.

The simulator's `SimRequest` has these attributes among its own; the live replay, which has no engine state,
fills a `RequestRecord`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol


class FinishedRequest(Protocol):
    """The attributes `RequestLog.finish` writes into the request's row."""

    row: int
    start_s: float
    first_token_s: float
    replica: int
    retries: int
    attempts: int
    cached_tokens: int
    cache_hit: bool
    fallback: bool


@dataclass(slots=True)
class RequestRecord:
    """A request's outcome as an engine without a request object of its own collects it (mutable until logged)."""

    row: int
    start_s: float = math.nan
    first_token_s: float = math.nan
    replica: int = -1
    retries: int = 0
    attempts: int = 0
    cached_tokens: int = 0
    cache_hit: bool = False
    fallback: bool = False
