"""``fsm-voice demo | peer``: the real session, end to end, on this machine (``connect``:
:mod:`fsm_voice.terminal`).

``demo`` starts the local realtime peer in-process on 127.0.0.1, opens a session through the real
aiortc transport and HTTP signaling, speaks a generated utterance (the peer's VAD hears it and
answers with an echo), injects a scripted fault, shows the recovery on a live status line, stops,
and prints a summary. Exit status 0 only if the session recovered and stopped cleanly.

``demo --protocol live`` runs the same story over OpenAI Live (the peer serves both): the
session is created with ``POST /v1/live/sessions``, listening/speaking come from the audio, the
default fault ends the session with ``connection_lost`` and the recovery is a new session seeded
with the conversation as ``input`` (the summary shows what the new session received), and the
stop is finalised with ``session.close`` -> ``session.closed`` (reason and usage shown).
"""

from __future__ import annotations

import argparse
import signal
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio

from fsm_voice._text import printable
from fsm_voice.cli import (
    EXIT_CODES,
    EXIT_FAILED,
    SignalStop,
    port,
    seconds,
    serve,
)
from fsm_voice.client import realtime_session
from fsm_voice.dashboard import add_export_flags, run_observed
from fsm_voice.errors import ConfigError, VoiceError
from fsm_voice.live import LiveConfig, live_session
from fsm_voice.policy import IcePolicy, MonitorPolicy, SessionPolicy
from fsm_voice.ports import ConnectionMetrics
from fsm_voice.realtime import RealtimeConfig
from fsm_voice.session import StatusChange, VoiceSession
from fsm_voice.telemetry import Hub
from fsm_voice.trace import TraceWriter
from fsm_voice.transport import KeepOpen, NullSink, UtteranceSource, WavRecorder
from fsm_voice.transport.audio import AudioSink

if TYPE_CHECKING:  # rich is the [cli] extra: imported when the demo runs
    from rich.console import Console
    from rich.text import Text

FAULTS = ("silent", "close", "server-error", "none", "connection-lost", "expired")
LIVE_ONLY_FAULTS = ("connection-lost", "expired")
"""Live close reasons the peer can send (``session.closed``), then it ends the call."""
PROTOCOLS = ("realtime", "live")
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

    def live_status(self, c: StatusChange) -> None:
        """Live has no response events: an assistant turn heard (``speaking``) that ends."""
        if c.previous == "speaking":
            self.responses += 1

    def first(self, status: str, after: float = 0.0) -> float | None:
        return next((t for t, s, _ in self.changes if s == status and t >= after), None)


def _line(session: VoiceSession, rec: DemoRecorder, phase: str) -> Text:
    from rich.text import Text

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
                   trace: str | None = None, hub: Hub | None = None,
                   protocol: str = "realtime") -> int:
    """The demo (see the module doc); SIGINT/SIGTERM stop it cleanly (exit 128 + signal)."""
    with SignalStop() as stop:
        return await _demo(duration, fault, record, console, stop, trace, hub, protocol)


async def _demo(duration: float, fault: str, record: str | None, console: Console,
                stop: SignalStop, trace: str | None = None, hub: Hub | None = None,
                protocol: str = "realtime") -> int:
    from rich.live import Live

    from fsm_voice.peer.server import RealtimePeer

    if fault not in FAULTS:
        raise ConfigError.invalid("fault", fault, f"one of {', '.join(FAULTS)}")
    if protocol not in PROTOCOLS:
        raise ConfigError.invalid("protocol", protocol, "'realtime' or 'live'")
    if fault in LIVE_ONLY_FAULTS and protocol != "live":
        raise ConfigError.invalid("fault", fault, "a Realtime fault (this one needs "
                                  "--protocol live)")
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
        console.print(f"fsm-voice demo: local peer on {peer.base_url}")
        def speech() -> UtteranceSource:
            return UtteranceSource(lead_silence=0.5, speech_seconds=1.2, trail_silence=3.5,
                                   repeat=True)

        if protocol == "live":
            session = live_session(
                peer.base_url, "sk-local-demo", policy=policy, host_addresses=["127.0.0.1"],
                http=http, config=LiveConfig(instructions="Echo what you hear."),
                audio_source=speech, audio_sink=sink)
            session.on_status(rec.live_status)
        else:
            session = realtime_session(
                peer.base_url, "ek_local_demo", policy=policy, host_addresses=["127.0.0.1"],
                http=http,
                session_config=RealtimeConfig(instructions="Echo what you hear."),
                audio_source=speech,
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
        connected_at: float | None = None
        async with session:
            with Live(_line(session, rec, phase), console=console, refresh_per_second=8,
                      transient=False) as live:

                async def tick(until: float, label: str) -> None:
                    while time.monotonic() - t0 < until:
                        live.update(_line(session, rec, label))
                        await anyio.sleep(0.1)

                with stop.scope:
                    await session.start()
                    with anyio.move_on_after(15):
                        await session.wait_for("active", "error")
                    connected_at = rec.first("active")
                    # Talk: one full exchange (speech -> echo reply) or a third of the time.
                    talk_until = time.monotonic() - t0 + max(4.0, duration / 3)
                    while rec.responses < 1 and time.monotonic() - t0 < talk_until:
                        await tick(time.monotonic() - t0 + 0.2, "talking")
                    if fault != "none" and session.status != "error":
                        fault_at = time.monotonic() - t0
                        if fault == "silent":
                            peer.go_silent()
                        elif fault == "close":
                            await peer.close_call()
                        elif fault in LIVE_ONLY_FAULTS:
                            await peer.live_close(fault.replace("-", "_"))
                        else:
                            peer.send_error("server_error", "server_error", "injected")
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
            if not console.is_terminal:
                console.line()  # rich leaves the last line open when not on a terminal
        stopped_clean = session.status == "idle" and not session.armed_timers
        live_rows = _live_rows(peer, session) if protocol == "live" else {}
    if recorder is not None:
        recorder.close()
    if stop.signum is not None:  # interrupted: no summary
        console.print(f"fsm-voice demo: stopped by {signal.Signals(stop.signum).name}; "
                      f"session {session.status}")
        return stop.exit_code if stopped_clean and stop.exit_code else EXIT_FAILED
    code = _summary(console, rec, session, fault, fault_at, recovered_at, connected_at,
                    stopped_clean, record, live_rows)
    _show_trace(console, trace)
    return code


def _live_rows(peer: Any, session: VoiceSession) -> dict[str, str]:
    """Live summary rows: the sessions the peer created, what each received as ``input``,
    and the finalisation of the last close."""
    rows: dict[str, str] = {}
    records = list(peer.live_sessions)
    rows["live sessions created"] = ", ".join(
        f"{r.id} ({r.closed_reason or 'open'})" for r in records) or "none"
    for i, r in enumerate(records[1:], start=2):
        texts = [printable(part.get("text") or part.get("transcript") or "", 60)
                 for m in (r.input or []) if isinstance(m, Mapping)
                 for part in (m.get("content") or []) if isinstance(part, Mapping)]
        rows[f"session {i} received input"] = (
            f"{len(r.input or [])} message(s): " + " | ".join(t for t in texts if t))
    final = getattr(session.transport, "last_finalisation", None)
    rows["finalised (session.closed)"] = (
        f"{final.reason}, usage {final.usage_seconds} s" if final and final.confirmed
        else f"unconfirmed: {final.detail if final else 'no session'}")
    return rows


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
             stopped_clean: bool, record: str | None,
             extra: Mapping[str, str] | None = None) -> int:
    from rich.table import Table
    from rich.text import Text  # server text as plain text, never rich markup

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
    events = ", ".join(f"{k}={v}" for k, v in sorted(rec.events.items())
                       if k.startswith(("input_audio", "output_audio", "session.", "error")))
    table.add_row("server events", Text(printable(events)))  # server text: escaped, no markup
    if rec.metrics:
        m = rec.metrics
        rtt = f"{m.latency_ms:.1f}" if m.latency_ms is not None else "-"
        jitter = f"{m.jitter_ms:.1f}" if m.jitter_ms is not None else "-"
        table.add_row("last metrics", f"rtt={rtt} ms jitter={jitter} ms "
                      f"lost={m.packets_lost} received={m.packets_received}")
    table.add_row("quality alerts", str(len(session.alerts)))
    table.add_row("errors reported", Text("; ".join(printable(e) for e in rec.errors) or "none"))
    table.add_row("stopped cleanly (idle, no timer)", str(stopped_clean))
    for key, value in (extra or {}).items():
        table.add_row(key, Text(value))
    if record:
        table.add_row("received audio recorded to", record)
    console.print(table)
    ok = stopped_clean and connected_at is not None and (fault == "none" or rec_time is not None)
    console.print("[bold green]demo passed: the session recovered[/]" if ok
                  else "[bold red]demo FAILED[/]")
    return 0 if ok else 1


def add_parsers(sub: Any) -> None:
    fmt = argparse.RawDescriptionHelpFormatter
    d = sub.add_parser("demo", help="run a real session against the in-process local peer, "
                       "inject a fault and show the recovery", epilog=EXIT_CODES,
                       formatter_class=fmt)
    d.add_argument("--duration", type=seconds, default=20.0,
                   help="longest run in seconds (default 20); the demo ends 3 s after "
                   "it recovers from its fault")
    d.add_argument("--protocol", choices=PROTOCOLS, default="realtime",
                   help="OpenAI Realtime (default) or OpenAI Live against the local peer")
    d.add_argument("--fault", choices=FAULTS, default=None,
                   help="scripted fault (default: the peer goes silent; with --protocol live "
                   "the session closes with connection_lost); connection-lost and expired "
                   "need --protocol live")
    d.add_argument("--record", metavar="WAV", help="record the received audio to a WAV file")
    d.add_argument("--trace", metavar="FILE", help="write the session's trace here (default: a "
                   "new temporary directory); its timeline is drawn beside it (.html)")
    add_export_flags(d, dashboard=True)
    d.set_defaults(func=_demo_command)

    p = sub.add_parser("peer", help="serve the local realtime peer (loopback only) until "
                       "SIGINT/SIGTERM", epilog=EXIT_CODES, formatter_class=fmt)
    p.add_argument("--host", default="127.0.0.1", help="a loopback address (default 127.0.0.1)")
    p.add_argument("--port", type=port, default=8765, help="0: any free port (default 8765)")
    p.add_argument("--reply", choices=("echo", "tone"), default="echo")
    add_export_flags(p)
    p.set_defaults(func=_serve_peer)


def _demo_command(a: argparse.Namespace) -> int:
    from rich.console import Console

    fault = a.fault or ("connection-lost" if a.protocol == "live" else "silent")
    return run_observed(
        a, lambda hub: run_demo(a.duration, fault, a.record, Console(), a.trace, hub,
                                a.protocol))


def _serve_peer(a: argparse.Namespace) -> int:
    from fsm_voice.peer.server import RealtimePeer, listening_line

    try:
        peer = RealtimePeer(a.host, a.port, reply=a.reply)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None

    def ready(url: str) -> None:
        print(listening_line(peer, url), flush=True)

    serve_forever: Callable[[Callable[[str], None]], Awaitable[None]] = peer.serve_forever
    if a.metrics_port is not None:
        from fsm_voice.metrics import with_peer_metrics

        serve_forever = with_peer_metrics(peer, a.metrics_port)
    return serve("peer", serve_forever, ready)
