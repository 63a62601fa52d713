"""The reference engine: a python-statemachine class generated from the table's rows."""

from __future__ import annotations

import random
from typing import Any

from statemachine import State, StateMachine
from statemachine.exceptions import TransitionNotAllowed

from fsm_voice.machine.logic import LifecycleLogic, predicate
from fsm_voice.machine.table import STATES, STATUS_OF, TABLE, Row
from fsm_voice.policy import IcePolicy, RetryPolicy, RolloverPolicy


class LifecycleMachine(LifecycleLogic, StateMachine):
    """Base of the generated classes (see :func:`build_machine`); ``LifecycleMachine`` itself,
    exported by :mod:`fsm_voice.machine`, is the one generated from :data:`TABLE`."""

    enable_self_transition_entries = False
    catch_errors_as_events = False  # a raising callback is handled by send(): crash-only

    def __init__(
        self,
        retry: RetryPolicy | None = None,
        ice: IcePolicy | None = None,
        rng: random.Random | None = None,
        *,
        rollover: RolloverPolicy | None = None,
    ) -> None:
        self._init_logic(retry, ice, rng, rollover)
        super().__init__()

    def on_enter_state(self, state: State, **kw: Any) -> None:
        self._enter(state.id, kw)

    def on_exit_state(self, state: State, event: Any, **kw: Any) -> None:
        self._exit(state.id, str(event))

    @property
    def state_id(self) -> str:
        return str(self.current_state_value)

    @property
    def status(self) -> str:
        return STATUS_OF[self.state_id]

    def send(self, event: str, *args: Any, **kwargs: Any) -> Any:
        """Dispatch ``event``; a raising guard or action leaves the machine in ``error`` with
        the event undone (SPEC-CRASH-1). Refused events raise ``TransitionNotAllowed``."""
        source = self.state_id
        saved, mark = self.snapshot(source), len(self.effects)
        try:
            return super().send(event, *args, **kwargs)
        except TransitionNotAllowed:
            raise
        except Exception as exc:
            self.current_state_value = self._crash(saved, mark, exc)
            return None


def _action(row: Row) -> Any:
    def act(self: LifecycleLogic, **kw: Any) -> None:
        self._apply(row, kw)

    act.__name__ = row.label
    return act


def _guard(fn: Any) -> Any:
    def cond(self: LifecycleLogic, **kw: Any) -> bool:
        return bool(fn(self, **kw))

    return cond


def build_machine(table: tuple[Row, ...] = TABLE, name: str = "LifecycleMachine") -> type[
    LifecycleMachine
]:
    """A python-statemachine class whose transitions, guards and actions are ``table``'s rows."""
    states = {s.name: State(s.name, value=s.name, initial=s.name == "idle") for s in STATES}
    ns: dict[str, Any] = {"TABLE": table, **states}
    by_event: dict[str, Any] = {}
    for i, row in enumerate(table):
        for p in row.guard:
            ns.setdefault(f"if_{p.name}", _guard(predicate(p)))
        action = f"row_{i}_{row.label}"
        ns[action] = _action(row)
        cond = [f"if_{p.name}" for p in row.guard if not p.neg]
        unless = [f"if_{p.name}" for p in row.guard if p.neg]
        src, dst = states[row.source], states[row.target]
        kw: dict[str, Any] = {"on": action, "internal": row.internal}
        if cond:
            kw["cond"] = cond
        if unless:
            kw["unless"] = unless
        t = src.to.itself(**kw) if src is dst else src.to(dst, **kw)  # type: ignore[no-untyped-call]
        by_event[row.event] = t if row.event not in by_event else by_event[row.event] | t
    ns.update(by_event)
    ns["__module__"] = __name__
    return type(name, (LifecycleMachine,), ns)
