"""The lifecycle machine alone (the generated python-statemachine class), against
specs/connection.md."""

from __future__ import annotations

import contextlib
import math
import random
from typing import Any

import attrs
import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule
from statemachine.exceptions import TransitionNotAllowed

from fsm_voice.check import TIMER_EVENTS, Letter, alphabet
from fsm_voice.effects import (
    ArmTimer,
    CancelTimer,
    CloseTransport,
    ConnectionUp,
    NewConversation,
    OpenReason,
    OpenTransport,
    ReportError,
    Timer,
)
from fsm_voice.fastpath import FastLifecycle
from fsm_voice.machine import STATUS_OF, STATUSES, TIMER_OF, LifecycleMachine, Status
from fsm_voice.machine.engine import build_machine
from fsm_voice.machine.table import TABLE, Pred, Row
from fsm_voice.policy import RetryPolicy, RolloverPolicy

LETTERS = alphabet()
EXACT = RetryPolicy(jitter=0.0)
Engine = LifecycleMachine | FastLifecycle


def new(engine: str = "statemachine", **kw: Any) -> Engine:
    kw.setdefault("retry", EXACT)
    if engine == "fast":
        return FastLifecycle(**kw)
    return LifecycleMachine(**kw)


def drive(m: Engine, *events: str, **kw: Any) -> list[Any]:
    for e in events:
        m.send(e, **kw)
    return m.take_effects()


def up(m: Engine) -> list[Any]:
    return drive(m, "transport_connected", "channel_open")


def of(effects: list[Any], kind: type) -> list[Any]:
    return [e for e in effects if isinstance(e, kind)]


both = pytest.mark.parametrize("engine", ["statemachine", "fast"])


def test_statuses_are_declared_once() -> None:  # SPEC-STATUS-1/2
    assert tuple(s.value for s in Status) == STATUSES
    assert set(STATUS_OF.values()) == set(STATUSES)
    assert set(STATUS_OF) == {s.id for s in LifecycleMachine.states}


@both
def test_happy_path(engine: str) -> None:  # SPEC-START-1, SPEC-UP-1, SPEC-DAMP-2
    m = new(engine)
    assert drive(m, "start") == [NewConversation(), OpenTransport(OpenReason.START),
                                 ArmTimer(Timer.CONNECT_TIMEOUT, 15.0)]
    drive(m, "channel_open")
    assert m.state_id == "connecting"  # SPEC-CONNECT-1: both halves needed
    assert drive(m, "transport_connected") == [CancelTimer(Timer.CONNECT_TIMEOUT),
                                               ArmTimer(Timer.STABLE, 10.0),
                                               ConnectionUp(replay=False)]
    assert m.status == "active"
    m.send("speech_started")
    assert m.status == "listening"
    m.send("audio_started")
    assert m.status == "speaking"


@both
def test_backend_dropping_every_call_ends_in_error(engine: str) -> None:  # SPEC-DAMP-1
    """The 3.04 s loop of issue 8: every call comes up and drops before it is stable."""
    m = new(engine)
    drive(m, "start")
    delays, opens = [], []
    for _ in range(10):
        up(m)
        assert m.status == "active"
        effects = drive(m, "transport_failed")
        if m.state_id == "error":
            assert of(effects, ReportError)[-1].code == "retries_exhausted"
            break
        delays += [e.delay for e in of(effects, ArmTimer) if e.timer is Timer.BACKOFF]
        opens += of(drive(m, "backoff_expired"), OpenTransport)
    assert m.state_id == "error"
    assert delays == [2.0, 4.0, 8.0]
    assert opens == [OpenTransport(OpenReason.RECONNECT, n) for n in (1, 2, 3)]


@both
def test_stable_session_ends_episode_then_failure_restarts(engine: str) -> None:
    m = new(engine)
    drive(m, "start", "connect_timeout", "backoff_expired")
    up(m)
    assert m.attempts == 1  # SPEC-RETRY-3: coming up does not reset
    assert drive(m, "session_stable") == []
    assert m.attempts == 0
    effects = drive(m, "transport_failed")  # SPEC-ICE-2: stable -> restart at once
    assert m.state_id == "restarting" and m.attempts == 0
    assert OpenTransport(OpenReason.RESTART) in effects
    assert up(m)[-1] == ConnectionUp(replay=True)
    drive(m, "transport_failed")  # inside the restart's episode: back off
    assert m.state_id == "backoff"


@both
def test_backoff_delays_are_2_4_8_then_error(engine: str) -> None:  # SPEC-RETRY-1/2/4
    m = new(engine)
    drive(m, "start")
    delays = []
    m.send("connect_timeout")
    while m.state_id == "backoff":
        delays += [e.delay for e in of(m.take_effects(), ArmTimer) if e.timer is Timer.BACKOFF]
        m.send("backoff_expired")
        m.send("connect_timeout")
    assert delays == [2.0, 4.0, 8.0] and m.state_id == "error" and m.attempts == 3


def test_jitter_on_by_default_and_bounded() -> None:  # SPEC-RETRY-2
    assert RetryPolicy().jitter == 0.2
    got = set()
    for seed in range(20):
        m = LifecycleMachine(rng=random.Random(seed))
        effects = drive(m, "start", "connect_timeout")
        (arm,) = [e for e in of(effects, ArmTimer) if e.timer is Timer.BACKOFF]
        assert 1.6 <= arm.delay <= 2.4
        got.add(arm.delay)
    assert len(got) > 1


@both
@pytest.mark.parametrize(("retry_after", "expected"), [(None, 2.0), (1.0, 2.0), (5.0, 5.0),
                                                       (60.0, 60.0)])
def test_retry_after_lengthens_backoff(engine: str, retry_after: float | None,
                                       expected: float) -> None:  # SPEC-RETRY-5
    m = new(engine)
    drive(m, "start")
    effects = drive(m, "signaling_failed", severity="recoverable", code="http_503",
                    retry_after=retry_after)
    assert m.state_id == "backoff"
    assert ArmTimer(Timer.BACKOFF, expected) in effects


@both
def test_retry_after_too_long_ends_in_error(engine: str) -> None:  # SPEC-RETRY-5
    m = new(engine)
    drive(m, "start")
    effects = drive(m, "signaling_failed", severity="transient", retry_after=60.5)
    assert m.state_id == "error"
    assert of(effects, ReportError)[0].code == "retry_after_too_long"
    assert not of(effects, OpenTransport)


@both
@pytest.mark.parametrize("path", [("start",), ("start", "transport_connected", "channel_open"),
                                  ("start", "connect_timeout", "backoff_expired")])
def test_fatal_is_never_retried(engine: str, path: tuple[str, ...]) -> None:  # SPEC-FATAL-1
    m = new(engine)
    drive(m, *path)
    event = "server_error" if m.state_id == "active" else "signaling_failed"
    effects = drive(m, event, severity="fatal", code="invalid_api_key")
    assert m.state_id == "error" and CloseTransport() in effects
    assert not of(effects, OpenTransport)
    assert of(effects, ReportError)[0] == ReportError("invalid_api_key", "fatal")


@both
def test_transient_gets_one_quick_retry_then_backoff(engine: str) -> None:  # SPEC-TRANSIENT-1
    m = new(engine)
    drive(m, "start")
    effects = drive(m, "signaling_failed", severity="transient")
    assert m.state_id == "reconnecting" and m.attempts == 0
    assert OpenTransport(OpenReason.RECONNECT, 0) in effects
    effects = drive(m, "signaling_failed", severity="transient")
    assert m.state_id == "backoff" and ArmTimer(Timer.BACKOFF, 2.0) in effects


@both
def test_server_errors_by_severity(engine: str) -> None:  # SPEC-SERVER-1/2/3
    m = new(engine)
    drive(m, "start", "transport_connected", "channel_open", "session_stable", "speech_started")
    assert drive(m, "server_error", severity="ignorable", code="response_cancel_not_active") == []
    effects = drive(m, "server_error", severity="transient", code="invalid_value")
    assert m.state_id == "listening" and effects == [ReportError("invalid_value", "transient")]
    effects = drive(m, "server_error", severity="recoverable", code="server_error")
    assert m.state_id == "restarting"  # a stable session restarts at once
    assert ReportError("server_error", "recoverable") in effects
    assert OpenTransport(OpenReason.RESTART) in effects
    up(m)
    effects = drive(m, "server_error", severity="recoverable", code="server_error")
    assert m.state_id == "backoff"  # inside the episode: a failed attempt (SPEC-DAMP-1)
    drive(m, "backoff_expired")
    effects = drive(m, "server_error", severity="recoverable", code="server_error",
                    retry_after=5.0)
    assert m.state_id == "backoff" and ArmTimer(Timer.BACKOFF, 5.0) in effects


@both
def test_session_expired_code_restarts_without_failure_report(engine: str) -> None:
    m = new(engine)
    drive(m, "start", "transport_connected", "channel_open", "session_stable")
    effects = drive(m, "server_error", severity="recoverable", code="session_expired")
    assert m.state_id == "restarting" and not of(effects, ReportError)  # SPEC-SERVER-3


@both
def test_ice_grace_then_restart(engine: str) -> None:  # SPEC-ICE-1/2/3
    m = new(engine)
    drive(m, "start", "transport_connected", "channel_open", "session_stable")
    assert drive(m, "ice_disconnected") == [ArmTimer(Timer.ICE_GRACE, 5.0)]
    assert m.status == "active"
    assert drive(m, "ice_recovered") == [CancelTimer(Timer.ICE_GRACE)]
    drive(m, "ice_disconnected")
    effects = drive(m, "ice_grace_expired")  # the expired timer is not cancelled again
    assert m.status == "reconnecting"
    assert effects[:2] == [CloseTransport(), OpenTransport(OpenReason.RESTART)]
    drive(m, "restart_timeout")
    assert m.state_id == "backoff"


@both
def test_speech_status_survives_a_short_outage(engine: str) -> None:  # SPEC-ICE-4
    m = new(engine)
    drive(m, "start", "transport_connected", "channel_open", "ice_disconnected")
    drive(m, "speech_started")
    assert m.status == "active" and m.state_id == "ice_grace"
    drive(m, "ice_recovered")
    assert m.status == "listening"
    drive(m, "audio_started", "ice_disconnected", "audio_stopped", "ice_recovered")
    assert m.status == "active"


@both
@pytest.mark.parametrize("expires_in", [0.0, -5.0, math.nan, math.inf, -math.inf, 1e12, None])
def test_unusable_expires_in_is_reported_and_ignored(engine: str,
                                                     expires_in: float | None) -> None:
    m = new(engine)  # SPEC-ROLLOVER-1
    drive(m, "start", "transport_connected", "channel_open")
    effects = drive(m, "session_info", expires_in=expires_in)
    assert effects == [ReportError("invalid_expires_in", "transient")]
    assert m.rollover == "off"


@both
@pytest.mark.parametrize(("expires_in", "delay"), [(1800.0, 1770.0), (10.0, 60.0), (89.0, 60.0)])
def test_rollover_delay_is_sanitised(engine: str, expires_in: float, delay: float) -> None:
    m = new(engine)
    drive(m, "start", "transport_connected", "channel_open")
    assert drive(m, "session_info", expires_in=expires_in) == [ArmTimer(Timer.ROLLOVER, delay)]
    assert drive(m, "session_info", expires_in=expires_in) == [
        CancelTimer(Timer.ROLLOVER), ArmTimer(Timer.ROLLOVER, delay)]


@both
def test_rollover_waits_for_a_quiet_moment(engine: str) -> None:  # SPEC-ROLLOVER-2/3
    m = new(engine, rollover=RolloverPolicy(margin=30, min_interval=60))
    drive(m, "start", "transport_connected", "channel_open", "session_stable",
          "session_info", expires_in=600.0)
    drive(m, "speech_started")
    assert drive(m, "rollover_due") == [] and m.state_id == "listening"
    effects = drive(m, "speech_stopped")
    assert m.state_id == "restarting" and OpenTransport(OpenReason.RESTART) in effects
    drive(m, "transport_connected", "channel_open", "session_info", expires_in=600.0)
    effects = drive(m, "transport_failed")  # the transport closes: ROLLOVER and STABLE go
    assert {CancelTimer(Timer.ROLLOVER), CancelTimer(Timer.STABLE)} <= set(effects)


@both
def test_start_discards_the_earlier_conversation(engine: str) -> None:
    m = new(engine)
    drive(m, "start", "signaling_failed", severity="fatal")
    assert drive(m, "start")[0] == NewConversation()


class Raising:
    """A test hook: the action of the ``session_up`` rows raises."""

    def _after_row(self, row: Row) -> None:
        if row.label == "session_up":
            raise RuntimeError("bug in an action")


@both
def test_raising_action_on_external_transition_is_crash_only(engine: str) -> None:
    cls = type("RaisingMachine", (Raising, LifecycleMachine), {})  # SPEC-CRASH-1
    m: Engine = FastLifecycle(retry=EXACT, machine=cls) if engine == "fast" else cls(EXACT)
    drive(m, "start", "transport_connected")
    m.send("channel_open")  # connecting -> active: exit ran, then the action raised
    effects = m.take_effects()
    assert m.state_id == "error"
    assert [e for e in effects if isinstance(e, CancelTimer)] == [CancelTimer(t) for t in Timer]
    assert effects[-2:-1] == [CloseTransport()]
    report = effects[-1]
    assert isinstance(report, ReportError) and report.code == "machine_error"
    assert isinstance(report.error, RuntimeError)
    assert not of(effects, ConnectionUp) and not of(effects, ArmTimer)
    drive(m, "start")  # and the session can start again
    assert m.state_id == "connecting"


@both
def test_raising_guard_is_crash_only(engine: str) -> None:
    bad = Pred("flag", "no_such_flag")  # getattr raises AttributeError
    table = tuple(attrs.evolve(r, guard=(bad,)) if r.label == "session_up" else r
                  for r in TABLE)
    cls = build_machine(table, "RaisingGuard")
    m: Engine = FastLifecycle(retry=EXACT, machine=cls) if engine == "fast" else cls(EXACT)
    drive(m, "start")
    m.send("channel_open")
    assert m.state_id == "error" and m.take_effects()[-1].code == "machine_error"


@pytest.mark.parametrize("letter", LETTERS, ids=str)
def test_stop_from_anywhere_reaches_idle(letter: Letter) -> None:  # SPEC-STOP-1
    m = new()
    drive(m, "start")
    with contextlib.suppress(TransitionNotAllowed):
        m.send(letter.event, **letter.kwargs())
    m.take_effects()
    was = m.state_id
    timer = TIMER_OF.get(was)
    effects = drive(m, "stop")
    assert m.state_id == "idle"
    assert ([CancelTimer(timer)] if timer is not None else []) == effects[:1 if timer else 0]
    assert (CloseTransport() in effects) == (was not in ("idle", "error", "backoff"))


class MachineRules(RuleBasedStateMachine):
    """Random event sequences against the python-statemachine class, with an independent model
    of armed timers and the open transport built from the effects alone."""

    def __init__(self) -> None:
        super().__init__()
        self.m = LifecycleMachine(retry=EXACT)
        self.armed: set[Timer] = set()
        self.open = False
        self.fatal_seen = False

    def apply(self, letter: Letter) -> None:
        before = self.m.snapshot(self.m.state_id)
        try:
            self.m.send(letter.event, **letter.kwargs())
        except TransitionNotAllowed:
            assert self.m.snapshot(self.m.state_id) == before  # SPEC-STRICT-1
            assert self.m.take_effects() == []
            return
        if letter.event in TIMER_EVENTS:
            self.armed.discard(Timer(letter.event))
        if letter.event == "start":
            self.fatal_seen = False
        for e in self.m.take_effects():
            if isinstance(e, ArmTimer):
                assert e.timer not in self.armed
                self.armed.add(e.timer)
            elif isinstance(e, CancelTimer):
                self.armed.discard(e.timer)
            elif isinstance(e, OpenTransport):
                assert not self.open and not self.fatal_seen  # SPEC-FATAL-1
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
        self.apply(Letter(data.draw(st.sampled_from(sorted(self.armed))).value))

    @invariant()
    def bounded_and_timers_match_state(self) -> None:
        assert self.m.attempts <= 3  # SPEC-RETRY-1
        s = self.m.state_id
        assert (TIMER_OF.get(s) in self.armed) == (s in TIMER_OF)  # SPEC-TIMER-1
        if not self.open:
            assert not self.armed & {Timer.STABLE, Timer.ROLLOVER}  # SPEC-ROLLOVER-3


TestMachineRules = MachineRules.TestCase
TestMachineRules.settings = settings(max_examples=100, stateful_step_count=40, deadline=None)
