"""Replay: a recorded session re-run through the machine agrees with itself in both engines;
a changed machine (a named mutant), a tampered record or a what-if policy makes it diverge at
the step where the change first matters."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import pytest

from fsm_voice.cli import main
from fsm_voice.clock import VirtualClock
from fsm_voice.fastpath import FastLifecycle
from fsm_voice.machine.table import TABLE
from fsm_voice.mutants import NAMED
from fsm_voice.policy import IcePolicy, RetryPolicy, SessionPolicy
from fsm_voice.ports import TransportSignal
from fsm_voice.replay import ENGINES, ReplayError, parse_overrides, policies, replay
from fsm_voice.session import VoiceSession
from fsm_voice.testing import ScriptedTransport, failure
from fsm_voice.trace import expand, read_trace, unnumber

pytestmark = pytest.mark.anyio

GRACE = 2.0


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


async def record(path: Path, engine: str = "fast") -> None:
    """A session with speech, an ICE grace that expires, a failed restart, backoffs with jitter,
    a failed reconnect, recovery and stop (a virtual clock: exact times)."""
    clock = VirtualClock()
    t = ScriptedTransport(["ok", "hang", failure("recoverable"), "ok", "ok"])
    policy = SessionPolicy(retry=RetryPolicy(jitter=0.2, stable_after=5.0),
                           ice=IcePolicy(disconnected_grace=GRACE, restart_timeout=4.0))
    async with VoiceSession(t, clock=clock, policy=policy, rng=random.Random(7),
                            engine=engine) as s:  # type: ignore[arg-type]
        s.record_trace(path)
        await s.start()
        await clock.advance(0.5)
        t.server({"type": "input_audio_buffer.speech_started"})
        await clock.advance(1)
        t.server({"type": "input_audio_buffer.speech_stopped"})
        await clock.advance(10)
        t.emit(TransportSignal.ICE_DISCONNECTED)
        await clock.advance(40)
        t.emit(TransportSignal.FAILED)
        await clock.advance(40)
        await s.stop()


@pytest.fixture
async def trace(tmp_path: Path) -> Path:
    path = tmp_path / "session.jsonl"
    await record(path)
    return path


@pytest.mark.parametrize("recorded_with", ["fast", "statemachine"])
async def test_a_recorded_session_replays_step_for_step_in_both_engines(
        tmp_path: Path, recorded_with: str) -> None:
    path = tmp_path / "s.jsonl"
    await record(path, recorded_with)
    header, records = read_trace(path)
    events = [r for r in records if r["kind"] == "event"]
    assert {r["event"] for r in events} >= {"ice_grace_expired", "restart_timeout",
                                            "backoff_expired", "signaling_failed"}
    assert any(r.get("draws") for r in events)
    for engine in ENGINES:
        result = replay(header, records, engine=engine)
        assert result.agreed, result.divergence
        assert result.compared == len(events) == len(result.steps)


class _Draws(random.Random):
    def __init__(self) -> None:
        super().__init__(0)
        self.queue: list[float] = []

    def random(self) -> float:
        return self.queue.pop(0)


def _expected_step(header: dict[str, Any], records: list[dict[str, Any]],
                   changed: set[Any]) -> int:
    """Index (among event records) of the first taken event whose row is one the mutant
    changed, found by running the unchanged machine over the recorded events."""
    retry, ice, rollover = policies(header)
    rng = _Draws()
    m = FastLifecycle(retry, ice, rng, rollover=rollover)
    for i, r in enumerate(e for e in records if e["kind"] == "event"):
        if r["outcome"] != "taken":
            continue
        rng.queue = list(r.get("draws", ()))
        m.send(r["event"], severity=r.get("severity"), code=r.get("code", ""),
               retry_after=unnumber(r.get("retry_after")),
               expires_in=unnumber(r.get("expires_in")))
        m.take_effects()
        if m.fired in changed:
            return i
    raise AssertionError("the trace never takes a changed row")


@pytest.mark.parametrize(("mutant", "direct"), [
    ("backoff-keeps-transport", True), ("start-keeps-conversation", True),
    ("replay-after-start", True),
    ("restart-counts-attempt", False)])
async def test_a_mutant_machine_fails_replay_at_the_first_step_its_change_matters(
        trace: Path, mutant: str, direct: bool) -> None:
    """A change to a row's effects or target shows at the first step that takes the row; a
    change to a variable (restart-counts-attempt: the attempt counter) only at a later step
    whose effects depend on it (the next backoff's delay)."""
    header, records = read_trace(trace)
    changed = set(TABLE) - set(NAMED[mutant].table)  # the rows as they were
    step = _expected_step(header, records, changed)
    for engine in ENGINES:
        result = replay(header, records, engine=engine, machine=NAMED[mutant].machine())
        d = result.divergence
        assert d is not None, f"{mutant} replayed clean on {engine}"
        if direct:
            assert d.step == step, (mutant, engine, d.describe())
        else:
            assert d.step > step and d.field == "effects" and "backoff_expired" in d.got, \
                d.describe()


async def test_a_tampered_record_is_the_reported_divergence(trace: Path, tmp_path: Path,
                                                            capsys: pytest.CaptureFixture[str]
                                                            ) -> None:
    lines = trace.read_text().splitlines()
    n = next(i for i, line in enumerate(lines) if '"ice_disconnected"' in line)
    rec = record_of(lines[n])
    rec["effects"][0]["delay"] = GRACE + 1
    lines[n] = json.dumps(rec)
    bad = tmp_path / "tampered.jsonl"
    bad.write_text("\n".join(lines) + "\n")
    assert main(["replay", str(trace)]) == 0
    assert "statemachine:" in capsys.readouterr().out
    assert main(["replay", str(bad)]) == 1
    out = capsys.readouterr().out
    assert f"record {n}" in out and "ice_disconnected" in out and "effects" in out
    assert out.count("first divergence") == 2  # both engines


async def test_a_timer_recorded_before_it_was_due_is_a_divergence(trace: Path) -> None:
    header, records = read_trace(trace)
    fire = next(r for r in records if r.get("timer") == "ice_grace_expired")
    fire["t"] -= 0.5
    result = replay(header, records)
    assert result.divergence is not None
    assert result.divergence.field == "timer fired before it was due"


async def test_what_if_a_longer_grace_shows_the_alternative_path(
        trace: Path, capsys: pytest.CaptureFixture[str]) -> None:
    header, records = read_trace(trace)
    lost = next(r for r in records if r.get("event") == "ice_disconnected")
    same = replay(header, records, overrides=parse_overrides([f"disconnected_grace={GRACE}"]))
    assert same.agreed
    longer = replay(header, records, overrides=parse_overrides(["ice.disconnected_grace=9"]))
    assert longer.divergence is not None and longer.divergence.event == "ice_disconnected"
    expiry = next(s for s in longer.steps if s.event == "ice_grace_expired")
    assert expiry.t == pytest.approx(lost["t"] + 9) and expiry.line is None
    assert main(["replay", "--engine", "fast", "--policy", "ice.disconnected_grace=9",
                 str(trace)]) == 1
    out = capsys.readouterr().out
    assert "alternative path" in out and "+ t=" in out and "- t=" in out


def test_bad_overrides_are_refused() -> None:
    for bad in (["grace"], ["ice.nope=1"], ["nope=1"]):
        with pytest.raises(ReplayError):
            parse_overrides(bad)
    assert parse_overrides(["max_attempts=5"]) == {"retry.max_attempts": 5}


def test_a_non_trace_file_exits_2(tmp_path: Path) -> None:
    p = tmp_path / "x.jsonl"
    p.write_text("{}\n")
    assert main(["replay", str(p)]) == 2


def record_of(line: str) -> dict[str, Any]:
    """The full record of a trace line (a version-2 event line expanded; written back as
    JSON it is a full event record, which a version-2 reader accepts too)."""
    obj = json.loads(line)
    return expand(obj) if isinstance(obj, list) else dict(obj)


def _tampered(trace: Path, tmp_path: Path, change: Any) -> Path:
    lines = trace.read_text().splitlines()
    change(lines)
    bad = tmp_path / "tampered.jsonl"
    bad.write_text("\n".join(lines) + "\n")
    return bad


def _edit(pattern: str, key: str, value: Any) -> Any:
    def change(lines: list[str]) -> None:
        n = next(i for i, line in enumerate(lines) if pattern in line)
        rec = record_of(lines[n])
        rec[key] = value(rec) if callable(value) else value
        lines[n] = json.dumps(rec)
    return change


def _delete(pattern: str, last: bool = False) -> Any:
    def change(lines: list[str]) -> None:
        hits = [i for i, line in enumerate(lines) if pattern in line]
        del lines[hits[-1] if last else hits[0]]
    return change


@pytest.mark.parametrize("change", [
    _delete('"speech_started"'),
    _delete('"speech_stopped"'),
    _delete('"stop"', last=True),
    _edit('"speech_stopped"', "source", "active"),
    _edit('"speech_stopped"', "status", "reconnecting"),
    _edit('"speech_started"', "t", lambda r: r["t"] + 5.0),
], ids=["delete-speech-started", "delete-speech-stopped", "delete-final-stop", "source",
        "status", "t-past-later-events"])
async def test_deleted_or_altered_records_are_a_divergence(
        trace: Path, tmp_path: Path, change: Any, capsys: pytest.CaptureFixture[str]) -> None:
    bad = _tampered(trace, tmp_path, change)
    assert main(["replay", str(trace)]) == 0
    capsys.readouterr()
    assert main(["replay", str(bad)]) == 1
    assert capsys.readouterr().out.count("first divergence") == 2
