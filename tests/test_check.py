"""The exhaustive checker, the rule map, spin, and the mutants the checks must kill."""

from __future__ import annotations

import shutil
from pathlib import Path

import attrs
import pytest

from fsm_voice.check import (
    CHECK_RETRY,
    CHECKS,
    INVARIANTS,
    LTL_PROPERTIES,
    RULES,
    check_all,
    dead_rows,
    explore,
    rule_ids,
    run_spin,
    spin_state_count,
    to_promela,
)
from fsm_voice.cli import main
from fsm_voice.machine import LifecycleMachine
from fsm_voice.mutants import NAMED, judge, operator_mutants

ROOT = Path(__file__).resolve().parent.parent
SPEC = (ROOT / "specs" / "connection.md").read_text()
needs_spin = pytest.mark.skipif(shutil.which("spin") is None, reason="spin not installed "
                                "(apt-get install spin); .ci/run installs it")


def test_exploration_has_no_violation_and_no_dead_row() -> None:
    for n in (3, 1, 0):
        ex = explore(retry=attrs.evolve(CHECK_RETRY, max_attempts=n))
        assert ex.violations == [], [str(v) for v in ex.violations[:3]]
    ex = explore()
    assert {c.state for c in ex.configs} == {s.id for s in LifecycleMachine.states}
    assert max(c.attempts for c in ex.configs) == 3
    assert dead_rows() == []


def test_every_rule_of_the_spec_has_a_check() -> None:
    ids = rule_ids(SPEC)
    assert len(ids) > 40
    assert [i for i in ids if not RULES.get(i)] == []
    assert {c for checks in RULES.values() for c in checks} <= CHECKS
    assert set(INVARIANTS) <= set(ids)  # every invariant is in the spec
    unused = CHECKS - {c for checks in RULES.values() for c in checks}
    assert unused == set()


# The five mutants of issue 8 and the rule that must catch each.
ISSUE_MUTANTS = {
    "no-reset-when-stable": "INV-RETRY-3",
    "backoff-keeps-transport": "INV-TRANSPORT-2",
    "grace-forgets-speech": "INV-ICE-4",
    "quick-retry-never-spent": "INV-QUICK-1",
    "restart-counts-attempt": "INV-RETRY-3",
}


def test_at_least_15_named_mutants() -> None:
    assert len(NAMED) >= 15 and set(ISSUE_MUTANTS) <= set(NAMED)


@pytest.mark.parametrize("name", sorted(NAMED))
def test_check_kills_named_mutant(name: str) -> None:
    failed = check_all(NAMED[name].machine())
    assert failed, f"fsm-voice check passes the mutant {name}"
    if name in ISSUE_MUTANTS:
        assert ISSUE_MUTANTS[name] in failed


def test_operator_mutants_sample_is_killed_or_equivalent() -> None:
    """Every 40th operator mutant (the full run: ``fsm-voice check --mutate``)."""
    sample = list(operator_mutants())[::40]
    verdicts = [judge(m) for m in sample]
    assert [v.name for v in verdicts if v.outcome == "survived"] == []
    assert sum(v.outcome == "killed" for v in verdicts) > len(sample) // 2


def test_shortest_trace_of_off_by_one() -> None:
    ex = explore(NAMED["off-by-one-retry"].machine(), stop_at_first=True)
    v = ex.violations[0]
    assert v.rule == "INV-RETRY-2"
    assert v.trace == ("start", "transport_failed", "backoff_expired", "transport_failed",
                       "backoff_expired", "transport_failed", "backoff_expired",
                       "transport_failed")


def test_cli_check_exit_codes(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check", "--no-spin"]) == 0
    out = capsys.readouterr().out
    assert "configurations" in out and "spec tables match" in out
    assert main(["check", "--no-spin", "--planted", "off-by-one-retry"]) == 1
    assert "shortest trace: start" in capsys.readouterr().out


@needs_spin
def test_spin_counts_the_same_states_as_the_explorer() -> None:
    assert spin_state_count(to_promela(flags=False)) == len(explore().configs)
    for n in (1, 0):
        retry = attrs.evolve(CHECK_RETRY, max_attempts=n)
        assert spin_state_count(to_promela(retry=retry, flags=False)) == len(
            explore(retry=retry).configs)


@needs_spin
def test_spin_proves_the_properties() -> None:
    results = run_spin(to_promela()) + run_spin(to_promela(peer=True))
    assert [r.prop for r in results if not r.ok] == [], [r.output for r in results if not r.ok]
    assert {r.prop for r in results} == set(LTL_PROPERTIES)


@needs_spin
@pytest.mark.parametrize(("name", "violated"), [
    ("off-by-one-retry", "retry_bound"),
    ("quick-retry-never-spent", "peer_fails_reaches_error"),
    ("reset-on-up", "peer_fails_reaches_error"),
    ("no-reset-when-stable", "stable_ends_episode"),
    ("stable-not-cancelled", "stop_reaches_idle"),
    ("fatal-retried", "no_reconnect_after_fatal"),
])
def test_spin_catches_mutants(name: str, violated: str) -> None:
    cls = NAMED[name].machine()
    model = to_promela(cls, peer=violated == "peer_fails_reaches_error")
    results = run_spin(model, [violated])
    assert not results[0].ok, results[0].output
