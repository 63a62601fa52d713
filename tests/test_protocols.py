"""The backend protocol adapters (fsm_voice.protocols): Realtime's mapping as it was, Live's
mapping, and a VoiceSession driving each through the scripted transport (virtual clock)."""

from __future__ import annotations

import logging
import math
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import rule

import fsm_voice
from fsm_voice import dispatcher, session
from fsm_voice.clock import VirtualClock
from fsm_voice.effects import OpenReason, OpenTransport, Timer
from fsm_voice.errors import ConfigError, ErrorSource, Severity, VoiceError
from fsm_voice.policy import RetryPolicy, SessionPolicy
from fsm_voice.ports import TransportSink
from fsm_voice.protocols import (
    SERVER_EVENT_MAP,
    UNKNOWN_TYPES_KEPT,
    LiveProtocol,
    LiveTurns,
    LiveUsage,
    MachineEvent,
    RealtimeProtocol,
    make_protocol,
)
from fsm_voice.session import VoiceSession
from fsm_voice.testing import ScriptedTransport
from tests.test_session_stateful import RuntimeRules, _call

NOW = 1_800_000_000.0


# -- Realtime: the mapping the dispatcher had ------------------------------------------------
def test_realtime_mapping_is_the_dispatchers() -> None:
    assert dispatcher.SERVER_EVENT_MAP is SERVER_EVENT_MAP is session.SERVER_EVENT_MAP
    p = RealtimeProtocol()
    for wire, machine_event in SERVER_EVENT_MAP.items():
        assert p.server_event({"type": wire}, NOW) == MachineEvent(machine_event)
    assert p.server_event({"type": "session.created", "session": {"expires_at": NOW + 900}},
                          NOW) == MachineEvent("session_info", expires_in=900.0)
    info = p.server_event({"type": "session.updated", "session": {"expires_at": "soon"}}, NOW)
    assert info is not None and info.event == "session_info" and math.isnan(info.expires_in or 0)
    assert p.server_event({"type": "session.updated", "session": {}}, NOW) is None
    expired = p.server_event({"type": "error", "error": {"type": "invalid_request_error",
                                                         "code": "session_expired"}}, NOW)
    assert expired is not None and (expired.event, expired.severity, expired.code) == (
        "server_error", "recoverable", "session_expired")
    race = p.server_event({"type": "error", "error": {
        "code": "response_cancel_not_active", "message": "no active response found"}}, NOW)
    assert race is not None and race.severity == "ignorable"
    assert p.server_event({"type": "rate_limits.updated", "rate_limits": [{"name": "x"}]},
                          NOW) is None
    assert p.rate_limits == [{"name": "x"}]
    # Live events mean nothing to Realtime
    assert p.server_event({"type": "session.closed", "reason": "content"}, NOW) is None
    assert p.server_event({"type": "session.started", "session": {"expires_at": NOW}},
                          NOW) is None


def test_realtime_conversation_sees_the_event_itself() -> None:
    ev = {"type": "conversation.item.created", "item": {"id": "x"}}
    assert RealtimeProtocol().conversation_events(ev) == (ev,)


# -- Live --------------------------------------------------------------------------------------
def test_live_session_started_and_updated_give_session_info() -> None:
    p = LiveProtocol()
    for etype in ("session.started", "session.updated"):
        ev = {"type": etype, "session": {"id": "live_1", "expires_at": NOW + 3600,
                                          "status": "active"}}
        assert p.server_event(ev, NOW) == MachineEvent("session_info", expires_in=3600.0)
    assert p.server_event({"type": "session.started", "session": {"id": "live_1"}}, NOW) is None
    # Realtime's names are not Live's
    assert p.server_event({"type": "session.created", "session": {"expires_at": NOW}},
                          NOW) is None


@pytest.mark.parametrize(("reason", "severity"), [
    ("close_requested", Severity.FATAL), ("remote_hangup", Severity.FATAL),
    ("content", Severity.FATAL), ("expired", Severity.RECOVERABLE),
    ("connection_lost", Severity.RECOVERABLE), ("from_the_future", Severity.FATAL)])
def test_live_session_closed_posts_the_reason(reason: str, severity: Severity) -> None:
    p = LiveProtocol()
    ev = {"type": "session.closed", "event_id": "evt_1", "client_event_id": "evt_close_1",
          "reason": reason, "session": {"id": "live_1", "status": "active"},
          "usage": {"seconds": 45.8}}
    out = p.server_event(ev, NOW)
    assert out is not None and (out.event, out.code) == ("session_closed", reason)
    err = out.error
    assert isinstance(err, VoiceError)
    assert (err.code, err.severity, err.source) == (reason, severity, ErrorSource.SERVER)
    assert err.event_id == "evt_close_1" and "45.8 s" in err.message
    assert p.usage == LiveUsage(45.8, None)  # the final usage


@pytest.mark.parametrize("reason", [None, 7, "", ["expired"]])
def test_live_session_closed_without_a_usable_reason_is_unknown(reason: object) -> None:
    ev: dict[str, Any] = {"type": "session.closed"}
    if reason is not None:
        ev["reason"] = reason
    out = LiveProtocol().server_event(ev, NOW)
    assert out is not None and out.code == "unknown" and out.error is not None
    assert out.error.code == "unknown"


def test_live_error_with_null_code_keeps_the_client_event_id() -> None:
    p = LiveProtocol()
    out = p.server_event({"type": "error", "event_id": "evt_e", "error": {
        "type": "invalid_request_error", "code": None, "message": "The delegation type cannot "
        "change after session startup.", "param": "session.delegation.type",
        "client_event_id": "evt_update"}}, NOW)
    assert out is not None and (out.event, out.code, out.severity) == (
        "server_error", "unknown_error", "transient")
    assert out.error is not None
    assert (out.error.event_id, out.error.param, out.error.error_type) == (
        "evt_update", "session.delegation.type", "invalid_request_error")


def test_live_error_confirms_the_client_event_in_the_ledgers_shape() -> None:
    ev = {"type": "error", "error": {"code": None, "client_event_id": "c7"}}
    assert LiveProtocol().conversation_events(ev) == (
        ev, {"type": "error", "error": {"event_id": "c7"}})
    ack = {"type": "session.input_audio.muted", "client_event_id": "c8"}
    assert LiveProtocol().conversation_events(ack) == (ack,)


@pytest.mark.parametrize(("body", "code", "severity"), [
    ({"type": "server_error", "code": None}, "unknown_error", "recoverable"),
    ({"type": "authentication_error", "code": "invalid_api_key"}, "invalid_api_key", "fatal"),
    ({"code": "immutable_field_update"}, "immutable_field_update", "transient"),  # no type
    ({}, "unknown_error", "transient"),
    ({"type": "moderation", "code": None, "message": "cut off"}, "unknown_error", "transient"),
])
def test_live_error_severity(body: dict[str, Any], code: str, severity: str) -> None:
    out = LiveProtocol().server_event({"type": "error", "error": body}, NOW)
    assert out is not None and (out.code, out.severity) == (code, severity)


def test_live_usage_is_a_snapshot() -> None:
    p = LiveProtocol()
    assert p.usage is None
    p.server_event({"type": "session.usage.updated", "usage": {"seconds": 1.5}}, NOW)
    assert p.usage == LiveUsage(1.5, None)
    p.server_event({"type": "session.usage.updated", "usage": {"seconds": 3},
                    "context_window": {"usage_ratio": 0.25}}, NOW)
    assert p.usage == LiveUsage(3.0, 0.25)  # cumulative: replaced, never summed
    p.server_event({"type": "session.usage.updated", "usage": {"seconds": 4.0}}, NOW)
    assert p.usage == LiveUsage(4.0, 0.25)  # the ratio is optional: the last one stays
    for garbage in ({"seconds": -1}, {"seconds": "9"}, {"seconds": True}, None,
                    {"seconds": math.inf}):
        p.server_event({"type": "session.usage.updated", "usage": garbage}, NOW)
    assert p.usage == LiveUsage(4.0, 0.25)


def test_live_info_is_logged_and_unknown_types_counted(
        caplog: pytest.LogCaptureFixture) -> None:
    p = LiveProtocol()
    with caplog.at_level(logging.INFO, logger="fsm_voice.session"):
        assert p.server_event({"type": "info", "code": "data_channel_permissions",
                               "message": "event not allowed"}, NOW) is None
    assert any("data_channel_permissions" in r.getMessage() and r.levelno == logging.INFO
               for r in caplog.records)
    assert p.unknown_events == {}
    for etype in ("decision.made", "decision.made", "input_audio_buffer.speech_started"):
        assert p.server_event({"type": etype}, NOW) is None  # no VAD on Live: not mapped
    assert p.unknown_events == {"decision.made": 2, "input_audio_buffer.speech_started": 1}
    for etype in ("session.input_transcript.delta", "session.input_audio.muted",
                  "response.event", "session.delegation.created"):
        p.server_event({"type": etype}, NOW)  # known, nothing for the machine
    assert sum(p.unknown_events.values()) == 3
    for i in range(UNKNOWN_TYPES_KEPT + 10):
        p.server_event({"type": f"x.{i}"}, NOW)
    assert len(p.unknown_events) == UNKNOWN_TYPES_KEPT + 1  # bounded: the rest is <other>
    assert p.unknown_events["<other>"] == 12
    assert p.server_event({"type": 5}, NOW) is None and p.server_event({}, NOW) is None


def _delta(side: str, text: str, start: float | None = None,
           end: float | None = None) -> dict[str, Any]:
    ev: dict[str, Any] = {"type": f"session.{side}_transcript.delta", "delta": text}
    if start is not None:
        ev |= {"start_ms": start, "end_ms": end}
    return ev


def _items(turns: LiveTurns, events: list[dict[str, Any]]) -> list[tuple[str, str, str]]:
    out: dict[str, tuple[str, str, str]] = {}
    for ev in events:
        item = turns.delta(ev)
        if item is not None:
            raw = item["item"]
            out[raw["id"]] = (raw["role"], raw["content"][0]["type"], raw["content"][0]["text"])
    return list(out.values())


def test_live_turns_from_transcript_deltas() -> None:
    assert _items(LiveTurns(), [
        _delta("input", "Hello, "), _delta("input", "who are you?"),
        _delta("output", "I am "), _delta("output", "a bot."),
        _delta("input", "Bye."),
    ]) == [("user", "input_text", "Hello, who are you?"),
           ("assistant", "output_text", "I am a bot."), ("user", "input_text", "Bye.")]
    # overlapping speech (barge-in) does not split the assistant's turn
    assert _items(LiveTurns(), [
        _delta("output", "Let me ", 0, 400), _delta("input", "wait", 300, 500),
        _delta("output", "explain.", 400, 900), _delta("input", " no", 1000, 1200),
    ]) == [("assistant", "output_text", "Let me explain."), ("user", "input_text", "wait no")]
    assert LiveTurns().delta({"type": "session.input_transcript.delta", "delta": 3}) is None


# -- the session -------------------------------------------------------------------------------
def test_bad_protocol_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="protocol"):
        make_protocol("websocket")
    with pytest.raises(ConfigError, match="protocol"):
        VoiceSession(ScriptedTransport(), protocol="Live")  # type: ignore[arg-type]
    assert fsm_voice.LiveUsage is LiveUsage


class SeedingTransport(ScriptedTransport):
    """Asks ``seed`` for the Live input on every open, as the Live signaling does."""

    def __init__(self) -> None:
        super().__init__()
        self.seed: Callable[[], list[dict[str, Any]]] = list
        self.seeds: list[list[dict[str, Any]]] = []

    async def open(self, sink: TransportSink) -> None:
        self.seeds.append(self.seed())
        await super().open(sink)


class Rig:
    def __init__(self, s: VoiceSession, t: SeedingTransport, clock: VirtualClock) -> None:
        self.s, self.t, self.clock = s, t, clock
        self.errors: list[VoiceError] = []
        s.on_error(self.errors.append)

    async def server(self, event: Mapping[str, Any]) -> None:
        self.t.server(event)
        await self.clock.settle()


async def rig(protocol: str, **kw: Any) -> AsyncIterator[Rig]:
    clock = VirtualClock()
    t = SeedingTransport()
    policy = SessionPolicy(retry=RetryPolicy(jitter=0.0))
    async with VoiceSession(t, clock=clock, policy=policy, protocol=protocol,  # type: ignore[arg-type]
                            wall_clock=lambda: NOW, **kw) as s:
        t.seed = s.seed_input
        await s.start()
        await clock.settle()
        assert s.status == "active"
        yield Rig(s, t, clock)


def opens(r: Rig) -> list[OpenReason]:
    return [e.reason for x in r.s.trace for e in x.effects if isinstance(e, OpenTransport)]


@pytest.mark.anyio
@pytest.mark.parametrize("protocol", ["realtime", "live"])
async def test_connection_up_sends_the_config_only_on_realtime(protocol: str) -> None:
    async for r in rig(protocol, session_config={"instructions": "Be brief."}):
        sent = [e["type"] for e in r.t.sent]
        assert sent == (["session.update"] if protocol == "realtime" else [])
        r.s.send_event({"type": "session.instructions.append", "content": "hi",
                        "delegation_id": None})
        assert r.t.sent[-1]["type"] == "session.instructions.append"


@pytest.mark.anyio
async def test_live_session_info_arms_the_rollover_and_usage_is_readable() -> None:
    async for r in rig("live"):
        await r.server({"type": "session.started",
                        "session": {"id": "live_1", "expires_at": NOW + 3600}})
        assert Timer.ROLLOVER in r.s.armed_timers
        await r.server({"type": "session.usage.updated", "usage": {"seconds": 2.0},
                        "context_window": {"usage_ratio": 0.1}})
        await r.server({"type": "mystery.event"})
        assert r.s.usage == LiveUsage(2.0, 0.1)
        assert r.s.unknown_events == {"mystery.event": 1}
        assert r.s.rate_limits == []


@pytest.mark.anyio
@pytest.mark.parametrize(("reason", "status"), [
    ("close_requested", "idle"), ("remote_hangup", "idle"), ("content", "error"),
    ("nonsense", "error")])
async def test_live_final_closes(reason: str, status: str) -> None:
    async for r in rig("live"):
        await r.server({"type": "session.closed", "reason": reason,
                        "usage": {"seconds": 12.0}})
        assert r.s.status == status
        assert not r.t.is_open and r.t.closes == 1
        await r.clock.advance(120)
        assert opens(r) == [OpenReason.START]  # never retried
        want = reason if reason in ("close_requested", "remote_hangup", "content") else \
            "unknown_close_reason"
        assert [e.code for e in r.errors] == [want]
        assert r.errors[0].severity is Severity.FATAL


@pytest.mark.anyio
@pytest.mark.parametrize("reason", ["connection_lost", "expired"])
async def test_live_lost_session_continues_seeded_with_the_conversation(reason: str) -> None:
    async for r in rig("live"):
        await r.clock.advance(11)  # stable: the episode of start is over
        for ev in (_delta("input", "What is "), _delta("input", "the capital of France?"),
                   _delta("output", "Paris."), {"type": "session.output_transcript.delta"}):
            await r.server(ev)
        await r.server({"type": "session.closed", "reason": reason})
        await r.clock.settle()
        assert r.s.status == "active"
        assert opens(r) == [OpenReason.START, OpenReason.RESTART]
        assert r.t.seeds[0] == []  # the START open carries nothing
        assert [(m["role"], m["content"][0]["text"]) for m in r.t.seeds[1]] == [
            ("user", "What is the capital of France?"), ("assistant", "Paris.")]
        assert [(e.code, e.severity) for e in r.errors] == [(reason, Severity.RECOVERABLE)]
        assert r.s.outbox.replays[-1].backend == "live"
        assert r.t.sent == []  # no session.update, no item replay on Live


@pytest.mark.anyio
async def test_live_error_with_null_code_is_reported_and_the_session_goes_on() -> None:
    async for r in rig("live"):
        await r.server({"type": "error", "error": {"type": "invalid_request_error", "code": None,
                                                   "message": "bad", "client_event_id": "c1"}})
        assert r.s.status == "active"
        assert [(e.code, e.event_id) for e in r.errors] == [("unknown_error", "c1")]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


# -- the runtime property test, on Live ------------------------------------------------------
LIVE_EVENTS = [
    {"type": "session.started", "session": {"id": "live_1", "expires_at": int(NOW) + 95}},
    {"type": "session.updated", "session": {"expires_at": 0}},
    *({"type": "session.closed", "reason": r, "usage": {"seconds": 3}} for r in (
        "close_requested", "expired", "content", "remote_hangup", "connection_lost", None)),
    {"type": "error", "error": {"type": "invalid_request_error", "code": None}},
    {"type": "error", "error": {"type": "server_error", "code": "server_error"}},
    {"type": "session.usage.updated", "usage": {"seconds": 1}},
    {"type": "info", "code": "x", "message": "y"},
    _delta("input", "hello"), _delta("output", "hi"),
    {"type": "some.new_event"},
]


class LiveRuntimeRules(RuntimeRules):
    """The runtime rules of ``test_session_stateful`` (application, transport incl. the audio
    activity signals, clock, Realtime events: unknown here) plus Live server events; the same
    invariants hold (timers, bounds, nothing reopened after `error`)."""

    def __init__(self) -> None:
        super().__init__()
        self.s.dispatcher.protocol = LiveProtocol()  # built before the session runs
        self.s.protocol = self.s.dispatcher.protocol
        self.s.dispatcher._wall_clock = lambda: NOW

    @rule(event=st.sampled_from(LIVE_EVENTS))
    def live_server_event(self, event: dict[str, Any]) -> None:
        if self.t.sink is not None and self.t.is_open:
            before = self.t.opens
            self.portal.call(_call, self.t.server, event)
            self.settle()
            if event["type"] == "session.closed" and event["reason"] not in (
                    "expired", "connection_lost"):
                assert self.s.status in ("idle", "error") and self.t.opens == before


TestLiveRuntimeRules = LiveRuntimeRules.TestCase
TestLiveRuntimeRules.settings = settings(max_examples=60, stateful_step_count=30, deadline=None)
