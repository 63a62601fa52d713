"""Exhaustive exploration of the lifecycle machine, invariant checks, Promela export.

:func:`explore` visits every reachable configuration (machine state, counters, armed timers,
whether a transport is open) under every event, breadth first, so each configuration is reached
by a shortest event trace. Timer events are delivered only while their timer is armed (the runtime
drops stale ones). Every step is checked against the invariants of ``specs/connection.md``; the
first violation is returned with its shortest trace.
"""

from __future__ import annotations

import collections
import shutil
import subprocess
import tempfile
from collections.abc import Iterable
from pathlib import Path

import attrs
from statemachine.exceptions import TransitionNotAllowed

from fsm_voice.effects import (
    ArmTimer,
    CancelTimer,
    CloseTransport,
    Effect,
    OpenTransport,
    Timer,
)
from fsm_voice.fastpath import FastLifecycle, compile_machine
from fsm_voice.machine import (
    ACTIVE_STATES,
    EVENTS,
    SEVERITIES,
    SEVERITY_EVENTS,
    STATUS_OF,
    STATUSES,
    TIMER_OF,
    LifecycleMachine,
    Snapshot,
)
from fsm_voice.policy import RetryPolicy

TIMER_EVENTS = frozenset(t.value for t in Timer)
MachineConfig = Snapshot


@attrs.frozen
class Config:
    machine: MachineConfig
    armed: frozenset[Timer]
    transport_open: bool

    @property
    def state(self) -> str:
        return self.machine[0]

    @property
    def attempts(self) -> int:
        return self.machine[1]


@attrs.frozen
class Letter:
    """One input of the exploration: an event, with a severity for error-carrying events."""

    event: str
    severity: str | None = None

    def __str__(self) -> str:
        return f"{self.event}[{self.severity}]" if self.severity else self.event

    def kwargs(self) -> dict[str, str]:
        return {"severity": self.severity, "code": f"test_{self.severity}"} if self.severity else {}


def alphabet() -> tuple[Letter, ...]:
    out: list[Letter] = []
    for e in EVENTS:
        if e in SEVERITY_EVENTS:
            out.extend(Letter(e, s) for s in SEVERITIES)
        else:
            out.append(Letter(e))
    return tuple(out)


@attrs.frozen
class Edge:
    source: int
    letter: Letter
    target: int
    row: tuple[str, str, str, tuple[str, ...]]
    """The table row that fired: (source state, event, target state, actions)."""
    effects: tuple[Effect, ...]


@attrs.frozen
class Violation:
    rule: str
    message: str
    trace: tuple[str, ...]

    def __str__(self) -> str:
        steps = " -> ".join(self.trace) if self.trace else "(initial state)"
        return f"{self.rule}: {self.message}\n  shortest trace: {steps}"


@attrs.define
class Exploration:
    configs: list[Config]
    edges: list[Edge]
    refusals: int
    violations: list[Violation]
    parent: dict[int, tuple[int, Letter]]

    def trace_to(self, index: int) -> tuple[str, ...]:
        steps: list[str] = []
        while index in self.parent:
            index, letter = self.parent[index]
            steps.append(str(letter))
        return tuple(reversed(steps))

    @property
    def rows_taken(self) -> set[tuple[str, str, str, tuple[str, ...]]]:
        return {e.row for e in self.edges}

    def summary(self) -> dict[str, int]:
        return {
            "configurations": len(self.configs),
            "transitions": len(self.edges),
            "refused (event, configuration) pairs": self.refusals,
            "machine states": len({c.state for c in self.configs}),
            "table rows taken": len(self.rows_taken),
            "violations": len(self.violations),
        }


def _check_step(
    before: Config,
    letter: Letter,
    state_after: str,
    attempts_after: int,
    effects: Iterable[Effect],
    retry: RetryPolicy,
) -> tuple[Config | None, list[tuple[str, str]], frozenset[Timer], bool]:
    """Apply effects to the environment model; return problems as (rule, message)."""
    problems: list[tuple[str, str]] = []
    armed = set(before.armed)
    if letter.event in TIMER_EVENTS:
        armed.discard(Timer(letter.event))  # it fired
    topen = before.transport_open
    opened = False
    for eff in effects:
        if isinstance(eff, ArmTimer):
            if eff.timer in armed:
                problems.append(("INV-TIMER-2", f"{eff.timer} armed twice"))
            armed.add(eff.timer)
            if eff.timer is Timer.BACKOFF:
                expected = retry.delays()[attempts_after] if attempts_after < len(
                    retry.delays()
                ) else None
                if eff.delay != expected:
                    problems.append(
                        ("INV-RETRY-2", f"backoff delay {eff.delay} s, expected {expected} s")
                    )
        elif isinstance(eff, CancelTimer):
            armed.discard(eff.timer)
        elif isinstance(eff, OpenTransport):
            if topen:
                problems.append(("INV-TRANSPORT-1", "transport opened while one is still open"))
            topen = opened = True
        elif isinstance(eff, CloseTransport):
            topen = False
    return None, problems, frozenset(armed), topen if not opened else True


def explore(
    machine: type[LifecycleMachine] = LifecycleMachine,
    retry: RetryPolicy | None = None,
    *,
    stop_at_first: bool = False,
) -> Exploration:
    retry = retry or RetryPolicy()
    engine = FastLifecycle(retry=retry, machine=machine)
    letters = alphabet()
    initial = Config(engine.snapshot(engine.state_id), frozenset(), False)
    configs = [initial]
    index = {initial: 0}
    parent: dict[int, tuple[int, Letter]] = {}
    edges: list[Edge] = []
    violations: list[Violation] = []
    refusals = 0
    queue = collections.deque([0])

    def violate(rule: str, msg: str, src: int, letter: Letter) -> None:
        trace = (*Exploration(configs, edges, 0, [], parent).trace_to(src), str(letter))
        violations.append(Violation(rule, msg, trace))

    while queue:
        i = queue.popleft()
        cfg = configs[i]
        for letter in letters:
            if letter.event in TIMER_EVENTS and Timer(letter.event) not in cfg.armed:
                continue  # a timer that is not armed cannot fire
            engine.state_id = cfg.state
            engine.restore(cfg.machine)
            engine.effects = []
            try:
                engine.send(letter.event, **letter.kwargs())
            except TransitionNotAllowed:
                refusals += 1
                after = engine.snapshot(engine.state_id)
                if after != cfg.machine or engine.effects:
                    violate("INV-STRICT-1", f"refused event changed {cfg.machine} to {after}",
                            i, letter)
                if letter.event in TIMER_EVENTS:
                    violate("INV-TIMER-3", f"armed timer {letter.event} refused in {cfg.state}",
                            i, letter)
                continue
            effects = tuple(engine.take_effects())
            new_machine = engine.snapshot(engine.state_id)
            _, problems, armed, topen = _check_step(
                cfg, letter, engine.state_id, engine.attempts, effects, retry
            )
            new = Config(new_machine, armed, topen)
            problems.extend(_config_problems(new, retry))
            if letter.severity == "fatal" and (
                new.state not in ("error", *STATUS_OF) or new.state != "error"
                or any(isinstance(e, OpenTransport) for e in effects)
            ):
                problems.append(("INV-FATAL-1", f"fatal {letter.event} led to {new.state}"))
            if letter.event == "stop" and (new.state != "idle" or armed or topen):
                problems.append(("INV-STOP-1", f"stop left {new.state}, timers {sorted(armed)}, "
                                 f"transport open={topen}"))
            j = index.get(new)
            if j is None:
                j = index[new] = len(configs)
                configs.append(new)
                parent[j] = (i, letter)
                queue.append(j)
            fired = engine.fired
            assert fired is not None
            edges.append(Edge(i, letter, j, (fired.source, fired.event, fired.target,
                                             fired.actions), effects))
            for rule, msg in problems:
                violate(rule, msg, i, letter)
            if violations and stop_at_first:
                return Exploration(configs, edges, refusals, violations, parent)
    return Exploration(configs, edges, refusals, violations, parent)


def _config_problems(c: Config, retry: RetryPolicy) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    if STATUS_OF[c.state] not in STATUSES:
        out.append(("INV-STATUS-1", f"state {c.state} shows unknown status"))
    if c.attempts > retry.max_attempts:
        out.append(("INV-RETRY-1", f"{c.attempts} attempts > bound {retry.max_attempts}"))
    expected = {TIMER_OF[c.state]} if c.state in TIMER_OF else set()
    if set(c.armed) != expected:
        out.append(("INV-TIMER-1", f"in {c.state} armed timers are {sorted(c.armed)}, "
                    f"expected {sorted(expected)}"))
    if c.state in ("idle", "error", "backoff") and c.transport_open:
        out.append(("INV-TRANSPORT-2", f"transport left open in {c.state}"))
    if c.state in ACTIVE_STATES | {"ice_grace"} and not c.transport_open:
        out.append(("INV-TRANSPORT-3", f"{c.state} without an open transport"))
    return out


# -- the spec's table ------------------------------------------------------------------------
TABLE_BEGIN = "<!-- transition-table:begin -->"
TABLE_END = "<!-- transition-table:end -->"


def table_rows(
    machine: type[LifecycleMachine] = LifecycleMachine,
) -> list[tuple[str, str, str, str, str, str]]:
    """The implementation's table as rows (from, event, guard, to, kind, actions)."""
    rows = []
    for (_src, _ev), cands in compile_machine(machine).items():
        for ct in cands:
            guard = " and ".join(g if exp else f"not {g}" for g, exp in ct.guards) or "-"
            kind = "internal" if ct.internal else "external"
            rows.append((ct.source, ct.event, guard, ct.target, kind, ", ".join(ct.actions) or "-"))
    return rows


def render_table(rows: Iterable[tuple[str, ...]]) -> str:
    head = "| from | event | guard | to | kind | actions |\n|---|---|---|---|---|---|\n"
    return head + "".join("| " + " | ".join(f"`{c}`" for c in r) + " |\n" for r in rows)


def parse_spec_table(text: str) -> list[tuple[str, ...]]:
    """Rows of the machine-readable table between the markers in ``specs/connection.md``."""
    try:
        body = text.split(TABLE_BEGIN, 1)[1].split(TABLE_END, 1)[0]
    except IndexError:
        raise ValueError(f"spec has no {TABLE_BEGIN} ... {TABLE_END} block") from None
    rows = []
    for line in body.strip().splitlines()[2:]:
        cells = [c.strip().strip("`") for c in line.strip().strip("|").split("|")]
        rows.append(tuple(cells))
    return rows


# -- Promela ---------------------------------------------------------------------------------
LTL_PROPERTIES = {
    "retry_bound": "[] (attempts <= MAX_ATTEMPTS)",
    "no_reconnect_after_fatal": "[] (fatal -> ((!opened U started) || [] !opened))",
    "reconnecting_ends": "[] (reconnecting -> <> (up || st == ST_error || st == ST_idle))",
    "stop_reaches_idle": "[] (stopped -> (st == ST_idle && armed == 0 && !topen))",
    "idle_has_no_timer": "[] ((st == ST_idle || st == ST_error) -> armed == 0)",
}
FAIRNESS_NEEDED = {"reconnecting_ends"}


def to_promela(ex: Exploration, retry: RetryPolicy | None = None) -> str:
    """The explored graph as a Promela model: an environment process sends app, transport and
    server events; a clock process fires armed timers. Weak fairness (``pan -f``) means an armed
    timer eventually fires."""
    retry = retry or RetryPolicy()
    states = sorted({c.state for c in ex.configs}, key=list(STATUS_OF).index)
    lines = [
        "/* Generated by `fsm-voice check --promela`; do not edit. */",
        f"#define MAX_ATTEMPTS {retry.max_attempts}",
    ]
    lines += [f"#define ST_{s} {k}" for k, s in enumerate(states)]
    up = " || ".join(f"st == ST_{s}" for s in sorted(ACTIVE_STATES))
    rec = " || ".join(f"st == ST_{s}" for s in STATUS_OF if STATUS_OF[s] == "reconnecting")
    lines += [
        f"#define up ({up})",
        f"#define reconnecting ({rec})",
        "short cfg = 0;",
        "byte st = ST_idle;",
        "byte attempts = 0;",
        "byte armed = 0;",
        "bool topen = false;",
        "bool fatal = false;",
        "bool opened = false;",
        "bool started = false;",
        "bool stopped = false;",
        "",
    ]

    def step(e: Edge) -> str:
        c = ex.configs[e.target]
        opened = any(isinstance(x, OpenTransport) for x in e.effects)
        return (
            f"        :: cfg == {e.source} -> cfg = {e.target}; st = ST_{c.state}; "
            f"attempts = {c.attempts}; armed = {len(c.armed)}; topen = {int(c.transport_open)}; "
            f"fatal = {int(e.letter.severity == 'fatal')}; opened = {int(opened)}; "
            f"started = {int(e.letter.event == 'start')}; "
            f"stopped = {int(e.letter.event == 'stop')} /* {e.letter} */"
        )

    for proc, is_timer in (("environment", False), ("clock", True)):
        chosen = [e for e in ex.edges if (e.letter.event in TIMER_EVENTS) == is_timer]
        lines.append(f"active proctype {proc}() {{")
        lines.append("    do")
        lines.append("    :: atomic {")
        lines.append("        if")
        lines.extend(step(e) for e in chosen)
        lines.append("        fi")
        lines.append("    }")
        lines.append("    od")
        lines.append("}")
        lines.append("")
    for name, formula in LTL_PROPERTIES.items():
        lines.append(f"ltl {name} {{ {formula} }}")
    return "\n".join(lines) + "\n"


@attrs.frozen
class SpinResult:
    prop: str
    ok: bool
    output: str


def run_spin(model: str, props: Iterable[str] | None = None) -> list[SpinResult]:
    """Verify each LTL property of ``model`` with spin (``spin -a``, gcc, ``pan -a``)."""
    spin, cc = shutil.which("spin"), shutil.which("gcc") or shutil.which("cc")
    if not spin or not cc:
        raise RuntimeError("spin and gcc are needed: apt-get install spin gcc")
    results = []
    with tempfile.TemporaryDirectory(prefix="fsm-voice-spin-") as tmp:
        d = Path(tmp)
        (d / "model.pml").write_text(model)
        subprocess.run([spin, "-a", "model.pml"], cwd=d, check=True, capture_output=True)
        subprocess.run([cc, "-O2", "-DNFAIR=3", "-o", "pan", "pan.c"], cwd=d, check=True,
                       capture_output=True)
        for prop in props or LTL_PROPERTIES:
            args = ["./pan", "-a", "-m100000", "-N", prop]
            if prop in FAIRNESS_NEEDED:
                args.insert(2, "-f")
            out = subprocess.run(args, cwd=d, capture_output=True, text=True, check=False).stdout
            ok = "errors: 0" in out
            results.append(SpinResult(prop, ok, out))
    return results
