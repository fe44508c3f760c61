"""User-facing errors: each names the file, line or field at fault, so the CLI prints it without a traceback."""

from __future__ import annotations


class OdhsimError(Exception):
    """Base class for every error a user can cause with bad input; the CLI prints its message and exits 2."""


class ScenarioError(OdhsimError):
    """A scenario file (or a --set override) is invalid."""


class TraceError(OdhsimError):
    """A trace file is malformed; the message names the file and the line number."""


class CatalogError(OdhsimError):
    """An unknown GPU, model or profile was asked for; the message lists the known ones."""
