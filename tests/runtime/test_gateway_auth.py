"""API keys: parsing (file and env), digests only, constant-time lookup, model allow-lists, priority lowering."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
from pathlib import Path

import httpx
import pytest

from runtime.gateway import auth
from runtime.gateway.auth import (
    ENV_VAR,
    KeyFileError,
    KeyStore,
    Principal,
    bearer_token,
    load_keys,
    lower_priority,
)
from runtime.gateway.core import build_gateway
from tests.runtime.gateway_fakes import make_keys, scenario

pytestmark = pytest.mark.timeout(10)


def test_key_file_lines_comments_and_models(tmp_path: Path) -> None:
    f = tmp_path / "keys.txt"
    f.write_text(
        "# team keys\n\nsk-a:acme:critical\n  sk-b : batch : low : chat, digits  \nsk-c:guest:normal # not a comment\n"
    )
    with pytest.raises(KeyFileError, match=r"keys\.txt, line 5: priority 'normal # not a comment'"):
        KeyStore.from_file(f)
    f.write_text("# team keys\n\nsk-a:acme:critical\n  sk-b : batch : low : chat, digits  \n")
    store = KeyStore.from_file(f)
    assert len(store) == 2
    assert store.lookup("sk-a") == Principal("acme", "critical", None)
    assert store.lookup("sk-b") == Principal("batch", "low", frozenset({"chat", "digits"}))
    assert store.lookup("sk-b").may_use("chat") and not store.lookup("sk-b").may_use("other")
    assert store.lookup("sk-a").may_use("anything")
    assert store.lookup("sk-x") is None
    assert store.lookup("") is None


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("sk-a:acme", "expected key:tenant:priority"),
        ("sk-a:acme:urgent", "priority 'urgent' is not one of critical, high, normal, low"),
        (":acme:low", "empty key"),
        ("sk-a::low", "empty tenant"),
        ("sk-a:acme:low:chat,,x", "empty model name"),
        ("sk-a:acme:low:chat:extra", "expected key:tenant:priority"),
    ],
)
def test_malformed_line_names_file_and_line(tmp_path: Path, line: str, message: str) -> None:
    f = tmp_path / "keys.txt"
    f.write_text(f"# header\nsk-ok:t:high\n{line}\n")
    with pytest.raises(KeyFileError) as info:
        KeyStore.from_file(f)
    assert f"{f}, line 3:" in str(info.value)
    assert message in str(info.value)


def test_missing_file_and_duplicate_key(tmp_path: Path) -> None:
    with pytest.raises(KeyFileError, match="cannot read API key file"):
        KeyStore.from_file(tmp_path / "nope.txt")
    with pytest.raises(KeyFileError, match="listed twice"):
        KeyStore.from_lines(["k:a:low", "k:b:high"], "x")


def test_env_var_format_and_load_keys(tmp_path: Path) -> None:
    env = {ENV_VAR: "sk-1:acme:high, sk-2:batch:low:chat|digits,"}
    store = load_keys(None, tmp_path, env=env)
    assert store.lookup("sk-1") == Principal("acme", "high")
    assert store.lookup("sk-2") == Principal("batch", "low", frozenset({"chat", "digits"}))
    with pytest.raises(KeyFileError, match=r"\$ODHSIM_API_KEYS, entry 2: priority 'top'"):
        load_keys(None, env={ENV_VAR: "a:b:low,c:d:top"})
    assert len(load_keys(None, env={})) == 0
    # A relative key file resolves against the scenario's folder and wins over the env var.
    (tmp_path / "k.txt").write_text("sk-f:file:normal\n")
    assert load_keys("k.txt", tmp_path, env=env).lookup("sk-f") == Principal("file", "normal")
    assert load_keys("k.txt", tmp_path, env=env).lookup("sk-1") is None


def test_only_digests_are_stored_and_every_digest_is_compared(monkeypatch: pytest.MonkeyPatch) -> None:
    store = KeyStore.from_lines(["secret-one:a:low", "secret-two:b:high", "secret-three:c:normal"], "x")
    want = {hashlib.sha256(k.encode()).digest() for k in ("secret-one", "secret-two", "secret-three")}
    assert {e.digest for e in store._entries} == want
    assert all("secret" not in repr(e) for e in store._entries)
    calls: list[bytes] = []
    real = hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        calls.append(a)
        return real(a, b)

    monkeypatch.setattr(auth.hmac, "compare_digest", spy)
    assert store.lookup("secret-one") == Principal("a", "low")  # matches the first entry ...
    assert len(calls) == 3  # ... and still compares against every stored digest
    calls.clear()
    assert store.lookup("wrong") is None
    assert len(calls) == 3


def test_bearer_token_and_priority_lowering() -> None:
    assert bearer_token("Bearer sk-1") == "sk-1"
    assert bearer_token("bearer   sk-1 ") == "sk-1"
    assert bearer_token("Basic abc") is None
    assert bearer_token("Bearer ") is None
    assert bearer_token(None) is None
    assert lower_priority("high", None) == "high"
    assert lower_priority("high", "low") == "low"  # may lower ...
    assert lower_priority("high", "critical") == "high"  # ... never raise
    assert lower_priority("low", "Normal") == "low"
    with pytest.raises(ValueError, match="x-odhsim-priority must be one of"):
        lower_priority("high", "urgent")


def test_anonymous_access_only_when_the_scenario_allows_it() -> None:
    """`live.allow_anonymous`: no Authorization header is tenant "anonymous" at priority normal; a wrong key is
    still refused. (In-process ASGI: these answers need no replica.)"""

    async def ask(allow: bool, headers: dict[str, str]) -> httpx.Response:
        gw = build_gateway(scenario(live={"allow_anonymous": allow}), keys=make_keys())
        transport = httpx.ASGITransport(app=gw.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://gw") as client:
            return await client.get("/v1/models", headers=headers)

    open_models = asyncio.run(ask(True, {}))
    assert open_models.status_code == 200 and len(open_models.json()["data"]) == 4
    assert asyncio.run(ask(True, {"Authorization": "Bearer nope"})).status_code == 401
    closed = asyncio.run(ask(False, {}))
    assert closed.status_code == 401 and closed.json()["error"]["type"] == "authentication_error"
