"""The outbox (sans-IO): conversation replay and the exactly-once ledger, in the runtime's calls."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pytest

from fsm_voice.outbox import DuplicateEventIdError, Outbox, QueueOverflowError


def user(item_id: str, text: str) -> dict[str, Any]:
    return {"id": item_id, "type": "message", "role": "user",
            "content": [{"type": "input_text", "text": text}]}


class Wire:
    def __init__(self) -> None:
        self.sent: list[Mapping[str, Any]] = []
        self.up = True

    def __call__(self, event: Mapping[str, Any]) -> None:
        if not self.up:
            raise RuntimeError("channel closed")
        self.sent.append(event)


def test_old_ids_are_rewritten_and_echoed_items_not_recreated() -> None:
    box = Outbox(limit=8)
    wire = Wire()
    box.connection_up(wire, replay=False)
    box.observe({"type": "conversation.item.created", "item": user("srv_a", "hello")})
    assert box.connection_closed(lambda: [], going="restarting") is None
    wire.sent.clear()
    assert box.connection_up(wire, replay=True) is None
    assert [e["item"]["id"] for e in wire.sent] == ["srv_a"]
    # A backend that assigns its own id: the echo is still recognised by content.
    box.observe({"type": "conversation.item.created", "item": user("srv_b", "hello")})
    assert len(box.conversation) == 1 and box.conversation.server_id("srv_a") == "srv_b"
    box.submit({"type": "conversation.item.delete", "item_id": "srv_a"}, wire)
    assert wire.sent[-1]["item_id"] == "srv_b"  # the current call's id
    assert box.replayed == 1


def test_queue_while_down_then_flush_in_order_and_count_once() -> None:
    box = Outbox(limit=2)
    wire = Wire()
    wire.up = False
    box.submit({"type": "a"}, wire)  # the channel fails: kept
    box.submit({"type": "b"}, None)
    with pytest.raises(QueueOverflowError, match="event_queue_limit=2"):
        box.submit({"type": "c"}, None)
    wire.up = True
    box.connection_up(wire, replay=False)
    assert [e["type"] for e in wire.sent] == ["a", "b"]
    assert all(isinstance(e["event_id"], str) for e in wire.sent)
    assert (box.sent, box.delivered, len(box)) == (2, 2, 0)
    with pytest.raises(DuplicateEventIdError):
        box.submit({"type": "a", "event_id": wire.sent[0]["event_id"]}, None)  # in flight


def test_an_error_ending_reports_what_was_not_delivered() -> None:
    box = Outbox(limit=8)
    wire = Wire()
    box.connection_up(wire, replay=False)
    box.submit({"type": "response.create"}, wire)
    err = box.connection_closed(lambda: list(wire.sent), going="error")
    assert err is not None and err.code == "client_events_dropped"
    assert (box.dropped, box.delivered) == (1, 0)
    box.submit({"type": "response.create"}, None)
    err = box.drop("the session went error")
    assert err is not None and box.dropped == 2 and len(box.dropped_events) == 1


def test_audio_that_cannot_be_replayed_is_reported_once_not_on_every_reconnect() -> None:
    box = Outbox(limit=10)
    sent: list[Mapping[str, Any]] = []

    def audio(iid: str) -> dict[str, Any]:
        return {"type": "conversation.item.done", "item": {
            "id": iid, "type": "message", "role": "user",
            "content": [{"type": "input_audio"}]}}

    box.conversation.observe(audio("a1"))
    first = box.connection_up(sent.append, replay=True)
    assert first is not None and first.code == "conversation_cut"
    assert "1 not replayable" in first.message
    for _ in range(3):  # later reconnects: nothing new was lost
        assert box.connection_up(sent.append, replay=True) is None
    box.conversation.observe(audio("a2"))  # a new audio-only turn: reported, once
    again = box.connection_up(sent.append, replay=True)
    assert again is not None and again.code == "conversation_cut"
    assert box.connection_up(sent.append, replay=True) is None
    box.new_conversation()
    box.conversation.observe(audio("a1"))
    assert box.connection_up(sent.append, replay=True) is not None
