"""What every CLI command shares: consoles that do not cut tables when piped, output paths checked before a run,
JSON for `--json`, and loud warnings. Kept out of cli.py so the commands stay short."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

from rich.console import Console, ConsoleDimensions
from rich.markup import escape

from odhsim.errors import OdhsimError

PIPED_WIDTH = 1000
"""Console width when output is not a terminal (and $COLUMNS is unset): wide enough that no table is cut."""


def _piped(stream: Any) -> bool:
    try:
        return not stream.isatty()
    except (AttributeError, ValueError):  # a closed or replaced stream
        return True


class _SizedAtPrint(Console):
    """A console that takes its width when it prints, not when it is made: the commands' consoles are module-level,
    so one made while another command (or test runner) had other $COLUMNS or another stdout would keep that width.
    $COLUMNS wins; piped output gets PIPED_WIDTH; a terminal its own width."""

    @property
    def size(self) -> ConsoleDimensions:
        dims = super().size
        columns = os.environ.get("COLUMNS", "")
        if columns.isdigit():
            return ConsoleDimensions(int(columns), dims.height)
        if _piped(self.file):
            return ConsoleDimensions(PIPED_WIDTH, dims.height)
        return dims

    @size.setter
    def size(self, new_size: tuple[int, int]) -> None:
        Console.size.fset(self, new_size)  # type: ignore[attr-defined]


def make_console(*, stderr: bool = False) -> Console:
    """A rich console; piped output gets PIPED_WIDTH columns instead of rich's 80, so tables and paths stay whole."""
    environ = {k: v for k, v in os.environ.items() if k != "COLUMNS"}  # read at each print instead (size)
    return _SizedAtPrint(stderr=stderr, _environ=environ)


class OutPathError(OdhsimError):
    """An --out path that cannot be written; raised before any simulation runs."""


def _first_existing(path: Path) -> Path:
    for p in (path, *path.parents):
        if p.exists():
            return p
    return Path.cwd()


def _probe_write(base: Path, path: Path, option: str) -> None:
    """Create and remove a scratch folder in `base`: permission bits do not tell (root, read-only mounts, /proc)."""
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".odhsim-probe-", dir=base))
    except OSError as err:
        raise OutPathError(f"{option} {path}: cannot write in {base} ({err.strerror or err})") from None


def check_out_dir(path: Path | None, option: str = "--out") -> None:
    """`path` must be a folder or creatable as one: not a file, not under a file, and writable."""
    if path is None:
        return
    if path.exists() and not path.is_dir():
        raise OutPathError(f"{option} {path}: is a file; give a folder (it is created if missing)")
    base = _first_existing(path)
    if not base.is_dir():
        raise OutPathError(f"{option} {path}: {base} is a file, so no folder can be made under it")
    if not os.access(base, os.W_OK | os.X_OK):
        raise OutPathError(f"{option} {path}: {base} is not writable")
    _probe_write(base, path, option)


def check_out_file(path: Path | None, option: str = "--out") -> None:
    """`path` must be a file or creatable as one: not a folder, its parent not under a file, and writable."""
    if path is None:
        return
    if path.is_dir():
        raise OutPathError(f"{option} {path}: is a folder; give a file name")
    base = _first_existing(path.parent)
    if not base.is_dir():
        raise OutPathError(f"{option} {path}: {base} is a file, so nothing can be written under it")
    if not os.access(base, os.W_OK | os.X_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise OutPathError(f"{option} {path}: not writable")
    _probe_write(base, path, option)


def check_seed(seed: int | None, what: str = "--seed") -> None:
    """Seeds feed numpy's SeedSequence, which takes non-negative integers only."""
    if seed is not None and seed < 0:
        raise OdhsimError(f"{what}: {seed} is negative; a seed is a non-negative integer")


def to_json(value: Any) -> str:
    """Plain JSON (NaN and infinities as null) for `--json` output."""
    from odhsim.results.run_result import json_safe  # pandas: only when JSON is asked for

    return json.dumps(json_safe(value), indent=2, allow_nan=False)


def frame_records(frame: Any) -> list[dict[str, Any]]:
    """A DataFrame as a list of row dicts, ready for to_json."""
    return [{str(k): v for k, v in row.items()} for row in frame.to_dict(orient="records")]


def print_warnings(console: Console, warnings: list[str] | None, prefix: str = "warning") -> None:
    """Each run-level warning in yellow, escaped (warnings carry model names, paths and user text)."""
    for text in warnings or []:
        console.print(f"[bold yellow]{prefix}:[/] [yellow]{escape(str(text))}[/]", soft_wrap=True, highlight=False)
