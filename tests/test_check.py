"""The exhaustive checker, the spec's table, spin, and the planted bugs that must be caught."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from fsm_voice.check import explore, parse_spec_table, run_spin, table_rows, to_promela
from fsm_voice.cli import main
from fsm_voice.planted import ForgetsTimerMachine, OffByOneRetryMachine
from fsm_voice.policy import RetryPolicy

ROOT = Path(__file__).resolve().parent.parent
needs_spin = pytest.mark.skipif(shutil.which("spin") is None, reason="spin not installed "
                                "(apt-get install spin); .ci/run installs it")


def test_exploration_has_no_violation_and_visits_everything() -> None:
    ex = explore()
    assert ex.violations == []
    assert {c.state for c in ex.configs} == {s.id for s in __import__(
        "fsm_voice.machine", fromlist=["LifecycleMachine"]).LifecycleMachine.states}
    assert max(c.attempts for c in ex.configs) == 3
    taken = ex.rows_taken | explore(retry=RetryPolicy(max_attempts=0)).rows_taken
    rows = {(r[0], r[1], r[3], tuple(a for a in r[5].split(", ") if a != "-"))
            for r in table_rows()}
    assert rows == taken  # no dead row, no transition outside the table


def test_spec_table_is_the_implementation_table() -> None:
    spec = parse_spec_table((ROOT / "specs" / "connection.md").read_text())
    assert spec == [tuple(r) for r in table_rows()]


def test_off_by_one_retry_is_caught_with_shortest_trace() -> None:
    ex = explore(OffByOneRetryMachine, stop_at_first=True)
    assert ex.violations, "the off-by-one retry bound must be reported"
    v = ex.violations[0]
    assert v.rule in ("INV-RETRY-1", "INV-RETRY-2")
    assert v.trace == ("start", "transport_failed", "backoff_expired", "transport_failed",
                       "backoff_expired", "transport_failed", "backoff_expired",
                       "transport_failed")


def test_forgotten_timer_is_caught_with_shortest_trace() -> None:
    ex = explore(ForgetsTimerMachine, stop_at_first=True)
    v = ex.violations[0]
    assert v.rule == "INV-TIMER-1"
    assert v.trace == ("start", "transport_failed", "stop")


def test_cli_check_exit_codes(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check", "--no-spin"]) == 0
    assert "configurations" in capsys.readouterr().out
    assert main(["check", "--no-spin", "--planted", "off-by-one-retry"]) == 1
    assert "shortest trace: start" in capsys.readouterr().out


@needs_spin
def test_spin_proves_the_properties() -> None:
    results = run_spin(to_promela(explore()))
    assert [r.prop for r in results if not r.ok] == [], [r.output for r in results if not r.ok]
    assert len(results) == 5


@needs_spin
@pytest.mark.parametrize(("machine", "violated"), [
    (OffByOneRetryMachine, {"retry_bound"}),
    (ForgetsTimerMachine, {"stop_reaches_idle", "idle_has_no_timer"}),
])
def test_spin_catches_planted_bugs(machine: type, violated: set[str]) -> None:
    results = run_spin(to_promela(explore(machine)))
    assert {r.prop for r in results if not r.ok} == violated
