"""The runtime's parts alone: the outbox (sans-IO, plain calls) and the dispatcher (a machine, a
scripted transport and a virtual clock, without the VoiceSession facade)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import anyio
import pytest

from fsm_voice.clock import VirtualClock
from fsm_voice.dispatcher import Dispatcher, Posted
from fsm_voice.fastpath import FastLifecycle
from fsm_voice.monitor import Monitor
from fsm_voice.outbox import Outbox, QueueOverflowError
from fsm_voice.policy import MonitorPolicy, QualityThresholds
from fsm_voice.testing import ScriptedTransport

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class Channel:
    """A data channel stand-in: records what is delivered, or refuses while ``down``."""

    def __init__(self) -> None:
        self.sent: list[Mapping[str, Any]] = []
        self.down = False

    def __call__(self, event: Mapping[str, Any]) -> None:
        if self.down:
            raise RuntimeError("channel closed")
        self.sent.append(event)


def item(text: str, iid: str, role: str = "user") -> dict[str, Any]:
    return {"type": "conversation.item.done", "item": {
        "id": iid, "type": "message", "role": role,
        "content": [{"type": "input_text", "text": text}]}}


def test_outbox_queues_while_down_and_sends_config_replay_then_queue_on_up() -> None:
    ob = Outbox(limit=2, session_config={"instructions": "x"})
    ch = Channel()
    ob.observe(item("hello", "i1"))
    ob.connection_closed(None, going="restarting")  # the call that reported i1 ended
    ob.submit({"type": "a"}, None)
    ob.submit({"type": "b"}, None)
    with pytest.raises(QueueOverflowError, match="event_queue_limit=2"):
        ob.submit({"type": "c"}, None)
    ob.connection_up(ch, replay=True)
    assert [e["type"] for e in ch.sent] == ["session.update", "conversation.item.create", "a",
                                           "b"]
    assert (ob.sent, ob.delivered, ob.replayed, len(ob)) == (2, 2, 1, 0)
    ch.sent.clear()
    ob.connection_up(ch, replay=False)  # after START: no replay
    assert [e["type"] for e in ch.sent] == ["session.update"]


def test_outbox_requeues_unacknowledged_events_in_front_or_reports_them() -> None:
    ob = Outbox(limit=10)
    ch = Channel()
    ob.connection_up(ch, replay=False)
    for name in ("a", "b", "c"):
        ob.submit({"type": name}, ch)
    ob.submit({"type": "d"}, None)  # queued (not up any more)
    assert ob.connection_closed(lambda: ch.sent[1:3], going="restarting") is None  # b, c
    assert [e["type"] for e in ob.queue] == ["b", "c", "d"] and ob.resent == 2
    assert ob.delivered == 1
    ob.connection_up(ch, replay=False)
    assert ob.delivered == 4
    err = ob.connection_closed(lambda: ch.sent[-1:], going="error")  # d
    assert err is not None and err.code == "client_events_dropped" and ob.dropped == 1
    ob.connection_up(ch, replay=False)
    assert ob.connection_closed(lambda: [{"type": "x"}], going="idle") is None  # SCTP's job


def test_outbox_history_is_bounded_and_new_conversation_forgets_it() -> None:
    ob = Outbox(limit=5, history_limit=3)
    for i in range(10):
        ob.observe(item(f"t{i}", f"i{i}"))
    ob.observe({"type": "conversation.item.done", "item": {"type": "message", "role": "user",
                                                           "content": [{"type": "input_audio"}]}})
    assert list(ob.history) == ["i7", "i8", "i9"]
    ob.submit({"type": "a"}, None)
    err = ob.new_conversation()
    assert err is not None and "1 client event" in err.message
    assert not ob.history and not ob.queue and ob.new_conversation() is None


async def test_dispatcher_alone_runs_effects_and_drops_stale_events() -> None:
    clock = VirtualClock()
    t = ScriptedTransport(["ok", "ok"])
    machine = FastLifecycle()
    observed: list[tuple[str, str]] = []
    monitor = Monitor(clock=clock, monitor=MonitorPolicy(), quality=QualityThresholds(),
                      status=lambda: machine.status, active=lambda: True,
                      record=lambda e, d: observed.append((e, d)))
    d = Dispatcher(machine, t, clock=clock, outbox=Outbox(limit=4), monitor=monitor)
    async with anyio.create_task_group() as tg:
        d.attach(tg)
        tg.start_soon(d.run)
        d.post(Posted("start"))
        await clock.settle()
        assert machine.state_id == "active" and t.opens == 1
        await clock.advance(10)  # up for stable_after: a failure now restarts at once
        old = d.generation
        d.post(Posted("transport_failed", token=old))
        await clock.settle()
        assert machine.state_id == "active" and d.generation == old + 1 and t.opens == 2
        d.post(Posted("transport_failed", token=old))  # from the closed connection
        await d.drain()
        assert d.trace[-1].outcome == "stale" and machine.state_id == "active"
        d.post(Posted("stop"))
        await d.drain()
        await d.wait_closed()
        assert machine.state_id == "idle" and not t.is_open and d.timers == {}
        tg.cancel_scope.cancel()
