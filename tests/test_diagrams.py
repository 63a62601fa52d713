"""Committed diagrams and the Promela model must be what the machine generates now."""

from __future__ import annotations

import shutil
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from fsm_voice.diagrams import dot, generated, mermaid

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.skipif(shutil.which("dot") is None, reason="graphviz not installed; .ci/run "
                    "installs it")
def test_committed_artefacts_do_not_drift() -> None:
    stale = [rel for rel, text in generated().items()
             if not (ROOT / rel).exists() or (ROOT / rel).read_text() != text]
    assert stale == [], f"regenerate with `fsm-voice diagram`: {stale}"


def test_diagrams_show_every_state_and_transition_event() -> None:
    m = mermaid()
    for state in ("idle", "connecting", "ice_grace", "restarting", "backoff", "reconnecting"):
        assert f"    {state} --> " in m
    assert "backoff --> reconnecting: backoff_expired" in m
    assert "reconnecting --> reconnecting: signaling_failed [quick_available]" in m
    assert '"ice_grace" -> "restarting"' in dot() or "ice_grace -> restarting" in dot()


@pytest.mark.skipif(shutil.which("dot") is None, reason="graphviz not installed")
def test_svg_is_valid_xml() -> None:
    root = ET.fromstring((ROOT / "diagrams" / "lifecycle.svg").read_text())
    assert root.tag.endswith("svg")


def test_scxml_reads_back_equal_with_python_statemachine() -> None:
    from statemachine.io import load

    from fsm_voice.diagrams import scxml
    from fsm_voice.fastpath import compile_machine

    cls = load(scxml(), format="scxml")
    got = [(t.source.id, str(e), t.target.id, bool(t.internal),
            tuple(c.func.action for c in t.cond))
           for s in cls.states for t in s.transitions for e in t.events]
    def cond(guards: tuple[tuple[str, bool], ...]) -> tuple[str, ...]:
        return (" and ".join(g if exp else f"not {g}" for g, exp in guards),) if guards else ()

    want = [(ct.source, ct.event, ct.target, ct.internal, cond(ct.guards))
            for cands in compile_machine().values() for ct in cands]
    assert sorted(got) == sorted(want)
    assert cls.initial_state.id == "idle"
