"""A request's final status: the one vocabulary both engines write and every results reader understands.

It lives in the results schema (the shared base), not in an engine, so the simulator and the live runtime can
both use it without importing each other.
"""

from __future__ import annotations

STATUS_OK = "ok"
STATUS_SHED = "shed"
STATUS_FAILED = "failed"
STATUS_TIMEOUT = "timeout"
STATUS_UNFINISHED = "unfinished"
STATUSES: tuple[str, ...] = (STATUS_OK, STATUS_SHED, STATUS_FAILED, STATUS_TIMEOUT, STATUS_UNFINISHED)
"""Every final status; a status's index here is its code in the request log."""
