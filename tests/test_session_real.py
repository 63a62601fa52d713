"""Real sessions: VoiceSession + aiortc transport + HTTP signaling against the local peer.

Everything runs on 127.0.0.1 with real peer connections, Opus audio and the data channel.
"""

from __future__ import annotations

import asyncio
import gc
import os
import threading
from collections.abc import Mapping
from typing import Any

import anyio
import pytest
from aiortc import RTCPeerConnection

from fsm_voice.client import realtime_session
from fsm_voice.demo import run_demo
from fsm_voice.effects import OpenTransport
from fsm_voice.errors import VoiceError
from fsm_voice.peer.server import RealtimePeer
from fsm_voice.policy import IcePolicy, MonitorPolicy, RetryPolicy, RolloverPolicy, SessionPolicy
from fsm_voice.session import VoiceSession
from fsm_voice.transport import NullSink, SilenceSource, UtteranceSource

pytestmark = pytest.mark.anyio

FAST = SessionPolicy(
    retry=RetryPolicy(base_delay=0.2, factor=2.0, max_attempts=3, jitter=0.0, stable_after=0.5),
    ice=IcePolicy(disconnected_grace=1.0, connect_timeout=5.0, restart_timeout=5.0),
    monitor=MonitorPolicy(metrics_interval=0.5, health_interval=5.0),
)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


async def stable(s: VoiceSession, timeout: float = 5.0) -> None:
    """Until the connection has been up ``stable_after`` (the failure episode is over): a
    failure after that restarts at once instead of counting as a failed attempt."""
    with anyio.fail_after(timeout):
        while not any(e.event == "session_stable" and e.outcome == "taken" for e in s.trace):
            await anyio.sleep(0.05)


def session_for(peer: RealtimePeer, *, policy: SessionPolicy = FAST, speak: bool = False,
                **kw: Any) -> VoiceSession:
    source = (lambda: UtteranceSource(lead_silence=0.3, speech_seconds=1.0, trail_silence=3.0,
                                      repeat=True)) if speak else SilenceSource
    return realtime_session(peer.base_url, "ek_test", policy=policy,
                            host_addresses=["127.0.0.1"], audio_source=source,
                            audio_sink=NullSink, **kw)


async def test_connects_and_reaches_active() -> None:
    async with RealtimePeer() as peer:
        s = session_for(peer)
        statuses: list[str] = []
        s.on_status(lambda c: statuses.append(c.status))
        async with s:
            await s.start()
            await s.wait_for("active", timeout=10)
            assert peer.stats()["calls_active"] == 1
        assert statuses == ["connecting", "active", "idle"]
        assert s.status == "idle"


async def test_listening_and_speaking_from_real_audio() -> None:
    async with RealtimePeer(reply="echo") as peer:
        s = session_for(peer, speak=True)
        seen: list[str] = []
        s.on_status(lambda c: seen.append(c.status))
        async with s:
            await s.start()
            await s.wait_for("active", timeout=10)
            await s.wait_for("listening", timeout=10)
            await s.wait_for("speaking", timeout=10)
            await s.wait_for("active", timeout=10)
        i = seen.index("listening")
        assert seen[i:i + 4] == ["listening", "active", "speaking", "active"]


async def test_transient_error_event_keeps_session_fatal_ends_it_without_reconnect() -> None:
    async with RealtimePeer() as peer:
        s = session_for(peer)
        errors: list[VoiceError] = []
        s.on_error(errors.append)
        async with s:
            await s.start()
            await s.wait_for("active", timeout=10)
            peer.send_error("invalid_request_error", "invalid_event", "one bad client event")
            peer.send_error("invalid_request_error", "response_cancel_not_active", "race")
            with anyio.move_on_after(1.0):
                await s.wait_for("error", "reconnecting")
            assert s.status == "active"
            assert [e.code for e in errors] == ["invalid_event"]
            offers = peer.stats()["offers_received"]
            peer.send_error("invalid_request_error", "invalid_api_key", "Incorrect API key")
            await s.wait_for("error", timeout=5)
            await anyio.sleep(1.0)  # longer than every backoff delay of the FAST policy
            assert s.status == "error"
            assert peer.stats()["offers_received"] == offers  # never retried
            assert errors[-1].code == "invalid_api_key"


async def test_http_401_on_offer_is_fatal() -> None:
    async with RealtimePeer() as peer:
        peer.reject_offers(1, 401, code="invalid_api_key")
        s = session_for(peer)
        async with s:
            await s.start()
            await s.wait_for("error", timeout=10)
            assert s.errors[-1].http_status == 401
            assert peer.stats()["offers_received"] == 1


async def test_http_503_then_success_backs_off_then_active() -> None:
    async with RealtimePeer() as peer:
        peer.reject_offers(2, 503)
        s = session_for(peer)
        async with s:
            await s.start()
            await s.wait_for("active", timeout=15)
        backoffs = [e for e in s.trace if e.target == "backoff" and e.source != "backoff"]
        assert len(backoffs) == 2
        retries = [e for e in s.trace if e.event == "backoff_expired"]
        attempts = [x.attempt for r in retries for x in r.effects if isinstance(x, OpenTransport)]
        assert attempts == [1, 2]
        assert peer.stats()["offers_received"] == 3


async def test_peer_going_silent_is_detected_and_restarted() -> None:
    async with RealtimePeer() as peer:
        s = session_for(peer)
        async with s:
            await s.start()
            await s.wait_for("active", timeout=10)
            await stable(s)
            peer.go_silent()
            t0 = anyio.current_time()
            await s.wait_for("reconnecting", timeout=10)
            await s.wait_for("active", timeout=10)
            elapsed = anyio.current_time() - t0
        states = [e.target for e in s.trace]
        assert "ice_grace" in states and "restarting" in states
        assert elapsed < 8  # ~1 s detection + 1 s grace + reconnect, far below aiortc's ~30 s


async def test_demo_recovers_from_each_fault(capsys: pytest.CaptureFixture[str],
                                             tmp_path: Any) -> None:
    import wave

    from rich.console import Console

    for fault in ("close", "server-error"):
        record = str(tmp_path / f"{fault}.wav")
        code = await run_demo(8.0, fault, record, Console(width=100))
        out = capsys.readouterr().out
        assert code == 0, out
        assert "demo passed" in out
        with wave.open(record) as w:
            seconds = w.getnframes() / w.getframerate()
        # One recording across the restart: longer than the first connection alone (~4 s).
        assert seconds > (4.5 if fault == "close" else 2.0), seconds


def _live_pcs() -> int:
    gc.collect()
    return sum(1 for o in gc.get_objects() if isinstance(o, RTCPeerConnection))


async def test_no_leak_over_repeated_sessions() -> None:
    cycles = int(os.environ.get("FSM_VOICE_SESSION_CYCLES", "20"))
    async with RealtimePeer() as peer:

        async def one() -> None:
            s = session_for(peer)
            async with s:
                await s.start()
                await s.wait_for("active", timeout=10)

        await one()
        await anyio.sleep(0.2)
        fds0 = len(os.listdir("/proc/self/fd"))
        tasks0 = len(asyncio.all_tasks())
        threads0 = threading.active_count()
        for _ in range(cycles):
            await one()
        await anyio.sleep(0.5)
        assert _live_pcs() <= 1  # at most the peer's side of a call still closing
        assert len(asyncio.all_tasks()) <= tasks0
        assert len(os.listdir("/proc/self/fd")) <= fds0 + 2
        assert threading.active_count() <= threads0 + 2  # default executor may add threads


def _unused(_: Mapping[str, Any]) -> None:  # pragma: no cover
    pass


async def test_no_app_event_lost_across_a_restart_and_fresh_key_per_attempt() -> None:
    keys: list[str] = []

    async def token() -> str:
        keys.append(f"ek_{len(keys)}")
        return keys[-1]

    async with RealtimePeer() as peer:
        s = realtime_session(peer.base_url, token, policy=FAST, host_addresses=["127.0.0.1"],
                             audio_source=SilenceSource, audio_sink=NullSink)
        sent = 0
        async with s:
            await s.start()
            await s.wait_for("active", timeout=10)
            await stable(s)
            peer.go_silent()
            with anyio.fail_after(15):
                while not any(e.target == "restarting" for e in s.trace) or sent < 40:
                    s.send_event({"type": "conversation.item.delete", "item_id": f"x{sent}"})
                    sent += 1
                    await anyio.sleep(0.05)
            await s.wait_for("active", timeout=15)
            with anyio.fail_after(5):
                while peer.stats()["events_received"].get("conversation.item.delete", 0) < sent:
                    await anyio.sleep(0.05)
        # go_silent drops the peer's SACKs too, so events the old call did receive are re-sent
        # (the client cannot tell them from lost ones): at least once, never fewer.
        assert peer.stats()["events_received"]["conversation.item.delete"] >= sent
        assert s.sent_events == s.delivered_events == sent
        assert s.dropped_events == 0
        assert len(keys) >= 2 and len(set(keys)) == len(keys)  # one fresh key per SDP exchange


async def test_offer_prefers_opus_and_has_the_oai_events_channel() -> None:
    async with RealtimePeer() as peer:
        s = session_for(peer)
        async with s:
            await s.start()
            await s.wait_for("active", timeout=10)
            transport: Any = s.transport
            offer = transport._conn.pc.localDescription.sdp
        audio = next(line for line in offer.splitlines() if line.startswith("m=audio"))
        payloads = audio.split()[3:]
        rtpmap = dict(line[len("a=rtpmap:"):].split(" ", 1) for line in offer.splitlines()
                      if line.startswith("a=rtpmap:"))
        names = [rtpmap[p].split("/")[0].lower() for p in payloads if p in rtpmap]
        assert names[0] == "opus" and {"pcmu", "pcma"} <= set(names)
        assert "a=sendrecv" in offer and "m=application" in offer
        assert "candidate" in offer and " 127.0.0.1 " in offer


async def test_session_rolls_over_before_the_servers_time_limit() -> None:
    async with RealtimePeer(max_session_seconds=4.0) as peer:
        policy = SessionPolicy(retry=FAST.retry, ice=FAST.ice, monitor=FAST.monitor,
                               rollover=RolloverPolicy(margin=2.0, min_interval=1.0))
        s = session_for(peer, policy=policy)
        server_errors: list[str] = []
        s.on_server_event(lambda e: server_errors.append(str(e.get("error")))
                          if e.get("type") == "error" else None)
        async with s:
            await s.start()
            await s.wait_for("active", timeout=10)
            first = set(peer.calls)
            with anyio.fail_after(10):
                # rollovers counts the request; wait for the restart it causes to complete
                while s.rollovers < 1 or not any(
                        e.source == "restarting" and e.target == "active" for e in s.trace):
                    await anyio.sleep(0.1)
            assert set(peer.calls).isdisjoint(first)  # a new call replaced the old one
        assert server_errors == []  # rolled over before the server had to expire it
