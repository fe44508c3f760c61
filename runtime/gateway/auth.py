"""API keys: who is calling (tenant), how important they are (priority class) and which models they may use.

Keys are given as lines `key:tenant:priority[:model,model...]` in a file (`#` comments, blank lines skipped) or in
$ODHSIM_API_KEYS as `key:tenant:priority[:model|model...],...`. Only SHA-256 digests are kept in memory, and a
lookup compares the presented key's digest with *every* stored digest using `hmac.compare_digest`, so neither
the comparison nor the number of comparisons depends on where (or whether) the key matched.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from policies.flowcontrol.priority import PRIORITY_CLASSES

ENV_VAR = "ODHSIM_API_KEYS"


class KeyFileError(ValueError):
    """A malformed key line; the message names the source (file or env var) and the line."""


@dataclass(frozen=True, slots=True)
class Principal:
    """The caller behind a key. `models` None: every model."""

    tenant: str
    priority: str
    models: frozenset[str] | None = None

    def may_use(self, model: str) -> bool:
        return self.models is None or model in self.models


ANONYMOUS = Principal("anonymous", "normal")


@dataclass(frozen=True, slots=True)
class _Entry:
    digest: bytes
    principal: Principal


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode("utf-8")).digest()


def _parse_entry(text: str, where: str, model_sep: str) -> _Entry:
    parts = text.split(":")
    if len(parts) not in (3, 4):
        raise KeyFileError(f"{where}: expected key:tenant:priority[:models], got {len(parts)} field(s)")
    key, tenant, priority = (p.strip() for p in parts[:3])
    if not key:
        raise KeyFileError(f"{where}: empty key")
    if not tenant:
        raise KeyFileError(f"{where}: empty tenant")
    if priority not in PRIORITY_CLASSES:
        raise KeyFileError(f"{where}: priority {priority!r} is not one of {', '.join(PRIORITY_CLASSES)}")
    models: frozenset[str] | None = None
    if len(parts) == 4:
        names = [m.strip() for m in parts[3].split(model_sep)]
        if not all(names):
            raise KeyFileError(f"{where}: empty model name in {parts[3]!r}")
        models = frozenset(names)
    return _Entry(_digest(key), Principal(tenant, priority, models))


class KeyStore:
    """The accepted keys (as digests) and their principals."""

    __slots__ = ("_entries",)

    def __init__(self, entries: Iterable[_Entry] = ()) -> None:
        self._entries: tuple[_Entry, ...] = tuple(entries)
        digests = [e.digest for e in self._entries]
        if len(set(digests)) != len(digests):
            raise KeyFileError("the same API key is listed twice")

    def __len__(self) -> int:
        return len(self._entries)

    @classmethod
    def from_lines(cls, lines: Iterable[str], source: str) -> KeyStore:
        """Parse key-file lines; a malformed line raises KeyFileError naming `source` and the line number."""
        entries = []
        for n, raw in enumerate(lines, start=1):
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            entries.append(_parse_entry(line, f"{source}, line {n}", ","))
        return cls(entries)

    @classmethod
    def from_file(cls, path: str | Path) -> KeyStore:
        p = Path(path)
        try:
            text = p.read_text(encoding="utf-8")
        except OSError as err:
            raise KeyFileError(f"cannot read API key file {p}: {err.strerror or err}") from None
        return cls.from_lines(text.splitlines(), str(p))

    @classmethod
    def from_env(cls, value: str, source: str = ENV_VAR) -> KeyStore:
        """`key:tenant:priority[:m1|m2],...`: comma-separated entries, models separated by `|`."""
        entries = []
        for n, item in enumerate(value.split(","), start=1):
            item = item.strip()
            if item:
                entries.append(_parse_entry(item, f"${source}, entry {n}", "|"))
        return cls(entries)

    @classmethod
    def from_keys(cls, keys: dict[str, Principal]) -> KeyStore:
        """Programmatic construction (tests, embedding); plaintext keys are hashed at once."""
        return cls(_Entry(_digest(k), p) for k, p in keys.items())

    def lookup(self, key: str) -> Principal | None:
        """The principal of `key`, or None; compares against every stored digest, without an early exit."""
        presented = _digest(key)
        found: Principal | None = None
        for entry in self._entries:
            if hmac.compare_digest(entry.digest, presented):
                found = entry.principal
        return found


def load_keys(api_keys_file: str | None, base_dir: Path | str = ".", env: dict[str, str] | None = None) -> KeyStore:
    """The scenario's keys: the file (relative to the scenario's folder) if named, else $ODHSIM_API_KEYS, else none."""
    if api_keys_file is not None:
        path = Path(api_keys_file)
        return KeyStore.from_file(path if path.is_absolute() else Path(base_dir) / path)
    value = (os.environ if env is None else env).get(ENV_VAR, "")
    return KeyStore.from_env(value)


def bearer_token(authorization: str | None) -> str | None:
    """The key from an `Authorization: Bearer KEY` header (None when absent or another scheme)."""
    if not authorization:
        return None
    scheme, _, token = authorization.strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        return None
    return token


def lower_priority(granted: str, requested: str | None) -> str:
    """The class to use: `requested` when it is not more important than the key's `granted` class.

    Raises ValueError for an unknown class name; a request for a higher class keeps the granted one.
    """
    if requested is None:
        return granted
    requested = requested.strip().lower()
    if requested not in PRIORITY_CLASSES:
        raise ValueError(f"x-odhsim-priority must be one of {', '.join(PRIORITY_CLASSES)}, got {requested!r}")
    return max(granted, requested, key=PRIORITY_CLASSES.index)
