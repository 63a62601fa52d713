"""A compiled, table-driven engine for the lifecycle: same table, same callbacks, much faster.

:func:`compile_machine` reads the python-statemachine class (states, transitions, ``cond`` and
``on`` callback names, ``internal`` flags) and builds a dict ``(state, event) -> candidates``.
:class:`FastLifecycle` interprets it with the semantics of python-statemachine's
``StateMachine``: the first candidate whose guards all hold wins; exit callbacks, then the
transition's actions, then the state changes, then entry callbacks; an internal transition runs
only its actions. A differential hypothesis test (``tests/test_fastpath.py``) checks that it
agrees with python-statemachine on every event sequence.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any, Final

import attrs
from statemachine.exceptions import TransitionNotAllowed

from fsm_voice.effects import Effect
from fsm_voice.machine import STATUS_OF, LifecycleLogic, LifecycleMachine
from fsm_voice.policy import IcePolicy, RetryPolicy


@attrs.frozen(slots=True)
class CompiledTransition:
    source: str
    target: str
    event: str
    internal: bool
    guards: tuple[tuple[str, bool], ...]
    """(callback name, expected truth value) in evaluation order."""
    actions: tuple[str, ...]


def _names(specs: Any, *, with_expected: bool = False) -> list[Any]:
    out: list[Any] = []
    for spec in specs:
        if spec.is_convention:
            continue
        if not isinstance(spec.func, str):
            raise TypeError(f"fastpath needs callbacks named by string, got {spec.func!r}")
        out.append((spec.func, spec.expected_value is not False) if with_expected else spec.func)
    return out


def compile_machine(
    cls: type[LifecycleMachine] = LifecycleMachine,
) -> dict[tuple[str, str], tuple[CompiledTransition, ...]]:
    """The transition table of ``cls`` keyed by ``(source state id, event id)``."""
    table: dict[tuple[str, str], list[CompiledTransition]] = {}
    for state in cls.states:
        for t in state.transitions:
            for event in t.events:
                ct = CompiledTransition(
                    source=t.source.id,
                    target=t.target.id,
                    event=str(event),
                    internal=bool(t.internal),
                    guards=tuple(_names(t.cond, with_expected=True)),
                    actions=tuple(_names(t.on)),
                )
                table.setdefault((ct.source, ct.event), []).append(ct)
    return {k: tuple(v) for k, v in table.items()}


_Bound = tuple[
    str,
    bool,
    tuple[tuple[Callable[..., Any], bool], ...],
    tuple[Callable[..., Any], ...],
    CompiledTransition,
]


class FastLifecycle(LifecycleLogic):
    """Drop-in for :class:`LifecycleMachine` where dispatch speed matters (``send``, ``state_id``,
    ``status``, ``take_effects``, counters)."""

    _tables: Final[dict[type, dict[tuple[str, str], tuple[CompiledTransition, ...]]]] = {}

    def __init__(
        self,
        retry: RetryPolicy | None = None,
        ice: IcePolicy | None = None,
        rng: random.Random | None = None,
        *,
        machine: type[LifecycleMachine] = LifecycleMachine,
    ) -> None:
        self._init_logic(retry, ice, rng)
        table = self._tables.get(machine)
        if table is None:
            table = self._tables[machine] = compile_machine(machine)
        self.table = table
        # A throwaway instance of the machine class resolves the callbacks, so subclasses that
        # override a guard or action (e.g. the planted-bug variants) behave the same here.
        proto = machine.__new__(machine)
        self._bound: dict[tuple[str, str], tuple[_Bound, ...]] = {
            key: tuple(
                (
                    ct.target,
                    ct.internal,
                    tuple((getattr(type(proto), g).__get__(self), exp) for g, exp in ct.guards),
                    tuple(getattr(type(proto), a).__get__(self) for a in ct.actions),
                    ct,
                )
                for ct in cands
            )
            for key, cands in table.items()
        }
        self._enter_hook = type(proto)._enter.__get__(self)
        self._exit_hook = type(proto)._exit.__get__(self)
        self.state_id: str = machine.initial_state.id
        self.fired: CompiledTransition | None = None
        """The table row taken by the last accepted event."""

    @property
    def status(self) -> str:
        return STATUS_OF[self.state_id]

    def send(
        self, event: str, *, severity: str | None = None, code: str = "", error: Any = None
    ) -> None:
        source = self.state_id
        cands = self._bound.get((source, event))
        if cands is not None:
            for target, internal, guards, actions, ct in cands:
                for guard, expected in guards:
                    if bool(guard(severity=severity, code=code, error=error)) is not expected:
                        break
                else:
                    self.fired = ct
                    if internal:
                        for act in actions:
                            act(severity=severity, code=code, error=error)
                        return
                    self._exit_hook(source)
                    for act in actions:
                        act(severity=severity, code=code, error=error)
                    self.state_id = target
                    self._enter_hook(target)
                    return
        raise TransitionNotAllowed(_Event(event), {_State(source)})  # type: ignore[arg-type]

    def take_effects(self) -> list[Effect]:
        out, self.effects = self.effects, []
        return out

    def enabled(self, event: str, **kw: Any) -> bool:
        """Whether ``event`` would be accepted now (guards evaluated, nothing changed)."""
        for _t, _internal, guards, _actions, _ct in self._bound.get((self.state_id, event), ()):
            if all(
                bool(g(severity=kw.get("severity"), code=kw.get("code", ""),
                       error=kw.get("error"))) is exp
                for g, exp in guards
            ):
                return True
        return False


class _Named:
    def __init__(self, name: str) -> None:
        self.id = self.name = name

    def __str__(self) -> str:
        return self.name


class _Event(_Named):
    pass


class _State(_Named):
    pass
