"""Backend protocols: one port, two adapters (OpenAI Realtime and OpenAI Live).

A :class:`BackendProtocol` decides only what a backend's wire protocol means: which machine
event a server event is (:meth:`~BackendProtocol.server_event`, with the event's parameters)
and what a connection that comes up is sent (:meth:`~BackendProtocol.connection_up`). Every
lifecycle decision stays a row of the machine's table: a Live ``session.closed`` is posted as
``session_closed(code=reason)`` whatever the reason, and the table decides what each reason
does (SPEC-CLOSE-1..3).

- :class:`RealtimeProtocol`: ``input_audio_buffer.*`` / ``output_audio_buffer.*`` -> speech
  and audio events, every ``error`` -> ``server_error``, ``session.created/updated`` ->
  ``session_info``, ``rate_limits.updated`` kept; on a new connection ``session.update`` and
  (``replay``) the conversation replay, then the queue.
- :class:`LiveProtocol`: ``session.started/updated`` -> ``session_info``, ``session.closed`` ->
  ``session_closed``, ``error`` -> ``server_error`` (null code: ``unknown_error``),
  ``session.usage.updated`` kept (:attr:`LiveProtocol.usage`), ``info`` logged, unknown types
  counted (:attr:`LiveProtocol.unknown_events`). Live has no VAD events: speech/audio come from
  the transport's audio activity (:class:`~fsm_voice.ports.TransportSignal`). On a new
  connection only the queue is sent: the configuration is immutable and the history is seeded
  at creation (``VoiceSession.seed_input``).
"""

from __future__ import annotations

import collections
import logging
import math
from collections.abc import Callable, Mapping
from typing import Any, Final, Literal, NamedTuple, Protocol

import attrs

from fsm_voice.errors import (
    ConfigError,
    VoiceError,
    classify_live_close,
    classify_live_server_event,
    classify_server_event,
    live_close_reason,
    machine_severity,
)
from fsm_voice.outbox import Outbox

log = logging.getLogger("fsm_voice.session")

ProtocolName = Literal["realtime", "live"]
PROTOCOLS: Final[tuple[ProtocolName, ...]] = ("realtime", "live")

Deliver = Callable[[Mapping[str, Any]], None]

#: Realtime server event types that map one to one onto machine events (``error``,
#: ``session.created`` and ``session.updated`` carry parameters: see
#: :meth:`RealtimeProtocol.server_event`).
SERVER_EVENT_MAP: Final[dict[str, str]] = {
    "input_audio_buffer.speech_started": "speech_started",
    "input_audio_buffer.speech_stopped": "speech_stopped",
    "output_audio_buffer.started": "audio_started",
    "output_audio_buffer.stopped": "audio_stopped",
    "output_audio_buffer.cleared": "audio_stopped",
}


class MachineEvent(NamedTuple):
    """A machine event a server event stands for, with its parameters (see the contract of
    ``machine.send``)."""

    event: str
    severity: str | None = None
    code: str = ""
    error: VoiceError | None = None
    retry_after: float | None = None
    expires_in: float | None = None


def expires_in(expires_at: object, now: float) -> float:
    """Seconds from ``now`` (epoch) to a server's ``expires_at``, converted, not judged: the
    machine decides what is usable. Integers too large for a float give +-inf, anything that is
    not a number gives nan; never raises."""
    if isinstance(expires_at, bool) or not isinstance(expires_at, int | float):
        return math.nan
    try:
        at = float(expires_at)
    except OverflowError:
        at = math.inf if expires_at > 0 else -math.inf
    return at - now


def _session_info(event: Mapping[str, Any], now: float) -> MachineEvent | None:
    session = event.get("session")
    if isinstance(session, Mapping) and "expires_at" in session:
        return MachineEvent("session_info", expires_in=expires_in(session["expires_at"], now))
    return None


def _server_error(err: VoiceError) -> MachineEvent:
    if err.ignorable:
        log.info("ignorable server error %s: %s", err.code, err.message)
    return MachineEvent("server_error", severity=machine_severity(err), code=err.code,
                        error=err, retry_after=err.retry_after)


class BackendProtocol(Protocol):
    """What a backend's wire protocol decides (nothing about the lifecycle)."""

    @property
    def name(self) -> ProtocolName: ...

    rate_limits: list[Any]
    """The last rate limits the server announced (Realtime only; always empty for Live)."""

    def server_event(self, event: Mapping[str, Any], now: float) -> MachineEvent | None:
        """The machine event ``event`` (a JSON object with a string ``type``) stands for, or
        None; ``now`` is the wall clock (epoch seconds). Records what it observes; never
        raises on server input."""
        ...

    def conversation_events(self, event: Mapping[str, Any]) -> tuple[Mapping[str, Any], ...]:
        """What the conversation (and the delivery ledger) observe for ``event``, a server
        event of the current connection."""
        ...

    def connection_up(self, outbox: Outbox, deliver: Deliver, *,
                      replay: bool) -> VoiceError | None:
        """A connection reached a working state (``ConnectionUp(replay)``): send what it needs
        through ``deliver``, then the queue. Never raises; returns an error to report."""
        ...


class RealtimeProtocol:
    """OpenAI Realtime (``/v1/realtime/calls``)."""

    name: Final[Literal["realtime"]] = "realtime"

    def __init__(self) -> None:
        self.rate_limits: list[Any] = []
        """The last ``rate_limits.updated`` the server sent."""

    def server_event(self, event: Mapping[str, Any], now: float) -> MachineEvent | None:
        etype = event.get("type")
        mapped = SERVER_EVENT_MAP.get(etype) if isinstance(etype, str) else None
        if mapped:
            return MachineEvent(mapped)
        if etype == "error":  # every one, ignorable and session_expired too: the table decides
            return _server_error(classify_server_event(event))
        if etype in ("session.created", "session.updated"):
            return _session_info(event, now)
        if etype == "rate_limits.updated" and isinstance(event.get("rate_limits"), list):
            self.rate_limits = list(event["rate_limits"])
        return None

    def conversation_events(self, event: Mapping[str, Any]) -> tuple[Mapping[str, Any], ...]:
        return (event,)

    def connection_up(self, outbox: Outbox, deliver: Deliver, *,
                      replay: bool) -> VoiceError | None:
        return outbox.connection_up(deliver, replay=replay)


@attrs.frozen
class LiveUsage:
    """The latest ``session.usage.updated`` (cumulative: never summed), or the usage of the
    final ``session.closed``."""

    seconds: float | None
    """Billed session seconds so far."""
    usage_ratio: float | None
    """Share of the context window in use (``context_window.usage_ratio``), when sent."""


def _number(value: object) -> float | None:
    """A finite, non-negative number from untrusted input, else None."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    try:
        x = float(value)
    except OverflowError:
        return None
    return x if math.isfinite(x) and x >= 0 else None


#: Live server events that need no machine event and nothing recorded here (transcripts and the
#: conversation are the outbox's; the rest is for the application's ``on_server_event``).
LIVE_PASSIVE: Final = frozenset({
    "session.input_transcript.delta", "session.output_transcript.delta",
    "session.input_audio.muted", "session.input_audio.unmuted",
    "session.instructions.appended", "session.thinking.appended",
    "session.commentary.appended", "session.delegation.created", "response.event",
    "session.output_audio.delta", "session.input_audio.append",
    "session.output_audio.fixture.playing", "session.output_audio.fixture.played",
    "transport.dtmf.received", "transport.dtmf.send", "transport.dtmf.sent",
    "transport.ringing", "transport.answered", "transport.failed",
    "decision.event", "decision.item.created", "decision.item.deleted",
})
UNKNOWN_TYPES_KEPT: Final = 100
"""Distinct unknown event types counted by name; beyond, they count as ``<other>``."""
TURN_TEXT_LIMIT: Final = 20_000
"""Characters kept of one transcribed turn (a longer one keeps its beginning)."""


class LiveTurns:
    """Live transcript deltas -> conversation messages (Live has no items: the conversation a
    new session is seeded with is built from ``session.input_transcript.delta`` (user) and
    ``session.output_transcript.delta`` (assistant)).

    A turn of one side goes on until the other side has spoken after it: a delta of the other
    side that starts (``start_ms``) at or after this side's last ``end_ms``, or, without timing,
    any delta of the other side. Overlapping speech (barge-in) therefore does not split a turn.
    Each change of a turn is given as a ``conversation.item.done`` of the whole turn so far
    (same id: the conversation updates it in place)."""

    _ROLE: Final = {"session.input_transcript.delta": "user",
                    "session.output_transcript.delta": "assistant"}

    def __init__(self) -> None:
        self._seq = 0
        self._turn: dict[str, tuple[str, str, float | None]] = {}
        """role -> (item id, text so far, end_ms of its last delta)."""
        self._last: tuple[str, float | None] | None = None
        """(role, start_ms) of the last delta."""

    def reset(self) -> None:
        """A new connection: its turns are new items."""
        self._turn.clear()
        self._last = None

    def delta(self, event: Mapping[str, Any]) -> Mapping[str, Any] | None:
        role = self._ROLE.get(str(event.get("type")))
        text = event.get("delta")
        if role is None or not isinstance(text, str) or not text:
            return None
        start, end = _number(event.get("start_ms")), _number(event.get("end_ms"))
        turn = self._turn.get(role)
        if turn is not None and self._ended(role, turn[2]):
            turn = None
        if turn is None:
            self._seq += 1
            turn = (f"live_turn_{self._seq}", "", None)
        item_id, so_far, _ = turn
        so_far = (so_far + text)[:TURN_TEXT_LIMIT]
        self._turn[role] = (item_id, so_far, end)
        self._last = (role, start)
        kind = "input_text" if role == "user" else "output_text"
        return {"type": "conversation.item.done",
                "item": {"id": item_id, "type": "message", "role": role,
                         "content": [{"type": kind, "text": so_far}]}}

    def _ended(self, role: str, end_ms: float | None) -> bool:
        """Whether the other side spoke after ``role``'s turn (its last delta ended at
        ``end_ms``)."""
        last = self._last
        if last is None or last[0] == role:
            return False
        return end_ms is None or last[1] is None or last[1] >= end_ms


class LiveProtocol:
    """OpenAI Live / GPT-Live (``/v1/live/sessions``); a tolerant reader: unknown event types
    are counted and otherwise ignored."""

    name: Final[Literal["live"]] = "live"

    def __init__(self) -> None:
        self.rate_limits: list[Any] = []  # Live announces none (concurrency tiers only)
        self.usage: LiveUsage | None = None
        """The latest usage snapshot (None before the first)."""
        self.unknown_events: collections.Counter[str] = collections.Counter()
        """Event types this adapter does not know, by type (bounded)."""
        self.turns = LiveTurns()

    def server_event(self, event: Mapping[str, Any], now: float) -> MachineEvent | None:
        etype = event.get("type")
        if not isinstance(etype, str):
            return None
        if etype in ("session.started", "session.updated"):
            return _session_info(event, now)
        if etype == "session.closed":
            self._usage(event.get("usage"), None)
            return MachineEvent("session_closed", code=live_close_reason(event),
                                error=classify_live_close(event))
        if etype == "error":
            return _server_error(classify_live_server_event(event))
        if etype == "session.usage.updated":
            self._usage(event.get("usage"), event.get("context_window"))
        elif etype == "info":
            log.info("server info %s: %s", str(event.get("code"))[:100],
                     str(event.get("message"))[:500])
        elif etype not in LIVE_PASSIVE:
            self._unknown(etype)
        return None

    def conversation_events(self, event: Mapping[str, Any]) -> tuple[Mapping[str, Any], ...]:
        """The event itself (acknowledgements carry ``client_event_id``), an ``error``'s
        correlation in the Realtime shape the delivery ledger reads (``error.event_id``), and
        for a transcript delta its turn as a conversation item (:class:`LiveTurns`)."""
        if event.get("type") == "error":
            body = event.get("error")
            cid = body.get("client_event_id") if isinstance(body, Mapping) else None
            if isinstance(cid, str):
                return (event, {"type": "error", "error": {"event_id": cid}})
            return (event,)
        item = self.turns.delta(event)
        return (event,) if item is None else (event, item)

    def _usage(self, usage: object, window: object) -> None:
        seconds = _number(usage.get("seconds")) if isinstance(usage, Mapping) else None
        ratio = _number(window.get("usage_ratio")) if isinstance(window, Mapping) else None
        if seconds is None and ratio is None:
            return
        old = self.usage
        self.usage = LiveUsage(
            seconds if seconds is not None else (old.seconds if old else None),
            ratio if ratio is not None else (old.usage_ratio if old else None))

    def _unknown(self, etype: str) -> None:
        key = etype[:100]
        if key not in self.unknown_events and len(self.unknown_events) >= UNKNOWN_TYPES_KEPT:
            key = "<other>"
        if key not in self.unknown_events:
            log.info("unknown Live server event type %r (tolerated, counted)", key)
        self.unknown_events[key] += 1

    def connection_up(self, outbox: Outbox, deliver: Deliver, *,
                      replay: bool) -> VoiceError | None:
        """No ``session.update`` (the configuration is immutable) and no replay (the history
        was seeded in the session's ``input``): only the queue."""
        self.turns.reset()
        outbox.flush(deliver)
        return None


def make_protocol(name: object) -> RealtimeProtocol | LiveProtocol:
    """The adapter named ``name`` (``"realtime"`` or ``"live"``); :class:`ConfigError`
    otherwise."""
    if name == "realtime":
        return RealtimeProtocol()
    if name == "live":
        return LiveProtocol()
    raise ConfigError.invalid("protocol", name, " or ".join(map(repr, PROTOCOLS)))


__all__ = [
    "PROTOCOLS",
    "SERVER_EVENT_MAP",
    "BackendProtocol",
    "LiveProtocol",
    "LiveTurns",
    "LiveUsage",
    "MachineEvent",
    "RealtimeProtocol",
    "expires_in",
    "make_protocol",
]
