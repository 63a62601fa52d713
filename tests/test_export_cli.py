"""The export flags of the CLI: ``--metrics-port`` on connect/demo/peer/broker, ``demo
--dashboard``, ``fsm-voice dashboard``; the exporters they start; a real ``fsm-voice peer
--metrics-port`` process scraped over HTTP."""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys

import aiohttp
import anyio
import pytest
from prometheus_client.parser import text_string_to_metric_families

from fsm_voice.cli import build_parser
from fsm_voice.clock import VirtualClock
from fsm_voice.dashboard import exporters, run_observed
from fsm_voice.session import VoiceSession
from fsm_voice.telemetry import Hub
from fsm_voice.testing import ScriptedTransport

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def test_flags_parse() -> None:
    p = build_parser()
    a = p.parse_args(["demo", "--metrics-port", "0", "--dashboard"])
    assert (a.metrics_port, a.dashboard) == (0, 0)
    a = p.parse_args(["demo", "--dashboard", "8123"])
    assert (a.metrics_port, a.dashboard) == (None, 8123)
    a = p.parse_args(["demo"])
    assert (a.metrics_port, a.dashboard) == (None, None)
    assert p.parse_args(["peer", "--metrics-port", "9100"]).metrics_port == 9100
    assert p.parse_args(["connect", "--base-url", "http://127.0.0.1:1",
                         "--metrics-port", "9101"]).metrics_port == 9101
    assert p.parse_args(["broker", "--metrics-port", "9102"]).metrics_port == 9102
    a = p.parse_args(["dashboard", "--sessions", "2", "--trace", "a.jsonl", "--trace", "b.jsonl"])
    assert (a.sessions, a.trace_files, a.port) == (2, ["a.jsonl", "b.jsonl"], 0)


def test_a_bad_port_is_a_clear_error(capsys: pytest.CaptureFixture[str]) -> None:
    async def main(hub: Hub | None) -> int:
        raise AssertionError("must not run")
    code = run_observed(argparse.Namespace(metrics_port=70000, dashboard=None), main)
    assert code == 2
    assert "port must be an integer in 0..65535" in capsys.readouterr().err


def test_without_flags_nothing_is_watched() -> None:
    seen: list[Hub | None] = []

    async def main(hub: Hub | None) -> int:
        seen.append(hub)
        return 0
    assert run_observed(argparse.Namespace(), main) == 0
    assert seen == [None]


async def test_exporters_serve_metrics_and_dashboard() -> None:
    hub = Hub()
    said: list[str] = []
    async with exporters(hub, metrics_port=0, dashboard_port=0, announce=said.append) as urls:
        assert set(urls) == {"metrics", "dashboard"}
        assert said == [f"metrics: {urls['metrics']}", f"dashboard: {urls['dashboard']}"]
        s = VoiceSession(ScriptedTransport(), clock=VirtualClock())
        hub.track(s)
        async with s, aiohttp.ClientSession() as http:
            await s.start()
            async with http.get(urls["metrics"]) as r:
                text = await r.text()
            async with http.get(urls["dashboard"] + "api/sessions") as r:
                views = (await r.json())["sessions"]
        gauge = next(f for f in text_string_to_metric_families(text)
                     if f.name == "fsm_voice_sessions")
        assert {x.labels["status"]: x.value for x in gauge.samples}["active"] == 1
        assert [v["status"] for v in views] == ["active"]
    assert hub.sinks == []  # the exporters stopped watching


async def test_peer_process_serves_its_metrics() -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "fsm_voice.cli", "peer", "--port", "0", "--metrics-port", "0"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        assert proc.stdout is not None
        with anyio.fail_after(30):
            line = await anyio.to_thread.run_sync(proc.stdout.readline)
        assert line.startswith("metrics: http://127.0.0.1:"), line
        url = line.split()[1]
        async with aiohttp.ClientSession() as http, http.get(url) as r:
            text = await r.text()
        names = {f.name for f in text_string_to_metric_families(text)}
        assert {"fsm_voice_peer_calls", "fsm_voice_peer_offers_received"} <= names
    finally:
        proc.send_signal(signal.SIGINT)
        await anyio.to_thread.run_sync(proc.wait, 20)
    assert proc.returncode == 0
