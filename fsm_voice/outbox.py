"""The outbox: the application's client events, their re-send, and the conversation replay.

Sans-IO: nothing here awaits, reads a clock or knows a transport. Every method that sends takes a
``deliver`` callable (one client event -> the open data channel, raising when it cannot), and
every method that loses events returns the :class:`~fsm_voice.errors.VoiceError` to report
instead of reporting it. The runtime calls it at four moments:

- the application sends (:meth:`Outbox.submit`),
- a connection comes up (:meth:`Outbox.connection_up`: config, replay, then the queue),
- a connection is closed (:meth:`Outbox.connection_closed`: at-least-once re-send),
- a server event arrives (:meth:`Outbox.observe`: conversation items kept for the replay).
"""

from __future__ import annotations

import collections
import json
import logging
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from fsm_voice.errors import ErrorSource, Severity, VoiceError

log = logging.getLogger("fsm_voice.outbox")

Deliver = Callable[[Mapping[str, Any]], None]
"""Send one client event on the open connection; raises when the channel is not open."""

#: Server events that carry a conversation item worth keeping for the replay.
ITEM_EVENTS = frozenset({"conversation.item.done", "conversation.item.created",
                         "conversation.item.added", "response.output_item.done"})


class QueueOverflowError(RuntimeError):
    """More application events were queued during a reconnect than the policy allows."""


def validate_event(event: object) -> Mapping[str, Any]:
    """``event`` if it is a JSON-serialisable mapping with a string ``type``; else TypeError."""
    if not isinstance(event, Mapping) or not isinstance(event.get("type"), str):
        raise TypeError("a client event is a mapping with a string 'type', e.g. "
                        "{'type': 'response.create'}")
    try:
        json.dumps(event, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"client event {event['type']!r} is not JSON-serialisable: {exc}"
                        ) from exc
    return event


def _dropped(n: int, why: str) -> VoiceError:
    return VoiceError(severity=Severity.RECOVERABLE, code="client_events_dropped",
                      message=f"{n} client event(s) were not sent: {why}",
                      source=ErrorSource.CLIENT)


class Outbox:
    """Queue of client events (bounded), at-least-once re-send, and the replayable history."""

    def __init__(
        self,
        *,
        limit: int,
        session_config: Mapping[str, Any] | None = None,
        replay_history: bool = True,
        history_limit: int = 200,
    ) -> None:
        self.limit = limit
        self.queue: collections.deque[Mapping[str, Any]] = collections.deque()
        """Events waiting for a connection, oldest first (at most ``limit``)."""
        self.session_config = dict(session_config) if session_config is not None else None
        """Sent as ``session.update`` each time a connection comes up (re-applied on restart)."""
        self.replay_history = replay_history
        self.history: collections.OrderedDict[str, dict[str, Any]] = collections.OrderedDict()
        """Conversation items that can be replayed (text and transcripts), by item id."""
        self.history_limit = history_limit
        self.sent = 0
        """Events the application handed over (``submit``)."""
        self.delivered = 0
        """Application events written to a data channel (each counted once)."""
        self.dropped = 0
        """Events that could not be sent (reported)."""
        self.resent = 0
        """Events re-queued because the closed connection had not had them acknowledged."""
        self.replayed = 0
        """History items replayed onto new connections."""
        self._delivered_at_up: int | None = None
        """``delivered`` when the current connection came up (None: no connection up)."""

    def __len__(self) -> int:
        return len(self.queue)

    # -- the application --------------------------------------------------------------------
    def submit(self, event: Mapping[str, Any], deliver: Deliver | None) -> None:
        """Send ``event`` now (``deliver`` given, nothing queued ahead of it) or queue it.

        Raises :class:`QueueOverflowError` when the queue is full (the event is not counted).
        """
        if deliver is not None and not self.queue:
            try:
                deliver(event)
                self.sent += 1
                self.delivered += 1
                return
            except Exception as exc:  # the channel went away under us: queue, never lose it
                log.info("send failed (%r); queued until the session is up again", exc)
        if len(self.queue) >= self.limit:
            raise QueueOverflowError(
                f"{len(self.queue)} events already queued; the limit is "
                f"SessionPolicy.event_queue_limit={self.limit}"
            )
        self.sent += 1
        self.queue.append(event)

    # -- connections ------------------------------------------------------------------------
    def connection_up(self, deliver: Deliver, *, replay: bool) -> None:
        """A new connection is up: re-apply the configuration, replay the conversation when
        ``replay`` (and replay is enabled), then send what is queued. Never raises."""
        self._delivered_at_up = self.delivered
        try:
            if self.session_config is not None:
                deliver({"type": "session.update", "session": self.session_config})
            if replay and self.replay_history:
                for item in list(self.history.values()):
                    deliver({"type": "conversation.item.create", "item": item})
                    self.replayed += 1
        except Exception as exc:
            log.warning("re-establishing the session failed: %r", exc)
        self.flush(deliver)

    def flush(self, deliver: Deliver) -> None:
        """Send queued events in order; stop (keeping the rest) at the first that fails."""
        queue = self.queue
        while queue:
            try:
                deliver(queue[0])
            except Exception as exc:  # channel not really open yet: keep the rest queued
                log.warning("delivering queued event failed, will retry: %r", exc)
                return
            queue.popleft()
            self.delivered += 1

    def connection_closed(
        self, unacknowledged: Callable[[], Iterable[Mapping[str, Any]]] | None, *, going: str
    ) -> VoiceError | None:
        """Before a connection is closed: the application events it never had acknowledged
        (``unacknowledged``: the transport's optional capability, oldest first) go back to the
        FRONT of the queue, in order, to be delivered again on the next connection
        (at-least-once). ``going`` is the machine state after the close: ``"error"`` reports them
        as dropped instead, ``"idle"`` (the application's own stop) leaves them to SCTP. Only the
        last ``delivered - delivered at up`` messages can be application events (config and
        replay go first on each connection, and are sent again anyway). Never raises."""
        up_at, self._delivered_at_up = self._delivered_at_up, None
        if up_at is None:
            return None
        app_events = self.delivered - up_at
        if app_events <= 0 or unacknowledged is None or going == "idle":
            return None
        try:
            unacked = list(unacknowledged())[-app_events:]
        except Exception as exc:
            log.warning("reading the unacknowledged client events failed: %r", exc)
            return None
        if not unacked:
            return None
        n = len(unacked)
        self.delivered -= n
        if going == "error":
            self.dropped += n
            return _dropped(n, f"sent but never acknowledged by the peer: the session went "
                               f"{going}")
        log.info("re-queuing %d client event(s) the closed connection never acknowledged", n)
        self.resent += n
        self.queue.extendleft(reversed(unacked))
        return None

    def drop(self, why: str) -> VoiceError | None:
        """Discard the queue; the error to report (None when it was empty)."""
        n = len(self.queue)
        if not n:
            return None
        self.queue.clear()
        self.dropped += n
        return _dropped(n, why)

    def new_conversation(self) -> VoiceError | None:
        """A new session: forget the history and drop what an earlier session left queued."""
        self.history.clear()
        self._delivered_at_up = None
        return self.drop("a new conversation was started")

    # -- the server ---------------------------------------------------------------------------
    def observe(self, event: Mapping[str, Any]) -> None:
        """Keep a replayable text copy of conversation items (assistant audio cannot be
        replayed, its transcript can)."""
        if event.get("type") not in ITEM_EVENTS:
            return
        item = event.get("item")
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
        while len(self.history) > self.history_limit:
            self.history.popitem(last=False)
