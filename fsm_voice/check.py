"""Exhaustive exploration of the lifecycle, its invariants, liveness, and the Promela translation.

:func:`explore` visits every reachable configuration (machine state and variables, armed timers,
whether a transport is open, and three observers computed from events and effects alone: the
speech status, the counted reconnects of the episode, and which halves of the connection were
seen) under every event and every parameter class, breadth first, so each configuration is
reached by a shortest event trace. Timer events are delivered only while their timer is armed
(the runtime drops stale ones). Every step is checked against the invariants of
``specs/connection.md`` (:data:`INVARIANTS`); the first violation comes with its shortest trace.

:func:`to_promela` translates the table itself (guards, updates, effects; not the explored graph)
into a Promela model for spin, the second opinion: its reachable state count must equal the
explorer's configuration count, and it proves the LTL properties of :data:`LTL_PROPERTIES`.
"""

from __future__ import annotations

import collections
import math
import re
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, Final

import attrs
from statemachine.exceptions import TransitionNotAllowed

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
from fsm_voice.fastpath import FastLifecycle
from fsm_voice.machine import LifecycleMachine
from fsm_voice.machine.logic import LifecycleLogic, Snapshot
from fsm_voice.machine.table import (
    CLOSE_REASONS,
    CONNECTING,
    CRASH,
    ENDING_CLOSES,
    RETRIED_CLOSES,
    RETRY_AFTER_EVENTS,
    SEVERITIES,
    STATE,
    STATES,
    STATUS_OF,
    TIMER_EVENTS,
    VALUES,
    VARIABLES,
    WORKING,
    Eff,
    Pred,
    Row,
    Status,
    Update,
    events,
)
from fsm_voice.policy import RetryPolicy, RolloverPolicy

#: The policy of every check: exact delays (no jitter).
CHECK_RETRY: Final = RetryPolicy(jitter=0.0)
CHECK_ROLLOVER: Final = RolloverPolicy()

#: Parameter classes: one representative each (the equality test also uses other members).
RETRY_AFTER_CLASSES: Final[dict[str, float | None]] = {
    "none": None, "short": 1.0, "long": 5.0, "too_long": 120.0}
EXPIRES_IN_CLASSES: Final[dict[str, float]] = {
    "valid": 1800.0, "soon": 10.0, "invalid": 0.0}
CODE_CLASSES: Final = {"other": "test_code", "session_expired": "session_expired"}
#: ``session_closed`` codes: the five reasons and one the table does not know.
CLOSE_CODES: Final = (*CLOSE_REASONS, "unknown")
SPEECH: Final = ("active", "listening", "speaking")


@attrs.frozen
class Letter:
    """One input of the exploration: an event with its parameters."""

    event: str
    severity: str | None = None
    code: str = ""
    retry_after: float | None = None
    expires_in: float | None = None

    def __str__(self) -> str:
        params = []
        if self.severity:
            params.append(self.severity)
        if self.code:
            params.append(f"code={self.code}")
        if self.retry_after is not None:
            params.append(f"retry_after={self.retry_after:g}")
        if self.expires_in is not None:
            params.append(f"expires_in={self.expires_in:g}")
        return f"{self.event}[{', '.join(params)}]" if params else self.event

    def kwargs(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.severity is not None:
            out["severity"] = self.severity
        if self.code:
            out["code"] = self.code
        if self.retry_after is not None:
            out["retry_after"] = self.retry_after
        if self.expires_in is not None:
            out["expires_in"] = self.expires_in
        return out


def letters_for(
    event: str,
    retry_afters: Iterable[float | None] = RETRY_AFTER_CLASSES.values(),
    expires_ins: Iterable[float] = EXPIRES_IN_CLASSES.values(),
) -> list[Letter]:
    if event == "signaling_failed":
        return [Letter(event, s, "", ra) for s in SEVERITIES for ra in retry_afters]
    if event == "server_error":
        return [Letter(event, s, c, ra) for s in SEVERITIES for c in CODE_CLASSES.values()
                for ra in retry_afters]
    if event == "session_info":
        return [Letter(event, expires_in=x) for x in expires_ins]
    if event == "session_closed":
        return [Letter(event, code=c) for c in CLOSE_CODES]
    return [Letter(event)]


def alphabet(table: Iterable[Row] | None = None) -> tuple[Letter, ...]:
    """Every event x every parameter class (one representative per class)."""
    from fsm_voice.machine.table import TABLE

    return tuple(x for e in events(table if table is not None else TABLE)
                 for x in letters_for(e))


# -- configurations ------------------------------------------------------------------------------
Observer = tuple[str, int, bool, bool, bool, bool]
"""(speech status implied by speech events on this connection, counted reconnects in the
episode, transport_connected seen on this connection, channel_open seen on this connection,
an uncounted (quick) reconnect made in the episode, rollover_due fired since this connection
came up)."""
INITIAL_OBSERVER: Final[Observer] = ("active", 0, False, False, False, False)


@attrs.frozen
class Config:
    machine: Snapshot
    armed: frozenset[Timer]
    transport_open: bool
    observer: Observer = INITIAL_OBSERVER

    @property
    def state(self) -> str:
        return str(self.machine[0])

    def var(self, name: str) -> Any:
        return self.machine[1 + list(VARIABLES).index(name)]

    @property
    def attempts(self) -> int:
        return int(self.var("attempts"))


@attrs.frozen
class Edge:
    source: int
    letter: Letter
    target: int
    row: Row
    effects: tuple[Effect, ...]


@attrs.frozen
class Violation:
    rule: str
    message: str
    trace: tuple[str, ...]

    def __str__(self) -> str:
        steps = " -> ".join(self.trace) if self.trace else "(initial state)"
        return f"{self.rule}: {self.message}\n  shortest trace: {steps}"


@attrs.define
class Exploration:
    configs: list[Config]
    edges: list[Edge]
    refusals: int
    violations: list[Violation]
    parent: dict[int, tuple[int, Letter]]

    def trace_to(self, index: int) -> tuple[str, ...]:
        steps: list[str] = []
        while index in self.parent:
            index, letter = self.parent[index]
            steps.append(str(letter))
        return tuple(reversed(steps))

    @property
    def rows_taken(self) -> set[Row]:
        return {e.row for e in self.edges}

    def summary(self) -> dict[str, int]:
        return {
            "configurations": len(self.configs),
            "transitions": len(self.edges),
            "refused (event, configuration) pairs": self.refusals,
            "machine states": len({c.state for c in self.configs}),
            "table rows taken": len(self.rows_taken),
            "violations": len(self.violations),
        }


#: Every explorer invariant (ID -> what it asserts); rendered into the spec.
INVARIANTS: Final[dict[str, str]] = {
    "INV-STRICT-1": "a refused event changes no state, variable or effect",
    "INV-STATUS-1": "every state shows one of the statuses of SPEC-STATUS-1",
    "INV-RETRY-1": "`attempts <= max_attempts`, and so is the number of counted reconnects",
    "INV-RETRY-2": "the backoff before attempt *n* is `max(base * factor^n, retry_after)`",
    "INV-RETRY-3": "the n-th counted reconnect of an episode is `OpenTransport(reconnect, n)`; "
                   "the count restarts only at `start`, `stop` and `session_stable`",
    "INV-RETRY-4": "`retries_exhausted` is reported only after `max_attempts` counted reconnects",
    "INV-RETRY-5": "a failure with `retry_after` that replaces the connection waits in backoff "
                   "(except `session_expired`: a rollover); none waits beyond "
                   "`max_retry_after`: `retry_after_too_long` ends in `error`",
    "INV-TIMER-1": "the armed timers are exactly the state's timer, `session_stable` while an "
                   "episode is open in a working state, `rollover_due` while armed",
    "INV-TIMER-2": "no timer is armed twice",
    "INV-TIMER-3": "an armed timer's expiry is always accepted",
    "INV-TIMER-4": "`session_stable` and `rollover_due` are armed only while a transport is open",
    "INV-TIMER-5": "only armed timers are cancelled (not the one that just fired)",
    "INV-TIMER-6": "an event that keeps the state and the connection does not touch the state's "
                   "timer",
    "INV-TRANSPORT-1": "no transport is opened while another is open",
    "INV-TRANSPORT-2": "no transport is open in `idle`, `error`, `backoff`",
    "INV-TRANSPORT-3": "the working and connecting states have an open transport",
    "INV-TRANSPORT-4": "a transport is set up in the state of its reason: start in `connecting`, "
                       "restart in `restarting`, reconnect in `reconnecting`",
    "INV-FATAL-1": "a fatal event leads to `error` and opens nothing",
    "INV-STOP-1": "`stop` leads to `idle`, no timer armed, transport closed",
    "INV-START-1": "`start` emits `NewConversation` then `OpenTransport(start)`, resets the "
                   "attempts; nothing else enters `connecting`",
    "INV-UP-1": "reaching a working state from a connecting one needs both halves seen on that "
                "connection and emits `ConnectionUp(replay)` (replay iff not from `connecting`) "
                "and arms `session_stable`; nothing else emits `ConnectionUp`",
    "INV-ICE-1": "`ice_disconnected` in a working state enters `ice_grace`; `ice_recovered` "
                 "leaves it",
    "INV-ICE-4": "in `active`/`listening`/`speaking` the state is the speech status implied by "
                 "the speech/audio events seen on the connection",
    "INV-DAMP-2": "outside an episode, a failure of a working connection (transport, grace, "
                  "recoverable server error without `retry_after`, `session_expired`, "
                  "`session_closed` `expired` / `connection_lost`) restarts the transport at "
                  "once",
    "INV-REPORT-1": "entering `error` reports exactly one fatal error: the event's code for a "
                    "fatal event, `content` / `unknown_close_reason` for a `session_closed`, "
                    "else `retry_after_too_long` or `retries_exhausted`; a fatal report leads "
                    "to `error`, or to `idle` for a session the server ended on purpose",
    "INV-DAMP-1": "a transport restart that is not a rollover happens only in a stable session "
                  "(`session_stable` not armed); inside an episode a failure backs off",
    "INV-SERVER-1": "an ignorable server error changes nothing and emits nothing; a transient "
                    "one (not `session_expired` in a working state) keeps the state, only reports",
    "INV-SERVER-2": "a recoverable server error never keeps the connection and is reported "
                    "(as itself, unless it ends the session)",
    "INV-SERVER-3": "`session_expired` in a working state replaces the connection",
    "INV-QUICK-1": "an uncounted reconnect follows only a transient signaling failure without "
                   "`retry_after`, exactly once per episode (the first such failure)",
    "INV-ROLLOVER-1": "`rollover_due` is armed only with a finite delay >= `min_interval`; an "
                      "unusable `expires_in` arms nothing and is reported",
    "INV-ROLLOVER-2": "a rollover restarts exactly when `rollover_due` has fired on this "
                      "connection and the session is (back) in `active`",
    "INV-CLOSE-1": "`session_closed` `close_requested` / `remote_hangup` leads to `idle`, "
                   "closes the transport and reports the reason once, fatal",
    "INV-CLOSE-2": "`session_closed` `content`, or a reason the table does not know, leads to "
                   "`error` and opens nothing (no retry)",
    "INV-CLOSE-3": "`session_closed` `expired` / `connection_lost` never keeps the connection "
                   "and never ends in `idle`: it restarts (a new session), backs off or gives "
                   "up, and is reported as itself (recoverable) unless it gives up",
    "INV-CRASH-1": "a raising callback in any configuration ends in `error`: event undone, "
                   "every timer cancelled, transport closed, `machine_error` reported",
    "LIVE-1": "a peer that fails every connection drives the session to `error` "
              "(no cycle in the failing-peer graph)",
}


def expected_timers(c: Config) -> set[Timer]:
    out: set[Timer] = set()
    decl = STATE[c.state]
    if decl.timer is not None:
        out.add(decl.timer)
    if c.state in WORKING and c.var("episode"):
        out.add(Timer.STABLE)
    if c.var("rollover") == "armed":
        out.add(Timer.ROLLOVER)
    return out


_ROLLOVER_LETTERS: Final = frozenset({"rollover_due", "speech_stopped", "audio_stopped",
                                      "ice_recovered"})


def _observe(obs: Observer, letter: Letter, effects: Iterable[Effect]) -> Observer:
    speech, tries, seen_media, seen_channel, quick, due = obs
    e = letter.event
    if e == "speech_started":
        speech = "listening"
    elif e == "speech_stopped" and speech == "listening":
        speech = "active"
    elif e == "audio_started":
        speech = "speaking"
    elif e == "audio_stopped" and speech == "speaking":
        speech = "active"
    elif e in ("start", "stop", "session_stable"):
        tries, quick = 0, False
    elif e == "transport_connected":
        seen_media = True
    elif e == "channel_open":
        seen_channel = True
    elif e == "rollover_due":
        due = True
    for eff in effects:
        if isinstance(eff, ConnectionUp):
            due = False
        if isinstance(eff, OpenTransport | CloseTransport):
            speech, seen_media, seen_channel, due = "active", False, False, False
            if isinstance(eff, OpenTransport) and eff.reason is OpenReason.RECONNECT:
                if eff.attempt > 0:
                    tries += 1
                else:
                    quick = True
    return speech, tries, seen_media, seen_channel, quick, due


def _step_problems(
    before: Config, letter: Letter, after_machine: Snapshot, effects: tuple[Effect, ...],
    retry: RetryPolicy, rollover: RolloverPolicy,
) -> tuple[Config, list[tuple[str, str]]]:
    """Apply the effects to the environment model; return the new configuration and problems."""
    p: list[tuple[str, str]] = []
    armed = set(before.armed)
    if letter.event in TIMER_EVENTS:
        armed.discard(Timer(letter.event))
    topen = before.transport_open
    obs = _observe(before.observer, letter, ())
    tries = obs[1]
    state_after = str(after_machine[0])
    attempts_after = int(after_machine[1 + list(VARIABLES).index("attempts")])
    for eff in effects:
        if isinstance(eff, ArmTimer):
            if eff.timer in armed:
                p.append(("INV-TIMER-2", f"{eff.timer} armed twice"))
            armed.add(eff.timer)
            if eff.timer is Timer.BACKOFF:
                nominal = retry.delays()[attempts_after] if attempts_after < len(
                    retry.delays()) else None
                ra = letter.retry_after if letter.event in RETRY_AFTER_EVENTS else None
                expected = None if nominal is None else max(nominal, ra or 0.0)
                if eff.delay != expected:
                    p.append(("INV-RETRY-2", f"backoff {eff.delay} s, expected {expected} s"))
                if ra is not None and ra > retry.max_retry_after:
                    p.append(("INV-RETRY-5", f"waits for retry_after {ra} s"))
            if eff.timer is Timer.ROLLOVER and not (
                    math.isfinite(eff.delay) and eff.delay >= rollover.min_interval):
                p.append(("INV-ROLLOVER-1", f"rollover armed with delay {eff.delay}"))
        elif isinstance(eff, CancelTimer):
            if eff.timer not in armed:
                p.append(("INV-TIMER-5", f"{eff.timer} cancelled while not armed"))
            armed.discard(eff.timer)
        elif isinstance(eff, OpenTransport):
            if topen:
                p.append(("INV-TRANSPORT-1", "transport opened while one is still open"))
            topen = True
            if eff.reason is OpenReason.RECONNECT and eff.attempt > 0:
                tries += 1
                if eff.attempt != tries:
                    p.append(("INV-RETRY-3", f"reconnect numbered {eff.attempt}, it is the "
                              f"{tries}. counted one of the episode"))
            if eff.reason is OpenReason.RECONNECT and eff.attempt == 0 and not (
                    letter.event == "signaling_failed" and letter.severity == "transient"
                    and letter.retry_after is None):
                p.append(("INV-QUICK-1", f"uncounted reconnect on {letter}"))
        elif isinstance(eff, CloseTransport):
            topen = False
        elif isinstance(eff, ReportError):
            if eff.code == "retries_exhausted" and tries != retry.max_attempts:
                p.append(("INV-RETRY-4", f"retries exhausted after {tries} counted reconnects"))
            if eff.code == "retry_after_too_long" and state_after != "error":
                p.append(("INV-RETRY-5", f"retry_after_too_long leads to {state_after}"))
    new = Config(after_machine, frozenset(armed), topen, _observe(before.observer, letter,
                                                                    effects))
    return new, p


def _edge_problems(before: Config, letter: Letter, new: Config, effects: tuple[Effect, ...],
                   retry: RetryPolicy, rollover: RolloverPolicy) -> list[tuple[str, str]]:
    p: list[tuple[str, str]] = []
    src, dst, ev = before.state, new.state, letter.event
    kinds = [type(e) for e in effects]
    opens = [e for e in effects if isinstance(e, OpenTransport)]
    closes = CloseTransport in kinds
    if letter.severity == "fatal" and (dst != "error" or opens):
        p.append(("INV-FATAL-1", f"fatal {ev} led to {dst}"))
    if ev == "stop" and (dst != "idle" or new.armed or new.transport_open):
        p.append(("INV-STOP-1", f"stop left {dst}, timers {sorted(new.armed)}, "
                  f"transport open={new.transport_open}"))
    if ev == "start" and (kinds[:2] != [NewConversation, OpenTransport]
                          or opens[0].reason is not OpenReason.START or dst != "connecting"
                          or new.attempts != 0):
        p.append(("INV-START-1", f"start emitted {effects} and led to {dst}"))
    if ev != "start" and dst == "connecting" and (src != "connecting" or opens or closes):
        p.append(("INV-START-1", f"{ev} entered connecting"))
    reports = [e for e in effects if isinstance(e, ReportError)]
    where = {OpenReason.START: "connecting", OpenReason.RESTART: "restarting",
             OpenReason.RECONNECT: "reconnecting"}
    if any(where[o.reason] != dst for o in opens):
        p.append(("INV-TRANSPORT-4", f"{[str(o.reason) for o in opens]} set up in {dst}"))
    timer = STATE[src].timer
    if src == dst and not opens and not closes and timer is not None and any(
            isinstance(e, ArmTimer | CancelTimer) and e.timer is timer for e in effects):
        p.append(("INV-TIMER-6", f"{letter} re-armed {timer} without leaving {src}"))
    ending = ev == "session_closed" and letter.code in ENDING_CLOSES
    if any(r.severity == "fatal" for r in reports) and dst != "error" and not (
            ending and dst == "idle"):
        p.append(("INV-REPORT-1", f"fatal report on {src} -> {dst}"))
    if (letter.retry_after is not None and closes and dst != "error"
            and letter.code != "session_expired" and not any(
                isinstance(e, ArmTimer) and e.timer is Timer.BACKOFF for e in effects)):
        p.append(("INV-RETRY-5", f"{letter} replaced the connection without waiting"))
    if ev == "ice_disconnected" and dst != "ice_grace":
        p.append(("INV-ICE-1", f"ice_disconnected in {src} led to {dst}"))
    if ev == "ice_recovered" and dst == "ice_grace":
        p.append(("INV-ICE-1", "ice_recovered stayed in ice_grace"))
    if dst == "error" and src != "error":
        ra_long = retry.retry_after_too_long(letter.retry_after)
        want = ((letter.code or "fatal") if letter.severity == "fatal" else
                "retry_after_too_long" if ra_long else "retries_exhausted")
        if ev == "session_closed" and letter.code not in RETRIED_CLOSES:
            want = letter.code if letter.code in CLOSE_REASONS else "unknown_close_reason"
        if [(r.code, r.severity) for r in reports] != [(want, "fatal")]:
            p.append(("INV-REPORT-1", f"{letter}: {src} -> error reported "
                      f"{[(r.code, r.severity) for r in reports]}, expected {want}"))
    ups = [e for e in effects if isinstance(e, ConnectionUp)]
    if src in CONNECTING and dst in WORKING:
        if not (new.observer[2] and new.observer[3]):
            p.append(("INV-UP-1", f"{src} -> {dst} before both halves were seen"))
        if [u.replay for u in ups] != [src != "connecting"] or ArmTimer not in kinds:
            p.append(("INV-UP-1", f"{src} -> {dst} emitted {effects}"))
    elif ups:
        p.append(("INV-UP-1", f"ConnectionUp on {src} -> {dst}"))
    quick_letter = (ev == "signaling_failed" and letter.severity == "transient"
                    and letter.retry_after is None)
    if quick_letter and src in CONNECTING and not before.observer[4] and not [
            e for e in opens if e.reason is OpenReason.RECONNECT and e.attempt == 0]:
        p.append(("INV-QUICK-1", f"{letter} in {src}: the episode's quick retry was not made"))
    if [e for e in opens if e.reason is OpenReason.RECONNECT and e.attempt == 0] and \
            before.observer[4]:
        p.append(("INV-QUICK-1", "a second quick retry in one episode"))
    restart = [e for e in opens if e.reason is OpenReason.RESTART]
    due = before.observer[5] or ev == "rollover_due"
    back_to_active = (src == "active" and ev == "rollover_due") or (
        (src, ev) in (("listening", "speech_stopped"), ("speaking", "audio_stopped"))
    ) or (src == "ice_grace" and ev == "ice_recovered" and before.observer[0] == "active")
    if ev in _ROLLOVER_LETTERS:
        if due and back_to_active and not restart:
            p.append(("INV-ROLLOVER-2", f"the due rollover not taken on {ev} in {src}"))
        if restart and not (due and back_to_active):
            p.append(("INV-ROLLOVER-2", f"rollover restart from {src} on {ev} "
                      f"({'due' if due else 'not due'})"))
    elif restart and Timer.STABLE in before.armed:
        p.append(("INV-DAMP-1", f"{letter} restarted the transport inside an episode"))
    retried_close = ev == "session_closed" and letter.code in RETRIED_CLOSES
    failure = ev in ("transport_failed", "ice_grace_expired") or retried_close or (
        ev == "server_error" and letter.severity not in ("fatal", "ignorable") and (
            letter.code == "session_expired" or (letter.severity == "recoverable"
                                                 and letter.retry_after is None)))
    if src in WORKING and failure and Timer.STABLE not in before.armed and not restart:
        p.append(("INV-DAMP-2", f"{letter} in a stable {src} did not restart at once"))
    if ev == "session_closed":
        p.extend(_close_problems(src, dst, letter, effects))
    if ev == "rollover_due" and src in ("listening", "speaking", "ice_grace") and (
            closes or opens):
        p.append(("INV-ROLLOVER-2", f"rollover in {src} replaced the connection"))
    if ev == "session_info":
        valid = rollover.delay(letter.expires_in) is not None
        arms = [e for e in effects if isinstance(e, ArmTimer)]
        reports = [e for e in effects if isinstance(e, ReportError)]
        if not valid and (arms or len(reports) != 1):
            p.append(("INV-ROLLOVER-1", f"expires_in {letter.expires_in} gave {effects}"))
    if ev == "server_error" and letter.severity != "fatal":
        expired = letter.code == "session_expired" and src in WORKING
        if letter.severity == "ignorable" or (letter.severity == "transient" and not expired):
            if dst != src or opens or closes:
                p.append(("INV-SERVER-1", f"{letter} in {src} led to {dst} / {effects}"))
            if [type(e) for e in effects] != ([ReportError] if letter.severity == "transient"
                                              else []):
                p.append(("INV-SERVER-1", f"{letter} in {src} emitted {effects}"))
        if letter.severity == "recoverable" and not closes:
            p.append(("INV-SERVER-2", f"{letter} in {src} kept the connection"))
        if letter.severity == "recoverable" and not expired and dst != "error" and [
                (r.code, r.severity) for r in reports] != [(letter.code, "recoverable")]:
            p.append(("INV-SERVER-2", f"{letter} in {src} reported {reports}"))
        if expired and letter.severity != "ignorable" and not closes:
            p.append(("INV-SERVER-3", f"{letter} in {src} kept the connection"))
    return p


def _close_problems(src: str, dst: str, letter: Letter,
                    effects: tuple[Effect, ...]) -> list[tuple[str, str]]:
    """INV-CLOSE-1..3: what a ``session_closed`` with ``letter.code`` did from ``src``."""
    p: list[tuple[str, str]] = []
    code = letter.code
    closes = any(isinstance(e, CloseTransport) for e in effects)
    opens = [e for e in effects if isinstance(e, OpenTransport)]
    reports = [(e.code, e.severity) for e in effects if isinstance(e, ReportError)]
    if code in ENDING_CLOSES:
        if dst != "idle" or not closes or opens or reports != [(code, "fatal")]:
            p.append(("INV-CLOSE-1", f"{letter} in {src}: -> {dst}, {effects}"))
    elif code in RETRIED_CLOSES:
        mine = [(code, "recoverable")]
        if not closes or dst == "idle" or (dst != "error" and reports != mine) or any(
                o.reason is not OpenReason.RESTART for o in opens) or (
                dst not in ("restarting", "backoff", "error")):
            p.append(("INV-CLOSE-3", f"{letter} in {src}: -> {dst}, {effects}"))
    elif dst != "error" or opens or not closes:
        p.append(("INV-CLOSE-2", f"{letter} in {src}: -> {dst}, {effects}"))
    return p


def _config_problems(c: Config, retry: RetryPolicy) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    if STATUS_OF[c.state] not in set(Status):
        out.append(("INV-STATUS-1", f"state {c.state} shows unknown status"))
    if c.attempts > retry.max_attempts or c.observer[1] > retry.max_attempts:
        out.append(("INV-RETRY-1", f"{c.attempts} attempts ({c.observer[1]} counted "
                    f"reconnects) > bound {retry.max_attempts}"))
    expected = expected_timers(c)
    if set(c.armed) != expected:
        out.append(("INV-TIMER-1", f"in {c.state} armed timers are {sorted(c.armed)}, "
                    f"expected {sorted(expected)}"))
    if not c.transport_open and c.armed & {Timer.STABLE, Timer.ROLLOVER}:
        out.append(("INV-TIMER-4", f"{sorted(c.armed)} armed with the transport closed"))
    if c.state in ("idle", "error", "backoff") and c.transport_open:
        out.append(("INV-TRANSPORT-2", f"transport left open in {c.state}"))
    if STATE[c.state].transport and not c.transport_open:
        out.append(("INV-TRANSPORT-3", f"{c.state} without an open transport"))
    if c.state in SPEECH and c.state != c.observer[0]:
        out.append(("INV-ICE-4", f"in {c.state}, but the speech events say {c.observer[0]}"))
    return out


class _Crash(RuntimeError):
    pass


def _crash_problems(engine: FastLifecycle, cfg: Config) -> list[tuple[str, str]]:
    """Inject a raising action into the next external transition (``stop``) from ``cfg``."""
    def boom(row: Row) -> None:
        raise _Crash("injected")

    engine.state_id = cfg.state
    engine.restore(cfg.machine)
    engine.effects = []
    engine._after_row = boom  # type: ignore[method-assign]
    try:
        engine.send("stop")
    finally:
        del engine._after_row
    effects = tuple(engine.take_effects())
    armed = set(cfg.armed)
    topen = cfg.transport_open
    for e in effects:
        if isinstance(e, CancelTimer):
            armed.discard(e.timer)
        elif isinstance(e, ArmTimer):
            armed.add(e.timer)
        elif isinstance(e, CloseTransport):
            topen = False
        elif isinstance(e, OpenTransport):
            topen = True
    reports = [e for e in effects if isinstance(e, ReportError)]
    if (engine.state_id != "error" or armed or topen or [r.code for r in reports]
            != ["machine_error"] or not isinstance(reports[0].error, _Crash)):
        return [("INV-CRASH-1", f"crash from {cfg.state} left {engine.state_id}, timers "
                 f"{sorted(armed)}, transport open={topen}, effects {effects}")]
    return []


# -- the failing peer (LIVE-1 here, peer_fails_reaches_error in spin) ------------------------
PEER_LETTERS: Final = (
    Letter("start"), Letter("transport_connected"), Letter("channel_open"),
    Letter("transport_failed"), Letter("ice_disconnected"),
    Letter("signaling_failed", "transient"), Letter("signaling_failed", "recoverable"),
    Letter("server_error", "recoverable", "test_code"),
    Letter("connect_timeout"), Letter("restart_timeout"), Letter("backoff_expired"),
    Letter("ice_grace_expired"),
    Letter("session_closed", code="connection_lost"), Letter("session_closed", code="expired"),
)
"""What a backend that fails every connection before it is stable can do: bring each connection
up (each half once), fail it in any way, let timers fire; never stop, recover or go stable."""


def peer_allows(c: Config, letter: Letter) -> bool:
    if letter.event == "start":
        return c.state == "idle"
    if letter.event == "transport_connected":
        return not c.observer[2]
    if letter.event == "channel_open":
        return not c.observer[3]
    return True


def _failing_peer_cycle(ex: Exploration) -> list[int] | None:
    """A cycle of the failing-peer graph (configs reachable from idle under PEER_LETTERS)."""
    peer = set(PEER_LETTERS)
    succ: dict[int, list[int]] = collections.defaultdict(list)
    for e in ex.edges:
        if e.letter in peer and peer_allows(ex.configs[e.source], e.letter):
            succ[e.source].append(e.target)
    color: dict[int, int] = {}
    for root in (0,):
        stack: list[tuple[int, int]] = [(root, 0)]
        path: list[int] = []
        while stack:
            node, i = stack.pop()
            if i == 0:
                if color.get(node) == 2:
                    continue
                color[node] = 1
                path.append(node)
            kids = succ.get(node, [])
            if i < len(kids):
                stack.append((node, i + 1))
                k = kids[i]
                if color.get(k) == 1:
                    return [*path[path.index(k):], k]
                if color.get(k) is None:
                    stack.append((k, 0))
            else:
                color[node] = 2
                path.pop()
    return None


def explore(
    machine: type[LifecycleLogic] = LifecycleMachine,
    retry: RetryPolicy | None = None,
    *,
    rollover: RolloverPolicy | None = None,
    stop_at_first: bool = False,
    crash: bool = True,
    liveness: bool = True,
) -> Exploration:
    """Breadth-first exploration of ``machine`` (any generated class: its ``TABLE`` is used)."""
    retry = retry if retry is not None else CHECK_RETRY
    rollover = rollover if rollover is not None else CHECK_ROLLOVER
    engine = FastLifecycle(retry=retry, machine=machine, rollover=rollover)
    letters = alphabet(machine.TABLE)
    initial = Config(engine.snapshot(engine.state_id), frozenset(), False)
    configs = [initial]
    index = {initial: 0}
    parent: dict[int, tuple[int, Letter]] = {}
    edges: list[Edge] = []
    violations: list[Violation] = []
    refusals = 0
    queue = collections.deque([0])
    ex = Exploration(configs, edges, 0, violations, parent)

    def violate(rule: str, msg: str, src: int, letter: Letter | None) -> None:
        trace = ex.trace_to(src) + ((str(letter),) if letter is not None else ())
        violations.append(Violation(rule, msg, trace))

    for rule, msg in _config_problems(initial, retry):
        violate(rule, msg, 0, None)
    while queue:
        i = queue.popleft()
        cfg = configs[i]
        if crash:
            for rule, msg in _crash_problems(engine, cfg):
                violate(rule, msg, i, Letter("<exception>"))
        for letter in letters:
            if letter.event in TIMER_EVENTS and Timer(letter.event) not in cfg.armed:
                continue  # a timer that is not armed cannot fire
            engine.state_id = cfg.state
            engine.restore(cfg.machine)
            engine.effects = []
            try:
                engine.send(letter.event, **letter.kwargs())
            except TransitionNotAllowed:
                refusals += 1
                after = engine.snapshot(engine.state_id)
                if after != cfg.machine or engine.effects:
                    violate("INV-STRICT-1", f"refused event changed {cfg.machine} to {after}",
                            i, letter)
                if letter.event in TIMER_EVENTS:
                    violate("INV-TIMER-3", f"armed timer {letter.event} refused in {cfg.state}",
                            i, letter)
                continue
            effects = tuple(engine.take_effects())
            if engine.fired is None:
                violate("INV-CRASH-1", f"the machine crashed on {letter}: {effects}", i, letter)
                continue
            new, problems = _step_problems(cfg, letter, engine.snapshot(engine.state_id),
                                           effects, retry, rollover)
            problems.extend(_edge_problems(cfg, letter, new, effects, retry, rollover))
            j = index.get(new)
            if j is None:
                j = index[new] = len(configs)
                configs.append(new)
                parent[j] = (i, letter)
                queue.append(j)
                problems.extend(_config_problems(new, retry))
            edges.append(Edge(i, letter, j, engine.fired, effects))
            for rule, msg in problems:
                violate(rule, msg, i, letter)
            if violations and stop_at_first:
                ex.refusals = refusals
                return ex
    ex.refusals = refusals
    if liveness and not violations:
        cycle = _failing_peer_cycle(ex)
        if cycle is not None:
            states = " -> ".join(configs[k].state for k in cycle)
            violate("LIVE-1", f"a failing peer can loop for ever: {states}", cycle[0], None)
    return ex


def dead_rows(machine: type[LifecycleLogic] = LifecycleMachine) -> list[Row]:
    """Rows no exploration takes (with ``max_attempts`` 3, 1 and 0)."""
    taken: set[Row] = set()
    for n in (3, 1, 0):
        taken |= explore(machine, attrs.evolve(CHECK_RETRY, max_attempts=n), crash=False,
                         liveness=False).rows_taken
    return [r for r in machine.TABLE if r not in taken]


# -- the spec's tables -----------------------------------------------------------------------------
TABLE_BEGIN = "<!-- transition-table:begin -->"
TABLE_END = "<!-- transition-table:end -->"
STATES_BEGIN = "<!-- states-table:begin -->"
STATES_END = "<!-- states-table:end -->"
INVARIANTS_BEGIN = "<!-- invariants-table:begin -->"
INVARIANTS_END = "<!-- invariants-table:end -->"


def _cell(items: Iterable[object]) -> str:
    return ", ".join(map(str, items)) or "-"


def table_rows(table: Iterable[Row] | None = None) -> list[tuple[str, ...]]:
    """The table as text rows (from, event, guard, to, kind, updates, effects, label)."""
    from fsm_voice.machine.table import TABLE

    rows: list[tuple[str, ...]] = [
        (r.source, r.event, r.guard_text, r.target, "internal" if r.internal else "external",
         _cell(r.updates), _cell(r.effects), r.label)
        for r in (table if table is not None else TABLE)
    ]
    c = CRASH
    rows.append((c.source, c.event, "-", c.target, "external", _cell(c.updates),
                 _cell(c.effects), c.label))
    return rows


def render_table(rows: Iterable[tuple[str, ...]]) -> str:
    head = ("| from | event | guard | to | kind | updates | effects | does |\n"
            "|---|---|---|---|---|---|---|---|\n")
    return head + "".join("| " + " | ".join(f"`{c}`" for c in r) + " |\n" for r in rows)


def render_states() -> str:
    head = "| state | status | timer armed while in it | transport | meaning | on entry |\n"
    head += "|---|---|---|---|---|---|\n"
    return head + "".join(
        f"| `{s.name}` | {s.status} | {f'`{s.timer}`' if s.timer else '-'} | "
        f"{'open' if s.transport else 'closed'} | {s.meaning} | {_cell(s.entry)} |\n"
        for s in STATES)


def render_invariants() -> str:
    out = "| id | invariant |\n|---|---|\n"
    out += "".join(f"| {k} | {v} |\n" for k, v in INVARIANTS.items())
    out += "\nModel-checked by spin on the Promela translation of the table, LTL:\n\n"
    out += "| property | formula |\n|---|---|\n"
    out += "".join(f"| {k} | `{v.replace('|', chr(92) + '|')}` |\n"
                   for k, v in LTL_PROPERTIES.items())
    return out


def _between(text: str, begin: str, end: str) -> str:
    try:
        return text.split(begin, 1)[1].split(end, 1)[0]
    except IndexError:
        raise ValueError(f"no {begin} ... {end} block") from None


def replace_between(text: str, begin: str, end: str, body: str) -> str:
    _between(text, begin, end)
    head, rest = text.split(begin, 1)
    return head + begin + "\n" + body + end + rest.split(end, 1)[1]


def generated_spec(text: str) -> str:
    """``text`` (specs/connection.md) with every generated block regenerated."""
    text = replace_between(text, STATES_BEGIN, STATES_END, render_states())
    text = replace_between(text, INVARIANTS_BEGIN, INVARIANTS_END, render_invariants())
    return replace_between(text, TABLE_BEGIN, TABLE_END, render_table(table_rows()))


def parse_spec_table(text: str) -> list[tuple[str, ...]]:
    """Rows of the machine-readable table between the markers in ``specs/connection.md``."""
    body = _between(text, TABLE_BEGIN, TABLE_END)
    rows = []
    for line in body.strip().splitlines()[2:]:
        cells = [c.strip().strip("`") for c in line.strip().strip("|").split(" | ")]
        rows.append(tuple(cells))
    return rows


# -- rules: every SPEC-/INV- id has a check ---------------------------------------------------
LTL_PROPERTIES: Final[dict[str, str]] = {
    "retry_bound": "[] (attempts <= MAX_ATTEMPTS && tries <= MAX_ATTEMPTS)",
    "no_reconnect_after_fatal": "[] (ev_fatal -> ((!ev_opened U ev_start) || [] !ev_opened))",
    "reconnecting_ends": "(<>[] reconnecting -> []<> ev_timer) -> "
                         "[] (reconnecting -> <> (up || st == ST_error || st == ST_idle))",
    "stop_reaches_idle": "[] (ev_stop -> (st == ST_idle && !anyarmed && !topen))",
    "idle_has_no_timer": "[] ((st == ST_idle || st == ST_error) -> (!anyarmed && !topen))",
    "stable_ends_episode": "[] (ev_stable -> (attempts == 0 && !quick_used && !episode))",
    "peer_fails_reaches_error": "<> (st == ST_error)",
    "final_close_opens_nothing": "[] (ev_final -> ((!ev_opened U ev_start) || [] !ev_opened))",
}
FAIRNESS_NEEDED: Final[frozenset[str]] = frozenset()
"""Properties verified with weak fairness (``pan -f``); none: with one process, fairness is an
assumption inside the formula (``reconnecting_ends``: a stuck state's timer keeps firing)."""
PEER_MODEL: Final = frozenset({"peer_fails_reaches_error"})

RULES: Final[dict[str, tuple[str, ...]]] = {
    "SPEC-STATUS-1": ("INV-STATUS-1",),
    "SPEC-STATUS-2": ("INV-STATUS-1",),
    "SPEC-STRICT-1": ("INV-STRICT-1",),
    "SPEC-RETRY-1": ("INV-RETRY-1", "INV-RETRY-3", "retry_bound"),
    "SPEC-RETRY-2": ("INV-RETRY-2",),
    "SPEC-RETRY-3": ("INV-RETRY-3", "stable_ends_episode"),
    "SPEC-RETRY-4": ("INV-RETRY-4", "INV-REPORT-1"),
    "SPEC-RETRY-5": ("INV-RETRY-2", "INV-RETRY-5"),
    "SPEC-DAMP-1": ("INV-DAMP-1", "INV-DAMP-2", "LIVE-1", "peer_fails_reaches_error"),
    "SPEC-DAMP-2": ("INV-TIMER-1", "INV-UP-1", "stable_ends_episode"),
    "SPEC-FATAL-1": ("INV-FATAL-1", "INV-REPORT-1", "no_reconnect_after_fatal"),
    "SPEC-TRANSIENT-1": ("INV-QUICK-1", "LIVE-1"),
    "SPEC-SERVER-1": ("INV-SERVER-1",),
    "SPEC-SERVER-2": ("INV-SERVER-2", "INV-DAMP-1"),
    "SPEC-SERVER-3": ("INV-SERVER-3",),
    "SPEC-ICE-1": ("INV-ICE-1", "INV-TIMER-1", "INV-TRANSPORT-3"),
    "SPEC-ICE-2": ("INV-DAMP-1", "INV-TRANSPORT-1"),
    "SPEC-ICE-3": ("INV-TIMER-1", "reconnecting_ends"),
    "SPEC-ICE-4": ("INV-ICE-4",),
    "SPEC-CONNECT-1": ("INV-UP-1", "INV-TIMER-1", "INV-TRANSPORT-4"),
    "SPEC-STOP-1": ("INV-STOP-1", "stop_reaches_idle"),
    "SPEC-START-1": ("INV-START-1",),
    "SPEC-UP-1": ("INV-UP-1",),
    "SPEC-ROLLOVER-1": ("INV-ROLLOVER-1",),
    "SPEC-ROLLOVER-2": ("INV-ROLLOVER-2",),
    "SPEC-ROLLOVER-3": ("INV-TIMER-4", "INV-TIMER-1"),
    "SPEC-TIMER-1": ("INV-TIMER-1", "INV-TIMER-2", "INV-TIMER-3", "INV-TIMER-5",
                     "INV-TIMER-6", "idle_has_no_timer"),
    "SPEC-CRASH-1": ("INV-CRASH-1",),
    "SPEC-CLOSE-1": ("INV-CLOSE-1", "INV-REPORT-1", "final_close_opens_nothing"),
    "SPEC-CLOSE-2": ("INV-CLOSE-2", "INV-REPORT-1", "final_close_opens_nothing"),
    "SPEC-CLOSE-3": ("INV-CLOSE-3", "INV-DAMP-1", "INV-DAMP-2", "LIVE-1",
                     "peer_fails_reaches_error"),
    **{k: (k,) for k in INVARIANTS},
}
"""Each rule of ``specs/connection.md`` -> the explorer invariants / LTL properties that check
it (``tests/test_check.py`` fails when a rule in the spec has none, or names an unknown check)."""

CHECKS: Final = frozenset(INVARIANTS) | frozenset(LTL_PROPERTIES)


def rule_ids(spec_text: str) -> list[str]:
    return sorted(set(re.findall(r"\b((?:SPEC|INV)-[A-Z]+-\d+|LIVE-\d+)\b", spec_text)))


# -- Promela: a translation of the table ---------------------------------------------------------
def _pml_value(var: str, value: bool | int | str) -> str:
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, str):
        return str(VALUES[var].index(value))
    return str(value)


def _pml_pred(p: Pred, letter: Letter, retry: RetryPolicy, rollover: RolloverPolicy) -> str:
    """The predicate under ``letter``: parameter predicates become constants."""
    k = p.kind
    if k == "severity":
        v = letter.severity == p.arg
    elif k == "code":
        v = letter.code == p.arg
    elif k == "retry_after_set":
        v = letter.retry_after is not None
    elif k == "retry_after_too_long":
        v = retry.retry_after_too_long(letter.retry_after)
    elif k == "expires_valid":
        v = rollover.delay(letter.expires_in) is not None
    else:
        if k == "attempts_below_max":
            off = int(p.value or 0)
            expr = f"(attempts < MAX_ATTEMPTS + {off})" if off else "(attempts < MAX_ATTEMPTS)"
        elif k == "flag":
            expr = f"({p.arg} == 1)"
        else:
            expr = f"({p.arg} == {_pml_value(p.arg, p.value)})"
        return f"!{expr}" if p.neg else expr
    return "1" if v is not p.neg else "0"


def _pml_update(u: Update) -> str:
    if u.op == "inc":
        return f"{u.var} = {u.var} + 1"
    return f"{u.var} = {_pml_value(u.var, u.value)}"


def _pml_effect(e: Eff, letter: Letter, retry: RetryPolicy, rollover: RolloverPolicy,
                assertions: bool) -> list[str]:
    out: list[str] = []
    if e.kind in ("arm", "cancel"):
        assert e.timer is not None
        bit = f"armed_{e.timer.value}"
        if e.kind == "arm":
            if assertions:
                out.append(f"assert(!{bit})")
            out.append(f"{bit} = 1")
        else:
            if assertions:  # INV-TIMER-5
                out.append(f"assert({bit})")
            out.append(f"{bit} = 0")
    elif e.kind == "open":
        if assertions:
            out.append("assert(!topen)")
        out += ["topen = 1", "speech = 0", "seen_media = 0", "seen_channel = 0", "due = 0"]
        if e.reason is OpenReason.RECONNECT:
            out.append("tries = tries + 1" if e.counted else "quick = 1")
    elif e.kind == "close":
        out += ["topen = 0", "speech = 0", "seen_media = 0", "seen_channel = 0", "due = 0"]
    elif e.kind == "connection_up":
        out.append("due = 0")
    if e.when is not None and out:
        cond = _pml_pred(e.when, letter, retry, rollover)
        return [f"if :: {cond} -> {'; '.join(out)} :: else -> skip fi"]
    return out


_LETTER_OBSERVER: Final[dict[str, str]] = {
    "speech_started": "speech = 1",
    "speech_stopped": "if :: speech == 1 -> speech = 0 :: else -> skip fi",
    "audio_started": "speech = 2",
    "audio_stopped": "if :: speech == 2 -> speech = 0 :: else -> skip fi",
    "start": "tries = 0; quick = 0",
    "stop": "tries = 0; quick = 0",
    "session_stable": "tries = 0; quick = 0",
    "transport_connected": "seen_media = 1",
    "channel_open": "seen_channel = 1",
    "rollover_due": "due = 1",
}


def to_promela(
    machine: type[LifecycleLogic] = LifecycleMachine,
    retry: RetryPolicy | None = None,
    *,
    rollover: RolloverPolicy | None = None,
    flags: bool = True,
    peer: bool = False,
) -> str:
    """The table translated to Promela: one process, one loop, one ``d_step`` per (row,
    parameter class); guards, updates and effects translated, first-match order kept by
    negating the earlier rows' guards. ``flags`` adds the per-step variables the LTL properties
    talk about (they split states: the count test uses ``flags=False``); ``peer`` restricts the
    environment to :data:`PEER_LETTERS`."""
    retry = retry if retry is not None else CHECK_RETRY
    rollover = rollover if rollover is not None else CHECK_ROLLOVER
    table = machine.TABLE
    names = [s.name for s in STATES]
    lines = ["/* Generated from fsm_voice.machine.table by `fsm-voice diagram`; do not edit. */",
             f"#define MAX_ATTEMPTS {retry.max_attempts}"]
    lines += [f"#define ST_{s} {k}" for k, s in enumerate(names)]
    up = " || ".join(f"st == ST_{s}" for s in ("active", "listening", "speaking"))
    rec = " || ".join(f"st == ST_{s.name}" for s in STATES if s.status == Status.RECONNECTING)
    lines += [f"#define up ({up})", f"#define reconnecting ({rec})",
              "#define anyarmed (" + " || ".join(f"armed_{t.value}" for t in Timer) + ")",
              "byte st = ST_idle;"]
    for var, initial in VARIABLES.items():
        kind = "bool" if isinstance(initial, bool) else "byte"
        lines.append(f"{kind} {var} = {_pml_value(var, initial)};")
    lines += [f"bool armed_{t.value} = 0;" for t in Timer]
    lines += ["bool topen = 0;", "byte speech = 0;", "byte tries = 0;", "bool seen_media = 0;",
              "bool seen_channel = 0;", "bool quick = 0;", "bool due = 0;"]
    if flags:
        lines += [f"bool {f} = 0;" for f in
                  ("ev_fatal", "ev_final", "ev_opened", "ev_start", "ev_stop", "ev_stable",
                   "ev_timer")]
    lines += ["", "active proctype lifecycle() {", "    do"]
    by_key: dict[tuple[str, str], list[Row]] = collections.defaultdict(list)
    for r in table:
        by_key[(r.source, r.event)].append(r)
    letters = PEER_LETTERS if peer else alphabet(table)
    seen: set[tuple[tuple[str, ...], tuple[str, ...]]] = set()
    for letter in letters:
        for (src, ev), rows in by_key.items():
            if ev != letter.event:
                continue
            earlier: list[str] = []
            for r in rows:
                g = [_pml_pred(p, letter, retry, rollover) for p in r.guard]
                cond = "0" if "0" in g else " && ".join(x for x in g if x != "1") or "1"
                if cond != "0":
                    conds = [f"st == ST_{src}", *(f"!({c})" for c in earlier if c != "0")]
                    if cond != "1":
                        conds.append(cond)
                    if letter.event in TIMER_EVENTS:
                        conds.append(f"armed_{letter.event}")
                    if peer:
                        if ev == "transport_connected":
                            conds.append("!seen_media")
                        elif ev == "channel_open":
                            conds.append("!seen_channel")
                    body = _pml_body(r, letter, retry, rollover, flags)
                    key = (tuple(conds), tuple(body))
                    if key not in seen:  # parameter classes that translate alike
                        seen.add(key)
                        lines.append(f"    :: d_step {{ {' && '.join(conds)} ->")
                        lines.append(f"         /* {letter} | {r.label} -> {r.target} */")
                        lines += [f"         {s};" for s in body]
                        lines.append("       }")
                earlier.append(cond)
                if cond == "1":
                    break
    lines += ["    od", "}", ""]
    if flags:
        props = PEER_MODEL if peer else set(LTL_PROPERTIES) - PEER_MODEL
        lines += [f"ltl {k} {{ {v} }}" for k, v in LTL_PROPERTIES.items() if k in props]
    return "\n".join(lines) + "\n"


def _pml_body(r: Row, letter: Letter, retry: RetryPolicy, rollover: RolloverPolicy,
              flags: bool) -> list[str]:
    body: list[str] = []
    if letter.event in TIMER_EVENTS:
        body.append(f"armed_{letter.event} = 0")
    if letter.event in _LETTER_OBSERVER:
        body.append(_LETTER_OBSERVER[letter.event])
    src = STATE[r.source]
    if not r.internal and src.timer is not None and src.timer.value != letter.event:
        body += _pml_effect(Eff("cancel", timer=src.timer), letter, retry, rollover, True)
    effs = [x for e in r.effects for x in _pml_effect(e, letter, retry, rollover, True)]
    body += effs
    body += [_pml_update(u) for u in r.updates]
    if not r.internal:
        body.append(f"st = ST_{r.target}")
        dst = STATE[r.target]
        body += [_pml_update(u) for u in dst.entry]
        if dst.timer is not None:
            body += _pml_effect(Eff("arm", timer=dst.timer), letter, retry, rollover, True)
    if flags:
        opened = any(e.kind == "open" for e in r.effects)
        own_timer = src.timer is not None and letter.event == src.timer.value
        final = letter.event == "session_closed" and letter.code not in RETRIED_CLOSES
        body += [f"ev_fatal = {int(letter.severity == 'fatal')}", f"ev_final = {int(final)}",
                 f"ev_opened = {int(opened)}",
                 f"ev_start = {int(letter.event == 'start')}",
                 f"ev_stop = {int(letter.event == 'stop')}",
                 f"ev_stable = {int(letter.event == 'session_stable')}",
                 f"ev_timer = {int(own_timer)}"]
    return body


@attrs.frozen
class SpinResult:
    prop: str
    ok: bool
    output: str


def _spin_build(d: Path, model: str) -> None:
    spin, cc = shutil.which("spin"), shutil.which("gcc") or shutil.which("cc")
    if not spin or not cc:
        raise RuntimeError("spin and gcc are needed: apt-get install spin gcc")
    (d / "model.pml").write_text(model)
    subprocess.run([spin, "-o2", "-a", "model.pml"], cwd=d, check=True, capture_output=True)
    subprocess.run([cc, "-O2", "-DNFAIR=3", "-DVECTORSZ=4096", "-o", "pan", "pan.c"], cwd=d,
                   check=True, capture_output=True)


def run_spin(model: str, props: Iterable[str] | None = None) -> list[SpinResult]:
    """Verify each LTL property of ``model`` with spin (``spin -a``, gcc, ``pan -a``)."""
    present = re.findall(r"^ltl (\w+)", model, re.M)
    results = []
    with tempfile.TemporaryDirectory(prefix="fsm-voice-spin-") as tmp:
        d = Path(tmp)
        _spin_build(d, model)
        for prop in props if props is not None else present:
            args = ["./pan", "-a", "-m1000000", "-N", prop]
            if prop in FAIRNESS_NEEDED:
                args.insert(2, "-f")
            out = subprocess.run(args, cwd=d, capture_output=True, text=True, check=False).stdout
            ok = "errors: 0" in out
            results.append(SpinResult(prop, ok, out))
    return results


def spin_state_count(model: str) -> int:
    """Reachable states of ``model`` (a plain safety run: ``pan -m...``, assertions checked)."""
    with tempfile.TemporaryDirectory(prefix="fsm-voice-spin-") as tmp:
        d = Path(tmp)
        _spin_build(d, model)
        out = subprocess.run(["./pan", "-m1000000", "-E"], cwd=d, capture_output=True,
                             text=True, check=False).stdout
    if "errors: 0" not in out:
        raise AssertionError(f"spin found an error in the count model:\n{out}")
    m = re.search(r"(\d+) states, stored", out)
    if m is None:
        raise RuntimeError(f"unexpected pan output:\n{out}")
    return int(m.group(1))


def check_all(
    machine: type[LifecycleLogic] = LifecycleMachine, *, spin: bool = False,
    stop_at_first: bool = True,
) -> list[str]:
    """Every check of ``fsm-voice check`` on ``machine``: the names of the failed rules
    (explorer invariants with max_attempts 3, 1 and 0, dead rows, and spin if asked)."""
    failed: list[str] = []
    for n in (3, 1, 0):
        ex = explore(machine, attrs.evolve(CHECK_RETRY, max_attempts=n),
                     stop_at_first=stop_at_first)
        failed = list(dict.fromkeys([*failed, *(v.rule for v in ex.violations)]))
        if failed and stop_at_first:
            return failed
    if spin:
        for model in (to_promela(machine), to_promela(machine, peer=True)):
            failed += [r.prop for r in run_spin(model) if not r.ok]
    return failed


Check = Callable[[], list[str]]
