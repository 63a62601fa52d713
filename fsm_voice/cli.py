"""``fsm-voice``: check | diagram | demo | peer | connect | broker."""

from __future__ import annotations

import argparse
import importlib
import sys
from pathlib import Path

from rich.console import Console
from rich.table import Table

from fsm_voice.check import (
    explore,
    parse_spec_table,
    run_spin,
    table_rows,
    to_promela,
)
from fsm_voice.machine import LifecycleMachine
from fsm_voice.planted import PLANTED
from fsm_voice.policy import RetryPolicy

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
    machine: type[LifecycleMachine] = PLANTED[args.planted] if args.planted else LifecycleMachine
    ok = True
    ex = explore(machine)
    taken = set(ex.rows_taken)
    for max_attempts in (0, 1):  # rows only reachable with other bounds (e.g. give_up at once)
        taken |= explore(machine, RetryPolicy(max_attempts=max_attempts)).rows_taken
    table = Table(title=f"Explored {machine.__name__}", show_header=False)
    for k, v in ex.summary().items():
        table.add_row(k, str(v))
    rows = table_rows(machine)
    table.add_row("table rows (implementation)", str(len(rows)))
    table.add_row("rows taken with max_attempts in {0, 1, 3}", str(len(taken)))
    console.print(table)
    for violation in ex.violations[: args.show]:
        ok = False
        console.print(f"[bold red]VIOLATION[/] {violation}")
    if len(ex.violations) > args.show:
        console.print(f"... and {len(ex.violations) - args.show} more violations")
    dead = {(r[0], r[1], r[3], tuple(a for a in r[5].split(", ") if a != "-")) for r in rows} - {
        (s, e, t, a) for s, e, t, a in taken
    }
    if dead:
        ok = False
        console.print(f"[red]rows never taken:[/] {sorted(dead)}")
    spec = _find_spec(args.spec)
    if spec is not None and not args.planted:
        try:
            spec_rows = parse_spec_table(spec.read_text())
        except (OSError, ValueError) as exc:
            console.print(f"[red]cannot read the spec table from {spec}: {exc}[/]")
            return 1
        if spec_rows != [tuple(r) for r in rows]:
            ok = False
            missing = set(rows) - set(spec_rows)
            extra = set(spec_rows) - set(rows)
            console.print(f"[red]spec table ({spec}) differs from the machine[/]: "
                          f"not in spec {sorted(missing)}; only in spec {sorted(extra)}")
        else:
            console.print(f"spec table matches the machine ({len(rows)} rows, {spec})")
    if args.spin:
        for r in run_spin(to_promela(ex)):
            mark = "[green]ok[/]" if r.ok else "[bold red]VIOLATED[/]"
            console.print(f"spin: {r.prop:28s} {mark}")
            ok = ok and r.ok
    console.print("[bold green]check passed[/]" if ok else "[bold red]check FAILED[/]")
    return 0 if ok else 1


def cmd_diagram(args: argparse.Namespace) -> int:
    from fsm_voice.diagrams import generated

    root = Path(args.root)
    stale = []
    for rel, text in generated().items():
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
    c.add_argument("--planted", choices=sorted(PLANTED), help="check a deliberately broken variant")
    c.add_argument("--spec", help="path to specs/connection.md (default: found from cwd)")
    c.add_argument("--no-spin", dest="spin", action="store_false", help="skip the spin model check")
    c.add_argument("--show", type=int, default=3, help="violations to print (default 3)")
    c.set_defaults(func=cmd_check)
    d = sub.add_parser("diagram", help="write diagrams/ and specs/lifecycle.pml")
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
