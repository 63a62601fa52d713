"""At-least-once client events across a transport restart.

Events sent on the ``oai-events`` channel while the path is already dead go into the old SCTP
association; the transport reports the ones the peer never acknowledged
(:meth:`AiortcTransport.unacknowledged_events`) and the runtime re-sends them on the new
connection. Real aiortc on 127.0.0.1 against :class:`~fsm_voice.peer.server.RealtimePeer`, whose
``go_silent()`` drops everything it sends (SCTP SACKs included) while it still receives.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Mapping
from typing import Any

import anyio
import pytest

from fsm_voice.client import realtime_session
from fsm_voice.peer.server import RealtimePeer
from fsm_voice.ports import TransportSignal
from fsm_voice.signaling import HttpSignaling
from fsm_voice.transport import AiortcTransport, NullSink, SilenceSource
from tests.test_session_real import FAST, stable  # the short real-session policy

pytestmark = pytest.mark.anyio



@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class _Sink:
    def __init__(self) -> None:
        self.signals: list[TransportSignal] = []

    def signal(self, signal: TransportSignal, detail: str = "") -> None:
        self.signals.append(signal)

    def server_event(self, event: Mapping[str, Any]) -> None:
        pass


async def _until(predicate: Any, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError("condition not met in time")
        await asyncio.sleep(0.05)


@pytest.fixture
async def peer() -> AsyncIterator[RealtimePeer]:
    async with RealtimePeer() as p:
        yield p


@pytest.fixture
async def transport(peer: RealtimePeer) -> AsyncIterator[AiortcTransport]:
    signaling = HttpSignaling(peer.base_url, "ek_x")
    t = AiortcTransport(signaling, host_addresses=["127.0.0.1"], audio_source=SilenceSource,
                        audio_sink=NullSink, liveness_interval=0.25, liveness_stall=60.0)
    sink = _Sink()
    try:
        await t.open(sink)
        await _until(lambda: TransportSignal.CHANNEL_OPEN in sink.signals)
        yield t
    finally:
        await t.close()
        await signaling.aclose()


def _events(n: int) -> list[dict[str, Any]]:
    events: list[dict[str, Any]] = [
        {"type": "conversation.item.delete", "item_id": f"x{i}"} for i in range(n)
    ]
    # Larger than one SCTP chunk (1200 bytes): fragmented, must be reassembled.
    events[n // 2] = {"type": "conversation.item.delete", "item_id": "y" * 5000}
    return events


async def test_unacknowledged_events_are_the_ones_sent_to_a_silent_peer(
    peer: RealtimePeer, transport: AiortcTransport
) -> None:
    await asyncio.sleep(0.3)  # anything sent at setup is acknowledged by now
    assert transport.unacknowledged_events() == []
    assert peer.go_silent() == 1
    await asyncio.sleep(0.2)  # SACKs in flight before the silence have landed
    events = _events(30)
    for event in events:
        transport.send_event(event)
    assert transport.unacknowledged_events() == events  # queued, not even fragmented yet
    await asyncio.sleep(0.5)  # sent (some retransmitted), never acknowledged
    assert transport.unacknowledged_events() == events
    await transport.close()
    assert transport.unacknowledged_events() == []  # no association left


async def test_acknowledged_events_are_not_reported(
    peer: RealtimePeer, transport: AiortcTransport
) -> None:
    events = _events(30)
    for event in events:
        transport.send_event(event)
    assert transport.unacknowledged_events() == events
    await _until(lambda: transport.unacknowledged_events() == [], timeout=5)
    assert peer.stats()["events_received"]["conversation.item.delete"] == len(events)


async def test_no_event_sent_into_a_dead_path_is_lost_across_a_restart(
    peer: RealtimePeer,
) -> None:
    s = realtime_session(peer.base_url, "ek_x", policy=FAST, host_addresses=["127.0.0.1"],
                         audio_source=SilenceSource, audio_sink=NullSink)
    sent = 0
    async with s:
        await s.start()
        await s.wait_for("active", timeout=10)
        old_call = s.transport.call_id  # type: ignore[attr-defined]
        assert isinstance(old_call, str)
        await stable(s)  # a failure now restarts (same session), not a counted reconnect
        peer.go_silent()
        with anyio.fail_after(15):
            while not any(e.target == "restarting" for e in s.trace) or sent < 40:
                s.send_event({"type": "conversation.item.delete", "item_id": f"x{sent}"})
                sent += 1
                await anyio.sleep(0.05)
        await s.wait_for("active", timeout=15)
        new_call = s.transport.call_id  # type: ignore[attr-defined]
        assert new_call != old_call

        def received(call_id: str) -> int:
            for info in peer.list_calls():
                if info["call_id"] == call_id:
                    return int(info["events_received"].get("conversation.item.delete", 0))
            return 0

        with anyio.fail_after(5):
            while received(new_call) < sent:
                await anyio.sleep(0.05)
        await anyio.sleep(0.3)
        # Every event was sent after the silence began, so none was acknowledged by the old
        # call: all of them reach the new one (the old one got some too: at-least-once).
        assert received(new_call) == sent
        assert s.resent_events > 0
        assert received(old_call) >= s.resent_events
        assert s.sent_events == s.delivered_events == sent
        assert s.dropped_events == 0
