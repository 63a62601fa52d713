"""The interpreter of the table's vocabulary, shared by both engines: variables, predicates,
updates, effects, timer delays, and the crash rule."""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

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
from fsm_voice.machine.table import CRASH, STATE, TABLE, VARIABLES, Eff, Pred, Row, Update
from fsm_voice.policy import IcePolicy, RetryPolicy, RolloverPolicy

#: A machine configuration: (state, *VARIABLES values in declaration order).
Snapshot = tuple[Any, ...]

_VARS = tuple(VARIABLES)


def predicate(p: Pred) -> Callable[..., bool]:
    """``p`` (ignoring ``neg``) as a function ``(logic, **event params) -> bool``."""
    kind, arg, value = p.kind, p.arg, p.value
    if kind == "severity":
        return lambda m, severity=None, **kw: severity == arg
    if kind == "code":
        return lambda m, code="", **kw: code == arg
    if kind == "retry_after_set":
        return lambda m, retry_after=None, **kw: retry_after is not None
    if kind == "retry_after_too_long":
        return lambda m, retry_after=None, **kw: m.retry.retry_after_too_long(retry_after)
    if kind == "expires_valid":
        return lambda m, expires_in=None, **kw: m.rollover_policy.delay(expires_in) is not None
    if kind == "attempts_below_max":
        off = int(value or 0)  # a mutation operator's off-by-one: attempts < max + off
        return lambda m, **kw: m.attempts < m.retry.max_attempts + off
    if kind == "flag":
        return lambda m, **kw: bool(getattr(m, arg))
    if kind == "is":
        return lambda m, **kw: getattr(m, arg) == value
    raise ValueError(f"unknown predicate kind {kind!r}")


class LifecycleLogic:
    """Variables and the interpretation of rows; subclassed by both engines.

    Event parameters arrive as keywords: ``severity``, ``code``, ``error`` (opaque),
    ``retry_after`` (seconds or None), ``expires_in`` (seconds; the machine sanitises it).
    """

    TABLE: tuple[Row, ...] = TABLE
    attempts: int
    quick_used: bool
    media_up: bool
    channel_up: bool
    episode: bool
    resume: str
    rollover: str

    def _init_logic(
        self,
        retry: RetryPolicy | None = None,
        ice: IcePolicy | None = None,
        rng: random.Random | None = None,
        rollover: RolloverPolicy | None = None,
    ) -> None:
        self.retry = retry if retry is not None else RetryPolicy()
        self.ice = ice if ice is not None else IcePolicy()
        self.rollover_policy = rollover if rollover is not None else RolloverPolicy()
        self.rng = rng
        self.effects: list[Effect] = []
        for var, initial in VARIABLES.items():
            setattr(self, var, initial)

    def snapshot(self, state: str) -> Snapshot:
        """Everything that decides future behaviour, as a hashable value."""
        return (state, *(getattr(self, v) for v in _VARS))

    def restore(self, config: Snapshot) -> None:
        for var, value in zip(_VARS, config[1:], strict=True):
            setattr(self, var, value)

    # -- rows ---------------------------------------------------------------------------------
    def _update(self, u: Update) -> None:
        if u.op == "inc":
            setattr(self, u.var, getattr(self, u.var) + 1)
        else:
            setattr(self, u.var, u.value)

    def _holds(self, p: Pred, kw: dict[str, Any]) -> bool:
        return predicate(p)(self, **kw) is not p.neg

    def _apply(self, row: Row, kw: dict[str, Any]) -> None:
        """The row's updates and effects (``when`` conditions see the values before)."""
        emit = [e for e in row.effects if e.when is None or self._holds(e.when, kw)]
        for u in row.updates:
            self._update(u)
        for e in emit:
            self.effects.append(self._effect(e, kw))
        self._after_row(row)

    def _after_row(self, row: Row) -> None:
        """Hook for tests that need a raising action (crash-only); does nothing."""

    def _effect(self, e: Eff, kw: dict[str, Any]) -> Effect:
        kind = e.kind
        if kind == "close":
            return CloseTransport()
        if kind == "open":
            assert e.reason is not None
            return OpenTransport(e.reason, self.attempts if e.counted else 0)
        if kind == "arm":
            assert e.timer is not None
            return ArmTimer(e.timer, self._delay(e.timer, kw))
        if kind == "cancel":
            assert e.timer is not None
            return CancelTimer(e.timer)
        if kind == "report":
            severity = e.severity or kw.get("severity") or "recoverable"
            code = e.code or kw.get("code") or ("fatal" if severity == "fatal" else "server_error")
            return ReportError(code, severity, kw.get("error"))
        if kind == "new_conversation":
            return NewConversation()
        if kind == "connection_up":
            return ConnectionUp(e.replay)
        raise ValueError(f"unknown effect kind {kind!r}")

    def _delay(self, timer: Timer, kw: dict[str, Any]) -> float:
        if timer is Timer.BACKOFF:
            return self.retry.backoff(self.attempts, kw.get("retry_after"), self.rng)
        if timer is Timer.ICE_GRACE:
            return self.ice.disconnected_grace
        if timer is Timer.RESTART_TIMEOUT:
            return self.ice.restart_timeout
        if timer is Timer.STABLE:
            return self.retry.stable_after
        if timer is Timer.ROLLOVER:
            delay = self.rollover_policy.delay(kw.get("expires_in"))
            if delay is None:
                raise ValueError(f"unusable expires_in {kw.get('expires_in')!r}")
            return delay
        return self.ice.connect_timeout

    # -- generic entry / exit (SPEC-TIMER-1) ------------------------------------------------------
    def _enter(self, state_id: str, kw: dict[str, Any]) -> None:
        decl = STATE[state_id]
        for u in decl.entry:
            self._update(u)
        if decl.timer is not None:
            self.effects.append(ArmTimer(decl.timer, self._delay(decl.timer, kw)))

    def _exit(self, state_id: str, event: str) -> None:
        """Cancel the state's timer, unless its own expiry is the event (it is gone already)."""
        timer = STATE[state_id].timer
        if timer is not None and timer.value != event:
            self.effects.append(CancelTimer(timer))

    # -- crash-only (SPEC-CRASH-1) --------------------------------------------------------------
    def _crash(self, saved: Snapshot, mark: int, exc: BaseException) -> str:
        """Undo the failed event and take the crash row; returns the new state."""
        self.restore(saved)
        del self.effects[mark:]
        for u in CRASH.updates:
            self._update(u)
        for e in CRASH.effects:
            eff = self._effect(e, {"error": exc})
            self.effects.append(eff)
        for u in STATE[CRASH.target].entry:
            self._update(u)
        return CRASH.target

    def take_effects(self) -> list[Effect]:
        out, self.effects = self.effects, []
        return out


__all__ = ["LifecycleLogic", "OpenReason", "Snapshot", "predicate"]
