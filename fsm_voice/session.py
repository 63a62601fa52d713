"""The runtime: :class:`VoiceSession` drives one lifecycle machine with real (or virtual) I/O.

One anyio task group per session owns every task. One queue feeds the machine one event at a time
(run to completion): the dispatcher sends the event, then executes the effects in order before it
takes the next one. Timers are clock callbacks (``Clock.call_later``) owned by the session and
cancelled by ``CancelTimer`` or when the session exits (a task per timer cost ~70 us to arm; a
handle costs ~1 us); transports are opened in a task that ``CloseTransport`` cancels; every
transport and timer carries a generation token, so a late signal from a closed transport or an
expiry of a cancelled timer is recorded as stale, never fed to the machine.
"""

from __future__ import annotations

import collections
import inspect
import json
import logging
import random
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Literal

import anyio
import attrs
from anyio.abc import TaskGroup
from statemachine.exceptions import TransitionNotAllowed

from fsm_voice.clock import Clock, RealClock, TimerHandle
from fsm_voice.effects import (
    ArmTimer,
    CancelTimer,
    CloseTransport,
    Effect,
    OpenReason,
    OpenTransport,
    ReportError,
    Timer,
)
from fsm_voice.errors import (
    ErrorSource,
    FsmVoiceError,
    Severity,
    VoiceError,
    classify_exception,
    classify_server_event,
)
from fsm_voice.fastpath import FastLifecycle
from fsm_voice.machine import (
    ACTIVE_STATES,
    CONNECTING_STATES,
    EVENTS,
    SEVERITIES,
    STATUSES,
    LifecycleMachine,
)
from fsm_voice.policy import QualityAlert, SessionPolicy
from fsm_voice.ports import ConnectionMetrics, Transport, TransportSignal

log = logging.getLogger("fsm_voice.session")

#: Server event types that drive the machine.
SERVER_EVENT_MAP: dict[str, str] = {
    "input_audio_buffer.speech_started": "speech_started",
    "input_audio_buffer.speech_stopped": "speech_stopped",
    "output_audio_buffer.started": "audio_started",
    "output_audio_buffer.stopped": "audio_stopped",
    "output_audio_buffer.cleared": "audio_stopped",
}

Outcome = Literal["taken", "refused", "stale", "observed"]
"""``taken``/``refused`` by the machine; ``stale`` dropped (closed transport, cancelled timer);
``observed``: a metrics sample or quality alert recorded for the record (no machine event)."""


@attrs.frozen
class TraceEntry:
    """One event as the runtime handled it."""

    time: float
    event: str
    source: str
    target: str
    effects: tuple[Effect, ...]
    outcome: Outcome = "taken"
    detail: str = ""


@attrs.frozen
class StatusChange:
    time: float
    previous: str
    status: str
    state: str
    event: str


class _StatusWaiter:
    __slots__ = ("event", "hit", "statuses")

    def __init__(self, statuses: frozenset[str]) -> None:
        self.statuses = statuses
        self.event = anyio.Event()
        self.hit: str | None = None


class QueueOverflowError(FsmVoiceError, RuntimeError):
    """More application events were queued during a reconnect than the policy allows."""


@attrs.frozen
class _Posted:
    event: str
    severity: str | None = None
    code: str = ""
    error: VoiceError | None = None
    token: int | None = None
    """Generation of the transport or timer that posted it (None for the application)."""
    timer: Timer | None = None
    barrier: anyio.Event | None = None
    """Not an event: set when the dispatcher reaches it (see ``_drain``)."""


def _sync_callback(cb: Any) -> Any:
    if not callable(cb):
        raise TypeError(f"a subscriber must be callable, got {type(cb).__name__}")
    if inspect.iscoroutinefunction(cb) or inspect.iscoroutinefunction(
        getattr(cb, "__call__", None)  # noqa: B004 - async callable objects too
    ):
        raise TypeError(
            f"{getattr(cb, '__name__', cb)!r} is async; subscribers are called synchronously "
            "from the dispatcher. Pass a plain function (e.g. one that puts the value on an "
            "anyio memory stream your own task reads)."
        )
    return cb


def _internal_error(code: str, exc: BaseException) -> VoiceError:
    err = VoiceError(severity=Severity.RECOVERABLE, code=code,
                     message=f"{type(exc).__name__}: {exc}", source=ErrorSource.CLIENT)
    err.__cause__ = exc
    return err


class _Sink:
    """What one opened transport reports through; knows its generation."""

    def __init__(self, session: VoiceSession, generation: int) -> None:
        self._session = session
        self._generation = generation

    def signal(self, signal: TransportSignal, detail: str = "") -> None:
        self._session._post(_Posted(signal.value, code=detail, token=self._generation))

    def server_event(self, event: Mapping[str, Any]) -> None:
        self._session._on_server_event(event, self._generation)


class VoiceSession:
    """One voice session: ``async with VoiceSession(transport) as s: await s.start() ...``.

    ``engine="fast"`` (default) uses the compiled table (:mod:`fsm_voice.fastpath`, proven equal to
    python-statemachine by a differential test); ``engine="statemachine"`` runs the
    python-statemachine class itself.
    """

    def __init__(
        self,
        transport: Transport,
        *,
        policy: SessionPolicy | None = None,
        clock: Clock | None = None,
        engine: Literal["fast", "statemachine"] = "fast",
        rng: random.Random | None = None,
        machine: type[LifecycleMachine] = LifecycleMachine,
        trace_limit: int = 10_000,
        session_config: Mapping[str, Any] | None = None,
        replay_history: bool = True,
        history_limit: int = 200,
        rollover_margin: float = 30.0,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
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
                self.policy.retry, self.policy.ice, rng, machine=machine
            )
        elif engine == "statemachine":
            self.machine = machine(self.policy.retry, self.policy.ice, rng)
        else:
            raise ValueError(f"engine must be 'fast' or 'statemachine', got {engine!r}")
        self.trace: collections.deque[TraceEntry] = collections.deque(maxlen=trace_limit)
        self.metrics_history: collections.deque[ConnectionMetrics] = collections.deque(maxlen=720)
        self.errors: list[VoiceError] = []
        self.alerts: list[QualityAlert] = []
        self._status_cbs: list[Callable[[StatusChange], Any]] = []
        self._error_cbs: list[Callable[[VoiceError], Any]] = []
        self._event_cbs: list[Callable[[Mapping[str, Any]], Any]] = []
        self._metrics_cbs: list[Callable[[ConnectionMetrics], Any]] = []
        self._alert_cbs: list[Callable[[QualityAlert], Any]] = []
        self._queue: collections.deque[_Posted] = collections.deque()
        self._wakeup = anyio.Event()
        self._tg: TaskGroup | None = None
        self._dispatcher_done = False
        self._generation = 0
        self._transport_scope: anyio.CancelScope | None = None
        self._transport_open = False
        self._timers: dict[Timer, tuple[int, TimerHandle]] = {}
        self._timer_seq = 0
        self._status_waiters: list[_StatusWaiter] = []
        self._outbox: collections.deque[Mapping[str, Any]] = collections.deque()
        self.session_config = dict(session_config) if session_config is not None else None
        """Sent as ``session.update`` each time a connection comes up (re-applied on restart)."""
        self.replay_history = replay_history
        self.history: collections.OrderedDict[str, dict[str, Any]] = collections.OrderedDict()
        """Conversation items that can be replayed (text and transcripts), by item id."""
        self._history_limit = history_limit
        self._open_reason: OpenReason = OpenReason.START
        self.closers: list[Callable[[], Awaitable[Any]]] = []
        """Async callables run (in order, each guarded) when the session context exits."""
        self.replayed_items = 0
        self.rollover_margin = rollover_margin
        """Roll a session over this many seconds before the server's ``expires_at``."""
        self._wall_clock = wall_clock
        self._rollover: TimerHandle | None = None
        self.rollovers = 0
        self.rate_limits: list[Any] = []
        """The last ``rate_limits.updated`` the server sent (OpenAI Realtime shape)."""
        self.sent_events = 0
        self.delivered_events = 0
        self.dropped_events = 0
        """Queued client events that could not be sent (reported through ``on_error``)."""
        self.resent_events = 0
        """Client events re-queued because the closed connection had not had them acknowledged
        (see ``_requeue_unacknowledged``); ``delivered_events`` counts each once."""
        self._delivered_at_up: int | None = None
        """``delivered_events`` when the current connection came up (None: not up)."""

    # -- public API ---------------------------------------------------------------------------
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
        return frozenset(self._timers)

    # Subscriptions: plain (non-async) callables, called in order from the dispatcher; an
    # exception in one is logged and does not affect the session or the other subscribers.
    def on_status(self, cb: Callable[[StatusChange], object]) -> None:
        self._status_cbs.append(_sync_callback(cb))

    def on_error(self, cb: Callable[[VoiceError], object]) -> None:
        self._error_cbs.append(_sync_callback(cb))

    def on_server_event(self, cb: Callable[[Mapping[str, Any]], object]) -> None:
        self._event_cbs.append(_sync_callback(cb))

    def on_metrics(self, cb: Callable[[ConnectionMetrics], object]) -> None:
        self._metrics_cbs.append(_sync_callback(cb))

    def on_alert(self, cb: Callable[[QualityAlert], object]) -> None:
        self._alert_cbs.append(_sync_callback(cb))

    async def __aenter__(self) -> VoiceSession:
        self._dispatcher_done = False
        self._tg = anyio.create_task_group()
        await self._tg.__aenter__()
        self._tg.start_soon(self._dispatch_loop, name="fsm_voice.dispatch")
        self._tg.start_soon(self._monitor_loop, name="fsm_voice.monitor")
        return self

    async def __aexit__(self, *exc: object) -> bool | None:
        assert self._tg is not None
        try:
            with anyio.CancelScope(shield=True):
                await self.stop()
        finally:
            for _token, handle in self._timers.values():
                handle.cancel()
            self._timers.clear()
            if self._rollover is not None:
                self._rollover.cancel()
            with anyio.CancelScope(shield=True):
                for closer in self.closers:
                    try:
                        await closer()
                    except Exception as exc:
                        log.warning("closer %r failed (continuing): %r", closer, exc)
            self._tg.cancel_scope.cancel()
            result = await self._tg.__aexit__(*exc)
            self._tg = None
        return result

    async def start(self) -> None:
        """Ask for a connection (returns at once; watch :attr:`status` or :meth:`wait_for`)."""
        self._require_running()
        self._post(_Posted("start"))
        await self._drain()

    async def stop(self) -> None:
        """Close everything and return once the session is ``idle`` (no timer, no transport)."""
        if self._tg is None:
            return
        self._post(_Posted("stop"))
        await self._drain()

    async def wait_for(self, *statuses: str, timeout: float | None = None) -> str:
        """Wait until the status is one of ``statuses``, or passes through one of them (raises
        TimeoutError after ``timeout``); returns the status reached."""
        unknown = [x for x in statuses if x not in STATUSES]
        if unknown or not statuses:
            raise ValueError(f"wait_for needs statuses among {', '.join(STATUSES)}; "
                             f"got {', '.join(map(repr, unknown)) or 'none'}")
        if self.status in statuses:
            return self.status
        waiter = _StatusWaiter(frozenset(statuses))
        self._status_waiters.append(waiter)
        try:
            with anyio.fail_after(timeout):
                await waiter.event.wait()
        finally:
            if waiter in self._status_waiters:
                self._status_waiters.remove(waiter)
        assert waiter.hit is not None
        return waiter.hit

    def send_event(self, event: Mapping[str, Any]) -> None:
        """Send a client event; while reconnecting it is queued (bounded) and sent in order later.

        Raises :class:`QueueOverflowError` when the queue is full, RuntimeError when idle/error.
        """
        if not isinstance(event, Mapping) or not isinstance(event.get("type"), str):
            raise TypeError("a client event is a mapping with a string 'type', e.g. "
                            "{'type': 'response.create'}")
        if self.status in ("idle", "error"):
            raise RuntimeError(f"cannot send {event['type']!r}: session is {self.status}; "
                               "call start() first")
        try:
            json.dumps(event, allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise TypeError(f"client event {event['type']!r} is not JSON-serialisable: {exc}"
                            ) from exc
        self.sent_events += 1
        if self.machine.state_id in ACTIVE_STATES and not self._outbox:
            try:
                self._deliver(event)
                return
            except Exception as exc:  # the channel went away under us: queue, never lose it
                log.info("send failed (%r); queued until the session is up again", exc)
        if len(self._outbox) >= self.policy.event_queue_limit:
            self.sent_events -= 1
            raise QueueOverflowError(
                f"{len(self._outbox)} events already queued while {self.status}; the limit is "
                f"SessionPolicy.event_queue_limit={self.policy.event_queue_limit}"
            )
        self._outbox.append(event)

    def post(self, event: str, *, severity: str | None = None, code: str = "",
             error: VoiceError | None = None) -> None:
        """Feed a raw machine event (for embedding apps and tests)."""
        if event not in EVENTS:
            raise ValueError(f"unknown machine event {event!r}; known: {', '.join(EVENTS)}")
        if severity is not None and severity not in SEVERITIES:
            raise ValueError(f"severity must be one of {', '.join(SEVERITIES)}, got {severity!r}")
        self._post(_Posted(event, severity=severity, code=code, error=error))

    # -- internals ------------------------------------------------------------------------------
    def _require_running(self) -> None:
        if self._tg is None:
            raise RuntimeError("use the session inside 'async with VoiceSession(...) as s:'")

    def _post(self, item: _Posted) -> None:
        self._queue.append(item)
        self._wakeup.set()

    async def _drain(self) -> None:
        """Wait until everything queued so far is handled. If the dispatcher is gone (cancelled
        from outside, or it failed), handle the queue here, in this task: ``stop`` must always
        complete its cleanup."""
        if not self._dispatcher_done:
            done = anyio.Event()
            self._post(_Posted("", barrier=done))
            await done.wait()  # set by the dispatcher, or by its ``finally`` if it ends first
        if self._dispatcher_done:
            while self._queue:
                item = self._queue.popleft()
                if item.barrier is not None:
                    item.barrier.set()
                else:
                    await self._dispatch(item)

    async def _dispatch_loop(self) -> None:
        queue = self._queue
        try:
            while True:
                if not queue:
                    self._wakeup = anyio.Event()
                    await self._wakeup.wait()
                    continue
                item = queue.popleft()
                if item.barrier is not None:
                    item.barrier.set()
                    continue
                await self._dispatch(item)
        finally:
            self._dispatcher_done = True
            for item in queue:  # wake every waiter: _drain takes over
                if item.barrier is not None:
                    item.barrier.set()

    async def _dispatch(self, item: _Posted) -> None:
        machine = self.machine
        now = self.clock.now()
        source = machine.state_id
        if item.token is not None:
            stale = self._stale_reason(item)
            if stale:
                self.trace.append(TraceEntry(now, item.event, source, source, (), "stale", stale))
                return
            if item.timer is not None:
                self._timers.pop(item.timer, None)
        previous_status = machine.status
        try:
            machine.send(item.event, severity=item.severity, code=item.code, error=item.error)
        except TransitionNotAllowed:
            self.trace.append(TraceEntry(now, item.event, source, source, (), "refused"))
            log.info("event %s refused in state %s", item.event, source)
            return
        except Exception as exc:  # a bug in a machine callback: report it, keep dispatching
            log.exception("machine failed on %s in %s", item.event, source)
            self.trace.append(TraceEntry(now, item.event, source, machine.state_id, (),
                                         "refused", f"machine error: {exc!r}"))
            self._report(_internal_error("machine_error", exc))
            return
        taken = machine.take_effects()
        effects = tuple(taken) if taken else ()
        target = machine.state_id
        if item.event == "start":
            self.history.clear()  # a new session starts a new conversation
        elif target in ("idle", "error") and self._outbox:
            self._drop_outbox(f"the session went {target}")
        self.trace.append(TraceEntry(now, item.event, source, target, effects))
        for effect in effects:
            try:
                if isinstance(effect, CloseTransport):
                    await self._close_transport()
                else:
                    self._execute(effect)
            except Exception as exc:  # one failed effect must not stop the others
                log.exception("effect %r failed", effect)
                self._report(_internal_error("effect_failed", exc))
        if target in ACTIVE_STATES:
            if source in CONNECTING_STATES:
                self._on_session_up()
            if self._outbox:
                self._flush_outbox()
        status = machine.status
        if status != previous_status:
            if self._status_waiters:
                for w in [w for w in self._status_waiters if status in w.statuses]:
                    w.hit = status
                    w.event.set()
                    self._status_waiters.remove(w)
            if self._status_cbs:
                change = StatusChange(now, previous_status, status, target, item.event)
                for cb in self._status_cbs:
                    self._call(cb, change)

    def _stale_reason(self, item: _Posted) -> str:
        if item.timer is not None:
            current = self._timers.get(item.timer)
            if current is None or current[0] != item.token:
                return f"expiry of a cancelled {item.timer} timer"
        elif item.token is not None and item.token != self._generation:
            return f"from closed transport #{item.token} (current #{self._generation})"
        elif item.token is not None and not self._transport_open:
            return "transport already closed"
        return ""

    def _execute(self, effect: Effect) -> None:
        assert self._tg is not None
        if isinstance(effect, ArmTimer):
            self._timer_seq += 1
            token, timer = self._timer_seq, effect.timer
            handle = self.clock.call_later(
                effect.delay, lambda: self._post(_Posted(timer.value, token=token, timer=timer))
            )
            self._timers[timer] = (token, handle)
        elif isinstance(effect, CancelTimer):
            entry = self._timers.pop(effect.timer, None)
            if entry is not None:
                entry[1].cancel()
        elif isinstance(effect, OpenTransport):
            self._open_reason = effect.reason
            self._generation += 1
            self._transport_open = True
            scope = anyio.CancelScope()
            self._transport_scope = scope
            self._tg.start_soon(self._open_transport, self._generation, scope)
        elif isinstance(effect, ReportError):
            cause = effect.error if isinstance(effect.error, VoiceError) else None
            if cause is not None and cause.code == effect.code:
                self._report(cause)
                return
            detail = f"; last error: {cause}" if cause is not None else ""
            err = VoiceError(
                severity=Severity(effect.severity), code=effect.code,
                message=f"{effect.code} after {self.machine.attempts} reconnect attempts"
                f" (state {self.machine.state_id}){detail}",
                source=cause.source if cause is not None else ErrorSource.TRANSPORT,
            )
            err.__cause__ = cause
            self._report(err)

    async def _open_transport(self, generation: int, scope: anyio.CancelScope) -> None:
        with scope:
            try:
                await self.transport.open(_Sink(self, generation))
            except anyio.get_cancelled_exc_class():
                raise
            except Exception as exc:  # classified, never lost
                err = classify_exception(exc)
                log.warning("opening transport #%d failed: %s", generation, err)
                self._post(_Posted("signaling_failed", severity=str(err.severity), code=err.code,
                                   error=err, token=generation))

    async def _close_transport(self) -> None:
        if self._rollover is not None:
            self._rollover.cancel()
            self._rollover = None
        if self._transport_scope is not None:
            self._transport_scope.cancel()
            self._transport_scope = None
        self._transport_open = False
        self._requeue_unacknowledged()
        with anyio.CancelScope(shield=True):
            try:
                await self.transport.close()
            except Exception as exc:
                log.warning("closing transport failed (continuing): %r", exc)

    def _on_server_event(self, event: Mapping[str, Any], generation: int) -> None:
        for cb in self._event_cbs:
            self._call(cb, event)
        etype = event.get("type")
        if etype in ("session.created", "session.updated"):
            self._schedule_rollover(event.get("session"), generation)
        if etype == "rate_limits.updated" and isinstance(event.get("rate_limits"), list):
            self.rate_limits = list(event["rate_limits"])
        if etype in ("conversation.item.done", "conversation.item.created",
                     "conversation.item.added", "response.output_item.done"):
            self._remember_item(event.get("item"))
        mapped = SERVER_EVENT_MAP.get(etype) if isinstance(etype, str) else None
        if mapped:
            self._post(_Posted(mapped, token=generation))
        elif etype == "error":
            err = classify_server_event(event)
            if err.ignorable:
                log.info("ignorable server error %s: %s", err.code, err.message)
                self.trace.append(TraceEntry(self.clock.now(), "server_error", self.state,
                                             self.state, (), "refused", f"ignorable {err.code}"))
            elif err.code == "session_expired":
                self._post(_Posted("session_expired", code=err.code, error=err, token=generation))
            else:
                self._post(_Posted("server_error", severity=str(err.severity), code=err.code,
                                   error=err, token=generation))

    def _requeue_unacknowledged(self) -> None:
        """Before a connection is closed: the application events it never had acknowledged
        (optional transport capability ``unacknowledged_events``) go back to the FRONT of the
        outbox, in order, to be delivered again on the next connection (at-least-once); when the
        session is going to ``error`` they are reported as dropped instead (on ``stop`` they are
        left to SCTP). Only the last
        ``delivered_events - _delivered_at_up`` messages can be application events (the runtime's
        own ``session.update``/replayed items are sent first on each connection, and are sent
        again by ``_on_session_up`` anyway). Never raises."""
        up_at, self._delivered_at_up = self._delivered_at_up, None
        if up_at is None:
            return
        app_events = self.delivered_events - up_at
        harvest = getattr(self.transport, "unacknowledged_events", None)
        if app_events <= 0 or not callable(harvest):
            return
        try:
            unacked = list(harvest())[-app_events:]
        except Exception as exc:
            log.warning("reading the unacknowledged client events failed: %r", exc)
            return
        target = self.machine.state_id
        if not unacked or target == "idle":
            return  # on stop (the app's own request) in-flight events are SCTP's best effort
        n = len(unacked)
        self.delivered_events -= n
        if target == "error":
            self.dropped_events += n
            self._report(VoiceError(
                severity=Severity.RECOVERABLE, code="client_events_dropped",
                message=f"{n} sent client event(s) were never acknowledged by the peer: "
                f"the session went {target}", source=ErrorSource.CLIENT))
            return
        log.info("re-queuing %d client event(s) the closed connection never acknowledged", n)
        self.resent_events += n
        self._outbox.extendleft(reversed(unacked))

    def _on_session_up(self) -> None:
        """A new connection is up: re-apply the configuration, then (after a restart or
        reconnect) replay the conversation, before any queued application event."""
        self._delivered_at_up = self.delivered_events
        try:
            if self.session_config is not None:
                self.transport.send_event({"type": "session.update",
                                           "session": self.session_config})
            if self._open_reason is not OpenReason.START and self.replay_history:
                for item in list(self.history.values()):
                    self.transport.send_event({"type": "conversation.item.create",
                                               "item": item})
                    self.replayed_items += 1
        except Exception as exc:
            log.warning("re-establishing the session failed: %r", exc)

    def _remember_item(self, item: Any) -> None:
        """Keep a replayable text copy of a conversation item (assistant audio cannot be replayed,
        its transcript can)."""
        if not isinstance(item, Mapping) or item.get("type") != "message":
            return
        role = item.get("role")
        if role not in ("user", "assistant", "system"):
            return
        texts = []
        for part in item.get("content") or ():
            if isinstance(part, Mapping):
                text = part.get("text") or part.get("transcript")
                if isinstance(text, str) and text:
                    texts.append(text)
        if not texts:
            return
        kind = "output_text" if role == "assistant" else "input_text"
        key = str(item.get("id") or f"local_{len(self.history)}")
        self.history[key] = {"type": "message", "role": role,
                             "content": [{"type": kind, "text": t} for t in texts]}
        while len(self.history) > self._history_limit:
            self.history.popitem(last=False)

    def _drop_outbox(self, why: str) -> None:
        """Queued client events that can no longer be sent are reported, never lost silently."""
        n = len(self._outbox)
        self._outbox.clear()
        self.dropped_events += n
        self._report(VoiceError(
            severity=Severity.RECOVERABLE, code="client_events_dropped",
            message=f"{n} queued client event(s) were not sent: {why}",
            source=ErrorSource.CLIENT))

    def _schedule_rollover(self, session: Any, generation: int) -> None:
        """Before the server's time limit, restart onto a new session (history replayed), at a
        moment when nobody speaks if one comes before the limit."""
        expires_at = session.get("expires_at") if isinstance(session, Mapping) else None
        if isinstance(expires_at, bool) or not isinstance(expires_at, int | float):
            return
        if self._rollover is not None:
            self._rollover.cancel()
            self._rollover = None
        deadline = self.clock.now() + (float(expires_at) - self._wall_clock())
        quiet_from = deadline - self.rollover_margin

        def attempt() -> None:
            self._rollover = None
            if generation != self._generation or not self._transport_open:
                return  # that connection is gone already
            if self.machine.state_id == "active" or self.clock.now() >= deadline - 2.0:
                self.rollovers += 1
                self._post(_Posted("session_expired", code="rollover", token=generation))
            else:  # someone is speaking: wait for a pause, but not past the limit
                self._rollover = self.clock.call_later(0.5, attempt)

        # Inside the margin already (a late session.updated, a short session): try at once.
        self._rollover = self.clock.call_later(max(0.0, quiet_from - self.clock.now()), attempt)

    def _deliver(self, event: Mapping[str, Any]) -> None:
        self.transport.send_event(event)
        self.delivered_events += 1

    def _flush_outbox(self) -> None:
        while self._outbox:
            try:
                self._deliver(self._outbox[0])
            except Exception as exc:  # channel not really open yet: keep the rest queued
                log.warning("delivering queued event failed, will retry: %r", exc)
                return
            self._outbox.popleft()

    def _report(self, err: VoiceError) -> None:
        self.errors.append(err)
        log.warning("session error: %s", err)
        for cb in self._error_cbs:
            self._call(cb, err)

    def _call(self, cb: Callable[[Any], Any], arg: Any) -> None:
        try:
            cb(arg)
        except Exception:
            log.exception("subscriber %r raised; ignored", cb)

    async def _monitor_loop(self) -> None:
        """Poll quality every ``metrics_interval`` while a session is up; alert on thresholds."""
        interval = self.policy.monitor.metrics_interval
        health_every = max(1, round(self.policy.monitor.health_interval / interval))
        n = 0
        while True:
            await self.clock.sleep(interval)
            if self.machine.state_id not in ACTIVE_STATES:
                continue
            n += 1
            try:
                m = await self.transport.metrics()
            except Exception as exc:
                log.warning("metrics poll failed: %r", exc)
                continue
            if m is None:
                continue
            self.metrics_history.append(m)
            state = self.machine.state_id
            self.trace.append(TraceEntry(
                self.clock.now(), "metrics", state, state, (), "observed",
                f"rtt_ms={m.latency_ms} jitter_ms={m.jitter_ms} lost={m.packets_lost}"))
            for cb in self._metrics_cbs:
                self._call(cb, m)
            for alert in self.policy.quality.violations(m):
                self.alerts.append(alert)
                self.trace.append(TraceEntry(
                    self.clock.now(), "quality_alert", state, state, (), "observed",
                    f"{alert.kind}={alert.value:.1f} > {alert.threshold:.1f}"))
                log.warning(
                    "quality_alert kind=%s value=%.1f threshold=%.1f status=%s", alert.kind,
                    alert.value, alert.threshold, self.status,
                    extra={"fsm_voice": {"event": "quality_alert", "kind": alert.kind,
                                         "value": alert.value, "threshold": alert.threshold,
                                         "status": self.status}})
                for acb in self._alert_cbs:
                    self._call(acb, alert)
            if n % health_every == 0:
                log.info(
                    "health status=%s rtt_ms=%s jitter_ms=%s packets_lost=%s loss=%.3f",
                    self.status, m.latency_ms, m.jitter_ms, m.packets_lost, m.loss_fraction,
                    extra={"fsm_voice": {"event": "health", "status": self.status,
                                         "rtt_ms": m.latency_ms, "jitter_ms": m.jitter_ms,
                                         "packets_lost": m.packets_lost,
                                         "loss_fraction": m.loss_fraction}})
