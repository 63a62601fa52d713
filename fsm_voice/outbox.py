"""The outbox: the application's client events (exactly once where the protocol allows) and the
conversation replayed onto each new connection.

Sans-IO: nothing here awaits, reads a clock or knows a transport. Every method that sends takes a
``deliver`` callable (one client event -> the open data channel, raising when it cannot), and
every method that loses something returns the :class:`~fsm_voice.errors.VoiceError` to report
instead of reporting it. The runtime calls it at four moments:

- the application sends (:meth:`Outbox.submit`),
- a connection comes up (:meth:`Outbox.connection_up`: config, replay, then the queue),
- a connection is closed (:meth:`Outbox.connection_closed`: re-send what was not delivered),
- a server event of the current connection arrives (:meth:`Outbox.observe`).

The conversation is a :class:`~fsm_voice.conversation.Conversation` (stable item ids across
calls, so a replayed item's echo is never stored twice); the events go through a
:class:`~fsm_voice.delivery.Ledger` (every event carries an ``event_id``; acknowledged or
confirmed ones are never re-sent, the others once).
"""

from __future__ import annotations

import collections
import json
import logging
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from fsm_voice.conversation import Conversation, ReplayReport
from fsm_voice.delivery import (
    CloseReport,
    DuplicateEventIdError,
    Fate,
    Ledger,
    QueueOverflowError,
)
from fsm_voice.errors import ErrorSource, FsmVoiceError, Severity, VoiceError

__all__ = ["Deliver", "DuplicateEventIdError", "InvalidEventError", "Outbox", "QueueOverflowError",
           "validate_event"]

log = logging.getLogger("fsm_voice.outbox")

Deliver = Callable[[Mapping[str, Any]], None]
"""Send one client event on the open connection; raises when the channel is not open."""


class InvalidEventError(FsmVoiceError, TypeError):
    """A client event that is not a JSON-serialisable mapping with a string ``type`` (also a
    TypeError, as it was)."""


def validate_event(event: object) -> Mapping[str, Any]:
    """``event`` if it is a JSON-serialisable mapping with a string ``type``; else
    :class:`InvalidEventError`."""
    if not isinstance(event, Mapping) or not isinstance(event.get("type"), str):
        raise InvalidEventError("a client event is a mapping with a string 'type', e.g. "
                        "{'type': 'response.create'}")
    try:
        json.dumps(event, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise InvalidEventError(f"client event {event['type']!r} is not JSON-serialisable: {exc}"
                        ) from exc
    return event


def _dropped(n: int, why: str) -> VoiceError:
    return VoiceError(severity=Severity.RECOVERABLE, code="client_events_dropped",
                      message=f"{n} client event(s) were not sent: {why}",
                      source=ErrorSource.CLIENT)


def _fate(going: str) -> Fate:
    return "stop" if going == "idle" else "error" if going == "error" else "retry"


class Outbox:
    """Client events (bounded queue, exactly-once ledger) and the replayable conversation."""

    def __init__(
        self,
        *,
        limit: int,
        session_config: Mapping[str, Any] | None = None,
        replay_history: bool = True,
        history_limit: int = 200,
    ) -> None:
        self.limit = limit
        self.ledger = Ledger(limit)
        self.conversation = Conversation(history_limit)
        self.session_config = dict(session_config) if session_config is not None else None
        """Sent as ``session.update`` each time a connection comes up (re-applied on restart)."""
        self.replay_history = replay_history
        self.replayed = 0
        """Conversation items replayed onto new connections (all restarts)."""
        self.replays: list[ReplayReport] = []
        """One report per replay, oldest first (bounded)."""
        self.closes: list[CloseReport] = []
        """How each closed connection's events were sorted, oldest first (bounded)."""
        self._evicted: list[str] = []
        self._unreplayable_reported: set[str] = set()
        """Items already reported as not replayable (each is reported once per session)."""
        """Items evicted from the conversation since the last replay (reported with it)."""
        self._dropped_in_flight = 0
        self.dropped_events: collections.deque[Mapping[str, Any]] = collections.deque(
            maxlen=1000)
        """The last events dropped from the queue (each was reported)."""

    # -- counters (the session's public figures) ------------------------------------------
    def __len__(self) -> int:
        return len(self.ledger)

    @property
    def queue(self) -> tuple[Mapping[str, Any], ...]:
        """Events waiting for a connection, oldest first."""
        return self.ledger.queued

    @property
    def sent(self) -> int:
        """Events the application handed over (``submit``)."""
        return self.ledger.submitted

    @property
    def delivered(self) -> int:
        """Application events written to a data channel and not taken back (each once)."""
        return self.ledger.transmissions - self.ledger.resent - self._dropped_in_flight

    @property
    def dropped(self) -> int:
        """Events that could not be delivered (reported)."""
        return self.ledger.dropped

    @property
    def resent(self) -> int:
        """Events sent again on a new connection (not acknowledged, or an item creation never
        echoed, by the closed one)."""
        return self.ledger.resent

    @property
    def history(self) -> collections.OrderedDict[str, dict[str, Any]]:
        """The replayable conversation items as Realtime wire items, by stable id (a copy)."""
        return collections.OrderedDict(
            (i.id, i.realtime_item()) for i in self.conversation if i.replayable)

    # -- the application --------------------------------------------------------------------
    def submit(self, event: Mapping[str, Any], deliver: Deliver | None) -> Mapping[str, Any]:
        """Stamp ``event`` (``event_id``; an ``item.id`` for an item creation), then send it now
        (``deliver`` given, nothing queued ahead of it) or queue it; returns it as stamped.

        Raises :class:`QueueOverflowError` when the queue is full (the event is not counted),
        :class:`DuplicateEventIdError` when its ``event_id`` is still in use."""
        stamped = self.ledger.submit(event)
        if deliver is not None and len(self.ledger) == 1:
            self.flush(deliver)
        return stamped

    # -- connections ------------------------------------------------------------------------
    def connection_up(self, deliver: Deliver, *, replay: bool) -> VoiceError | None:
        """A new connection is up: re-apply the configuration, replay the conversation when
        ``replay`` (and replay is enabled), then send what is queued. Never raises; returns the
        error to report when the replay could not carry the whole conversation."""
        report: ReplayReport | None = None
        try:
            if self.session_config is not None:
                deliver({"type": "session.update", "session": self.session_config})
            if replay and self.replay_history:
                events, report = self.conversation.realtime_replay()
                for ev in events:
                    deliver(ev)
                    self.replayed += 1
                self._record(report)
        except Exception as exc:
            log.warning("re-establishing the session failed: %r", exc)
        self.flush(deliver)
        return self.replay_done(report)

    def _record(self, report: ReplayReport) -> None:
        self.replays.append(report)
        del self.replays[:-100]

    def seeded(self, report: ReplayReport) -> VoiceError | None:
        """A Live session was seeded with the conversation (``report``): recorded like a
        replay; the error to report when it could not carry the whole conversation."""
        self._record(report)
        return self.replay_done(report)

    def replay_done(self, report: ReplayReport | None) -> VoiceError | None:
        """The error to report when a replay (``report``) could not carry the whole
        conversation (items cut, evicted or not replayable as text)."""
        evicted, self._evicted = self._evicted, []
        if report is None:
            return None
        fresh = [i for i in report.unreplayable if i not in self._unreplayable_reported]
        self._unreplayable_reported.update(fresh)
        if not report.cut and not evicted and not fresh:
            return None  # complete, or only audio already reported as not replayable
        log.info("%s; %d evicted earlier", report.describe(), len(evicted))
        return VoiceError(
            severity=Severity.TRANSIENT, code="conversation_cut",
            message=f"the new connection does not hold the whole conversation: "
            f"{report.describe()}; {len(evicted)} item(s) evicted by history_limit before",
            source=ErrorSource.CLIENT)

    def flush(self, deliver: Deliver) -> None:
        """Send queued events in order; stop (keeping the rest) at the first that fails. An
        item creation the current call already holds is not sent again."""
        ledger = self.ledger
        while (event := ledger.peek()) is not None:
            iid = _created_item(event)
            if iid is not None and self.conversation.known_in_call(iid):
                ledger.sent(confirmed=True)  # its echo was seen already: not sent again
                continue
            try:
                deliver(self.conversation.translate(event))
            except Exception as exc:  # channel not really open yet: keep the rest queued
                log.warning("delivering queued event failed, will retry: %r", exc)
                return
            ledger.sent()

    def connection_closed(
        self, unacknowledged: Callable[[], Iterable[Mapping[str, Any]]] | None, *, going: str
    ) -> VoiceError | None:
        """Before a connection is closed (``going``: the machine state after the close): sort
        the events it had sent (see :class:`~fsm_voice.delivery.Ledger`); the ones to send again
        go to the front of the queue. ``"error"`` returns them as dropped instead; ``"idle"``
        (the application's own stop) leaves them to the transport. Never raises."""
        unacked: list[Mapping[str, Any]] | None = None
        if unacknowledged is not None:
            try:
                unacked = list(unacknowledged())
            except Exception as exc:
                log.warning("reading the unacknowledged client events failed: %r", exc)
        report = self.ledger.connection_closed(unacked, _fate(going))
        self.conversation.begin_call()  # the next connection is a new call
        self.closes.append(report)
        del self.closes[:-100]
        if report.resent:
            log.info("re-sending %d client event(s) the closed connection did not deliver",
                     len(report.resent))
        if report.dropped:
            self._dropped_in_flight += len(report.dropped)
            return _dropped(len(report.dropped), f"sent but not delivered: the session went "
                                                  f"{going}")
        return None

    def drop(self, why: str) -> VoiceError | None:
        """Discard the queue; the error to report (None when it was empty)."""
        dropped = self.ledger.drop_queued()
        self.dropped_events.extend(dropped)
        return _dropped(len(dropped), why) if dropped else None

    def new_conversation(self) -> VoiceError | None:
        """A new session: forget the conversation and drop what an earlier session left."""
        self.conversation.clear()
        self._evicted.clear()
        self._unreplayable_reported.clear()
        return self.drop("a new conversation was started")

    # -- the server ---------------------------------------------------------------------------
    def observe(self, event: Mapping[str, Any]) -> None:
        """A server event of the current connection: conversation items and confirmations."""
        self.ledger.observe(event)
        evicted = self.conversation.observe(event)
        if evicted:
            self._evicted.extend(i.id for i in evicted)
            del self._evicted[:-1000]


def _created_item(event: Mapping[str, Any]) -> str | None:
    if event.get("type") != "conversation.item.create":
        return None
    item = event.get("item")
    iid = item.get("id") if isinstance(item, Mapping) else None
    return iid if isinstance(iid, str) else None
