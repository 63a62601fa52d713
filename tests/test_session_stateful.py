"""A hypothesis RuleBasedStateMachine over the runtime (VoiceSession + scripted transport +
virtual clock). The session lives on an event loop in a blocking portal; each rule is one step
of an application, a transport, a server or the clock."""

from __future__ import annotations

import time
from typing import Any

import anyio
from anyio.from_thread import BlockingPortal, start_blocking_portal
from hypothesis import event, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from fsm_voice.clock import VirtualClock
from fsm_voice.effects import ArmTimer, OpenTransport, Timer
from fsm_voice.machine import STATUSES, TIMER_OF, WORKING_STATES
from fsm_voice.policy import RetryPolicy, SessionPolicy
from fsm_voice.ports import TransportSignal
from fsm_voice.session import VoiceSession
from fsm_voice.testing import ScriptedTransport, failure

SERVER_EVENTS = [
    {"type": "input_audio_buffer.speech_started"},
    {"type": "input_audio_buffer.speech_stopped"},
    {"type": "output_audio_buffer.started"},
    {"type": "output_audio_buffer.stopped"},
    {"type": "error", "error": {"type": "server_error", "code": "server_error"}},
    {"type": "error", "error": {"type": "invalid_request_error", "code": "invalid_api_key"}},
    {"type": "error", "error": {"type": "invalid_request_error",
                                "code": "response_cancel_not_active"}},
    {"type": "error", "error": {"type": "invalid_request_error", "code": "session_expired"}},
    {"type": "session.updated", "session": {"expires_at": 0}},
    {"type": "session.updated", "session": {"expires_at": 10**400}},
    {"type": "session.updated", "session": {"expires_at": int(time.time()) + 95}},
]
STEPS = ["ok", "ok", "hang", "transient", "recoverable", "fatal"]


class RuntimeRules(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self._portal_cm = start_blocking_portal()
        self.portal: BlockingPortal = self._portal_cm.__enter__()
        self.clock = VirtualClock()
        self.t = ScriptedTransport(default="ok")
        self.s = VoiceSession(self.t, clock=self.clock,
                              policy=SessionPolicy(retry=RetryPolicy(jitter=0.0)))
        self.old_sinks: list[Any] = []
        # The session's task group must be entered and exited by one task: a host task.
        self._done = self.portal.call(anyio.Event)
        self._host, _ = self.portal.start_task(self._run_host)

    async def _run_host(self, *, task_status: Any) -> None:
        async with self.s:
            task_status.started()
            await self._done.wait()

    def teardown(self) -> None:
        try:
            self.portal.call(_call, self._done.set)
            self._host.result(timeout=10)
            assert self.s.status == "idle" and not self.t.is_open
            assert self.t.opens == self.t.closes
            assert self.s.armed_timers == frozenset()
        finally:
            self._portal_cm.__exit__(None, None, None)

    def settle(self) -> None:
        self.portal.call(self.clock.settle)
        if self.t.sink is not None and (not self.old_sinks or self.old_sinks[-1] is not
                                        self.t.sink):
            self.old_sinks.append(self.t.sink)

    @rule(step=st.sampled_from(STEPS))
    def script_next_connection(self, step: str) -> None:
        self.t.script.append(step if step in ("ok", "hang") else failure(step))

    @rule()
    def start(self) -> None:
        if self.s.status in ("idle", "error"):
            self.portal.call(self.s.start)
            self.settle()

    @rule()
    def stop(self) -> None:
        self.portal.call(self.s.stop)
        assert self.s.status == "idle" and self.s.armed_timers == frozenset()
        self.settle()  # the close itself runs in the session's task group
        assert not self.t.is_open

    @rule(signal=st.sampled_from(list(TransportSignal)))
    def transport_signal(self, signal: TransportSignal) -> None:
        if self.t.sink is not None and self.t.is_open:
            self.portal.call(_call, self.t.emit, signal)
            self.settle()

    @rule()
    def late_signal_from_a_closed_transport(self) -> None:
        if len(self.old_sinks) > 1:
            before = (self.s.state, self.s.attempts, self.t.opens)
            self.portal.call(_call, self.old_sinks[0].signal, TransportSignal.FAILED)
            self.settle()
            assert (self.s.state, self.s.attempts, self.t.opens) == before

    @rule(event=st.sampled_from(SERVER_EVENTS))
    def server_event(self, event: dict[str, Any]) -> None:
        if self.t.sink is not None and self.t.is_open:
            self.portal.call(_call, self.t.server, event)
            self.settle()

    @rule(dt=st.sampled_from([0.5, 1.9, 2.0, 4.0, 5.0, 8.0, 10.0, 15.0, 30.0]))
    def advance(self, dt: float) -> None:
        self.portal.call(self.clock.advance, dt)
        self.settle()

    @invariant()
    def bounded_consistent_and_legal(self) -> None:
        s = self.s
        event(f"state {s.state}")
        assert s.status in STATUSES
        assert s.attempts <= 3
        expected = {TIMER_OF[s.state]} if s.state in TIMER_OF else set()
        m = s.machine
        if s.state in WORKING_STATES and m.episode:
            expected.add(Timer.STABLE)  # armed when the connection came up, until it fires
        if m.rollover == "armed":
            expected.add(Timer.ROLLOVER)
        assert set(s.armed_timers) == expected, (s.state, s.armed_timers)
        if s.state in ("idle", "error", "backoff"):
            assert not self.t.is_open
        for e in s.trace:  # backoff delays are exactly 2, 4, 8 s
            for x in e.effects:
                if isinstance(x, ArmTimer) and x.timer is Timer.BACKOFF:
                    assert x.delay in (2.0, 4.0, 8.0)
        # fatal never retried: nothing opens between reaching `error` and the next `start`
        in_error = False
        for e in s.trace:
            if e.outcome != "taken":
                continue
            if e.event == "start":
                in_error = False
            elif in_error:
                assert not any(isinstance(x, OpenTransport) for x in e.effects), e
            if e.target == "error":
                in_error = True


async def _call(fn: Any, *args: Any) -> None:
    fn(*args)


TestRuntimeRules = RuntimeRules.TestCase
TestRuntimeRules.settings = settings(max_examples=150, stateful_step_count=40, deadline=None)
