"""``fsm-voice connect``: a terminal voice client for any OpenAI-Realtime-compatible backend.

Audio in (``--input``: a WAV file or an FFmpeg capture device), audio out (``--output``: a WAV
file or a playback device), both sides recorded (``--record``: a stereo WAV). On a terminal
(the default there, or ``--human``) the user's and the assistant's transcripts are printed as
they complete, interleaved with status changes, under a live status line (status, machine state,
attempt, RTT/jitter/loss, who is speaking, session age, time to the next rollover) that also
shows the words still arriving and the line being typed (Enter sends it as a conversation item
and asks for a response; ``/quit`` ends the call); a summary table follows. ``--json`` (the
default when stdout is not a terminal) prints the status changes as JSON lines, as scripts
expect. Everything the server says is shown through :func:`fsm_voice._text.printable`.

``--protocol live`` talks OpenAI Live instead (``POST /v1/live/sessions``, see
:mod:`fsm_voice.live`): no session.update, transcripts from ``session.*_transcript.delta``, who
is speaking from the audio itself (the transport's activity gates), each close finalised with
``session.close`` -> ``session.closed`` (the JSON view prints a ``{"finalised": ...}`` line before
the last one). Typed messages are Realtime-only.

Only the public session API is used (``on_status``, ``on_error``, ``on_server_event``,
``on_metrics``, ``status``, ``state``, ``attempts``, ``send_event``, ``start``/``stop``).
"""

from __future__ import annotations

import argparse
import asyncio
import codecs
import contextlib
import json
import os
import signal
import stat
import sys
import termios
import time
import tty
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import anyio

from fsm_voice._text import printable
from fsm_voice.cli import (
    EXIT_CODES,
    EXIT_FAILED,
    EXIT_NOT_CONNECTED,
    EXIT_OK,
    SignalStop,
    count,
    http_url,
    seconds,
)
from fsm_voice.client import realtime_session
from fsm_voice.dashboard import add_export_flags, run_observed
from fsm_voice.effects import ReportError
from fsm_voice.errors import ConfigError, VoiceError
from fsm_voice.live import LiveConfig, live_session
from fsm_voice.ports import ConnectionMetrics
from fsm_voice.realtime import RealtimeConfig
from fsm_voice.session import QueueOverflowError, StatusChange, VoiceSession
from fsm_voice.telemetry import Hub
from fsm_voice.tokens import EphemeralKeyProvider
from fsm_voice.trace import TraceWriter
from fsm_voice.transport.audio import (
    AudioInput,
    AudioSink,
    ConversationRecorder,
    GeneratedInput,
    TapSink,
    device_spec,
    open_input,
    open_output,
)

if TYPE_CHECKING:  # rich is the [cli] extra: imported when the human view runs
    from rich.console import Console, RenderableType

CONNECTED = ("active", "listening", "speaking")
View = Literal["json", "human"]
_STYLE = {"idle": "dim", "connecting": "yellow", "active": "green", "listening": "cyan",
          "speaking": "magenta", "reconnecting": "bold yellow", "error": "bold red"}
DEFAULT_TRANSCRIBE_MODEL = "gpt-4o-mini-transcribe"
REPLY_TAIL = 0.5
"""Seconds kept after the last awaited response has played out (``--responses``): the audio
still in flight and in the jitter buffer arrives."""

# Realtime transcript events: GA names and their beta equivalents; text output likewise.
USER_DELTA = ("conversation.item.input_audio_transcription.delta",)
USER_DONE = ("conversation.item.input_audio_transcription.completed",)
USER_FAILED = ("conversation.item.input_audio_transcription.failed",)
ASSISTANT_DELTA = ("response.output_audio_transcript.delta", "response.audio_transcript.delta",
                   "response.output_text.delta", "response.text.delta")
ASSISTANT_DONE = ("response.output_audio_transcript.done", "response.audio_transcript.done",
                  "response.output_text.done", "response.text.done")
# Live: deltas only (no done event, no item id): a line ends when the other side speaks or the
# talker stops (``Transcripts.flush``).
LIVE_USER_DELTA = "session.input_transcript.delta"
LIVE_ASSISTANT_DELTA = "session.output_transcript.delta"


class Transcripts:
    """The conversation's words from server events: partial ones by item while they arrive,
    finished lines (``(role, text)``) in order. All text is made printable."""

    PARTIAL_LIMIT = 200

    def __init__(self, on_line: Callable[[float, str, str], None] | None = None,
                 t0: float | None = None) -> None:
        self.lines: list[tuple[float, str, str]] = []
        self.partial: dict[tuple[str, str, str], str] = {}
        """Words still arriving, by (role, item, response)."""
        self._on_line = on_line
        self.t0 = time.monotonic() if t0 is None else t0

    def _key(self, role: str, e: Mapping[str, Any]) -> tuple[str, str, str]:
        item = printable((e.get("item_id"), e.get("content_index")), 300)
        return role, item, printable(e.get("response_id"), 300)

    def add(self, role: str, text: str) -> None:
        """A finished line (a typed message is added by the client itself)."""
        entry = (time.monotonic() - self.t0, role, printable(text))
        self.lines.append(entry)
        if self._on_line is not None:
            self._on_line(*entry)

    def flush(self, role: str | None = None) -> None:
        """End the Live lines still arriving (of ``role``, or all) as finished lines."""
        for key in [k for k in self.partial if k[1] == "live" and role in (None, k[0])]:
            self.add(key[0], self.partial.pop(key))

    def event(self, e: Mapping[str, Any]) -> None:
        etype = e.get("type")
        if etype in (LIVE_USER_DELTA, LIVE_ASSISTANT_DELTA):
            role = "you" if etype == LIVE_USER_DELTA else "assistant"
            delta = e.get("delta")
            if isinstance(delta, str):
                self.flush("assistant" if role == "you" else "you")  # the other side's turn
                key = (role, "live", "")
                text = self.partial.get(key, "") + printable(delta, self.PARTIAL_LIMIT)
                self.partial[key] = text[-self.PARTIAL_LIMIT:]
        elif etype in USER_DELTA or etype in ASSISTANT_DELTA:
            role = "you" if etype in USER_DELTA else "assistant"
            delta = e.get("delta")
            if isinstance(delta, str):
                key = self._key(role, e)
                text = self.partial.get(key, "") + printable(delta, self.PARTIAL_LIMIT)
                self.partial[key] = text[-self.PARTIAL_LIMIT:]
        elif etype in USER_DONE or etype in ASSISTANT_DONE:
            role = "you" if etype in USER_DONE else "assistant"
            key = self._key(role, e)
            so_far = self.partial.pop(key, "")
            text = e.get("transcript", e.get("text"))
            self.add(role, text if isinstance(text, str) else so_far)
        elif etype == "response.done":  # cancelled (barge-in): what was said so far
            response = e.get("response")
            rid = printable(response.get("id") if isinstance(response, Mapping) else None, 300)
            for key in [k for k in self.partial if k[0] == "assistant" and k[2] == rid]:
                self.add("assistant", self.partial.pop(key) + " … (interrupted)")
        elif etype in USER_FAILED:
            self.partial.pop(self._key("you", e), None)
            err = e.get("error")
            msg = err.get("message") if isinstance(err, Mapping) else None
            self.add("you", f"(transcription failed: {msg or 'no reason given'})")


class Activity:
    """Who is speaking, session age and rollover time, from server events and the clock."""

    def __init__(self, margin: float = 30.0) -> None:
        self.margin = margin
        self.user_speaking = False
        self.assistant_speaking = False
        self.session_since: float | None = None
        self.expires_at: float | None = None  # wall clock
        self.responses = 0
        self.response_active = False
        self.events: Counter[str] = Counter()

    def event(self, e: Mapping[str, Any]) -> None:
        etype = str(e.get("type"))
        self.events[etype] += 1
        if etype == "input_audio_buffer.speech_started":
            self.user_speaking = True
        elif etype in ("input_audio_buffer.speech_stopped", "input_audio_buffer.committed"):
            self.user_speaking = False
        elif etype == "output_audio_buffer.started":
            self.assistant_speaking = True
        elif etype in ("output_audio_buffer.stopped", "output_audio_buffer.cleared"):
            self.assistant_speaking = False
        elif etype == "response.created":
            self.response_active = True
        elif etype == "response.done":
            response = e.get("response")
            outcome = response.get("status") if isinstance(response, Mapping) else None
            if outcome in (None, "completed"):  # a cancelled reply (barge-in) is not one
                self.responses += 1
            self.response_active = False
        elif etype in ("session.created", "session.updated", "session.started"):
            if etype in ("session.created", "session.started"):
                self.session_since = time.monotonic()
            session = e.get("session")
            expires = session.get("expires_at") if isinstance(session, Mapping) else None
            if isinstance(expires, int | float) and not isinstance(expires, bool):
                self.expires_at = float(expires)

    def link_down(self) -> None:
        self.user_speaking = self.assistant_speaking = self.response_active = False

    def live_status(self, status: str) -> None:
        """Live: who speaks comes from the status (the audio gates); an assistant turn that
        ends counts as a response."""
        if self.assistant_speaking and status != "speaking":
            self.responses += 1
        self.user_speaking = status == "listening"
        self.assistant_speaking = status == "speaking"

    @property
    def speaking(self) -> str:
        who = [n for n, on in (("you", self.user_speaking),
                               ("assistant", self.assistant_speaking)) if on]
        return " + ".join(who) or "nobody"

    def rollover_in(self) -> float | None:
        if self.expires_at is None:
            return None
        return self.expires_at - time.time() - self.margin


def _clock(secs: float) -> str:
    secs = max(0.0, secs)
    if secs >= 3600:
        return f"{int(secs // 3600)}:{int(secs % 3600 // 60):02d}:{int(secs % 60):02d}"
    return f"{int(secs // 60)}:{int(secs % 60):02d}"


class LineEditor:
    """One line typed on a terminal in cbreak mode (no echo: the status area shows it):
    printable characters, Backspace, Ctrl-U, Enter (returns the line), Ctrl-D on an empty
    line (returns None: no more input); escape sequences (arrow keys) are ignored."""

    def __init__(self) -> None:
        self.buffer = ""
        self._decoder = codecs.getincrementaldecoder("utf-8")("replace")
        self._escape = ""

    def feed(self, data: bytes) -> list[str | None]:
        out: list[str | None] = []
        for ch in self._decoder.decode(data):
            if self._escape:
                self._escape += ch
                if (len(self._escape) > 2 and "@" <= ch <= "~") or len(self._escape) > 16 or (
                        len(self._escape) == 2 and ch != "["):
                    self._escape = ""
            elif ch == "\x1b":
                self._escape = ch
            elif ch in "\r\n":
                out.append(self.buffer)
                self.buffer = ""
            elif ch in "\x7f\x08":
                self.buffer = self.buffer[:-1]
            elif ch == "\x15":
                self.buffer = ""
            elif ch == "\x04":
                if not self.buffer:
                    out.append(None)
            elif ch.isprintable():
                self.buffer += ch
        return out


@contextlib.contextmanager
def _cbreak(fd: int) -> Iterator[None]:
    """The terminal in cbreak mode without echo (Ctrl-C still signals); restored on exit."""
    saved = termios.tcgetattr(fd)
    try:
        tty.setcbreak(fd, termios.TCSANOW)
        yield
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


class TextInput:
    """Typed messages from stdin: line by line from a pipe or file, edited key by key on a
    terminal. ``on_line`` gets each line; ``editor`` (terminal only) holds the line so far."""

    def __init__(self, on_line: Callable[[str], None], fd: int | None = None) -> None:
        self.on_line = on_line
        self.fd = sys.stdin.fileno() if fd is None else fd
        self.is_tty = os.isatty(self.fd)
        self.editor: LineEditor | None = LineEditor() if self.is_tty else None

    async def run(self) -> None:
        try:
            await self._run()
        finally:
            self.editor = None  # no more typing: the status area stops showing the line

    def _read_all(self) -> None:
        with open(self.fd, closefd=False, encoding="utf-8", errors="replace") as f:
            for line in f:
                self._line(line.rstrip("\n"))

    async def _run(self) -> None:
        if not self.is_tty and stat.S_ISREG(os.fstat(self.fd).st_mode):  # a file: read it all
            self._read_all()
            return
        loop = asyncio.get_running_loop()
        ready = anyio.Event()
        pending: list[bytes] = []
        eof = False

        def readable() -> None:
            nonlocal eof
            try:
                data = os.read(self.fd, 4096)
            except BlockingIOError:
                return
            except OSError:
                data = b""
            if data:
                pending.append(data)
            else:
                eof = True
                loop.remove_reader(self.fd)
            ready.set()

        with contextlib.ExitStack() as stack:
            if self.is_tty:
                stack.enter_context(_cbreak(self.fd))
            try:
                loop.add_reader(self.fd, readable)
            except PermissionError:  # not pollable (/dev/null): read what there is at once
                self._read_all()
                return
            stack.callback(loop.remove_reader, self.fd)
            partial = b""
            while True:
                await ready.wait()
                ready = anyio.Event()
                chunks, pending[:] = list(pending), []
                for data in chunks:
                    if self.editor is not None:
                        for typed in self.editor.feed(data):
                            if typed is None:
                                return
                            self._line(typed)
                    else:
                        partial += data
                        *lines, partial = partial.split(b"\n")
                        for raw in lines:
                            self._line(raw.decode("utf-8", "replace"))
                if eof:
                    if partial:
                        self._line(partial.decode("utf-8", "replace"))
                    return

    def _line(self, line: str) -> None:
        line = line.strip()
        if line:
            self.on_line(line)


class HumanView:
    """The terminal view: printed lines above a live status area (rich)."""

    def __init__(self, console: Console, session: VoiceSession, transcripts: Transcripts,
                 activity: Activity, t0: float) -> None:
        self.console = console
        self.session = session
        self.transcripts = transcripts
        self.activity = activity
        self.t0 = t0
        self.metrics: ConnectionMetrics | None = None
        self.reader: TextInput | None = None
        self.note = ""

    def _stamp(self, t: float | None = None) -> str:
        return f"{(time.monotonic() - self.t0) if t is None else t:6.1f}s  "

    def print_line(self, t: float, role: str, text: str) -> None:
        from rich.text import Text

        line = Text(self._stamp(t))
        line.append(f"{role}: ", style="bold cyan" if role.startswith("you") else "bold magenta")
        line.append(text)  # already printable(); a Text, so never rich markup
        self.console.print(line)

    def status(self, c: StatusChange) -> None:
        from rich.text import Text

        line = Text(self._stamp(), style="dim")
        line.append(f"status {c.status}", style=_STYLE.get(c.status, ""))
        line.append(f"  (state {c.state}, on {c.event})", style="dim")
        self.console.print(line)

    def error(self, e: VoiceError) -> None:
        from rich.text import Text

        line = Text(self._stamp())
        line.append(f"error: {printable(e)}", style="bold red")
        self.console.print(line)

    def render(self) -> RenderableType:
        from rich.console import Group
        from rich.text import Text

        s, a, m = self.session, self.activity, self.metrics
        line = Text(" ")
        line.append(f" {s.status} ", style=f"reverse {_STYLE.get(s.status, '')}".strip())
        rtt = f"{m.latency_ms:.0f}ms" if m and m.latency_ms is not None else "-"
        jitter = f"{m.jitter_ms:.1f}ms" if m and m.jitter_ms is not None else "-"
        loss = f"{m.loss_fraction:.0%}" if m else "-"
        age = _clock(time.monotonic() - a.session_since) if a.session_since is not None else "-"
        rollover = a.rollover_in()
        line.append(f" state={s.state} attempt={s.attempts} rtt={rtt} jitter={jitter} "
                    f"loss={loss} speaking={a.speaking} age={age} "
                    f"rollover={_clock(rollover) if rollover is not None else '-'}")
        rows: list[RenderableType] = [line]
        for (role, _, _), text in list(self.transcripts.partial.items())[-2:]:
            partial = Text(f"  {role}: ", style="dim")
            partial.append(text + " …", style="italic")
            rows.append(partial)
        editor = self.reader.editor if self.reader is not None else None
        if editor is not None:
            rows.append(Text(f"  > {editor.buffer}▏", style="bold"))
        if self.note:
            rows.append(Text(f"  {self.note}", style="dim"))
        return Group(*rows)


def _summary(console: Console, session: VoiceSession, changes: list[tuple[float, str]],
             activity: Activity, transcripts: Transcripts, errors: list[VoiceError],
             metrics: ConnectionMetrics | None, audio: Mapping[str, str],
             stopped_clean: bool, reason: str) -> None:
    """The demo's summary table, for a connect run."""
    from rich.table import Table
    from rich.text import Text

    table = Table(title="fsm-voice connect summary", show_header=False)
    visited: list[str] = []
    for _, status in changes:
        if not visited or visited[-1] != status:
            visited.append(status)
    table.add_row("statuses visited", " -> ".join(visited))
    up = next((t for t, s in changes if s in CONNECTED), None)
    table.add_row("connect time (start -> active)", f"{up:.2f} s" if up is not None else "never")
    restarts = sum(1 for t in getattr(session, "trace", ())
                   if getattr(t, "target", "") == "restarting"
                   and getattr(t, "source", "") != "restarting")
    reconnects = sum(1 for _, s in changes if s == "reconnecting")
    table.add_row("transport restarts / reconnects", f"{restarts} / {reconnects}")
    table.add_row("assistant responses", str(activity.responses))
    said = Counter(role for _, role, _ in transcripts.lines)
    table.add_row("transcript lines", f"you {said['you'] + said['you (typed)']}, "
                  f"assistant {said['assistant']}")
    events = ", ".join(f"{k}={v}" for k, v in sorted(activity.events.items())
                       if k.startswith(("input_audio", "output_audio", "session.", "error",
                                        "conversation.item.input")))
    table.add_row("server events", Text(printable(events)))
    if metrics is not None:
        m = metrics
        rtt = f"{m.latency_ms:.1f}" if m.latency_ms is not None else "-"
        jitter = f"{m.jitter_ms:.1f}" if m.jitter_ms is not None else "-"
        table.add_row("last metrics", f"rtt={rtt} ms jitter={jitter} ms "
                      f"lost={m.packets_lost} received={m.packets_received}")
    table.add_row("quality alerts", str(len(getattr(session, "alerts", ()))))
    table.add_row("errors reported", Text("; ".join(printable(e) for e in errors) or "none"))
    for k, v in audio.items():
        table.add_row(k, Text(printable(v)))
    table.add_row("stopped", f"{reason}; cleanly (idle): {stopped_clean}")
    console.print(table)


class ConnectAudio:
    """The session's audio ends: ``--input``, ``--output`` and ``--record``, opened before the
    session (a bad file or device is a one-line error before anything connects) and closed
    after it."""

    def __init__(self, input_spec: str | None, output_spec: str | None,
                 record: str | None) -> None:
        self.input: AudioInput = open_input(input_spec) if input_spec else GeneratedInput(
            repeat=True)
        self.input_spec = input_spec
        self.output: AudioSink | None = None
        self.recorder: ConversationRecorder | None = None
        try:
            self.output = open_output(output_spec) if output_spec else None
            self.recorder = ConversationRecorder(record) if record else None
        except BaseException:
            self.close()
            raise
        self.output_spec, self.record = output_spec, record
        self.input.tap = self.recorder.sent if self.recorder is not None else None
        self.sinks: list[TapSink] = []

    def track(self) -> Any:
        return self.input.track()

    def sink(self) -> TapSink:
        sink = TapSink(self.output, self.recorder.received if self.recorder else None)
        self.sinks.append(sink)
        return sink

    def describe(self) -> dict[str, str]:
        received = sum(s.frames for s in self.sinks) * 0.02
        out = {"audio in": self.input_spec or "generated utterances (no --input)",
               "audio received": f"{received:.1f} s" + (f" -> {self.output_spec}"
                                                        if self.output_spec else "")}
        if self.record:
            out["recorded (left: sent, right: received)"] = self.record
        return out

    def problems(self) -> list[str]:
        return [p for p in (getattr(self.input, "error", None), getattr(self.output, "error",
                                                                        None)) if p]

    def close(self) -> None:
        for part in (self.input, self.output, self.recorder):
            if part is not None:
                part.close()


def _message(text: str, activity: Activity) -> list[dict[str, Any]]:
    """A typed message: it interrupts the assistant (cancels the response being generated,
    clears the audio still playing), then goes as a user item and asks for a response."""
    item = {"type": "message", "role": "user", "content": [{"type": "input_text", "text": text}]}
    interrupt = [{"type": "response.cancel"}] if activity.response_active else []
    if activity.assistant_speaking:
        interrupt.append({"type": "output_audio_buffer.clear"})
    return [*interrupt, {"type": "conversation.item.create", "item": item},
            {"type": "response.create"}]


async def run_connect(base_url: str, token: str | EphemeralKeyProvider, duration: float,
                      config: RealtimeConfig | LiveConfig | Mapping[str, Any],
                      emit: Callable[[dict[str, Any]], None] | None = None, *,
                      view: View = "json", audio: ConnectAudio | None = None,
                      text_input: bool = False, responses: int | None = None,
                      console: Console | None = None, trace: str | None = None,
                      hub: Hub | None = None, broker_client_id: str | None = None) -> int:
    """A session against any OpenAI-compatible backend (see the module doc); a
    :class:`~fsm_voice.live.LiveConfig` ``config`` means the Live protocol
    (``broker_client_id``: through a token broker in proxy mode, which sets the configuration;
    ``token`` is then the client secret).

    Runs until ``duration`` ends (0, or 3 when not connected then), ``responses`` assistant
    responses are done (0), the session reaches ``error`` (1, at once), ``/quit`` is typed (0)
    or SIGINT/SIGTERM (128 + the signal); each way the call is hung up and the session left
    ``idle``. In the ``json`` view the status changes are JSON lines (``emit`` or stdout).
    """
    def print_json(obj: dict[str, Any]) -> None:  # JSON lines, never wrapped
        try:
            print(json.dumps(obj), flush=True)
        except BrokenPipeError:  # the reader is gone (`| head`): stop like SIGPIPE would
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            stop.request(signal.SIGPIPE)

    out = emit or print_json
    errors: list[VoiceError] = []
    audio = audio or ConnectAudio(None, None, None)
    is_live = isinstance(config, LiveConfig)
    if is_live and text_input:
        raise ConfigError("typed messages (--text-input) are not available with --protocol live")
    session_config = config.to_session() if isinstance(config, RealtimeConfig | LiveConfig) \
        else dict(config)
    model = session_config.get("model")
    t0 = time.monotonic()
    changes: list[tuple[float, str]] = []
    finished = anyio.Event()
    why: list[str] = []

    def finish(reason: str) -> None:
        if not why:
            why.append(reason)
        finished.set()

    activity = Activity()
    human: HumanView | None = None
    with SignalStop() as stop:
        writer = TraceWriter(trace) if trace else None
        http = writer.http_session() if writer is not None else None
        if isinstance(config, LiveConfig):
            session = live_session(
                base_url, token, config=None if broker_client_id else config,
                broker_client_id=broker_client_id, audio_source=audio.track,
                audio_sink=audio.sink, http=http)
        else:
            session = realtime_session(
                base_url, token, model=model if isinstance(model, str) else None,
                session_config=session_config, audio_source=audio.track, audio_sink=audio.sink,
                http=http)
        hurry = getattr(session.transport, "hurry", None)
        if callable(hurry):  # a second Ctrl-C: stop waiting for session.closed
            stop.again.append(hurry)
        if writer is not None and http is not None:
            writer.record(session)  # --trace: every runtime event, signaling exchange, sample
            session.closers.append(http.close)
        if isinstance(token, EphemeralKeyProvider):
            session.closers.append(token.aclose)
        if hub is not None:  # --metrics-port
            hub.track(session, name="connect")
        activity.margin = session.policy.rollover.margin
        if view == "human":
            from rich.console import Console

            console = console or Console(highlight=False)
            transcripts = Transcripts(t0=t0)
            human = HumanView(console, session, transcripts, activity, t0)
            transcripts._on_line = human.print_line
            session.on_status(human.status)
            session.on_error(human.error)
            session.on_metrics(lambda m: setattr(human, "metrics", m))
            session.on_server_event(transcripts.event)
        else:
            transcripts = Transcripts(t0=t0)
            session.on_status(lambda c: out(
                {"t": round(c.time, 3), "status": c.status, "state": c.state, "event": c.event}))
            session.on_server_event(transcripts.event)

        def on_status(c: StatusChange) -> None:
            changes.append((time.monotonic() - t0, c.status))
            if is_live:
                if c.previous in ("listening", "speaking"):
                    transcripts.flush("you" if c.previous == "listening" else "assistant")
                activity.live_status(c.status)
                if responses is not None and activity.responses >= responses:
                    finish("responses")
            if c.status not in CONNECTED:
                activity.link_down()
            if c.status == "error":
                finish("error")
            elif c.status == "idle" and c.event != "stop":  # Live: the server ended it
                finish("closed")

        def on_error(e: VoiceError) -> None:
            errors.append(e)
            if view == "json":
                out({"error": str(e), "code": e.code, "severity": str(e.severity)})

        def on_trace(rec: Any) -> None:
            # A failed open the machine retries (503/429, Retry-After) reports nothing through
            # on_error; the JSON view still shows it (a report effect goes through on_error).
            entry, item, _gen = rec
            err = getattr(item, "error", None)
            if entry.event == "signaling_failed" and entry.outcome == "taken" and \
                    isinstance(err, VoiceError) and \
                    not any(isinstance(x, ReportError) for x in entry.effects):
                out({"error": str(err), "code": err.code, "severity": str(err.severity),
                     "retrying": True})

        def on_event(e: Mapping[str, Any]) -> None:
            activity.event(e)
            if (responses is not None and activity.responses >= responses
                    and not activity.assistant_speaking):  # its audio has been played out
                finish("responses")

        session.on_status(on_status)
        session.on_error(on_error)
        if view == "json":
            session.on_trace(on_trace)
        session.on_server_event(on_event)

        def typed(line: str) -> None:
            if line in ("/quit", "/exit"):
                finish("quit")
                return
            try:
                for event in _message(line, activity):
                    session.send_event(event)
            except (RuntimeError, QueueOverflowError) as exc:
                if human is not None:
                    human.note = f"not sent: {exc}"
                return
            transcripts.add("you (typed)", line)
            if human is not None:
                human.note = ""

        reader = TextInput(typed) if text_input else None
        if human is not None:
            human.reader = reader
        async with session:
            live = None
            if human is not None:
                from rich.live import Live

                live = Live(get_renderable=human.render, console=human.console,
                            refresh_per_second=4, transient=True, redirect_stdout=False,
                            redirect_stderr=False)
            with stop.scope, (live or contextlib.nullcontext()):
                await session.start()
                with anyio.move_on_after(duration):
                    async with anyio.create_task_group() as tg:
                        if reader is not None:
                            tg.start_soon(reader.run)
                        await finished.wait()
                        if why == ["responses"]:  # the last packets of the reply, in flight
                            await anyio.sleep(REPLY_TAIL)
                        tg.cancel_scope.cancel()
            ended = session.status
            await session.stop()
            stopped = session.status
        audio.close()
        transcripts.flush()
        final = getattr(session.transport, "last_finalisation", None) if is_live else None
        if is_live and view == "json":
            out({"finalised": bool(final and final.confirmed),
                 "reason": final.reason if final else None,
                 "usage_seconds": final.usage_seconds if final else None})
        if stop.signum is not None:
            reason = signal.Signals(stop.signum).name
        else:
            reason = why[0] if why else ("error" if ended == "error" else "duration")
        if human is not None:
            extra = {**audio.describe(),
                     **{f"audio problem {i + 1}": p for i, p in enumerate(audio.problems())}}
            if is_live:
                extra["session finalised"] = (
                    f"{final.reason}, {final.usage_seconds} s billed" if final and final.confirmed
                    else f"unconfirmed ({final.detail if final else 'no session'})")
            _summary(human.console, session, changes, activity, transcripts, errors,
                     human.metrics, extra, stopped == "idle", reason)
        else:
            out({"stopped": reason, "status": stopped})
    if stop.exit_code is not None:
        return stop.exit_code
    if ended == "error":
        last = str(errors[-1]) if errors else "no error reported"
        print(f"fsm-voice connect: the session ended in error: {last}", file=sys.stderr)
        return EXIT_FAILED
    if reason in ("responses", "quit", "closed"):
        return EXIT_OK
    return EXIT_OK if ended in CONNECTED else EXIT_NOT_CONNECTED


# -------------------------------------------------------------------------------- command


def add_parsers(sub: Any) -> None:
    c = sub.add_parser("connect", help="talk to an OpenAI-compatible backend from the terminal "
                       "(audio in/out, transcripts, live status); the key comes from a token "
                       "broker (--token-url) or --token-env",
                       epilog=EXIT_CODES, formatter_class=argparse.RawDescriptionHelpFormatter)
    c.add_argument("--base-url", required=True, type=http_url,
                   help="backend base URL (POST /v1/realtime/calls, or /v1/live/sessions "
                   "with --protocol live)")
    c.add_argument("--protocol", choices=("realtime", "live"), default="realtime",
                   help="OpenAI Realtime (default) or OpenAI Live (gpt-live-*: no "
                   "--audio-format/--turn-detection/--transcribe/typed messages)")
    c.add_argument("--token-url", type=http_url,
                   help="token broker endpoint handing out ephemeral keys")
    c.add_argument("--client-id", help="this app's client id at the broker (with --protocol "
                   "live and no --token-url: --base-url is the broker's session proxy)")
    c.add_argument("--client-secret-env", default="FSM_VOICE_CLIENT_SECRET",
                   help="env var holding the broker client secret")
    c.add_argument("--token-env", default="FSM_VOICE_TOKEN",
                   help="env var holding an ephemeral key (when no --token-url)")
    c.add_argument("--model", help="default gpt-realtime (live: gpt-live-1)")
    c.add_argument("--voice", help="default alloy (live: the server's, marin)")
    c.add_argument("--instructions")
    c.add_argument("--audio-format", choices=("pcm16", "g711_ulaw", "g711_alaw"),
                   help="input and output audio format (telephony: g711_*; default pcm16)")
    c.add_argument("--turn-detection", choices=("server_vad", "semantic_vad", "none"),
                   help="default server_vad")
    c.add_argument("--duration", type=lambda t: seconds(t, allow_inf=True), default=None,
                   help="seconds to run (default 30 with --json, inf on a terminal: until "
                   "Ctrl-C or /quit)")
    c.add_argument("--trace", metavar="FILE", help="record the session's trace (JSON Lines; "
                   "see specs/trace.md; `fsm-voice replay FILE`, `fsm-voice timeline FILE`)")
    add_export_flags(c)
    a = c.add_argument_group("audio")
    a.add_argument("--input", metavar="WAV|FORMAT:DEVICE",
                   help="what to say: a WAV file (said once, then silence) or a capture device "
                   "through FFmpeg, e.g. alsa:default (default: generated speech-like audio)")
    a.add_argument("--output", metavar="WAV|FORMAT:DEVICE",
                   help="where the assistant's audio goes: a WAV file or a playback device, "
                   "e.g. alsa:default (default: discarded)")
    a.add_argument("--record", metavar="WAV",
                   help="record both sides to a stereo WAV (left: sent, right: received)")
    v = c.add_argument_group("display")
    fmt = v.add_mutually_exclusive_group()
    fmt.add_argument("--json", dest="view", action="store_const", const="json",
                     help="status changes as JSON lines (default when stdout is not a terminal)")
    fmt.add_argument("--human", dest="view", action="store_const", const="human",
                     help="transcripts, status changes, a live status line and a summary "
                     "(default on a terminal)")
    v.add_argument("--text-input", choices=("auto", "stdin", "off"), default="auto",
                   help="typed messages from stdin, each sent as a conversation item and a "
                   "response request (auto: when stdin and stdout are terminals)")
    v.add_argument("--transcribe", metavar="MODEL|none", default=None,
                   help="input transcription model (default: "
                   f"{DEFAULT_TRANSCRIBE_MODEL} in the human view, none with --json)")
    v.add_argument("--responses", type=count, default=None, metavar="N",
                   help="stop (exit 0) once N assistant responses are done")
    c.set_defaults(func=_connect)


def _token(a: argparse.Namespace) -> str | EphemeralKeyProvider:
    """Secrets come from the environment, never from argv (visible in process lists)."""
    if a.token_url:
        secret = os.environ.get(a.client_secret_env)
        if not a.client_id or not secret:
            raise ConfigError(f"--token-url needs --client-id and the client secret in "
                              f"${a.client_secret_env}")
        return EphemeralKeyProvider(a.token_url, client_id=a.client_id, client_secret=secret)
    key = (os.environ.get(a.token_env) or "").strip()
    if not key and getattr(a, "protocol", "realtime") == "live":
        raise ConfigError(f"give the API key in ${a.token_env} (Live has no ephemeral keys), "
                          "or --client-id for a broker's session proxy at --base-url")
    if not key:
        raise ConfigError(f"give --token-url (a token broker) or an ephemeral key in "
                          f"${a.token_env}")
    if not all("!" <= c <= "~" for c in key):  # it goes into an Authorization header
        raise ConfigError(f"${a.token_env} is invalid: expected a key of printable ASCII "
                          "without spaces or control characters")
    return key


def _broker_secret(a: argparse.Namespace) -> str:
    """``--protocol live --client-id``: this app's client secret at the broker (its proxy
    creates the session), from the environment."""
    secret = (os.environ.get(a.client_secret_env) or "").strip()
    if not secret or not all("!" <= c <= "~" for c in secret):
        raise ConfigError(f"--client-id needs the client secret in ${a.client_secret_env} "
                          "(printable ASCII without spaces)")
    return secret


def _same_file(a: str, b: str) -> bool:
    pa, pb = Path(a), Path(b)
    try:
        if pa.exists() and pb.exists():
            return os.path.samefile(pa, pb)
    except OSError:
        pass
    return pa.resolve() == pb.resolve()


def _file_of(spec: str, flag: str) -> str | None:
    """The file an audio end reads or writes (None: a capture/playback device)."""
    if flag == "--record":
        return spec
    dev = device_spec(spec)
    if dev is None:
        return spec
    return dev[1] if dev[0] == "wav" else None


def _refuse_overwriting_input(input_spec: str | None, outputs: dict[str, str | None]) -> None:
    """A WAV written by ``--output``/``--record`` must not be the ``--input`` file (nor the
    two the same file): it would be truncated before it is read."""
    named = [(flag, f) for flag, p in (("--input", input_spec), *outputs.items())
             if p and (f := _file_of(p, flag))]
    for i, (fa, pa) in enumerate(named):
        for fb, pb in named[i + 1:]:
            if _same_file(pa, pb):
                raise ConfigError(f"{fa} and {fb} are the same file ({pb}): it would be "
                                  "overwritten")


def _connect(a: argparse.Namespace) -> int:
    view: View = a.view or ("human" if sys.stdout.isatty() else "json")
    duration = a.duration if a.duration is not None else (
        30.0 if view == "json" else float("inf"))
    if a.responses == 0:
        raise ConfigError("--responses must be at least 1")
    session: LiveConfig | dict[str, Any]
    if a.protocol == "live":
        given = [flag for flag, value in (("--audio-format", a.audio_format),
                                          ("--turn-detection", a.turn_detection),
                                          ("--transcribe", a.transcribe)) if value is not None]
        if a.text_input == "stdin":
            given.append("--text-input stdin")
        if a.token_url:
            given.append("--token-url (Live has no ephemeral keys: use the broker's proxy, "
                         "--base-url BROKER --client-id ID)")
        if given:
            raise ConfigError(f"{', '.join(given)}: Realtime-only, not with --protocol live")
        if a.client_id and (a.model or a.voice or a.instructions):
            raise ConfigError("--model/--voice/--instructions: the broker sets them "
                              "(--client-id: through a broker's proxy)")
        try:
            session = LiveConfig(model="gpt-live-1" if a.model is None else a.model, voice=a.voice,
                                 instructions=a.instructions)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        text_input = False
    else:
        turn: Any = a.turn_detection or "server_vad"
        fmt: Any = a.audio_format or "pcm16"
        try:
            config = RealtimeConfig(
                model="gpt-realtime" if a.model is None else a.model,
                voice="alloy" if a.voice is None else a.voice,
                instructions=a.instructions,
                turn_detection=None if turn == "none" else turn,
                input_format=fmt, output_format=fmt)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        session = config.to_session()
        transcribe = a.transcribe or (DEFAULT_TRANSCRIBE_MODEL if view == "human" else "none")
        if transcribe != "none":
            session["audio"]["input"]["transcription"] = {"model": transcribe}
        text_input = a.text_input == "stdin" or (
            a.text_input == "auto" and view == "human" and sys.stdin.isatty())
    _refuse_overwriting_input(a.input, {"--output": a.output, "--record": a.record})
    broker_client_id = a.client_id if a.protocol == "live" and a.client_id else None
    token = _broker_secret(a) if broker_client_id else _token(a)
    try:
        audio = ConnectAudio(a.input, a.output, a.record)
    except BaseException:
        if isinstance(token, EphemeralKeyProvider):
            anyio.run(token.aclose)
        raise
    try:
        return run_observed(a, lambda hub: run_connect(
            a.base_url, token, duration, session, view=view, audio=audio,
            text_input=text_input, responses=a.responses, trace=a.trace, hub=hub,
            broker_client_id=broker_client_id))
    finally:
        audio.close()
