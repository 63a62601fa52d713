"""The lifecycle, declared once, as data (normative text: ``specs/connection.md``).

Everything the engines, the explorer, the Promela model, the spec's tables and the diagrams know
about the lifecycle comes from the values below: the states (:data:`STATES`: status, timer,
entry updates), the machine's variables (:data:`VARIABLES`) and the transition table
(:data:`TABLE`), each :class:`Row` with its guard (a conjunction of :class:`Pred` from a small
vocabulary), its counter/flag :class:`Update` s and its :class:`Eff` ects.

Semantics (both engines): for one event, the rows of the current state are tried in order; the
first whose guard holds is taken. An ``internal`` row runs only its updates and effects. Any
other row runs: exit (cancel the source's timer), the row's updates and effects, entry (the
target's entry updates, then arm the target's timer). A guard or action that raises restores the
configuration, discards the event's effects and takes :data:`CRASH` instead.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Iterator
from typing import Final, Literal

import attrs

from fsm_voice.effects import OpenReason, Timer


class Status(enum.StrEnum):
    """The public statuses, exactly as the application sees them (SPEC-STATUS-1)."""

    IDLE = "idle"
    CONNECTING = "connecting"
    ACTIVE = "active"
    SPEAKING = "speaking"
    LISTENING = "listening"
    RECONNECTING = "reconnecting"
    ERROR = "error"


@attrs.frozen
class Update:
    """``var = value`` (``op="set"``) or ``var += 1`` (``op="inc"``)."""

    var: str
    op: Literal["set", "inc"] = "set"
    value: bool | int | str = 0

    def __str__(self) -> str:
        if self.op == "inc":
            return f"{self.var}+=1"
        v = str(self.value).lower() if isinstance(self.value, bool) else self.value
        return f"{self.var}={v}"


def SET(var: str, value: bool | int | str) -> Update:
    return Update(var, "set", value)


@attrs.frozen
class StateDecl:
    name: str
    status: Status
    timer: Timer | None
    """The one timer kept armed while this state is current (SPEC-TIMER-1)."""
    transport: bool
    """Whether a transport is open (or being opened) in this state."""
    meaning: str
    entry: tuple[Update, ...] = ()


_NOT_GRACE = (SET("resume", "active"),)
_CONNECTING_ENTRY = (SET("media_up", False), SET("channel_up", False), SET("rollover", "off"),
                     *_NOT_GRACE)

STATES: Final[tuple[StateDecl, ...]] = (
    StateDecl("idle", Status.IDLE, None, False, "no session; nothing open, nothing armed",
              (SET("attempts", 0), SET("quick_used", False), SET("media_up", False),
               SET("channel_up", False), SET("episode", False), SET("rollover", "off"),
               *_NOT_GRACE)),
    StateDecl("connecting", Status.CONNECTING, Timer.CONNECT_TIMEOUT, True,
              "first connection of a session", _CONNECTING_ENTRY),
    StateDecl("active", Status.ACTIVE, None, True, "session up, nobody speaking", _NOT_GRACE),
    StateDecl("listening", Status.LISTENING, None, True, "the user speaks", _NOT_GRACE),
    StateDecl("speaking", Status.SPEAKING, None, True, "the assistant's audio plays",
              _NOT_GRACE),
    StateDecl("ice_grace", Status.ACTIVE, Timer.ICE_GRACE, True,
              "the path looks dead; waiting up to the grace period for it to return"),
    StateDecl("restarting", Status.RECONNECTING, Timer.RESTART_TIMEOUT, True,
              "transport restart: new peer connection, same session", _CONNECTING_ENTRY),
    StateDecl("backoff", Status.RECONNECTING, Timer.BACKOFF, False,
              "waiting before the next reconnect attempt; no transport open",
              (SET("rollover", "off"), *_NOT_GRACE)),
    StateDecl("reconnecting", Status.RECONNECTING, Timer.CONNECT_TIMEOUT, True,
              "a reconnect attempt in progress", _CONNECTING_ENTRY),
    StateDecl("error", Status.ERROR, None, False, "given up; nothing open",
              (SET("media_up", False), SET("channel_up", False), SET("episode", False),
               SET("rollover", "off"), *_NOT_GRACE)),
)
STATE: Final = {s.name: s for s in STATES}

#: The machine's variables and their initial values (the configuration is the state plus these).
VARIABLES: Final[dict[str, bool | int | str]] = {
    "attempts": 0,       # backoff reconnect attempts started in the failure episode
    "quick_used": False,  # the episode's one immediate retry after a transient failure is spent
    "media_up": False,   # transport_connected seen on the connection being set up
    "channel_up": False,  # channel_open seen on the connection being set up
    "episode": False,    # a failure episode is open: the session has not been up stable_after s
    "resume": "active",  # the speech status ice_recovered returns to (kept during ice_grace)
    "rollover": "off",   # off | armed (ROLLOVER timer armed) | pending (due while busy)
}
VALUES: Final[dict[str, tuple[bool | int | str, ...]]] = {
    "resume": ("active", "listening", "speaking"),
    "rollover": ("off", "armed", "pending"),
}

WORKING: Final = ("active", "listening", "speaking", "ice_grace")
"""States with a session up (ice_grace: up, path in doubt)."""
CONNECTING: Final = ("connecting", "restarting", "reconnecting")
"""States waiting for a transport to come up."""

#: Error severities carried by ``signaling_failed`` / ``server_error`` (``severity=``).
SEVERITIES: Final = ("transient", "recoverable", "fatal", "ignorable")

#: The reasons a Live ``session.closed`` carries (``session_closed``'s ``code=``, verbatim from
#: the server; anything else, "unknown" included, takes the unknown-reason rows).
CLOSE_REASONS: Final = ("close_requested", "expired", "content", "remote_hangup",
                        "connection_lost")
#: Close reasons after which the conversation goes on in a new session (seeded with history).
RETRIED_CLOSES: Final = ("expired", "connection_lost")
#: Close reasons that end the session on purpose: back to ``idle``, the reason reported.
ENDING_CLOSES: Final = ("close_requested", "remote_hangup")


@attrs.frozen
class Pred:
    """One atomic guard condition; ``neg`` negates it.

    kinds: ``severity`` (arg: value), ``code`` (arg: value), ``retry_after_set``,
    ``retry_after_too_long`` (policy ``max_retry_after``), ``expires_valid`` (policy
    :class:`~fsm_voice.policy.RolloverPolicy`), ``attempts_below_max`` (policy ``max_attempts``),
    ``flag`` (arg: boolean variable), ``is`` (arg: variable, value).
    """

    kind: Literal["severity", "code", "retry_after_set", "retry_after_too_long",
                  "expires_valid", "attempts_below_max", "flag", "is"]
    arg: str = ""
    value: str = ""
    neg: bool = False

    @property
    def name(self) -> str:
        """The positive predicate's callback name (python-statemachine ``cond``)."""
        if self.kind in ("severity", "code"):
            return f"{self.kind}_is_{self.arg}"
        if self.kind == "flag":
            return self.arg
        if self.kind == "is":
            return f"{self.arg}_is_{self.value}"
        return self.kind

    def __str__(self) -> str:
        return f"not {self.name}" if self.neg else self.name

    def negated(self) -> Pred:
        return attrs.evolve(self, neg=not self.neg)


def sev(value: str) -> Pred:
    return Pred("severity", value)


def flag(name: str) -> Pred:
    return Pred("flag", name)


def is_(var: str, value: str) -> Pred:
    return Pred("is", var, value)


CAN_RETRY: Final = Pred("attempts_below_max")
RA_TOO_LONG: Final = Pred("retry_after_too_long")
RA_SET: Final = Pred("retry_after_set")
EXPIRES_VALID: Final = Pred("expires_valid")


@attrs.frozen
class Eff:
    """One effect the row emits (see :mod:`fsm_voice.effects`), optionally only ``when`` a
    predicate holds (evaluated before the row's updates).

    kinds: ``open`` (reason; ``counted``: attempt number = ``attempts``, else 0), ``close``,
    ``arm`` / ``cancel`` (timer), ``report`` (code, severity; empty = the event's own),
    ``new_conversation``, ``connection_up`` (replay).
    """

    kind: Literal["open", "close", "arm", "cancel", "report", "new_conversation",
                  "connection_up"]
    reason: OpenReason | None = None
    counted: bool = False
    timer: Timer | None = None
    code: str = ""
    severity: str = ""
    replay: bool = False
    when: Pred | None = None

    def __str__(self) -> str:
        if self.kind == "open":
            body = f"open({self.reason}{', attempt' if self.counted else ''})"
        elif self.kind in ("arm", "cancel"):
            body = f"{self.kind}({self.timer})"
        elif self.kind == "report":
            body = f"report({self.code or 'code'}, {self.severity or 'severity'})"
        elif self.kind == "connection_up":
            body = f"connection_up(replay={str(self.replay).lower()})"
        else:
            body = self.kind
        return f"{body} if {self.when}" if self.when is not None else body


@attrs.frozen
class Row:
    source: str
    event: str
    target: str
    guard: tuple[Pred, ...] = ()
    updates: tuple[Update, ...] = ()
    effects: tuple[Eff, ...] = ()
    internal: bool = False
    label: str = "-"
    """A short name for what the row does (spec table, diagrams, traces)."""

    @property
    def guard_text(self) -> str:
        return " and ".join(map(str, self.guard)) or "-"


# -- effect building blocks ----------------------------------------------------------------------
def _close(source: str, fired: Timer | None = None,
           episode: bool | None = None) -> tuple[Eff, ...]:
    """Close the transport of ``source`` and cancel the timers that belong to it (but not
    ``fired``, the timer whose expiry is the event). ``episode``: whether the row's guard
    already decides that an episode is open (then ``session_stable`` is armed) or not."""
    out = [Eff("close")]
    if source in WORKING and episode is not False:
        out.append(Eff("cancel", timer=Timer.STABLE,
                       when=None if episode else flag("episode")))
    if fired is not Timer.ROLLOVER:
        out.append(Eff("cancel", timer=Timer.ROLLOVER, when=is_("rollover", "armed")))
    return tuple(out)


_CLOSED: Final[tuple[Update, ...]] = ()
"""Updates of a row that closes the transport: none (every state entered then resets
``rollover`` on entry)."""


def _report(code: str = "", severity: str = "") -> Eff:
    return Eff("report", code=code, severity=severity)


# Events that carry a Retry-After (``retry_after=``).
RETRY_AFTER_EVENTS: Final = frozenset({"signaling_failed", "server_error"})


def _fail(source: str, event: str, pre: tuple[Pred, ...] = (),
          report: tuple[Eff, ...] = ()) -> Iterator[Row]:
    """A failed attempt (or a failure inside an open episode): back off and count, or give up."""
    close = _close(source, episode=True if flag("episode") in pre else None)
    if event in RETRY_AFTER_EVENTS:
        yield Row(source, event, "error", (*pre, RA_TOO_LONG), _CLOSED,
                  (*close, _report("retry_after_too_long", "fatal")), label="retry_after_too_long")
    yield Row(source, event, "backoff", (*pre, CAN_RETRY), _CLOSED, (*close, *report),
              label="back_off")
    yield Row(source, event, "error", pre, _CLOSED,
              (*close, _report("retries_exhausted", "fatal")), label="give_up")


def _restart(source: str, event: str, guard: tuple[Pred, ...] = (),
             report: tuple[Eff, ...] = (), label: str = "restart",
             episode: bool | None = None) -> Row:
    fired = Timer.ROLLOVER if event == Timer.ROLLOVER.value else None
    return Row(source, event, "restarting", guard, (*_CLOSED, SET("episode", True)),
               (*_close(source, fired, episode), *report, Eff("open", OpenReason.RESTART)),
               label=label)


def _damped(source: str, event: str, pre: tuple[Pred, ...] = (),
            report: tuple[Eff, ...] = ()) -> Iterator[Row]:
    """A working connection failed: inside an open episode it counts as a failed attempt
    (flap damping), otherwise the transport restarts at once."""
    yield from _fail(source, event, (*pre, flag("episode")), report)
    yield _restart(source, event, pre, report, episode=False)


def _fatal(source: str, event: str) -> Row:
    close = _close(source) if STATE[source].transport else ()
    return Row(source, event, "error", (sev("fatal"),), _CLOSED if close else (),
               (*close, _report("", "fatal")), label="fail_fatal")


def _session_info(source: str) -> Iterator[Row]:
    if source in WORKING and source != "active":  # active with a pending rollover restarts
        yield Row(source, "session_info", source, (EXPIRES_VALID, is_("rollover", "pending")),
                  internal=True, label="keep_pending")
    yield Row(source, "session_info", source, (EXPIRES_VALID,), (SET("rollover", "armed"),),
              (Eff("cancel", timer=Timer.ROLLOVER, when=is_("rollover", "armed")),
               Eff("arm", timer=Timer.ROLLOVER)), internal=True, label="arm_rollover")
    yield Row(source, "session_info", source, (), (),
              (_report("invalid_expires_in", "transient"),), internal=True,
              label="ignore_expires_in")


def _session_closed(source: str) -> Iterator[Row]:
    """The server ended the (Live) session with ``code=<reason>`` (SPEC-CLOSE-1..3)."""
    ev = "session_closed"
    for reason in RETRIED_CLOSES:  # a failure: a new session, damped and bounded
        pre, report = (Pred("code", reason),), (_report("", "recoverable"),)
        if source in WORKING:
            yield from _damped(source, ev, pre, report)
        else:
            yield from _fail(source, ev, pre, report)
    close = _close(source)
    for reason in ENDING_CLOSES:
        yield Row(source, ev, "idle", (Pred("code", reason),), _CLOSED,
                  (*close, _report(reason, "fatal")), label="session_ended")
    yield Row(source, ev, "error", (Pred("code", "content"),), _CLOSED,
              (*close, _report("content", "fatal")), label="closed_for_content")
    yield Row(source, ev, "error", (), _CLOSED,
              (*close, _report("unknown_close_reason", "fatal")), label="unknown_close_reason")


def _build() -> tuple[Row, ...]:
    rows: list[Row] = []
    add = rows.append
    start = Row("idle", "start", "connecting", (),
                (SET("attempts", 0), SET("quick_used", False), SET("episode", True)),
                (Eff("new_conversation"), Eff("open", OpenReason.START)), label="begin_session")
    add(start)
    add(Row("idle", "stop", "idle", internal=True))
    speech = {"active": "active", "listening": "listening", "speaking": "speaking"}
    for s in ("connecting", "active", "listening", "speaking", "ice_grace", "restarting",
              "backoff", "reconnecting"):
        close = _close(s) if STATE[s].transport else ()
        add(Row(s, "stop", "idle", (), _CLOSED if close else (), close, label="shutdown"))
        if s in CONNECTING:
            up = (Eff("arm", timer=Timer.STABLE),
                  Eff("connection_up", replay=s != "connecting"))
            for ev, other, mine in (("transport_connected", "channel_up", "media_up"),
                                    ("channel_open", "media_up", "channel_up")):
                add(Row(s, ev, "active", (flag(other),), (), up, label="session_up"))
                add(Row(s, ev, s, (), (SET(mine, True),), internal=True, label=f"mark_{mine}"))
            rows.extend(_fail(s, "transport_failed"))
            add(_fatal(s, "signaling_failed"))
            add(Row(s, "signaling_failed", "error", (RA_TOO_LONG,), _CLOSED,
                    (*_close(s), _report("retry_after_too_long", "fatal")),
                    label="retry_after_too_long"))
            add(Row(s, "signaling_failed", "reconnecting",
                    (sev("transient"), flag("quick_used").negated(), RA_SET.negated()),
                    (*_CLOSED, SET("quick_used", True)),
                    (*_close(s), Eff("open", OpenReason.RECONNECT)), label="quick_reconnect"))
            add(Row(s, "signaling_failed", "backoff", (CAN_RETRY,), _CLOSED, _close(s),
                    label="back_off"))
            add(Row(s, "signaling_failed", "error", (), _CLOSED,
                    (*_close(s), _report("retries_exhausted", "fatal")), label="give_up"))
            add(_fatal(s, "server_error"))
            add(Row(s, "server_error", s, (sev("ignorable"),), internal=True, label="ignore"))
            rows.extend(_fail(s, "server_error", (sev("recoverable"),), (_report(),)))
            add(Row(s, "server_error", s, (), (), (_report(),), internal=True,
                    label="report_nonfatal"))
            rows.extend(_session_info(s))
            add(Row(s, "rollover_due", s, (), (SET("rollover", "off"),), internal=True,
                    label="drop_rollover"))
            timeout = "restart_timeout" if s == "restarting" else "connect_timeout"
            rows.extend(_fail(s, timeout))
            rows.extend(_session_closed(s))
        elif s in WORKING:
            if s != "ice_grace":
                add(Row(s, "ice_disconnected", "ice_grace", (), (SET("resume", speech[s]),),
                        label=f"remember_{speech[s]}"))
            else:
                add(Row(s, "ice_recovered", "listening", (is_("resume", "listening"),),
                        label="resume_listening"))
                add(Row(s, "ice_recovered", "speaking", (is_("resume", "speaking"),),
                        label="resume_speaking"))
                add(_restart(s, "ice_recovered", (is_("rollover", "pending"),),
                             label="rollover"))
                add(Row(s, "ice_recovered", "active", label="resume_active"))
            rows.extend(_damped(s, "transport_failed"))
            if s == "ice_grace":
                rows.extend(_damped(s, "ice_grace_expired"))
            # speech / audio (SPEC-ICE-4: remembered during the grace period)
            if s == "active":
                add(Row(s, "speech_started", "listening"))
                add(Row(s, "speech_stopped", s, internal=True))
                add(Row(s, "audio_started", "speaking"))
                add(Row(s, "audio_stopped", s, internal=True))
            elif s == "listening":
                add(Row(s, "speech_started", s, internal=True))
                add(_restart(s, "speech_stopped", (is_("rollover", "pending"),),
                             label="rollover"))
                add(Row(s, "speech_stopped", "active"))
                add(Row(s, "audio_started", "speaking"))
                add(Row(s, "audio_stopped", s, internal=True))
            elif s == "speaking":
                add(Row(s, "speech_started", "listening"))
                add(Row(s, "speech_stopped", s, internal=True))
                add(Row(s, "audio_started", s, internal=True))
                add(_restart(s, "audio_stopped", (is_("rollover", "pending"),),
                             label="rollover"))
                add(Row(s, "audio_stopped", "active"))
            else:
                add(Row(s, "speech_started", s, (), (SET("resume", "listening"),),
                        internal=True, label="remember_listening"))
                add(Row(s, "speech_stopped", s, (is_("resume", "listening"),),
                        (SET("resume", "active"),), internal=True, label="note_speech_stopped"))
                add(Row(s, "speech_stopped", s, internal=True))
                add(Row(s, "audio_started", s, (), (SET("resume", "speaking"),),
                        internal=True, label="remember_speaking"))
                add(Row(s, "audio_stopped", s, (is_("resume", "speaking"),),
                        (SET("resume", "active"),), internal=True, label="note_audio_stopped"))
                add(Row(s, "audio_stopped", s, internal=True))
            # server errors, decided by the classifier's severity (and code)
            add(_fatal(s, "server_error"))
            add(Row(s, "server_error", s, (sev("ignorable"),), internal=True, label="ignore"))
            expired = (Pred("code", "session_expired"),)
            rows.extend(_damped(s, "server_error", expired))
            rec = (sev("recoverable"),)
            add(Row(s, "server_error", "error", (*rec, RA_TOO_LONG), _CLOSED,
                    (*_close(s), _report("retry_after_too_long", "fatal")),
                    label="retry_after_too_long"))
            rows.extend(r for r in _fail(s, "server_error", (*rec, flag("episode")),
                                         (_report(),)) if r.label != "retry_after_too_long")
            add(Row(s, "server_error", "backoff", (*rec, RA_SET, CAN_RETRY),
                    (*_CLOSED, SET("episode", True)), (*_close(s, episode=False), _report()),
                    label="back_off"))
            add(Row(s, "server_error", "error", (*rec, RA_SET), _CLOSED,
                    (*_close(s, episode=False), _report("retries_exhausted", "fatal")),
                    label="give_up"))
            add(_restart(s, "server_error", rec, (_report(),), episode=False))
            add(Row(s, "server_error", s, (), (), (_report(),), internal=True,
                    label="report_nonfatal"))
            rows.extend(_session_info(s))
            if s == "active":
                add(_restart(s, "rollover_due", label="rollover"))
            else:
                add(Row(s, "rollover_due", s, (), (SET("rollover", "pending"),), internal=True,
                        label="rollover_pending"))
            add(Row(s, "session_stable", s, (),
                    (SET("attempts", 0), SET("quick_used", False), SET("episode", False)),
                    internal=True, label="episode_ends"))
            rows.extend(_session_closed(s))
        elif s == "backoff":
            add(Row(s, "backoff_expired", "reconnecting", (), (Update("attempts", "inc"),),
                    (Eff("open", OpenReason.RECONNECT, counted=True),), label="retry_now"))
    add(attrs.evolve(start, source="error"))
    add(Row("error", "stop", "idle", label="shutdown"))
    return tuple(rows)


TABLE: Final[tuple[Row, ...]] = _build()
"""The transition table, in priority order."""

#: What any raising guard or action leads to (SPEC-CRASH-1): the configuration before the event
#: is restored, the event's effects are discarded, then this row is taken from whatever state.
CRASH: Final = Row("*", "<exception>", "error", (), _CLOSED,
                   (*(Eff("cancel", timer=t) for t in Timer), Eff("close"),
                    Eff("report", code="machine_error", severity="fatal")), label="crash")

TIMER_EVENTS: Final = frozenset(t.value for t in Timer)


def events(table: Iterable[Row] = TABLE) -> tuple[str, ...]:
    """Every event of ``table``, in first-declaration order."""
    return tuple(dict.fromkeys(r.event for r in table))


EVENTS: Final = events()
STATUS_OF: Final[dict[str, str]] = {s.name: str(s.status) for s in STATES}
TIMER_OF: Final[dict[str, Timer]] = {s.name: s.timer for s in STATES if s.timer is not None}
