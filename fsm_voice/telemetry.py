"""What the metrics, OpenTelemetry and dashboard exporters watch: one :class:`Hub` per process.

``hub.track(session)`` attaches a :class:`SessionTap` to a :class:`~fsm_voice.session.VoiceSession`
(it is dropped again when the session's ``async with`` exits); the tap turns what the session
reports into per-transition counts (:attr:`SessionTap.counts`, read by exporters when they are
scraped) and a few signals every :class:`Sink` receives: status changes, connection attempts,
errors, quality samples and alerts, and derived durations:

* ``connect``: ``start`` -> first ``active`` status;
* ``detection``: the last sign of a healthy path (the latest quality sample while active, or the
  moment it came up) -> the status leaving ``active`` (not by ``stop``);
* ``outage``: the status leaving ``active`` -> ``active`` again;
* ``recovery``: the first reconnect/restart attempt of the outage -> ``active`` again (equal to the
  outage when ICE recovered by itself).

Durations are in seconds of the session's clock (virtual in tests). Sinks are called from the
session's dispatcher: they must be quick and never block. No sink is called per trace entry:
the per-entry work is the tap's count (the hot path), taken in C over the batches of entries the
dispatcher hands over at the end of each burst of events (``Dispatcher.add_trace_reader``); a tap
takes the entries still pending before it handles an error, sample or alert and before its
counts or marker are read, so nothing is seen out of order or missed.

The events reach the tap through :func:`_attach`, the one place that knows how a session reports
them (the trace batches and the error/metrics/alert subscriptions).
"""

from __future__ import annotations

import collections
import itertools
import weakref
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Protocol

from fsm_voice.dispatcher import StatusChange, TraceBatch, TraceEntry
from fsm_voice.effects import CloseTransport, OpenReason, OpenTransport
from fsm_voice.errors import VoiceError
from fsm_voice.machine import STATUS_OF
from fsm_voice.policy import QualityAlert
from fsm_voice.ports import ConnectionMetrics

if TYPE_CHECKING:
    from fsm_voice.session import VoiceSession

__all__ = ["DURATIONS", "BaseSink", "BoundedLabel", "Hub", "SessionTap", "Sink", "default_hub"]

DURATIONS = ("connect", "detection", "outage", "recovery")
UP_STATUSES = frozenset({"active", "listening", "speaking"})
_FOLLOWED = frozenset(
    (a, b) for a in STATUS_OF for b in STATUS_OF
    if (a != b or STATUS_OF[a] not in UP_STATUSES)
    and not (STATUS_OF[a] in UP_STATUSES and STATUS_OF[b] in UP_STATUSES))
"""(source, target) of the entries a tap follows beyond counting them: all but those between
two up statuses (turns, ICE grace and back), which cannot change a status, start or end an
attempt (no row opens or closes the transport there: ``tests/test_metrics.py`` checks) or
matter to a duration."""
RECENT = 50
"""Errors kept per session for the dashboard."""


class Sink(Protocol):
    """Receives a hub's signals. Every method is called synchronously from a dispatcher."""

    def added(self, tap: SessionTap) -> None: ...
    def removed(self, tap: SessionTap) -> None: ...
    def status(self, tap: SessionTap, change: StatusChange) -> None: ...
    def attempt(self, tap: SessionTap, effect: OpenTransport, cause: str) -> None: ...
    def attempt_end(self, tap: SessionTap, ok: bool, detail: str) -> None: ...
    def duration(self, tap: SessionTap, kind: str, seconds: float) -> None: ...
    def error(self, tap: SessionTap, err: VoiceError) -> None: ...
    def sample(self, tap: SessionTap, m: ConnectionMetrics) -> None: ...
    def alert(self, tap: SessionTap, alert: QualityAlert) -> None: ...


class BaseSink:
    """A :class:`Sink` that ignores everything (subclass and override what you need)."""

    def added(self, tap: SessionTap) -> None:
        pass

    def removed(self, tap: SessionTap) -> None:
        pass

    def status(self, tap: SessionTap, change: StatusChange) -> None:
        pass

    def attempt(self, tap: SessionTap, effect: OpenTransport, cause: str) -> None:
        pass

    def attempt_end(self, tap: SessionTap, ok: bool, detail: str) -> None:
        pass

    def duration(self, tap: SessionTap, kind: str, seconds: float) -> None:
        pass

    def error(self, tap: SessionTap, err: VoiceError) -> None:
        pass

    def sample(self, tap: SessionTap, m: ConnectionMetrics) -> None:
        pass

    def alert(self, tap: SessionTap, alert: QualityAlert) -> None:
        pass


def _attach(session: VoiceSession, tap: SessionTap) -> Callable[[], None]:
    """Subscribe ``tap`` to ``session``: its trace, in batches (``Dispatcher.add_trace_reader``;
    status changes are derived from it) and the error, metrics and alert subscriptions.
    Returns the function that detaches it (subscriptions cannot be removed: a detached tap
    ignores them)."""
    session.dispatcher.add_trace_reader(tap._batch)
    session.on_error(tap._error)
    session.on_metrics(tap._sample)
    session.on_alert(tap._alert)

    def detach() -> None:
        tap.detached = True
    return detach


class SessionTap:
    """One tracked session: its derived timings and the recent record the dashboard shows."""

    _ids = itertools.count(1)

    def __init__(self, hub: Hub, session: VoiceSession, name: str | None) -> None:
        self.hub = hub
        self.session = session
        self.id = next(self._ids)
        self.name = name or f"session-{self.id}"
        self.detached = False
        self.seq = 0
        """Trace entries seen."""
        self.counts: collections.Counter[tuple[str, str, str, str]] = collections.Counter()
        """Trace entries by (event, source, target, outcome), counted from tracking on (up to
        the last batch the dispatcher handed over: :meth:`marker` and the exporters read
        after ``flush_trace``)."""
        self.recent_errors: collections.deque[tuple[float, VoiceError]] = collections.deque(
            maxlen=RECENT)
        self.samples: collections.deque[ConnectionMetrics] = collections.deque(maxlen=60)
        self.t0 = session.clock.now()
        """The session clock's time when tracking began (the dashboard's zero)."""
        self.version = 0
        """Bumped on status changes, attempts, errors, samples and alerts (see :meth:`marker`)."""
        self._started_at: float | None = None
        self._healthy_at: float | None = None
        self._down_at: float | None = None
        self._recovering_at: float | None = None
        self._attempt_open = False
        self._cause = ""
        self._sinks = hub.sinks
        self.detach = _attach(session, self)

    @property
    def now(self) -> float:
        return self.session.clock.now()

    # -- from the session ---------------------------------------------------------------------
    def _batch(self, batch: TraceBatch) -> None:
        """The hot path, the session's trace entries as the dispatcher hands them over: a
        count per (event, source, target, outcome), taken in C (no Python code per entry);
        the rest only for the entries that may matter to a status, an attempt or a duration
        (:data:`_FOLLOWED`)."""
        if self.detached:
            return
        entries = batch[0::3]
        self.seq += len(entries)
        _times, events, sources, targets, _effects, outcomes, _details = zip(*entries,
                                                                             strict=True)
        self.counts.update(zip(events, sources, targets, outcomes, strict=True))
        for entry in itertools.compress(entries, map(_FOLLOWED.__contains__,
                                                     zip(sources, targets, strict=True))):
            self._slow(entry)

    def _sync(self) -> None:
        """Take the entries the dispatcher has not handed over yet (before anything that must
        come after them, or is read from outside the dispatcher)."""
        if not self.detached:
            self.session.dispatcher.flush_trace()

    def _slow(self, entry: TraceEntry) -> None:
        if entry.outcome != "taken":
            return
        self.version += 1
        source, target = entry.source, entry.target
        previous, status = STATUS_OF[source], STATUS_OF[target]
        if source != target:
            self._moved(entry, previous, status)
        if entry.effects:
            self._effects(entry)
        if previous != status:
            self._status(entry, previous, status)

    def marker(self) -> int:
        """Grows whenever anything the dashboard shows may have changed."""
        self._sync()
        return self.version + self.seq

    def recent(self, n: int) -> list[TraceEntry]:
        """The last ``n`` transitions taken (from the session's own bounded trace)."""
        out: list[TraceEntry] = []
        for e in reversed(self.session.dispatcher.trace):
            if e.outcome == "taken":
                out.append(e)
                if len(out) == n:
                    break
        out.reverse()
        return out

    def _moved(self, entry: TraceEntry, previous: str, status: str) -> None:
        event = entry.event
        if event == "start":
            self._started_at = entry.time
        if event != "backoff_expired":
            self._cause = event
            if previous in UP_STATUSES and status not in UP_STATUSES \
                    and event != "stop" and self._down_at is None:
                self._down_at = entry.time  # before the effects: a restart opens at once

    def _effects(self, entry: TraceEntry) -> None:
        event = entry.event
        sinks = self._sinks
        for effect in entry.effects:
            if isinstance(effect, OpenTransport):
                if self._attempt_open:
                    self._end_attempt(False, f"superseded by {event}")
                self._attempt_open = True
                cause = self._cause if event == "backoff_expired" and self._cause else event
                if effect.reason is not OpenReason.START and self._down_at is not None \
                        and self._recovering_at is None:
                    self._recovering_at = entry.time
                for sink in sinks:
                    sink.attempt(self, effect, cause)
            elif isinstance(effect, CloseTransport) and self._attempt_open \
                    and STATUS_OF[entry.source] not in UP_STATUSES:
                self._end_attempt(False, event)

    def _end_attempt(self, ok: bool, detail: str) -> None:
        self._attempt_open = False
        for sink in self._sinks:
            sink.attempt_end(self, ok, detail)

    def _status(self, entry: TraceEntry, previous: str, status: str) -> None:
        now, event = entry.time, entry.event
        up, was_up = status in UP_STATUSES, previous in UP_STATUSES
        if up and not was_up:
            if self._attempt_open:
                self._end_attempt(True, event)
            if self._started_at is not None:
                self._duration("connect", now - self._started_at)
                self._started_at = None
            if self._down_at is not None:
                self._duration("outage", now - self._down_at)
                self._duration("recovery", now - (self._recovering_at or self._down_at))
            self._down_at = self._recovering_at = None
            self._healthy_at = now
        elif was_up and not up:
            if event != "stop":
                if self._down_at is None:
                    self._down_at = now
                if self._healthy_at is not None:
                    self._duration("detection", now - self._healthy_at)
            elif self._attempt_open:
                self._end_attempt(True, "stop")
            self._healthy_at = None
        if status in ("idle", "error"):
            if self._attempt_open:
                self._end_attempt(False, event)
            self._down_at = self._recovering_at = self._started_at = None
        sinks = self.hub.status_sinks
        if sinks:
            change = StatusChange(now, previous, status, entry.target, event)
            for sink in sinks:
                sink.status(self, change)

    def _duration(self, kind: str, seconds: float) -> None:
        for sink in self._sinks:
            sink.duration(self, kind, max(0.0, seconds))

    def _error(self, err: VoiceError) -> None:
        if self.detached:
            return
        self._sync()
        self.version += 1
        self.recent_errors.append((self.now, err))
        for sink in self._sinks:
            sink.error(self, err)

    def _sample(self, m: ConnectionMetrics) -> None:
        if self.detached:
            return
        self._sync()
        self.version += 1
        self.samples.append(m)
        if self.session.status in UP_STATUSES:
            self._healthy_at = self.now
        for sink in self._sinks:
            sink.sample(self, m)

    def _alert(self, alert: QualityAlert) -> None:
        if self.detached:
            return
        self._sync()
        self.version += 1
        for sink in self._sinks:
            sink.alert(self, alert)


class Hub:
    """The tracked sessions of a process and the sinks that watch them."""

    def __init__(self) -> None:
        self.sinks: list[Sink] = []
        self.status_sinks: list[Sink] = []
        """The sinks that override ``status`` (a StatusChange is only built for them)."""
        self._taps: dict[int, SessionTap] = {}
        self._by_session: weakref.WeakKeyDictionary[VoiceSession, SessionTap] = (
            weakref.WeakKeyDictionary())
        self.on_change: list[Callable[[], None]] = []
        """Called (no argument) when a session is added or removed."""

    def _split(self) -> None:
        self.status_sinks[:] = [x for x in self.sinks if _overrides(x, "status")]

    def add_sink(self, sink: Sink) -> None:
        self.sinks.append(sink)
        self._split()
        for tap in self._taps.values():
            sink.added(tap)

    def remove_sink(self, sink: Sink) -> None:
        for tap in self._taps.values():
            tap._sync()
            sink.removed(tap)
        self.sinks.remove(sink)
        self._split()

    def track(self, session: VoiceSession, name: str | None = None) -> SessionTap:
        """Watch ``session`` until its ``async with`` exits (or :meth:`untrack`)."""
        existing = self._by_session.get(session)
        if existing is not None:
            return existing
        tap = SessionTap(self, session, name)
        self._taps[tap.id] = tap
        self._by_session[session] = tap

        async def untrack() -> None:
            self.untrack(session)
        session.closers.append(untrack)
        for sink in self.sinks:
            sink.added(tap)
        for cb in self.on_change:
            cb()
        return tap

    def untrack(self, session: VoiceSession) -> None:
        tap = self._by_session.pop(session, None)
        if tap is None:
            return
        self._taps.pop(tap.id, None)
        tap._sync()
        tap.detach()
        for sink in self.sinks:
            sink.removed(tap)
        for cb in self.on_change:
            cb()

    def __iter__(self) -> Iterator[SessionTap]:
        return iter(list(self._taps.values()))

    def __len__(self) -> int:
        return len(self._taps)

    def get(self, tap_id: int) -> SessionTap | None:
        return self._taps.get(tap_id)


class BoundedLabel:
    """Maps label values (error codes, which servers choose) to themselves for the first
    ``limit`` distinct ones and to ``other`` after: bounded metric cardinality."""

    def __init__(self, limit: int = 100) -> None:
        self.limit = limit
        self.seen: set[str] = set()

    def __call__(self, value: str) -> str:
        if value in self.seen:
            return value
        if len(self.seen) >= self.limit:
            return "other"
        self.seen.add(value)
        return value


Counts = dict[tuple[str, str, str, str], int]


def merge_counts(into: Counts, counts: Counts) -> None:
    for key, n in list(counts.items()):
        into[key] = into.get(key, 0) + n


def split_counts(retired: Counts, taps: Iterable[SessionTap]
                 ) -> tuple[dict[tuple[str, str, str], int], dict[tuple[str, str], int]]:
    """Totals over ``retired`` and the live ``taps``: transitions taken by (event, source,
    target), and events refused or stale by (event, outcome); observations are left out."""
    total: Counts = dict(retired)
    for tap in taps:
        tap._sync()
        merge_counts(total, tap.counts)
    taken: dict[tuple[str, str, str], int] = {}
    not_taken: dict[tuple[str, str], int] = {}
    for (event, source, target, outcome), n in total.items():
        if outcome == "taken":
            taken[(event, source, target)] = taken.get((event, source, target), 0) + n
        elif outcome != "observed":
            not_taken[(event, outcome)] = not_taken.get((event, outcome), 0) + n
    return taken, not_taken


def _overrides(sink: object, name: str) -> bool:
    return getattr(type(sink), name, None) is not getattr(BaseSink, name)


_DEFAULT: Hub | None = None


def default_hub() -> Hub:
    """The process-wide hub the CLI uses."""
    global _DEFAULT
    if _DEFAULT is None:
        _DEFAULT = Hub()
    return _DEFAULT


def statuses(taps: Iterable[SessionTap]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for tap in taps:
        s = tap.session.status
        counts[s] = counts.get(s, 0) + 1
    return counts
