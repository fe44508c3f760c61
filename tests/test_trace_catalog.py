"""Trace catalogue and downloader, tested offline with httpx.MockTransport serving the repository's copies."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from odhsim.errors import CatalogError, TraceError
from odhsim.workload.catalog import (
    CATALOG_PATH,
    TraceEntry,
    UnverifiedTraceWarning,
    fetch_trace,
    get_entry,
    load_catalog,
    sha256_file,
)
from tests.conftest import DATA_DIR, data_file

TRACES = DATA_DIR
LOCAL = {
    "azure-2023-conv": TRACES / "azure_llm_2023" / "AzureLLMInferenceTrace_conv.csv",
    "azure-2023-code": TRACES / "azure_llm_2023" / "AzureLLMInferenceTrace_code.csv",
    "mooncake-conversation": TRACES / "mooncake" / "conversation_trace.jsonl",
}


def serving(body: bytes, status: int = 200) -> tuple[httpx.Client, list[str]]:
    seen: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(str(request.url))
        return httpx.Response(status, content=body)

    return httpx.Client(transport=httpx.MockTransport(handler)), seen


def test_catalogue_lists_the_public_traces() -> None:
    cat = load_catalog()
    assert CATALOG_PATH.name == "catalog.yaml"
    assert set(cat) == {
        "azure-2023-conv",
        "azure-2023-code",
        "azure-2024-conv",
        "azure-2024-code",
        "mooncake-conversation",
    }
    for e in cat.values():
        assert e.url.startswith("https://") and e.license in {"CC-BY-4.0", "Apache-2.0"} and e.citation
        assert e.format in {"azure2023", "azure2024", "mooncake"}
        assert e.url.endswith(e.filename)
    assert cat["azure-2024-conv"].sha256 is None
    assert "kvcache-ai/Mooncake" in cat["mooncake-conversation"].url


@pytest.mark.parametrize("name", sorted(LOCAL))
def test_recorded_checksums_match_the_committed_copies(name: str) -> None:
    data_file(*LOCAL[name].relative_to(DATA_DIR).parts)
    entry = get_entry(name)
    assert sha256_file(LOCAL[name]) == entry.sha256
    assert LOCAL[name].stat().st_size == entry.bytes


def test_fetch_verifies_and_renames_into_place(tmp_path: Path) -> None:
    src = data_file("mooncake", "conversation_trace.jsonl")
    client, seen = serving(src.read_bytes())
    path = fetch_trace("mooncake-conversation", tmp_path / "dl", client)
    assert path == tmp_path / "dl" / "conversation_trace.jsonl"
    assert path.read_bytes() == src.read_bytes() and seen == [get_entry("mooncake-conversation").url]
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temporary file left
    assert fetch_trace("mooncake-conversation", tmp_path / "dl", client) == path and len(seen) == 1  # cached


def test_checksum_mismatch_discards_the_download(tmp_path: Path) -> None:
    client, _ = serving(b"not the trace\n")
    with pytest.raises(TraceError, match="mooncake-conversation: checksum mismatch"):
        fetch_trace("mooncake-conversation", tmp_path, client)
    assert list(tmp_path.iterdir()) == []


def test_network_and_http_failures(tmp_path: Path) -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    with pytest.raises(TraceError, match=r"azure-2023-code: download failed .*ConnectError"):
        fetch_trace("azure-2023-code", tmp_path, httpx.Client(transport=httpx.MockTransport(refuse)))
    client, _ = serving(b"gone", status=404)
    with pytest.raises(TraceError, match="HTTP 404"):
        fetch_trace("azure-2023-code", tmp_path, client)
    assert list(tmp_path.iterdir()) == []


def test_unknown_name_lists_known_ones(tmp_path: Path) -> None:
    with pytest.raises(CatalogError, match="unknown trace 'azure-2099'; known: azure-2023-conv, azure-2023-code"):
        fetch_trace("azure-2099", tmp_path)


def test_without_a_recorded_checksum_it_warns_with_the_computed_one(tmp_path: Path) -> None:
    entry = TraceEntry("tiny", "https://example.org/tiny.csv", "tiny.csv", "azure2023", "CC0", "none")
    client, _ = serving(b"TIMESTAMP,ContextTokens,GeneratedTokens\n")
    with pytest.warns(UnverifiedTraceWarning, match=r"no checksum recorded.*sha256 [0-9a-f]{64}"):
        path = fetch_trace("tiny", tmp_path, client, catalog={"tiny": entry})
    assert path.read_bytes().startswith(b"TIMESTAMP")
