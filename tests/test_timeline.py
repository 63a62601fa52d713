"""The timeline of a recorded session: what it shows (spans and marks from the records) and that
each format renders offline (HTML with plotly.js inline, SVG and PNG with matplotlib)."""

from __future__ import annotations

import itertools
import re
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from fsm_voice.cli import main
from fsm_voice.clock import VirtualClock
from fsm_voice.ports import ConnectionMetrics, TransportSignal
from fsm_voice.session import VoiceSession
from fsm_voice.testing import ScriptedTransport, failure
from fsm_voice.timeline import TimelineError, build, render
from fsm_voice.trace import read_trace

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
async def trace(tmp_path: Path) -> Path:
    """Speech, a bad-quality sample (alerts), an ICE loss that restarts, a failed restart and a
    backoff, then recovery and stop."""
    path = tmp_path / "session.jsonl"
    clock = VirtualClock()
    t = ScriptedTransport(["ok", failure("recoverable", "upstream_down"), "ok"])
    async with VoiceSession(t, clock=clock) as s:
        s.record_trace(path)
        await s.start()
        await clock.advance(1)
        t.server({"type": "input_audio_buffer.speech_started"})
        await clock.advance(2)
        t.server({"type": "input_audio_buffer.speech_stopped"})
        t.server({"type": "output_audio_buffer.started"})
        t.metrics_sample = ConnectionMetrics(latency_ms=450.0, packets_lost=3, jitter_ms=80.0,
                                             timestamp=0.0, packets_received=100,
                                             loss_fraction=0.2)
        await clock.advance(6)
        t.server({"type": "output_audio_buffer.stopped"})
        t.metrics_sample = None
        await clock.advance(5)
        t.emit(TransportSignal.ICE_DISCONNECTED)
        await clock.advance(60)
        await s.stop()
    return path


async def test_the_picture_holds_status_state_recovery_speech_faults_and_quality(
        trace: Path) -> None:
    header, records = read_trace(trace)
    tl = build(header, records)
    events = [r for r in records if r["kind"] == "event" and r["outcome"] == "taken"]
    lost = next(r["t"] for r in events if r["event"] == "ice_disconnected") - header["t0"]
    spans = {(s.lane, s.label) for s in tl.spans}
    assert {("status", "active"), ("status", "reconnecting"), ("status", "listening"),
            ("status", "speaking"), ("recovery", "ice_grace"),
            ("recovery", "backoff"), ("speaking", "user"), ("speaking", "assistant")} <= spans
    assert any(m.lane == "recovery" and m.label == "open restart #0" for m in tl.marks)
    grace = next(s for s in tl.spans if s.lane == "recovery" and s.label == "ice_grace")
    assert grace.start == pytest.approx(lost)
    assert grace.end - grace.start == pytest.approx(header["policy"]["ice"]["disconnected_grace"])
    lanes = {m.lane for m in tl.marks}
    assert {"faults", "alerts", "recovery"} <= lanes
    assert any(m.lane == "faults" and "upstream_down" in m.label for m in tl.marks)
    assert {a.label.split()[0] for a in tl.marks if a.lane == "alerts"} == {
        "rtt", "jitter", "loss_fraction"}
    assert tl.samples["rtt_ms"] and all(v == 450.0 for _, v in tl.samples["rtt_ms"])
    assert tl.thresholds["rtt_ms"] == header["policy"]["quality"]["max_rtt_ms"]
    # The status band covers the whole trace without gaps or overlaps.
    band = sorted((s.start, s.end) for s in tl.spans if s.lane == "status")
    assert band[0][0] == 0.0 and band[-1][1] == pytest.approx(tl.end)
    assert all(a[1] == pytest.approx(b[0]) for a, b in itertools.pairwise(band))


async def test_html_is_self_contained(trace: Path, tmp_path: Path) -> None:
    out = tmp_path / "t.html"
    assert main(["timeline", str(trace), "-o", str(out)]) == 0
    html = out.read_text()
    assert not re.search(r"<script[^>]+src=[\"']?(https?:)?//", html), "loads a script remotely"
    assert "Plotly.newPlot" in html and len(html) > 1_000_000  # plotly.js is in the file
    assert "ice_grace" in html and "reconnecting" in html


async def test_svg_and_png_render(trace: Path, tmp_path: Path) -> None:
    svg = render(trace, tmp_path / "t.svg")
    root = ET.parse(svg).getroot()
    assert root.tag.endswith("svg")
    text = svg.read_text()
    assert "<script" not in text and not re.search(r"href=[\"']https?:", text)
    assert "ice_grace" in text
    png = render(trace, tmp_path / "t.png")
    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000


async def test_unknown_format_is_refused(trace: Path, tmp_path: Path) -> None:
    with pytest.raises(TimelineError, match=r"\.html, \.svg or \.png"):
        render(trace, tmp_path / "t.pdf")
    assert main(["timeline", str(trace), "-o", str(tmp_path / "t.gif")]) == 2


def test_a_speaking_span_ends_when_the_connection_goes() -> None:
    """The assistant speaks, the session is lost (backoff), a new one comes up: two spans,
    none across the outage (the span used to run on until the next ``audio_stopped``)."""
    def ev(t: float, event: str, target: str, status: str) -> dict[str, object]:
        return {"kind": "event", "t": t, "outcome": "taken", "event": event,
                "source": "", "target": target, "status": status, "effects": []}

    records = [ev(0.5, "channel_open", "active", "active"),
               ev(1.0, "audio_started", "speaking", "speaking"),
               ev(3.0, "session_closed", "backoff", "reconnecting"),
               ev(5.0, "channel_open", "active", "active"),
               ev(6.0, "audio_started", "speaking", "speaking"),
               ev(7.0, "audio_stopped", "active", "active")]
    tl = build({"t0": 0.0}, records)
    spoken = [(s.start, s.end) for s in tl.spans if s.lane == "speaking"]
    assert spoken == [(1.0, 3.0), (6.0, 7.0)], spoken
