"""The conversation model (sans-IO): stable ids across calls, updates, replay budgets."""

from __future__ import annotations

import itertools
from collections.abc import Iterable
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fsm_voice.conversation import (
    LIVE_MAX_MESSAGES,
    LIVE_MAX_TOKENS,
    Conversation,
    ConversationError,
    Item,
    assign_item_id,
    estimate_tokens,
    item_from_wire,
)


def items_equal(ours: Iterable[Item], theirs: Iterable[dict[str, Any]]) -> bool:
    """Whether the server's wire items hold the same items as ours (content and order)."""
    wire = [item_from_wire(raw, str(raw.get("id", ""))) for raw in theirs]
    mine = list(ours)
    return len(wire) == len(mine) and all(
        w is not None and w.matches(m) for w, m in zip(wire, mine, strict=True))


def msg(item_id: str, role: str, text: str | None, *, audio: bool = False) -> dict[str, Any]:
    kind = ("output_audio" if role == "assistant" else "input_audio") if audio else (
        "output_text" if role == "assistant" else "input_text")
    key = "transcript" if audio else "text"
    return {"id": item_id, "type": "message", "role": role, "content": [{"type": kind, key: text}]}


def created(item: dict[str, Any], prev: str | None = None) -> dict[str, Any]:
    return {"type": "conversation.item.created", "previous_item_id": prev, "item": item}


_SERVER_IDS = itertools.count()  # a server never reuses an id, across calls either


class Server:
    """A stand-in for one backend call's conversation: stores created items, echoes them."""

    def __init__(self, honour_ids: bool = True) -> None:
        self.items: list[dict[str, Any]] = []
        self.honour_ids = honour_ids

    def create(self, event: dict[str, Any]) -> list[dict[str, Any]]:
        item = dict(event["item"])
        if not self.honour_ids or "id" not in item:
            item["id"] = f"srv_{next(_SERVER_IDS)}"
        assert all(i["id"] != item["id"] for i in self.items), "duplicate id on the server"
        prev = self.items[-1]["id"] if self.items else None
        self.items.append(item)
        return [{"type": t, "previous_item_id": prev, "item": item} for t in
                ("conversation.item.created", "conversation.item.added",
                 "conversation.item.done")]


def restart(conv: Conversation, honour_ids: bool = True) -> tuple[Server, int]:
    conv.begin_call()
    server = Server(honour_ids)
    events, report = conv.realtime_replay()
    for ev in events:
        for echo in server.create(ev):
            conv.observe(echo)
    return server, len(report.replayed)


@pytest.mark.parametrize("honour_ids", [True, False])
def test_replayed_items_are_recognised_across_many_restarts(honour_ids: bool) -> None:
    conv = Conversation()
    conv.observe(created(msg("a1", "user", "hello")))
    conv.observe(created(msg("a2", "assistant", "hi there"), "a1"))
    for _ in range(6):
        server, replayed = restart(conv, honour_ids)
        assert replayed == 2
        assert len(conv) == 2
        assert items_equal(conv, server.items)
        assert [conv.server_id(i.id) for i in conv] == [i["id"] for i in server.items]
    assert [i.id for i in conv] == ["a1", "a2"]  # stable ids: the first server ids
    # The replay carries the stable id so an honouring server echoes it unchanged.
    conv.begin_call()
    events, _ = conv.realtime_replay()
    assert [e["item"]["id"] for e in events] == ["a1", "a2"]
    assert events[1]["item"]["content"] == [{"type": "output_text", "text": "hi there"}]


def test_transcripts_updates_truncation_and_deletion_follow_the_item() -> None:
    conv = Conversation()
    conv.observe(created(msg("u1", "user", None, audio=True)))
    assert not conv.items[0].replayable
    conv.observe({"type": "conversation.item.input_audio_transcription.completed",
                  "item_id": "u1", "content_index": 0, "transcript": "what time is it"})
    conv.observe({"type": "conversation.item.added", "item": msg("r1", "assistant", None,
                                                                 audio=True)})
    conv.observe({"type": "response.output_audio_transcript.done", "item_id": "r1",
                  "content_index": 0, "transcript": "it is noon"})
    # The done event carries the transcript too; a later added without it keeps it.
    conv.observe({"type": "conversation.item.added", "item": msg("r1", "assistant", None,
                                                                 audio=True)})
    assert [i.text for i in conv] == ["what time is it", "it is noon"]
    server, _ = restart(conv)
    # After the restart the old call's ids still address the item.
    conv.observe({"type": "conversation.item.truncated", "item_id": server.items[1]["id"],
                  "content_index": 0, "audio_end_ms": 300})
    assert conv.get("r1") is not None and conv.get("r1").truncated  # type: ignore[union-attr]
    _, report = conv.realtime_replay()
    assert report.unreplayable == ("r1",) and not report.complete
    conv.observe({"type": "conversation.item.deleted", "item_id": "u1"})
    assert [i.id for i in conv] == ["r1"]
    assert conv.get("u1") is None


def test_previous_item_id_places_an_insertion() -> None:
    conv = Conversation()
    conv.observe(created(msg("a", "user", "one")))
    conv.observe(created(msg("c", "user", "three"), "a"))
    conv.observe(created(msg("b", "user", "two"), "a"))
    assert [i.text for i in conv] == ["one", "two", "three"]


def test_bounded_and_evictions_are_returned() -> None:
    conv = Conversation(limit=3)
    evicted = [conv.observe(created(msg(f"i{n}", "user", f"t{n}"))) for n in range(5)]
    assert [e.id for batch in evicted for e in batch] == ["i0", "i1"]
    assert [i.id for i in conv] == ["i2", "i3", "i4"]
    assert conv.evicted_total == 2
    assert conv.resolve("i0") is None


def test_translate_rewrites_ids_of_an_earlier_call() -> None:
    conv = Conversation()
    conv.observe(created(msg("old", "user", "x")))
    restart(conv, honour_ids=False)
    new = conv.server_id("old")
    assert new is not None and new != "old"
    ev = {"type": "conversation.item.delete", "item_id": "old"}
    assert conv.translate(ev) == {"type": "conversation.item.delete", "item_id": new}
    other = {"type": "conversation.item.delete", "item_id": "unknown"}
    assert conv.translate(other) is other


def test_function_items_replay_on_realtime_not_on_live() -> None:
    conv = Conversation()
    conv.observe(created({"id": "f1", "type": "function_call", "call_id": "c1",
                          "name": "get_time", "arguments": "{}"}))
    conv.observe(created({"id": "f2", "type": "function_call_output", "call_id": "c1",
                          "output": "noon"}))
    conv.observe(created({"id": "s1", "type": "message", "role": "system",
                          "content": [{"type": "input_text", "text": "be brief"}]}))
    conv.begin_call()
    events, report = conv.realtime_replay()
    assert [e["item"]["type"] for e in events] == ["function_call", "function_call_output",
                                                  "message"]
    assert report.complete
    live, lreport = conv.live_input()
    assert live == [{"type": "message", "id": "s1", "role": "developer",
                     "content": [{"type": "input_text", "text": "be brief"}]}]
    assert lreport.unreplayable == ("f1", "f2")


def test_live_input_keeps_the_newest_within_128_messages() -> None:
    conv = Conversation(limit=500)
    for n in range(200):
        conv.observe(created(msg(f"m{n}", "user" if n % 2 else "assistant", f"#{n}")))
    live, report = conv.live_input()
    assert len(live) == LIVE_MAX_MESSAGES
    assert [m["id"] for m in live] == [f"m{n}" for n in range(72, 200)]  # original order
    assert report.cut == tuple(f"m{n}" for n in range(72))
    assert all(len(m["content"]) == 1 for m in live)


def test_live_input_token_budget_cuts_a_suffix_never_skips() -> None:
    conv = Conversation()
    conv.observe(created(msg("small_old", "user", "hi")))
    conv.observe(created(msg("huge", "user", "x" * 30_000)))  # ~10k tokens alone
    conv.observe(created(msg("recent", "user", "latest words")))
    live, report = conv.live_input()
    assert [m["id"] for m in live] == ["recent"]
    assert report.cut == ("small_old", "huge")  # the small old one is not fitted in behind
    assert report.tokens == estimate_tokens("latest words") <= LIVE_MAX_TOKENS
    assert "2 cut" in report.describe()


def test_estimate_is_conservative_and_a_counter_can_be_injected() -> None:
    assert estimate_tokens("") == 4
    assert estimate_tokens("hello world, this is text") > len("hello world, this is text") / 4
    conv = Conversation()
    for n in range(5):
        conv.observe(created(msg(f"m{n}", "user", "abc")))
    _, report = conv.live_input(max_tokens=3, count_tokens=lambda s: 1)
    assert report.replayed == ("m2", "m3", "m4")


def test_bad_input_is_a_typed_error() -> None:
    with pytest.raises(ConversationError):
        Conversation(limit=0)
    with pytest.raises(ConversationError):
        Conversation().live_input(max_tokens=-1)
    with pytest.raises(ConversationError):
        Conversation().realtime_replay(max_items=True)  # type: ignore[arg-type]


def test_assign_item_id() -> None:
    ev = {"type": "conversation.item.create", "item": {"type": "message", "role": "user",
                                                       "content": []}}
    out = assign_item_id(ev, lambda: "fixed")
    assert out["item"]["id"] == "fixed" and "id" not in ev["item"]
    assert assign_item_id(out, lambda: "other") is out
    other = {"type": "response.create"}
    assert assign_item_id(other) is other


# -- property: any interleaving of items, edits and restarts -------------------------------

_ops = st.lists(st.one_of(
    st.tuples(st.just("add"), st.sampled_from(["user", "assistant"]), st.text(max_size=8)),
    st.tuples(st.just("delete"), st.integers(0, 30)),
    st.tuples(st.just("truncate"), st.integers(0, 30)),
    st.tuples(st.just("restart"), st.booleans()),
), max_size=40)


@settings(max_examples=150, deadline=None)
@given(_ops, st.integers(2, 12))
def test_conversation_equals_the_servers_after_any_restarts(ops: list[Any], limit: int) -> None:
    """The server's conversation after each restart holds exactly our replayable items, in
    order, no duplicates; our own never holds an item twice."""
    conv = Conversation(limit=limit)
    server = Server()
    for op in ops:
        if op[0] == "add":
            item = {k: v for k, v in msg("", op[1], op[2] or None).items() if k != "id"}
            for echo in server.create({"item": item}):
                conv.observe(echo)
        elif op[0] in ("delete", "truncate") and server.items:
            target = server.items[op[1] % len(server.items)]
            if op[0] == "delete":
                server.items.remove(target)
                conv.observe({"type": "conversation.item.deleted", "item_id": target["id"]})
            else:
                target["content"] = [{"type": "input_audio", "transcript": None}]
                conv.observe({"type": "conversation.item.truncated", "item_id": target["id"],
                              "content_index": 0, "audio_end_ms": 0})
        elif op[0] == "restart":
            server, _ = restart(conv, honour_ids=op[1])
            replayable = [i for i in conv if i.replayable]
            assert items_equal(replayable, server.items)
            assert [conv.server_id(i.id) for i in replayable] == [i["id"] for i in server.items]
        ids = [i.id for i in conv]
        assert len(ids) == len(set(ids)) <= limit


def test_aliases_of_earlier_calls_are_bounded() -> None:
    conv = Conversation(limit=2)
    conv.observe(created(msg("a", "user", "x")))
    for _ in range(50):
        restart(conv, honour_ids=False)
    assert len(conv._alias) <= 8 * conv.limit + len(conv)
    assert len(conv) == 1 and conv.server_id("a") is not None
