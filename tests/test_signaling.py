"""HttpSignaling against a real aiohttp server on 127.0.0.1."""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from fsm_voice.errors import ConfigError, ErrorSource, Severity, VoiceError
from fsm_voice.ports import SdpAnswer, Signaling
from fsm_voice.signaling import HttpSignaling, call_id_from_location

pytestmark = pytest.mark.anyio

OFFER = "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n"
ANSWER = "v=0\r\no=- 2 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class Server:
    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.handler: Handler = self.answer
        self.base_url = ""

    async def answer(self, request: web.Request) -> web.Response:
        return web.Response(
            status=201,
            text=ANSWER,
            content_type="application/sdp",
            headers={"Location": "/v1/realtime/calls/rtc_abc123"},
        )

    async def dispatch(self, request: web.Request) -> web.StreamResponse:
        self.requests.append(
            {
                "method": request.method,
                "path": request.path,
                "query": dict(request.query),
                "headers": dict(request.headers),
                "body": await request.text(),
            }
        )
        return await self.handler(request)


@pytest.fixture
async def server() -> AsyncIterator[Server]:
    srv = Server()
    app = web.Application()
    app.router.add_post("/v1/realtime/calls", srv.dispatch)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    srv.base_url = f"http://{host}:{port}"
    try:
        yield srv
    finally:
        await runner.cleanup()


async def test_posts_offer_and_returns_answer(server: Server) -> None:
    async with HttpSignaling(server.base_url, "sk-test-123", model="gpt-realtime") as signaling:
        as_port: Signaling = signaling  # static conformance (mypy)
        assert as_port is signaling
        answer = await signaling.exchange(OFFER)
    assert answer == SdpAnswer(sdp=ANSWER, call_id="rtc_abc123")
    (req,) = server.requests
    assert req["method"] == "POST"
    assert req["path"] == "/v1/realtime/calls"
    assert req["query"] == {"model": "gpt-realtime"}
    assert req["headers"]["Content-Type"] == "application/sdp"
    assert req["headers"]["Authorization"] == "Bearer sk-test-123"
    assert req["body"] == OFFER


async def test_no_model_no_query_and_200_accepted(server: Server) -> None:
    async def ok(request: web.Request) -> web.Response:
        return web.Response(status=200, text=ANSWER)

    server.handler = ok
    async with HttpSignaling(server.base_url + "/", "k") as signaling:
        answer = await signaling.exchange(OFFER)
    assert answer.call_id is None
    assert server.requests[0]["query"] == {}
    assert server.requests[0]["path"] == "/v1/realtime/calls"


async def test_fresh_token_for_every_exchange(server: Server) -> None:
    issued: list[str] = []

    async def token() -> str:
        issued.append(f"ek_{len(issued)}")
        return issued[-1]

    async with HttpSignaling(server.base_url, token) as signaling:
        await signaling.exchange(OFFER)
        await signaling.exchange(OFFER)
    assert issued == ["ek_0", "ek_1"]
    assert [r["headers"]["Authorization"] for r in server.requests] == [
        "Bearer ek_0",
        "Bearer ek_1",
    ]


async def test_401_is_fatal(server: Server, caplog: pytest.LogCaptureFixture) -> None:
    async def unauthorized(request: web.Request) -> web.Response:
        body = '{"error": {"type": "invalid_request_error", "code": "invalid_api_key", '
        body += '"message": "Incorrect API key provided: sk-test-***"}}'
        return web.Response(status=401, text=body, content_type="application/json")

    server.handler = unauthorized
    caplog.set_level(logging.DEBUG)
    async with HttpSignaling(server.base_url, "sk-secret-key-value") as signaling:
        with pytest.raises(VoiceError) as info:
            await signaling.exchange(OFFER)
    err = info.value
    assert err.severity is Severity.FATAL
    assert err.source is ErrorSource.SIGNALING
    assert err.http_status == 401
    assert err.code == "invalid_api_key"
    assert "sk-secret-key-value" not in caplog.text
    assert "sk-secret-key-value" not in repr(signaling)


async def test_503_retry_after_is_recoverable(server: Server) -> None:
    async def unavailable(request: web.Request) -> web.Response:
        return web.Response(status=503, text="busy", headers={"Retry-After": "7"})

    server.handler = unavailable
    async with HttpSignaling(server.base_url, "k") as signaling:
        with pytest.raises(VoiceError) as info:
            await signaling.exchange(OFFER)
    assert info.value.severity is Severity.RECOVERABLE
    assert info.value.retry_after == 7.0
    assert info.value.http_status == 503


async def test_non_sdp_success_body_is_rejected(server: Server) -> None:
    async def html(request: web.Request) -> web.Response:
        return web.Response(status=201, text="<html>captive portal</html>")

    server.handler = html
    async with HttpSignaling(server.base_url, "k") as signaling:
        with pytest.raises(VoiceError) as info:
            await signaling.exchange(OFFER)
    assert info.value.code == "invalid_answer"


async def test_connection_refused_is_transient() -> None:
    with socket.socket() as s:  # a port that nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    async with HttpSignaling(f"http://127.0.0.1:{port}", "k") as signaling:
        with pytest.raises(VoiceError) as info:
            await signaling.exchange(OFFER)
    assert info.value.severity is Severity.TRANSIENT
    assert info.value.source is ErrorSource.NETWORK


async def test_timeout_is_transient(server: Server) -> None:
    release = asyncio.Event()

    async def slow(request: web.Request) -> web.Response:
        await release.wait()
        return web.Response(status=201, text=ANSWER)

    server.handler = slow
    async with HttpSignaling(server.base_url, "k", timeout=0.2) as signaling:
        with pytest.raises(VoiceError) as info:
            await signaling.exchange(OFFER)
    release.set()
    assert info.value.severity is Severity.TRANSIENT
    assert info.value.code == "timeout"


async def test_failing_token_provider_is_classified(server: Server) -> None:
    async def token() -> str:
        raise ConnectionResetError("token service down")

    async with HttpSignaling(server.base_url, token) as signaling:
        with pytest.raises(VoiceError) as info:
            await signaling.exchange(OFFER)
    assert info.value.code == "token_error"
    assert info.value.severity is Severity.TRANSIENT
    assert not server.requests


async def test_given_session_is_not_closed(server: Server) -> None:
    async with aiohttp.ClientSession() as session:
        signaling = HttpSignaling(server.base_url, "k", session=session)
        await signaling.exchange(OFFER)
        await signaling.aclose()
        assert not session.closed
    with pytest.raises(RuntimeError):
        await signaling.exchange(OFFER)


@pytest.mark.parametrize(
    ("location", "expected"),
    [
        ("/v1/realtime/calls/rtc_abc123", "rtc_abc123"),
        ("https://api.openai.com/v1/realtime/calls/rtc_x?y=1", "rtc_x"),  # outside-address-ok
        ("/v1/realtime/calls/rtc_z/", "rtc_z"),
        ("rtc_bare", "rtc_bare"),
        ("", None),
        (None, None),
    ],
)
def test_call_id_from_location(location: str | None, expected: str | None) -> None:
    assert call_id_from_location(location) == expected


@pytest.mark.parametrize(
    "url",
    [
        "",
        "api.openai.com",  # outside-address-ok: rejected at construction, never contacted
        "ftp://x",
        "ws://x/y",
        "https://",
        "http://h:99999",
        "https://h/?a=1",
    ],
)
def test_bad_base_url_rejected(url: str) -> None:
    with pytest.raises(ConfigError) as info:
        HttpSignaling(url, "k")
    assert "base_url" in str(info.value)
    assert isinstance(info.value, ValueError)


def test_credentials_in_url_rejected_without_echo() -> None:
    with pytest.raises(ConfigError) as info:
        HttpSignaling("https://user:sk-secret@h", "k")
    assert "sk-secret" not in str(info.value)


def test_bad_arguments_rejected() -> None:
    with pytest.raises(ConfigError):
        HttpSignaling("https://h", "")
    with pytest.raises(ConfigError):
        HttpSignaling("https://h", "k", timeout=0)
    with pytest.raises(ConfigError):
        HttpSignaling("https://h", "k", model=" ")


@pytest.mark.anyio
async def test_401_with_refreshable_provider_retries_once_with_a_fresh_key() -> None:
    seen: list[str] = []

    async def calls(request: web.Request) -> web.Response:
        auth = request.headers["Authorization"]
        seen.append(auth)
        if auth == "Bearer ek_expired":
            return web.json_response({"error": {"type": "invalid_request_error",
                                                 "code": "invalid_api_key",
                                                 "message": "expired"}}, status=401)
        return web.Response(status=201, text="v=0\r\n", content_type="application/sdp",
                            headers={"Location": "/v1/realtime/calls/rtc_1"})

    class Provider:
        def __init__(self) -> None:
            self.key = "ek_expired"
            self.invalidated = 0

        async def __call__(self) -> str:
            return self.key

        def invalidate(self) -> None:
            self.invalidated += 1
            self.key = "ek_fresh"

    app = web.Application()
    app.router.add_post("/v1/realtime/calls", calls)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    provider = Provider()
    try:
        async with HttpSignaling(f"http://127.0.0.1:{port}", provider) as sig:
            answer = await sig.exchange("v=0\r\n")
        assert answer.call_id == "rtc_1"
        assert seen == ["Bearer ek_expired", "Bearer ek_fresh"]
        assert provider.invalidated == 1
        # A plain string key cannot be refreshed: 401 stays fatal after one attempt.
        seen.clear()
        async with HttpSignaling(f"http://127.0.0.1:{port}", "ek_expired") as sig:
            with pytest.raises(VoiceError) as info:
                await sig.exchange("v=0\r\n")
        assert info.value.severity is Severity.FATAL and len(seen) == 1
    finally:
        await runner.cleanup()
