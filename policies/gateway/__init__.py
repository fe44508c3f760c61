"""The gateway core: the request path's decisions as a pure state machine both engines drive (see core.py)."""

from policies.gateway.core import ACTIVATOR_TIMEOUT_S, NO_REPLICAS, GatewayCore
from policies.gateway.route import CanarySplit, RouteState
from policies.gateway.types import Activate, CacheWait, Dispatch, EndpointSlot, Record, Respond, Ticket, WakeAt

__all__ = [
    "ACTIVATOR_TIMEOUT_S",
    "NO_REPLICAS",
    "Activate",
    "CacheWait",
    "CanarySplit",
    "Dispatch",
    "EndpointSlot",
    "GatewayCore",
    "Record",
    "Respond",
    "RouteState",
    "Ticket",
    "WakeAt",
]
