"""Mutants of the lifecycle table: the checks must kill every one that changes behaviour.

Two sources: :func:`operator_mutants` applies a fixed set of mutation operators to the table data
(drop / negate a guard predicate, off-by-one bound, change a target, drop an update, change an
update's value, drop an effect, drop an effect's condition, swap two rows of the same choice,
flip internal/external); :data:`NAMED` holds hand-written mutants of real-world bugs (the five of
issue 8 among them). ``fsm-voice check --planted NAME`` checks a named one; ``fsm-voice mutate``
runs them all with ``fsm-voice check`` as the oracle and prints the kill table.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from typing import Any, Final

import attrs

from fsm_voice.effects import OpenReason
from fsm_voice.machine.engine import LifecycleMachine, build_machine
from fsm_voice.machine.table import (
    STATES,
    TABLE,
    VALUES,
    Eff,
    Pred,
    Row,
    Update,
)


@attrs.frozen
class Mutant:
    name: str
    description: str
    table: tuple[Row, ...]

    def machine(self) -> type[LifecycleMachine]:
        return _machine(self.table, self.name)


_CACHE: dict[tuple[Row, ...], type[LifecycleMachine]] = {}


def _machine(table: tuple[Row, ...], name: str) -> type[LifecycleMachine]:
    cls = _CACHE.get(table)
    if cls is None:
        ident = "".join(c if c.isalnum() else "_" for c in name.title())
        cls = _CACHE[table] = build_machine(table, f"Mutant{ident}")
    return cls


def _map(select: Callable[[Row], bool], change: Callable[[Row], Row]) -> tuple[Row, ...]:
    out = tuple(change(r) if select(r) else r for r in TABLE)
    if out == TABLE:
        raise ValueError("mutation changed nothing")
    return out


def _label(*labels: str) -> Callable[[Row], bool]:
    return lambda r: r.label in labels


def _without_update(var: str, value: object = None) -> Callable[[Row], Row]:
    return lambda r: attrs.evolve(r, updates=tuple(
        u for u in r.updates if not (u.var == var and (value is None or u.value == value))))


def _without_effect(kind: str) -> Callable[[Row], Row]:
    return lambda r: attrs.evolve(r, effects=tuple(e for e in r.effects if e.kind != kind))


def _also(code: str, like: str) -> tuple[Row, ...]:
    """The table where ``session_closed`` ``code`` is handled like ``like``: a copy of each
    ``like`` row, guarded on ``code``, inserted before it (so it wins)."""
    out: list[Row] = []
    for r in TABLE:
        if Pred("code", like) in r.guard:
            out.append(attrs.evolve(r, guard=tuple(
                Pred("code", code) if p == Pred("code", like) else p for p in r.guard)))
        out.append(r)
    return tuple(out)


def _named() -> dict[str, Mutant]:
    m: dict[str, Callable[[], tuple[Row, ...]]] = {
        # -- the five of issue 8 ------------------------------------------------------------
        "no-reset-when-stable": lambda: _map(_label("episode_ends"),
                                             _without_update("attempts")),
        "backoff-keeps-transport": lambda: _map(
            lambda r: r.target == "backoff", _without_effect("close")),
        "grace-forgets-speech": lambda: _map(
            lambda r: r.source == "ice_grace" and r.label.startswith("remember_"),
            lambda r: attrs.evolve(r, updates=())),
        "quick-retry-never-spent": lambda: _map(_label("quick_reconnect"),
                                                _without_update("quick_used")),
        "restart-counts-attempt": lambda: _map(
            lambda r: r.target == "restarting",
            lambda r: attrs.evolve(r, updates=(*r.updates, Update("attempts", "inc")))),
        # -- more real-world bugs ------------------------------------------------------------
        "off-by-one-retry": lambda: _map(
            lambda r: any(p.kind == "attempts_below_max" for p in r.guard),
            lambda r: attrs.evolve(r, guard=tuple(
                attrs.evolve(p, value="1") if p.kind == "attempts_below_max" else p
                for p in r.guard))),
        "no-damping": lambda: _map(
            lambda r: any(p == Pred("flag", "episode") for p in r.guard),
            lambda r: attrs.evolve(r, guard=tuple(
                p.negated() if p == Pred("flag", "episode") else p for p in r.guard))),
        "reset-on-up": lambda: _map(
            _label("session_up"),
            lambda r: attrs.evolve(r, updates=(*r.updates, Update("attempts", "set", 0)))),
        "stable-not-cancelled": lambda: _map(
            lambda r: True, lambda r: attrs.evolve(r, effects=tuple(
                e for e in r.effects if not (e.kind == "cancel" and e.timer is not None
                                             and e.timer.value == "session_stable")))),
        "rollover-survives-close": lambda: _map(
            lambda r: r.label != "arm_rollover", lambda r: attrs.evolve(r, effects=tuple(
                e for e in r.effects if not (e.kind == "cancel" and e.timer is not None
                                             and e.timer.value == "rollover_due")))),
        "retry-after-ignored": lambda: _map(
            lambda r: r.label == "retry_after_too_long",
            lambda r: attrs.evolve(r, guard=(Pred("retry_after_set", neg=True),
                                              Pred("retry_after_set")))),
        "rollover-while-speaking": lambda: _map(
            _label("rollover_pending"),
            lambda r: attrs.evolve(r, target="restarting", internal=False, updates=(),
                                   effects=(Eff("close"), Eff("open", _restart_reason())))),
        "fatal-retried": lambda: _map(
            lambda r: r.label == "fail_fatal" and r.source in ("connecting", "reconnecting"),
            lambda r: attrs.evolve(r, target="backoff", effects=(Eff("close"),))),
        "ignorable-reported": lambda: _map(
            _label("ignore"), lambda r: attrs.evolve(r, effects=(Eff("report"),))),
        "transient-server-error-restarts": lambda: _map(
            lambda r: r.label == "report_nonfatal" and r.source == "active",
            lambda r: attrs.evolve(r, target="restarting", internal=False,
                                   effects=(Eff("close"), Eff("open", _restart_reason())),
                                   updates=(Update("episode", "set", True),))),
        "session-expired-ignored": lambda: _map(
            lambda r: r.event == "server_error" and any(p.kind == "code" for p in r.guard),
            lambda r: attrs.evolve(r, guard=(*r.guard, Pred("code", "never")))),
        "expires-in-unchecked": lambda: _map(
            _label("arm_rollover"),
            lambda r: attrs.evolve(r, guard=tuple(p for p in r.guard
                                                  if p.kind != "expires_valid"))),
        "start-keeps-conversation": lambda: _map(
            _label("begin_session"), _without_effect("new_conversation")),
        "replay-after-start": lambda: _map(
            _label("session_up"), lambda r: attrs.evolve(r, effects=tuple(
                attrs.evolve(e, replay=True) if e.kind == "connection_up" else e
                for e in r.effects))),
        "up-on-one-half": lambda: _map(
            _label("session_up"), lambda r: attrs.evolve(r, guard=())),
        # -- Live session.closed -------------------------------------------------------------
        "content-retries": lambda: _also("content", "connection_lost"),
        "hangup-reconnects": lambda: _also("remote_hangup", "connection_lost"),
        "closed-undamped": lambda: tuple(
            r for r in TABLE if not (r.event == "session_closed" and Pred("flag", "episode")
                                     in r.guard and r.source not in ("connecting",
                                                                     "restarting",
                                                                     "reconnecting"))),
        "closed-keeps-transport": lambda: _map(
            _label("session_ended"), _without_effect("close")),
    }
    descriptions = {
        "no-reset-when-stable": "the episode's attempt counter is not reset when it ends",
        "backoff-keeps-transport": "going to backoff does not close the transport",
        "grace-forgets-speech": "speech events during ice_grace are not remembered",
        "quick-retry-never-spent": "the quick retry is never marked as used",
        "restart-counts-attempt": "a transport restart counts as a reconnect attempt",
        "off-by-one-retry": "one reconnect attempt too many (<= instead of <)",
        "no-damping": "failures inside an open episode restart instead of backing off",
        "reset-on-up": "the counter resets when the connection comes up (the 3.04 s loop)",
        "stable-not-cancelled": "closing the transport leaves session_stable armed",
        "rollover-survives-close": "closing the transport leaves rollover_due armed",
        "retry-after-ignored": "a Retry-After beyond the maximum is waited for",
        "rollover-while-speaking": "a rollover interrupts the user / assistant",
        "fatal-retried": "a fatal signaling failure backs off and retries",
        "ignorable-reported": "ignorable server errors are reported",
        "transient-server-error-restarts": "a transient server error restarts the transport",
        "session-expired-ignored": "a server session_expired error is only reported",
        "expires-in-unchecked": "an unusable expires_in arms the rollover",
        "start-keeps-conversation": "start does not discard the earlier conversation",
        "replay-after-start": "the first connection of a session replays a conversation",
        "up-on-one-half": "the session is up on transport_connected or channel_open alone",
        "content-retries": "a session the safety filter closed (content) is started again",
        "hangup-reconnects": "a remote_hangup is treated as a lost connection and retried",
        "closed-undamped": "expired / connection_lost restart at once even inside an episode",
        "closed-keeps-transport": "a session the server ended leaves the transport open",
    }
    return {k: Mutant(k, descriptions[k], f()) for k, f in m.items()}


def _restart_reason() -> OpenReason:
    return OpenReason.RESTART


# -- operators -------------------------------------------------------------------------------
def _replace(i: int, row: Row) -> tuple[Row, ...]:
    return (*TABLE[:i], row, *TABLE[i + 1:])


def _rid(i: int, r: Row) -> str:
    return f"{i}:{r.source}/{r.event}/{r.label}"


def operator_mutants() -> Iterator[Mutant]:
    """Every first-order mutant of :data:`TABLE` under the operator set."""
    names = [s.name for s in STATES]
    for i, r in enumerate(TABLE):
        rid = _rid(i, r)
        for j, p in enumerate(r.guard):
            rest = r.guard[:j] + r.guard[j + 1:]
            yield Mutant(f"drop-guard {rid} {p}", f"drop guard `{p}`",
                         _replace(i, attrs.evolve(r, guard=rest)))
            neg = (*r.guard[:j], p.negated(), *r.guard[j + 1:])
            yield Mutant(f"negate-guard {rid} {p}", f"negate guard `{p}`",
                         _replace(i, attrs.evolve(r, guard=neg)))
            if p.kind == "attempts_below_max":
                for off in ("1", "-1"):
                    g = (*r.guard[:j], attrs.evolve(p, value=off), *r.guard[j + 1:])
                    yield Mutant(f"off-by-one {rid} {off}", f"bound max{int(off):+d}",
                                 _replace(i, attrs.evolve(r, guard=g)))
        if not r.internal:
            k = names.index(r.target)
            for other in {names[(k + 1) % len(names)], r.source} - {r.target}:
                yield Mutant(f"retarget {rid} -> {other}", f"target {other}",
                             _replace(i, attrs.evolve(r, target=other)))
        if r.source == r.target:
            yield Mutant(f"flip-internal {rid}", "internal <-> external",
                         _replace(i, attrs.evolve(r, internal=not r.internal)))
        for j, u in enumerate(r.updates):
            rest_u = r.updates[:j] + r.updates[j + 1:]
            yield Mutant(f"drop-update {rid} {u}", f"drop update `{u}`",
                         _replace(i, attrs.evolve(r, updates=rest_u)))
            for v in _other_values(u):
                ups = (*r.updates[:j], attrs.evolve(u, value=v), *r.updates[j + 1:])
                yield Mutant(f"change-update {rid} {u} -> {v}", f"`{u}` -> {v}",
                             _replace(i, attrs.evolve(r, updates=ups)))
        for j, e in enumerate(r.effects):
            rest_e = r.effects[:j] + r.effects[j + 1:]
            yield Mutant(f"drop-effect {rid} {e}", f"drop effect `{e}`",
                         _replace(i, attrs.evolve(r, effects=rest_e)))
            if e.when is not None:
                effs = (*r.effects[:j], attrs.evolve(e, when=None), *r.effects[j + 1:])
                yield Mutant(f"drop-when {rid} {e}", f"`{e}` unconditional",
                             _replace(i, attrs.evolve(r, effects=effs)))
        if i + 1 < len(TABLE):
            nxt = TABLE[i + 1]
            if (nxt.source, nxt.event) == (r.source, r.event):
                yield Mutant(f"swap {rid} <-> {i + 1}", "swap with the next row",
                             (*TABLE[:i], nxt, r, *TABLE[i + 2:]))


def _other_values(u: Update) -> list[bool | int | str]:
    if u.op == "inc":
        return []
    if isinstance(u.value, bool):
        return [not u.value]
    if isinstance(u.value, int):
        return [u.value + 1]
    return [v for v in VALUES[u.var] if v != u.value]


NAMED: Final[dict[str, Mutant]] = _named()


@functools.cache
def _planted() -> dict[str, type[LifecycleMachine]]:
    return {k: v.machine() for k, v in NAMED.items()}


def __getattr__(name: str) -> Any:
    """``PLANTED``: the named mutants as machine classes (``fsm-voice check --planted NAME``),
    built on first use: building the 20 classes costs ~0.3 s, which every CLI command paid at
    start-up when only the names were needed for its parser."""
    if name == "PLANTED":
        return _planted()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# -- the oracle ------------------------------------------------------------------------------
@attrs.frozen
class Verdict:
    name: str
    outcome: str
    """``killed`` | ``equivalent`` | ``survived``."""
    rules: tuple[str, ...]
    """The rules that failed (killed), or why it is equivalent."""


Behaviour = frozenset[tuple[object, ...]]
_ORIGINAL: dict[int, Behaviour] = {}


def _explore(table: tuple[Row, ...], max_attempts: int) -> tuple[list[str], Behaviour,
                                                                  list[Row]]:
    """(failed rules, reachable behaviour, dead rows) of ``table`` with ``max_attempts``."""
    from fsm_voice.check import CHECK_RETRY, explore
    from fsm_voice.machine.logic import LifecycleLogic

    cls = type("Plain", (LifecycleLogic,), {"TABLE": table})
    ex = explore(cls, attrs.evolve(CHECK_RETRY, max_attempts=max_attempts), stop_at_first=True)
    behaviour = frozenset((ex.configs[e.source], e.letter, ex.configs[e.target], e.effects)
                          for e in ex.edges)
    taken = ex.rows_taken
    return (list(dict.fromkeys(v.rule for v in ex.violations)), behaviour,
            [r for r in table if r not in taken])


def judge(m: Mutant) -> Verdict:
    """``fsm-voice check`` (explorer with max_attempts 3, 1, 0, liveness, crash, dead rows;
    without the spec comparison, which every mutant fails, and spin) as the oracle. A mutant
    that passes and whose reachable behaviour equals the original's is equivalent."""
    failed: list[str] = []
    same = True
    dead: set[Row] | None = None
    for n in (3, 1, 0):
        rules, behaviour, dead_n = _explore(m.table, n)
        failed += [r for r in rules if r not in failed]
        if failed:
            return Verdict(m.name, "killed", tuple(failed))
        if n not in _ORIGINAL:
            _ORIGINAL[n] = _explore(TABLE, n)[1]
        same = same and behaviour == _ORIGINAL[n]
        dead = set(dead_n) if dead is None else dead & set(dead_n)
    if same:
        return Verdict(m.name, "equivalent", ("same transitions and effects from every "
                                              "reachable configuration (max_attempts 3, 1, 0)",))
    if dead:
        return Verdict(m.name, "killed", ("DEAD-ROW",))
    return Verdict(m.name, "survived", ())


def run(mutants: list[Mutant], workers: int = 2) -> list[Verdict]:
    if workers <= 1:
        return [judge(m) for m in mutants]
    import multiprocessing

    with multiprocessing.get_context("fork").Pool(workers) as pool:
        return pool.map(judge, mutants, chunksize=4)


#: Why a surviving mutant of each operator can be equivalent (checked: the mutant's reachable
#: behaviour, every transition and effect, equals the original's).
EQUIVALENCE_REASONS: Final[dict[str, str]] = {
    "change-update": "the variable is overwritten (target's entry) or never read before it is",
    "drop-update": "the variable already has that value wherever the row is taken",
    "drop-when": "the effect's condition holds wherever the row is taken",
    "drop-effect": "the effect's condition never holds where the row is taken",
    "flip-internal": "the state has no timer and its entry changes nothing here",
    "swap": "the two rows' guards never hold together",
    "drop-guard": "the guard holds wherever the row is tried",
    "negate-guard": "the guard is decided by the rows before it",
    "retarget": "the row is never taken with these parameters",
    "off-by-one": "the bound is never reached where the row is tried",
}


def render_report(named: list[Verdict], ops: list[Verdict]) -> str:
    """``specs/mutation.md``: the score, the named kill table, kills per rule, equivalents."""
    import collections

    def score(vs: list[Verdict]) -> str:
        k = sum(v.outcome == "killed" for v in vs)
        e = sum(v.outcome == "equivalent" for v in vs)
        return (f"{len(vs)} mutants: {k} killed, {e} equivalent, "
                f"{len(vs) - k - e} survived; score {k}/{len(vs) - e}")

    lines = ["# Mutation testing of `fsm-voice check`", "",
             "Generated by `fsm-voice check --mutate`; do not edit. Oracle: `fsm-voice check` "
             "(explorer with max_attempts 3, 1, 0, liveness, crash-only, dead rows; not the spec "
             "comparison, which every mutant fails).", "",
             f"- named mutants: {score(named)}", f"- operator mutants: {score(ops)}", "",
             "## Named mutants", "", "| mutant | what it breaks | verdict | killed by |",
             "|---|---|---|---|"]
    for v in named:
        lines.append(f"| `{v.name}` | {NAMED[v.name].description} | {v.outcome} | "
                     f"{', '.join(v.rules)} |")
    first = collections.Counter(v.rules[0] for v in ops if v.outcome == "killed")
    lines += ["", "## Operator mutants killed, by the first rule that failed", "",
              "| rule | mutants |", "|---|---|"]
    lines += [f"| {r} | {n} |" for r, n in sorted(first.items(), key=lambda x: -x[1])]
    lines += ["", "## Equivalent operator mutants", "",
              "Each has the same transitions and effects as the original from every reachable "
              "configuration (max_attempts 3, 1, 0), so no check can tell them apart.", "",
              "| mutant | reason |", "|---|---|"]
    for v in ops:
        if v.outcome == "equivalent":
            reason = EQUIVALENCE_REASONS.get(v.name.split()[0], v.rules[0])
            lines.append(f"| `{v.name}` | {reason} |")
    survived = [v.name for v in (*named, *ops) if v.outcome == "survived"]
    if survived:
        lines += ["", "## Survived", ""] + [f"- `{n}`" for n in survived]
    return "\n".join(lines) + "\n"
