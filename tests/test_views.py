"""The views (overview, recovery, speech): generated from the table, every row drawn, each
rendered graph equal to the table's projection, pictures readable."""

from __future__ import annotations

import io
import re
import shutil
import struct
from pathlib import Path
from typing import Any

import attrs
import pytest

from fsm_voice.machine.table import STATES, TABLE, Row
from fsm_voice.views import (
    JUNCTION,
    STATUS_COLORS,
    VIEWS,
    View,
    expected_graph,
    project,
    render,
    rendered_graph,
    view_dot,
)

ROOT = Path(__file__).resolve().parent.parent
needs_dot = pytest.mark.skipif(shutil.which("dot") is None, reason="graphviz not installed")
VIEW = {v.name: v for v in VIEWS}
MAX_WIDTH = 1600


def test_every_row_is_in_at_least_one_view() -> None:
    drawn = {id(r) for v in VIEWS for r in project(v).rows}
    missing = [(r.source, r.event, r.label) for r in TABLE if id(r) not in drawn]
    assert missing == []
    # the check can fail: a row no view selects is reported
    extra = Row("backoff", "made_up_event", "backoff", internal=True)
    assert all(id(extra) not in {id(r) for r in project(v, (*TABLE, extra)).rows}
               for v in VIEWS if v.name != "recovery")


def _drawn_end(view: View, row: Row) -> tuple[str, str]:
    return view.source(row) or view.node[row.source], view.node[row.target]


@needs_dot
@pytest.mark.parametrize("name", list(VIEW))
def test_rendered_view_matches_the_table(name: str) -> None:
    view = VIEW[name]
    nodes, edges = rendered_graph(view_dot(view))
    assert (nodes, edges) == expected_graph(view)
    dot_text = view_dot(view)
    for row in project(view).rows:  # each row: an edge between its states' nodes, or a stay
        src, dst = _drawn_end(view, row)
        if src == dst:
            assert row.event in dot_text
        else:
            assert (src, dst) in edges, row
    # every state the view draws shows its status and (if any) its timer
    for s in STATES:
        n = view.node.get(s.name)
        if n in nodes:
            assert f"status: {s.status}" in dot_text or str(s.status) in dot_text
            if s.timer is not None:
                assert f"timer: {s.timer}" in dot_text


def test_overview_collapses_stop_and_failures() -> None:
    p = project(VIEW["overview"])
    stop_edges = [e for e, rows in p.edges.items() if any(r.event == "stop" for r in rows)]
    assert ("cluster_session", "idle") in stop_edges and len(stop_edges) == 2  # + error -> idle
    assert all(r.event == "stop" for r in p.edges[("cluster_session", "idle")])
    assert len(p.edges[("cluster_session", "idle")]) == 8
    failure_targets = {dst for (src, dst) in p.edges if src == JUNCTION}
    # idle: a Live session_closed the server ended on purpose (close_requested, remote_hangup)
    assert failure_targets == {"restarting", "backoff", "reconnecting", "error", "idle"}
    assert not any(r.event in {"transport_failed", "server_error"}
                   for (src, _), rows in p.edges.items() if src != JUNCTION for r in rows)


def _unwrapped(dot_text: str) -> str:
    """Label lines joined again where they were wrapped (continuations are indented)."""
    return re.sub(r"\\l {4}", " ", dot_text)


def test_recovery_shows_guards_and_the_retry_bound() -> None:
    d = _unwrapped(view_dot(VIEW["recovery"]))
    assert "back_off [attempts<max]" in d
    assert "retry_now / attempts+=1: backoff_expired" in d
    assert "quick_reconnect [transient & !quick_used & !retry_after_set]" in d
    assert "timer: ice_grace_expired" in d and "timer: backoff_expired" in d


def test_speech_shows_what_the_grace_remembers() -> None:
    d = _unwrapped(view_dot(VIEW["speech"]))
    assert "speech_started / resume=listening" in d
    assert "ice_recovered [resume=speaking]" in d
    assert "ice_disconnected / resume=listening" in d


def test_a_changed_table_changes_the_view() -> None:
    changed = tuple(attrs.evolve(r, target="error") if r.label == "retry_now" else r
                    for r in TABLE)
    assert ("backoff", "error") in expected_graph(VIEW["recovery"], changed)[1]
    assert ("backoff", "error") not in expected_graph(VIEW["recovery"])[1]


@needs_dot
@pytest.mark.parametrize("name", list(VIEW))
def test_png_is_readable_at_natural_size(name: str) -> None:
    png = render(view_dot(VIEW[name]), "png")
    width, height = _png_size(png)
    assert 400 <= width <= MAX_WIDTH and 200 <= height <= 1200, (width, height)
    committed = (ROOT / "diagrams" / f"{name}.png").read_bytes()
    assert _png_size(committed) == (width, height), "regenerate with `fsm-voice diagram`"
    # the status fills are really painted (the legend has all of them; nodes add area)
    image = pytest.importorskip("PIL.Image")
    colors = _colors(image.open(io.BytesIO(png)).convert("RGB"))
    for status, hexcol in STATUS_COLORS.items():
        rgb = tuple(int(hexcol[i:i + 2], 16) for i in (1, 3, 5))
        assert colors.get(rgb, 0) > 50, (status, hexcol)


def _png_size(data: bytes) -> tuple[int, int]:
    """Width and height from a PNG's IHDR chunk."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def _colors(img: Any) -> dict[tuple[int, int, int], int]:
    return {c: n for n, c in img.getcolors(maxcolors=1 << 20) or []}


@needs_dot
def test_fsm_voice_diagram_writes_every_view(tmp_path: Path) -> None:
    import shutil

    from fsm_voice.cli import main

    root = Path(__file__).resolve().parent.parent  # a project copy: diagram refuses other roots
    for rel in ("pyproject.toml", "README.md", "specs/connection.md"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(root / rel, tmp_path / rel)
    assert main(["diagram", "--root", str(tmp_path)]) == 0
    for v in VIEWS:
        for ext in ("dot", "svg", "png"):
            assert (tmp_path / "diagrams" / f"{v.name}.{ext}").stat().st_size > 0
        assert (tmp_path / "diagrams" / f"{v.name}.dot").read_text() == view_dot(v)
    assert main(["diagram", "--root", str(tmp_path), "--check"]) == 0
    (tmp_path / "diagrams" / "recovery.dot").write_text("stale")
    assert main(["diagram", "--root", str(tmp_path), "--check"]) == 1


@needs_dot
def test_effects_on_request_show_every_rows_effects(tmp_path: Path) -> None:
    from fsm_voice.cli import main

    view = VIEW["recovery"]
    d = _unwrapped(view_dot(view, effects=True))
    assert rendered_graph(d) == expected_graph(view)
    for row in project(view).edges[("backoff", "reconnecting")]:
        assert f"-> {', '.join(map(str, row.effects))}" in d
    assert "open(reconnect, attempt)" in d and "open(reconnect, attempt)" not in view_dot(view)
    assert main(["diagram", "--effects", "--out", str(tmp_path)]) == 0
    assert {p.name for p in tmp_path.iterdir()} >= {f"{v.name}-effects.png" for v in VIEWS}
