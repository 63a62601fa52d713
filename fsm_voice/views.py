"""Readable views of the lifecycle table, generated from it (``fsm-voice diagram``).

A :class:`View` projects the table's rows onto a few nodes: states may share a node (the speech
states in the overview), a group of rows may leave from a cluster or a junction (``stop`` from
anywhere, failure handling collapsed to one edge per outcome), rows whose endpoints are the same
node are listed in the node ("stays on: ..."). Rows with the same ends and the same guard share
one label line. :func:`view_dot` writes Graphviz DOT; :func:`rendered_graph` reads the node and
edge sets back from what ``dot`` lays out (the tests compare them with :func:`expected_graph`).

Also here: the diff of two tables (``--diff``) and a session's path (``--trace``).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Final

import attrs

from fsm_voice.machine.table import STATES, TABLE, Row, StateDecl

#: Status -> fill colour (the statuses the application sees, SPEC-STATUS-1).
STATUS_COLORS: Final = {
    "idle": "#e8e8e8",
    "connecting": "#fff3c4",
    "active": "#c9f2c7",
    "listening": "#c9e4f2",
    "speaking": "#e2d1f5",
    "reconnecting": "#ffd9b3",
    "error": "#f7c1c1",
}
SPEECH: Final = ("active", "listening", "speaking")
ATTEMPTS: Final = ("connecting", "restarting", "reconnecting")
FAILURE_EVENTS: Final = frozenset({"transport_failed", "signaling_failed", "server_error",
                                   "session_closed",
                                   "connect_timeout", "restart_timeout", "ice_grace_expired"})
SPEECH_EVENTS: Final = frozenset({"speech_started", "speech_stopped", "audio_started",
                                  "audio_stopped"})
JUNCTION: Final = "failure"
"""The overview's junction node: every failure row leaves from it (one edge per outcome)."""


class DiagramError(ValueError):
    """A view, a git ref or a trace cannot be drawn."""


@attrs.frozen
class View:
    """A projection of the table. ``node``: state -> node id (missing: not drawn);
    ``select``: the rows this view covers; ``source``: a row's drawn source (a node, a
    ``cluster_*`` id or :data:`JUNCTION`), default its state's node."""

    name: str
    title: str
    node: dict[str, str]
    select: Callable[[Row], bool]
    clusters: tuple[tuple[str, str, tuple[str, ...]], ...] = ()
    source: Callable[[Row], str | None] = lambda r: None
    updates: bool = False
    rankdir: str = "LR"
    by_label: bool = False
    back: tuple[tuple[str, str], ...] = ()
    """Edges that do not push the layout's ranks (drawn as back edges)."""
    """Edge lines "label [guard the label's rows share]: events" instead of one per guard."""


_SHORT: Final = (("severity_is_", ""), ("code_is_", ""), ("attempts_below_max", "attempts<max"),
                 ("retry_after_too_long", "retry_after>max"), ("_is_", "="), ("not ", "!"))


def _pred(text: str) -> str:
    for old, new in _SHORT:
        text = text.replace(old, new)
    return text


def _guard(row: Row) -> str:
    """The guard, short: ``severity_is_fatal`` -> ``fatal``, ``resume_is_listening`` ->
    ``resume=listening``, ``attempts_below_max`` -> ``attempts<max`` (the retry bound)."""
    return " & ".join(_pred(str(p)) for p in row.guard)


def _is_failure(row: Row) -> bool:
    return row.event in FAILURE_EVENTS and not row.internal


def _overview() -> View:
    node = {s.name: s.name for s in STATES} | {s: "speech" for s in SPEECH}

    def select(r: Row) -> bool:
        if r.internal:
            return r.source == "idle"  # idle's stop: "stays on: stop"
        return not (r.source in SPEECH and r.target in SPEECH)

    def source(r: Row) -> str | None:
        if r.event == "stop" and r.source not in ("idle", "error"):
            return "cluster_session"
        return JUNCTION if _is_failure(r) else None

    session = ("connecting", "speech", "ice_grace", "restarting", "backoff", "reconnecting",
               JUNCTION)
    return View("overview", "fsm_voice lifecycle: overview\nfailures collapsed, one edge per "
                "outcome (details: recovery view)", node, select,
                (("cluster_session", "session", session),), source, rankdir="TB",
                back=(("error", "connecting"), ("cluster_session", "idle")))


def _recovery() -> View:
    names = ("ice_grace", "restarting", "backoff", "reconnecting", "connecting", "error")
    node = {s: s for s in names} | {s: "speech" for s in SPEECH}

    def select(r: Row) -> bool:
        if r.event == "stop" or r.event == "start" or r.event in SPEECH_EVENTS:
            return False
        if r.source in SPEECH and r.target in SPEECH:
            return False
        return r.source in names or r.target in names or r.internal

    def source(r: Row) -> str | None:
        if r.source in ATTEMPTS and (_is_failure(r) or r.target in SPEECH):
            return "cluster_attempt"
        return "cluster_up" if _is_failure(r) else None

    return View("recovery", "fsm_voice lifecycle: recovery\nline = row label [guard its rows "
                "share]: events\nrows are tried in order: give_up is the fallback when "
                "attempts<max fails",
                node, select, (("cluster_attempt", "attempt in progress", ATTEMPTS),
                               ("cluster_up", "session up", ("speech", "ice_grace"))),
                source, updates=True, rankdir="TB", by_label=True,
                back=(("cluster_attempt", "speech"),))


def _speech() -> View:
    node = {s: s for s in (*SPEECH, "ice_grace")}

    def select(r: Row) -> bool:
        return r.source in node and r.target in node and (
            r.event in SPEECH_EVENTS or r.event.startswith("ice_") or r.internal)

    return View("speech", "fsm_voice lifecycle: speech (ice_grace remembers what to resume)",
                node, select, updates=True, rankdir="TB")


VIEWS: Final[tuple[View, ...]] = (_overview(), _recovery(), _speech())


# -- projection ----------------------------------------------------------------------------------
@attrs.frozen
class Projection:
    nodes: tuple[str, ...]
    edges: dict[tuple[str, str], list[Row]]
    stays: dict[str, list[Row]]

    @property
    def rows(self) -> list[Row]:
        out = [r for rows in self.edges.values() for r in rows]
        return out + [r for rows in self.stays.values() for r in rows]


def project(view: View, table: Iterable[Row] = TABLE) -> Projection:
    """The rows of ``table`` that ``view`` covers, by drawn edge (or node, for stays)."""
    edges: dict[tuple[str, str], list[Row]] = defaultdict(list)
    stays: dict[str, list[Row]] = defaultdict(list)
    nodes: dict[str, None] = {}
    for row in table:
        if not view.select(row) or row.source not in view.node or row.target not in view.node:
            continue
        dst = view.node[row.target]
        src = view.source(row) or view.node[row.source]
        if src == dst:
            stays[dst].append(row)
        else:
            edges[(src, dst)].append(row)
        for n in (src, dst):
            if not n.startswith("cluster_"):
                nodes[n] = None
    for _, _, members in view.clusters:
        for m in members:
            if m in nodes or m in view.node.values():
                nodes[m] = None
    return Projection(tuple(nodes), dict(edges), dict(stays))


def expected_graph(view: View, table: Iterable[Row] = TABLE) -> tuple[set[str], set[tuple[str,
                                                                                        str]]]:
    p = project(view, table)
    return set(p.nodes), set(p.edges)


# -- DOT -----------------------------------------------------------------------------------------
def _q(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\l") + '"'


def _by_label(rows: Sequence[Row], updates: bool) -> str:
    groups: dict[str, list[Row]] = {}
    for r in rows:
        groups.setdefault(r.label if r.label != "-" else r.event, []).append(r)
    lines = []
    for label, rs in groups.items():
        common = [p for p in rs[0].guard if all(p in r.guard for r in rs)]
        guard = f" [{' & '.join(_pred(str(p)) for p in common)}]" if common else ""
        ups = dict.fromkeys(str(u) for r in rs for u in r.updates
                            if updates and u.var in ("attempts", "quick_used", "resume"))
        upd = f" / {', '.join(ups)}" if ups else ""
        lines.append(f"{label}{guard}{upd}: {', '.join(dict.fromkeys(r.event for r in rs))}")
    return "\n".join(_wrap(line) for line in lines) + "\n"


def _wrap(line: str, width: int = 38) -> str:
    """Break a long label line at ", ", ": " or " / " (continuation lines indented)."""
    parts = re.split(r"(, |: | / )", line)
    out, cur = [], parts[0]
    for sep, part in zip(parts[1::2], parts[2::2], strict=True):
        if len(cur) + len(sep) + len(part) > width:
            out.append(cur + sep.rstrip())
            cur = "    " + part
        else:
            cur += sep + part
    out.append(cur)
    return "\n".join(out)


def _edge_label(rows: Sequence[Row], updates: bool, src: str = "",
                by_label: bool = False) -> str:
    """One line per guard (and updates): the events that share it. From a cluster, only
    ``stop``: "stop (any state)"; from the junction: the outcomes (row labels)."""
    if src.startswith("cluster_") and {r.event for r in rows} == {"stop"}:
        return "stop (from any state)\n"
    if src == JUNCTION:
        return "\n".join(dict.fromkeys(r.label for r in rows)) + "\n"
    if by_label:
        return _by_label(rows, updates)
    lines: dict[str, list[str]] = {}
    for r in rows:
        key = f"[{_guard(r)}]" if r.guard else ""
        if updates:
            ups = [str(u) for u in r.updates if u.var in ("attempts", "quick_used", "resume")]
            key += f" / {', '.join(ups)}" if ups else ""
            key = key.strip()
        evs = lines.setdefault(key, [])
        if r.event not in evs:
            evs.append(r.event)
    return "\n".join(f"{', '.join(evs)} {k}".strip() for k, evs in lines.items()) + "\n"


def _stay(row: Row) -> str:
    """A row that keeps its state: its event, with guard and update when it remembers what
    ice_grace resumes."""
    ups = [str(u) for u in row.updates if u.var == "resume"]
    if not ups and not any(p.arg == "resume" for p in row.guard):
        return row.event
    guard = f" [{_guard(row)}]" if row.guard else ""
    return f"{row.event}{guard}" + (f" / {', '.join(ups)}" if ups else "")


def _node_label(decls: Sequence[StateDecl], stays: Sequence[Row]) -> str:
    head = " | ".join(d.name for d in decls)
    statuses = sorted({str(d.status) for d in decls}, key=list(STATUS_COLORS).index)
    lines = [head, f"status: {' | '.join(statuses)}"]
    timers = sorted({str(d.timer) for d in decls if d.timer is not None})
    if timers:
        lines.append(f"timer: {', '.join(timers)}")
    if stays:
        evs = list(dict.fromkeys(_stay(r) for r in stays))
        lines.append(_wrap("stays on: " + ", ".join(evs), 40))
    return "\n".join(lines)


def _effects_label(rows: Sequence[Row]) -> str:
    """One line per row: event [guard] / updates -> effects (``--effects``)."""
    lines = []
    for r in rows:
        g = f" [{_guard(r)}]" if r.guard else ""
        u = f" / {', '.join(map(str, r.updates))}" if r.updates else ""
        e = f" -> {', '.join(map(str, r.effects))}" if r.effects else ""
        lines.append(_wrap(f"{r.event}{g}{u}{e}", 60))
    return "\n".join(dict.fromkeys(lines)) + "\n"


def view_dot(view: View, table: Sequence[Row] = TABLE, *, effects: bool = False) -> str:
    """The view as DOT; ``effects``: every row on its own label line with its updates and
    effects (large: for reading one transition, not the picture)."""
    p = project(view, table)
    decl = {s.name: s for s in STATES}
    by_node: dict[str, list[StateDecl]] = defaultdict(list)
    for state, n in view.node.items():
        by_node[n].append(decl[state])
    out = [f"digraph {view.name} {{",
           f"  graph [rankdir={view.rankdir}, compound=true, fontname=Helvetica, fontsize=12, "
           f"labelloc=t, nodesep=0.2, ranksep=0.35, label={_q(view.title)}];",
           "  node [shape=box, style=\"rounded,filled\", fontname=Helvetica, fontsize=10];",
           "  edge [fontname=Helvetica, fontsize=9];"]

    def node_line(n: str) -> str:
        if n == JUNCTION:
            attrs_ = ('shape=diamond, style=filled, fillcolor="#ffffff", fontsize=9, '
                      'label="any failure\\n(see recovery)"')
        else:
            decls = by_node[n]
            fills = [STATUS_COLORS[str(d.status)] for d in decls]
            style = "striped" if len(set(fills)) > 1 else "rounded,filled"
            attrs_ = (f"label={_q(_node_label(decls, p.stays.get(n, [])))}, style=\"{style}\", "
                      f"fillcolor=\"{':'.join(dict.fromkeys(fills))}\"")
        return f"  {_q(n)} [{attrs_}];"

    in_cluster = {m for _, _, ms in view.clusters for m in ms}
    for cid, label, members in view.clusters:
        out.append(f"  subgraph {cid} {{ label={_q(label)}; style=\"rounded,dashed\"; "
                   "color=\"#888888\";")
        out += ["  " + node_line(m) for m in members if m in p.nodes]
        out.append("  }")
    out += [node_line(n) for n in p.nodes if n not in in_cluster]
    clusters = {cid: [m for m in ms if m in p.nodes] for cid, _, ms in view.clusters}
    for (src, dst), rows in p.edges.items():
        extra = ""
        tail = src
        if src.startswith("cluster_"):
            tail = JUNCTION if JUNCTION in clusters[src] else clusters[src][0]
            extra = f", ltail={src}"
        label = (_effects_label(rows) if effects
                 else _edge_label(rows, view.updates, src, view.by_label))
        if (src, dst) in view.back:
            extra += ", constraint=false"
        out.append(f"  {_q(tail)} -> {_q(dst)} [label={_q(label)}{extra}];")
    out.append(_legend(view))
    out.append("  { rank=sink; legend; }")
    out.append("}")
    return "\n".join(out) + "\n"


def _legend(view: View) -> str:
    cells = "".join(f'<TD BGCOLOR="{c}">{s}</TD>' for s, c in STATUS_COLORS.items())
    return ("  legend [shape=plaintext, style=\"\", label=<<TABLE BORDER=\"0\" CELLBORDER=\"1\" "
            f"CELLSPACING=\"0\" CELLPADDING=\"3\"><TR><TD COLSPAN=\"7\">fill = status the app "
            "sees; [guard]; / updates; stays on: rows that keep the state</TD></TR>"
            f"<TR>{cells}</TR></TABLE>>];")


# -- rendering -----------------------------------------------------------------------------------
def render(dot_text: str, fmt: str) -> bytes:
    """``dot -T<fmt>``; :class:`DiagramError` when Graphviz is missing or rejects the input."""
    exe = shutil.which("dot")
    if exe is None:
        raise DiagramError("Graphviz 'dot' is needed: apt-get install graphviz")
    proc = subprocess.run([exe, f"-T{fmt}"], input=dot_text.encode(), capture_output=True,
                          check=False)
    if proc.returncode != 0:
        raise DiagramError(f"dot -T{fmt} failed: {proc.stderr.decode(errors='replace')[:300]}")
    return proc.stdout


def rendered_graph(dot_text: str) -> tuple[set[str], set[tuple[str, str]]]:
    """The nodes and edges ``dot`` laid out (legend left out; an edge with ``ltail`` counts as
    leaving its cluster)."""
    data: dict[str, Any] = json.loads(render(dot_text, "json"))
    objects = data.get("objects", [])
    names = [o["name"] for o in objects]
    nodes = {o["name"] for o in objects if "nodes" not in o and o["name"] != "legend"}
    edges = set()
    for e in data.get("edges", []):
        edges.add((e.get("ltail") or names[e["tail"]], names[e["head"]]))
    return nodes, edges


def generated_views(table: Sequence[Row] = TABLE) -> dict[str, str]:
    """``diagrams/<view>.dot`` and ``.svg`` for every view (PNGs: :func:`png_views`)."""
    out = {}
    for v in VIEWS:
        d = view_dot(v, table)
        out[f"diagrams/{v.name}.dot"] = d
        out[f"diagrams/{v.name}.svg"] = render(d, "svg").decode()
    return out


def png_views(table: Sequence[Row] = TABLE) -> dict[str, bytes]:
    return {f"diagrams/{v.name}.png": render(view_dot(v, table), "png") for v in VIEWS}
