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
