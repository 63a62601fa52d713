"""Every generated artefact and block (diagrams, Promela, the spec's tables, the README's
diagram) must be what the table generates now."""

from __future__ import annotations

import shutil
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from fsm_voice.check import (
    INVARIANTS_BEGIN,
    STATES_BEGIN,
    TABLE_BEGIN,
    generated_spec,
    parse_spec_table,
    table_rows,
)
from fsm_voice.diagrams import (
    README_BEGIN,
    dot,
    generated,
    mermaid,
    readme_block,
    readme_mermaid,
)
from fsm_voice.machine.table import TABLE

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.skipif(shutil.which("dot") is None, reason="graphviz not installed; .ci/run "
                    "installs it")
def test_committed_artefacts_do_not_drift() -> None:
    gen = generated(ROOT)
    assert {"README.md", "specs/connection.md", "specs/lifecycle.pml",
            "diagrams/lifecycle.mmd", "diagrams/overview.svg", "diagrams/recovery.dot",
            "diagrams/speech.svg"} <= set(gen)
    stale = [rel for rel, text in gen.items()
             if not (ROOT / rel).exists() or (ROOT / rel).read_text() != text]
    assert stale == [], f"regenerate with `fsm-voice diagram`: {stale}"


def test_spec_blocks_are_generated_and_detect_drift() -> None:
    text = (ROOT / "specs" / "connection.md").read_text()
    assert generated_spec(text) == text
    for marker in (STATES_BEGIN, INVARIANTS_BEGIN, TABLE_BEGIN):
        broken = text.replace(marker + "\n", marker + "\n| stale |\n", 1)
        assert generated_spec(broken) == text
        assert broken != text
    assert parse_spec_table(text) == table_rows()
    assert len(parse_spec_table(text)) == len(TABLE) + 1  # + the crash row


def test_readme_diagram_is_generated() -> None:
    text = (ROOT / "README.md").read_text()
    assert readme_block() in text and README_BEGIN in text
    assert "![lifecycle overview" in readme_block() and (ROOT / "diagrams/overview.svg").exists()
    assert "backoff --> reconnecting: backoff_expired" in readme_mermaid()


def test_diagrams_show_every_state_and_guard() -> None:
    m = mermaid()
    for state in ("idle", "connecting", "ice_grace", "restarting", "backoff", "reconnecting"):
        assert f"    {state} --> " in m
    assert "reconnecting --> reconnecting: signaling_failed [severity_is_transient & " in m
    assert "ice_grace -> restarting" in dot()


@pytest.mark.skipif(shutil.which("dot") is None, reason="graphviz not installed")
def test_svg_is_valid_xml() -> None:
    root = ET.fromstring((ROOT / "diagrams" / "lifecycle.svg").read_text())
    assert root.tag.endswith("svg")


def test_scxml_reads_back_equal_with_python_statemachine() -> None:
    from statemachine.io import load

    from fsm_voice.diagrams import scxml

    cls = load(scxml(), format="scxml")
    got = [(t.source.id, str(e), t.target.id, bool(t.internal),
            tuple(c.func.action for c in t.cond))
           for s in cls.states for t in s.transitions for e in t.events]
    want = [(r.source, r.event, r.target, r.internal,
             (" and ".join(map(str, r.guard)),) if r.guard else ()) for r in TABLE]
    assert sorted(got) == sorted(want)
    assert cls.initial_state.id == "idle"
