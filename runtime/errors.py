"""Failure classes the replicas and the gateway agree on, and error ids: a client sees a generic message with an id,
the log holds the detail under the same id, and no exception text ever reaches a client.

A request's own fault (bad input, or a sequence whose own computation failed while the rest of its batch went on)
is a 4xx-class answer: the gateway passes it on, does not retry it and does not count it against the replica. In a
stream, where the status line is already sent, the replica says so with an error event whose `code` is
`SEQUENCE_FAILED`, followed by `[DONE]`.
"""

from __future__ import annotations

import uuid

SEQUENCE_FAILED = "sequence_failed"
"""Code (and gateway reason) of a request whose own sequence failed; its HTTP status is `SEQUENCE_FAILED_STATUS`."""
SEQUENCE_FAILED_STATUS = 422
SEQUENCE_FAILED_MARK = f'"code": "{SEQUENCE_FAILED}"'.encode()
"""How the replica's stream error event spells the code (json.dumps' default separators); generated text cannot
contain it unescaped, so the gateway finds it with a byte search."""


def new_error_id() -> str:
    """A short id that ties a generic client message to the logged detail."""
    return f"err-{uuid.uuid4().hex[:16]}"


def sequence_failed_message(error_id: str) -> str:
    return f"generation failed for this request alone (its own logits or sampling were not finite); error id {error_id}"


def internal_error_message(error_id: str) -> str:
    return f"internal error; error id {error_id}"
