"""The connection-lifecycle machine (normative text: ``specs/connection.md``).

Sans-IO: no asyncio, no clock. Every event goes through :meth:`LifecycleMachine.send`; the
machine decides the transition, updates its counters and appends :mod:`effects <fsm_voice.effects>`
to :attr:`LifecycleLogic.effects`, which the runtime drains and executes. Illegal events raise
``TransitionNotAllowed`` and change nothing.

Everything that decides a transition lives here: the states, the table (the ``State.to``
declarations below), the guards and the counters. :class:`LifecycleLogic` holds the guards, actions
and counters, shared by the python-statemachine class and by the compiled fast path
(:mod:`fsm_voice.fastpath`).
"""

from __future__ import annotations

import random
from typing import Any, Final

from statemachine import State, StateMachine

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
from fsm_voice.policy import IcePolicy, RetryPolicy

#: Public statuses, exactly as the application sees them (SPEC-STATUS-1).
STATUSES: Final = ("idle", "connecting", "active", "speaking", "listening", "reconnecting", "error")

#: Every machine state and the public status it shows (SPEC-STATUS-2).
STATUS_OF: Final[dict[str, str]] = {
    "idle": "idle",
    "connecting": "connecting",
    "active": "active",
    "listening": "listening",
    "speaking": "speaking",
    "ice_grace": "active",
    "restarting": "reconnecting",
    "backoff": "reconnecting",
    "reconnecting": "reconnecting",
    "error": "error",
}

#: The one timer each state keeps armed while it is the current state (SPEC-TIMER-1).
TIMER_OF: Final[dict[str, Timer]] = {
    "connecting": Timer.CONNECT_TIMEOUT,
    "reconnecting": Timer.CONNECT_TIMEOUT,
    "restarting": Timer.RESTART_TIMEOUT,
    "ice_grace": Timer.ICE_GRACE,
    "backoff": Timer.BACKOFF,
}

#: States that are waiting for a transport to come up.
CONNECTING_STATES: Final = frozenset({"connecting", "restarting", "reconnecting"})
#: States with a working session.
ACTIVE_STATES: Final = frozenset({"active", "listening", "speaking"})

#: A machine configuration: (state, attempts, quick_used, media_up, channel_up, resume).
Snapshot = tuple[str, int, bool, bool, bool, str]

#: Events that carry an error severity (``severity=`` keyword).
SEVERITY_EVENTS: Final = frozenset({"signaling_failed", "server_error"})
SEVERITIES: Final = ("transient", "recoverable", "fatal")


class LifecycleLogic:
    """Counters, guards and actions of the lifecycle (no states: see :class:`LifecycleMachine`).

    Callbacks are called with keywords in both engines: ``severity`` (``"transient" |
    "recoverable" | "fatal"``, for error-carrying events), ``code`` and ``error`` (the
    :class:`~fsm_voice.errors.VoiceError`, opaque here); ``**kw`` takes the rest
    (python-statemachine also passes ``source``, ``target``, ``event_data`` ...).
    """

    def _init_logic(
        self,
        retry: RetryPolicy | None = None,
        ice: IcePolicy | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.retry = retry if retry is not None else RetryPolicy()
        self.ice = ice if ice is not None else IcePolicy()
        self.rng = rng
        self.effects: list[Effect] = []
        self.attempts = 0
        """Backoff reconnect attempts started in the current failure episode (SPEC-RETRY-1)."""
        self.quick_used = False
        """Whether the episode's one immediate retry after a transient error is spent."""
        self.media_up = False
        self.channel_up = False
        self.resume = "active"
        """Where ``ice_recovered`` returns to: the speech status, kept up to date during the
        grace period (SPEC-ICE-4)."""

    def snapshot(self, state: str) -> Snapshot:
        """Everything that decides future behaviour, as a hashable value."""
        return (state, self.attempts, self.quick_used, self.media_up, self.channel_up,
                self.resume)

    def restore(self, config: Snapshot) -> None:
        _, self.attempts, self.quick_used, self.media_up, self.channel_up, self.resume = config

    # -- guards ---------------------------------------------------------------------------
    def is_fatal(self, severity: str | None = None, **kw: Any) -> bool:
        return severity == "fatal"

    def quick_available(self, severity: str | None = None, **kw: Any) -> bool:
        return severity == "transient" and not self.quick_used

    def can_retry(self, **kw: Any) -> bool:
        return self.attempts < self.retry.max_attempts

    def channel_is_up(self, **kw: Any) -> bool:
        return self.channel_up

    def media_is_up(self, **kw: Any) -> bool:
        return self.media_up

    def resume_listening(self, **kw: Any) -> bool:
        return self.resume == "listening"

    def resume_speaking(self, **kw: Any) -> bool:
        return self.resume == "speaking"

    # -- generic entry / exit: timers (SPEC-TIMER-1) --------------------------------------
    def _enter(self, state_id: str) -> None:
        timer = TIMER_OF.get(state_id)
        if state_id != "ice_grace":
            self.resume = "active"  # only meaningful during the grace period
        if state_id in CONNECTING_STATES:
            self.media_up = self.channel_up = False
        if timer is not None:
            self.effects.append(ArmTimer(timer, self._delay(timer)))

    def _exit(self, state_id: str) -> None:
        timer = TIMER_OF.get(state_id)
        if timer is not None:
            self.effects.append(CancelTimer(timer))

    def _delay(self, timer: Timer) -> float:
        if timer is Timer.BACKOFF:
            return self.retry.delay(self.attempts, self.rng)
        if timer is Timer.ICE_GRACE:
            return self.ice.disconnected_grace
        if timer is Timer.RESTART_TIMEOUT:
            return self.ice.restart_timeout
        return self.ice.connect_timeout

    # -- actions --------------------------------------------------------------------------
    def begin_session(self, **kw: Any) -> None:
        self.attempts = 0
        self.quick_used = False
        self.effects.append(OpenTransport(OpenReason.START))

    def mark_media_up(self, **kw: Any) -> None:
        self.media_up = True

    def mark_channel_up(self, **kw: Any) -> None:
        self.channel_up = True

    def session_up(self, **kw: Any) -> None:
        # SPEC-RETRY-3: the episode ends only when the session is active again.
        self.media_up = self.channel_up = True
        self.attempts = 0
        self.quick_used = False

    # SPEC-ICE-4: the speech status survives a short outage.
    def remember_active(self, **kw: Any) -> None:
        self.resume = "active"

    def remember_listening(self, **kw: Any) -> None:
        self.resume = "listening"

    def remember_speaking(self, **kw: Any) -> None:
        self.resume = "speaking"

    def note_speech_stopped(self, **kw: Any) -> None:
        if self.resume == "listening":
            self.resume = "active"

    def note_audio_stopped(self, **kw: Any) -> None:
        if self.resume == "speaking":
            self.resume = "active"

    def restart_transport(self, **kw: Any) -> None:
        self.effects.append(CloseTransport())
        self.effects.append(OpenTransport(OpenReason.RESTART))

    def quick_reconnect(self, **kw: Any) -> None:
        self.quick_used = True
        self.effects.append(CloseTransport())
        self.effects.append(OpenTransport(OpenReason.RECONNECT))

    def wait_to_retry(self, **kw: Any) -> None:
        self.effects.append(CloseTransport())

    def retry_now(self, **kw: Any) -> None:
        self.attempts += 1
        self.effects.append(OpenTransport(OpenReason.RECONNECT, self.attempts))

    def fail_fatal(self, code: str = "", error: Any = None, **kw: Any) -> None:
        self.effects.append(CloseTransport())
        self.effects.append(ReportError(code or "fatal", "fatal", error))

    def give_up(self, error: Any = None, **kw: Any) -> None:
        self.effects.append(CloseTransport())
        self.effects.append(ReportError("retries_exhausted", "fatal", error))

    def report_nonfatal(
        self, severity: str | None = None, code: str = "", error: Any = None, **kw: Any
    ) -> None:
        self.effects.append(ReportError(code or "server_error", severity or "recoverable", error))

    def shutdown(self, **kw: Any) -> None:
        self.effects.append(CloseTransport())


class LifecycleMachine(LifecycleLogic, StateMachine):
    """The lifecycle, declared as a table: ``source.to(target, event=..., cond=..., on=...)``.

    For one event, the transitions from the current state are tried in declaration order; the
    first whose guards hold is taken. ``internal=True`` transitions run only their actions (no
    exit/entry, so no timer is re-armed); every other transition runs exit, actions, entry.
    """

    # StateMachine semantics: an internal transition runs only its actions; any other
    # transition (a self-transition too) runs exit, actions, entry.
    enable_self_transition_entries = False

    idle = State(initial=True)
    connecting = State()
    active = State()
    listening = State()
    speaking = State()
    ice_grace = State()
    restarting = State()
    backoff = State()
    reconnecting = State()
    error = State()

    # -- app --------------------------------------------------------------------------------
    start = idle.to(connecting, on="begin_session") | error.to(connecting, on="begin_session")
    stop = (
        idle.to.itself(internal=True)
        | connecting.to(idle, on="shutdown")
        | active.to(idle, on="shutdown")
        | listening.to(idle, on="shutdown")
        | speaking.to(idle, on="shutdown")
        | ice_grace.to(idle, on="shutdown")
        | restarting.to(idle, on="shutdown")
        | backoff.to(idle, on="shutdown")
        | reconnecting.to(idle, on="shutdown")
        | error.to(idle, on="shutdown")
    )

    # -- transport ----------------------------------------------------------------------------
    transport_connected = (
        connecting.to(active, cond="channel_is_up", on="session_up")
        | connecting.to.itself(internal=True, on="mark_media_up")
        | restarting.to(active, cond="channel_is_up", on="session_up")
        | restarting.to.itself(internal=True, on="mark_media_up")
        | reconnecting.to(active, cond="channel_is_up", on="session_up")
        | reconnecting.to.itself(internal=True, on="mark_media_up")
    )
    channel_open = (
        connecting.to(active, cond="media_is_up", on="session_up")
        | connecting.to.itself(internal=True, on="mark_channel_up")
        | restarting.to(active, cond="media_is_up", on="session_up")
        | restarting.to.itself(internal=True, on="mark_channel_up")
        | reconnecting.to(active, cond="media_is_up", on="session_up")
        | reconnecting.to.itself(internal=True, on="mark_channel_up")
    )
    ice_disconnected = (
        active.to(ice_grace, on="remember_active")
        | listening.to(ice_grace, on="remember_listening")
        | speaking.to(ice_grace, on="remember_speaking")
    )
    ice_recovered = (
        ice_grace.to(listening, cond="resume_listening")
        | ice_grace.to(speaking, cond="resume_speaking")
        | ice_grace.to(active)
    )
    transport_failed = (
        active.to(restarting, on="restart_transport")
        | listening.to(restarting, on="restart_transport")
        | speaking.to(restarting, on="restart_transport")
        | ice_grace.to(restarting, on="restart_transport")
        | connecting.to(backoff, cond="can_retry", on="wait_to_retry")
        | connecting.to(error, on="give_up")
        | restarting.to(backoff, cond="can_retry", on="wait_to_retry")
        | restarting.to(error, on="give_up")
        | reconnecting.to(backoff, cond="can_retry", on="wait_to_retry")
        | reconnecting.to(error, on="give_up")
    )
    session_expired = (
        active.to(restarting, on="restart_transport")
        | listening.to(restarting, on="restart_transport")
        | speaking.to(restarting, on="restart_transport")
        | ice_grace.to(restarting, on="restart_transport")
    )

    # -- signaling (severity-classified) --------------------------------------------------------
    signaling_failed = (
        connecting.to(error, cond="is_fatal", on="fail_fatal")
        | connecting.to(reconnecting, cond="quick_available", on="quick_reconnect")
        | connecting.to(backoff, cond="can_retry", on="wait_to_retry")
        | connecting.to(error, on="give_up")
        | restarting.to(error, cond="is_fatal", on="fail_fatal")
        | restarting.to(reconnecting, cond="quick_available", on="quick_reconnect")
        | restarting.to(backoff, cond="can_retry", on="wait_to_retry")
        | restarting.to(error, on="give_up")
        | reconnecting.to(error, cond="is_fatal", on="fail_fatal")
        | reconnecting.to.itself(cond="quick_available", on="quick_reconnect")
        | reconnecting.to(backoff, cond="can_retry", on="wait_to_retry")
        | reconnecting.to(error, on="give_up")
    )

    # -- server events ----------------------------------------------------------------------------
    speech_started = (
        active.to(listening)
        | speaking.to(listening)
        | listening.to.itself(internal=True)
        | ice_grace.to.itself(internal=True, on="remember_listening")
    )
    speech_stopped = (
        listening.to(active)
        | active.to.itself(internal=True)
        | speaking.to.itself(internal=True)
        | ice_grace.to.itself(internal=True, on="note_speech_stopped")
    )
    audio_started = (
        active.to(speaking)
        | listening.to(speaking)
        | speaking.to.itself(internal=True)
        | ice_grace.to.itself(internal=True, on="remember_speaking")
    )
    audio_stopped = (
        speaking.to(active)
        | active.to.itself(internal=True)
        | listening.to.itself(internal=True)
        | ice_grace.to.itself(internal=True, on="note_audio_stopped")
    )
    server_error = (
        connecting.to(error, cond="is_fatal", on="fail_fatal")
        | connecting.to.itself(internal=True, on="report_nonfatal")
        | active.to(error, cond="is_fatal", on="fail_fatal")
        | active.to.itself(internal=True, on="report_nonfatal")
        | listening.to(error, cond="is_fatal", on="fail_fatal")
        | listening.to.itself(internal=True, on="report_nonfatal")
        | speaking.to(error, cond="is_fatal", on="fail_fatal")
        | speaking.to.itself(internal=True, on="report_nonfatal")
        | ice_grace.to(error, cond="is_fatal", on="fail_fatal")
        | ice_grace.to.itself(internal=True, on="report_nonfatal")
        | restarting.to(error, cond="is_fatal", on="fail_fatal")
        | restarting.to.itself(internal=True, on="report_nonfatal")
        | reconnecting.to(error, cond="is_fatal", on="fail_fatal")
        | reconnecting.to.itself(internal=True, on="report_nonfatal")
    )

    # -- timers --------------------------------------------------------------------------------
    connect_timeout = (
        connecting.to(backoff, cond="can_retry", on="wait_to_retry")
        | connecting.to(error, on="give_up")
        | reconnecting.to(backoff, cond="can_retry", on="wait_to_retry")
        | reconnecting.to(error, on="give_up")
    )
    ice_grace_expired = ice_grace.to(restarting, on="restart_transport")
    restart_timeout = restarting.to(backoff, cond="can_retry", on="wait_to_retry") | restarting.to(
        error, on="give_up"
    )
    backoff_expired = backoff.to(reconnecting, on="retry_now")

    def __init__(
        self,
        retry: RetryPolicy | None = None,
        ice: IcePolicy | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self._init_logic(retry, ice, rng)
        super().__init__()

    # python-statemachine calls these for every entry / exit (not for internal transitions).
    def on_enter_state(self, state: State) -> None:
        if self.effects is not None:  # the initial entry happens before effects are consumed
            self._enter(state.id)

    def on_exit_state(self, state: State) -> None:
        self._exit(state.id)

    @property
    def state_id(self) -> str:
        return str(self.current_state_value)

    @property
    def status(self) -> str:
        return STATUS_OF[self.state_id]

    def take_effects(self) -> list[Effect]:
        out, self.effects = self.effects, []
        return out


#: Every event the machine knows, in declaration order.
EVENTS: Final[tuple[str, ...]] = tuple(
    e.id for e in LifecycleMachine.events  # type: ignore[attr-defined]
)
