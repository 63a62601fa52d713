"""The runtime's public face: :class:`VoiceSession`, a thin facade over three parts.

- :class:`~fsm_voice.dispatcher.Dispatcher`: the queue, the machine, effects, timers, generations;
- :class:`~fsm_voice.outbox.Outbox`: client events, re-send, the conversation replay (sans-IO);
- :class:`~fsm_voice.monitor.Monitor`: errors, metrics, alerts, health, subscribers.

One anyio task group per session, living as long as its ``async with``, owns every task: the
dispatch loop, the quality poll, and each transport open and close.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import os
import random
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any, Literal

import anyio
from anyio.abc import TaskGroup

from fsm_voice.clock import Clock, RealClock, fail_after
from fsm_voice.dispatcher import (
    SERVER_EVENT_MAP,
    Dispatcher,
    Outcome,
    Posted,
    StatusChange,
    Traced,
    TraceEntry,
)
from fsm_voice.effects import OpenReason, Timer
from fsm_voice.errors import ConfigError, FsmVoiceError, VoiceError
from fsm_voice.fastpath import FastLifecycle
from fsm_voice.machine import ACTIVE_STATES, EVENTS, SEVERITIES, STATUSES
from fsm_voice.machine import LifecycleMachine as _Reference
from fsm_voice.machine.engine import LifecycleMachine
from fsm_voice.monitor import Monitor
from fsm_voice.outbox import InvalidEventError, Outbox, QueueOverflowError, validate_event
from fsm_voice.policy import QualityAlert, SessionPolicy
from fsm_voice.ports import ConnectionMetrics, Transport
from fsm_voice.protocols import (
    BackendProtocol,
    LiveProtocol,
    LiveUsage,
    ProtocolName,
    make_protocol,
)

if TYPE_CHECKING:
    from fsm_voice.trace import TraceWriter

__all__ = ["SERVER_EVENT_MAP", "InvalidEventError", "Outcome", "QueueOverflowError",
           "SessionStateError", "StatusChange", "TraceEntry",
           "Traced", "VoiceSession"]

log = logging.getLogger("fsm_voice.session")


class SessionStateError(FsmVoiceError, RuntimeError):
    """The session is not in a state for this call (not running, idle, already running)."""


class VoiceSession:
    """One voice session: ``async with VoiceSession(transport) as s: await s.start() ...``.

    ``protocol`` is the backend's wire protocol (:mod:`fsm_voice.protocols`): ``"realtime"``
    (default, OpenAI Realtime) or ``"live"`` (OpenAI Live); anything else is a
    :class:`ConfigError`. ``engine="fast"`` (default) uses the compiled table
    (:mod:`fsm_voice.fastpath`, proven equal to python-statemachine by a differential test);
    ``engine="statemachine"`` runs the python-statemachine class itself. ``close_timeout``
    bounds (in real seconds) how long one transport close may take before it is abandoned; it
    never holds up dispatch.
    """

    def __init__(
        self,
        transport: Transport,
        *,
        policy: SessionPolicy | None = None,
        clock: Clock | None = None,
        engine: Literal["fast", "statemachine"] = "fast",
        rng: random.Random | None = None,
        machine: type[LifecycleMachine] = _Reference,
        trace_limit: int = 10_000,
        session_config: Mapping[str, Any] | None = None,
        replay_history: bool = True,
        history_limit: int = 200,
        wall_clock: Callable[[], float] = time.time,
        close_timeout: float = 10.0,
        protocol: ProtocolName = "realtime",
    ) -> None:
        self.protocol: BackendProtocol = make_protocol(protocol)
        if not isinstance(transport, Transport):
            raise TypeError(
                f"transport must implement fsm_voice.ports.Transport (open, close, send_event, "
                f"metrics); got {type(transport).__name__}"
            )
        self.transport = transport
        self.policy = policy or SessionPolicy()
        self.clock: Clock = clock or RealClock()
        if engine == "fast":
            self.machine: FastLifecycle | LifecycleMachine = FastLifecycle(
                self.policy.retry, self.policy.ice, rng, machine=machine,
                rollover=self.policy.rollover,
            )
        elif engine == "statemachine":
            self.machine = machine(self.policy.retry, self.policy.ice, rng,
                                   rollover=self.policy.rollover)
        else:
            raise ValueError(f"engine must be 'fast' or 'statemachine', got {engine!r}")
        self.outbox = Outbox(limit=self.policy.event_queue_limit, session_config=session_config,
                             replay_history=replay_history, history_limit=history_limit)
        self.monitor = Monitor(
            clock=self.clock, monitor=self.policy.monitor, quality=self.policy.quality,
            status=lambda: self.machine.status,
            active=lambda: self.machine.state_id in ACTIVE_STATES,
            record=lambda event, detail: self.dispatcher.observe(event, detail),
        )
        self.dispatcher = Dispatcher(
            self.machine, transport, clock=self.clock, outbox=self.outbox, monitor=self.monitor,
            trace_limit=trace_limit, close_timeout=close_timeout, wall_clock=wall_clock,
            protocol=self.protocol,
        )
        self.closers: list[Callable[[], Awaitable[Any]]] = []
        """Async callables run (in order, each guarded) when the session context exits, after
        the last transport close."""
        self._stack: contextlib.AsyncExitStack | None = None

    # -- state --------------------------------------------------------------------------------
    @property
    def state(self) -> str:
        return self.machine.state_id

    @property
    def status(self) -> str:
        return self.machine.status

    @property
    def attempts(self) -> int:
        return self.machine.attempts

    @property
    def armed_timers(self) -> frozenset[Timer]:
        return frozenset(self.dispatcher.timers)

    @property
    def trace(self) -> collections.deque[TraceEntry]:
        """The last ``trace_limit`` events as the runtime handled them."""
        return self.dispatcher.trace

    @property
    def errors(self) -> list[VoiceError]:
        """The most recent reported errors (bounded; ``monitor.error_count`` counts all)."""
        return list(self.monitor.errors)

    @property
    def alerts(self) -> list[QualityAlert]:
        """The most recent quality alerts (bounded; ``monitor.alert_count`` counts all)."""
        return list(self.monitor.alerts)

    @property
    def metrics_history(self) -> collections.deque[ConnectionMetrics]:
        return self.monitor.metrics_history

    @property
    def rate_limits(self) -> list[Any]:
        """The last ``rate_limits.updated`` the server sent (OpenAI Realtime shape; Live: [])."""
        return self.protocol.rate_limits

    @property
    def usage(self) -> LiveUsage | None:
        """Live: the latest ``session.usage.updated`` (seconds, context ``usage_ratio``) or the
        final ``session.closed`` usage; None before the first (and always on Realtime)."""
        return self.protocol.usage if isinstance(self.protocol, LiveProtocol) else None

    @property
    def unknown_events(self) -> collections.Counter[str]:
        """Live: server event types the adapter does not know, counted (tolerated)."""
        if isinstance(self.protocol, LiveProtocol):
            return self.protocol.unknown_events
        return collections.Counter()

    def seed_input(self) -> list[dict[str, Any]]:
        """Live: the ``session.input`` for the session being created: [] when the open in
        progress is a ``start`` (a new conversation) or there is nothing to carry, else the
        conversation's newest messages within the Live limits (``Conversation.live_input``),
        recorded and, when cut, reported like a Realtime replay (``conversation_cut``).
        Called by the Live signaling on every open; never raises."""
        if self.dispatcher.open_reason in (None, OpenReason.START) or \
                not self.outbox.replay_history:
            return []
        try:
            messages, report = self.outbox.conversation.live_input()
        except Exception as exc:  # a broken conversation must not stop the reconnect
            log.warning("building the Live input failed: %r", exc)
            return []
        if not messages and not report.cut and not report.unreplayable:
            return []
        err = self.outbox.seeded(report)
        if err is not None:
            self.monitor.report(err)
        return messages

    @property
    def session_config(self) -> dict[str, Any] | None:
        """Sent as ``session.update`` each time a connection comes up (re-applied on restart)."""
        return self.outbox.session_config

    @property
    def history(self) -> collections.OrderedDict[str, dict[str, Any]]:
        """Conversation items that can be replayed (text and transcripts), by item id."""
        return self.outbox.history

    @property
    def sent_events(self) -> int:
        return self.outbox.sent

    @property
    def delivered_events(self) -> int:
        return self.outbox.delivered

    @property
    def dropped_events(self) -> int:
        """Client events that could not be sent (reported through ``on_error``)."""
        return self.outbox.dropped

    @property
    def resent_events(self) -> int:
        """Client events re-queued because the closed connection had not had them acknowledged;
        ``delivered_events`` counts each once."""
        return self.outbox.resent

    @property
    def replayed_items(self) -> int:
        return self.outbox.replayed

    @property
    def rollovers(self) -> int:
        return self.dispatcher.rollovers

    # Subscriptions: plain (non-async) callables, called in order from the dispatcher; an
    # exception in one is logged and does not affect the session or the other subscribers.
    def on_status(self, cb: Callable[[StatusChange], object]) -> None:
        self.dispatcher.on_status.add(cb)

    def on_error(self, cb: Callable[[VoiceError], object]) -> None:
        self.monitor.on_error.add(cb)

    def on_server_event(self, cb: Callable[[Mapping[str, Any]], object]) -> None:
        self.dispatcher.on_server_event.add(cb)

    def on_metrics(self, cb: Callable[[ConnectionMetrics], object]) -> None:
        self.monitor.on_metrics.add(cb)

    def on_alert(self, cb: Callable[[QualityAlert], object]) -> None:
        self.monitor.on_alert.add(cb)

    def on_trace(self, cb: Callable[[Traced], object]) -> None:
        """Every trace entry as it is recorded (taken, refused, stale, observed), with the
        posted item (event parameters, generation token, timer) and the transport generation."""
        self.dispatcher.on_trace.add(cb)

    def record_trace(self, path: str | os.PathLike[str], **options: Any) -> TraceWriter:
        """Record this session to a JSON Lines trace file (:mod:`fsm_voice.trace`); closed when
        the session exits. Call it before :meth:`start` for a replayable trace."""
        from fsm_voice.trace import TraceWriter

        return TraceWriter.attach(self, path, **options)

    # -- lifetime -----------------------------------------------------------------------------
    async def __aenter__(self) -> VoiceSession:
        if self._stack is not None:
            raise SessionStateError("this VoiceSession is already running")
        async with contextlib.AsyncExitStack() as stack:
            tg = await stack.enter_async_context(anyio.create_task_group())
            self.dispatcher.attach(tg)
            tg.start_soon(self.dispatcher.run, name="fsm_voice.dispatch")
            tg.start_soon(self.monitor.run, self.transport.metrics, name="fsm_voice.monitor")
            stack.push_async_callback(self._cancel, tg)
            self._stack = stack.pop_all()
        return self

    @staticmethod
    async def _cancel(tg: TaskGroup) -> None:
        tg.cancel_scope.cancel()

    async def __aexit__(self, *exc: object) -> None:
        stack = self._stack
        assert stack is not None
        try:
            with anyio.CancelScope(shield=True):
                await self.stop()
                await self.dispatcher.wait_closed()
        finally:
            self.dispatcher.cancel_timers()
            with anyio.CancelScope(shield=True):
                for closer in self.closers:
                    try:
                        await closer()
                    except Exception as exc:
                        log.warning("closer %r failed (continuing): %r", closer, exc)
            # The group is left without the body's exception: that one propagates as it is.
            self._stack = None
            await stack.aclose()
            self.dispatcher.attach(None)

    # -- commands -----------------------------------------------------------------------------
    async def start(self) -> None:
        """Ask for a connection (returns at once; watch :attr:`status` or :meth:`wait_for`)."""
        self._require_running()
        self.dispatcher.post(Posted("start"))
        await self.dispatcher.drain()

    async def stop(self) -> None:
        """Close everything and return once the session is ``idle`` (no timer armed; the
        transport's close goes on in the session's task group and never delays this)."""
        if self._stack is None:
            return
        self.dispatcher.post(Posted("stop"))
        await self.dispatcher.drain()

    async def wait_for(self, *statuses: str, timeout: float | None = None) -> str:
        """Wait until the status is one of ``statuses``, or passes through one of them; returns
        the status reached. ``timeout`` is in seconds of the session's clock (a virtual clock in
        tests): the built-in TimeoutError after it; :class:`ConfigError` (a ValueError) for an
        unknown status."""
        unknown = [x for x in statuses if x not in STATUSES]
        if unknown or not statuses:
            raise ConfigError(f"wait_for needs statuses among {', '.join(STATUSES)}; "
                             f"got {', '.join(map(repr, unknown)) or 'none'}")
        if self.status in statuses:
            return self.status
        with fail_after(self.clock, timeout):
            return await self.dispatcher.wait_status(frozenset(statuses))
        raise AssertionError("unreachable")  # pragma: no cover  (mypy: fail_after may swallow)

    def send_event(self, event: Mapping[str, Any]) -> None:
        """Send a client event; while reconnecting it is queued (bounded) and sent in order later.

        Raises :class:`QueueOverflowError` when the queue is full, :class:`SessionStateError` (a
        RuntimeError) when idle/error, :class:`InvalidEventError` (a TypeError) when it is not a
        JSON object with a string ``type``.
        """
        validate_event(event)
        if self.status in ("idle", "error"):
            raise SessionStateError(f"cannot send {event['type']!r}: session is {self.status}; "
                               "call start() first")
        up = self.machine.state_id in ACTIVE_STATES
        self.outbox.submit(event, self.transport.send_event if up else None)

    def post(self, event: str, *, severity: str | None = None, code: str = "",
             error: VoiceError | None = None, retry_after: float | None = None,
             expires_in: float | None = None) -> None:
        """Feed a raw machine event (for embedding apps and tests)."""
        if event not in EVENTS:
            raise ConfigError(f"unknown machine event {event!r}; known: {', '.join(EVENTS)}")
        if severity is not None and severity not in SEVERITIES:
            raise ConfigError(f"severity must be one of {', '.join(SEVERITIES)}, got {severity!r}")
        for name, value in (("retry_after", retry_after), ("expires_in", expires_in)):
            if value is not None and (isinstance(value, bool)
                                      or not isinstance(value, int | float)):
                raise InvalidEventError(f"{name} must be a number of seconds or None, "
                                        f"got {value!r}")
        self.dispatcher.post(Posted(event, severity=severity, code=code, error=error,
                                    retry_after=retry_after, expires_in=expires_in))

    def _require_running(self) -> None:
        if self._stack is None:
            raise SessionStateError("use the session inside 'async with VoiceSession(...) as s:'")
