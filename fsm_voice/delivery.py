"""Application events delivered exactly once where the protocol allows it (sans-IO).

Every application event gets an ``event_id`` (Realtime client events have one; the ledger adds
``fve_<hex>`` when the application did not), and every ``conversation.item.create`` an
``item.id`` (see :func:`fsm_voice.conversation.assign_item_id`). The ledger knows, per
connection, which events it sent; when the connection closes it sorts them:

* **confirmed** by the server: a ``conversation.item.created`` / ``added`` / ``done`` echo of
  the item an event created, an ``error`` naming the event's ``event_id``, or any server event
  whose ``client_event_id`` names it (Live acknowledgements). Never re-sent.
* **acknowledged** by the transport (the optional capability ``unacknowledged_events()`` of the
  aiortc transport: SCTP acknowledged the message, so the peer's application has it). Never
  re-sent, except an item creation that was never echoed: the conversation does not hold that
  item, so the creation is re-sent, which is safe because the item carries its id (an item
  creation is idempotent by id).
* **unacknowledged**: put back at the front of the queue, in order, and re-sent once on the next
  connection. If the old peer did receive it (its acknowledgement was lost with the path) the
  peer of the old call saw it too: that ambiguity is what the protocol leaves, and every such
  event is listed in :attr:`CloseReport.resent`.

When the session ends in ``error`` the events it could not deliver are returned as dropped (the
runtime reports them). Without the transport capability the ledger cannot tell acknowledged from
lost and counts everything sent as delivered (at-most-once), item creations never echoed
excepted.
"""

from __future__ import annotations

import collections
import secrets
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Literal

import attrs

from fsm_voice.conversation import assign_item_id, new_item_id
from fsm_voice.errors import FsmVoiceError

Fate = Literal["retry", "error", "stop"]
"""What happens after a connection closes: another connection (``retry``), the session ends in
``error``, or the application stopped it (``stop``: in-flight events are left to the transport)."""

_ECHOES = frozenset({"conversation.item.created", "conversation.item.added",
                     "conversation.item.done"})


def new_event_id() -> str:
    """An event id: ``fve_`` + 16 hex digits."""
    return f"fve_{secrets.token_hex(8)}"


class QueueOverflowError(FsmVoiceError, RuntimeError):
    """More application events were queued during a reconnect than the policy allows."""


class DuplicateEventIdError(FsmVoiceError, ValueError):
    """An application event reused the ``event_id`` of an event that is still undelivered."""


@attrs.frozen
class CloseReport:
    """How the events a closed connection had sent were sorted (event ids, in send order)."""

    delivered: tuple[str, ...] = ()
    resent: tuple[str, ...] = ()
    """Put back to be sent again (unacknowledged, or an item creation never echoed)."""
    dropped: tuple[str, ...] = ()
    """Not delivered and never will be (the session went to ``error``)."""
    unconfirmed: tuple[str, ...] = ()
    """``stop``: sent, not acknowledged yet, left to the transport's best effort."""


@attrs.define
class _InFlight:
    event: Mapping[str, Any]
    confirmed: bool = False


def _item_id(event: Mapping[str, Any]) -> str | None:
    if event.get("type") != "conversation.item.create":
        return None
    item = event.get("item")
    iid = item.get("id") if isinstance(item, Mapping) else None
    return iid if isinstance(iid, str) else None


class Ledger:
    """The application's events: queued while no connection is up, sent in order, tracked per
    connection until it closes. The runtime calls :meth:`submit`, :meth:`peek` / :meth:`sent`
    to flush, :meth:`observe` for every server event of the current connection and
    :meth:`connection_closed` before closing a transport."""

    def __init__(self, limit: int = 256, *, new_id: Callable[[], str] = new_event_id,
                 new_item: Callable[[], str] = new_item_id, max_in_flight: int = 4096) -> None:
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
            raise ValueError(f"limit must be a positive int, got {limit!r}")
        self.limit = limit
        self.max_in_flight = max_in_flight
        """Events remembered per connection; beyond, the oldest counts as delivered (SCTP has
        long acknowledged it: a dead path is detected within seconds, not thousands of
        events)."""
        self._new_id = new_id
        self._new_item = new_item
        self._queue: collections.deque[Mapping[str, Any]] = collections.deque()
        self._in_flight: collections.OrderedDict[str, _InFlight] = collections.OrderedDict()
        self._by_item: dict[str, str] = {}
        """item id -> event id, for in-flight item creations."""
        self.submitted = 0
        self.transmissions = 0
        """Sends on the wire (re-sends included)."""
        self.delivered = 0
        self.resent = 0
        self.dropped = 0

    def __len__(self) -> int:
        """Events waiting to be sent."""
        return len(self._queue)

    @property
    def queued(self) -> tuple[Mapping[str, Any], ...]:
        return tuple(self._queue)

    @property
    def in_flight(self) -> tuple[Mapping[str, Any], ...]:
        return tuple(f.event for f in self._in_flight.values())

    def stamp(self, event: Mapping[str, Any]) -> Mapping[str, Any]:
        """``event`` with an ``event_id`` (and an item id for an item creation)."""
        out = assign_item_id(event, self._new_item)
        eid = out.get("event_id")
        if not isinstance(eid, str) or not eid:
            out = {**out, "event_id": self._new_id()}
        return out

    def submit(self, event: Mapping[str, Any]) -> Mapping[str, Any]:
        """Queue an application event (stamped); returns it as it will be sent. Raises
        :class:`QueueOverflowError` when ``limit`` events are waiting already and
        :class:`DuplicateEventIdError` for an ``event_id`` that is still undelivered."""
        if len(self._queue) >= self.limit:
            raise QueueOverflowError(
                f"{len(self._queue)} events already queued; the limit is "
                f"SessionPolicy.event_queue_limit={self.limit}")
        stamped = self.stamp(event)
        eid = stamped["event_id"]
        if eid in self._in_flight or any(e["event_id"] == eid for e in self._queue):
            raise DuplicateEventIdError(
                f"event_id {eid!r} is already used by an undelivered event; use a fresh id "
                "(or none: one is assigned)")
        self._queue.append(stamped)
        self.submitted += 1
        return stamped

    def peek(self) -> Mapping[str, Any] | None:
        """The next event to send (None when the queue is empty)."""
        return self._queue[0] if self._queue else None

    def sent(self, *, confirmed: bool = False) -> None:
        """The event :meth:`peek` returned went onto the current connection (``confirmed``: the
        server is known to hold its effect already, so it was not written at all)."""
        event = self._queue.popleft()
        eid: str = event["event_id"]
        self._in_flight[eid] = _InFlight(event, confirmed)
        iid = _item_id(event)
        if iid is not None:
            self._by_item[iid] = eid
        self.transmissions += 1
        while len(self._in_flight) > self.max_in_flight:
            _, old = self._in_flight.popitem(last=False)
            self._by_item.pop(_item_id(old.event) or "", None)
            self.delivered += 1

    def observe(self, event: Mapping[str, Any]) -> None:
        """A server event of the current connection: confirms the events it answers."""
        etype = event.get("type")
        eid: Any = None
        if etype in _ECHOES:
            item = event.get("item")
            iid = item.get("id") if isinstance(item, Mapping) else None
            eid = self._by_item.get(iid) if isinstance(iid, str) else None
        elif etype == "error":
            err = event.get("error")
            eid = err.get("event_id") if isinstance(err, Mapping) else None
        else:  # an acknowledgement naming the client event (the Live API's ``client_event_id``)
            eid = event.get("client_event_id")
        if isinstance(eid, str) and eid in self._in_flight:
            self._in_flight[eid].confirmed = True

    def connection_closed(self, unacknowledged: Iterable[Mapping[str, Any]] | None,
                          fate: Fate) -> CloseReport:
        """Sort the events the closing connection had sent. ``unacknowledged``: what the
        transport reports as never acknowledged (read just before closing it), None when the
        transport cannot tell."""
        unacked: set[str] | None = None
        if unacknowledged is not None:
            unacked = {e["event_id"] for e in unacknowledged
                       if isinstance(e, Mapping) and isinstance(e.get("event_id"), str)}
        delivered: list[str] = []
        again: list[Mapping[str, Any]] = []
        for eid, flight in self._in_flight.items():
            creates = _item_id(flight.event) is not None
            if flight.confirmed or (not creates and (unacked is None or eid not in unacked)):
                delivered.append(eid)
            else:
                again.append(flight.event)
        self._in_flight.clear()
        self._by_item.clear()
        self.delivered += len(delivered)
        ids = tuple(e["event_id"] for e in again)
        if fate == "retry":
            self._queue.extendleft(reversed(again))
            self.resent += len(again)
            return CloseReport(delivered=tuple(delivered), resent=ids)
        if fate == "error":
            self.dropped += len(again)
            return CloseReport(delivered=tuple(delivered), dropped=ids)
        return CloseReport(delivered=tuple(delivered), unconfirmed=ids)

    def drop_queued(self) -> tuple[Mapping[str, Any], ...]:
        """Give up on every queued event (the session went idle or to error); returns them."""
        dropped = tuple(self._queue)
        self._queue.clear()
        self.dropped += len(dropped)
        return dropped
