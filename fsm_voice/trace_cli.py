"""``fsm-voice replay FILE`` and ``fsm-voice timeline FILE -o OUT``."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

from fsm_voice.machine import LifecycleMachine
from fsm_voice.mutants import NAMED
from fsm_voice.replay import (
    ENGINES,
    Engine,
    ReplayError,
    ReplayResult,
    Step,
    parse_overrides,
    replay,
)
from fsm_voice.trace import TraceError, read_trace

if TYPE_CHECKING:  # rich is the [cli] extra: imported when a command runs
    from rich.console import Console


def _path(result: ReplayResult, console: Console) -> None:
    from rich.markup import escape

    """The alternative path: ``=`` as recorded, ``~`` changed, ``+`` only here, ``-`` only
    in the recording."""
    recorded = {s.line: s for s in result.recorded}
    replayed_lines = {s.line for s in result.steps if s.line is not None}

    def same(a: Step, b: Step) -> bool:
        return (a.outcome, a.target, a.effects) == (b.outcome, b.target, b.effects)

    rows: list[tuple[float, str, str]] = []
    for s in result.steps:
        rec = recorded.get(s.line) if s.line is not None else None
        mark = "+" if rec is None else ("=" if same(rec, s) else "~")
        rows.append((s.t, mark, s.describe()))
    for s in result.recorded:
        if s.line not in replayed_lines:
            rows.append((s.t, "-", s.describe()))
    rows.sort(key=lambda r: r[0])
    style = {"=": "dim", "~": "yellow", "+": "green", "-": "red"}
    console.print(f"[bold]{result.engine}: alternative path[/] (= as recorded, ~ changed, "
                  "+ only in the what-if, - only in the recording)")
    for _t, mark, text in rows:
        console.print(f"[{style[mark]}]{mark} {escape(text)}[/]")


def cmd_replay(a: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.markup import escape

    console = Console(highlight=False)
    try:
        header, records = read_trace(a.file)
        overrides = parse_overrides(a.policy or [])
        machine = NAMED[a.machine].machine() if a.machine else LifecycleMachine
        engines: tuple[Engine, ...] = ENGINES if a.engine == "both" else (a.engine,)
        results = [replay(header, records, engine=e, machine=machine, overrides=overrides)
                   for e in engines]
    except (OSError, TraceError, ReplayError) as exc:
        console.print(f"[red]{escape(str(exc))}[/]")
        return 2
    what = f" under {', '.join(f'{k}={v}' for k, v in overrides.items())}" if overrides else ""
    against = f" against mutant {a.machine}" if a.machine else ""
    for r in results:
        n = len(r.recorded)
        if r.divergence is None:
            console.print(f"[green]{r.engine}: {r.compared}/{n} steps agree{what}{against}[/]")
        else:
            console.print(f"[red]{r.engine}: diverges{what}{against} after {r.compared}/{n} "
                          f"steps[/]")
            console.print(escape(r.divergence.describe()))
        if overrides and (a.show_path or r.divergence is not None):
            _path(r, console)
    return 0 if all(r.agreed for r in results) else 1


def cmd_timeline(a: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.markup import escape

    from fsm_voice.timeline import TimelineError, render

    console = Console(highlight=False)
    try:
        out = render(a.file, a.output)
    except (OSError, TraceError, TimelineError) as exc:
        console.print(f"[red]{escape(str(exc))}[/]")
        return 2
    console.print(f"timeline written to {out}")
    return 0


def add_parsers(sub: Any) -> None:
    r = sub.add_parser("replay", help="re-run a trace's events through the current machine "
                       "(both engines) and compare every transition, effect and timer")
    r.add_argument("file", help="a trace file (fsm-voice ... --trace FILE)")
    r.add_argument("--policy", action="append", metavar="KEY=VALUE",
                   help="what-if: replay under a changed policy field (e.g. "
                   "ice.disconnected_grace=10); repeatable")
    r.add_argument("--engine", choices=("both", *ENGINES), default="both")
    r.add_argument("--machine", choices=sorted(NAMED), help="replay against a named mutant")
    r.add_argument("--show-path", action="store_true",
                   help="with --policy: print the alternative path even when it agrees")
    r.set_defaults(func=cmd_replay)
    t = sub.add_parser("timeline", help="draw a trace: status, state, recovery, speech, "
                       "faults, quality (html with plotly; svg/png with matplotlib)")
    t.add_argument("file", help="a trace file")
    t.add_argument("-o", "--output", required=True, help="out.html, out.svg or out.png")
    t.set_defaults(func=cmd_timeline)
