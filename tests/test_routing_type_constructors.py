"""The fast constructors of the routing snapshots build the same objects as the dataclasses' own __init__."""

from __future__ import annotations

import dataclasses

import numpy as np

from policies.routing.types import EndpointState, RouteRequest, new_endpoint_state, new_route_request


def test_new_endpoint_state_equals_the_init_built_one_field_by_field() -> None:
    values = ("r0", "chat", 3, 7, 0.25, 12.5, False, frozenset({"a"}), frozenset({"b"}), 4, 1000, 16)
    fast, slow = new_endpoint_state(*values), EndpointState(*values)
    assert fast == slow and hash(fast) == hash(slow)
    assert [getattr(fast, f.name) for f in dataclasses.fields(EndpointState)] == list(values)
    assert dataclasses.replace(fast, waiting=9).waiting == 9  # still a normal frozen dataclass instance


def test_new_route_request_equals_the_init_built_one_field_by_field() -> None:
    blocks = np.array([5, 6, 7], dtype=np.int64)
    values = (42, "chat", 900, blocks, 512, 3, 2, "team-a", "lora-1")
    fast, slow = new_route_request(*values), RouteRequest(*values)
    for f in dataclasses.fields(RouteRequest):
        assert getattr(fast, f.name) is getattr(slow, f.name), f.name
    try:
        fast.model = "other"  # type: ignore[misc]
    except dataclasses.FrozenInstanceError:
        pass
    else:
        raise AssertionError("a fast-built RouteRequest must stay frozen")
