"""The base every routing plugin shares: a TYPE (as llm-d spells it) and a configurable instance name."""

from __future__ import annotations


class Plugin:
    """`name` is the plugin's name in the router configuration (defaults to its type)."""

    TYPE = ""
    __slots__ = ("name",)

    def __init__(self) -> None:
        self.name = self.TYPE
