"""The response cache's shared tier on Redis, so gateway processes answer each other's exact repeats.

`policies.caching.response_cache.TieredResponseCache` calls a `SharedTier` synchronously on the request path, so
this uses redis-py's synchronous client with short socket timeouts (a local Redis answers in well under a
millisecond). When Redis is down or slow, the tier never raises: it counts the error, marks itself down for a
back-off period (during which it does not touch Redis at all, so a dead Redis costs at most one timeout per
period), and the gateway keeps serving from its local tier. Its health is visible: `up` (the last call's outcome),
`errors`, and `on_change(up, detail)` called when it goes down or comes back (serve records it as an event).

Redis is shared infrastructure, so the tier authenticates (the password from the URL, `redis://:PASS@host`, or
$ODHSIM_REDIS_PASSWORD, so it need not sit in a scenario file) and keeps its keys under a prefix per scenario
(`live.redis_prefix`; default `odhsim:<scenario>:rcache:`), so two deployments on one Redis never read each other's
entries.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from policies.caching.tiers import CachedResponse

DEFAULT_PREFIX = "odhsim:rcache:"
PASSWORD_ENV = "ODHSIM_REDIS_PASSWORD"
ChangeCallback = Callable[[bool, str], None]


def scenario_prefix(scenario_name: str) -> str:
    """The default key prefix of a scenario's entries: `odhsim:<scenario>:rcache:`."""
    return f"odhsim:{scenario_name}:rcache:"


class RedisSharedTier:
    """`SharedTier` over Redis: values are the cached response bytes, stored with SET PX (the TTL)."""

    def __init__(
        self,
        client: redis.Redis,
        prefix: str = DEFAULT_PREFIX,
        backoff_s: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.client = client
        self.prefix = prefix
        self.backoff_s = float(backoff_s)
        self.clock = clock
        self.down_until = -float("inf")
        self.errors = 0
        self.skipped = 0  # calls not sent because the tier was down
        self.last_error = ""
        self.up = True  # the last call's outcome (True before the first: the tier connects lazily)
        self.on_change: ChangeCallback | None = None
        self.blocked: str | None = None
        """Set by a cache_down fault (runtime.faults) when serve did not start this Redis: every call fails as a
        refused connection would, naming the fault, and the tier goes down as it would for a dead server."""

    def _key(self, key: int) -> str:
        return f"{self.prefix}{key:016x}"

    @property
    def is_down(self) -> bool:
        return self.clock() < self.down_until

    def _usable(self) -> bool:
        if self.is_down:
            self.skipped += 1
            return False
        if self.blocked is not None:
            self._failed(redis.ConnectionError(f"connection blocked by fault {self.blocked}"))
            return False
        return True

    def _failed(self, err: Exception) -> None:
        self.errors += 1
        self.last_error = f"{type(err).__name__}: {err}"
        self.down_until = self.clock() + self.backoff_s
        self._set_up(False, self.last_error)

    def _ok(self) -> None:
        if not self.up:
            self._set_up(True, "answering again")

    def _set_up(self, up: bool, detail: str) -> None:
        if up == self.up:
            return
        self.up = up
        if self.on_change is not None:
            with contextlib.suppress(Exception):  # an observer's failure must not fail a request
                self.on_change(up, detail)

    def get(self, now: float, key: int) -> CachedResponse | None:
        if not self._usable():
            return None
        try:
            pipe = self.client.pipeline(transaction=False)
            pipe.get(self._key(key))
            pipe.pttl(self._key(key))
            value, pttl = pipe.execute()
        except (redis.RedisError, OSError) as err:
            self._failed(err)
            return None
        self._ok()
        if value is None:
            return None
        expires = now + pttl / 1000.0 if isinstance(pttl, int) and pttl > 0 else None
        return CachedResponse(bytes(value), len(value), expires)

    def put(self, now: float, key: int, value: object, size_bytes: int, ttl_s: float | None) -> None:
        if not isinstance(value, bytes):
            raise TypeError(f"the Redis tier stores response bytes, not {type(value).__name__}")
        if not self._usable():
            return
        try:
            if ttl_s is None:
                self.client.set(self._key(key), value)
            else:
                self.client.set(self._key(key), value, px=max(1, round(ttl_s * 1000.0)))
        except (redis.RedisError, OSError) as err:
            self._failed(err)
            return
        self._ok()

    def close(self) -> None:
        with contextlib.suppress(redis.RedisError, OSError):
            self.client.close()


def shared_tier_from_url(
    url: str | None,
    *,
    socket_timeout_s: float = 0.1,
    backoff_s: float = 5.0,
    prefix: str = DEFAULT_PREFIX,
    password: str | None = None,
) -> RedisSharedTier | None:
    """A Redis tier for `LiveConfig.redis_url` (None: no shared tier). Connects lazily, on first use.

    The password: the URL's when it has one, else `password`, else $ODHSIM_REDIS_PASSWORD (unset: none)."""
    if url is None:
        return None
    if password is None:
        password = os.environ.get(PASSWORD_ENV) or None
    client = redis.Redis.from_url(
        url,
        password=password,  # a password in the URL takes precedence (redis-py applies the URL's options last)
        socket_timeout=socket_timeout_s,
        socket_connect_timeout=socket_timeout_s,
        retry=Retry(NoBackoff(), 0),  # no silent retries: one failure marks the tier down (see the module doc)
        health_check_interval=0,
    )
    return RedisSharedTier(client, prefix=prefix, backoff_s=backoff_s)
