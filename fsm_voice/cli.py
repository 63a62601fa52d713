"""``fsm-voice``: check | diagram | demo | peer | connect | broker | replay | timeline | dashboard.

Shared by the commands: :data:`EXIT_CODES`, one-line usage errors (:class:`Parser`, argument
types), clean stops on SIGINT/SIGTERM (:class:`SignalStop`, :func:`serve`) and :func:`main`."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib
import logging
import math
import os
import signal
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from types import FrameType, TracebackType
from typing import Any, NoReturn, Self

import anyio

from fsm_voice.errors import ConfigError, FsmVoiceError

# Exit statuses, documented in ``--help`` and the README.
EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_NOT_CONNECTED = 3

EXIT_CODES = f"""\
exit status:
  {EXIT_OK}    success: connect ran for --duration (or until --responses N, /quit, or the
       server ended the Live session: remote_hangup, a broker's cap) and
       stopped cleanly; demo recovered; check passed; diagram up to date; peer/broker stopped
       by SIGINT or SIGTERM
  {EXIT_FAILED}    failure: connect's session reached `error` (a fatal error or retries exhausted;
       it exits at once); demo did not recover; check found a violation; diagram drift;
       peer/broker could not listen
  {EXIT_USAGE}    a bad argument, configuration or missing extra (one line on stderr)
  {EXIT_NOT_CONNECTED}    connect: --duration ended while the session was not connected
  130  connect/demo interrupted by SIGINT (Ctrl-C), stopped cleanly (call hung up, idle)
  141  connect: its stdout was closed (e.g. `| head`), stopped cleanly, likewise
  143  connect/demo stopped by SIGTERM, likewise
"""

#: Modules that register more subcommands (each has ``add_parsers(subparsers)``).
_SUBCOMMAND_MODULES: tuple[str, ...] = ("fsm_voice.demo", "fsm_voice.terminal",
                                         "fsm_voice.broker.cli", "fsm_voice.trace_cli",
                                         "fsm_voice.dashboard")

#: Optional dependency -> the extra that installs it.
_EXTRAS = {"rich": "cli", "pydot": "diagram"}


class Parser(argparse.ArgumentParser):
    """An argument parser whose usage errors are one line on stderr (exit status 2)."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: {message} (see --help)\n")


# ------------------------------------------------------------------------ argument types


def seconds(text: str, *, allow_inf: bool = False) -> float:
    """A positive number of seconds (``inf`` too when ``allow_inf``); argparse type."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not value > 0 or (math.isinf(value) and not allow_inf):
        expected = "a positive number of seconds" + (" or inf" if allow_inf else "")
        raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}")
    return value


def count(text: str) -> int:
    """A non-negative integer; argparse type."""
    if not text.strip().isdigit():
        raise argparse.ArgumentTypeError(f"expected a non-negative integer, got {text!r}")
    return int(text)


def port(text: str) -> int:
    """A TCP port number, 0 (any free one) to 65535; argparse type."""
    try:
        value = int(text)
    except ValueError:
        value = -1
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"expected a port number 0..65535, got {text!r}")
    return value


def http_url(text: str) -> str:
    """An http(s) base URL (no query, no credentials); argparse type."""
    from fsm_voice.signaling.http import _check_base_url

    try:
        return _check_base_url(text)
    except ConfigError as exc:
        raise argparse.ArgumentTypeError(str(exc).replace("base_url=", "", 1)) from None


# ------------------------------------------------------------------------------ signals


class SignalStop:
    """``with SignalStop() as stop:`` (inside the event loop): SIGINT and SIGTERM cancel
    :attr:`scope` (enter it around the waiting part) and are recorded in :attr:`signum`; later
    ones are absorbed until the block ends, so the clean-up after the scope always runs."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.scope = anyio.CancelScope()
        self.signum: int | None = None
        self.again: list[Callable[[], None]] = []
        """Called on each stop signal after the first (e.g. to cut a clean-up's waits)."""
        self._previous: dict[int, Any] = {}

    @property
    def exit_code(self) -> int | None:
        """128 + the signal number, or None when no signal came."""
        return None if self.signum is None else 128 + self.signum

    def request(self, signum: int) -> None:
        """Stop as if ``signum`` had arrived (e.g. SIGPIPE when stdout is gone)."""
        self._received(signum)

    def _received(self, signum: int) -> None:
        global _STOPPED_BY
        if self.signum is None:
            self.signum = signum
            if signum in self.SIGNALS:  # not request(SIGPIPE)
                _STOPPED_BY = _STOPPED_BY or signum
            self.scope.cancel()
        elif signum in self.SIGNALS:
            for call in self.again:
                try:
                    call()
                except Exception:  # a stop must never fail in its clean-up
                    logging.getLogger(__name__).exception("stop callback failed")

    def __enter__(self) -> Self:
        loop = asyncio.get_running_loop()
        for sig in self.SIGNALS:
            self._previous[sig] = signal.getsignal(sig)
            loop.add_signal_handler(sig, self._received, int(sig))
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        loop = asyncio.get_running_loop()
        # Blocked while the handlers change hands: asyncio's removal installs SIG_DFL for a
        # moment, and after a stop signal a later one must not kill the clean-up.
        blocked = signal.pthread_sigmask(signal.SIG_BLOCK, self.SIGNALS)
        try:
            for sig, previous in self._previous.items():
                loop.remove_signal_handler(sig)
                if self.signum in self.SIGNALS:  # absorb the rest until the process ends
                    signal.signal(sig, _absorb)
                elif previous is not None:  # None: installed from C, not restorable
                    signal.signal(sig, previous)
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, blocked)


class _Terminated(BaseException):
    """SIGTERM outside an event loop (start-up, argument parsing)."""


_STOPPED_BY: int | None = None
"""The first SIGINT/SIGTERM that stopped this process (its exit code follows it)."""


def _absorb(signum: int, frame: FrameType | None) -> None:
    """A stop signal after the first one: ignored, so the clean-up runs to its end."""


def _terminate(signum: int, frame: FrameType | None) -> None:
    global _STOPPED_BY
    if _STOPPED_BY is None:
        _STOPPED_BY = signum
        signal.signal(signal.SIGINT, _absorb)  # the clean-up of this stop is not interrupted
        raise _Terminated


def serve(name: str, serve_forever: Callable[[Callable[[str], None]], Awaitable[None]],
          ready: Callable[[str], None]) -> int:
    """Run a server until SIGINT or SIGTERM (0); a failure to listen is one line (1)."""

    async def run() -> None:
        with SignalStop() as stop, stop.scope:
            await serve_forever(ready)

    try:
        anyio.run(run)
    except OSError as exc:
        print(f"fsm-voice {name}: cannot listen: {exc}", file=sys.stderr)
        return EXIT_FAILED
    return EXIT_OK


# ------------------------------------------------------------------------- check, diagram


def _find_spec(explicit: str | None) -> Path | None:
    if explicit:
        if not Path(explicit).is_file():
            raise ConfigError.invalid("--spec", explicit, "an existing specs/connection.md")
        return Path(explicit)
    for base in (Path.cwd(), Path(__file__).resolve().parent.parent):
        p = base / "specs" / "connection.md"
        if p.exists():
            return p
    return None


def cmd_check(args: argparse.Namespace) -> int:
    if args.mutate:
        return _cmd_mutate(args)
    spec = _find_spec(args.spec)  # a bad --spec is a usage error (2), before the slow part
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

    console = Console()
    PLANTED = _planted()
    machine: type[LifecycleMachine] = PLANTED[args.planted] if args.planted else LifecycleMachine
    ok = True
    # a mutant's own state space can be unbounded: stop at its first (shortest) violation
    ex = explore(machine, stop_at_first=bool(args.planted))
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
    from rich.console import Console

    from fsm_voice.mutants import NAMED, operator_mutants, render_report, run

    console = Console()

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


_PROJECT_MARKERS = ("pyproject.toml", "specs/connection.md")
"""Files that make a directory an fsm_voice project root (``diagram`` writes only there)."""


def cmd_diagram(args: argparse.Namespace) -> int:
    from fsm_voice.diagrams import generated

    root = Path(args.root)
    if not root.is_dir():
        raise ConfigError.invalid("--root", args.root, "an existing directory")
    if args.diff or args.trace or args.effects:
        from fsm_voice.diagram_changes import draw_changes

        return draw_changes(root, args.diff, args.trace, args.out, effects=args.effects)
    missing = [m for m in _PROJECT_MARKERS if not (root / m).is_file()]
    if missing:
        raise ConfigError(f"--root={args.root!r} is not a project root (no "
                          f"{' / '.join(missing)}); run it in a checkout or pass --root")
    stale = []
    try:
        for rel, text in generated(root).items():
            path = root / rel
            if args.check:
                if not path.exists() or path.read_text() != text:
                    stale.append(rel)
            else:
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(text)
                print(f"wrote {path}")
        if not args.check:
            from fsm_voice.views import png_views

            for rel, data in png_views().items():
                (root / rel).write_bytes(data)
                print(f"wrote {root / rel}")
    except OSError as exc:  # read-only, a file where a directory goes, /proc, ...
        raise ConfigError(f"cannot write under --root={args.root!r}: "
                          f"{exc.strerror or exc}: {exc.filename}") from None
    if stale:
        print(f"out of date: {', '.join(stale)}; run `fsm-voice diagram`", file=sys.stderr)
        return EXIT_FAILED
    return EXIT_OK


# ------------------------------------------------------------------------------- parser


def build_parser() -> argparse.ArgumentParser:
    p = Parser(prog="fsm-voice", description="A WebRTC voice session's connection lifecycle "
               "as a formally specified state machine: run it, check it, draw it.",
               epilog=EXIT_CODES,
               formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    c = sub.add_parser("check", help="explore the machine exhaustively, check invariants and spin",
                       epilog=EXIT_CODES, formatter_class=argparse.RawDescriptionHelpFormatter)
    c.add_argument("--planted", choices=_planted_names(), help="check a named mutant")
    c.add_argument("--mutate", action="store_true",
                   help="mutation testing: run every mutant with check as the oracle")
    c.add_argument("--workers", type=count, default=2, help="processes for --mutate")
    c.add_argument("--report", help="with --mutate: write the kill table here "
                   "(specs/mutation.md)")
    c.add_argument("--spec", help="path to specs/connection.md (default: found from cwd)")
    c.add_argument("--no-spin", dest="spin", action="store_false", help="skip the spin model check")
    c.add_argument("--show", type=count, default=3, help="violations to print (default 3)")
    c.set_defaults(func=cmd_check)
    d = sub.add_parser("diagram", help="regenerate diagrams/, specs/*.pml, the spec's tables "
                       "and the README's diagram",
                       epilog=EXIT_CODES, formatter_class=argparse.RawDescriptionHelpFormatter)
    d.add_argument("--check", action="store_true", help="only report drift, write nothing")
    d.add_argument("--root", default=".", help="project root (default: cwd)")
    d.add_argument("--diff", metavar="OLD_REF", help="draw what changed in the table since "
                   "this git ref (+ a markdown table of the rows); writes nothing else")
    d.add_argument("--trace", metavar="FILE", help="draw the path a recorded session (a trace "
                   "file) took: states, transitions with counts, the failing step in red")
    d.add_argument("--effects", action="store_true", help="draw the views with every row's "
                   "updates and effects, into --out (default ROOT/diagram-effects)")
    d.add_argument("--out", metavar="DIR", help="where --diff/--trace/--effects write "
                   "(default: ROOT/diagram-diff, beside the trace, ROOT/diagram-effects)")
    d.set_defaults(func=cmd_diagram)
    for name in _SUBCOMMAND_MODULES:
        importlib.import_module(name).add_parsers(sub)
    return p


def _planted() -> dict[str, Any]:
    """The named broken machines (:mod:`fsm_voice.mutants`), as classes."""
    from fsm_voice.mutants import PLANTED

    return dict(PLANTED)


def _planted_names() -> list[str]:
    """Their names only (for the parser: the classes are built when ``--planted`` is used)."""
    from fsm_voice.mutants import NAMED

    return sorted(NAMED)


def main(argv: list[str] | None = None, *, process: bool = False) -> int:
    """Run one command; the exit status is in :data:`EXIT_CODES`. No traceback for a user
    mistake, a missing extra, Ctrl-C or SIGTERM.

    ``process``: this call is the whole process (the console script): after a stop signal,
    SIGINT and SIGTERM stay ignored while the interpreter shuts down. Otherwise (a call from
    Python) the signal handlers found on entry are put back, whatever happened."""
    global _STOPPED_BY
    _STOPPED_BY = None
    try:
        previous: Any = signal.signal(signal.SIGTERM, _terminate)
        previous_int: Any = signal.getsignal(signal.SIGINT)
    except ValueError:  # not the main thread: leave signals alone
        previous = previous_int = None
    command = "fsm-voice"
    try:
        args = build_parser().parse_args(argv)
        command = f"fsm-voice {args.command}"
        logging.basicConfig(format=f"{command}: %(levelname)s: %(name)s: %(message)s")
        return int(args.func(args))
    except KeyboardInterrupt:
        _stopping(signal.SIGINT)
        return 128 + (_STOPPED_BY or signal.SIGINT)
    except _Terminated:
        return 128 + signal.SIGTERM
    except BrokenPipeError:  # stdout closed by the reader (`| head`): like connect, 141
        if process:  # the interpreter's final flush must not fail on the same pipe
            with contextlib.suppress(OSError, ValueError):
                os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 128 + signal.SIGPIPE
    except FsmVoiceError as exc:
        if not isinstance(exc, ValueError):  # a bad value given by the user: ConfigError, ...
            raise
        print(f"{command}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except ModuleNotFoundError as exc:
        extra = _EXTRAS.get((exc.name or "").partition(".")[0])
        if extra is None:
            raise
        print(f"{command}: needs the [{extra}] extra: pip install 'fsm-voice[{extra}]'",
              file=sys.stderr)
        return EXIT_USAGE
    finally:
        if _STOPPED_BY is not None and process:
            # Python resets its own handlers to SIG_DFL while the interpreter shuts down (a
            # later signal would kill it then); an ignored signal stays ignored. Never in a
            # caller's process: an ignored SIGINT is inherited by every child it starts.
            with contextlib.suppress(ValueError):
                for sig in SignalStop.SIGNALS:
                    signal.signal(sig, signal.SIG_IGN)
        elif previous is not None:
            signal.signal(signal.SIGTERM, previous)
            if previous_int is not None:
                signal.signal(signal.SIGINT, previous_int)


def _stopping(signum: int) -> None:
    """Record ``signum`` as the first stop signal (if none came) and absorb later ones."""
    global _STOPPED_BY
    _STOPPED_BY = _STOPPED_BY or signum
    with contextlib.suppress(ValueError):  # not the main thread
        for sig in SignalStop.SIGNALS:
            signal.signal(sig, _absorb)


if __name__ == "__main__":
    sys.exit(main(process=True))
