"""What changed, drawn: a table against the table at a git ref (``fsm-voice diagram --diff``)
and a recorded session's path on the machine (``fsm-voice diagram --trace``).

Rows are matched by (source, event, guard): a key only in the new table is *added* (green), only
in the old one *removed* (red, dashed), in both with another target, kind, updates, effects or
label *changed* (orange; a moved target also leaves its old edge dashed red). States whose
status, timer or entry updates changed are outlined orange.
"""

from __future__ import annotations

import re
import subprocess
import sys
import types
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, Final

import attrs

from fsm_voice.check import table_rows
from fsm_voice.machine.table import STATES, TABLE, Row, StateDecl
from fsm_voice.views import (
    FAILURE_EVENTS,
    STATUS_COLORS,
    DiagramError,
    _guard,
    _q,
    _wrap,
    render,
)

TABLE_PATH: Final = "fsm_voice/machine/table.py"
ADDED: Final = "#1a9641"
REMOVED: Final = "#d7191c"
CHANGED: Final = "#f28e00"
MAX_LINES: Final = 6
"""Label lines per diff edge; the rest are counted (every row is in the markdown table)."""
_COLS: Final = ("from", "event", "guard", "to", "kind", "updates", "effects", "label")


def table_at(ref: str, root: Path) -> types.ModuleType:
    """``fsm_voice/machine/table.py`` as it is at git ``ref`` of the repository at ``root``,
    loaded into a temporary module (its code runs: use refs of this repository only)."""
    if ref.startswith("-"):
        raise DiagramError(f"not a git ref: {ref!r}")
    try:
        proc = subprocess.run(["git", "-C", str(root), "show", f"{ref}:{TABLE_PATH}"],
                              capture_output=True, text=True, check=False)
    except OSError as exc:
        raise DiagramError(f"cannot run git: {exc}") from None
    if proc.returncode != 0:
        raise DiagramError(f"no {TABLE_PATH} at {ref!r}: {proc.stderr.strip()[:200]}")
    name = "_fsm_voice_table_at_" + re.sub(r"\W", "_", ref)
    mod = types.ModuleType(name)
    mod.__file__ = f"{ref}:{TABLE_PATH}"
    sys.modules[name] = mod  # attrs and dataclass-like helpers look their module up
    try:
        exec(compile(proc.stdout, mod.__file__, "exec"), mod.__dict__)
    except Exception as exc:  # the old file may not load with today's package
        raise DiagramError(f"cannot load {TABLE_PATH} at {ref!r}: {exc!r}") from None
    finally:
        sys.modules.pop(name, None)
    if not isinstance(getattr(mod, "TABLE", None), tuple):
        raise DiagramError(f"{TABLE_PATH} at {ref!r} has no TABLE")
    return mod


def _key(r: Any) -> tuple[str, str, str]:
    return (r.source, r.event, r.guard_text)


def _shape(r: Any) -> tuple[str, ...]:
    return (r.target, str(r.internal), *map(str, r.updates), "|", *map(str, r.effects), r.label)


@attrs.frozen
class TableDiff:
    added: tuple[Any, ...]
    removed: tuple[Any, ...]
    changed: tuple[tuple[Any, Any], ...]
    """(old row, new row) pairs."""
    states: tuple[tuple[str, str], ...]
    """(state, "added" | "removed" | "changed")."""

    @property
    def empty(self) -> bool:
        return not (self.added or self.removed or self.changed or self.states)


def _decl(s: Any) -> tuple[str, ...]:
    return (str(s.status), str(s.timer), *map(str, s.entry))


def diff_tables(old: Sequence[Any], new: Sequence[Row] = TABLE,
                old_states: Iterable[Any] = (), new_states: Iterable[StateDecl] = STATES
                ) -> TableDiff:
    """Rows added, removed and changed from ``old`` to ``new`` (matched by source, event,
    guard; the first row of a duplicated key wins, as in the machine)."""
    o: dict[tuple[str, str, str], Any] = {}
    n: dict[tuple[str, str, str], Any] = {}
    for r in old:
        o.setdefault(_key(r), r)
    for r in new:
        n.setdefault(_key(r), r)
    os_ = {s.name: s for s in old_states}
    ns = {s.name: s for s in new_states}
    states = [(s, "added") for s in ns if os_ and s not in os_]
    states += [(s, "removed") for s in os_ if s not in ns]
    states += [(s, "changed") for s in ns if s in os_ and _decl(os_[s]) != _decl(ns[s])]
    return TableDiff(tuple(r for k, r in n.items() if k not in o),
                     tuple(r for k, r in o.items() if k not in n),
                     tuple((o[k], r) for k, r in n.items() if k in o and _shape(o[k]) != _shape(r)),
                     tuple(states))


def diff_markdown(d: TableDiff, ref: str) -> str:
    """The changed rows as a markdown table (changed cells: ``old`` → ``new``)."""
    lines = [f"Table changes against `{ref}`: {len(d.added)} added, {len(d.removed)} removed, "
             f"{len(d.changed)} changed rows"
             + (f"; states: {', '.join(f'{s} {k}' for s, k in d.states)}" if d.states else ""),
             "", "| change | " + " | ".join(_COLS) + " |", "|---" * (len(_COLS) + 1) + "|"]

    def cells(r: Any) -> tuple[str, ...]:
        return table_rows((r,))[0]

    for r in d.added:
        lines.append("| added | " + " | ".join(f"`{c}`" for c in cells(r)) + " |")
    for r in d.removed:
        lines.append("| removed | " + " | ".join(f"`{c}`" for c in cells(r)) + " |")
    for a, b in d.changed:
        row = [f"`{y}`" if x == y else f"`{x}` → `{y}`" for x, y in zip(cells(a), cells(b),
                                                                          strict=True)]
        lines.append("| changed | " + " | ".join(row) + " |")
    return "\n".join(lines) + "\n"


def diff_dot(d: TableDiff, ref: str) -> str:
    """The diff as DOT: only the states and rows it touches."""
    edges: dict[tuple[str, str, str], list[str]] = defaultdict(list)

    def line(r: Any, note: str = "") -> str:
        g = f" [{_guard(r)}]" if r.guard else ""
        return f"{r.event}{g}{note}"

    for r in d.added:
        edges[(r.source, r.target, ADDED)].append(line(r))
    for r in d.removed:
        edges[(r.source, r.target, REMOVED)].append(line(r))
    for a, b in d.changed:
        what = [c for c, x, y in zip(_COLS, table_rows((a,))[0], table_rows((b,))[0],
                                     strict=True) if x != y]
        edges[(b.source, b.target, CHANGED)].append(line(b, f" (changed: {', '.join(what)})"))
        if a.target != b.target:
            edges[(a.source, a.target, REMOVED)].append(line(a, " (was)"))
    state_kind = dict(d.states)
    nodes = dict.fromkeys([*(s for s, _ in d.states),
                           *(n for s, t, _ in edges for n in (s, t))])
    status = {s.name: str(s.status) for s in STATES}
    color = {"added": ADDED, "removed": REMOVED, "changed": CHANGED}
    title = (f"fsm_voice lifecycle: table changes against {ref}\\n{len(d.added)} added (green), "
             f"{len(d.removed)} removed (red, dashed), {len(d.changed)} changed (orange)")
    out = ["digraph diff {",
           f"  graph [rankdir=LR, fontname=Helvetica, labelloc=t, label=\"{title}\"];",
           "  node [shape=box, style=\"rounded,filled\", fontname=Helvetica, fontsize=10];",
           "  edge [fontname=Helvetica, fontsize=9];"]
    if not nodes:
        out.append('  none [label="no change to the table", style=""];')
    for n in nodes:
        fill = STATUS_COLORS.get(status.get(n, ""), "#ffffff")
        extra = ""
        if n in state_kind:
            extra = f', color="{color[state_kind[n]]}", penwidth=3, xlabel="{state_kind[n]}"'
        out.append(f"  {_q(n)} [fillcolor=\"{fill}\"{extra}];")
    for (src, dst, c), labels in edges.items():
        if len(labels) > MAX_LINES:  # a big change: the markdown table has every row
            labels = [*labels[:MAX_LINES - 1], f"... {len(labels) - MAX_LINES + 1} more rows "
                      "(diff.md)"]
        labels = [_wrap(x, 48) for x in labels]
        style = ", style=dashed" if c == REMOVED else ""
        out.append(f"  {_q(src)} -> {_q(dst)} [label={_q(chr(10).join(labels) + chr(10))}, "
                   f"color=\"{c}\", fontcolor=\"{c}\", penwidth=2{style}];")
    out.append("}")
    return "\n".join(out) + "\n"


# -- a session's path ----------------------------------------------------------------------------
@attrs.frozen
class SessionPath:
    """What a trace's session did: transitions with counts, the failing step."""

    steps: tuple[tuple[str, str, str], ...]
    """(source, event, target) of every taken event, in order."""
    refused: Counter[tuple[str, str]]
    failing: int | None
    """Index into ``steps`` of the first failure (a failure event taken, or ``error``
    entered), None when the session did not fail."""
    error_code: str = ""


def session_path(records: Sequence[dict[str, Any]]) -> SessionPath:
    """The path of a trace's records (``fsm_voice.trace.read_trace``)."""
    steps: list[tuple[str, str, str]] = []
    times: list[float] = []
    refused: Counter[tuple[str, str]] = Counter()
    for rec in records:
        if rec.get("kind") != "event":
            continue
        src, ev, dst = rec.get("source"), rec.get("event"), rec.get("target")
        if not (isinstance(src, str) and isinstance(ev, str) and isinstance(dst, str)):
            raise DiagramError(f"an event record without source/event/target: {rec!r:.200}")
        if rec.get("outcome") == "taken":
            steps.append((src, ev, dst))
            times.append(float(rec.get("t", 0.0)))
        elif rec.get("outcome") in ("refused", "stale"):
            refused[(src, ev)] += 1
    failing = next((i for i, (s, e, t) in enumerate(steps)
                    if t == "error" or (e in FAILURE_EVENTS and s != t)), None)
    code = ""
    if failing is not None:
        errs = [r for r in records if r.get("kind") == "error"
                and float(r.get("t", 0.0)) >= times[failing] - 1.0]
        code = str(errs[0].get("code", "")) if errs else ""
    return SessionPath(tuple(steps), refused, failing, code)


def trace_dot(path: SessionPath, name: str) -> str:
    """The states and transitions the session took, with counts; the failing step in red."""
    counts = Counter(path.steps)
    visits = Counter(t for s, _, t in path.steps if s != t)
    stays: dict[str, Counter[str]] = defaultdict(Counter)
    edges: dict[tuple[str, str], list[str]] = defaultdict(list)
    fail = path.steps[path.failing] if path.failing is not None else None
    for (s, e, t), n in counts.items():
        if s == t:
            stays[s][f"{e} x{n}"] += 1
        else:
            mark = ""
            if (s, e, t) == fail:
                mark = f"  <- FAILED at step {path.failing + 1 if path.failing is not None else 0}"
                mark += f" ({path.error_code})" if path.error_code else ""
            edges[(s, t)].append(f"{e} x{n}{mark}")
    status = {s.name: str(s.status) for s in STATES}
    first = path.steps[0][0] if path.steps else "idle"
    nodes = dict.fromkeys([first, *(n for s, _, t in path.steps for n in (s, t))])
    title = (f"session path: {name}\n{len(path.steps)} events taken, "
             f"{sum(path.refused.values())} refused/stale"
             + ("; failing step in red" if fail else "; no failure"))
    out = ["digraph trace {",
           f"  graph [rankdir=TB, fontname=Helvetica, labelloc=t, label={_q(title)}];",
           "  node [shape=box, style=\"rounded,filled\", fontname=Helvetica, fontsize=10];",
           "  edge [fontname=Helvetica, fontsize=9];"]
    for state in nodes:
        lines = [state, f"entered x{visits[state]}" + (" (start)" if state == first else "")]
        lines += ["stays on: " + ", ".join(stays[state])] if stays[state] else []
        refused = [f"{e} x{c}" for (s, e), c in path.refused.items() if s == state]
        lines += ["refused: " + ", ".join(refused)] if refused else []
        extra = ', color="#d7191c", penwidth=3' if fail and state == fail[2] else ""
        out.append(f"  {_q(state)} [label={_q(chr(10).join(lines))}, "
                   f"fillcolor=\"{STATUS_COLORS.get(status.get(state, ''), '#ffffff')}\"{extra}];")
    for (s, t), labels in edges.items():
        hot = fail is not None and (s, t) == (fail[0], fail[2])
        extra = ', color="#d7191c", fontcolor="#d7191c", penwidth=3' if hot else ""
        out.append(f"  {_q(s)} -> {_q(t)} [label={_q(chr(10).join(labels) + chr(10))}{extra}];")
    out.append("}")
    return "\n".join(out) + "\n"


def write_rendered(dot_text: str, base: Path) -> list[Path]:
    """``base``.dot, .svg and .png."""
    base.parent.mkdir(parents=True, exist_ok=True)
    out = [base.with_suffix(".dot")]
    out[0].write_text(dot_text)
    for fmt in ("svg", "png"):
        p = base.with_suffix("." + fmt)
        p.write_bytes(render(dot_text, fmt))
        out.append(p)
    return out


def draw_changes(root: Path, ref: str | None, trace: str | None, out: str | None, *,
                 effects: bool = False) -> int:
    """``fsm-voice diagram --diff/--trace``: write the drawings, print where (and the markdown
    diff); exit status 0, or 2 (a bad argument) with one line on stderr when the ref or the
    trace cannot be read."""
    from fsm_voice.trace import TraceError, read_trace

    try:
        if effects:
            from fsm_voice.views import VIEWS, view_dot

            base = Path(out) if out else root / "diagram-effects"
            for v in VIEWS:
                written = write_rendered(view_dot(v, effects=True), base / f"{v.name}-effects")
                print("wrote " + ", ".join(map(str, written)))
        if ref:
            mod = table_at(ref, root)
            d = diff_tables(mod.TABLE, TABLE, getattr(mod, "STATES", ()), STATES)
            base = Path(out) if out else root / "diagram-diff"
            md = diff_markdown(d, ref)
            (base).mkdir(parents=True, exist_ok=True)
            (base / "diff.md").write_text(md)
            written = write_rendered(diff_dot(d, ref), base / "diff")
            print(md)
            print("wrote " + ", ".join(map(str, [base / "diff.md", *written])))
        if trace:
            try:
                _, records = read_trace(trace)
            except (OSError, TraceError) as exc:
                raise DiagramError(str(exc)) from None
            p = session_path(records)
            tp = Path(trace)
            base = (Path(out) / tp.stem) if out else tp.with_name(tp.stem + "-path")
            written = write_rendered(trace_dot(p, tp.name), base)
            fail = (f"failing step {p.failing + 1}: {' -> '.join(p.steps[p.failing])}"
                    if p.failing is not None else "no failing step")
            print(f"{len(p.steps)} events taken; {fail}")
            print("wrote " + ", ".join(map(str, written)))
    except DiagramError as exc:
        print(f"fsm-voice diagram: {exc}", file=sys.stderr)
        return 2
    return 0
