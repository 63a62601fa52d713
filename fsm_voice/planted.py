"""Deliberately broken variants of the machine: the checks must catch each one.

They exist to prove that ``fsm-voice check`` and the spin model can fail.
"""

from __future__ import annotations

from typing import Any

from fsm_voice.effects import Timer
from fsm_voice.machine import TIMER_OF, LifecycleLogic, LifecycleMachine


class OffByOneRetryMachine(LifecycleMachine):
    """Allows one reconnect attempt too many (``<=`` instead of ``<``)."""

    def can_retry(self, **kw: Any) -> bool:
        return self.attempts <= self.retry.max_attempts


class ForgetsTimerMachine(LifecycleMachine):
    """Leaves the backoff timer armed when it leaves ``backoff`` (e.g. on ``stop``)."""

    def _exit(self, state_id: str) -> None:
        if TIMER_OF.get(state_id) is Timer.BACKOFF:
            return
        LifecycleLogic._exit(self, state_id)  # explicit: also bound onto the fast path


PLANTED: dict[str, type[LifecycleMachine]] = {
    "off-by-one-retry": OffByOneRetryMachine,
    "forgets-timer": ForgetsTimerMachine,
}
