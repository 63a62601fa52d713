"""A compiled, table-driven engine for the lifecycle: same rows, no python-statemachine.

:func:`compile_table` turns :data:`~fsm_voice.machine.table.TABLE` (or a mutant of it) into a
dict ``(state, event) -> candidates`` with the guards compiled to closures. :class:`FastLifecycle`
interprets it with the semantics of the generated python-statemachine class: the first candidate
whose guards all hold wins; exit (cancel the source timer), the row's updates and effects, entry;
an internal row runs only its updates and effects; a raising guard or action restores the
configuration, discards the event's effects and takes the crash row. ``tests/test_fastpath.py``
proves it equal to the reference engine on every reachable configuration x every event x every
parameter class.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any, Final

from statemachine.exceptions import TransitionNotAllowed

from fsm_voice.machine import LifecycleMachine
from fsm_voice.machine.logic import LifecycleLogic, predicate
from fsm_voice.machine.table import STATUS_OF, TABLE, Row
from fsm_voice.policy import IcePolicy, RetryPolicy, RolloverPolicy

Guard = tuple[Callable[..., bool], bool]
Candidate = tuple[str, bool, tuple[Guard, ...], Row]


def compile_table(table: tuple[Row, ...] = TABLE) -> dict[tuple[str, str], tuple[Candidate, ...]]:
    """``(source, event) -> ((target, internal, ((guard, negated), ...), row), ...)``."""
    out: dict[tuple[str, str], list[Candidate]] = {}
    for row in table:
        guards = tuple((predicate(p), p.neg) for p in row.guard)
        out.setdefault((row.source, row.event), []).append(
            (row.target, row.internal, guards, row))
    return {k: tuple(v) for k, v in out.items()}


class FastLifecycle(LifecycleLogic):
    """Drop-in for :class:`LifecycleMachine` where dispatch speed matters (``send``,
    ``state_id``, ``status``, ``take_effects``, counters)."""

    _tables: Final[dict[tuple[Row, ...], dict[tuple[str, str], tuple[Candidate, ...]]]] = {}

    def __init__(
        self,
        retry: RetryPolicy | None = None,
        ice: IcePolicy | None = None,
        rng: random.Random | None = None,
        *,
        machine: type[LifecycleLogic] = LifecycleMachine,
        rollover: RolloverPolicy | None = None,
    ) -> None:
        self._init_logic(retry, ice, rng, rollover)
        self.TABLE = machine.TABLE
        table = self._tables.get(machine.TABLE)
        if table is None:
            table = self._tables[machine.TABLE] = compile_table(machine.TABLE)
        self.table = table
        if machine._after_row is not LifecycleLogic._after_row:  # a test's raising hook
            self._after_row = machine._after_row.__get__(self)  # type: ignore[method-assign]
        self.state_id: str = "idle"
        self.fired: Row | None = None
        """The table row taken by the last accepted event."""

    @property
    def status(self) -> str:
        return STATUS_OF[self.state_id]

    def _select(self, source: str, event: str, kw: dict[str, Any]) -> Candidate | None:
        for cand in self.table.get((source, event), ()):
            for guard, neg in cand[2]:
                if bool(guard(self, **kw)) is neg:
                    break
            else:
                return cand
        return None

    def send(
        self,
        event: str,
        *,
        severity: str | None = None,
        code: str = "",
        error: Any = None,
        retry_after: float | None = None,
        expires_in: float | None = None,
    ) -> None:
        source = self.state_id
        kw = {"severity": severity, "code": code, "error": error, "retry_after": retry_after,
              "expires_in": expires_in}
        saved, mark = self.snapshot(source), len(self.effects)
        try:
            cand = self._select(source, event, kw)
            if cand is None:
                raise TransitionNotAllowed(_Event(event), {_State(source)})  # type: ignore[arg-type]
            target, internal, _guards, row = cand
            if internal:
                self._apply(row, kw)
            else:
                self._exit(source, event)
                self._apply(row, kw)
                self.state_id = target
                self._enter(target, kw)
            self.fired = row
        except TransitionNotAllowed:
            raise
        except Exception as exc:
            self.state_id = self._crash(saved, mark, exc)
            self.fired = None

    def enabled(self, event: str, **kw: Any) -> bool:
        """Whether ``event`` would be accepted now (guards evaluated, nothing changed)."""
        params = {"severity": None, "code": "", "error": None, "retry_after": None,
                  "expires_in": None, **kw}
        return self._select(self.state_id, event, params) is not None


class _Named:
    def __init__(self, name: str) -> None:
        self.id = self.name = name

    def __str__(self) -> str:
        return self.name


class _Event(_Named):
    pass


class _State(_Named):
    pass
