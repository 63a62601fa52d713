"""Abandoned calls are hung up: ``HttpSignaling.hangup`` (bounded, never raises) and a real
session against the local peer, on stop and on a transport restart."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import anyio
import pytest
from aiohttp import web

from fsm_voice import IcePolicy, NullSink, SessionPolicy, UtteranceSource, realtime_session
from fsm_voice.peer.server import RealtimePeer
from fsm_voice.signaling import HttpSignaling

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class HangupServer:
    """Records hangups; ``mode``: "ok" (200), "missing" (404) or "stall" (never answers)."""

    def __init__(self) -> None:
        self.mode = "ok"
        self.requests: list[dict[str, Any]] = []
        self.base_url = ""

    async def hangup(self, request: web.Request) -> web.StreamResponse:
        self.requests.append({"call_id": request.match_info["call_id"],
                              "auth": request.headers.get("Authorization")})
        if self.mode == "stall":
            await anyio.sleep_forever()
        if self.mode == "missing":
            return web.json_response({"error": {"code": "call_not_found"}}, status=404)
        return web.json_response({})


@pytest.fixture
async def server() -> AsyncIterator[HangupServer]:
    srv = HangupServer()
    app = web.Application()
    app.router.add_post("/v1/realtime/calls/{call_id}/hangup", srv.hangup)
    runner = web.AppRunner(app, shutdown_timeout=0.1)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    srv.base_url = f"http://127.0.0.1:{runner.addresses[0][1]}"
    try:
        yield srv
    finally:
        await runner.cleanup()


async def test_hangup_posts_to_the_call_with_the_key(server: HangupServer) -> None:
    async def key() -> str:
        return "ek_fresh"

    async with HttpSignaling(server.base_url, key) as sig:
        assert await sig.hangup("rtc_a/b") is True
        assert await sig.hangup(None) is False  # no call, no request
    assert server.requests == [{"call_id": "rtc_a/b", "auth": "Bearer ek_fresh"}]


async def test_hangup_never_raises(server: HangupServer) -> None:
    sig = HttpSignaling(server.base_url, "ek_x")
    server.mode = "missing"
    assert await sig.hangup("rtc_gone") is False
    server.mode = "stall"
    with anyio.fail_after(10):  # bounded by its own timeout, far below this guard
        assert await sig.hangup("rtc_stuck", timeout=0.2) is False
    await sig.aclose()
    server.mode = "ok"
    assert await sig.hangup("rtc_late") is True  # after aclose: a one-off HTTP session
    assert [r["call_id"] for r in server.requests] == ["rtc_gone", "rtc_stuck", "rtc_late"]

    async def broken_key() -> str:
        raise RuntimeError("token provider down")

    async with HttpSignaling(server.base_url, broken_key) as sig2:
        assert await sig2.hangup("rtc_nokey") is False
    async with HttpSignaling("http://127.0.0.1:9", "ek_x") as sig3:  # nothing listens
        assert await sig3.hangup("rtc_refused") is False


async def test_session_hangs_up_on_restart_and_on_stop() -> None:
    policy = SessionPolicy(ice=IcePolicy(disconnected_grace=1.0, connect_timeout=10.0,
                                         restart_timeout=8.0))
    async with RealtimePeer() as peer:
        session = realtime_session(peer.base_url, "ek_x", policy=policy,
                                   audio_source=UtteranceSource, audio_sink=NullSink)
        async with session:
            await session.start()
            await session.wait_for("active", timeout=30)
            first = [c["call_id"] for c in peer.list_calls()]
            assert len(first) == 1
            peer.go_silent()  # the path dies: the session restarts the transport
            await session.wait_for("reconnecting", timeout=30)
            await session.wait_for("active", timeout=30)
            calls = {c["call_id"]: c for c in peer.list_calls()}
            assert calls[first[0]]["close_reason"] == "hangup"  # the abandoned call
            second = [cid for cid, c in calls.items() if c["close_reason"] is None]
            assert len(second) == 1
            await session.stop()
        ended = {c["call_id"]: c["close_reason"] for c in peer.list_calls()}
        assert ended == {first[0]: "hangup", second[0]: "hangup"}
