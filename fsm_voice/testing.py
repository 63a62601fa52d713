"""A scripted transport: the runtime's stand-in for aiortc in fast tests (virtual clock).

Each ``open`` takes the next step of a script: ``"ok"`` (signaling succeeds; the transport then
reports connected and channel-open), ``"hang"`` (signaling succeeds but nothing ever connects, like
aiortc stuck in ``checking``), or a :class:`~fsm_voice.errors.VoiceError` to raise. When the script
runs out, ``default`` is used. Tests inject later signals and server events with :meth:`emit` and
:meth:`server`.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Mapping
from typing import Any

import anyio

from fsm_voice.errors import ErrorSource, Severity, VoiceError
from fsm_voice.ports import ConnectionMetrics, TransportSignal, TransportSink

Step = str | VoiceError


def failure(severity: str, code: str = "scripted_failure") -> VoiceError:
    return VoiceError(severity=Severity(severity), code=code, message=f"scripted {code}",
                      source=ErrorSource.SIGNALING)


class ScriptedTransport:
    def __init__(self, script: Iterable[Step] = (), default: Step = "ok") -> None:
        self.script: deque[Step] = deque(script)
        self.default = default
        self.opens = 0
        self.closes = 0
        self.is_open = False
        self.sink: TransportSink | None = None
        self.sent: list[Mapping[str, Any]] = []
        self.channel_open = False
        self.metrics_sample: ConnectionMetrics | None = None

    async def open(self, sink: TransportSink) -> None:
        if self.is_open:
            raise AssertionError("open() while a connection is open: the runtime leaked one")
        self.opens += 1
        self.is_open = True
        self.sink = sink
        step = self.script.popleft() if self.script else self.default
        await anyio.sleep(0)
        if isinstance(step, VoiceError):
            raise step
        if step == "ok":
            sink.signal(TransportSignal.CONNECTED)
            self.channel_open = True
            sink.signal(TransportSignal.CHANNEL_OPEN)
        elif step != "hang":
            raise ValueError(f"unknown script step {step!r}: use 'ok', 'hang' or a VoiceError")

    async def close(self) -> None:
        if self.is_open:
            self.closes += 1
        self.is_open = False
        self.channel_open = False
        self.sink = None

    def send_event(self, event: Mapping[str, Any]) -> None:
        if not self.channel_open:
            raise RuntimeError("data channel is not open")
        self.sent.append(event)

    async def metrics(self) -> ConnectionMetrics | None:
        return self.metrics_sample if self.is_open else None

    def emit(self, signal: TransportSignal, detail: str = "") -> None:
        assert self.sink is not None, "no open connection to emit from"
        if signal is TransportSignal.FAILED or signal is TransportSignal.ICE_DISCONNECTED:
            self.channel_open = signal is TransportSignal.ICE_DISCONNECTED and self.channel_open
        self.sink.signal(signal, detail)

    def server(self, event: Mapping[str, Any]) -> None:
        assert self.sink is not None, "no open connection to receive on"
        self.sink.server_event(event)
