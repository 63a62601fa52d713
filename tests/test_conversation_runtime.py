"""The conversation and the application's events across random faults and restarts, in the
runtime (VoiceSession + a scripted transport with a stand-in backend + virtual clock).

The backend keeps one conversation per call (client item ids honoured, a duplicate id is a
violation), records every event it receives, acknowledges what it received unless its path is
silent (then its acknowledgements and answers wait, and are lost if the call closes), and
answers item creations with the ``conversation.item.created`` / ``added`` / ``done`` echoes.
"""

from __future__ import annotations

import itertools
import json
from collections import Counter
from collections.abc import Callable, Mapping
from typing import Any

import anyio
from hypothesis import event as label
from hypothesis import given, settings
from hypothesis import strategies as st

from fsm_voice.clock import VirtualClock
from fsm_voice.policy import RetryPolicy, SessionPolicy
from fsm_voice.ports import TransportSignal, TransportSink
from fsm_voice.session import VoiceSession
from fsm_voice.testing import ScriptedTransport

_IDS = itertools.count()


class FakeCall:
    def __init__(self) -> None:
        self.wire: list[dict[str, Any]] = []
        self.received = 0
        self.acked = 0
        self.silent = False
        self.items: list[dict[str, Any]] = []
        self.event_ids: list[str] = []
        self.duplicate_items: list[str] = []
        self.outgoing: list[dict[str, Any]] = []
        """Answers not yet through (SCTP is reliable: delayed while silent, lost on close)."""

    def process(self, event: Mapping[str, Any]) -> list[dict[str, Any]]:
        eid = event.get("event_id")
        if isinstance(eid, str):
            self.event_ids.append(eid)
        if event.get("type") != "conversation.item.create":
            return []
        item = dict(event["item"])
        if "id" not in item:
            item["id"] = f"srv_{next(_IDS)}"
        if any(i["id"] == item["id"] for i in self.items):
            self.duplicate_items.append(item["id"])
            return [{"type": "error", "error": {"type": "invalid_request_error",
                                                "code": "item_already_exists",
                                                "event_id": eid}}]
        prev = self.items[-1]["id"] if self.items else None
        self.items.append(item)
        return [{"type": t, "previous_item_id": prev, "item": item} for t in
                ("conversation.item.created", "conversation.item.added",
                 "conversation.item.done")]


class Backend(ScriptedTransport):
    def __init__(self) -> None:
        super().__init__(default="ok")
        self.calls: list[FakeCall] = []

    async def open(self, sink: TransportSink) -> None:
        self.calls.append(FakeCall())
        await super().open(sink)

    def send_event(self, event: Mapping[str, Any]) -> None:
        super().send_event(event)
        self.calls[-1].wire.append(json.loads(json.dumps(event)))

    def unacknowledged_events(self) -> list[Mapping[str, Any]]:
        if not self.is_open or not self.calls:
            return []
        call = self.calls[-1]
        return call.wire[call.acked:]

    def deliver(self) -> None:
        """The server receives what was sent; answers and acknowledges unless silent."""
        if not self.is_open or not self.calls:
            return
        call = self.calls[-1]
        call.outgoing += [a for ev in call.wire[call.received:] for a in call.process(ev)]
        call.received = len(call.wire)
        if call.silent:
            return
        call.acked = call.received
        answers, call.outgoing = call.outgoing, []
        for answer in answers:
            if self.sink is None:
                return
            self.server(answer)


def _item(text: str) -> dict[str, Any]:
    return {"type": "conversation.item.create",
            "item": {"type": "message", "role": "user",
                     "content": [{"type": "input_text", "text": text}]}}


OPS = st.lists(st.one_of(
    st.tuples(st.just("item"), st.text("abc", min_size=1, max_size=3)),
    st.just(("other",)),
    st.just(("deliver",)),
    st.just(("silent",)),
    st.tuples(st.just("fault"), st.sampled_from(["close", "server_error", "expired", "ice"])),
    st.tuples(st.just("advance"), st.sampled_from([0.5, 2.0, 10.0])),
), max_size=40)

POLICY = SessionPolicy(retry=RetryPolicy(base_delay=0.5, max_attempts=20))


async def _scenario(ops: list[tuple[Any, ...]],
                    inspect: Callable[[VoiceSession, Backend], None] | None = None,
                    ) -> tuple[VoiceSession, Backend]:
    clock = VirtualClock()
    t = Backend()
    s = VoiceSession(t, clock=clock, policy=POLICY)
    submitted: list[str] = []
    async with s:
        await s.start()
        await clock.settle()
        for op in ops:
            kind = op[0]
            if kind in ("item", "other") and s.status not in ("idle", "error"):
                event = _item(op[1]) if kind == "item" else {"type": "input_audio_buffer.clear"}
                event["event_id"] = f"app{len(submitted)}"
                submitted.append(event["event_id"])
                s.send_event(event)
            elif kind == "deliver":
                t.deliver()
            elif kind == "silent" and t.is_open:
                t.calls[-1].silent = True
            elif kind == "fault" and t.channel_open:
                if op[1] == "close":
                    t.emit(TransportSignal.FAILED)
                elif op[1] == "ice":
                    t.emit(TransportSignal.ICE_DISCONNECTED)
                else:
                    code = "server_error" if op[1] == "server_error" else "session_expired"
                    t.server({"type": "error", "error": {"type": "server_error", "code": code}})
            elif kind == "advance":
                await clock.advance(op[1])
            await clock.settle()
        # Heal: the path works again and time passes until the session is up and quiet.
        for _ in range(20):
            if t.calls:
                t.calls[-1].silent = False
            t.deliver()
            await clock.settle()
            if s.status in ("idle", "error") or (s.state == "active" and not len(s.outbox)
                                                 and t.unacknowledged_events() == []):
                break
            await clock.advance(5.0)
        t.deliver()
        await clock.settle()
        check(s, t, submitted)
        if inspect is not None:
            inspect(s, t)
    return s, t


def check(s: VoiceSession, t: Backend, submitted: list[str]) -> None:
    received: Counter[str] = Counter(e for c in t.calls for e in c.event_ids)
    resent = {e for r in s.outbox.closes for e in r.resent}
    dropped = {e for r in s.outbox.closes for e in r.dropped}
    assert all(not c.duplicate_items for c in t.calls), "an item was created twice in a call"
    dropped |= {e["event_id"] for e in s.outbox.dropped_events}
    for eid in submitted:
        assert received[eid] <= 1 or eid in resent, f"{eid} duplicated, not reported"
    if s.state == "active":
        conv = s.outbox.conversation
        mine = [(conv.server_id(i.id), i.text) for i in conv if i.replayable]
        theirs = [(i["id"], i["content"][0]["text"]) for i in t.calls[-1].items]
        assert mine == theirs
        assert not s.outbox.queue
    if s.state == "active" or s.status == "error":
        for eid in submitted:
            assert received[eid] >= 1 or eid in dropped, f"{eid} neither delivered nor reported"
    assert s.sent_events == s.outbox.ledger.submitted


@settings(max_examples=120, deadline=None)
@given(OPS)
def test_random_faults_keep_conversation_and_events(ops: list[tuple[Any, ...]]) -> None:
    s, t = anyio.run(_scenario, ops)
    label(f"calls={min(len(t.calls), 4)}")
    label(f"resent={min(s.resent_events, 3)}")


def test_a_silent_call_then_a_close_replays_once_and_resends_once() -> None:
    """Deterministic: an item echoed, then two sent into a silent path (received, never
    acknowledged or echoed), then the call closes: the new call gets the first by replay and
    the other two by re-send, each once; the second restart replays all three."""
    ops: list[tuple[Any, ...]] = [
        ("item", "a"), ("deliver",), ("silent",), ("item", "b"), ("item", "c"), ("other",),
        ("deliver",), ("fault", "close"), ("advance", 10.0), ("deliver",),
        ("fault", "close"), ("advance", 10.0), ("deliver",)]

    async def run() -> None:
        await _scenario(ops, inspect=inspect)

    def inspect(s: VoiceSession, t: Backend) -> None:
        assert len(t.calls) == 3
        assert [len(r) for r in (t.calls[1].items, t.calls[2].items)] == [3, 3]
        assert [len(r.replayed) for r in s.outbox.replays] == [1, 3]
        assert [len(r.resent) for r in s.outbox.closes] == [3, 0]  # b, c and the clear
        assert s.outbox.replayed == 4
        assert [i.text for i in s.outbox.conversation] == ["a", "b", "c"]

    anyio.run(run)


def test_a_replay_that_cannot_carry_everything_is_reported() -> None:
    """history_limit 2: after three items the oldest is evicted; the restart replays two and
    the session reports conversation_cut (nothing disappears silently)."""

    async def run() -> None:
        clock = VirtualClock()
        t = Backend()
        async with VoiceSession(t, clock=clock, policy=POLICY, history_limit=2) as s:
            await s.start()
            await clock.settle()
            for text in ("one", "two", "three"):
                s.send_event(_item(text))
            t.deliver()
            await clock.settle()
            t.emit(TransportSignal.FAILED)
            await clock.advance(10.0)
            t.deliver()
            await clock.settle()
            assert s.status == "active" and len(t.calls) == 2
            assert [i["content"][0]["text"] for i in t.calls[1].items] == ["two", "three"]
            cut = [e for e in s.errors if e.code == "conversation_cut"]
            assert len(cut) == 1 and "1 item(s) evicted" in cut[0].message

    anyio.run(run)
