"""The lifecycle machine alone (python-statemachine), against specs/connection.md."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule
from statemachine.exceptions import TransitionNotAllowed

from fsm_voice.check import TIMER_EVENTS, Letter, alphabet
from fsm_voice.effects import ArmTimer, CancelTimer, CloseTransport, OpenTransport, Timer
from fsm_voice.machine import STATUS_OF, STATUSES, TIMER_OF, LifecycleMachine
from fsm_voice.policy import RetryPolicy

LETTERS = alphabet()


def drive(m: LifecycleMachine, *events: str, **kw: str) -> list[object]:
    for e in events:
        m.send(e, **kw)
    return m.take_effects()


def fail_until_error(m: LifecycleMachine) -> list[float]:
    """From connecting, fail every attempt; return the backoff delays armed on the way."""
    delays = []
    m.send("connect_timeout")
    while m.state_id == "backoff":
        delays += [
            e.delay
            for e in m.take_effects()
            if isinstance(e, ArmTimer) and e.timer is Timer.BACKOFF
        ]
        m.send("backoff_expired")
        m.send("connect_timeout")
    return delays


def test_statuses_are_exactly_the_public_ones() -> None:  # SPEC-STATUS-1/2
    assert set(STATUS_OF.values()) == set(STATUSES)
    assert set(STATUS_OF) == {s.id for s in LifecycleMachine.states}


def test_happy_path_and_speech_statuses() -> None:
    m = LifecycleMachine()
    assert drive(m, "start") == [OpenTransport("start"), ArmTimer(Timer.CONNECT_TIMEOUT, 15.0)]
    drive(m, "channel_open")
    assert m.state_id == "connecting"  # SPEC-CONNECT-1: both halves needed
    assert drive(m, "transport_connected") == [CancelTimer(Timer.CONNECT_TIMEOUT)]
    assert m.status == "active"
    m.send("speech_started")
    assert m.status == "listening"
    m.send("audio_started")
    assert m.status == "speaking"
    m.send("audio_stopped")
    assert m.status == "active"


def test_backoff_delays_are_2_4_8_then_error() -> None:  # SPEC-RETRY-1/2/4
    m = LifecycleMachine()
    drive(m, "start")
    assert fail_until_error(m) == [2.0, 4.0, 8.0]
    assert m.state_id == "error" and m.attempts == 3
    assert m.take_effects()[-1].code == "retries_exhausted"  # type: ignore[attr-defined]


def test_counter_resets_only_when_active_again() -> None:  # SPEC-RETRY-3
    m = LifecycleMachine()
    drive(m, "start", "connect_timeout", "backoff_expired", "connect_timeout", "backoff_expired")
    assert m.attempts == 2
    drive(m, "transport_connected")
    assert m.attempts == 2
    drive(m, "channel_open")
    assert m.attempts == 0 and m.state_id == "active"
    drive(m, "transport_failed", "restart_timeout")
    assert m.state_id == "backoff" and m.attempts == 0


@pytest.mark.parametrize(
    "state_path",
    [
        ("start",),
        ("start", "transport_connected", "channel_open", "transport_failed"),
        ("start", "connect_timeout", "backoff_expired"),
    ],
)
def test_fatal_is_never_retried(state_path: tuple[str, ...]) -> None:  # SPEC-FATAL-1
    m = LifecycleMachine()
    drive(m, *state_path)
    effects = drive(m, "signaling_failed", severity="fatal", code="invalid_api_key")
    assert m.state_id == "error"
    assert not any(isinstance(e, OpenTransport) for e in effects)
    assert CloseTransport() in effects


def test_transient_gets_one_quick_retry_then_backoff() -> None:  # SPEC-TRANSIENT-1
    m = LifecycleMachine()
    drive(m, "start")
    effects = drive(m, "signaling_failed", severity="transient")
    assert m.state_id == "reconnecting" and m.attempts == 0
    assert OpenTransport("reconnect", 0) in effects
    effects = drive(m, "signaling_failed", severity="transient")
    assert m.state_id == "backoff"
    assert ArmTimer(Timer.BACKOFF, 2.0) in effects


def test_nonfatal_server_error_keeps_session() -> None:  # SPEC-SERVER-1
    m = LifecycleMachine()
    drive(m, "start", "transport_connected", "channel_open", "speech_started")
    effects = drive(m, "server_error", severity="recoverable", code="server_error")
    assert m.state_id == "listening"
    assert [type(e).__name__ for e in effects] == ["ReportError"]


def test_ice_grace_then_restart() -> None:  # SPEC-ICE-1/2/3
    m = LifecycleMachine()
    drive(m, "start", "transport_connected", "channel_open")
    assert drive(m, "ice_disconnected") == [ArmTimer(Timer.ICE_GRACE, 5.0)]
    assert m.status == "active"
    assert drive(m, "ice_recovered") == [CancelTimer(Timer.ICE_GRACE)]
    drive(m, "ice_disconnected")
    effects = drive(m, "ice_grace_expired")
    assert m.status == "reconnecting"
    assert effects[:3] == [CancelTimer(Timer.ICE_GRACE), CloseTransport(), OpenTransport("restart")]
    drive(m, "restart_timeout")
    assert m.state_id == "backoff"


@pytest.mark.parametrize("letter", LETTERS, ids=str)
def test_stop_from_anywhere_reaches_idle(letter: Letter) -> None:  # SPEC-STOP-1
    m = LifecycleMachine()
    drive(m, "start")
    with contextlib.suppress(TransitionNotAllowed):
        m.send(letter.event, **letter.kwargs())
    m.take_effects()
    was = m.state_id
    timer = TIMER_OF.get(was)
    effects = drive(m, "stop")
    assert m.state_id == "idle"
    expected_cancel = [CancelTimer(timer)] if timer is not None else []
    assert effects == ([] if was == "idle" else [*expected_cancel, CloseTransport()])


class MachineRules(RuleBasedStateMachine):
    """Random event sequences against the python-statemachine class, with an independent model
    of armed timers and the open transport built from the effects alone."""

    def __init__(self) -> None:
        super().__init__()
        self.m = LifecycleMachine(retry=RetryPolicy())
        self.armed: set[Timer] = set()
        self.open = False
        self.fatal_seen = False

    def apply(self, letter: Letter) -> None:
        before = (self.m.state_id, self.m.snapshot(self.m.state_id))
        try:
            self.m.send(letter.event, **letter.kwargs())
        except TransitionNotAllowed:
            assert (self.m.state_id, self.m.snapshot(self.m.state_id)) == before  # SPEC-STRICT-1
            assert self.m.take_effects() == []
            return
        if letter.event in TIMER_EVENTS:
            self.armed.discard(Timer(letter.event))
        effects = self.m.take_effects()
        if letter.event == "start":  # SPEC-START-1: a new session may open again
            self.fatal_seen = False
        for e in effects:
            if isinstance(e, ArmTimer):
                assert e.timer not in self.armed
                self.armed.add(e.timer)
                if e.timer is Timer.BACKOFF:  # SPEC-RETRY-2
                    assert e.delay == RetryPolicy().delays()[self.m.attempts]
            elif isinstance(e, CancelTimer):
                self.armed.discard(e.timer)
            elif isinstance(e, OpenTransport):
                assert not self.open
                assert not self.fatal_seen  # SPEC-FATAL-1
                self.open = True
            elif isinstance(e, CloseTransport):
                self.open = False
        if letter.severity == "fatal":
            assert self.m.state_id == "error"
            self.fatal_seen = True
        if letter.event == "stop":  # SPEC-STOP-1
            assert self.m.state_id == "idle" and not self.armed and not self.open

    @rule(letter=st.sampled_from([x for x in LETTERS if x.event not in TIMER_EVENTS]))
    def event(self, letter: Letter) -> None:
        self.apply(letter)

    @precondition(lambda self: bool(self.armed))
    @rule(data=st.data())
    def fire_timer(self, data: st.DataObject) -> None:
        timer = data.draw(st.sampled_from(sorted(self.armed)))
        self.apply(Letter(timer.value))

    @rule(letter=st.sampled_from([x for x in LETTERS if x.event in TIMER_EVENTS]))
    def unarmed_timer_is_refused_or_armed(self, letter: Letter) -> None:
        if Timer(letter.event) not in self.armed:
            with pytest.raises(TransitionNotAllowed):
                self.m.send(letter.event)

    @invariant()
    def bounded_and_timers_match_state(self) -> None:
        assert self.m.attempts <= 3  # SPEC-RETRY-1
        s = self.m.state_id
        assert self.armed == ({TIMER_OF[s]} if s in TIMER_OF else set())  # SPEC-TIMER-1
        assert self.m.status in STATUSES


TestMachineRules = MachineRules.TestCase
TestMachineRules.settings = settings(max_examples=150, stateful_step_count=40, deadline=None)


def test_speech_status_survives_a_short_outage() -> None:  # SPEC-ICE-4
    m = LifecycleMachine()
    drive(m, "start", "transport_connected", "channel_open", "ice_disconnected")
    drive(m, "speech_started")
    assert m.status == "active" and m.state_id == "ice_grace"
    drive(m, "ice_recovered")
    assert m.status == "listening"
    drive(m, "audio_started", "ice_disconnected", "audio_stopped", "ice_recovered")
    assert m.status == "active"
    drive(m, "ice_disconnected", "ice_grace_expired", "transport_connected", "channel_open")
    assert m.status == "active"  # after a restart the speech state starts afresh
