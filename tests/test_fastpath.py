"""The compiled fast path equals the generated python-statemachine class, exhaustively: every
reachable configuration x every event x every parameter class (several members of each)."""

from __future__ import annotations

import math
import random

import attrs
import pytest
from hypothesis import given, settings
from statemachine.exceptions import TransitionNotAllowed

from fsm_voice.check import CHECK_RETRY, Config, Letter, alphabet, explore, letters_for
from fsm_voice.fastpath import FastLifecycle, compile_table
from fsm_voice.machine import EVENTS, LifecycleMachine
from fsm_voice.machine.table import TABLE
from fsm_voice.mutants import NAMED
from fsm_voice.policy import RetryPolicy
from tests.strategies import sequences

#: More than one member of every parameter class (the explorer uses one representative).
RETRY_AFTERS = (None, 0.0, 1.0, 2.0, 5.0, 60.0, 60.5, 120.0, math.inf)
EXPIRES_INS = (None, -5.0, 0.0, 10.0, 89.0, 90.0, 1800.0, 7 * 86400.0 + 1, math.nan, math.inf)
CODES = ("", "server_error", "session_expired")


def full_alphabet() -> list[Letter]:
    out: list[Letter] = []
    for e in EVENTS:
        out += letters_for(e, RETRY_AFTERS, EXPIRES_INS)
    out += [Letter("server_error", s, c) for s in ("transient", "recoverable") for c in CODES]
    out += [Letter("signaling_failed", None), Letter("server_error", None)]  # no severity
    out += [Letter("no_such_event")]
    return out


Engine = LifecycleMachine | FastLifecycle


def outcome(m: Engine, letter: Letter) -> tuple[object, ...]:
    try:
        m.send(letter.event, **letter.kwargs())
        refused = False
    except TransitionNotAllowed:
        refused = True
    return (refused, m.state_id, m.snapshot(m.state_id), tuple(m.take_effects()))


def put(m: Engine, c: Config) -> None:
    if isinstance(m, FastLifecycle):
        m.state_id = c.state
    else:
        m.current_state_value = c.state
    m.restore(c.machine)
    m.take_effects()


@pytest.mark.parametrize(("max_attempts", "letters"), [(3, full_alphabet()), (1, list(alphabet())),
                                                      (0, list(alphabet()))], ids=["3", "1", "0"])
def test_engines_equal_on_every_configuration_event_and_parameter(
        max_attempts: int, letters: list[Letter]) -> None:
    retry = attrs.evolve(CHECK_RETRY, max_attempts=max_attempts)
    configs = explore(retry=retry, crash=False, liveness=False).configs
    machines = {c.machine for c in configs}
    slow, fast = LifecycleMachine(retry), FastLifecycle(retry)
    compared = 0
    for snap in machines:
        c = Config(snap, frozenset(), False)
        for letter in letters:
            put(slow, c)
            put(fast, c)
            assert outcome(slow, letter) == outcome(fast, letter), (snap, letter)
            compared += 1
    assert compared == len(machines) * len(letters)


@settings(max_examples=150, deadline=None)
@given(sequences)
def test_equal_with_jitter_on_sequences(seq: list[Letter]) -> None:
    slow = LifecycleMachine(RetryPolicy(), rng=random.Random(7))
    fast = FastLifecycle(RetryPolicy(), rng=random.Random(7))
    for letter in seq:
        assert outcome(slow, letter) == outcome(fast, letter), letter


@pytest.mark.parametrize("name", ["no-reset-when-stable", "grace-forgets-speech",
                                  "restart-counts-attempt"])
def test_equal_on_mutants(name: str) -> None:
    cls = NAMED[name].machine()
    # The real machine's reachable configurations as the domain: a mutant's own state space can
    # be unbounded (e.g. a counter that never resets), which is what check reports, not this test.
    configs = explore(LifecycleMachine, crash=False, liveness=False).configs
    slow, fast = cls(CHECK_RETRY), FastLifecycle(CHECK_RETRY, machine=cls)
    for snap in {c.machine for c in configs}:
        for letter in alphabet():
            c = Config(snap, frozenset(), False)
            put(slow, c)
            put(fast, c)
            assert outcome(slow, letter) == outcome(fast, letter), (snap, letter)


def test_compiled_table_has_every_row() -> None:
    assert sum(len(v) for v in compile_table().values()) == len(TABLE)
    declared = sum(len(list(t.events)) for s in LifecycleMachine.states for t in s.transitions)
    assert declared == len(TABLE)


def test_refusal_message_names_event_and_state() -> None:
    with pytest.raises(TransitionNotAllowed, match=r"channel_open.*idle"):
        FastLifecycle().send("channel_open")
