"""Token providers: StaticKey, EphemeralKeyProvider (against a scripted broker), and
OpenAIClientSecrets (against the local peer's client_secrets endpoint)."""

from __future__ import annotations

import asyncio
import json
import logging
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from aiohttp import web

from fsm_voice.errors import ConfigError, ErrorSource, Severity, VoiceError
from fsm_voice.peer import RealtimePeer
from fsm_voice.signaling import HttpSignaling
from fsm_voice.tokens import (
    EphemeralKey,
    EphemeralKeyProvider,
    KeyProvider,
    OpenAIClientSecrets,
    StaticKey,
    check_api_base,
    key_fingerprint,
)

pytestmark = pytest.mark.anyio

CLIENT_SECRET = "cs-test-secret-0123456789abcdef"
API_KEY = "sk-test-tokens-0123456789abcdef"
OFFER_HEADERS = {"Content-Type": "application/sdp"}


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class FakeClock:
    def __init__(self, t: float = 1_700_000_000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class FakeBroker:
    """Scripted token endpoint: records requests, answers with ``self.handler``."""

    def __init__(self, clock: FakeClock) -> None:
        self.clock = clock
        self.requests: list[dict[str, Any]] = []
        self.handler: Handler = self.issue
        self.ttl = 60
        self.url = ""
        self.counter = 0
        self.delay = 0.0

    async def issue(self, request: web.Request) -> web.StreamResponse:
        self.counter += 1
        return web.json_response(
            {
                "value": f"ek_test_{self.counter:04d}_abcdef",
                "expires_at": int(self.clock.t) + self.ttl,
                "session_id": f"sess_{self.counter}",
            }
        )

    async def route(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        self.requests.append({"headers": dict(request.headers), "body": body})
        if self.delay:
            await asyncio.sleep(self.delay)
        return await self.handler(request)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
async def broker(clock: FakeClock) -> AsyncIterator[FakeBroker]:
    fake = FakeBroker(clock)
    app = web.Application()
    app.router.add_post("/v1/session-tokens", fake.route)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    fake.url = f"http://127.0.0.1:{port}/v1/session-tokens"
    try:
        yield fake
    finally:
        await runner.cleanup()


def provider(broker: FakeBroker, clock: FakeClock, **kwargs: Any) -> EphemeralKeyProvider:
    return EphemeralKeyProvider(
        broker.url, client_id="app-1", client_secret=CLIENT_SECRET, now=clock, **kwargs
    )


# ------------------------------------------------------------------------------ StaticKey


async def test_static_key() -> None:
    key = StaticKey("sk-static-0123456789")
    assert await key() == "sk-static-0123456789"
    assert "0123456789" not in repr(key)
    assert not hasattr(key, "invalidate")  # not refreshable: signaling does not retry a 401
    with pytest.raises(ConfigError):
        StaticKey("  ")


def test_fingerprint_is_short_and_stable() -> None:
    assert key_fingerprint("ek_abc") == key_fingerprint("ek_abc")
    assert len(key_fingerprint("ek_abc")) == 12
    assert key_fingerprint("ek_abc") != key_fingerprint("ek_abd")
    assert repr(EphemeralKey("ek_secret_value", 1.0)).find("ek_secret_value") == -1


# ------------------------------------------------------------------ EphemeralKeyProvider


async def test_provider_fetches_with_client_credentials(
    broker: FakeBroker, clock: FakeClock
) -> None:
    async with provider(broker, clock, expires_after=120) as p:
        assert isinstance(p, KeyProvider)
        key = await p()
        assert key == "ek_test_0001_abcdef"
        request = broker.requests[0]
        assert request["headers"]["Authorization"] == f"Bearer {CLIENT_SECRET}"
        assert request["headers"]["X-Client-Id"] == "app-1"
        assert json.loads(request["body"]) == {
            "expires_after": {"anchor": "created_at", "seconds": 120}
        }
        full = await p.key()
        assert full.session_id == "sess_1"
        assert CLIENT_SECRET not in repr(p)


async def test_provider_caches_until_refresh_margin(broker: FakeBroker, clock: FakeClock) -> None:
    async with provider(broker, clock, refresh_margin=10.0) as p:
        first = await p()
        clock.t += 49.0  # expires at +60; margin 10: fresh until +50
        assert await p() == first
        assert p.fetches == 1
        clock.t += 1.0
        second = await p()
        assert second != first
        assert p.fetches == 2


async def test_provider_refreshes_expired_key(broker: FakeBroker, clock: FakeClock) -> None:
    async with provider(broker, clock, refresh_margin=0.0) as p:
        first = await p()
        clock.t += 61
        assert await p() != first


async def test_invalidate_forces_refresh(broker: FakeBroker, clock: FakeClock) -> None:
    async with provider(broker, clock) as p:
        first = await p()
        assert await p() == first
        p.invalidate()
        assert await p() != first
        assert p.fetches == 2


async def test_concurrent_callers_share_one_fetch(broker: FakeBroker, clock: FakeClock) -> None:
    broker.delay = 0.1
    async with provider(broker, clock) as p:
        keys = await asyncio.gather(*(p() for _ in range(10)))
        assert len(set(keys)) == 1
        assert p.fetches == 1
        assert len(broker.requests) == 1


async def test_short_lived_key_is_still_returned(
    broker: FakeBroker, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    broker.ttl = 5  # shorter than the margin: used once, refetched next time
    async with provider(broker, clock, refresh_margin=10.0) as p:
        assert (await p()).startswith("ek_")
        assert (await p()).startswith("ek_")
        assert p.fetches == 2
    assert "refresh_margin" in caplog.text


def _json_error(
    status: int, code: str | None, message: str, headers: dict[str, str] | None = None
) -> Handler:
    async def handler(request: web.Request) -> web.StreamResponse:
        return web.json_response(
            {
                "error": {
                    "type": "invalid_request_error",
                    "code": code,
                    "message": message,
                    "param": None,
                }
            },
            status=status,
            headers=headers,
        )

    return handler


@pytest.mark.parametrize(
    ("status", "code", "headers", "severity", "retry_after"),
    [
        (401, "invalid_client", None, Severity.FATAL, None),
        (429, "rate_limit_exceeded", {"Retry-After": "3"}, Severity.RECOVERABLE, 3.0),
        (502, "server_error", None, Severity.RECOVERABLE, None),
        (502, "invalid_api_key", None, Severity.FATAL, None),  # the broker's key is bad
        (503, "server_overloaded", {"Retry-After": "1"}, Severity.RECOVERABLE, 1.0),
    ],
)
async def test_provider_errors_are_classified(
    broker: FakeBroker,
    clock: FakeClock,
    status: int,
    code: str,
    headers: dict[str, str] | None,
    severity: Severity,
    retry_after: float | None,
) -> None:
    broker.handler = _json_error(status, code, "refused", headers)
    async with provider(broker, clock) as p:
        with pytest.raises(VoiceError) as info:
            await p()
    err = info.value
    assert err.severity is severity
    assert err.code == code
    assert err.http_status == status
    assert err.source is ErrorSource.SIGNALING
    assert err.retry_after == retry_after


async def test_secret_echoed_by_server_is_scrubbed(
    broker: FakeBroker, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)

    async def echo(request: web.Request) -> web.StreamResponse:
        auth = request.headers.get("Authorization", "")
        return web.json_response(
            {
                "error": {
                    "type": "invalid_request_error",
                    "code": "invalid_client",
                    "message": f"bad credentials {auth} / {auth.split()[-1]}",
                    "param": None,
                }
            },
            status=401,
        )

    broker.handler = echo
    async with provider(broker, clock) as p:
        with pytest.raises(VoiceError) as info:
            await p()
    assert CLIENT_SECRET not in str(info.value)
    assert CLIENT_SECRET not in repr(info.value)
    assert CLIENT_SECRET not in caplog.text


@pytest.mark.parametrize(
    "payload",
    [
        b"not json",
        b"[]",
        b"{}",
        b'{"value": "ek_x"}',
        b'{"value": "", "expires_at": 1}',
        b'{"value": "ek_x", "expires_at": "soon"}',
        b'{"value": "ek x", "expires_at": 1}',
    ],
)
async def test_invalid_token_response(broker: FakeBroker, clock: FakeClock, payload: bytes) -> None:
    async def handler(request: web.Request) -> web.StreamResponse:
        return web.Response(body=payload, content_type="application/json")

    broker.handler = handler
    async with provider(broker, clock) as p:
        with pytest.raises(VoiceError) as info:
            await p()
    assert info.value.code == "invalid_token_response"
    assert info.value.severity is Severity.RECOVERABLE


async def test_connection_refused_is_transient(clock: FakeClock) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    p = EphemeralKeyProvider(
        f"http://127.0.0.1:{port}/v1/session-tokens",
        client_id="a",
        client_secret=CLIENT_SECRET,
        now=clock,
    )
    async with p:
        with pytest.raises(VoiceError) as info:
            await p()
    assert info.value.severity is Severity.TRANSIENT
    assert info.value.source is ErrorSource.NETWORK


async def test_provider_config_errors() -> None:
    with pytest.raises(ConfigError):
        EphemeralKeyProvider("ftp://x/y", client_id="a", client_secret="b")
    with pytest.raises(ConfigError):
        EphemeralKeyProvider("http://u:p@127.0.0.1/t", client_id="a", client_secret="b")
    with pytest.raises(ConfigError):
        EphemeralKeyProvider("http://127.0.0.1/t", client_id="", client_secret="b")
    with pytest.raises(ConfigError) as info:
        EphemeralKeyProvider("http://127.0.0.1/t", client_id="a", client_secret="")
    assert "redacted" in str(info.value)
    with pytest.raises(ConfigError):
        EphemeralKeyProvider(
            "http://127.0.0.1/t", client_id="a", client_secret="b", refresh_margin=-1
        )
    with pytest.raises(ConfigError):
        OpenAIClientSecrets("http://127.0.0.1/v1", API_KEY)  # a base URL has no path
    with pytest.raises(ConfigError):
        OpenAIClientSecrets("http://127.0.0.1", API_KEY, expires_after=5)
    assert check_api_base("http://127.0.0.1:8080/") == "http://127.0.0.1:8080"


async def test_closed_provider_refuses(broker: FakeBroker, clock: FakeClock) -> None:
    p = provider(broker, clock)
    await p.aclose()
    with pytest.raises(RuntimeError, match="closed"):  # a programming error, like HttpSignaling
        await p()


# ------------------------------------------------------------------------------ OpenAIClientSecrets


@pytest.fixture
async def peer(clock: FakeClock) -> AsyncIterator[RealtimePeer]:
    async with RealtimePeer(api_keys={API_KEY}, require_ephemeral=True, now=clock) as p:
        yield p


SESSION = {
    "type": "realtime",
    "model": "gpt-realtime",
    "instructions": "Say hi.",
    "audio": {"output": {"voice": "verse"}},
}


async def test_openai_client_secrets_mints_from_peer(peer: RealtimePeer, clock: FakeClock) -> None:
    async with OpenAIClientSecrets(
        peer.base_url, API_KEY, SESSION, expires_after=300, now=clock
    ) as upstream:
        key = await upstream.mint()
        assert key.value.startswith("ek_")
        assert key.expires_at == int(clock.t) + 300
        assert key.session_id is not None and key.session_id.startswith("sess_")
        assert key.session is not None
        assert key.session["audio"]["output"]["voice"] == "verse"
        assert (await upstream.mint(30)).expires_at == int(clock.t) + 30
        assert upstream.request_body(45) == {
            "expires_after": {"anchor": "created_at", "seconds": 45},
            "session": SESSION,
        }
        # as a provider it caches
        assert await upstream() == await upstream()
        assert API_KEY not in repr(upstream)


async def test_openai_client_secrets_wrong_key_is_fatal(peer: RealtimePeer) -> None:
    async with OpenAIClientSecrets(peer.base_url, "sk-wrong-0123456789") as upstream:
        with pytest.raises(VoiceError) as info:
            await upstream.mint()
    assert info.value.severity is Severity.FATAL
    assert info.value.code == "invalid_api_key"
    assert info.value.http_status == 401


async def test_openai_client_secrets_invalid_session_is_fatal(peer: RealtimePeer) -> None:
    async with OpenAIClientSecrets(peer.base_url, API_KEY, {"type": "realtime", "x": 1}) as up:
        with pytest.raises(VoiceError) as info:
            await up.mint()
    assert info.value.severity is Severity.FATAL
    assert info.value.code == "unknown_parameter"
    assert info.value.param == "session.x"


async def test_expired_key_on_calls_is_refreshed_by_signaling(
    peer: RealtimePeer, clock: FakeClock
) -> None:
    """The backend refuses a key our cache still trusts: HttpSignaling gets a 401, calls
    ``invalidate()`` and retries once with a fresh key, which passes authentication."""
    upstream = OpenAIClientSecrets(
        peer.base_url, API_KEY, SESSION, expires_after=60, now=clock, refresh_margin=0.0
    )
    async with upstream, HttpSignaling(peer.base_url, upstream) as signaling:
        first = await upstream()
        peer.expire_all_keys()
        with pytest.raises(VoiceError) as info:
            await signaling.exchange("v=0\r\n")
        assert info.value.http_status == 400  # authenticated: only the SDP is wrong
        assert info.value.code == "invalid_offer"
        assert upstream.fetches == 2
        assert await upstream() != first


async def test_expired_key_without_refresh_is_fatal(peer: RealtimePeer, clock: FakeClock) -> None:
    async with OpenAIClientSecrets(peer.base_url, API_KEY, now=clock) as upstream:
        key = (await upstream.mint(10)).value
    clock.t += 10  # expired
    for token in (key, StaticKey(key)):
        async with HttpSignaling(peer.base_url, token) as signaling:
            with pytest.raises(VoiceError) as info:
                await signaling.exchange("v=0\r\n")
        err = info.value
        assert (err.severity, err.code, err.http_status) == (Severity.FATAL, "invalid_api_key", 401)
        assert key not in str(err)
    assert peer.stats()["offers_refused"] == 2  # StaticKey is not retried


async def test_provider_refreshes_on_clock_without_invalidate(
    peer: RealtimePeer, clock: FakeClock
) -> None:
    upstream = OpenAIClientSecrets(peer.base_url, API_KEY, expires_after=60, now=clock)
    async with upstream, HttpSignaling(peer.base_url, upstream) as signaling:
        first = await upstream()
        clock.t += 55  # within the 10 s margin: refreshed before the backend would refuse it
        with pytest.raises(VoiceError) as info:
            await signaling.exchange("v=0\r\n")
        assert info.value.code == "invalid_offer"
        assert await upstream() != first
        assert upstream.fetches == 2
