"""The Live rows of the lifecycle table: ``session_closed(code=reason)`` (SPEC-CLOSE-1..3),
from every state, on both engines; the explorer and spin agree on the table with them; the
Live mutants are killed."""

from __future__ import annotations

import shutil
from typing import Any

import attrs
import pytest
from statemachine.exceptions import TransitionNotAllowed

from fsm_voice.check import (
    CHECK_RETRY,
    CLOSE_CODES,
    alphabet,
    check_all,
    explore,
    run_spin,
    spin_state_count,
    to_promela,
)
from fsm_voice.effects import CloseTransport, OpenReason, OpenTransport, ReportError, Timer
from fsm_voice.errors import ErrorSource, Severity, VoiceError
from fsm_voice.fastpath import FastLifecycle
from fsm_voice.machine import LifecycleMachine
from fsm_voice.machine.table import (
    CLOSE_REASONS,
    CONNECTING,
    ENDING_CLOSES,
    RETRIED_CLOSES,
    TABLE,
    WORKING,
)
from fsm_voice.mutants import NAMED
from fsm_voice.policy import RetryPolicy
from fsm_voice.ports import TransportSignal

EXACT = RetryPolicy(jitter=0.0)
Engine = LifecycleMachine | FastLifecycle
both = pytest.mark.parametrize("engine", ["statemachine", "fast"])
needs_spin = pytest.mark.skipif(shutil.which("spin") is None, reason="spin not installed")

#: How to reach each state from idle; "stable" working states have no open episode.
PATHS: dict[str, tuple[str, ...]] = {
    "connecting": ("start",),
    "active": ("start", "transport_connected", "channel_open"),
    "listening": ("start", "transport_connected", "channel_open", "speech_started"),
    "speaking": ("start", "transport_connected", "channel_open", "audio_started"),
    "ice_grace": ("start", "transport_connected", "channel_open", "ice_disconnected"),
    "restarting": ("start", "transport_connected", "channel_open", "session_stable",
                   "transport_failed"),
    "reconnecting": ("start", "transport_failed", "backoff_expired"),
    "backoff": ("start", "transport_failed"),
    "idle": (),
    "error": ("start", "signaling_failed"),
}


def at(state: str, engine: str, *, stable: bool = False) -> Engine:
    m: Engine = FastLifecycle(retry=EXACT) if engine == "fast" else LifecycleMachine(
        retry=EXACT)
    path = PATHS[state]
    if stable and state in WORKING:  # the episode of start ends before the state is reached
        path = (*path[:3], "session_stable", *path[3:])
    for e in path:
        m.send(e, severity="fatal" if e == "signaling_failed" else None)
    assert m.state_id == state
    m.take_effects()
    return m


def closed(reason: str) -> VoiceError:
    return VoiceError(Severity.FATAL, reason, f"closed: {reason}", ErrorSource.SERVER)


def send_closed(m: Engine, reason: str) -> list[Any]:
    err = closed(reason)
    m.send("session_closed", code=reason, error=err)
    effects = m.take_effects()
    for r in effects:
        if isinstance(r, ReportError) and r.code == reason:
            assert r.error is err  # the event's VoiceError goes with the report
    return effects


def reports(effects: list[Any]) -> list[tuple[str, str]]:
    return [(e.code, e.severity) for e in effects if isinstance(e, ReportError)]


def opens(effects: list[Any]) -> list[OpenTransport]:
    return [e for e in effects if isinstance(e, OpenTransport)]


def test_the_rows_cover_every_state_with_a_transport() -> None:
    rows = [r for r in TABLE if r.event == "session_closed"]
    assert {r.source for r in rows} == set(WORKING) | set(CONNECTING)
    for s in (*WORKING, *CONNECTING):
        mine = [r for r in rows if r.source == s]
        assert mine[-1].guard == () and mine[-1].target == "error"  # unknown reason: fallback
        codes = {p.arg for r in mine for p in r.guard if p.kind == "code"}
        assert codes == set(CLOSE_REASONS)
    assert {x.code for x in alphabet() if x.event == "session_closed"} == set(CLOSE_CODES)


def test_transport_signal_values_are_machine_events() -> None:
    events = {r.event for r in TABLE}
    assert {s.value for s in TransportSignal} <= events
    assert {s.value for s in (TransportSignal.SPEECH_STARTED, TransportSignal.SPEECH_STOPPED,
                              TransportSignal.AUDIO_STARTED, TransportSignal.AUDIO_STOPPED)} == {
        "speech_started", "speech_stopped", "audio_started", "audio_stopped"}


@both
@pytest.mark.parametrize("state", [*WORKING, *CONNECTING])
@pytest.mark.parametrize("reason", ENDING_CLOSES)
def test_ending_reasons_go_idle_and_report(engine: str, state: str, reason: str) -> None:
    m = at(state, engine)  # SPEC-CLOSE-1
    effects = send_closed(m, reason)
    assert m.state_id == "idle" and CloseTransport() in effects and opens(effects) == []
    assert reports(effects) == [(reason, "fatal")]


@both
@pytest.mark.parametrize("state", [*WORKING, *CONNECTING])
@pytest.mark.parametrize("reason", ["content", "unknown", "some_future_reason"])
def test_content_and_unknown_reasons_end_in_error(engine: str, state: str, reason: str) -> None:
    m = at(state, engine)  # SPEC-CLOSE-2
    effects = send_closed(m, reason)
    assert m.state_id == "error" and CloseTransport() in effects and opens(effects) == []
    want = "content" if reason == "content" else "unknown_close_reason"
    assert reports(effects) == [(want, "fatal")]


@both
@pytest.mark.parametrize("state", WORKING)
@pytest.mark.parametrize("reason", RETRIED_CLOSES)
def test_retried_reasons_restart_a_stable_session(engine: str, state: str, reason: str) -> None:
    m = at(state, engine, stable=True)  # SPEC-CLOSE-3: a new session at once
    effects = send_closed(m, reason)
    assert m.state_id == "restarting"
    assert opens(effects) == [OpenTransport(OpenReason.RESTART)]
    assert reports(effects) == [(reason, "recoverable")]


@both
@pytest.mark.parametrize("state", [*WORKING, *CONNECTING])
@pytest.mark.parametrize("reason", RETRIED_CLOSES)
def test_retried_reasons_back_off_inside_an_episode(engine: str, state: str, reason: str) -> None:
    m = at(state, engine)  # episode open (start / restart): a failed attempt, damped
    before = m.attempts
    effects = send_closed(m, reason)
    assert m.state_id == "backoff" and opens(effects) == [] and CloseTransport() in effects
    assert reports(effects) == [(reason, "recoverable")]
    assert m.attempts == before


@both
@pytest.mark.parametrize("state", ["idle", "backoff", "error"])
def test_refused_where_no_transport_is_open(engine: str, state: str) -> None:
    m = at(state, engine)
    for reason in CLOSE_CODES:
        with pytest.raises(TransitionNotAllowed):
            m.send("session_closed", code=reason)
    assert m.state_id == state and m.take_effects() == []


@both
@pytest.mark.parametrize("reason", RETRIED_CLOSES)
def test_a_backend_closing_every_session_ends_in_error(engine: str, reason: str) -> None:
    """Each new session is closed again before it is stable: bounded by max_attempts."""
    m = at("active", engine)
    backoffs = []
    for _ in range(EXACT.max_attempts + 1):
        effects = send_closed(m, reason)
        if m.state_id == "error":
            break
        backoffs += [e.delay for e in effects if getattr(e, "timer", None) is Timer.BACKOFF]
        m.send("backoff_expired")
        m.send("transport_connected")
        m.send("channel_open")
        m.take_effects()
    assert m.state_id == "error"
    assert reports(effects) == [("retries_exhausted", "fatal")]
    assert backoffs == list(EXACT.delays())


def test_explorer_takes_every_live_row_without_violation() -> None:
    taken = set()
    for n in (3, 1, 0):  # connecting's give_up needs max_attempts 0
        ex = explore(retry=attrs.evolve(CHECK_RETRY, max_attempts=n))
        assert ex.violations == [], [str(v) for v in ex.violations[:3]]
        taken |= ex.rows_taken
        if n == 3:
            closes = [e for e in ex.edges if e.letter.event == "session_closed"]
            assert {e.letter.code for e in closes} == set(CLOSE_CODES)
            assert {ex.configs[e.target].state for e in closes} == {
                "idle", "error", "restarting", "backoff"}
    assert {r for r in TABLE if r.event == "session_closed"} <= taken


@needs_spin
def test_spin_counts_the_same_states_with_the_live_rows() -> None:
    # The translation merges steps that change the same variables alike (reports are not
    # modelled: expired behaves as transport_failed there); ev_final tells a final close apart.
    assert "session_closed[code=content] | closed_for_content -> error" in to_promela()
    for n in (3, 0):
        retry = attrs.evolve(CHECK_RETRY, max_attempts=n)
        model = to_promela(retry=retry, flags=False)
        assert "session_closed[code=close_requested] | session_ended -> idle" in model
        assert spin_state_count(model) == len(explore(retry=retry).configs)


@needs_spin
def test_spin_proves_a_final_close_reopens_nothing() -> None:
    assert run_spin(to_promela(), ["final_close_opens_nothing"])[0].ok
    bad = run_spin(to_promela(NAMED["content-retries"].machine()), ["final_close_opens_nothing"])
    assert not bad[0].ok


@pytest.mark.parametrize(("name", "rule"), [
    ("content-retries", "INV-CLOSE-2"),
    ("hangup-reconnects", "INV-CLOSE-1"),
    ("closed-undamped", "INV-DAMP-1"),
    ("closed-keeps-transport", "INV-CLOSE-1"),
])
def test_live_mutants_are_killed(name: str, rule: str) -> None:
    failed = check_all(NAMED[name].machine(), stop_at_first=False)
    assert rule in failed, failed


def test_the_live_rows_only_add_behaviour() -> None:
    """Without ``session_closed`` the table is the Realtime one: every configuration it reaches
    is reached with the Live rows too, and from each, every other event does exactly the same."""
    realtime = type("Realtime", (LifecycleMachine,), {
        "TABLE": tuple(r for r in TABLE if r.event != "session_closed")})
    for n in (3, 0):
        retry = attrs.evolve(CHECK_RETRY, max_attempts=n)
        rt, full = explore(realtime, retry), explore(retry=retry)
        assert rt.violations == []

        def steps(ex: Any) -> set[tuple[Any, ...]]:
            return {(ex.configs[e.source], e.letter, ex.configs[e.target], e.effects)
                    for e in ex.edges}

        assert set(rt.configs) <= set(full.configs)
        rt_configs = set(rt.configs)
        assert steps(rt) == {s for s in steps(full) if s[0] in rt_configs
                             and s[1].event != "session_closed"}
        assert len(full.configs) > len(rt.configs)  # ending in idle/error from new places
