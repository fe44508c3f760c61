"""Errors of the policy library; configuration mistakes are ValueErrors so pydantic reports them in place."""

from __future__ import annotations


class PolicyConfigError(ValueError):
    """A policy was configured wrongly: unknown name, duplicate registration, bad params, dangling reference.

    A ValueError subclass so that raising it inside a pydantic validator yields a normal ValidationError with
    the field path, and so callers that only know ValueError still catch it.
    """
