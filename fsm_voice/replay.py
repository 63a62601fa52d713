"""Deterministic replay: a trace's events re-run through the current machine.

:func:`replay` feeds the recorded events of a trace (:mod:`fsm_voice.trace`) to a fresh machine
(either engine, any machine class: a mutant too) built with the recorded policy, on virtual
time: the recorded times, the recorded random draws (jitter), the runtime's generation and timer
tokens modelled as the dispatcher keeps them. Each step's outcome (taken / refused / stale),
target state, transport generation and effects (every timer armed, with its delay, and
cancelled) are compared with the record; a timer must fire no earlier than it was due.

With policy overrides it is a what-if (:func:`_what_if`, ``specs/trace.md`` REPLAY-2): virtual
time in which the machine's own timers fire when due and each connection behaves as the
recording's connection of the same rank did, relative to its opening. The result is the
alternative path, compared step by step with the recorded one.
"""

from __future__ import annotations

import heapq
import json
import random
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import attrs
from statemachine.exceptions import TransitionNotAllowed

from fsm_voice.effects import ArmTimer, CancelTimer, CloseTransport, OpenTransport
from fsm_voice.fastpath import FastLifecycle
from fsm_voice.machine import STATUS_OF, LifecycleMachine
from fsm_voice.machine.engine import LifecycleMachine as MachineBase
from fsm_voice.policy import IcePolicy, RetryPolicy, RolloverPolicy
from fsm_voice.trace import TraceError, encode_effect, unnumber

Engine = Literal["fast", "statemachine"]
ENGINES: tuple[Engine, ...] = ("statemachine", "fast")
TIME_SLACK = 1e-5
"""Seconds a recorded timer fire may precede its due time (times are written to 1 us)."""
FIRE_LATENCY = 0.25
"""What-if: a timer expiry within this many seconds of a recorded expiry of the same timer is
that recorded step."""


class ReplayError(ValueError):
    """A trace that cannot be replayed (not from the start of a session) or a bad override."""


@attrs.frozen
class Step:
    """One event as the replayed machine handled it (``line``: the record's index, or None
    for a timer that fired only in a what-if)."""

    line: int | None
    t: float
    event: str
    outcome: str
    source: str
    target: str
    gen: int
    effects: tuple[str, ...]

    def describe(self) -> str:
        eff = ", ".join(self.effects) or "-"
        move = f"{self.source} -> {self.target}" if self.outcome == "taken" else \
            f"{self.outcome} in {self.source}"
        return f"t={self.t:9.3f}  {self.event:18s} {move:32s} gen={self.gen}  [{eff}]"


@attrs.frozen
class Divergence:
    step: int
    """How many steps agreed before this one."""
    line: int | None
    event: str
    t: float
    field: str
    expected: str
    got: str
    context: tuple[str, ...]

    def describe(self) -> str:
        where = f"record {self.line}" if self.line is not None else "a what-if timer"
        lines = [f"first divergence at step {self.step} ({where}, t={self.t:.3f}, "
                 f"event {self.event}): {self.field}",
                 f"  recorded: {self.expected}", f"  replayed: {self.got}"]
        if self.context:
            lines.insert(1, "  agreed before it:")
            lines[2:2] = [f"    {c}" for c in self.context]
        return "\n".join(lines)


@attrs.frozen
class ReplayResult:
    engine: Engine
    steps: tuple[Step, ...]
    """The replayed path."""
    recorded: tuple[Step, ...]
    """The recorded path (events only)."""
    compared: int
    divergence: Divergence | None

    @property
    def agreed(self) -> bool:
        return self.divergence is None


def _effect_text(e: Mapping[str, Any]) -> str:
    kind = e["type"]
    if kind == "arm":
        return f"arm {e['timer']} {unnumber(e['delay']):g}s"
    if kind == "cancel":
        return f"cancel {e['timer']}"
    if kind == "open":
        return f"open {e['reason']}#{e['attempt']}"
    if kind == "report":
        return f"report {e['code']}/{e['severity']}"
    if kind == "connection_up":
        return f"up replay={e['replay']}"
    return str(kind)


def parse_overrides(items: Sequence[str]) -> dict[str, Any]:
    """``["ice.disconnected_grace=10", "max_attempts=5"]`` -> ``{"ice.disconnected_grace": 10,
    "retry.max_attempts": 5}`` (a bare name must belong to exactly one policy group)."""
    groups = {"retry": RetryPolicy, "ice": IcePolicy, "rollover": RolloverPolicy}
    out: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ReplayError(f"--policy takes KEY=VALUE, got {item!r}")
        key = key.strip()
        group, dot, name = key.rpartition(".")
        if dot:
            cls = groups.get(group)
            if cls is None or name not in attrs.fields_dict(cls):
                raise ReplayError(f"unknown policy field {key!r}")
        else:
            owners = [g for g, c in groups.items() if name in attrs.fields_dict(c)]
            if len(owners) != 1:
                known = sorted(f"{g}.{f}" for g, c in groups.items() for f in attrs.fields_dict(c))
                raise ReplayError(f"unknown or ambiguous policy field {key!r}; known: "
                                  f"{', '.join(known)}")
            group = owners[0]
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            value = raw
        out[f"{group}.{name}"] = value
    return out


def policies(header: Mapping[str, Any], overrides: Mapping[str, Any] | None = None
             ) -> tuple[RetryPolicy, IcePolicy, RolloverPolicy]:
    """The recorded policy, with ``overrides`` (``group.field -> value``) applied."""
    try:
        p = header["policy"]
        fields = {
            "retry": dict(p["retry"]),
            "ice": dict(p["ice"]),
            "rollover": {k: unnumber(v) for k, v in p["rollover"].items()},
        }
    except (KeyError, TypeError, AttributeError) as exc:
        raise TraceError(f"the trace header has no usable policy ({exc!r})") from None
    for key, value in (overrides or {}).items():
        group, _, name = key.partition(".")
        fields[group][name] = value
    try:
        return (RetryPolicy(**fields["retry"]), IcePolicy(**fields["ice"]),
                RolloverPolicy(**fields["rollover"]))
    except (TypeError, ValueError) as exc:
        raise ReplayError(f"policy not valid: {exc}") from None


class _Draws(random.Random):
    """Returns the recorded draws of the current event; 0.5 (no jitter) when there are none."""

    def __init__(self) -> None:
        super().__init__(0)
        self.queue: list[float] = []

    def random(self) -> float:
        return self.queue.pop(0) if self.queue else 0.5


def _machine(engine: Engine, cls: type[MachineBase], retry: RetryPolicy, ice: IcePolicy,
             rollover: RolloverPolicy, rng: random.Random) -> FastLifecycle | MachineBase:
    if engine == "fast":
        return FastLifecycle(retry, ice, rng, machine=cls, rollover=rollover)
    if engine == "statemachine":
        return cls(retry, ice, rng, rollover=rollover)
    raise ValueError(f"engine must be 'fast' or 'statemachine', got {engine!r}")


def _recorded_step(i: int, r: Mapping[str, Any]) -> Step:
    return Step(i, float(r["t"]), str(r["event"]), str(r["outcome"]), str(r["source"]),
                str(r["target"]), int(r["gen"]),
                tuple(_effect_text(e) for e in r.get("effects", ())))


class _World:
    """The runtime as the dispatcher keeps it: generation, open flag, timer tokens."""

    def __init__(self, machine: FastLifecycle | MachineBase) -> None:
        self.m = machine
        self.gen = 0
        self.open = False
        self.seq = 0
        self.timers: dict[str, tuple[int, float]] = {}

    def stale(self, token: int | None, timer: str | None) -> str:
        if token is None:
            return ""
        if timer is not None:
            cur = self.timers.get(timer)
            return "" if cur is not None and cur[0] == token else f"expiry of a cancelled {timer}"
        if token != self.gen:
            return f"from closed transport #{token}"
        return "" if self.open else "transport already closed"

    def send(self, t: float, event: str, kw: Mapping[str, Any], line: int | None,
             draws: Sequence[float], rng: _Draws) -> tuple[Step, list[dict[str, Any]]]:
        source = self.m.state_id
        gen = self.gen
        rng.queue = list(draws)
        try:
            self.m.send(event, **kw)
        except TransitionNotAllowed:
            return Step(line, t, event, "refused", source, source, gen, ()), []
        effects = self.m.take_effects()
        for e in effects:
            if isinstance(e, ArmTimer):
                self.seq += 1
                self.timers[e.timer.value] = (self.seq, t + e.delay)
            elif isinstance(e, CancelTimer):
                self.timers.pop(e.timer.value, None)
            elif isinstance(e, OpenTransport):
                self.gen += 1
                self.open = True
            elif isinstance(e, CloseTransport):
                self.open = False
        enc = [encode_effect(e) for e in effects]
        return Step(line, t, event, "taken", source, self.m.state_id, gen,
                    tuple(_effect_text(e) for e in enc)), enc


def _params(r: Mapping[str, Any]) -> dict[str, Any]:
    return {"severity": r.get("severity"), "code": r.get("code", ""),
            "retry_after": unnumber(r.get("retry_after")),
            "expires_in": unnumber(r.get("expires_in"))}


def replay(header: Mapping[str, Any], records: Sequence[Mapping[str, Any]], *,
           engine: Engine = "fast", machine: type[MachineBase] = LifecycleMachine,
           overrides: Mapping[str, Any] | None = None, context: int = 4) -> ReplayResult:
    """Replay ``records`` (a trace's records after its header) on ``engine``/``machine``.

    Without ``overrides`` every recorded step is compared (first difference: the divergence).
    With them it is a what-if (:func:`what_if`): the result's ``steps`` are the alternative
    path."""
    if not header.get("replayable") or header.get("state") != "idle":
        raise ReplayError("the trace does not start with an idle session (recorded after "
                          "start): it cannot be replayed")
    retry, ice, rollover = policies(header, overrides)
    rng = _Draws()
    world = _World(_machine(engine, machine, retry, ice, rollover, rng))
    events = [(i, r) for i, r in enumerate(records, 1) if r.get("kind") == "event"]
    recorded = tuple(_recorded_step(i, r) for i, r in events)
    if overrides:
        return _what_if(engine, world, rng, events, recorded, context)
    steps: list[Step] = []
    divergence: Divergence | None = None

    def diverge(step: Step, field: str, expected: str, got: str) -> None:
        nonlocal divergence
        ctx = tuple(s.describe() for s in steps[-context - 1:-1]) if context else ()
        divergence = Divergence(len(steps) - 1, step.line, step.event, step.t, field,
                                expected, got, ctx)

    last_t = float("-inf")
    for (line, r), rec_step in zip(events, recorded, strict=True):
        t, event = rec_step.t, rec_step.event
        timer = r.get("timer")
        if t < last_t:
            steps.append(Step(line, t, event, "?", world.m.state_id, "?", world.gen, ()))
            diverge(steps[-1], "time goes backwards", f"t={t:.6f}",
                    f"after an event at t={last_t:.6f}")
            break
        last_t = t
        if world.stale(r.get("token"), timer):
            step = Step(line, t, event, "stale", world.m.state_id, world.m.state_id,
                        world.gen, ())
            enc: list[dict[str, Any]] = []
        else:
            if timer is not None:
                _tok, due = world.timers.pop(timer)
                if t + TIME_SLACK < due:
                    steps.append(Step(line, t, event, "taken", world.m.state_id, "?",
                                      world.gen, ()))
                    diverge(steps[-1], "timer fired before it was due", f"fired at {t:.6f}",
                            f"due at {due:.6f}")
                    break
            step, enc = world.send(t, event, _params(r), line, r.get("draws", ()), rng)
        steps.append(step)
        for field, exp, got in (
                ("outcome", rec_step.outcome, step.outcome),
                ("source state", rec_step.source, step.source),
                ("target state", rec_step.target, step.target),
                ("status", str(r.get("status")), STATUS_OF.get(step.target, "")),
                ("transport generation", str(rec_step.gen), str(step.gen)),
                ("effects", json.dumps(r.get("effects", [])), json.dumps(enc))):
            if exp != got:
                diverge(step, field, rec_step.describe() if field != "effects" else exp,
                        step.describe() if field != "effects" else got)
                break
        if divergence is not None:
            break
    end = records[-1] if records else None
    if divergence is None and end is not None and end.get("kind") == "end" \
            and end.get("records") != len(records) + 1:
        last = steps[-1] if steps else Step(None, 0.0, "-", "-", "-", "-", 0, ())
        ctx = tuple(s.describe() for s in steps[-context:]) if context else ()
        divergence = Divergence(len(steps), len(records), "end", last.t,
                                "records missing or added (the end record's count)",
                                f"{end.get('records')} records", f"{len(records) + 1} records",
                                ctx)
    compared = divergence.step if divergence is not None else len(steps)
    return ReplayResult(engine, tuple(steps), recorded, compared, divergence)


def _same(a: Step, b: Step) -> bool:
    return (a.outcome, a.target, a.effects) == (b.outcome, b.target, b.effects)


def _what_if(engine: Engine, world: _World, rng: _Draws,
             events: Sequence[tuple[int, Mapping[str, Any]]], recorded: tuple[Step, ...],
             context: int) -> ReplayResult:
    """Virtual time under a changed policy. The application's events come when they came.
    The n-th connection behaves as the recording's n-th did, relative to its opening: each of
    its events (and a failed open's ``signaling_failed``) comes as long after this world opens
    its n-th connection as it came after the recording's. Timers fire when due (matched to a
    recorded expiry of the same timer within ``FIRE_LATENCY``, whose draws they use). Events
    the recording dropped as stale stay stale. Nothing happens after the last recorded event.
    """
    rec_open: dict[int, float] = {}
    for _, r in events:
        g = int(r["gen"])
        for e in r.get("effects", ()):
            if e["type"] == "open":
                g += 1
                rec_open[g] = float(r["t"])
    end = recorded[-1].t if recorded else 0.0
    heap: list[tuple[float, int, int, Mapping[str, Any], int | None]] = []
    held: dict[int, list[tuple[float, int, int, Mapping[str, Any]]]] = {}
    fires: dict[str, list[tuple[float, int, Mapping[str, Any]]]] = {}
    for n, (line, r) in enumerate(events):
        t, tok = float(r["t"]), r.get("token")
        if r.get("timer") is not None:
            if r["outcome"] == "taken":
                fires.setdefault(str(r["timer"]), []).append((t, line, r))
        elif tok is None:
            heapq.heappush(heap, (t, n, line, r, None))
        elif r["outcome"] == "stale":
            heapq.heappush(heap, (t, n, line, r, -1))  # stale it was, stale it stays
        else:
            held.setdefault(int(tok), []).append((t - rec_open.get(int(tok), t), n, line, r))
    steps: list[Step] = []
    opened = 0
    while True:
        due = min(((d, name) for name, (_tok, d) in world.timers.items()), default=None)
        if heap and (due is None or heap[0][0] <= due[0]):
            t, _n, line, r, tok = heapq.heappop(heap)
            if t > end:
                break
            if world.stale(tok, None):
                step = Step(line, t, str(r["event"]), "stale", world.m.state_id,
                            world.m.state_id, world.gen, ())
            else:
                step, _ = world.send(t, str(r["event"]), _params(r), line, r.get("draws", ()),
                                     rng)
        elif due is not None and due[0] <= end:
            t, name = due
            del world.timers[name]
            match = next((f for f in fires.get(name, ())
                          if t - TIME_SLACK <= f[0] <= t + FIRE_LATENCY), None)
            if match is not None:
                fires[name].remove(match)
            step, _ = world.send(t, name, {}, match[1] if match else None,
                                 match[2].get("draws", ()) if match else (), rng)
        else:
            break
        steps.append(step)
        while opened < world.gen:  # this world opened a connection: its events are due
            opened += 1
            for off, n, line, r in held.pop(opened, ()):
                heapq.heappush(heap, (step.t + off, n, line, r, opened))
    by_line = {s.line: s for s in recorded}
    replayed = {s.line for s in steps if s.line is not None}
    divergence: Divergence | None = None
    for i, s in enumerate(steps):
        rec = by_line.get(s.line) if s.line is not None else None
        missed = [m for m in recorded if m.line not in replayed and m.t <= s.t]
        if rec is None or not _same(rec, s) or missed:
            ctx = tuple(x.describe() for x in steps[max(0, i - context):i])
            if missed:
                divergence = Divergence(i, missed[0].line, missed[0].event, missed[0].t,
                                        "a recorded step does not happen", missed[0].describe(),
                                        "-", ctx)
            else:
                divergence = Divergence(i, s.line, s.event, s.t,
                                        "a step only in the what-if" if rec is None
                                        else "the step differs",
                                        rec.describe() if rec else "-", s.describe(), ctx)
            break
    else:
        missed = [m for m in recorded if m.line not in replayed]
        if missed:
            divergence = Divergence(len(steps), missed[0].line, missed[0].event, missed[0].t,
                                    "a recorded step does not happen", missed[0].describe(),
                                    "-", ())
    compared = divergence.step if divergence is not None else len(steps)
    return ReplayResult(engine, tuple(steps), recorded, compared, divergence)


def replay_file(path: str, *, engines: Sequence[Engine] = ENGINES,
                machine: type[MachineBase] = LifecycleMachine,
                overrides: Mapping[str, Any] | None = None) -> list[ReplayResult]:
    from fsm_voice.trace import read_trace

    header, records = read_trace(path)
    return [replay(header, records, engine=e, machine=machine, overrides=overrides)
            for e in engines]


__all__ = ["ENGINES", "Divergence", "ReplayError", "ReplayResult", "Step", "parse_overrides",
           "policies", "replay", "replay_file"]
