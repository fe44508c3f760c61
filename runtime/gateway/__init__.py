"""The live gateway of `odhsim serve`: auth, limits, response cache, flow control, routing, retries, over HTTP.

The controller builds one with `build_gateway(scenario)` (or `Gateway(scenario, streams, keys=...)`), serves
`gateway.app` with uvicorn, and drives it with add_replica / drain_replica / remove_replica / in_flight /
scaling_metrics and the on_cold_request / on_replica_failure callbacks (runtime/README.md, Gateway contract).
"""

from runtime.gateway.auth import KeyFileError, KeyStore, Principal, load_keys
from runtime.gateway.core import Gateway, build_gateway
from runtime.gateway.route import GatewayError
from runtime.gateway.shared_tier import RedisSharedTier, shared_tier_from_url

__all__ = [
    "Gateway",
    "GatewayError",
    "KeyFileError",
    "KeyStore",
    "Principal",
    "RedisSharedTier",
    "build_gateway",
    "load_keys",
    "shared_tier_from_url",
]
