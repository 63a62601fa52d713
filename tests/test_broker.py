"""The token broker on 127.0.0.1, upstream a RealtimePeer (or a scripted stand-in) on 127.0.0.1.

End to end: broker -> peer client_secrets -> EphemeralKeyProvider -> HttpSignaling ->
AiortcTransport -> a real call on the peer (which accepts only minted ek_ keys).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import io
import json
import logging
import os
import signal
import socket
import sqlite3
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from fsm_voice.broker import (
    HEALTH_PATH,
    TOKEN_PATH,
    AuditEntry,
    AuditLog,
    BrokerConfig,
    ClientRegistry,
    RateLimiter,
    RatePolicy,
    TokenBroker,
    hash_secret,
)
from fsm_voice.broker import cli as broker_cli
from fsm_voice.errors import ConfigError, ErrorSource, Severity, VoiceError
from fsm_voice.peer import RealtimePeer
from fsm_voice.ports import TransportSignal
from fsm_voice.signaling import HttpSignaling
from fsm_voice.tokens import EphemeralKeyProvider, key_fingerprint
from fsm_voice.transport import AiortcTransport

pytestmark = pytest.mark.anyio

API_KEY = "sk-test-broker-3f9c1d7e5a2b4c6d8e0f1a2b3c4d5e6f"
CLIENTS = {"app-1": "secret-one-7c2e9a41b3d5f6e8", "app-2": "secret-two-1a2b3c4d5e6f7a8b"}
SESSION = {
    "type": "realtime",
    "model": "gpt-realtime",
    "instructions": "You are the broker test voice.",
    "audio": {"output": {"voice": "verse"}},
}


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class FakeClock:
    def __init__(self, t: float) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


# ------------------------------------------------------------------------------ rigs


@pytest.fixture
async def peer() -> AsyncIterator[RealtimePeer]:
    async with RealtimePeer(api_keys={API_KEY}, require_ephemeral=True, reply="tone") as p:
        yield p


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


def make_broker(
    upstream: str,
    audit: AuditLog | str | Path,
    *,
    api_key: str = API_KEY,
    clock: Callable[[], float] | None = None,
    now: Callable[[], float] | None = None,
    **config: Any,
) -> TokenBroker:
    config.setdefault("session_config", SESSION)
    kwargs: dict[str, Any] = {}
    if clock is not None:
        kwargs["clock"] = clock
    if now is not None:
        kwargs["now"] = now
    return TokenBroker(
        BrokerConfig(upstream_base=upstream, **config),
        api_key=api_key,
        clients=ClientRegistry.from_secrets(CLIENTS),
        audit=audit,
        **kwargs,
    )


@pytest.fixture
async def broker(peer: RealtimePeer, tmp_path: Path) -> AsyncIterator[TokenBroker]:
    rate = RatePolicy(capacity=1000, refill_per_second=100)
    async with make_broker(peer.base_url, tmp_path / "audit.sqlite3", rate=rate) as b:
        yield b


def bearer(client_id: str = "app-1", secret: str | None = None) -> dict[str, str]:
    return {
        "Authorization": f"Bearer {CLIENTS[client_id] if secret is None else secret}",
        "X-Client-Id": client_id,
    }


def basic(client_id: str, secret: str) -> dict[str, str]:
    token = base64.b64encode(f"{client_id}:{secret}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


async def request(
    http: aiohttp.ClientSession,
    url: str,
    *,
    method: str = "POST",
    headers: Mapping[str, str] | None = None,
    data: Any = None,
) -> tuple[int, dict[str, str], Any]:
    async with http.request(method, url, headers=dict(headers or {}), data=data) as r:
        raw = await r.read()
        body: Any = json.loads(raw) if raw else None
        return r.status, dict(r.headers), body


def assert_error(body: Any, code: str, type: str = "invalid_request_error") -> None:
    assert set(body) == {"error"}
    assert set(body["error"]) == {"type", "code", "message", "param"}
    assert body["error"]["code"] == code
    assert body["error"]["type"] == type
    assert isinstance(body["error"]["message"], str)


class RecordingSink:
    def __init__(self) -> None:
        self.signals: list[TransportSignal] = []
        self.events: list[Mapping[str, Any]] = []
        self.changed = asyncio.Event()

    def signal(self, signal: TransportSignal, detail: str = "") -> None:
        self.signals.append(signal)
        self.changed.set()

    def server_event(self, event: Mapping[str, Any]) -> None:
        self.events.append(event)
        self.changed.set()

    async def wait_for(self, predicate: Callable[[], bool], timeout: float = 15.0) -> None:
        async def loop() -> None:
            while not predicate():
                self.changed.clear()
                await self.changed.wait()

        await asyncio.wait_for(loop(), timeout)


# ------------------------------------------------------------------------------ end to end


async def test_end_to_end_real_call_with_brokered_key(
    broker: TokenBroker, peer: RealtimePeer
) -> None:
    provider = EphemeralKeyProvider(
        broker.token_url, client_id="app-1", client_secret=CLIENTS["app-1"]
    )
    signaling = HttpSignaling(peer.base_url, provider)
    transport = AiortcTransport(signaling, host_addresses=["127.0.0.1"])
    sink = RecordingSink()
    try:
        await transport.open(sink)  # the POST /v1/realtime/calls got its 201
        await sink.wait_for(lambda: TransportSignal.CHANNEL_OPEN in sink.signals)
        await sink.wait_for(lambda: any(e.get("type") == "session.created" for e in sink.events))
        assert transport.call_id in peer.calls
        # the session configured on the broker travelled with the key
        call = peer.calls[transport.call_id]
        assert call.session["audio"]["output"]["voice"] == "verse"
        assert call.session["instructions"] == SESSION["instructions"]
        created = next(e for e in sink.events if e.get("type") == "session.created")
        assert created["session"]["audio"]["output"]["voice"] == "verse"
        key = await provider.key()
    finally:
        await transport.close()
        await signaling.aclose()
        await provider.aclose()
    rows = await broker.audit.rows()
    assert [r["outcome"] for r in rows] == ["issued"]
    assert rows[0]["client_id"] == "app-1"
    assert rows[0]["key_id"] == key_fingerprint(key.value)
    assert rows[0]["session_id"] == key.session_id
    assert rows[0]["http_status"] == 200
    assert rows[0]["remote_addr"] == "127.0.0.1"
    assert rows[0]["latency_ms"] >= 0


async def test_expiry_refresh_through_broker(tmp_path: Path) -> None:
    clock = FakeClock(1_700_000_000.0)
    async with (
        RealtimePeer(api_keys={API_KEY}, require_ephemeral=True, now=clock) as peer,
        make_broker(
            peer.base_url, tmp_path / "a.sqlite3", default_expires_after=60, now=clock
        ) as broker,
    ):
        provider = EphemeralKeyProvider(
            broker.token_url, client_id="app-2", client_secret=CLIENTS["app-2"], now=clock
        )
        async with provider, HttpSignaling(peer.base_url, provider) as signaling:
            first = await provider()
            assert first.startswith("ek_")
            # Refresh on expiry (injected clock): no 401 ever reaches signaling.
            clock.t += 61
            second = await provider()
            assert second != first and provider.fetches == 2
            # The backend expires keys our cache still trusts: signaling gets a 401, invalidates
            # the provider, and its one retry carries a fresh key from the broker.
            peer.expire_all_keys()
            with pytest.raises(VoiceError) as info:
                await signaling.exchange("v=0\r\n")
            assert info.value.code == "invalid_offer"  # past authentication
            assert provider.fetches == 3
            # Manual invalidate() forces a refresh too.
            provider.invalidate()
            assert await provider() not in (first, second)
        outcomes = [r["outcome"] for r in await broker.audit.rows()]
        assert outcomes == ["issued"] * 4


async def test_refused_fresh_key_is_fatal(tmp_path: Path) -> None:
    """Keys minted by a different backend: the retry with a fresh key is refused too -> the
    401 is FATAL (no retry loop)."""
    async with (
        RealtimePeer(api_keys={API_KEY}) as elsewhere,
        RealtimePeer(require_ephemeral=True) as peer,
        make_broker(elsewhere.base_url, tmp_path / "a.sqlite3") as broker,
    ):
        provider = EphemeralKeyProvider(
            broker.token_url, client_id="app-1", client_secret=CLIENTS["app-1"]
        )
        async with provider, HttpSignaling(peer.base_url, provider) as signaling:
            with pytest.raises(VoiceError) as info:
                await signaling.exchange("v=0\r\n")
            err = info.value
            assert (err.severity, err.code, err.http_status) == (
                Severity.FATAL,
                "invalid_api_key",
                401,
            )
            assert provider.fetches == 2
            assert await provider() not in str(err)


async def test_expired_key_is_refreshed_during_a_real_connect(
    broker: TokenBroker, peer: RealtimePeer
) -> None:
    provider = EphemeralKeyProvider(
        broker.token_url, client_id="app-1", client_secret=CLIENTS["app-1"]
    )
    signaling = HttpSignaling(peer.base_url, provider)
    transport = AiortcTransport(signaling, host_addresses=["127.0.0.1"])
    sink = RecordingSink()
    try:
        first = await provider()
        peer.expire_all_keys()  # the cached key is now refused by the backend
        await transport.open(sink)  # 401 -> invalidate -> fresh key -> 201
        await sink.wait_for(lambda: TransportSignal.CHANNEL_OPEN in sink.signals)
        assert await provider() != first
        assert provider.fetches == 2
    finally:
        await transport.close()
        await signaling.aclose()
        await provider.aclose()
    assert [r["outcome"] for r in await broker.audit.rows()] == ["issued", "issued"]


async def test_expires_after_is_clamped(http: aiohttp.ClientSession, tmp_path: Path) -> None:
    clock = FakeClock(1_700_000_000.0)
    async with (
        RealtimePeer(api_keys={API_KEY}, now=clock) as peer,
        make_broker(
            peer.base_url,
            tmp_path / "a.sqlite3",
            default_expires_after=45,
            max_expires_after=300,
            now=clock,
        ) as broker,
    ):
        cases = [(None, 45), (100, 100), (100_000, 300), (1, 10), (-5, 10), (10**30, 300)]
        for seconds, expected in cases:
            data = None if seconds is None else json.dumps({"expires_after": {"seconds": seconds}})
            status, headers, body = await request(
                http, broker.token_url, headers=bearer(), data=data
            )
            assert status == 200, body
            assert body["expires_at"] == int(clock.t) + expected
            assert body["value"].startswith("ek_")
            assert body["session_id"].startswith("sess_")
            assert body["key_id"] == key_fingerprint(body["value"])
            assert headers["Cache-Control"] == "no-store"


# ------------------------------------------------------------------------------ rate limiting


async def test_rate_limit_429_with_retry_after(
    http: aiohttp.ClientSession, peer: RealtimePeer, tmp_path: Path
) -> None:
    mono = FakeClock(100.0)
    rate = RatePolicy(capacity=3, refill_per_second=0.4)
    async with make_broker(peer.base_url, tmp_path / "a.sqlite3", clock=mono, rate=rate) as broker:
        statuses = [(await request(http, broker.token_url, headers=bearer()))[0] for _ in range(3)]
        assert statuses == [200, 200, 200]
        status, headers, body = await request(http, broker.token_url, headers=bearer())
        assert status == 429
        assert headers["Retry-After"] == "3"  # 1 token at 0.4/s = 2.5 s -> ceil
        assert_error(body, "rate_limit_exceeded", type="requests")
        # per client: another client is not affected
        assert (await request(http, broker.token_url, headers=bearer("app-2")))[0] == 200
        # the client side classifies it as recoverable and honours Retry-After
        provider = EphemeralKeyProvider(
            broker.token_url, client_id="app-1", client_secret=CLIENTS["app-1"]
        )
        async with provider:
            with pytest.raises(VoiceError) as info:
                await provider()
        assert info.value.severity is Severity.RECOVERABLE
        assert info.value.retry_after == 3.0
        mono.t += 2.5
        assert (await request(http, broker.token_url, headers=bearer()))[0] == 200
        rows = await broker.audit.rows()
        outcomes = [(r["client_id"], r["outcome"], r["http_status"]) for r in rows]
        assert outcomes == [
            ("app-1", "issued", 200),
            ("app-1", "issued", 200),
            ("app-1", "issued", 200),
            ("app-1", "rate_limited", 429),
            ("app-2", "issued", 200),
            ("app-1", "rate_limited", 429),
            ("app-1", "issued", 200),
        ]
        assert all(r["key_id"] is None for r in rows if r["outcome"] != "issued")
        assert peer.stats()["client_secrets_minted"] == 5


async def test_failed_auth_is_rate_limited_per_address_and_client(
    http: aiohttp.ClientSession, peer: RealtimePeer, tmp_path: Path
) -> None:
    mono = FakeClock(0.0)
    limit = RatePolicy(capacity=3, refill_per_second=1.0)
    async with make_broker(
        peer.base_url, tmp_path / "a.sqlite3", clock=mono, auth_failure_rate=limit
    ) as broker:
        for _ in range(3):
            assert (await request(http, broker.token_url, headers=bearer(secret="nope")))[0] == 401
        status, headers, _ = await request(http, broker.token_url, headers=bearer(secret="nope"))
        assert status == 429
        assert headers["Retry-After"] == "1"
        # the guesser is limited, the valid client behind the same address is not
        assert (await request(http, broker.token_url, headers=bearer()))[0] == 200
        mono.t += 1.0
        assert (await request(http, broker.token_url, headers=bearer(secret="nope")))[0] == 401


def test_rate_limiter_unit() -> None:
    clock = FakeClock(0.0)
    limiter = RateLimiter(RatePolicy(capacity=2, refill_per_second=1), clock=clock, max_keys=2)
    assert limiter.acquire("a") is None
    assert limiter.acquire("a") is None
    assert limiter.acquire("a") == pytest.approx(1.0)
    clock.t = 0.5
    assert limiter.acquire("a") == pytest.approx(0.5)
    assert limiter.available("a") == pytest.approx(0.5)
    clock.t = 1.0
    assert limiter.acquire("a") is None
    limiter.acquire("b")
    limiter.acquire("c")  # evicts the least recently used
    assert len(limiter) == 2
    with pytest.raises(ConfigError):
        RatePolicy(capacity=0)
    with pytest.raises(ConfigError):
        RatePolicy(refill_per_second=float("nan"))


# ------------------------------------------------------------------------------ audit log


async def test_audit_log_is_append_only(tmp_path: Path) -> None:
    path = tmp_path / "audit.sqlite3"
    async with AuditLog(path) as audit:
        ids = await asyncio.gather(
            *(
                audit.record(AuditEntry("issued", 200, 1.5, client_id="app-1", key_id="abc"))
                for _ in range(5)
            )
        )
        assert sorted(ids) == [1, 2, 3, 4, 5]
        for sql in (
            "UPDATE audit SET outcome = 'denied_auth'",
            "UPDATE audit SET client_id = NULL WHERE id = 1",
            "DELETE FROM audit",
            "DELETE FROM audit WHERE id = 3",
        ):
            with pytest.raises(sqlite3.DatabaseError, match="append-only"):
                await audit.execute(sql)
        # another connection (another process, an operator's sqlite3 shell) is refused too
        other = sqlite3.connect(path)
        try:
            with pytest.raises(sqlite3.DatabaseError, match="append-only"):
                other.execute("UPDATE audit SET latency_ms = 0")
            with pytest.raises(sqlite3.DatabaseError, match="append-only"):
                other.execute("DELETE FROM audit")
        finally:
            other.close()
        rows = await audit.rows()
        assert len(rows) == 5
        assert {r["outcome"] for r in rows} == {"issued"}
        # appending still works
        await audit.record(AuditEntry("denied_auth", 401, 0.1))
        assert len(await audit.rows()) == 6
    # reopening keeps the rows and the triggers
    async with AuditLog(path) as audit:
        assert len(await audit.rows("outcome = ?", ["issued"])) == 5
        with pytest.raises(sqlite3.DatabaseError):
            await audit.execute("DELETE FROM audit")


def test_audit_entry_refuses_unknown_outcomes_and_odd_text() -> None:
    with pytest.raises(ValueError, match="outcome"):
        AuditEntry("hacked", 200, 0.0)
    entry = AuditEntry("bad_request", 400, 0.0, client_id="x y\n; DROP", detail="a" * 100)
    assert entry.client_id == "?" and entry.detail == "?"


# ------------------------------------------------------------------------------ bad input


async def test_bad_requests(http: aiohttp.ClientSession, broker: TokenBroker) -> None:
    url = broker.token_url

    status, headers, body = await request(http, url)
    assert status == 401
    assert_error(body, "invalid_client")
    assert "Basic" in headers["WWW-Authenticate"]

    _, _, wrong_secret = await request(http, url, headers=bearer(secret="guess"))
    status, _, unknown_client = await request(
        http, url, headers={"Authorization": "Bearer guess", "X-Client-Id": "nobody"}
    )
    assert status == 401
    assert wrong_secret == unknown_client  # no client-enumeration oracle

    for headers in (
        {"Authorization": f"Bearer {CLIENTS['app-1']}"},  # no X-Client-Id
        {"Authorization": "Basic !!!not-base64"},
        {"Authorization": "Basic " + base64.b64encode(b"no-colon").decode()},
        {"Authorization": f"Token {CLIENTS['app-1']}", "X-Client-Id": "app-1"},
        basic("app-1", "wrong"),
        bearer(secret="x" * 5000),
    ):
        status, _, body = await request(http, url, headers=headers)
        assert status == 401, headers
        assert_error(body, "invalid_client")

    status, _, body = await request(http, url, headers=basic("app-2", CLIENTS["app-2"]))
    assert status == 200 and body["value"].startswith("ek_")

    status, _, body = await request(http, url, headers=bearer(), data=b"x" * (17 * 1024))
    assert status == 413
    assert_error(body, "request_too_large")

    async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: the limit still holds
        for _ in range(40):
            yield b"y" * 1024

    status, _, body = await request(http, url, headers=bearer(), data=chunks())
    assert status == 413

    for data, code in (
        (b"{nope", "invalid_json"),
        (b"\xff\xfe", "invalid_json"),
        (b"[1, 2]", "invalid_type"),
        (b'{"session": {"type": "realtime"}}', "unknown_parameter"),
        (b'{"expires_after": 60}', "invalid_type"),
        (b'{"expires_after": {"seconds": "60"}}', "invalid_type"),
        (b'{"expires_after": {"seconds": 6.5}}', "invalid_type"),
        (b'{"expires_after": {"anchor": "now"}}', "invalid_value"),
        (b'{"expires_after": {"when": 1}}', "unknown_parameter"),
        (b"[" * 100_000, "request_too_large"),
    ):
        status, _, body = await request(http, url, headers=bearer(), data=data)
        assert status in (400, 413), (data[:40], status)
        assert_error(body, code)

    status, headers, body = await request(http, url, method="GET", headers=bearer())
    assert status == 405
    assert headers["Allow"] == "POST"
    assert_error(body, "method_not_allowed")

    for method, path, expected in (
        ("GET", "/nope", 404),
        ("POST", HEALTH_PATH, 405),
        ("DELETE", TOKEN_PATH, 405),
    ):
        status, _, body = await request(http, broker.base_url + path, method=method)
        assert status == expected
        assert body["error"]["type"] == "invalid_request_error"

    status, _, body = await request(http, broker.base_url + HEALTH_PATH, method="GET")
    assert (status, body["status"], body["minting"]) == (200, "ok", "ok")

    rows = await broker.audit.rows()
    counts: dict[str, int] = {}
    for r in rows:
        counts[r["outcome"]] = counts.get(r["outcome"], 0) + 1
    assert counts == {"denied_auth": 9, "issued": 1, "bad_request": 14}
    known = [r["client_id"] for r in rows if r["outcome"] == "denied_auth"]
    assert set(known) == {None, "app-1"}  # only known client ids are recorded


# ------------------------------------------------------------------------------ upstream failures


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.asynccontextmanager
async def fake_upstream(
    handler: Callable[[web.Request], Awaitable[web.StreamResponse]],
) -> AsyncIterator[str]:
    app = web.Application()
    app.router.add_post("/v1/realtime/client_secrets", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()


async def test_upstream_unreachable_is_502_recoverable(
    http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    upstream = f"http://127.0.0.1:{free_port()}"
    async with make_broker(upstream, tmp_path / "a.sqlite3") as broker:
        status, _, body = await request(http, broker.token_url, headers=bearer())
        assert status == 502
        assert body["error"]["type"] == "upstream_error"
        assert body["error"]["code"] == "econnrefused"
        provider = EphemeralKeyProvider(
            broker.token_url, client_id="app-1", client_secret=CLIENTS["app-1"]
        )
        async with provider:
            with pytest.raises(VoiceError) as info:
                await provider()
        assert info.value.severity is Severity.RECOVERABLE
        assert info.value.http_status == 502
        rows = await broker.audit.rows()
        assert [(r["outcome"], r["detail"]) for r in rows] == [
            ("upstream_error", "econnrefused")
        ] * 2


async def test_upstream_refusing_the_api_key_is_fatal_for_clients(
    http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    async with (
        RealtimePeer(api_keys={"sk-some-other-key-123456"}) as peer,
        make_broker(peer.base_url, tmp_path / "a.sqlite3") as broker,
    ):
        status, _, body = await request(http, broker.token_url, headers=bearer())
        assert status == 502
        assert body["error"]["code"] == "invalid_api_key"
        provider = EphemeralKeyProvider(
            broker.token_url, client_id="app-1", client_secret=CLIENTS["app-1"]
        )
        async with provider:
            with pytest.raises(VoiceError) as info:
                await provider()
        assert info.value.severity is Severity.FATAL
        assert info.value.source is ErrorSource.SIGNALING


async def test_upstream_rate_limit_passes_retry_after(
    http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    async def limited(request: web.Request) -> web.StreamResponse:
        return web.json_response(
            {
                "error": {
                    "type": "requests",
                    "code": "rate_limit_exceeded",
                    "message": "slow down",
                    "param": None,
                }
            },
            status=429,
            headers={"Retry-After": "7"},
        )

    async with (
        fake_upstream(limited) as upstream,
        make_broker(upstream, tmp_path / "a.sqlite3") as broker,
    ):
        status, headers, body = await request(http, broker.token_url, headers=bearer())
        assert status == 502
        assert headers["Retry-After"] == "7"
        assert body["error"]["code"] == "rate_limit_exceeded"


async def test_upstream_garbage_is_502(http: aiohttp.ClientSession, tmp_path: Path) -> None:
    async def garbage(request: web.Request) -> web.StreamResponse:
        return web.Response(text="<html>oops</html>", content_type="text/html")

    async with (
        fake_upstream(garbage) as upstream,
        make_broker(upstream, tmp_path / "a.sqlite3") as broker,
    ):
        status, _, body = await request(http, broker.token_url, headers=bearer())
        assert status == 502
        assert body["error"]["code"] == "invalid_token_response"


async def test_concurrency_cap_gives_503(http: aiohttp.ClientSession, tmp_path: Path) -> None:
    release = asyncio.Event()
    arrived = asyncio.Event()

    async def slow(request: web.Request) -> web.StreamResponse:
        arrived.set()
        await release.wait()
        return web.json_response({"value": "ek_slow_0123456789", "expires_at": 2_000_000_000})

    async with (
        fake_upstream(slow) as upstream,
        make_broker(
            upstream,
            tmp_path / "a.sqlite3",
            max_concurrent_upstream=1,
            upstream_queue_timeout=0.2,
        ) as broker,
    ):
        first = asyncio.ensure_future(request(http, broker.token_url, headers=bearer()))
        await arrived.wait()
        status, headers, body = await request(http, broker.token_url, headers=bearer("app-2"))
        assert status == 503
        assert headers["Retry-After"] == "1"
        assert_error(body, "server_overloaded", type="server_error")
        release.set()
        status, _, body = await first
        assert status == 200
        assert body["session_id"] is None
        outcomes = [r["outcome"] for r in await broker.audit.rows()]
        assert sorted(outcomes) == ["issued", "overloaded"]


# ------------------------------------------------------------------------------ fuzz

_printable = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=60)
_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | _printable,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(_printable, inner, max_size=4),
    max_leaves=12,
)
_random_auth = st.fixed_dictionaries(
    {},
    optional={
        "Authorization": st.one_of(
            _printable,
            st.builds(lambda t: f"Bearer {t}", _printable),
            st.builds(lambda t: f"Basic {t}", _printable),
            st.builds(
                lambda cid, s: "Basic " + base64.b64encode(f"{cid}:{s}".encode()).decode(),
                st.sampled_from([*CLIENTS, "x"]) | _printable,
                st.sampled_from(list(CLIENTS.values())) | _printable,
            ),
            st.sampled_from([f"Bearer {s}" for s in CLIENTS.values()]),
        ),
        "X-Client-Id": st.sampled_from(list(CLIENTS)) | _printable,
    },
)
_valid_auth = st.sampled_from(list(CLIENTS)).flatmap(
    lambda cid: st.sampled_from([bearer(cid), basic(cid, CLIENTS[cid])])
)
_auth = st.one_of(_valid_auth, _valid_auth, _random_auth)
_body = st.one_of(
    st.none(),
    st.binary(max_size=300),
    st.integers(16 * 1024 - 4, 16 * 1024 + 4).map(lambda n: b" " * (n - 2) + b"{}"),
    _json.map(lambda v: json.dumps(v).encode()),
    st.builds(
        lambda seconds, anchor: json.dumps(
            {"expires_after": {"seconds": seconds, "anchor": anchor}}
        ).encode(),
        st.integers(-(10**20), 10**20) | st.floats(allow_nan=False) | _printable | st.none(),
        st.sampled_from(["created_at", "now", 1, None]),
    ),
)


@pytest.fixture
async def fuzz_broker(peer: RealtimePeer, tmp_path: Path) -> AsyncIterator[TokenBroker]:
    rate = RatePolicy(capacity=1000, refill_per_second=100)
    async with make_broker(
        peer.base_url, tmp_path / "fuzz.sqlite3", rate=rate, auth_failure_rate=None
    ) as b:
        yield b


@settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    method=st.sampled_from(["POST"] * 12 + ["GET", "PUT", "DELETE", "PATCH", "OPTIONS"]),
    path=st.sampled_from([TOKEN_PATH] * 12 + [HEALTH_PATH, "/", TOKEN_PATH + "/x", "/v1"]),
    auth=_auth,
    content_type=st.none()
    | st.sampled_from(["application/json", "text/plain", "multipart/form-data"])
    | _printable,
    body=_body,
)
async def test_fuzz_requests_always_get_a_json_answer(
    http: aiohttp.ClientSession,
    fuzz_broker: TokenBroker,
    method: str,
    path: str,
    auth: dict[str, str],
    content_type: str | None,
    body: bytes | None,
) -> None:
    headers = dict(auth)
    if content_type is not None:
        headers["Content-Type"] = content_type
    broker = fuzz_broker
    status, _, answer = await request(
        http, broker.base_url + path, method=method, headers=headers, data=body
    )
    event(f"status {status}")
    assert 200 <= status < 500, (status, answer)
    assert isinstance(answer, dict)
    if status == 200 and path == TOKEN_PATH:
        assert answer["value"].startswith("ek_")
    elif status >= 400:
        assert set(answer["error"]) == {"type", "code", "message", "param"}
    health = await request(http, broker.base_url + HEALTH_PATH, method="GET")
    assert health[0] == 200


# ------------------------------------------------------------------------------ no secret leaks


async def test_api_key_never_leaks(
    http: aiohttp.ClientSession,
    peer: RealtimePeer,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    capfd: pytest.CaptureFixture[str],
) -> None:
    caplog.set_level(logging.DEBUG)
    # A key that does not look like an OpenAI key (redact() alone would not catch it).
    odd_key = "org-live-KEY-9f8e7d6c5b4a39281706f5e4"
    outputs: list[str] = []

    async def echo_key(request: web.Request) -> web.StreamResponse:
        auth = request.headers.get("Authorization", "")
        token = auth.split()[-1]
        return web.json_response(
            {
                "error": {
                    "type": "invalid_request_error",
                    "code": "invalid_api_key",
                    "message": f"Incorrect API key provided: {token} ({auth})",
                    "param": token,
                }
            },
            status=401,
            headers={"X-Echo": token[:6] + "..."},
        )

    async def scenario(broker: TokenBroker) -> None:
        outputs.extend([repr(broker), repr(broker.config), repr(broker.clients)])
        attempts: list[tuple[str, dict[str, str], Any]] = [
            ("POST", bearer(), None),
            ("POST", bearer(), json.dumps({"expires_after": {"seconds": 99}})),
            ("POST", bearer(secret="wrong"), None),
            ("POST", basic("app-2", CLIENTS["app-2"]), b"{bad json"),
            ("GET", bearer(), None),
            ("POST", bearer(), b"z" * 20_000),
        ] + [("POST", bearer("app-2"), None)] * 12  # runs into the rate limit
        for method, headers, data in attempts:
            async with http.request(method, broker.token_url, headers=headers, data=data) as r:
                outputs.append(str(r.status) + repr(dict(r.headers)) + await r.text())
        provider = EphemeralKeyProvider(
            broker.token_url, client_id="app-1", client_secret=CLIENTS["app-1"]
        )
        async with provider:
            try:
                outputs.append(repr(await provider.key()))
            except VoiceError as err:
                outputs.extend([str(err), repr(err)])
        outputs.extend(json.dumps(r) for r in await broker.audit.rows())

    async with make_broker(peer.base_url, tmp_path / "good.sqlite3") as broker:
        await scenario(broker)
    async with (
        fake_upstream(echo_key) as upstream,
        make_broker(upstream, tmp_path / "echo.sqlite3", api_key=odd_key) as broker,
    ):
        await scenario(broker)
    async with (
        fake_upstream(echo_key) as upstream,
        make_broker(upstream, tmp_path / "echo-sk.sqlite3") as broker,
    ):
        await scenario(broker)

    captured = capfd.readouterr()
    outputs.extend([caplog.text, captured.out, captured.err])
    outputs.extend(r.getMessage() + repr(r.args) + str(r.exc_info) for r in caplog.records)
    for db in tmp_path.glob("*.sqlite3*"):
        outputs.append(db.read_bytes().decode("latin-1"))
    assert any("issued" in o for o in outputs) and any("upstream_error" in o for o in outputs)
    assert any("rate_limit" in o for o in outputs)
    blob = "\n".join(outputs)
    for secret in (API_KEY, odd_key, API_KEY[-16:], odd_key[-16:], *CLIENTS.values()):
        assert secret not in blob, f"secret fragment {secret[:4]}... leaked"


# ------------------------------------------------------------------------------ config and CLI


def test_config_validation() -> None:
    with pytest.raises(ConfigError):
        BrokerConfig(upstream_base="ftp://x")
    with pytest.raises(ConfigError):
        BrokerConfig(upstream_base="http://127.0.0.1/v1")
    with pytest.raises(ConfigError):
        BrokerConfig(default_expires_after=700, max_expires_after=600)
    with pytest.raises(ConfigError):
        BrokerConfig(max_expires_after=5)
    with pytest.raises(ConfigError):
        BrokerConfig(session_config={"model": "x"})  # type realtime is required
    with pytest.raises(ConfigError):
        ClientRegistry({"app": "plain-secret"})  # only digests
    with pytest.raises(ConfigError):
        ClientRegistry({"bad id!": hash_secret("x")})
    with pytest.raises(ConfigError):
        ClientRegistry({})
    registry = ClientRegistry({"app": hash_secret("s3cret")})
    assert registry.verify("app", "s3cret")
    assert not registry.verify("app", "s3cre")
    assert not registry.verify("other", "s3cret")
    assert "s3cret" not in repr(registry)


def _parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="command", required=True)
    broker_cli.add_parsers(sub)
    return parser.parse_args(["broker", *argv])


def test_cli_builds_a_broker_from_env_and_files(tmp_path: Path) -> None:
    clients = tmp_path / "clients.json"
    clients.write_text(json.dumps({"clients": {"web": hash_secret("w-secret")}}))
    session = tmp_path / "session.json"
    session.write_text(json.dumps({"type": "realtime", "instructions": "from file"}))
    args = _parse(
        "--clients", str(clients),
        "--client", f"mobile={hash_secret('m-secret')}",
        "--api-key-env", "MY_KEY",
        "--upstream", "http://127.0.0.1:9",
        "--session-config", str(session),
        "--voice", "cedar",
        "--audit-db", str(tmp_path / "a.sqlite3"),
        "--max-expires", "120",
        "--header-timeout", "5",
    )  # fmt: skip
    assert args.func is broker_cli.cmd_broker
    broker = broker_cli.build_broker(args, {"MY_KEY": API_KEY})
    assert broker.header_timeout == broker.config.body_timeout == 5.0
    assert broker.clients.verify("web", "w-secret")
    assert broker.clients.verify("mobile", "m-secret")
    assert broker.config.upstream_base == "http://127.0.0.1:9"
    assert broker.config.max_expires_after == 120
    assert broker.config.session_config["instructions"] == "from file"
    assert broker.config.session_config["audio"]["output"]["voice"] == "cedar"
    assert broker.config.session_config["model"] == "gpt-realtime"
    assert broker.host == "127.0.0.1"

    with pytest.raises(ConfigError, match="MY_KEY"):
        broker_cli.build_broker(args, {})
    with pytest.raises(ConfigError, match="loopback"):
        broker_cli.build_broker(
            _parse("--host", "0.0.0.0", "--client", f"a={hash_secret('x')}"),
            {"OPENAI_API_KEY": "k"},
        )
    with pytest.raises(ConfigError, match="no clients"):
        broker_cli.build_broker(_parse(), {"OPENAI_API_KEY": "k"})
    with pytest.raises(SystemExit):
        _parse("--api-key", API_KEY)  # there is no way to pass the key on the command line
    with pytest.raises(ConfigError) as info:
        broker_cli.build_broker(_parse("--api-key-env", API_KEY), {})  # the key pasted by mistake
    assert API_KEY not in str(info.value)


def test_cli_hash_secret_and_errors(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO("my-client-secret\n"))
    assert broker_cli.cmd_broker(_parse("--hash-secret")) == 0
    assert capsys.readouterr().out.strip() == hash_secret("my-client-secret")
    monkeypatch.delenv("FSM_VOICE_TEST_NO_SUCH_KEY", raising=False)
    code = broker_cli.cmd_broker(
        _parse("--api-key-env", "FSM_VOICE_TEST_NO_SUCH_KEY", "--client", f"a={hash_secret('x')}")
    )
    assert code == 2
    assert "FSM_VOICE_TEST_NO_SUCH_KEY" in capsys.readouterr().err


_RUN_CLI = (
    "import argparse, sys\n"
    "from fsm_voice.broker import cli\n"
    "p = argparse.ArgumentParser(prog='fsm-voice')\n"
    "cli.add_parsers(p.add_subparsers(dest='command', required=True))\n"
    "a = p.parse_args(sys.argv[1:])\n"
    "sys.exit(a.func(a))\n"
)


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
async def test_cli_serves_until_signal(
    http: aiohttp.ClientSession, tmp_path: Path, signum: signal.Signals
) -> None:
    env = {**os.environ, "BROKER_TEST_KEY": API_KEY}
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        _RUN_CLI,
        "broker",
        "--port", "0",
        "--api-key-env", "BROKER_TEST_KEY",
        "--client", f"web={hash_secret('w')}",
        "--upstream", f"http://127.0.0.1:{free_port()}",
        "--audit-db", str(tmp_path / "cli.sqlite3"),
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        line = (await asyncio.wait_for(proc.stdout.readline(), 20)).decode()
        assert "listening on" in line, line
        base = line.split("listening on ", 1)[1].split()[0]
        status, _, body = await request(http, base + HEALTH_PATH, method="GET")
        assert (status, body["status"], body["minting"]) == (200, "ok", "ok")
        status, _, body = await request(
            http, base + TOKEN_PATH, headers={"Authorization": "Bearer w", "X-Client-Id": "web"}
        )
        assert status == 502
        proc.send_signal(signum)
        out, err = await asyncio.wait_for(proc.communicate(), 20)
        assert proc.returncode == 0, err
        assert API_KEY not in line + out.decode() + err.decode()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    async with AuditLog(tmp_path / "cli.sqlite3") as audit:
        assert [r["outcome"] for r in await audit.rows()] == ["upstream_error"]
