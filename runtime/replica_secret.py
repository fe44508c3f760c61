"""The run's replica secret: only the gateway (and the controller's probes) may talk to a replica.

Replicas listen on 127.0.0.1, but any local process could otherwise call them directly and bypass the gateway's
API keys, limits and accounting. `odhsim serve` draws one random secret per run (`new_secret`), hands it to every
replica in its environment (never on the command line, which `ps` shows to every user; /proc/<pid>/environ is
readable by the same user only), and sends it in `SECRET_HEADER` on every request it makes to a replica: forwarded
requests, metric scrapes, health checks and readiness tests. A replica started with a secret answers anything else
401 (JSON), health probes included.
"""

from __future__ import annotations

import hmac
import json
import secrets
from collections.abc import Mapping

from starlette.types import ASGIApp, Receive, Scope, Send

SECRET_ENV = "ODHSIM_REPLICA_SECRET"
SECRET_HEADER = "x-odhsim-replica-secret"
SCRUBBED_ENV = ("ODHSIM_API_KEYS", "ODHSIM_REDIS_PASSWORD", SECRET_ENV)
"""Gateway credentials a replica's environment never inherits (its own secret is then set explicitly)."""


def new_secret() -> str:
    """A fresh secret for one run (256 random bits, URL-safe)."""
    return secrets.token_urlsafe(32)


def secret_headers(secret: str | None) -> dict[str, str]:
    """The header that carries `secret` (none without one)."""
    return {} if secret is None else {SECRET_HEADER: secret}


def replica_environment(base: Mapping[str, str], secret: str | None) -> dict[str, str]:
    """`base` without the gateway's credentials, plus the replica's own secret when there is one."""
    env = {k: v for k, v in base.items() if k not in SCRUBBED_ENV}
    if secret is not None:
        env[SECRET_ENV] = secret
    return env


class ReplicaSecretGuard:
    """ASGI middleware: a request without the secret is answered 401 before the app sees it."""

    def __init__(self, app: ASGIApp, secret: str) -> None:
        if not secret:
            raise ValueError("a replica secret must not be empty")
        self.app = app
        self._secret = secret.encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        given = next((v for k, v in scope["headers"] if k == SECRET_HEADER.encode()), b"")
        if hmac.compare_digest(given, self._secret):
            await self.app(scope, receive, send)
            return
        path = scope.get("path", "")
        message = "this replica answers its gateway only (missing or wrong replica secret)"
        if path.startswith("/v1"):
            doc: object = {"error": {"message": message, "type": "authentication_error", "param": None, "code": None}}
        else:
            doc = {"error": message}
        body = json.dumps(doc).encode()
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        await send({"type": "http.response.start", "status": 401, "headers": headers})
        await send({"type": "http.response.body", "body": body})


def headers_of_process(pid: int) -> dict[str, str]:
    """The secret header of a running replica, read from its environment (Linux; only its own user may): for tools
    of the same user that must reach a replica directly, as `odhsim bench-live` does to measure the gateway's
    overhead. Empty when the replica runs without a secret."""
    from pathlib import Path

    raw = Path(f"/proc/{pid}/environ").read_bytes()
    env = dict(item.split(b"=", 1) for item in raw.split(b"\0") if b"=" in item)
    value = env.get(SECRET_ENV.encode())
    return secret_headers(None if value is None else value.decode())
