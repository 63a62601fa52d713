"""Effects: the commands the lifecycle machine asks the runtime to carry out.

The machine never performs I/O or reads a clock; each transition appends effects, and the runtime
executes them in order (run-to-completion) before it takes the next event.
"""

from __future__ import annotations

import enum
from typing import Any

import attrs


class Timer(enum.StrEnum):
    """The machine's timers; each one, when it fires, comes back as the event of the same name."""

    CONNECT_TIMEOUT = "connect_timeout"
    ICE_GRACE = "ice_grace_expired"
    RESTART_TIMEOUT = "restart_timeout"
    BACKOFF = "backoff_expired"
    STABLE = "session_stable"
    """Armed when a connection comes up: when it fires the failure episode ends (damping)."""
    ROLLOVER = "rollover_due"
    """Armed by ``session_info``: roll the session over before the server's time limit."""


class OpenReason(enum.StrEnum):
    START = "start"
    """First connection of a session (``start``)."""
    RESTART = "restart"
    """Transport restart after ICE failure/disconnection (new peer connection, same session)."""
    RECONNECT = "reconnect"
    """Reconnect attempt after a failure (quick retry or after a backoff delay)."""


@attrs.frozen(slots=True)
class OpenTransport:
    reason: OpenReason
    attempt: int = 0
    """Reconnect attempt number within the failure episode (0 for start/restart/quick retry)."""


@attrs.frozen(slots=True)
class CloseTransport:
    pass


@attrs.frozen(slots=True)
class ArmTimer:
    timer: Timer
    delay: float


@attrs.frozen(slots=True)
class CancelTimer:
    timer: Timer


@attrs.frozen(slots=True)
class ReportError:
    """Tell the application about an error (fatal, exhausted retries, or a non-fatal notice)."""

    code: str
    severity: str
    error: Any = attrs.field(default=None, eq=False)
    """The :class:`~fsm_voice.errors.VoiceError` behind it, when there is one."""


@attrs.frozen(slots=True)
class NewConversation:
    """Emitted by ``start``: discard the conversation, history and outbox of an earlier session."""


@attrs.frozen(slots=True)
class ConnectionUp:
    """A connection reached ``active``: send the session config, then (iff ``replay``) replay the
    conversation, then flush the outbox."""

    replay: bool


Effect = (
    OpenTransport
    | CloseTransport
    | ArmTimer
    | CancelTimer
    | ReportError
    | NewConversation
    | ConnectionUp
)
