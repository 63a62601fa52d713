"""The runtime's trace hook: ``session.on_trace`` sees every trace entry, in order, with the
posted item and the transport generation (taken, refused and stale alike)."""

from __future__ import annotations

import anyio
import pytest

from fsm_voice.clock import VirtualClock
from fsm_voice.ports import TransportSignal
from fsm_voice.session import Traced, VoiceSession
from fsm_voice.testing import ScriptedTransport

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


async def test_on_trace_sees_every_entry_with_its_item_and_generation() -> None:
    seen: list[Traced] = []
    t = ScriptedTransport(["ok", "ok"])
    async with VoiceSession(t, clock=VirtualClock()) as s:
        s.on_trace(seen.append)
        await s.start()
        await anyio.wait_all_tasks_blocked()
        first = s.dispatcher.generation
        s.post("ice_recovered")  # refused in active
        t.emit(TransportSignal.FAILED)
        await s.dispatcher.drain()
        await anyio.wait_all_tasks_blocked()
        await s.stop()
    assert [r.entry for r in seen] == list(s.trace)
    outcomes = {r.entry.outcome for r in seen}
    assert {"taken", "refused"} <= outcomes
    start = seen[0]
    assert start.entry.event == "start" and start.item is not None and start.item.token is None
    failed = next(r for r in seen if r.entry.event == "transport_failed")
    assert failed.item is not None and failed.item.token == first == failed.generation
