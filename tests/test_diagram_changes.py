"""``fsm-voice diagram --diff`` (the table against the table at a git ref) and ``--trace`` (a
real session's path, one per demo fault)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import attrs
import pytest

from fsm_voice.cli import main
from fsm_voice.diagram_changes import (
    ADDED,
    CHANGED,
    REMOVED,
    diff_dot,
    diff_markdown,
    diff_tables,
    session_path,
    table_at,
    trace_dot,
)
from fsm_voice.machine.table import STATES, TABLE
from fsm_voice.trace import read_trace
from fsm_voice.views import DiagramError, rendered_graph

ROOT = Path(__file__).resolve().parent.parent
needs_dot = pytest.mark.skipif(shutil.which("dot") is None, reason="graphviz not installed")
needs_git = pytest.mark.skipif(not (ROOT / ".git").exists() or shutil.which("git") is None,
                               reason="not a git checkout")


def _edited() -> tuple[object, ...]:
    """The table with retry_now removed, one row added and one row's target changed."""
    rows = [r for r in TABLE if r.label != "retry_now"]
    rows.append(attrs.evolve(TABLE[0], source="backoff", event="made_up"))
    i = next(i for i, r in enumerate(rows) if r.label == "quick_reconnect")
    rows[i] = attrs.evolve(rows[i], target="backoff")
    return tuple(rows)


@needs_dot
def test_diff_classifies_and_draws_added_removed_changed() -> None:
    new = _edited()
    d = diff_tables(TABLE, new)  # type: ignore[arg-type]
    assert [(r.source, r.event) for r in d.added] == [("backoff", "made_up")]
    assert [r.label for r in d.removed] == ["retry_now"]
    assert {a.label for a, _ in d.changed} == {"quick_reconnect"}
    assert len(d.changed) == 1  # the first quick_reconnect row (from connecting)
    md = diff_markdown(d, "HEAD")
    assert "1 added, 1 removed, 1 changed rows" in md
    assert "| changed | `connecting` | `signaling_failed` |" in md
    assert "`reconnecting` → `backoff`" in md
    dot = diff_dot(d, "HEAD")
    _, edges = rendered_graph(dot)
    assert {("backoff", "connecting"), ("backoff", "reconnecting"),
            ("connecting", "backoff"), ("connecting", "reconnecting")} <= edges
    for colour in (ADDED, REMOVED, CHANGED):
        assert colour in dot
    assert diff_tables(TABLE, TABLE, STATES, STATES).empty


@needs_git
def test_table_at_head_loads_and_equals_today() -> None:
    status = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "--",
                             "fsm_voice/machine/table.py"], capture_output=True, text=True)
    if status.stdout.strip():
        pytest.skip("table.py has uncommitted changes")
    mod = table_at("HEAD", ROOT)
    assert diff_tables(mod.TABLE, TABLE, mod.STATES, STATES).empty
    with pytest.raises(DiagramError, match=r"no fsm_voice/machine/table\.py"):
        table_at("no-such-ref-xyz", ROOT)
    with pytest.raises(DiagramError, match="not a git ref"):
        table_at("--output=/tmp/x", ROOT)


@needs_git
@needs_dot
def test_cli_diff_against_the_first_table_writes_drawing_and_markdown(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    log = subprocess.run(["git", "-C", str(ROOT), "log", "--format=%H", "--",
                          "fsm_voice/machine/table.py"], capture_output=True, text=True).stdout
    if len(log.split()) < 2:
        pytest.skip("the table has one version only")
    first = log.split()[-1]
    assert main(["diagram", "--root", str(ROOT), "--diff", first, "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert f"Table changes against `{first}`" in out
    assert (tmp_path / "diff.md").read_text() in out
    assert (tmp_path / "diff.svg").read_text().lstrip().startswith("<?xml")
    assert (tmp_path / "diff.png").read_bytes()[:4] == b"\x89PNG"
    assert main(["diagram", "--root", str(ROOT), "--diff", "no-such-ref-xyz",
                 "--out", str(tmp_path)]) == 2
    assert "no-such-ref-xyz" in capsys.readouterr().err


@pytest.mark.anyio
@needs_dot
@pytest.mark.parametrize("fault", ["silent", "close", "server-error"])
async def test_trace_of_each_demo_fault_draws_the_path_and_the_failing_step(
        tmp_path: Path, fault: str, capsys: pytest.CaptureFixture[str]) -> None:
    from tests.test_trace import record_real

    path = tmp_path / f"{fault}.jsonl"
    await record_real(path, fault)
    _, records = read_trace(path)
    p = session_path(records)
    taken = [(r["source"], r["event"], r["target"]) for r in records
             if r["kind"] == "event" and r["outcome"] == "taken"]
    assert list(p.steps) == taken
    assert p.failing is not None
    src, event, dst = p.steps[p.failing]
    assert event in {"silent": {"transport_failed", "ice_grace_expired"},
                     "close": {"transport_failed"}, "server-error": {"server_error"}}[fault]
    assert dst in ("restarting", "backoff", "reconnecting", "error")
    assert all(e not in ("transport_failed", "server_error", "ice_grace_expired")
               for _, e, _ in p.steps[:p.failing])
    dot = trace_dot(p, path.name)
    nodes, edges = rendered_graph(dot)
    assert {(s, t) for s, _, t in taken if s != t} == edges
    assert {n for s, _, t in taken for n in (s, t)} == nodes
    assert f"FAILED at step {p.failing + 1}" in dot
    n = taken.count((src, event, dst))
    assert f"{event} x{n}  <- FAILED" in dot
    assert main(["diagram", "--trace", str(path), "--out", str(tmp_path / "out")]) == 0
    assert (tmp_path / "out" / f"{fault}.png").exists()
    assert f"failing step {p.failing + 1}" in capsys.readouterr().out


def test_unreadable_trace_is_a_usage_error(tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"kind": "event"}\n')
    assert main(["diagram", "--trace", str(bad)]) == 2
    assert "no header record" in capsys.readouterr().err


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.mark.anyio
@needs_dot
async def test_diff_with_trace_draws_both(tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    from tests.test_replay import record

    trace = tmp_path / "t.jsonl"
    await record(trace)
    out = tmp_path / "out"
    assert main(["diagram", "--root", str(ROOT), "--diff", "HEAD", "--trace", str(trace),
                 "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "Table changes against `HEAD`" in printed and "events taken" in printed
    assert (out / "diff.md").is_file() and (out / "diff.svg").is_file()
    assert (out / "t.svg").is_file()
