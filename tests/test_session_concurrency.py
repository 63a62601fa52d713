"""The runtime's concurrency (issue 9 item 2): one task group owns every task, a wedged transport
close never holds up dispatch, ``wait_for`` times out on the session's clock, records are bounded.
"""

from __future__ import annotations

import ast
import logging
import pathlib
from typing import Any

import anyio
import pytest

import fsm_voice
from fsm_voice.clock import RealClock, VirtualClock
from fsm_voice.monitor import Monitor
from fsm_voice.policy import SessionPolicy
from fsm_voice.ports import TransportSignal
from fsm_voice.session import VoiceSession
from fsm_voice.testing import ScriptedTransport

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class WedgedClose(ScriptedTransport):
    """``close`` never returns (like an aiortc close stuck on a dead TURN allocation) until it is
    cancelled; the connection is released only then."""

    def __init__(self, *args: Any, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.close_calls = 0
        self.close_cancelled = 0

    async def close(self) -> None:
        self.close_calls += 1
        if not self.is_open:
            return
        try:
            await anyio.sleep_forever()
        finally:
            self.close_cancelled += 1
            await super().close()


async def test_stop_reaches_idle_within_0_3_s_while_the_transport_close_hangs(
    caplog: pytest.LogCaptureFixture,
) -> None:
    t = WedgedClose(["ok", "ok"])
    statuses: list[str] = []
    with anyio.fail_after(5):
        async with VoiceSession(t, clock=RealClock(), close_timeout=0.5) as s:
            s.on_status(lambda c: statuses.append(c.status))
            await s.start()
            assert await s.wait_for("active", timeout=5) == "active"
            with anyio.fail_after(0.3):
                await s.stop()
            assert s.status == "idle" and s.armed_timers == frozenset()
            assert t.close_calls == 1 and t.is_open  # the close is still hanging ...
            await s.start()  # ... and dispatch goes on: a new start is taken at once
            assert s.status == "connecting"
            # The new connection waits for the old one to be released (close abandoned after
            # close_timeout), then comes up: one connection at a time, never two.
            assert await s.wait_for("active", timeout=5) == "active"
            assert t.close_cancelled == 1 and t.opens == 2
    assert statuses == ["connecting", "active", "idle", "connecting", "active", "idle"]
    assert t.close_cancelled == 2 and not t.is_open  # the exit bounded the second close too
    assert "took more than 0.5 s; abandoned" in caplog.text


async def test_wait_for_times_out_on_the_session_clock() -> None:
    clock = VirtualClock()
    t = ScriptedTransport(["hang"])
    async with VoiceSession(t, clock=clock) as s:
        await s.start()
        outcome: list[str] = []

        async def waiter() -> None:
            try:
                await s.wait_for("active", timeout=5)
            except TimeoutError:
                outcome.append(f"timeout at {clock.now()}")

        async with anyio.create_task_group() as tg:
            tg.start_soon(waiter)
            await clock.advance(4.9)
            assert outcome == [] and s.status == "connecting"
            await clock.advance(0.2)
        assert outcome == ["timeout at 5.0"]
        with pytest.raises(ValueError, match="timeout"):
            await s.wait_for("active", timeout=float("nan"))


async def test_wait_for_timeout_zero_or_reached_status() -> None:
    clock = VirtualClock()
    async with VoiceSession(ScriptedTransport(["ok"]), clock=clock) as s:
        with pytest.raises(TimeoutError):
            await s.wait_for("active", timeout=0)
        assert await s.wait_for("idle", timeout=0) == "idle"  # already there


async def test_errors_and_alerts_are_bounded() -> None:
    clock = VirtualClock()
    t = ScriptedTransport(["ok"])
    logging.getLogger("fsm_voice.session").setLevel(logging.ERROR)
    try:
        async with VoiceSession(t, clock=clock) as s:
            await s.start()
            await clock.settle()
            for _ in range(3_000):  # a client bug: one event rejected each time, session goes on
                t.server({"type": "error", "error": {"type": "invalid_request_error",
                                                     "code": "invalid_event"}})
            await clock.settle()
            assert s.status == "active"
            assert len(s.errors) == 1_000 and s.monitor.error_count == 3_000
    finally:
        logging.getLogger("fsm_voice.session").setLevel(logging.NOTSET)


def test_200k_errors_keep_memory_flat() -> None:
    from fsm_voice.errors import ErrorSource, Severity, VoiceError
    from fsm_voice.policy import MonitorPolicy, QualityThresholds

    m = Monitor(clock=VirtualClock(), monitor=MonitorPolicy(), quality=QualityThresholds(),
                status=lambda: "active", active=lambda: True, record=lambda e, d: None)
    seen: list[str] = []
    m.on_error.add(lambda e: seen.append(e.code) if len(seen) < 1 else None)
    logger = logging.getLogger("fsm_voice.session")
    logger.setLevel(logging.ERROR)
    try:
        for i in range(200_000):
            m.report(VoiceError(severity=Severity.TRANSIENT, code=f"e{i}", message="x",
                                source=ErrorSource.SERVER))
    finally:
        logger.setLevel(logging.NOTSET)
    assert m.error_count == 200_000 and len(m.errors) == 1_000
    assert m.errors[0].code == "e199000" and m.errors[-1].code == "e199999"
    assert seen == ["e0"]


def test_no_task_or_loop_callback_outside_the_task_group() -> None:
    """session/dispatcher/monitor never start a task or schedule a loop callback themselves:
    tasks go to the session's group (``start_soon``), timers through the session's clock."""
    root = pathlib.Path(fsm_voice.__file__).parent
    banned = {"create_task", "ensure_future", "call_soon", "run_in_executor", "TaskGroup",
              "get_running_loop", "get_event_loop"}
    for name in ("session.py", "dispatcher.py", "monitor.py"):
        tree = ast.parse((root / name).read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Import | ast.ImportFrom):
                mods = [a.name for a in node.names] + [getattr(node, "module", "") or ""]
                assert "asyncio" not in mods, f"{name} imports asyncio"
            if isinstance(node, ast.Attribute):
                assert node.attr not in banned, f"{name}:{node.lineno} uses {node.attr}"
                if node.attr == "call_later":  # only ever on the session's clock
                    assert ast.unparse(node.value) in ("self.clock", "clock"), (
                        f"{name}:{node.lineno} calls call_later on {ast.unparse(node.value)}")


async def test_late_signal_after_stop_with_a_hanging_close_is_stale() -> None:
    t = WedgedClose(["ok"])
    clock = VirtualClock()
    async with VoiceSession(t, clock=clock, close_timeout=0.2, policy=SessionPolicy()) as s:
        await s.start()
        await clock.settle()
        assert s.status == "active"
        sink = t.sink
        await s.stop()
        assert sink is not None
        sink.signal(TransportSignal.FAILED, "late")  # the closing connection still reports
        await s.dispatcher.drain()
        assert s.status == "idle" and s.trace[-1].outcome == "stale"
