"""The gateway core's fast action constructors build the very tuples the NamedTuples' own constructors build."""

from __future__ import annotations

from policies.gateway.types import Dispatch, Respond, Ticket, new_dispatch, new_respond


def test_new_dispatch_and_new_respond_equal_the_namedtuples() -> None:
    t = Ticket(7, 0, 2, "acme", 1.5, 100)
    fast, slow = new_dispatch(t, "r1", 2, "chat", True), Dispatch(t, "r1", 2, "chat", True)
    assert type(fast) is Dispatch and fast == slow and fast.endpoint == "r1" and fast.fallback is True
    answer, expected = new_respond(t, "failed", "aborted", "why"), Respond(t, "failed", "aborted", "why")
    assert type(answer) is Respond and answer == expected and answer.detail == "why" and answer.ticket is t


def test_a_ticket_takes_its_trailing_fields_by_position_or_by_keyword() -> None:
    ref = object()
    by_position = Ticket(1, 0, 2, "acme", 0.5, 10, None, 42, 200, "lora-a", ref)
    by_keyword = Ticket(1, 0, 2, "acme", 0.5, 10, None, session=42, output_tokens=200, adapter="lora-a", ref=ref)
    for name in ("session", "output_tokens", "adapter", "ref"):
        assert getattr(by_position, name) == getattr(by_keyword, name), name
    assert by_position.session == 42 and by_position.ref is ref
