"""Ports: the interfaces between the runtime and the outside world.

The runtime only talks to these protocols. The aiortc adapter (:mod:`fsm_voice.transport`), the
HTTP signaling client (:mod:`fsm_voice.signaling`) and the scripted test transport implement them.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping
from typing import Any, Protocol, runtime_checkable

import attrs


class TransportSignal(enum.StrEnum):
    """What a transport reports about its connection; each value is the machine event it is
    posted as."""

    CONNECTED = "transport_connected"
    """Media path up (``RTCPeerConnection.connectionState == 'connected'``)."""
    CHANNEL_OPEN = "channel_open"
    """The ``oai-events`` data channel is open."""
    ICE_DISCONNECTED = "ice_disconnected"
    """The path looks dead (derived from liveness: inbound packets stalled)."""
    ICE_RECOVERED = "ice_recovered"
    """Packets flow again after ``ICE_DISCONNECTED``."""
    FAILED = "transport_failed"
    """ICE failed, connection failed, or the connection closed without being asked to."""
    SPEECH_STARTED = "speech_started"
    """The user started speaking (a backend without VAD events: the microphone's energy)."""
    SPEECH_STOPPED = "speech_stopped"
    """The user stopped speaking (after the detector's hangover)."""
    AUDIO_STARTED = "audio_started"
    """The assistant's audio started playing (the received track's energy)."""
    AUDIO_STOPPED = "audio_stopped"
    """The assistant's audio stopped (after the detector's hangover)."""


@attrs.frozen
class ConnectionMetrics:
    """One sample of connection quality (from ``getStats()``)."""

    latency_ms: float | None
    """Round-trip time from ``remote-inbound-rtp.roundTripTime`` (None until known)."""
    packets_lost: int
    """Cumulative inbound packets lost."""
    jitter_ms: float | None
    """Inbound jitter in milliseconds (converted from RTP clock units)."""
    timestamp: float
    """Clock time of the sample (seconds)."""
    packets_received: int = 0
    loss_fraction: float = 0.0


@attrs.frozen
class SdpAnswer:
    """Answer of a signaling exchange."""

    sdp: str
    call_id: str | None = None


class TransportSink(Protocol):
    """Callbacks a transport uses to report to the runtime. Both are non-blocking."""

    def signal(self, signal: TransportSignal, detail: str = "") -> None: ...

    def server_event(self, event: Mapping[str, Any]) -> None:
        """A JSON event received on the data channel (already parsed, a JSON object)."""
        ...


@runtime_checkable
class Transport(Protocol):
    """One voice connection at a time; reopened by the runtime on restart / reconnect.

    ``open`` performs the whole set-up (peer connection, offer, signaling exchange, answer) and
    returns once the answer is applied; progress afterwards is reported through ``sink``. It
    raises :class:`fsm_voice.errors.VoiceError` (classified) when signaling fails. ``close`` is
    idempotent and releases every resource of the current connection.
    """

    async def open(self, sink: TransportSink) -> None: ...

    async def close(self) -> None: ...

    def send_event(self, event: Mapping[str, Any]) -> None:
        """Send one JSON client event on the data channel (raises if the channel is not open)."""
        ...

    async def metrics(self) -> ConnectionMetrics | None:
        """Current connection quality, or None when not connected."""
        ...


class Signaling(Protocol):
    """SDP offer -> answer exchange (OpenAI Realtime ``/v1/realtime/calls``, WHIP-like)."""

    async def exchange(self, offer_sdp: str) -> SdpAnswer:
        """Raise :class:`fsm_voice.errors.VoiceError` (classified) on failure."""
        ...


TokenProvider = Callable[[], Any]
"""``async () -> str``: returns a fresh (ephemeral) key for one signaling attempt."""
