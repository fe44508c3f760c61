"""The catalogue of public traces (`traces/catalog.yaml`) and a checksum-verifying downloader.

Why: the repository carries the small public traces itself (traces/, each with its licence) so a fresh clone
runs its tests and scenarios offline; `local_copy` finds that committed copy. The week-long Azure 2024 traces are
too large to commit, so `fetch_trace` downloads a trace on request, streaming to a temporary file that is renamed
into place only after its checksum matches, so a half-finished or corrupted download never looks like a trace.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import yaml

from odhsim.errors import CatalogError, TraceError

CATALOG_PATH = Path(__file__).resolve().parents[2] / "traces" / "catalog.yaml"
"""The manifest in the repository's `traces/` folder (a data folder, not a Python package)."""
TRACES_DIR = CATALOG_PATH.parent
"""Where the committed copies live; an entry's `local` path is relative to it."""
_CHUNK = 1 << 20


class UnverifiedTraceWarning(UserWarning):
    """A trace was downloaded but the catalogue records no checksum to compare it with."""


@dataclass(frozen=True)
class TraceEntry:
    name: str
    url: str
    filename: str
    format: str
    license: str
    citation: str
    description: str = ""
    sha256: str | None = None
    bytes: int | None = None
    local: str | None = None
    """The committed copy under traces/ (relative path), or None when the trace is only downloadable."""


def load_catalog(path: Path | str | None = None) -> dict[str, TraceEntry]:
    """Entries by name, in file order."""
    path = Path(path) if path is not None else CATALOG_PATH
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        return {e["name"]: TraceEntry(**e) for e in raw.get("traces", [])}
    except (OSError, yaml.YAMLError, TypeError, KeyError) as e:
        raise CatalogError(f"{path}: cannot read the trace catalogue ({e})") from None


def get_entry(name: str, catalog: dict[str, TraceEntry] | None = None) -> TraceEntry:
    catalog = load_catalog() if catalog is None else catalog
    if name not in catalog:
        raise CatalogError(f"unknown trace {name!r}; known: {', '.join(catalog)}")
    return catalog[name]


def local_copy(entry: TraceEntry, traces_dir: Path = TRACES_DIR) -> Path:
    """The repository's committed copy of `entry`; CatalogError when it has none or the file is missing."""
    if entry.local is None:
        raise CatalogError(f"{entry.name}: no committed copy; download it with `odhsim traces fetch {entry.name}`")
    path = traces_dir / entry.local
    if not path.is_file():
        raise CatalogError(f"{entry.name}: committed copy missing: {path} (restore it with `git checkout -- traces/`)")
    return path


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(_CHUNK):
            h.update(block)
    return h.hexdigest()


def fetch_trace(
    name: str,
    dest_dir: Path | str,
    client: httpx.Client | None = None,
    *,
    catalog: dict[str, TraceEntry] | None = None,
    force: bool = False,
) -> Path:
    """Download trace `name` into dest_dir and return its path.

    A file already there is kept when its checksum matches (or none is recorded) unless `force`. Without a
    recorded checksum the download is kept and an `UnverifiedTraceWarning` gives the sha256 it computed.
    Network failures and checksum mismatches raise `TraceError`; the temporary file is always removed.
    """
    entry = get_entry(name, catalog)
    dest_dir = Path(dest_dir)
    dest_dir.mkdir(parents=True, exist_ok=True)
    target = dest_dir / entry.filename
    if target.is_file() and not force and (entry.sha256 is None or sha256_file(target) == entry.sha256):
        return target
    own_client = client is None
    http = client or httpx.Client(timeout=httpx.Timeout(30.0, read=300.0))
    fd, tmp_name = tempfile.mkstemp(prefix=f".{entry.filename}.", suffix=".part", dir=dest_dir)
    tmp = Path(tmp_name)
    try:
        digest, size = _download(http, entry, fd)
        if entry.sha256 is not None and digest != entry.sha256:
            raise TraceError(
                f"{name}: checksum mismatch for {entry.url}: got sha256 {digest} ({size} bytes), "
                f"expected {entry.sha256}; the download was discarded"
            )
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
        if own_client:
            http.close()
    if entry.sha256 is None:
        warnings.warn(
            f"{name}: no checksum recorded in the catalogue; downloaded {size} bytes with sha256 {digest}",
            UnverifiedTraceWarning,
            stacklevel=2,
        )
    return target


def _download(http: httpx.Client, entry: TraceEntry, fd: int) -> tuple[str, int]:
    h, size = hashlib.sha256(), 0
    try:
        with os.fdopen(fd, "wb") as out, http.stream("GET", entry.url, follow_redirects=True) as resp:
            resp.raise_for_status()
            for block in resp.iter_bytes(_CHUNK):
                out.write(block)
                h.update(block)
                size += len(block)
    except httpx.HTTPStatusError as e:
        raise TraceError(f"{entry.name}: download failed: HTTP {e.response.status_code} from {entry.url}") from None
    except httpx.HTTPError as e:
        raise TraceError(f"{entry.name}: download failed from {entry.url}: {type(e).__name__}: {e}") from None
    return h.hexdigest(), size


def describe(entry: TraceEntry) -> dict[str, Any]:
    """The entry as a plain dict (for `odhsim traces list`)."""
    return dict(entry.__dict__)
