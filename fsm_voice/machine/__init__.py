"""The connection-lifecycle machine (normative text: ``specs/connection.md``).

Sans-IO: no asyncio, no clock. The lifecycle is declared once, as data, in
:mod:`fsm_voice.machine.table`; :class:`LifecycleMachine` is the python-statemachine class
generated from it (the reference engine) and :class:`fsm_voice.fastpath.FastLifecycle` the
compiled one. Every event goes through ``send(event, *, severity, code, error, retry_after,
expires_in)``; the machine decides the transition, updates its variables and appends
:mod:`effects <fsm_voice.effects>` to ``effects``, which the runtime drains (``take_effects``)
and executes. Refused events raise ``TransitionNotAllowed`` and change nothing.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Final

from fsm_voice.machine.engine import build_machine
from fsm_voice.machine.logic import LifecycleLogic, Snapshot
from fsm_voice.machine.table import (
    CONNECTING,
    EVENTS,
    SEVERITIES,
    STATUS_OF,
    TABLE,
    TIMER_OF,
    WORKING,
    Status,
)

if TYPE_CHECKING:  # statically: the base every generated class derives from
    from fsm_voice.machine.engine import LifecycleMachine
else:
    LifecycleMachine = build_machine(TABLE)
    """The reference engine for :data:`~fsm_voice.machine.table.TABLE`."""

#: Public statuses (SPEC-STATUS-1), as plain strings.
STATUSES: Final = tuple(str(s) for s in Status)
#: States waiting for a transport to come up.
CONNECTING_STATES: Final = frozenset(CONNECTING)
#: States with a working session where speech is tracked (ice_grace excluded: it shows active).
ACTIVE_STATES: Final = frozenset({"active", "listening", "speaking"})
#: Working states, ice_grace included.
WORKING_STATES: Final = frozenset(WORKING)
#: Events that carry an error severity (``severity=``).
SEVERITY_EVENTS: Final = frozenset({"signaling_failed", "server_error"})

__all__ = [
    "ACTIVE_STATES",
    "CONNECTING_STATES",
    "EVENTS",
    "SEVERITIES",
    "SEVERITY_EVENTS",
    "STATUSES",
    "STATUS_OF",
    "TIMER_OF",
    "WORKING_STATES",
    "LifecycleLogic",
    "LifecycleMachine",
    "Snapshot",
    "Status",
    "build_machine",
]
