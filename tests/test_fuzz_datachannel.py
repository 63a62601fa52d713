"""Fuzz the data-channel path: whatever the server sends, the client parses, classifies and
routes it without raising, and the session never leaves its state on garbage."""

from __future__ import annotations

import json
from typing import Any

import anyio
from hypothesis import given, settings
from hypothesis import strategies as st

from fsm_voice.clock import VirtualClock
from fsm_voice.errors import VoiceError, classify_server_event
from fsm_voice.session import VoiceSession
from fsm_voice.testing import ScriptedTransport
from fsm_voice.transport.aiortc_transport import INVALID_MESSAGE_EVENT, parse_server_message

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner,
                                                                max_size=4),
    max_leaves=12,
)
event_types = st.sampled_from(["error", "input_audio_buffer.speech_started", "response.done",
                               "output_audio_buffer.stopped", "conversation.item.done",
                               "rate_limits.updated", "session.created", "x.unknown"])
server_events = st.fixed_dictionaries({"type": event_types}, optional={
    "error": json_values, "item": json_values, "rate_limits": json_values,
    "event_id": st.text(max_size=8)})


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.binary(max_size=200), st.text(max_size=200),
                 json_values.map(json.dumps), server_events.map(json.dumps)))
def test_parser_never_raises_and_always_yields_an_event(raw: Any) -> None:
    event = parse_server_message(raw)
    assert isinstance(event, dict) and isinstance(event.get("type"), str)
    try:
        parsed = json.loads(raw)
    except (ValueError, TypeError):
        assert event["type"] == INVALID_MESSAGE_EVENT
        return
    if not isinstance(parsed, dict):
        assert event["type"] == INVALID_MESSAGE_EVENT


@settings(max_examples=300, deadline=None)
@given(server_events)
def test_classifier_total_on_error_events(event: dict[str, Any]) -> None:
    assert isinstance(classify_server_event(event), VoiceError)


@settings(max_examples=40, deadline=None)
@given(st.lists(server_events.filter(lambda e: e["type"] != "error"), max_size=20))
def test_session_survives_any_non_error_server_events(events: list[dict[str, Any]]) -> None:
    async def body() -> None:
        t = ScriptedTransport(["ok"])
        async with VoiceSession(t, clock=VirtualClock()) as s:
            await s.start()
            await anyio.wait_all_tasks_blocked()
            for e in events:
                t.server(e)
            await anyio.wait_all_tasks_blocked()
            assert s.status in ("active", "listening", "speaking")
            assert s.errors == []

    anyio.run(body)
