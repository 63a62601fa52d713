"""``fsm-voice``: check | diagram | demo | peer | connect | broker."""

from __future__ import annotations

import argparse
import importlib
import sys
from pathlib import Path

import attrs
from rich.console import Console
from rich.table import Table

from fsm_voice.check import (
    CHECK_RETRY,
    dead_rows,
    explore,
    generated_spec,
    run_spin,
    spin_state_count,
    to_promela,
)
from fsm_voice.machine import LifecycleMachine
from fsm_voice.mutants import NAMED, PLANTED

console = Console()

#: Modules that register more subcommands (each has ``add_parsers(subparsers)``).
_SUBCOMMAND_MODULES: tuple[str, ...] = ("fsm_voice.demo", "fsm_voice.broker.cli")


def _find_spec(explicit: str | None) -> Path | None:
    if explicit:
        return Path(explicit)
    for base in (Path.cwd(), Path(__file__).resolve().parent.parent):
        p = base / "specs" / "connection.md"
        if p.exists():
            return p
    return None


def cmd_check(args: argparse.Namespace) -> int:
    if args.mutate:
        return _cmd_mutate(args)
    machine: type[LifecycleMachine] = PLANTED[args.planted] if args.planted else LifecycleMachine
    ok = True
    ex = explore(machine)
    violations = list(ex.violations)
    for max_attempts in (1, 0):  # rows only reachable with other bounds (e.g. give_up at once)
        violations += explore(machine, attrs.evolve(CHECK_RETRY, max_attempts=max_attempts),
                              stop_at_first=True).violations
    table = Table(title=f"Explored {machine.__name__}", show_header=False)
    for k, v in ex.summary().items():
        table.add_row(k, str(v))
    table.add_row("table rows", str(len(machine.TABLE)))
    console.print(table)
    for violation in violations[: args.show]:
        ok = False
        console.print(f"[bold red]VIOLATION[/] {violation}")
    if len(violations) > args.show:
        console.print(f"... and {len(violations) - args.show} more violations")
    dead = dead_rows(machine)
    if dead:
        ok = False
        console.print(f"[red]rows never taken:[/] {[(r.source, r.event, r.label) for r in dead]}")
    spec = _find_spec(args.spec)
    if spec is not None and not args.planted:
        try:
            text = spec.read_text()
            fresh = generated_spec(text)
        except (OSError, ValueError) as exc:
            console.print(f"[red]cannot read the generated blocks of {spec}: {exc}[/]")
            return 1
        if fresh != text:
            ok = False
            console.print(f"[red]the tables of {spec} differ from the machine[/]; "
                          "run `fsm-voice diagram`")
        else:
            console.print(f"spec tables match the machine ({len(machine.TABLE)} rows, {spec})")
    if args.spin:
        count = spin_state_count(to_promela(machine, flags=False))
        same = count == len(ex.configs)
        ok = ok and same
        mark = "[green]ok[/]" if same else "[bold red]DIFFERS[/]"
        console.print(f"spin: {count} reachable states, explorer {len(ex.configs)} "
                      f"configurations {mark}")
        for model in (to_promela(machine), to_promela(machine, peer=True)):
            for r in run_spin(model):
                mark = "[green]ok[/]" if r.ok else "[bold red]VIOLATED[/]"
                console.print(f"spin: {r.prop:28s} {mark}")
                ok = ok and r.ok
    console.print("[bold green]check passed[/]" if ok else "[bold red]check FAILED[/]")
    return 0 if ok else 1


def _cmd_mutate(args: argparse.Namespace) -> int:
    from fsm_voice.mutants import operator_mutants, render_report, run

    named = run(list(NAMED.values()), workers=args.workers)
    ops = run(list(operator_mutants()), workers=args.workers)
    if args.report:
        Path(args.report).write_text(render_report(named, ops))
        console.print(f"wrote {args.report}")
    for title, verdicts in (("named mutants", named), ("operator mutants", ops)):
        killed = sum(v.outcome == "killed" for v in verdicts)
        equivalent = [v for v in verdicts if v.outcome == "equivalent"]
        survived = [v for v in verdicts if v.outcome == "survived"]
        console.print(f"{title}: {len(verdicts)}, killed {killed}, equivalent "
                      f"{len(equivalent)}, survived {len(survived)}; score "
                      f"{killed}/{len(verdicts) - len(equivalent)}")
        if title == "named mutants":
            for v in verdicts:
                console.print(f"  {v.name:34s} {v.outcome:10s} {', '.join(v.rules)}")
        for v in survived:
            console.print(f"  [bold red]SURVIVED[/] {v.name}")
    return 0 if all(v.outcome != "survived" for v in (*named, *ops)) else 1


def cmd_diagram(args: argparse.Namespace) -> int:
    from fsm_voice.diagrams import generated

    root = Path(args.root)
    stale = []
    for rel, text in generated(root).items():
        path = root / rel
        if args.check:
            if not path.exists() or path.read_text() != text:
                stale.append(rel)
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
            console.print(f"wrote {path}")
    if stale:
        console.print(f"[red]out of date:[/] {', '.join(stale)}; run `fsm-voice diagram`")
        return 1
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="fsm-voice", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)
    c = sub.add_parser("check", help="explore the machine exhaustively, check invariants and spin")
    c.add_argument("--planted", choices=sorted(PLANTED), help="check a named mutant")
    c.add_argument("--mutate", action="store_true",
                   help="mutation testing: run every mutant with check as the oracle")
    c.add_argument("--workers", type=int, default=2, help="processes for --mutate")
    c.add_argument("--report", help="with --mutate: write the kill table here "
                   "(specs/mutation.md)")
    c.add_argument("--spec", help="path to specs/connection.md (default: found from cwd)")
    c.add_argument("--no-spin", dest="spin", action="store_false", help="skip the spin model check")
    c.add_argument("--show", type=int, default=3, help="violations to print (default 3)")
    c.set_defaults(func=cmd_check)
    d = sub.add_parser("diagram", help="regenerate diagrams/, specs/*.pml, the spec's tables "
                       "and the README's diagram")
    d.add_argument("--check", action="store_true", help="only report drift, write nothing")
    d.add_argument("--root", default=".", help="project root (default: cwd)")
    d.set_defaults(func=cmd_diagram)
    for name in _SUBCOMMAND_MODULES:
        importlib.import_module(name).add_parsers(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
