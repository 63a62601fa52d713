"""Trace files from real sessions (aiortc + HTTP signaling against the local peer, one per demo
fault): every record valid against the JSON Schema, no secret in the file, and a replay of
both engines agreeing on every step. Then the writer's own rules (bounded, versioned, typed
errors) on a scripted transport and a virtual clock."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import anyio
import jsonschema
import pytest

from fsm_voice.client import realtime_session
from fsm_voice.clock import VirtualClock
from fsm_voice.peer.server import RealtimePeer
from fsm_voice.policy import IcePolicy, MonitorPolicy, RetryPolicy, SessionPolicy
from fsm_voice.ports import TransportSignal
from fsm_voice.replay import ENGINES, ReplayError, replay
from fsm_voice.session import VoiceSession
from fsm_voice.testing import ScriptedTransport
from fsm_voice.trace import SCHEMA, VERSION, TraceError, TraceWriter, read_trace, schema
from fsm_voice.transport import NullSink, SilenceSource

pytestmark = pytest.mark.anyio

KEY = "ek_trace_test_3f9a1c0d7e5b"
"""The ephemeral key the real sessions use: it must appear nowhere in their traces."""

POLICY = SessionPolicy(  # jitter left on: the backoff's random draws must replay too
    retry=RetryPolicy(base_delay=0.3, factor=2.0, max_attempts=3, jitter=0.2, stable_after=0.5),
    ice=IcePolicy(disconnected_grace=1.0, connect_timeout=5.0, restart_timeout=5.0),
    monitor=MonitorPolicy(metrics_interval=0.5, health_interval=5.0),
)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def validator() -> jsonschema.protocols.Validator:
    cls = jsonschema.validators.validator_for(schema())
    cls.check_schema(schema())
    return cls(schema())


async def record_real(path: Path, fault: str) -> VoiceSession:
    async with RealtimePeer() as peer:
        writer = TraceWriter(path)
        http = writer.http_session()
        s = realtime_session(peer.base_url, KEY, policy=POLICY, host_addresses=["127.0.0.1"],
                             audio_source=SilenceSource, audio_sink=NullSink, http=http)
        writer.record(s)
        s.closers.append(http.close)
        async with s:
            await s.start()
            await s.wait_for("active", timeout=10)
            with anyio.fail_after(5):  # past the failure episode: a fault gives a new call
                while not any(e.event == "session_stable" for e in s.trace):
                    await anyio.sleep(0.05)
            if fault == "silent":
                peer.go_silent()
            elif fault == "close":
                await peer.close_call()
            else:
                peer.send_error("server_error", "server_error", f"boom Bearer {KEY}")
            await s.wait_for("reconnecting", timeout=10)
            await s.wait_for("active", timeout=15)
            await s.stop()
    return s


@pytest.mark.parametrize("fault", ["silent", "close", "server-error"])
async def test_real_session_trace_is_valid_secret_free_and_replays_in_both_engines(
        tmp_path: Path, fault: str) -> None:
    path = tmp_path / f"{fault}.jsonl"
    s = await record_real(path, fault)
    text = path.read_text()
    for secret in (KEY, "Bearer ek_", "Authorization", "a=ice-pwd", "v=0\r\n"):
        assert secret not in text, f"{secret!r} leaked into the trace"
    lines = [json.loads(line) for line in text.splitlines()]
    v = validator()
    for rec in lines:
        v.validate(rec)
    header, records = read_trace(path)
    assert (header["schema"], header["version"], header["replayable"]) == (SCHEMA, VERSION, True)
    assert records[-1]["kind"] == "end" and records[-1]["records"] == len(lines)
    events = [r for r in records if r["kind"] == "event"]
    # Every runtime event of the session is in the file, in order.
    assert [(r["event"], r["outcome"], r["target"]) for r in events] == [
        (e.event, e.outcome, e.target) for e in s.trace if e.outcome != "observed"]
    kinds = {r["kind"] for r in records}
    assert {"signaling", "metrics"} <= kinds
    offers = [r for r in records if r["kind"] == "signaling" and r["url"].endswith("/calls")]
    assert [r["http_status"] for r in offers][:2] == [201, 201]  # the first call and its restart
    hangups = [r for r in records if r["kind"] == "signaling" and r["url"].endswith("/hangup")]
    # abandoned calls are hung up (404 when the server had already ended the call)
    assert hangups and all(r["http_status"] in (200, 404) for r in hangups)
    assert any(r.get("timer") for r in events), "no timer expiry recorded"
    if fault == "server-error":
        assert any(r["kind"] == "error" and r["code"] == "server_error" for r in records)
    for r in events:  # with jitter on, each backoff delay comes with the draw it used
        if any(e["type"] == "arm" and e["timer"] == "backoff_expired" for e in r["effects"]):
            assert len(r.get("draws", ())) == 1, r
    for engine in ENGINES:
        result = replay(header, records, engine=engine)
        assert result.divergence is None, result.divergence.describe()
        assert result.compared == len(events)
        # In virtual time, with the policy it had, the session takes the recorded path again.
        same = replay(header, records, engine=engine,
                      overrides={"ice.disconnected_grace": POLICY.ice.disconnected_grace})
        assert same.divergence is None, same.divergence.describe()
    if fault == "silent":  # a longer grace: the loss is waited out longer, the path changes
        longer = replay(header, records, overrides={"ice.disconnected_grace": 30.0})
        assert longer.divergence is not None
        assert longer.divergence.event == "ice_disconnected"
        assert not any(s.event == "ice_grace_expired" for s in longer.steps)


async def scripted(path: Path, **kw: Any) -> VoiceSession:
    clock = VirtualClock()
    t = ScriptedTransport(["ok", "ok"])
    async with VoiceSession(t, clock=clock) as s:
        s.record_trace(path, **kw)
        await s.start()
        await clock.advance(1)
        for _ in range(200):
            t.emit(TransportSignal.ICE_DISCONNECTED)
            t.emit(TransportSignal.ICE_RECOVERED)
        await clock.advance(1)
    return s


async def test_size_is_bounded_and_the_end_record_says_what_was_dropped(tmp_path: Path) -> None:
    path = tmp_path / "small.jsonl"
    await scripted(path, max_bytes=8 * 1024)
    assert path.stat().st_size <= 8 * 1024
    _header, records = read_trace(path)
    end = records[-1]
    assert end["kind"] == "end" and end["truncated"] is True
    assert end["dropped"] + end["records"] - 1 == 1 + 403 + 1  # header, events, stop events
    full = tmp_path / "full.jsonl"
    await scripted(full)
    assert read_trace(full)[1][-1]["dropped"] == 0


async def test_a_trace_started_mid_session_is_written_but_not_replayable(tmp_path: Path) -> None:
    clock = VirtualClock()
    async with VoiceSession(ScriptedTransport(["ok"]), clock=clock) as s:
        await s.start()
        await clock.advance(1)
        s.record_trace(tmp_path / "late.jsonl")
    header, records = read_trace(tmp_path / "late.jsonl")
    assert header["replayable"] is False and header["state"] == "active"
    with pytest.raises(ReplayError, match="cannot be replayed"):
        replay(header, records)


def test_unreadable_traces_give_a_typed_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text("not json\n")
    with pytest.raises(TraceError, match="not JSON"):
        read_trace(bad)
    bad.write_text(json.dumps({"kind": "header", "schema": SCHEMA, "version": 99}) + "\n")
    with pytest.raises(TraceError, match="version 99"):
        read_trace(bad)
    bad.write_text(json.dumps({"kind": "event"}) + "\n")
    with pytest.raises(TraceError, match="no header"):
        read_trace(bad)
    with pytest.raises(ValueError, match="max_bytes"):
        TraceWriter(tmp_path / "x.jsonl", max_bytes=10)


async def test_demo_records_its_trace_and_says_where_the_timeline_is(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from rich.console import Console

    from fsm_voice.demo import run_demo

    path = tmp_path / "demo.jsonl"
    assert await run_demo(5.0, "close", None, Console(width=200), str(path)) == 0
    out = capsys.readouterr().out
    html = path.with_suffix(".html")
    assert f"trace: {path}" in out and f"timeline: {html}" in out
    assert html.stat().st_size > 1_000_000
    header, records = read_trace(path)
    assert any(r["kind"] == "event" and r["status"] == "reconnecting" for r in records)
    assert all(replay(header, records, engine=e).agreed for e in ENGINES)


_HEADER = json.dumps({"kind": "header", "schema": SCHEMA, "version": VERSION, "state": "idle",
                      "replayable": True, "policy": {}})
_GOOD_EVENT = {"kind": "event", "t": 0.0, "gen": 0, "token": None, "event": "start",
               "outcome": "taken", "source": "idle", "target": "connecting",
               "status": "connecting", "effects": []}


@pytest.mark.parametrize("body", [
    b"\x89PNG\r\n\x1a\n\xff\xfe\x00garbage\x80\x81\n",
    (_HEADER + '\n{"kind":"event","t":"x"}\n').encode(),
    (_HEADER + '\n{"kind":"event"}\n').encode(),
    (_HEADER + "\n" + json.dumps({**_GOOD_EVENT, "effects": "zz"}) + "\n").encode(),
    (_HEADER + "\n" + json.dumps({**_GOOD_EVENT, "effects": [{"type": "arm"}]}) + "\n").encode(),
], ids=["binary", "t-not-a-number", "no-t", "effects-not-a-list", "arm-without-timer"])
@pytest.mark.parametrize("command", [["replay"], ["timeline"], ["diagram", "--trace"]])
def test_a_malformed_trace_is_one_line_and_exit_2_in_every_command(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], body: bytes,
        command: list[str]) -> None:
    from fsm_voice.cli import main

    bad = tmp_path / "bad.jsonl"
    bad.write_bytes(body)
    with pytest.raises(TraceError, match=r"bad\.jsonl:\d+: "):
        read_trace(bad)
    extra = ["--output", str(tmp_path / "t.html")] if command == ["timeline"] else []
    assert main([*command, str(bad), *extra]) == 2
    cap = capsys.readouterr()
    assert "Traceback" not in cap.out + cap.err
    assert "bad.jsonl:" in cap.out + cap.err
