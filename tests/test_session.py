"""The runtime (VoiceSession) with a virtual clock and the scripted transport."""

from __future__ import annotations

import math
from collections.abc import AsyncIterator
from typing import Any

import anyio
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fsm_voice.clock import VirtualClock
from fsm_voice.dispatcher import expires_in
from fsm_voice.effects import ArmTimer, OpenTransport, Timer
from fsm_voice.errors import ErrorSource, Severity, VoiceError
from fsm_voice.machine import STATUSES, LifecycleMachine
from fsm_voice.machine.table import Row
from fsm_voice.policy import QualityThresholds, RetryPolicy, RolloverPolicy, SessionPolicy
from fsm_voice.ports import ConnectionMetrics, TransportSignal
from fsm_voice.session import QueueOverflowError, StatusChange, VoiceSession
from fsm_voice.testing import ScriptedTransport, failure

pytestmark = pytest.mark.anyio

EXACT = SessionPolicy(retry=RetryPolicy(jitter=0.0))
"""Default policy without jitter: exact backoff delays (2, 4, 8 s)."""


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class Rig:
    def __init__(self, session: VoiceSession, transport: ScriptedTransport,
                 clock: VirtualClock) -> None:
        self.s, self.t, self.clock = session, transport, clock
        self.statuses: list[str] = []
        self.errors: list[VoiceError] = []
        session.on_status(lambda c: self.statuses.append(c.status))
        session.on_error(self.errors.append)


async def rig(script: list[Any], **kw: Any) -> AsyncIterator[Rig]:
    clock = VirtualClock()
    t = ScriptedTransport(script, default=kw.pop("default", "ok"))
    kw.setdefault("policy", EXACT)
    async with VoiceSession(t, clock=clock, **kw) as s:
        yield Rig(s, t, clock)


def opens_at(r: Rig) -> list[float]:
    return [e.time for e in r.s.trace if any(isinstance(x, OpenTransport) for x in e.effects)]


async def test_connects_and_follows_server_speech_events() -> None:
    async for r in rig(["ok"]):
        await r.s.start()
        await r.clock.settle()
        assert r.s.status == "active"
        r.t.server({"type": "input_audio_buffer.speech_started"})
        await r.clock.settle()
        assert r.s.status == "listening"
        r.t.server({"type": "input_audio_buffer.speech_stopped"})
        r.t.server({"type": "output_audio_buffer.started"})
        await r.clock.settle()
        assert r.s.status == "speaking"
        r.t.server({"type": "output_audio_buffer.stopped"})
        await r.clock.settle()
        assert r.statuses == ["connecting", "active", "listening", "active", "speaking", "active"]


async def test_backoff_reconnects_at_2_4_8_then_error() -> None:  # SPEC-RETRY-1/2/4
    async for r in rig([], default=failure("recoverable", "server_error")):
        await r.s.start()
        await r.clock.advance(100)
        assert r.s.status == "error"
        assert opens_at(r) == [0.0, 2.0, 6.0, 14.0]  # first try, then waits of 2, 4, 8 s
        assert r.t.opens == 4 and not r.t.is_open
        assert r.errors[-1].code == "retries_exhausted"
        assert r.s.armed_timers == frozenset()


async def test_fatal_http_is_not_retried() -> None:  # SPEC-FATAL-1
    async for r in rig([failure("fatal", "invalid_api_key")]):
        await r.s.start()
        await r.clock.advance(60)
        assert r.s.status == "error" and r.t.opens == 1
        assert r.errors[0].code == "invalid_api_key"


async def test_connect_timeout_when_transport_hangs() -> None:  # SPEC-CONNECT-1
    async for r in rig(["hang", "ok"]):
        await r.s.start()
        await r.clock.advance(14.9)
        assert r.s.status == "connecting"
        await r.clock.advance(0.2)
        assert r.s.state == "backoff"
        await r.clock.advance(2.0)
        assert r.s.status == "active" and r.s.attempts == 1
        await r.clock.advance(10.0)  # stable_after: the failure episode ends
        assert r.s.status == "active" and r.s.attempts == 0


async def test_ice_disconnect_grace_then_restart_and_history_of_generations() -> None:
    async for r in rig(["ok", "ok"]):
        await r.s.start()
        await r.clock.advance(10.0)  # up for stable_after: a new failure restarts at once
        old_sink = r.t.sink
        r.t.emit(TransportSignal.ICE_DISCONNECTED)
        await r.clock.advance(4.9)
        assert r.s.state == "ice_grace" and r.s.status == "active"
        await r.clock.advance(0.2)
        assert r.s.status == "active" and r.t.opens == 2  # restarted and back up
        assert old_sink is not None
        old_sink.signal(TransportSignal.FAILED, "late")  # from the closed transport
        await r.clock.settle()
        assert r.s.status == "active"
        assert r.s.trace[-1].outcome == "stale"


async def test_transient_server_error_keeps_session_ignorable_is_silent_fatal_ends_it() -> None:
    async for r in rig(["ok"]):
        await r.s.start()
        await r.clock.settle()
        r.t.server({"type": "error", "error": {"type": "invalid_request_error",
                                               "code": "invalid_event", "message": "boom"}})
        r.t.server({"type": "error", "error": {"type": "invalid_request_error",
                                               "code": "response_cancel_not_active"}})
        await r.clock.settle()
        assert r.s.status == "active" and r.t.opens == 1
        assert [e.code for e in r.errors] == ["invalid_event"]  # ignorable one not reported
        # ... but it did reach the machine, which decided to change nothing
        (ignored,) = [e for e in r.s.trace if e.event == "server_error"][1:]
        assert ignored.outcome == "taken" and ignored.effects == ()
        r.t.server({"type": "error", "error": {"type": "invalid_request_error",
                                               "code": "invalid_api_key"}})
        await r.clock.advance(30)
        assert r.s.status == "error" and r.t.opens == 1


async def test_events_queued_while_reconnecting_are_delivered_in_order() -> None:
    async for r in rig(["ok", "hang", "ok"], policy=SessionPolicy(event_queue_limit=3)):
        await r.s.start()
        await r.clock.settle()
        r.s.send_event({"type": "a"})
        r.t.emit(TransportSignal.FAILED)
        await r.clock.settle()
        assert r.s.status == "reconnecting"
        for name in ("b", "c", "d"):
            r.s.send_event({"type": name})
        with pytest.raises(QueueOverflowError, match="event_queue_limit=3"):
            r.s.send_event({"type": "e"})
        await r.clock.advance(30)  # backoff 2 s, reconnect hangs 15 s, backoff 4 s, up
        assert r.s.status == "active"
        assert [e["type"] for e in r.t.sent] == ["a", "b", "c", "d"]
        assert r.s.sent_events == r.s.delivered_events == 4


async def test_stop_from_backoff_cancels_everything() -> None:  # SPEC-STOP-1
    async for r in rig([failure("recoverable")]):
        await r.s.start()
        await r.clock.settle()
        assert r.s.state == "backoff"
        await r.s.stop()
        assert r.s.status == "idle" and r.s.armed_timers == frozenset()
        await r.clock.settle()
        assert not r.t.is_open
        await r.clock.advance(60)
        assert r.t.opens == 1  # the cancelled backoff never fired


async def test_quality_alerts_from_metrics(caplog: pytest.LogCaptureFixture) -> None:
    policy = SessionPolicy(quality=QualityThresholds(max_rtt_ms=300))
    async for r in rig(["ok"], policy=policy):
        alerts: list[Any] = []
        r.s.on_alert(alerts.append)
        r.t.metrics_sample = ConnectionMetrics(latency_ms=420.0, packets_lost=3, jitter_ms=80.0,
                                               timestamp=0.0)
        await r.s.start()
        await r.clock.advance(5.1)
        assert {a.kind for a in alerts} == {"rtt", "jitter"}
        assert r.s.metrics_history[-1].latency_ms == 420.0
        logged = [rec.fsm_voice for rec in caplog.records if hasattr(rec, "fsm_voice")]
        assert {"event": "quality_alert", "kind": "rtt", "value": 420.0, "threshold": 300.0,
                "status": "active"} in logged


async def test_bad_input_is_refused_clearly() -> None:
    with pytest.raises(TypeError, match="Transport"):
        VoiceSession(object())  # type: ignore[arg-type]
    async for r in rig(["ok"]):
        with pytest.raises(RuntimeError, match="start"):
            r.s.send_event({"type": "response.create"})
        with pytest.raises(TypeError, match="type"):
            r.s.send_event({"no": "type"})


# -- property: random scripts and faults, virtual time -----------------------------------------
steps = st.lists(st.sampled_from(["ok", "hang", "transient", "recoverable", "fatal"]),
                 max_size=8)
actions = st.lists(st.tuples(st.sampled_from(["fail", "ice", "recover", "speech", "audio",
                                              "server_err", "stop", "start", "tick", "stale"]),
                             st.floats(0, 20)), max_size=25)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(script=steps, plan=actions)
def test_runtime_properties_hold_under_random_faults(script: list[str],
                                                     plan: list[tuple[str, float]]) -> None:
    async def body() -> None:
        clock = VirtualClock()
        steps_ = [s if s in ("ok", "hang") else failure(s) for s in script]
        t = ScriptedTransport(steps_)
        changes: list[StatusChange] = []
        async with VoiceSession(t, clock=clock, policy=EXACT) as s:
            s.on_status(changes.append)
            await s.start()
            old_sinks: list[Any] = []
            for action, dt in plan:
                if t.sink is not None and (not old_sinks or old_sinks[-1] is not t.sink):
                    old_sinks.append(t.sink)
                if action == "stale" and len(old_sinks) > 1:
                    # A late signal from a transport that was closed since: never reaches the
                    # machine (recorded as stale).
                    before = (s.state, s.attempts)
                    old_sinks[0].signal(TransportSignal.FAILED, "late")
                    await clock.settle()
                    assert (s.state, s.attempts) == before
                    assert s.trace[-1].outcome == "stale"
                if t.sink is not None and t.is_open:
                    if action == "fail":
                        t.emit(TransportSignal.FAILED)
                    elif action == "ice":
                        t.emit(TransportSignal.ICE_DISCONNECTED)
                    elif action == "recover":
                        t.emit(TransportSignal.ICE_RECOVERED)
                    elif action == "speech":
                        t.server({"type": "input_audio_buffer.speech_started"})
                    elif action == "audio":
                        t.server({"type": "output_audio_buffer.started"})
                    elif action == "server_err":
                        t.server({"type": "error", "error": {"type": "server_error"}})
                if action == "stop":
                    await s.stop()
                elif action == "start" and s.status in ("idle", "error"):
                    await s.start()
                await clock.advance(dt)
                assert s.attempts <= 3
                assert all(c.status in STATUSES for c in changes)
                trace = list(s.trace)
                # Fatal is never retried: nothing opens after `error` until a start.
                fatal_at = [i for i, e in enumerate(trace) if e.target == "error"]
                for i in fatal_at:
                    for e in trace[i + 1:]:
                        if e.event == "start" and e.outcome == "taken":
                            break
                        assert not any(isinstance(x, OpenTransport) for x in e.effects)
            await s.stop()
            assert s.status == "idle" and s.armed_timers == frozenset()
            await clock.settle()  # the close runs in the session's task group
            assert not t.is_open and t.opens == t.closes
        # Backoff delays are exactly 2, 4, 8 s after each failure (no jitter configured).
        for e in s.trace:
            for x in e.effects:
                if getattr(x, "timer", None) == "backoff_expired" and hasattr(x, "delay"):
                    assert x.delay in (2.0, 4.0, 8.0)

    anyio.run(body)


async def test_restart_reapplies_config_and_replays_history_before_queued_events() -> None:
    config = {"type": "realtime", "instructions": "be brief"}
    async for r in rig(["ok", "hang", "ok"], session_config=config):
        await r.s.start()
        await r.clock.settle()
        assert r.t.sent[0] == {"type": "session.update", "session": config}
        r.t.server({"type": "conversation.item.done", "item": {
            "id": "item_1", "type": "message", "role": "user",
            "content": [{"type": "input_text", "text": "hello"}]}})
        r.t.server({"type": "conversation.item.done", "item": {
            "id": "item_2", "type": "message", "role": "assistant",
            "content": [{"type": "output_audio", "transcript": "hi there"}]}})
        r.t.server({"type": "conversation.item.done", "item": {
            "id": "item_3", "type": "message", "role": "user",
            "content": [{"type": "input_audio"}]}})  # audio only: nothing to replay
        r.t.emit(TransportSignal.FAILED)
        await r.clock.settle()
        r.s.send_event({"type": "response.create"})
        r.t.sent.clear()
        await r.clock.advance(30)  # backoff 2 s, reconnect hangs, backoff 4 s, reconnect ok
        assert r.s.status == "active"
        assert [e["type"] for e in r.t.sent] == [
            "session.update", "conversation.item.create", "conversation.item.create",
            "response.create"]
        assert r.t.sent[2]["item"] == {"id": "item_2", "type": "message", "role": "assistant",
                                       "content": [{"type": "output_text", "text": "hi there"}]}
        assert r.s.replayed_items == 2


async def test_metrics_and_alerts_are_in_the_trace() -> None:
    async for r in rig(["ok"]):
        r.t.metrics_sample = ConnectionMetrics(latency_ms=20.0, packets_lost=150, jitter_ms=5.0,
                                               timestamp=0.0)
        await r.s.start()
        await r.clock.advance(5.1)
        observed = [e for e in r.s.trace if e.outcome == "observed"]
        assert [e.event for e in observed] == ["metrics", "quality_alert"]
        assert "packets_lost=150.0 > 100.0" in observed[1].detail


async def test_rollover_before_the_session_time_limit_waits_for_a_pause() -> None:
    wall0 = 1_700_000_000.0
    clock = VirtualClock()
    t = ScriptedTransport(["ok", "ok"])
    async with VoiceSession(t, clock=clock, policy=EXACT,
                            wall_clock=lambda: wall0 + clock.now()) as s:
        await s.start()
        await clock.settle()
        t.server({"type": "session.created", "session": {"id": "sess_1",
                                                         "expires_at": int(wall0) + 100}})
        await clock.advance(60)
        t.server({"type": "input_audio_buffer.speech_started"})
        await clock.advance(15)  # 75 s: past the rollover point (70), but the user is speaking
        assert s.status == "listening" and t.opens == 1
        t.server({"type": "input_audio_buffer.speech_stopped"})
        await clock.advance(1)
        assert s.rollovers == 1 and t.opens == 2 and s.status == "active"
        (info,) = [e for e in s.trace if e.event == "session_info"][:1]
        assert info.outcome == "taken"
        assert any(e.event == "rollover_due" for e in s.trace)


# -- robustness (findings of the code review) --------------------------------------------------


async def test_outside_cancellation_still_cleans_up_and_never_hangs() -> None:
    clock = VirtualClock()
    t = ScriptedTransport(["ok"])
    with anyio.fail_after(5):  # the bug was a shielded wait that never returned
        with anyio.CancelScope() as outer:
            async with VoiceSession(t, clock=clock) as s:
                await s.start()
                await clock.settle()
                assert s.status == "active"
                outer.cancel()
                await anyio.sleep(1)
    assert s.status == "idle" and not t.is_open and t.opens == t.closes == 1
    assert s.armed_timers == frozenset()


class Broken(LifecycleMachine):  # type: ignore[misc,valid-type]
    """A machine whose action raises on an external transition (connecting -> active)."""

    def _after_row(self, row: Row) -> None:
        if row.label == "session_up":
            raise RuntimeError("bug in an action")


@pytest.mark.parametrize("engine", ["fast", "statemachine"])
async def test_a_raising_action_ends_the_session_cleanly(engine: Any) -> None:  # crash-only
    async for r in rig(["ok"], machine=Broken, engine=engine):
        await r.s.start()
        await r.clock.settle()
        assert r.s.status == "error"
        assert r.s.armed_timers == frozenset() and not r.t.is_open and r.t.closes == 1
        assert r.errors[-1].code == "machine_error"
        assert r.errors[-1].severity is Severity.FATAL
        assert "bug in an action" in r.errors[-1].message
        assert r.t.sent == []  # the failed transition's ConnectionUp was discarded
        await r.clock.advance(60)
        assert r.t.opens == 1  # nothing armed, nothing retried


async def test_raw_posts_are_validated() -> None:
    async for r in rig(["ok"]):
        with pytest.raises(ValueError, match="severity"):
            r.s.post("server_error", severity="warning")
        with pytest.raises(ValueError, match="unknown machine event"):
            r.s.post("connected")
        with pytest.raises(TypeError, match="retry_after"):
            r.s.post("server_error", severity="recoverable", retry_after="5")  # type: ignore


async def test_server_session_expired_is_posted_as_is_and_restarts() -> None:
    async for r in rig(["ok", "ok"]):
        await r.s.start()
        await r.clock.advance(10.0)
        r.t.server({"type": "error", "error": {"type": "invalid_request_error",
                                               "code": "session_expired"}})
        await r.clock.settle()
        (posted,) = [e for e in r.s.trace if e.event == "server_error"]
        assert posted.source == "active" and posted.target == "restarting"
        assert r.s.status == "active" and r.t.opens == 2


async def test_retry_after_goes_to_the_machine() -> None:
    busy = VoiceError(severity=Severity.RECOVERABLE, code="server_overloaded", message="busy",
                      source=ErrorSource.SIGNALING, retry_after=5.0, http_status=503)
    async for r in rig([busy, "ok"]):
        await r.s.start()
        await r.clock.settle()
        (backoff,) = [x for e in r.s.trace for x in e.effects
                      if isinstance(x, ArmTimer) and x.timer is Timer.BACKOFF]
        assert backoff.delay == 5.0  # not the policy's 2 s
        await r.clock.advance(4.9)
        assert r.t.opens == 1
        await r.clock.advance(0.2)
        assert r.s.status == "active" and r.t.opens == 2


async def test_a_new_start_does_not_inherit_queue_or_history() -> None:
    async for r in rig(["ok", "hang", failure("transient"), "ok"]):
        await r.s.start()
        await r.clock.settle()
        r.t.server({"type": "conversation.item.done", "item": {
            "id": "i1", "type": "message", "role": "user",
            "content": [{"type": "input_text", "text": "from the first session"}]}})
        await r.s.stop()
        await r.s.start()  # hangs in connecting
        await r.clock.settle()
        r.s.send_event({"type": "response.create"})
        await r.s.stop()
        assert r.s.dropped_events == 1 and r.errors[-1].code == "client_events_dropped"
        r.t.sent.clear()
        await r.s.start()  # transient failure, quick reconnect, up
        await r.clock.advance(1)
        assert r.s.status == "active"
        assert r.t.sent == []  # nothing replayed from earlier sessions


async def test_client_events_must_be_json() -> None:
    async for r in rig(["ok"]):
        await r.s.start()
        await r.clock.settle()
        with pytest.raises(TypeError, match="not JSON-serialisable"):
            r.s.send_event({"type": "conversation.item.create", "item": {"ts": {1, 2}}})
        r.s.send_event({"type": "response.create"})
        assert [e["type"] for e in r.t.sent] == ["response.create"]


async def test_wait_for_sees_a_status_passed_through_and_refuses_unknown_ones() -> None:
    async for r in rig(["ok"]):
        await r.s.start()
        await r.clock.settle()
        with pytest.raises(ValueError, match="connected"):
            await r.s.wait_for("connected")
        seen: list[str] = []

        async def waiter(s: VoiceSession, out: list[str]) -> None:
            out.append(await s.wait_for("listening", timeout=5))

        async with anyio.create_task_group() as tg:
            tg.start_soon(waiter, r.s, seen)
            await r.clock.settle()
            r.t.server({"type": "input_audio_buffer.speech_started"})
            r.t.server({"type": "input_audio_buffer.speech_stopped"})  # same dispatcher run
        assert seen == ["listening"] and r.s.status == "active"


async def test_async_subscribers_are_refused_clearly() -> None:
    async for r in rig([]):
        async def cb(change: StatusChange) -> None:
            pass

        with pytest.raises(TypeError, match="async"):
            r.s.on_status(cb)


async def test_rollover_inside_the_margin_still_waits_min_interval() -> None:
    wall0 = 1_700_000_000.0
    clock = VirtualClock()
    t = ScriptedTransport(["ok", "ok"])
    policy = SessionPolicy(retry=RetryPolicy(jitter=0.0),
                           rollover=RolloverPolicy(margin=30.0, min_interval=60.0))
    async with VoiceSession(t, clock=clock, policy=policy,
                            wall_clock=lambda: wall0 + clock.now()) as s:
        await s.start()
        await clock.advance(75)
        t.server({"type": "session.updated", "session": {"expires_at": int(wall0) + 100}})
        await clock.advance(59.9)
        assert s.rollovers == 0 and t.opens == 1  # no storm: never sooner than min_interval
        await clock.advance(0.2)
        assert s.rollovers == 1 and t.opens == 2


async def test_expires_at_is_converted_never_judged_and_never_raises() -> None:
    async for r in rig(["ok"], wall_clock=lambda: 1_700_000_000.0):
        await r.s.start()
        await r.clock.settle()
        for value in (10**400, -(10**400), "soon", True, 0, 1.5e308 * 10):
            r.t.server({"type": "session.updated", "session": {"expires_at": value}})
        r.t.server({"type": "session.updated", "session": {}})  # no expires_at: no event
        await r.clock.settle()
        infos = [e for e in r.s.trace if e.event == "session_info"]
        assert len(infos) == 6 and all(e.outcome == "taken" for e in infos)
        assert r.s.status == "active" and r.t.opens == 1 and r.s.armed_timers == {
            Timer.STABLE}
        assert [e.code for e in r.errors] == ["invalid_expires_in"] * 6


@pytest.mark.parametrize("value, expected", [
    (10**400, math.inf), (-(10**400), -math.inf), (1_700_000_100, 100.0), (1.7e9 + 0.5, 0.5),
    ("soon", math.nan), (None, math.nan), (False, math.nan)])
def test_expires_in_conversion(value: object, expected: float) -> None:
    got = expires_in(value, 1_700_000_000.0)
    assert got == expected or (math.isnan(got) and math.isnan(expected))


async def test_misuse_errors_derive_from_fsm_voice_error_and_keep_their_builtin_base() -> None:
    import fsm_voice
    from fsm_voice.errors import ConfigError, FsmVoiceError

    async with VoiceSession(ScriptedTransport(["ok"]), clock=VirtualClock()) as s:
        with pytest.raises(fsm_voice.SessionStateError) as idle:
            s.send_event({"type": "response.create"})
        with pytest.raises(fsm_voice.InvalidEventError) as bad:
            s.send_event({"no": "type"})  # type: ignore[arg-type]
        with pytest.raises(ConfigError) as status:
            await s.wait_for("bogus")
        with pytest.raises(ConfigError) as event:
            s.post("bogus")
    for exc, builtin in ((idle, RuntimeError), (bad, TypeError), (status, ValueError),
                         (event, ValueError)):
        assert isinstance(exc.value, FsmVoiceError) and isinstance(exc.value, builtin)


def test_readme_lists_every_connect_stop_reason() -> None:
    import re
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    reasons = set(re.findall(r'finish\("(\w+)"\)', (root / "fsm_voice/terminal.py").read_text()))
    assert reasons >= {"responses", "quit"}
    stopped = next(ln for ln in (root / "README.md").read_text().splitlines()
                   if '{"stopped": ' in ln)
    for reason in reasons | {"duration", "error", "SIGINT", "SIGTERM"}:
        assert f'"{reason}"' in stopped, reason
