"""The in-flight request: a small slotted object that lives from arrival to its final status, then is dropped."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from odhsim.results.status import (  # re-exported: simulator modules import the statuses from here
    STATUS_FAILED,
    STATUS_OK,
    STATUS_SHED,
    STATUS_TIMEOUT,
    STATUS_UNFINISHED,
    STATUSES,
)
from policies.routing.types import RouteRequest

__all__ = [
    "STATUSES",
    "STATUS_FAILED",
    "STATUS_OK",
    "STATUS_SHED",
    "STATUS_TIMEOUT",
    "STATUS_UNFINISHED",
    "SimRequest",
]


class SimRequest:
    """Mutable engine state of one request; `row` indexes its row in the results table."""

    __slots__ = (
        "arrival_s",
        "attempts",
        "blocks",
        "cache_hit",
        "cache_key",
        "cached_tokens",
        "ctx",
        "fallback",
        "finish_step",
        "first_token_s",
        "generated",
        "join_step",
        "model",
        "output_tokens",
        "prefill_left",
        "priority",
        "prompt_tokens",
        "replica",
        "retries",
        "route",
        "row",
        "running_epoch",
        "service_s",
        "session",
        "start_s",
        "tenant",
        "ticket",
        "version",
    )

    def __init__(
        self,
        row: int,
        arrival_s: float,
        prompt_tokens: int,
        output_tokens: int,
        model: int,
        priority: int,
        tenant: int,
        session: int,
        blocks: np.ndarray | None,
    ) -> None:
        self.row = row
        self.arrival_s = arrival_s
        self.prompt_tokens = prompt_tokens
        self.output_tokens = output_tokens
        self.model = model
        self.priority = priority
        self.tenant = tenant
        self.session = session
        self.blocks = blocks
        self.first_token_s = math.nan
        self.start_s = math.nan  # when service began (admitted to a prefill step, or a slot)
        self.generated = 0
        self.ctx = 0
        self.cached_tokens = 0  # prompt tokens served from the replica's prefix (KV) cache
        self.cache_hit = False  # answered from the gateway's response cache
        self.fallback = False  # served by the model's fallback model
        self.replica = -1
        self.retries = 0
        self.attempts = 0  # replicas tried (the fallback's included): 0 for a cache hit or a request never dispatched
        self.finish_step = 0
        self.join_step = 0
        self.prefill_left = 0  # prompt tokens still to compute (chunked prefill)
        self.running_epoch = 0
        self.service_s = 0.0
        self.route: RouteRequest | None = None
        self.ticket: Any = None  # the gateway core's Ticket while the gateway holds it (arrival to answer)
        self.version = 0  # revision of the serving model: 0 its own version, 1 its canary
        self.cache_key = 0  # response-cache key, fixed at arrival (model, version chosen, prompt, sampling)
