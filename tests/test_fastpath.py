"""Differential test: the compiled fast path agrees with python-statemachine on every sequence."""

from __future__ import annotations

from hypothesis import given, settings
from statemachine.exceptions import TransitionNotAllowed

from fsm_voice.check import Letter
from fsm_voice.fastpath import FastLifecycle, compile_machine
from fsm_voice.machine import LifecycleMachine
from fsm_voice.planted import PLANTED
from fsm_voice.policy import RetryPolicy
from tests.strategies import sequences


def outcome(m: LifecycleMachine | FastLifecycle, letter: Letter) -> tuple[object, ...]:
    try:
        m.send(letter.event, **letter.kwargs())
        refused = False
    except TransitionNotAllowed:
        refused = True
    return (refused, m.state_id, m.snapshot(m.state_id), tuple(m.take_effects()))


@settings(max_examples=400, deadline=None)
@given(sequences)
def test_fast_path_equals_python_statemachine(seq: list[Letter]) -> None:
    slow, fast = LifecycleMachine(), FastLifecycle()
    for letter in seq:
        assert outcome(slow, letter) == outcome(fast, letter), letter


@settings(max_examples=100, deadline=None)
@given(sequences)
def test_equal_on_planted_variants_and_other_policy(seq: list[Letter]) -> None:
    retry = RetryPolicy(max_attempts=1, base_delay=0.5)
    for cls in (LifecycleMachine, *PLANTED.values()):
        slow, fast = cls(retry=retry), FastLifecycle(retry=retry, machine=cls)
        for letter in seq:
            assert outcome(slow, letter) == outcome(fast, letter), (cls.__name__, letter)


def test_compiled_table_has_every_declared_transition() -> None:
    declared = sum(len(list(t.events)) for s in LifecycleMachine.states for t in s.transitions)
    assert sum(len(v) for v in compile_machine().values()) == declared


def test_refusal_message_names_event_and_state() -> None:
    f = FastLifecycle()
    try:
        f.send("channel_open")
    except TransitionNotAllowed as exc:
        assert "channel_open" in str(exc) and "idle" in str(exc)
    else:
        raise AssertionError("channel_open in idle must be refused")
