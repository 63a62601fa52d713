"""The trace writer and the metrics taps read the dispatcher's trace in batches
(``Dispatcher.add_trace_reader``): the file says the same as the per-event hook, in the order things
happened, and reaches the disk without waiting for close; the taps' shortcut is sound for
every row of the machine's table."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import anyio
import pytest

from fsm_voice.clock import VirtualClock
from fsm_voice.dispatcher import FEED_BATCH, Traced
from fsm_voice.machine import STATUS_OF
from fsm_voice.machine.table import TABLE
from fsm_voice.policy import RetryPolicy, SessionPolicy
from fsm_voice.ports import TransportSignal
from fsm_voice.session import VoiceSession
from fsm_voice.telemetry import UP_STATUSES, Hub
from fsm_voice.testing import ScriptedTransport, failure
from fsm_voice.trace import TraceWriter, read_trace

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def same(written: dict[str, Any], expected: dict[str, Any]) -> bool:
    """A written event record against the writer's generic encoding of the same entry (the
    cached fast path writes ``t`` with 6 decimals, the generic one rounds it)."""
    a, b = dict(written), dict(expected)
    ta, tb = a.pop("t"), b.pop("t")
    a.pop("draws", None)
    return a == b and math.isclose(ta, tb, abs_tol=1e-6)


async def test_the_file_says_what_the_per_event_hook_saw(tmp_path: Path) -> None:
    """Long bursts (several batches), parameters, refusals, stale signals, a failure with a
    jittered backoff: every entry the per-event hook saw is one record, in order, equal to the
    writer's generic encoding of it."""
    clock = VirtualClock()
    t = ScriptedTransport(["ok", failure("recoverable"), "ok"])
    policy = SessionPolicy(retry=RetryPolicy(base_delay=0.5, jitter=0.3))
    seen: list[Traced] = []
    path = tmp_path / "t.jsonl"
    async with VoiceSession(t, clock=clock, policy=policy) as s:
        writer = s.record_trace(path)
        s.on_trace(seen.append)
        await s.start()
        await clock.advance(0.25)
        for i in range(3 * FEED_BATCH + 7):  # a burst longer than a batch
            t.emit(TransportSignal.ICE_DISCONNECTED if i % 2 == 0
                   else TransportSignal.ICE_RECOVERED)
        s.post("ice_recovered", code="by_hand")  # a parameter (taken: the last flap was down)
        s.post("ice_recovered")  # refused in active
        s.post("speech_started")
        s.post("speech_stopped")
        stale = t.sink
        t.emit(TransportSignal.FAILED)  # reconnect: fails once, backs off with jitter
        await clock.advance(5)
        assert stale is not None
        stale.signal(TransportSignal.ICE_DISCONNECTED)  # from the closed transport
        await s.dispatcher.drain()
        assert s.status == "active"
    _header, records = read_trace(path)
    events = [r for r in records if r["kind"] == "event"]
    expected = [writer._event(r.entry, r.item, r.generation, None) for r in seen
                if r.entry.outcome != "observed"]
    assert len(events) == len(expected) > 3 * FEED_BATCH
    assert all(same(w, json.loads(json.dumps(e))) for w, e in zip(events, expected, strict=True))
    outcomes = {e["outcome"] for e in events}
    assert {"taken", "refused", "stale"} <= outcomes
    assert any(e.get("code") == "by_hand" for e in events)
    assert any(e.get("draws") for e in events), "the jittered backoff's draws are recorded"
    assert records[-1]["kind"] == "end" and records[-1]["records"] == 1 + len(records)


async def test_an_error_follows_the_event_that_reported_it(tmp_path: Path) -> None:
    """An error is reported while its event's effects run, before the dispatcher hands the
    batch over: the writer takes the pending events first."""
    path = tmp_path / "t.jsonl"
    async with VoiceSession(ScriptedTransport([failure("fatal", "denied")]),
                            clock=VirtualClock()) as s:
        s.record_trace(path)
        await s.start()
        await s.dispatcher.drain()
        assert s.status == "error"
    _header, records = read_trace(path)
    kinds = [r["kind"] for r in records]
    i = kinds.index("error")
    assert records[i]["code"] == "denied"
    before = records[i - 1]
    assert before["kind"] == "event" and before["event"] == "signaling_failed"
    assert any(e["type"] == "report" for e in before["effects"])


async def test_a_quiet_session_reaches_the_file_before_close(tmp_path: Path) -> None:
    """Lines wait in memory at most ``flush_interval`` (then a timer writes them)."""
    path = tmp_path / "t.jsonl"
    t = ScriptedTransport(["ok"])
    async with VoiceSession(t) as s:
        s.record_trace(path, flush_interval=0.05)
        await s.start()
        await s.wait_for("active", timeout=5)
        t.emit(TransportSignal.ICE_DISCONNECTED)
        with anyio.fail_after(5):
            while b'"ice_disconnected"' not in path.read_bytes():
                await anyio.sleep(0.02)
        assert b'"kind":"end"' not in path.read_bytes()
    assert path.read_bytes().endswith(b"\n") and b'"kind":"end"' in path.read_bytes()


def test_flush_interval_is_checked(tmp_path: Path) -> None:
    for bad in (0, -1.0, math.inf, "1"):
        with pytest.raises(ValueError, match="flush_interval"):
            TraceWriter(tmp_path / "x.jsonl", flush_interval=bad)  # type: ignore[arg-type]


def test_no_row_opens_or_closes_the_transport_between_up_statuses() -> None:
    """What lets a tap skip the moves between two up statuses (``telemetry._FOLLOWED``)."""
    for row in TABLE:
        if STATUS_OF[row.source] in UP_STATUSES and STATUS_OF[row.target] in UP_STATUSES:
            kinds = {e.kind for e in row.effects}
            assert not kinds & {"open", "close"}, (row.source, row.event, row.target)


async def test_tap_counts_and_marker_include_entries_not_yet_handed_over() -> None:
    """Read outside a burst (the dashboard, a scrape), a tap takes the pending entries first."""
    clock = VirtualClock()
    t = ScriptedTransport(["ok"])
    async with VoiceSession(t, clock=clock) as s:
        tap = Hub().track(s)
        await s.start()
        await s.dispatcher.drain()
        before = tap.marker()
        s.post("speech_started")
        item = s.dispatcher.queue.popleft()  # dispatched by hand: no burst end, no barrier
        s.dispatcher.dispatch(item)
        assert tap.marker() == before + 1
        assert tap.counts[("speech_started", "active", "listening", "taken")] == 1
