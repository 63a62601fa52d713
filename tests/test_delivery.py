"""Exactly-once application events across connections (the sans-IO ledger)."""

from __future__ import annotations

import itertools
from collections import Counter
from collections.abc import Mapping
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fsm_voice.delivery import DuplicateEventIdError, Ledger, QueueOverflowError


def ids() -> Any:
    counter = itertools.count()
    return lambda: f"e{next(counter)}"


def send_all(box: Ledger) -> list[Mapping[str, Any]]:
    out = []
    while (ev := box.peek()) is not None:
        out.append(ev)
        box.sent()
    return out


def test_events_get_ids_and_item_creations_get_item_ids() -> None:
    box = Ledger(new_id=ids(), new_item=lambda: "it")
    a = box.submit({"type": "response.create"})
    b = box.submit({"type": "response.create", "event_id": "mine"})
    c = box.submit({"type": "conversation.item.create", "item": {"type": "message"}})
    assert (a["event_id"], b["event_id"], c["event_id"]) == ("e0", "mine", "e1")
    assert c["item"]["id"] == "it"
    with pytest.raises(DuplicateEventIdError):
        box.submit({"type": "response.create", "event_id": "mine"})


def test_unacknowledged_events_go_back_first_in_order_the_rest_count_as_delivered() -> None:
    box = Ledger(new_id=ids())
    for n in range(5):
        box.submit({"type": "t", "n": n})
    sent = send_all(box)
    box.submit({"type": "t", "n": 99})  # queued while the connection was dying
    report = box.connection_closed([sent[3], sent[1]], "retry")
    assert report.resent == ("e1", "e3") and report.delivered == ("e0", "e2", "e4")
    assert [e["n"] for e in box.queued] == [1, 3, 99]
    assert (box.delivered, box.resent) == (3, 2)


def test_an_item_creation_is_resent_until_its_echo_is_seen() -> None:
    box = Ledger(new_id=ids(), new_item=iter(["i0", "i1"]).__next__)
    box.submit({"type": "conversation.item.create", "item": {"type": "message"}})
    box.submit({"type": "conversation.item.create", "item": {"type": "message"}})
    send_all(box)
    box.observe({"type": "conversation.item.created", "item": {"id": "i0"}})
    # Both acknowledged by SCTP, only i0 echoed: i1 is not in the conversation, send it again.
    report = box.connection_closed([], "retry")
    assert report.delivered == ("e0",) and report.resent == ("e1",)


def test_an_error_naming_the_event_confirms_it() -> None:
    box = Ledger(new_id=ids())
    ev = box.submit({"type": "conversation.item.delete", "item_id": "x"})
    send_all(box)
    box.observe({"type": "error", "error": {"code": "item_not_found", "event_id": "e0"}})
    assert box.connection_closed([ev], "retry").delivered == ("e0",)


def test_fates_error_and_stop() -> None:
    box = Ledger(new_id=ids())
    ev = box.submit({"type": "t"})
    send_all(box)
    assert box.connection_closed([ev], "error").dropped == ("e0",)
    ev = box.submit({"type": "t"})
    send_all(box)
    assert box.connection_closed([ev], "stop").unconfirmed == ("e1",)
    box.submit({"type": "t"})
    assert [e["event_id"] for e in box.drop_queued()] == ["e2"]
    assert box.dropped == 2 and len(box) == 0


def test_without_the_capability_only_unechoed_creations_are_resent() -> None:
    box = Ledger(new_id=ids(), new_item=lambda: "i")
    box.submit({"type": "t"})
    box.submit({"type": "conversation.item.create", "item": {"type": "message"}})
    send_all(box)
    report = box.connection_closed(None, "retry")
    assert report.delivered == ("e0",) and report.resent == ("e1",)


def test_overflow_and_bad_limit() -> None:
    box = Ledger(limit=2)
    box.submit({"type": "t"})
    box.submit({"type": "t"})
    with pytest.raises(QueueOverflowError):
        box.submit({"type": "t"})
    with pytest.raises(ValueError):
        Ledger(limit=0)


# -- property: connections that die with part of what they sent unacknowledged ----------------

_conn = st.tuples(
    st.integers(0, 6),   # events the app submits before/while this connection is up
    st.integers(0, 10),  # how many sent messages the peer received (a prefix)
    st.integers(0, 10),  # how many of those it acknowledged (a prefix of the received)
)


@settings(max_examples=300, deadline=None)
@given(st.lists(_conn, min_size=1, max_size=8), st.booleans())
def test_every_event_arrives_once_or_is_reported(conns: list[tuple[int, int, int]],
                                                 ends_in_error: bool) -> None:
    box = Ledger(new_id=ids())
    received: Counter[str] = Counter()
    resent: set[str] = set()
    dropped: set[str] = set()
    submitted: list[str] = []
    for n, (new, got, acked) in enumerate(conns):
        submitted += [box.submit({"type": "t"})["event_id"] for _ in range(new)]
        wire = send_all(box)
        got = min(got, len(wire))
        acked = min(acked, got)
        received.update(e["event_id"] for e in wire[:got])
        last = n == len(conns) - 1
        fate = ("error" if ends_in_error else "retry") if last else "retry"
        report = box.connection_closed(wire[acked:], fate)
        resent.update(report.resent)
        dropped.update(report.dropped)
    if not ends_in_error:  # a final, healthy connection delivers whatever is left
        for ev in send_all(box):
            received[ev["event_id"]] += 1
    for eid in submitted:
        assert received[eid] >= 1 or eid in dropped, f"{eid} lost silently"
        assert received[eid] <= 1 or eid in resent, f"{eid} duplicated but not reported"
    assert box.submitted == len(submitted)


def test_in_flight_is_bounded() -> None:
    box = Ledger(new_id=ids(), max_in_flight=3)
    for _ in range(5):
        box.submit({"type": "t"})
    send_all(box)
    assert [e["event_id"] for e in box.in_flight] == ["e2", "e3", "e4"]
    assert box.delivered == 2
