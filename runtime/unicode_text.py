"""Lone UTF-16 surrogates in JSON input: found before any string reaches a tokenizer, a cache key or a response.

JSON may spell a surrogate half alone (`"\\ud800"`); Python's `json` then yields a `str` that cannot be encoded as
UTF-8, so the first `.encode()` (tokenizer, hashing, the JSON answer that echoes it) raises. Bodies are decoded as
strict UTF-8 first (which refuses surrogates written as raw bytes, as RFC 8259 requires), so an escape is the only
way in; the parsed document is walked only when the text holds such an escape.
"""

from __future__ import annotations

import re
from typing import Any

_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")
_LONE = re.compile("[\ud800-\udfff]")


def _safe(key: Any) -> str:
    return str(key).encode("utf-8", "backslashreplace").decode("utf-8")


def _bad(s: str) -> bool:
    return _LONE.search(s) is not None


def lone_surrogate_path(doc: Any, text: str | None = None) -> str | None:
    """The dotted path (`prompt`, `stop.1`, `inputs.0.data.0`) of the first string or key in `doc` holding a lone
    surrogate, or None. With the JSON `text` it was parsed from, a text without a surrogate escape is not walked."""
    if text is not None and _SURROGATE_ESCAPE.search(text) is None:
        return None
    stack: list[tuple[Any, str]] = [(doc, "")]
    while stack:
        item, path = stack.pop()
        if isinstance(item, str):
            if _bad(item):
                return path or "body"
        elif isinstance(item, dict):
            for key, value in reversed(list(item.items())):
                sub = f"{path}.{_safe(key)}" if path else _safe(key)
                if isinstance(key, str) and _bad(key):
                    return sub
                stack.append((value, sub))
        elif isinstance(item, list):
            stack.extend((value, f"{path}.{i}" if path else str(i)) for i, value in reversed(list(enumerate(item))))
    return None


def lone_surrogate_message(path: str) -> str:
    """The 400 message for a lone surrogate at `path`."""
    return f"{path}: contains a lone UTF-16 surrogate (e.g. \\ud800); text must be valid Unicode"
