"""Routing: llm-d's endpoint-picker pipeline (filters -> weighted scorers -> picker) and its plugins.

Build a router from configuration with `policies.routing.config.build_router`.
"""

from policies.routing.framework import Filter, Picker, Router, SchedulerProfile, Scorer
from policies.routing.types import NO_SESSION, EndpointState, RouteRequest, RoutingDecision

__all__ = [
    "NO_SESSION",
    "EndpointState",
    "Filter",
    "Picker",
    "RouteRequest",
    "Router",
    "RoutingDecision",
    "SchedulerProfile",
    "Scorer",
]
