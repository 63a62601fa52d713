"""The dispatcher: one queue feeding the lifecycle machine, and the executor of its effects.

Run to completion: the dispatcher takes one event, sends it to the machine, executes the effects
in order, then takes the next. Executing an effect never awaits, so nothing a transport does can
stall dispatch (``stop`` included): opening and closing run in tasks of the session's task group.
A close is *shielded* (cleanup always completes) and bounded by ``close_timeout``; the next open
of the same transport waits for it, so one transport never has two connections.

Every transport and timer carries a generation token: a late signal from a closed transport or
the expiry of a cancelled timer is recorded as ``stale``, never fed to the machine.

Timers are clock callbacks (``Clock.call_later`` handles), not tasks, by choice: arming one costs
~1 us against ~70 us for a task, the callback only appends to the queue (it cannot block or
raise), and the dispatcher owns every handle: ``CancelTimer`` cancels one, :meth:`cancel_timers`
all of them when the session exits. Nothing else is scheduled outside the task group.
"""

from __future__ import annotations

import collections
import logging
import math
import time
from collections.abc import Callable, Mapping
from typing import Any, Literal, NamedTuple

import anyio
import attrs
from anyio.abc import TaskGroup
from statemachine.exceptions import TransitionNotAllowed

from fsm_voice.clock import Clock, TimerHandle
from fsm_voice.effects import (
    ArmTimer,
    CancelTimer,
    CloseTransport,
    ConnectionUp,
    Effect,
    NewConversation,
    OpenReason,
    OpenTransport,
    ReportError,
    Timer,
)
from fsm_voice.errors import (
    ErrorSource,
    Severity,
    VoiceError,
    classify_exception,
    machine_severity,
)
from fsm_voice.fastpath import FastLifecycle
from fsm_voice.machine import ACTIVE_STATES, STATUS_OF
from fsm_voice.machine.engine import LifecycleMachine
from fsm_voice.monitor import Monitor, Subscribers
from fsm_voice.outbox import Outbox
from fsm_voice.ports import Transport, TransportSignal
from fsm_voice.protocols import (
    SERVER_EVENT_MAP,
    BackendProtocol,
    RealtimeProtocol,
    expires_in,
)

log = logging.getLogger("fsm_voice.session")

__all__ = ["SERVER_EVENT_MAP", "Dispatcher", "Posted", "StatusChange", "TraceEntry", "Traced",
           "expires_in", "internal_error"]

Outcome = Literal["taken", "refused", "stale", "observed"]
"""``taken``/``refused`` by the machine; ``stale`` dropped (closed transport, cancelled timer);
``observed``: a metrics sample or quality alert recorded for the record (no machine event)."""


class TraceEntry(NamedTuple):
    """One event as the runtime handled it (a named tuple: one is made per event)."""

    time: float
    event: str
    source: str
    target: str
    effects: tuple[Effect, ...]
    outcome: Outcome = "taken"
    detail: str = ""


class Traced(NamedTuple):
    """What an ``on_trace`` subscriber gets for every trace entry, as it is recorded: the entry,
    the posted item it came from (event parameters, generation token, timer; None for an
    observation) and the transport generation current when it was handled (before its
    effects ran)."""

    entry: TraceEntry
    item: Posted | None
    generation: int


TraceBatch = list[Any]
"""What a batch reader (:meth:`Dispatcher.add_trace_reader`) gets: the fields of :class:`Traced` of
consecutive entries, flat (``entry, item, generation, entry, item, ...``): no object per entry
lives until it is read (nothing for the garbage collector), and ``batch[0::3]`` is the
entries. The item of an event whose posted item has no parameter (timer, severity, code,
retry_after, expires_in) is only its ``token`` (an int or None); an observation's is None."""

FEED_BATCH = 256
"""Trace entries buffered for batch readers before they are handed over mid-burst."""
_FEED_MAX = 3 * FEED_BATCH
_NO_PARAMS = (None, None, "", None, None)
"""timer, severity, code, retry_after, expires_in of a posted item without parameters."""


@attrs.frozen
class StatusChange:
    time: float
    previous: str
    status: str
    state: str
    event: str


class Posted:
    """One queued item: a machine event with its arguments, or a barrier (``barrier``: not an
    event; set when the dispatcher reaches it, see :meth:`Dispatcher.drain`). ``token``: the
    generation of the transport or timer that posted it (None for the application)."""

    __slots__ = ("barrier", "code", "error", "event", "expires_in", "retry_after", "severity",
                 "timer", "token")

    def __init__(self, event: str, *, severity: str | None = None, code: str = "",
                 error: VoiceError | None = None, token: int | None = None,
                 timer: Timer | None = None, retry_after: float | None = None,
                 expires_in: float | None = None, barrier: anyio.Event | None = None) -> None:
        self.event = event
        self.severity = severity
        self.code = code
        self.error = error
        self.token = token
        self.timer = timer
        self.retry_after = retry_after
        self.expires_in = expires_in
        self.barrier = barrier

    def __repr__(self) -> str:
        return f"Posted({self.event!r}, token={self.token!r})"


class _StatusWaiter:
    __slots__ = ("event", "hit", "statuses")

    def __init__(self, statuses: frozenset[str]) -> None:
        self.statuses = statuses
        self.event = anyio.Event()
        self.hit: str | None = None


def internal_error(code: str, exc: BaseException,
                   severity: Severity = Severity.RECOVERABLE) -> VoiceError:
    err = VoiceError(severity=severity, code=code, message=f"{type(exc).__name__}: {exc}",
                     source=ErrorSource.CLIENT)
    err.__cause__ = exc
    return err


class _Sink:
    """What one opened transport reports through; knows its generation."""

    __slots__ = ("_dispatcher", "_generation")

    def __init__(self, dispatcher: Dispatcher, generation: int) -> None:
        self._dispatcher = dispatcher
        self._generation = generation

    def signal(self, signal: TransportSignal, detail: str = "") -> None:
        self._dispatcher.post(Posted(signal.value, code=detail, token=self._generation))

    def server_event(self, event: Mapping[str, Any]) -> None:
        self._dispatcher.server_event(event, self._generation)


class Dispatcher:
    """Queue, machine, effects, timers and generation tokens of one session.

    :meth:`attach` gives it the session's task group (transport tasks run there); :meth:`run`
    is the dispatch loop (a task of that group).
    """

    def __init__(
        self,
        machine: FastLifecycle | LifecycleMachine,
        transport: Transport,
        *,
        clock: Clock,
        outbox: Outbox,
        monitor: Monitor,
        trace_limit: int = 10_000,
        close_timeout: float = 10.0,
        wall_clock: Callable[[], float] = time.time,
        protocol: BackendProtocol | None = None,
    ) -> None:
        if not (isinstance(close_timeout, int | float) and 0 < close_timeout < math.inf):
            raise ValueError(f"close_timeout must be a positive number of seconds, "
                             f"got {close_timeout!r}")
        self.machine = machine
        self.transport = transport
        self.clock = clock
        self.outbox = outbox
        self.trace: collections.deque[TraceEntry] = collections.deque(maxlen=trace_limit)
        self.monitor = monitor
        self.on_status: Subscribers[StatusChange] = Subscribers()
        self.on_server_event: Subscribers[Mapping[str, Any]] = Subscribers()
        self.on_trace: Subscribers[Traced] = Subscribers()
        """Every trace entry as it is recorded, one call each (the application's hook)."""
        self.on_trace_batch: Subscribers[TraceBatch] = Subscribers()
        """Every trace entry in batches (the trace file and the metrics taps read this): see
        :meth:`add_trace_reader`."""
        self._feed: TraceBatch | None = None
        """The records not yet handed to ``on_trace_batch`` (None: no batch reader)."""
        self.close_timeout = close_timeout
        """Real seconds a transport ``close`` may take before it is abandoned (cancelled)."""
        self.queue: collections.deque[Posted] = collections.deque()
        self._wakeup = anyio.Event()
        self._idle = False
        """The loop waits on ``_wakeup`` (set it once, not per posted event)."""
        self._tg: TaskGroup | None = None
        self.done = False
        """The dispatch loop has ended (``drain`` then handles the queue itself)."""
        self.generation = 0
        self._transport_scope: anyio.CancelScope | None = None
        self._transport_open = False
        self._closed: anyio.Event | None = None
        """Set when the last close started has finished (None: no close yet)."""
        self.timers: dict[Timer, tuple[int, TimerHandle]] = {}
        self._timer_seq = 0
        self._waiters: list[_StatusWaiter] = []
        self._wall_clock = wall_clock
        """Epoch seconds, to turn a server's ``expires_at`` into ``expires_in``."""
        self.rollovers = 0
        """Restarts the machine made to roll the session over (``rollover_due``)."""
        self.protocol: BackendProtocol = protocol if protocol is not None else RealtimeProtocol()
        """What the backend's server events mean and what a new connection is sent."""
        self.open_reason: OpenReason | None = None
        """The reason of the last ``OpenTransport`` (the connection open or being opened)."""

    # -- lifetime --------------------------------------------------------------------------
    def attach(self, tg: TaskGroup | None) -> None:
        self._tg = tg
        self.done = tg is None

    def cancel_timers(self) -> None:
        for _token, handle in self.timers.values():
            handle.cancel()
        self.timers.clear()

    async def wait_closed(self) -> None:
        """Until every close started so far has finished (each is bounded by
        ``close_timeout``)."""
        if self._closed is not None:
            await self._closed.wait()

    # -- the queue -------------------------------------------------------------------------
    def post(self, item: Posted) -> None:
        self.queue.append(item)
        if self._idle:
            self._idle = False
            self._wakeup.set()

    async def drain(self) -> None:
        """Wait until everything queued so far is handled. If the dispatch loop is gone
        (cancelled from outside, or it failed), handle the queue here, in this task: ``stop``
        must always complete its cleanup."""
        if not self.done:
            reached = anyio.Event()
            self.post(Posted("", barrier=reached))
            await reached.wait()  # set by the loop, or by its ``finally`` if it ends first
        if self.done:
            while self.queue:
                item = self.queue.popleft()
                if item.barrier is not None:
                    self.flush_trace()
                    item.barrier.set()
                else:
                    self.dispatch(item)
            self.flush_trace()

    async def run(self) -> None:
        """The dispatch loop (until cancelled)."""
        queue = self.queue
        try:
            while True:
                if not queue:
                    if self._feed:  # the burst is over: hand the trace records over
                        self.flush_trace()
                        continue
                    self._wakeup = anyio.Event()
                    self._idle = True
                    await self._wakeup.wait()
                    continue
                item = queue.popleft()
                if item.barrier is not None:
                    if self._feed:
                        self.flush_trace()
                    item.barrier.set()
                    continue
                self.dispatch(item)
        finally:
            self.done = True
            self.flush_trace()
            for item in queue:  # wake every waiter: drain takes over
                if item.barrier is not None:
                    item.barrier.set()

    async def wait_status(self, statuses: frozenset[str]) -> str:
        """Until the status is, or passes through, one of ``statuses``; the one reached."""
        if self.machine.status in statuses:
            return self.machine.status
        waiter = _StatusWaiter(statuses)
        self._waiters.append(waiter)
        try:
            await waiter.event.wait()
        finally:
            if waiter in self._waiters:
                self._waiters.remove(waiter)
        assert waiter.hit is not None
        return waiter.hit

    # -- the trace --------------------------------------------------------------------------
    def add_trace_reader(self, reader: Callable[[TraceBatch], object]) -> None:
        """Give ``reader`` every trace entry from now on, in order, in batches: at the end of
        each burst of events (before the dispatcher waits), every :data:`FEED_BATCH` entries,
        at a ``drain`` barrier, and whenever :meth:`flush_trace` is called (do that before
        recording anything that must come after the entries so far, e.g. an error). Cheaper
        than ``on_trace``: no call and no :class:`Traced` per entry."""
        self.on_trace_batch.add(reader)
        if self._feed is None:
            self._feed = []

    def flush_trace(self) -> None:
        """Hand the buffered trace records to the batch readers now."""
        feed = self._feed
        if feed:
            self._feed = []
            self.on_trace_batch.emit(feed)

    def _record(self, entry: TraceEntry, item: Posted | None) -> None:
        self.trace.append(entry)
        feed = self._feed
        if feed is not None:
            feed += (entry, item, self.generation)
            if len(feed) >= _FEED_MAX:
                self.flush_trace()
        if self.on_trace:
            self.on_trace.emit(Traced(entry, item, self.generation))

    def observe(self, event: str, detail: str) -> None:
        """Record something seen (a metrics sample, an alert) in the trace."""
        state = self.machine.state_id
        entry = TraceEntry(self.clock.now(), event, state, state, (), "observed", detail)
        self._record(entry, None)
        self.flush_trace()  # not part of a burst: hand it over now

    # -- one event ---------------------------------------------------------------------------
    def dispatch(self, item: Posted) -> None:
        machine = self.machine
        now = self.clock.now()
        source = machine.state_id
        token = item.token
        if token is not None and (item.timer is not None or token != self.generation
                                  or not self._transport_open):
            stale = self._stale_reason(item)
            if stale:
                entry = TraceEntry(now, item.event, source, source, (), "stale", stale)
                self._record(entry, item)
                return
            if item.timer is not None:
                self.timers.pop(item.timer, None)
        pending_rollover = machine.rollover == "pending"
        try:
            machine.send(item.event, severity=item.severity, code=item.code, error=item.error,
                         retry_after=item.retry_after, expires_in=item.expires_in)
        except TransitionNotAllowed:
            entry = TraceEntry(now, item.event, source, source, (), "refused")
            self._record(entry, item)
            log.info("event %s refused in state %s", item.event, source)
            return
        except Exception as exc:  # the engines never raise (crash row): a broken engine
            self._engine_failed(item, source, exc)
            return
        taken = machine.take_effects()
        effects = tuple(taken) if taken else ()
        target = machine.state_id
        if target == "restarting" != source and (
                item.event == "rollover_due" or pending_rollover):
            self.rollovers += 1
        outbox = self.outbox
        if target in ("idle", "error") and len(outbox):
            self._report(outbox.drop(f"the session went {target}"))
        entry = TraceEntry(now, item.event, source, target, effects)
        self.trace.append(entry)
        feed = self._feed  # inline _record: this is the hot path
        if feed is not None:  # a posted item without parameters goes as its token
            feed += (entry, item.token if (item.timer, item.severity, item.code,
                                           item.retry_after, item.expires_in) == _NO_PARAMS
                     else item, self.generation)
            if len(feed) >= _FEED_MAX:
                self.flush_trace()
        if self.on_trace:
            self.on_trace.emit(Traced(entry, item, self.generation))
        for effect in effects:
            try:
                self._execute(effect)
            except Exception as exc:  # one failed effect must not stop the others
                log.exception("effect %r failed", effect)
                self.monitor.report(internal_error("effect_failed", exc))
        if len(outbox) and target in ACTIVE_STATES:  # e.g. queued while a send failed
            outbox.flush(self.transport.send_event)
        if target == source:
            return  # the status is the state's: it changes only with the state
        status, previous_status = STATUS_OF[target], STATUS_OF[source]
        if status != previous_status:
            if self._waiters:
                for w in [w for w in self._waiters if status in w.statuses]:
                    w.hit = status
                    w.event.set()
                    self._waiters.remove(w)
            if self.on_status:
                self.on_status.emit(StatusChange(now, previous_status, status, target,
                                                 item.event))

    def _engine_failed(self, item: Posted, source: str, exc: Exception) -> None:
        """Last line of crash-only, for an engine that raises despite its crash row: release
        everything this runtime holds (timers, transport), report a fatal ``machine_error``;
        the machine itself is left as it is."""
        log.exception("machine engine failed on %s in %s", item.event, source)
        entry = TraceEntry(self.clock.now(), item.event, source, self.machine.state_id, (),
                           "refused", f"machine error: {exc!r}")
        self._record(entry, item)
        self.cancel_timers()
        if self._transport_open:
            self._close_transport()
        self.monitor.report(internal_error("machine_error", exc, Severity.FATAL))

    def _report(self, err: VoiceError | None) -> None:
        if err is not None:
            self.monitor.report(err)

    def _stale_reason(self, item: Posted) -> str:
        if item.timer is not None:
            current = self.timers.get(item.timer)
            if current is None or current[0] != item.token:
                return f"expiry of a cancelled {item.timer} timer"
        elif item.token != self.generation:
            return f"from closed transport #{item.token} (current #{self.generation})"
        elif not self._transport_open:
            return "transport already closed"
        return ""

    # -- effects -------------------------------------------------------------------------------
    def _execute(self, effect: Effect) -> None:
        if isinstance(effect, ArmTimer):
            self._timer_seq += 1
            token, timer = self._timer_seq, effect.timer
            old = self.timers.get(timer)
            if old is not None:
                old[1].cancel()
            handle = self.clock.call_later(
                effect.delay, lambda: self.post(Posted(timer.value, token=token, timer=timer))
            )
            self.timers[timer] = (token, handle)
        elif isinstance(effect, CancelTimer):
            entry = self.timers.pop(effect.timer, None)
            if entry is not None:
                entry[1].cancel()
        elif isinstance(effect, OpenTransport):
            self._open_transport(effect)
        elif isinstance(effect, CloseTransport):
            self._close_transport()
        elif isinstance(effect, ReportError):
            self._report_effect(effect)
        elif isinstance(effect, ConnectionUp):
            self._report(self.protocol.connection_up(self.outbox, self.transport.send_event,
                                                     replay=effect.replay))
        elif isinstance(effect, NewConversation):
            self._report(self.outbox.new_conversation())

    def _report_effect(self, effect: ReportError) -> None:
        cause = effect.error if isinstance(effect.error, BaseException) else None
        if isinstance(cause, VoiceError) and cause.code == effect.code:
            self.monitor.report(cause)
            return
        if isinstance(cause, VoiceError):
            detail, source = f"; last error: {cause}", cause.source
        elif cause is not None:  # a bug (crash row): say what raised
            detail, source = f"; {type(cause).__name__}: {cause}", ErrorSource.CLIENT
        else:
            detail, source = "", ErrorSource.TRANSPORT
        err = VoiceError(
            severity=Severity(effect.severity), code=effect.code,
            message=f"{effect.code} after {self.machine.attempts} reconnect attempts"
            f" (state {self.machine.state_id}){detail}",
            source=source,
        )
        err.__cause__ = cause
        self.monitor.report(err)

    def _open_transport(self, effect: OpenTransport) -> None:
        assert self._tg is not None, "the session's task group is not running"
        self.generation += 1
        self.open_reason = effect.reason
        self._transport_open = True
        scope = anyio.CancelScope()
        self._transport_scope = scope
        self._tg.start_soon(self._open, self.generation, scope, self._closed,
                            name=f"fsm_voice.open#{self.generation}")

    async def _open(self, generation: int, scope: anyio.CancelScope,
                    closed: anyio.Event | None) -> None:
        with scope:
            try:
                if closed is not None:
                    await closed.wait()  # the previous connection is fully closed first
                await self.transport.open(_Sink(self, generation))
            except anyio.get_cancelled_exc_class():
                raise
            except Exception as exc:  # classified, never lost
                err = classify_exception(exc)
                log.warning("opening transport #%d failed: %s", generation, err)
                self.post(Posted("signaling_failed", severity=machine_severity(err),
                                 code=err.code, error=err, retry_after=err.retry_after,
                                 token=generation))

    def _close_transport(self) -> None:
        """Stop the open task, take back unacknowledged events, and close in a task: dispatch
        goes on at once (a wedged close cannot hold ``stop``)."""
        assert self._tg is not None, "the session's task group is not running"
        if self._transport_scope is not None:
            self._transport_scope.cancel()
            self._transport_scope = None
        self._transport_open = False
        harvest = getattr(self.transport, "unacknowledged_events", None)
        self._report(self.outbox.connection_closed(
            harvest if callable(harvest) else None, going=self.machine.state_id))
        previous, done = self._closed, anyio.Event()
        self._closed = done
        self._tg.start_soon(self._close, previous, done,
                            name=f"fsm_voice.close#{self.generation}")

    async def _close(self, previous: anyio.Event | None, done: anyio.Event) -> None:
        with anyio.CancelScope(shield=True):
            try:
                if previous is not None:
                    await previous.wait()
                with anyio.move_on_after(self.close_timeout) as bound:
                    await self.transport.close()
                if bound.cancelled_caught:
                    log.warning("closing the transport took more than %.1f s; abandoned",
                                self.close_timeout)
            except Exception as exc:
                log.warning("closing transport failed (continuing): %r", exc)
            finally:
                done.set()

    # -- the server ---------------------------------------------------------------------------
    def server_event(self, event: Mapping[str, Any], generation: int) -> None:
        """One event from the server on transport ``generation``: subscribers, outbox, and the
        machine event the protocol maps it to (:mod:`fsm_voice.protocols`: every ``error``
        becomes ``server_error``, ignorable and ``session_expired`` too; ``expires_at`` becomes
        ``session_info``; a Live ``session.closed`` becomes ``session_closed``: the table
        decides)."""
        if self.on_server_event:
            self.on_server_event.emit(event)
        etype = event.get("type")
        if not isinstance(etype, str):
            return
        if generation == self.generation and self._transport_open:
            for observed in self.protocol.conversation_events(event):
                self.outbox.observe(observed)  # items and confirmations: the current call's only
        mapped = self.protocol.server_event(event, self._wall_clock())
        if mapped is not None:
            self.post(Posted(mapped.event, severity=mapped.severity, code=mapped.code,
                             error=mapped.error, retry_after=mapped.retry_after,
                             expires_in=mapped.expires_in, token=generation))
