"""The live dashboard: its HTTP surface, and in a real browser (Debian's chromium driven by
Playwright, no browser download) a real session against the local peer going ``reconnecting``
then ``active`` around a fault injected through the peer's control API, with no console error."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import aiohttp
import anyio
import pytest

from fsm_voice.client import realtime_session
from fsm_voice.clock import VirtualClock
from fsm_voice.dashboard import Dashboard
from fsm_voice.peer.server import RealtimePeer
from fsm_voice.policy import IcePolicy, MonitorPolicy, RetryPolicy, SessionPolicy
from fsm_voice.ports import TransportSignal
from fsm_voice.session import Traced, VoiceSession
from fsm_voice.telemetry import Hub
from fsm_voice.testing import ScriptedTransport
from fsm_voice.transport import NullSink, SilenceSource

pytestmark = pytest.mark.anyio

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--headless=new", "--disable-background-networking",
                 "--disable-component-update", "--no-first-run", "--disable-sync"]
FAST = SessionPolicy(
    retry=RetryPolicy(base_delay=0.2, factor=2.0, max_attempts=3, jitter=0.0, stable_after=0.5),
    ice=IcePolicy(disconnected_grace=1.0, connect_timeout=5.0, restart_timeout=5.0),
    monitor=MonitorPolicy(metrics_interval=0.5, health_interval=5.0),
)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


async def test_http_surface_is_read_only_and_loopback_only() -> None:
    hub = Hub()
    async with Dashboard(hub) as board, aiohttp.ClientSession() as http:
        assert board.url.startswith("http://127.0.0.1:")
        s = VoiceSession(ScriptedTransport(), clock=VirtualClock())
        tap = hub.track(s, name="scripted")
        async with s:
            await s.start()
            async with http.get(board.url) as r:
                assert r.status == 200
                page = await r.text()
                csp = r.headers["Content-Security-Policy"]
            assert "default-src 'none'" in csp and "'unsafe-inline'" not in csp
            assert "http://" not in page.replace("http://www.w3.org/2000/svg", "")  # no CDN
            async with http.get(board.url + "api/sessions") as r:
                body = await r.json()
            (view,) = body["sessions"]
            assert (view["id"], view["name"], view["status"]) == (tap.id, "scripted", "active")
            assert [t["event"] for t in view["transitions"]] == [
                e.event for e in s.trace if e.outcome == "taken"]
            async with http.post(board.url + "api/sessions") as r:
                assert r.status == 405
            async with http.get(board.url, headers={"Host": "attacker.example"}) as r:
                assert r.status == 403
            async with http.get(board.url + "events") as r:
                assert r.headers["Content-Type"].startswith("text/event-stream")
                assert await r.content.readline() == b"event: sessions\n"
                data = json.loads((await r.content.readline()).removeprefix(b"data: "))
                assert data["live"] == [tap.id] and data["changed"][0]["status"] == "active"
                await s.stop()  # a change is pushed
                assert await r.content.readline() == b"\n"
                assert await r.content.readline() == b"event: sessions\n"
                data = json.loads((await r.content.readline()).removeprefix(b"data: "))
                assert data["changed"][0]["status"] == "idle"
    with pytest.raises(ValueError, match="port"):
        Dashboard(hub, port=-1)


@pytest.mark.skipif(not os.path.exists(CHROMIUM), reason="needs Debian's chromium (setup)")
async def test_browser_shows_reconnecting_then_active_around_a_fault() -> None:
    from playwright.async_api import async_playwright, expect

    hub = Hub()
    console_errors: list[str] = []
    async with RealtimePeer() as peer, Dashboard(hub) as board:
        s = realtime_session(peer.base_url, "ek_test", policy=FAST,
                             host_addresses=["127.0.0.1"], audio_source=SilenceSource,
                             audio_sink=NullSink)
        tap = hub.track(s, name="real")
        stable = anyio.Event()

        def on_trace(t: Traced) -> None:
            if t.entry.event == "session_stable" and t.entry.outcome == "taken":
                stable.set()
        s.on_trace(on_trace)
        async with async_playwright() as pw:
            browser = await pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            try:
                page = await browser.new_page()
                page.on("console", lambda m: console_errors.append(m.text)
                        if m.type == "error" else None)
                page.on("pageerror", lambda e: console_errors.append(str(e)))
                await page.goto(board.url)
                status = page.locator(f"#session-{tap.id} .status-cell")
                await expect(status).to_have_text("idle")
                async with s:
                    await s.start()
                    await expect(status).to_have_text("active", timeout=15_000)
                    with anyio.fail_after(10):
                        await stable.wait()
                    headers: dict[str, Any] = dict(getattr(peer, "control_headers", {}))
                    async with aiohttp.ClientSession(headers=headers) as http:
                        # answers held 1.5 s: the reconnect is slow enough to be seen
                        async with http.post(peer.base_url + "/control/delay_answers",
                                             json={"seconds": 1.5}) as r:
                            assert r.status == 200
                        async with http.post(peer.base_url + "/control/close_call",
                                             json={}) as r:
                            assert r.status == 200 and (await r.json())["closed"] == 1
                    fault = time.monotonic()
                    await expect(status).to_have_text("reconnecting", timeout=5_000)
                    seen_reconnecting = time.monotonic() - fault
                    await expect(status).to_have_text("active", timeout=20_000)
                    await s.stop()
                    await expect(status).to_have_text("idle", timeout=5_000)
                # the session has left its context: its row goes
                await expect(page.locator(f"#session-{tap.id}")).to_have_count(0)
                await expect(page.locator("#empty")).to_be_visible()
                await expect(page.locator("#conn")).to_have_text("live")
            finally:
                await browser.close()
    assert console_errors == []
    assert seen_reconnecting < 5.0


async def test_trace_files_named_at_start_have_timelines(tmp_path: Path) -> None:
    pytest.importorskip("plotly")
    trace = tmp_path / "scripted.jsonl"
    t = ScriptedTransport(["ok", "ok"])
    s = VoiceSession(t, clock=VirtualClock())
    s.record_trace(trace)
    async with s:
        await s.start()
        await anyio.wait_all_tasks_blocked()
        t.emit(TransportSignal.FAILED)
        await s.dispatcher.drain()
        await anyio.wait_all_tasks_blocked()
        await s.stop()
    with pytest.raises(FileNotFoundError):
        Dashboard(Hub(), traces=[tmp_path / "missing.jsonl"])
    async with Dashboard(Hub(), traces=[trace]) as board, aiohttp.ClientSession() as http:
        async with http.get(board.url) as r:
            page = await r.text()
        assert 'href="timeline/0"' in page and "scripted.jsonl" in page
        async with http.get(board.url + "api/traces") as r:
            assert (await r.json())["traces"] == [
                {"n": 0, "name": "scripted.jsonl", "url": "timeline/0"}]
        async with http.get(board.url + "timeline/0") as r:
            assert r.status == 200
            drawn = await r.text()
        assert "plotly" in drawn.lower() and "transport_failed" in drawn
        assert "<script src=\"http" not in drawn  # plotly.js inline, nothing fetched
        async with http.get(board.url + "timeline/1") as r:
            assert r.status == 404
        async with http.get(board.url + "timeline/..%2Fetc") as r:
            assert r.status == 404
