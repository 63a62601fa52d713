"""``fsm-voice demo | peer | connect``: the real session, end to end, on this machine.

``demo`` starts the local realtime peer in-process on 127.0.0.1, opens a session through the real
aiortc transport and HTTP signaling, speaks a generated utterance (the peer's VAD hears it and
answers with an echo), injects a scripted fault, shows the recovery on a live status line, stops,
and prints a summary. Exit status 0 only if the session recovered and stopped cleanly.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import tempfile
import time
from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import anyio
from rich.console import Console
from rich.live import Live
from rich.table import Table
from rich.text import Text

from fsm_voice.client import realtime_session
from fsm_voice.dashboard import add_export_flags, run_observed
from fsm_voice.errors import VoiceError
from fsm_voice.peer.server import RealtimePeer, run_peer
from fsm_voice.policy import IcePolicy, MonitorPolicy, SessionPolicy
from fsm_voice.ports import ConnectionMetrics
from fsm_voice.realtime import RealtimeConfig
from fsm_voice.session import StatusChange, VoiceSession
from fsm_voice.telemetry import Hub
from fsm_voice.tokens import EphemeralKeyProvider
from fsm_voice.trace import TraceWriter
from fsm_voice.transport import KeepOpen, NullSink, UtteranceSource, WavRecorder
from fsm_voice.transport.audio import AudioSink

FAULTS = ("silent", "close", "server-error", "none")
_STYLE = {"idle": "dim", "connecting": "yellow", "active": "green", "listening": "cyan",
          "speaking": "magenta", "reconnecting": "bold yellow", "error": "bold red"}


class DemoRecorder:
    """Collects what the summary needs from the session's callbacks."""

    def __init__(self, t0: float) -> None:
        self.t0 = t0
        self.changes: list[tuple[float, str, str]] = []
        self.errors: list[VoiceError] = []
        self.events: Counter[str] = Counter()
        self.metrics: ConnectionMetrics | None = None
        self.responses = 0

    def status(self, c: StatusChange) -> None:
        self.changes.append((time.monotonic() - self.t0, c.status, c.state))

    def server_event(self, e: Mapping[str, Any]) -> None:
        etype = str(e.get("type"))
        self.events[etype] += 1
        if etype == "response.done":
            self.responses += 1

    def first(self, status: str, after: float = 0.0) -> float | None:
        return next((t for t, s, _ in self.changes if s == status and t >= after), None)


def _line(session: VoiceSession, rec: DemoRecorder, phase: str) -> Text:
    m = rec.metrics
    rtt = f"{m.latency_ms:.0f} ms" if m and m.latency_ms is not None else "-"
    jit = f"{m.jitter_ms:.1f} ms" if m and m.jitter_ms is not None else "-"
    lost = str(m.packets_lost) if m else "-"
    t = time.monotonic() - rec.t0
    text = Text(f"{t:5.1f}s  ")
    text.append(f"{session.status:12s}", style=_STYLE.get(session.status, ""))
    text.append(f" state={session.state:12s} attempts={session.attempts}  rtt={rtt} "
                f"jitter={jit} lost={lost}  responses={rec.responses}  {phase}")
    return text


async def run_demo(duration: float, fault: str, record: str | None, console: Console,
                   trace: str | None = None, hub: Hub | None = None) -> int:
    if fault not in FAULTS:
        raise ValueError(f"unknown fault {fault!r}; choose one of {', '.join(FAULTS)}")
    policy = SessionPolicy(
        ice=IcePolicy(disconnected_grace=2.0, connect_timeout=10.0, restart_timeout=8.0),
        monitor=MonitorPolicy(metrics_interval=1.0, health_interval=10.0),
    )
    t0 = time.monotonic()
    rec = DemoRecorder(t0)

    # One recording for the whole session: every connection (restarts included) appends to it.
    recorder = WavRecorder(record) if record else None

    def sink() -> AudioSink:
        return KeepOpen(recorder) if recorder is not None else NullSink()

    if trace is None:
        trace = str(Path(tempfile.mkdtemp(prefix="fsm-voice-demo-")) / "trace.jsonl")
    writer = TraceWriter(trace)
    http = writer.http_session()
    async with RealtimePeer(reply="echo") as peer:
        session = realtime_session(
            peer.base_url, "ek_local_demo", policy=policy, host_addresses=["127.0.0.1"],
            http=http,
            session_config=RealtimeConfig(instructions="Echo what you hear."),
            audio_source=lambda: UtteranceSource(lead_silence=0.5, speech_seconds=1.2,
                                                 trail_silence=3.5, repeat=True),
            audio_sink=sink,
        )
        writer.record(session)
        session.closers.append(http.close)
        if hub is not None:
            hub.track(session, name="demo")
        session.on_status(rec.status)
        session.on_error(rec.errors.append)
        session.on_server_event(rec.server_event)
        session.on_metrics(lambda m: setattr(rec, "metrics", m))
        phase = "connecting"
        fault_at: float | None = None
        recovered_at: float | None = None
        async with session:
            with Live(_line(session, rec, phase), console=console, refresh_per_second=8,
                      transient=False) as live:

                async def tick(until: float, label: str) -> None:
                    while time.monotonic() - t0 < until:
                        live.update(_line(session, rec, label))
                        await anyio.sleep(0.1)

                await session.start()
                with anyio.move_on_after(15):
                    await session.wait_for("active", "error")
                connected_at = rec.first("active")
                # Talk: wait for one full exchange (speech -> echo reply) or a third of the time.
                talk_until = time.monotonic() - t0 + max(4.0, duration / 3)
                while rec.responses < 1 and time.monotonic() - t0 < talk_until:
                    await tick(time.monotonic() - t0 + 0.2, "talking")
                if fault != "none" and session.status != "error":
                    fault_at = time.monotonic() - t0
                    if fault == "silent":
                        peer.go_silent()
                    elif fault == "close":
                        await peer.close_call()
                    else:
                        peer.send_error("server_error", "server_error", "injected by the demo")
                    phase = f"fault: {fault}"
                    # Recovery: reconnecting then active again (or, for a non-fatal server
                    # error, the session simply stays up).
                    deadline = fault_at + max(20.0, duration / 2)
                    while time.monotonic() - t0 < deadline:
                        await tick(time.monotonic() - t0 + 0.2, phase)
                        back = rec.first("reconnecting", after=fault_at)
                        if fault == "server-error" and rec.errors:
                            recovered_at = time.monotonic() - t0
                            break
                        if back is not None and session.status in ("active", "listening",
                                                                    "speaking"):
                            recovered_at = time.monotonic() - t0
                            break
                        if session.status == "error":
                            break
                    phase = "recovered" if recovered_at is not None else "NOT recovered"
                await tick(min(duration, time.monotonic() - t0 + 3.0), phase)
                await session.stop()
                live.update(_line(session, rec, "stopped"))
        stopped_clean = session.status == "idle" and not session.armed_timers
    if recorder is not None:
        recorder.close()
    code = _summary(console, rec, session, fault, fault_at, recovered_at, connected_at,
                    stopped_clean, record)
    _show_trace(console, trace)
    return code


def _show_trace(console: Console, trace: str) -> None:
    """Say where the trace is, and draw its timeline beside it (with the ``trace`` extra)."""
    from fsm_voice.timeline import TimelineError, render

    console.print(f"trace: {trace}  (replay it: fsm-voice replay {trace})")
    try:
        out = render(trace, Path(trace).with_suffix(".html"))
    except TimelineError as exc:
        console.print(f"timeline not drawn: {exc}")
    else:
        console.print(f"timeline: {out}")


def _summary(console: Console, rec: DemoRecorder, session: VoiceSession, fault: str,
             fault_at: float | None, recovered_at: float | None, connected_at: float | None,
             stopped_clean: bool, record: str | None) -> int:
    table = Table(title="fsm-voice demo summary", show_header=False)
    visited: list[str] = []
    for _, status, _ in rec.changes:
        if not visited or visited[-1] != status:
            visited.append(status)
    table.add_row("statuses visited", " -> ".join(visited))
    table.add_row("connect time (start -> active)",
                  f"{connected_at:.2f} s" if connected_at is not None else "never")
    table.add_row("fault injected", f"{fault} at {fault_at:.1f} s" if fault_at else fault)
    rec_time = (recovered_at - fault_at) if recovered_at and fault_at else None
    table.add_row("time to recover", f"{rec_time:.2f} s" if rec_time is not None else "-")
    opens = [e for e in session.trace if e.event in ("backoff_expired",)]
    restarts = [e for e in session.trace if e.target == "restarting" and e.source != "restarting"]
    table.add_row("transport restarts / reconnect attempts", f"{len(restarts)} / {len(opens)}")
    table.add_row("assistant responses", str(rec.responses))
    table.add_row("server events", ", ".join(f"{k}={v}" for k, v in sorted(rec.events.items())
                                           if k.startswith(("input_audio", "output_audio",
                                                            "session.", "error"))))
    if rec.metrics:
        m = rec.metrics
        rtt = f"{m.latency_ms:.1f}" if m.latency_ms is not None else "-"
        jitter = f"{m.jitter_ms:.1f}" if m.jitter_ms is not None else "-"
        table.add_row("last metrics", f"rtt={rtt} ms jitter={jitter} ms "
                      f"lost={m.packets_lost} received={m.packets_received}")
    table.add_row("quality alerts", str(len(session.alerts)))
    table.add_row("errors reported", "; ".join(str(e) for e in rec.errors) or "none")
    table.add_row("stopped cleanly (idle, no timer)", str(stopped_clean))
    if record:
        table.add_row("received audio recorded to", record)
    console.print(table)
    ok = stopped_clean and connected_at is not None and (fault == "none" or rec_time is not None)
    console.print("[bold green]demo passed: the session recovered[/]" if ok
                  else "[bold red]demo FAILED[/]")
    return 0 if ok else 1


async def run_connect(base_url: str, token: str | EphemeralKeyProvider, duration: float,
                      config: RealtimeConfig, console: Console, trace: str | None = None,
                      hub: Hub | None = None) -> int:
    """Run a session against any OpenAI-compatible backend and print status changes as JSON."""
    writer = TraceWriter(trace) if trace else None
    http = writer.http_session() if writer else None
    session = realtime_session(base_url, token, model=config.model, session_config=config,
                               audio_source=lambda: UtteranceSource(repeat=True),
                               audio_sink=NullSink, http=http)
    if writer is not None and http is not None:
        writer.record(session)
        session.closers.append(http.close)
    if isinstance(token, EphemeralKeyProvider):
        session.closers.append(token.aclose)
    if hub is not None:
        hub.track(session, name="connect")
    def emit(obj: dict[str, Any]) -> None:  # JSON lines, never wrapped
        print(json.dumps(obj), flush=True)

    session.on_status(lambda c: emit(
        {"t": round(c.time, 3), "status": c.status, "state": c.state, "event": c.event}))
    session.on_error(lambda e: emit({"error": str(e), "code": e.code,
                                     "severity": str(e.severity)}))
    async with session:
        await session.start()
        await anyio.sleep(duration)
        ok = session.status in ("active", "listening", "speaking")
    return 0 if ok else 1


def add_parsers(sub: Any) -> None:
    d = sub.add_parser("demo", help="run a real session against the in-process local peer, "
                       "inject a fault and show the recovery")
    d.add_argument("--duration", type=float, default=20.0, help="seconds to run (default 20)")
    d.add_argument("--fault", choices=FAULTS, default="silent",
                   help="scripted fault (default: the peer goes silent)")
    d.add_argument("--record", metavar="WAV", help="record the received audio to a WAV file")
    d.add_argument("--trace", metavar="FILE", help="write the session's trace here (default: a "
                   "new temporary directory); its timeline is drawn beside it (.html)")
    add_export_flags(d, dashboard=True)
    d.set_defaults(func=lambda a: run_observed(
        a, lambda hub: run_demo(a.duration, a.fault, a.record, Console(), a.trace, hub)))

    p = sub.add_parser("peer", help="serve the local realtime peer (loopback only)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8765)
    p.add_argument("--reply", choices=("echo", "tone"), default="echo")
    add_export_flags(p)
    p.set_defaults(func=_serve_peer)

    c = sub.add_parser("connect", help="run a session against an OpenAI-compatible backend; "
                       "the key comes from a token broker (--token-url) or --token-env")
    c.add_argument("--base-url", required=True, help="backend base URL (POST /v1/realtime/calls)")
    c.add_argument("--token-url", help="token broker endpoint handing out ephemeral keys")
    c.add_argument("--client-id", help="this app's client id at the broker")
    c.add_argument("--client-secret-env", default="FSM_VOICE_CLIENT_SECRET",
                   help="env var holding the broker client secret")
    c.add_argument("--token-env", default="FSM_VOICE_TOKEN",
                   help="env var holding an ephemeral key (when no --token-url)")
    c.add_argument("--model", default="gpt-realtime")
    c.add_argument("--voice", default="alloy")
    c.add_argument("--instructions")
    c.add_argument("--audio-format", choices=("pcm16", "g711_ulaw", "g711_alaw"),
                   default="pcm16", help="input and output audio format (telephony: g711_*)")
    c.add_argument("--turn-detection", choices=("server_vad", "semantic_vad", "none"),
                   default="server_vad")
    c.add_argument("--duration", type=float, default=30.0)
    c.add_argument("--trace", metavar="FILE", help="record the session's trace (JSON Lines)")
    add_export_flags(c)
    c.set_defaults(func=_connect)


def _connect(a: argparse.Namespace) -> int:
    """Secrets come from the environment, never from argv (visible in process lists)."""
    console = Console()
    token: str | EphemeralKeyProvider
    if a.token_url:
        secret = os.environ.get(a.client_secret_env)
        if not a.client_id or not secret:
            console.print(f"[red]--token-url needs --client-id and the client secret in "
                          f"${a.client_secret_env}[/]")
            return 2
        token = EphemeralKeyProvider(a.token_url, client_id=a.client_id, client_secret=secret)
    else:
        key = os.environ.get(a.token_env)
        if not key:
            console.print(f"[red]give --token-url (a token broker) or an ephemeral key in "
                          f"${a.token_env}[/]")
            return 2
        token = key
    try:
        config = RealtimeConfig(
            model=a.model, voice=a.voice, instructions=a.instructions,
            turn_detection=None if a.turn_detection == "none" else a.turn_detection,
            input_format=a.audio_format, output_format=a.audio_format)
    except ValueError as exc:
        console.print(f"[red]{exc}[/]")
        return 2
    return run_observed(a, lambda hub: run_connect(a.base_url, token, a.duration, config,
                                                   console, a.trace, hub))


def _serve_peer(a: argparse.Namespace) -> int:
    with contextlib.suppress(KeyboardInterrupt):
        if a.metrics_port is not None:
            from fsm_voice.metrics import serve_peer
            anyio.run(serve_peer, a.host, a.port, a.reply, a.metrics_port)
        else:
            anyio.run(run_peer, a.host, a.port, a.reply)
    return 0
