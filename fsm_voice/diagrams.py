"""State diagrams generated from the machine's table (``fsm-voice diagram``).

Writes ``diagrams/lifecycle.mmd`` (Mermaid), ``lifecycle.dot`` and ``lifecycle.svg`` (Graphviz),
and the Promela model ``specs/lifecycle.pml``. ``tests/test_diagrams.py`` fails when the committed
files differ from what the machine generates now.
"""

from __future__ import annotations

import shutil
import subprocess
from collections import defaultdict
from pathlib import Path

import pydot

from fsm_voice.check import explore, to_promela
from fsm_voice.fastpath import compile_machine
from fsm_voice.machine import STATUS_OF, TIMER_OF, LifecycleMachine

_COLORS = {
    "idle": "#e8e8e8",
    "connecting": "#fff3c4",
    "active": "#c9f2c7",
    "listening": "#c9e4f2",
    "speaking": "#e2d1f5",
    "reconnecting": "#ffd9b3",
    "error": "#f7c1c1",
}


def _edges(machine: type[LifecycleMachine]) -> dict[tuple[str, str], list[str]]:
    """(source, target) -> labels "event [guard]", internal transitions left out."""
    edges: dict[tuple[str, str], list[str]] = defaultdict(list)
    for (_src, _ev), cands in compile_machine(machine).items():
        for ct in cands:
            if ct.internal:
                continue
            guard = " & ".join(g if exp else f"!{g}" for g, exp in ct.guards)
            label = f"{ct.event} [{guard}]" if guard else ct.event
            if label not in edges[(ct.source, ct.target)]:
                edges[(ct.source, ct.target)].append(label)
    return edges


def mermaid(machine: type[LifecycleMachine] = LifecycleMachine) -> str:
    lines = ["stateDiagram-v2", "    [*] --> idle"]
    for (src, dst), labels in _edges(machine).items():
        lines.append(f"    {src} --> {dst}: {'<br/>'.join(labels)}")
    for state, status in STATUS_OF.items():
        timer = TIMER_OF.get(state)
        note = f"status {status}" + (f", timer {timer}" if timer else "")
        lines.append(f"    note right of {state}: {note}")
    return "\n".join(lines) + "\n"


def dot(machine: type[LifecycleMachine] = LifecycleMachine) -> str:
    g = pydot.Dot("lifecycle", graph_type="digraph", rankdir="LR", fontname="Helvetica")
    g.set_node_defaults(shape="box", style="rounded,filled", fontname="Helvetica")
    g.set_edge_defaults(fontname="Helvetica", fontsize="9")
    for state, status in STATUS_OF.items():
        timer = TIMER_OF.get(state)
        label = f"{state}\\nstatus: {status}" + (f"\\ntimer: {timer}" if timer else "")
        g.add_node(pydot.Node(state, label=f'"{label}"', fillcolor=f'"{_COLORS[status]}"'))
    for (src, dst), labels in _edges(machine).items():
        g.add_edge(pydot.Edge(src, dst, label=f'"{chr(10).join(labels)}"'.replace("\n", "\\n")))
    return str(g.to_string())


def svg_from_dot(dot_text: str) -> str:
    exe = shutil.which("dot")
    if exe is None:
        raise RuntimeError("Graphviz 'dot' is needed for SVG output: apt-get install graphviz")
    out = subprocess.run([exe, "-Tsvg"], input=dot_text, capture_output=True, text=True,
                         check=True).stdout
    return out


def generated(machine: type[LifecycleMachine] = LifecycleMachine) -> dict[str, str]:
    """Every generated artefact, keyed by its path relative to the project root."""
    d = dot(machine)
    return {
        "diagrams/lifecycle.mmd": mermaid(machine),
        "diagrams/lifecycle.dot": d,
        "diagrams/lifecycle.svg": svg_from_dot(d),
        "specs/lifecycle.pml": to_promela(explore(machine)),
    }


def write_all(root: Path) -> list[Path]:
    written = []
    for rel, text in generated().items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        written.append(path)
    return written
