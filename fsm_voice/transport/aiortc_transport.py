"""The aiortc adapter: one :class:`~fsm_voice.ports.Transport` connection per ``open()``.

What aiortc 1.16 does and does not do (verified), and what this adapter does about it:

* no ICE restart, no ``disconnected`` state; a dead path is noticed only after ~30 s of failed
  consent checks, and then the peer connection goes ``closed`` (not ``failed``). Hence the
  **liveness** task (:mod:`fsm_voice.transport.liveness`): it samples cheap inbound counters
  (packets received by the DTLS transport(s) - RTP, RTCP and SCTP alike - plus frames read from
  the remote track and data-channel messages) and, when they stall, probes the nominated ICE
  pair with STUN binding requests: an answer means *remote silent, path alive* (no signal); no
  evidence at all -> :attr:`TransportSignal.ICE_DISCONNECTED` (~0.5 s), then
  :attr:`TransportSignal.FAILED` (~0.9 s: the machine restarts at once); evidence again ->
  :attr:`TransportSignal.ICE_RECOVERED`. Without the probe capability it falls back to the
  stall detector (``liveness_stall``, never ``FAILED``).
* only the first STUN and the first TURN server are used; ``iceServers=None`` makes aiortc add a
  public Google STUN server, so an explicit list (possibly empty) is always passed. With a
  :class:`~fsm_voice.ice.IceServerProber` (automatic when more than one STUN or more than one
  TURN URL is configured) each ``open()`` first probes the servers (<= 0.5 s) and hands aiortc
  a list whose first STUN and first TURN are healthy ones, rotating with the number of opens so
  that a reconnect starts from a different server.
* a remote track nobody reads buffers without bound: the remote audio track is always drained by
  a reader task, into the configured sink or a :class:`~fsm_voice.transport.audio.NullSink`.

* ``pc.close()`` deletes each TURN allocation (a Refresh with lifetime 0) and waits for the
  answer; when the TURN server is unreachable (crashed, path dead) aioice retransmits it for
  ~60 s, and aiortc's close waits all that time. :meth:`AiortcTransport.close` therefore gives
  ``pc.close()`` a short grace (:data:`_CLOSE_GRACE`, or :data:`_CLOSE_GRACE_DEAD` once the
  path is known dead) and then aborts this connection's TURN allocations
  (:func:`fsm_voice.transport._private.abort_turn_allocations`): their sockets are closed and
  their aioice tasks cancelled and awaited, so the close finishes at once and nothing of it is
  left running (the server frees an allocation nobody refreshes when its lifetime ends).

Two optional hooks, for backends that need them (OpenAI Live turns both on, see
:func:`fsm_voice.live.live_session`):

* ``graceful_close=GracefulClose(timeout)``: closing a connection whose data channel is open first
  sends ``session.close`` (with an ``event_id``) and keeps everything up until ``session.closed``
  arrives or ``timeout`` passes; the outcome is a :class:`Finalisation` (confirmed or not,
  reason, usage seconds) in :attr:`AiortcTransport.last_finalisation`. It replaces the HTTP
  hangup (Realtime keeps the hangup: no ``graceful_close``).
* ``activity=ActivityPolicy()``: listening/speaking from the audio's energy
  (:mod:`fsm_voice.transport.activity`).

Every task this adapter creates belongs to the current connection and is cancelled and awaited by
:meth:`AiortcTransport.close`; callbacks of an old connection can never reach a newer one.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import logging
import math
import secrets
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Final, Literal

import anyio
import attrs
import av
from aiortc import (
    MediaStreamTrack,
    RTCConfiguration,
    RTCDataChannel,
    RTCPeerConnection,
    RTCRtpSender,
    RTCSessionDescription,
)
from aiortc.mediastreams import MediaStreamError
from aiortc.rtcconfiguration import RTCBundlePolicy, RTCIceTransportPolicy
from aiortc.sdp import SessionDescription

from fsm_voice import ice as ice_module  # a module: fsm_voice.ice imports transport._private
from fsm_voice.errors import ConfigError, ErrorSource, Severity, VoiceError, classify_exception
from fsm_voice.ports import ConnectionMetrics, Signaling, TransportSignal, TransportSink
from fsm_voice.transport import _private, loopback
from fsm_voice.transport.activity import (
    SILENCE_DBFS,
    ActivityPolicy,
    ActivityTap,
    EnergyGate,
    frame_level,
    frame_seconds,
)
from fsm_voice.transport.audio import AudioSink, AudioSinkFactory, AudioSourceFactory, NullSink
from fsm_voice.transport.liveness import LivenessStats, PathLiveness, ProbeTiming, Step
from fsm_voice.transport.stats import DEFAULT_CLOCK_RATE, metrics_from_stats

if TYPE_CHECKING:
    from fsm_voice.ice import IceServerProber
    from fsm_voice.policy import IceServer

__all__ = [
    "DATA_CHANNEL_LABEL",
    "INVALID_MESSAGE_EVENT",
    "AiortcTransport",
    "ChannelNotOpenError",
    "Finalisation",
    "GracefulClose",
    "parse_server_message",
]

log = logging.getLogger(__name__)

DATA_CHANNEL_LABEL = "oai-events"
INVALID_MESSAGE_EVENT = "fsm_voice.invalid_server_message"
"""``type`` of the synthetic server event reporting a data-channel message that is not a JSON
object (``{"type": ..., "error": str, "raw": first 200 chars}``)."""
_RAW_LIMIT = 200
_CODEC_ORDER = ("audio/opus", "audio/PCMU", "audio/PCMA")
_CLOSE_TIMEOUT = 5.0
"""Upper bound of each awaited close step (a wedged aiortc close must not hang ``close()``)."""
RECEIVE_GAP: Final = 0.1
"""While the received-audio gate is open, this long without a frame counts as silence (a
remote that stops sending, e.g. muted, still ends the assistant's turn after the hangover)."""

_CLOSE_GRACE = 1.0
"""How long ``pc.close()`` may run on its own before the connection's TURN allocations are
aborted (a healthy close, TURN deallocation included, takes a few round trips)."""
_CLOSE_GRACE_DEAD = 0.25
"""The same grace once the path is known dead (liveness reported ICE_DISCONNECTED, or the
connection failed): a deallocation over it will most likely never be answered."""


def _positive_seconds(_: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not (
            0 < value < math.inf):
        raise ConfigError.invalid(f"GracefulClose.{attribute.name}", value,
                                  "a positive, finite number of seconds")


@attrs.frozen
class GracefulClose:
    """The close handshake of OpenAI Live: send ``session.close``, wait at most ``timeout``
    seconds for ``session.closed`` (15 s, as OpenAI's examples), then close the connection."""

    timeout: float = attrs.field(default=15.0, validator=_positive_seconds)


@attrs.frozen
class Finalisation:
    """How one connection's server session ended, as far as this client knows.

    ``confirmed``: a ``session.closed`` arrived (the only proof of finalisation); ``reason`` and
    ``usage_seconds`` are then its own. Unconfirmed: ``reason`` is None and ``usage_seconds``
    the last ``session.usage.updated`` (cumulative), if any. ``requested``: this client sent
    ``session.close``. ``detail``: what happened, for logs.
    """

    confirmed: bool
    reason: str | None
    usage_seconds: float | None
    session_id: str | None
    requested: bool
    detail: str


def _usage_seconds(event: Mapping[str, Any]) -> float | None:
    usage = event.get("usage")
    seconds = usage.get("seconds") if isinstance(usage, Mapping) else None
    if isinstance(seconds, bool) or not isinstance(seconds, int | float):
        return None
    return float(seconds) if math.isfinite(seconds) else None


class ChannelNotOpenError(VoiceError):
    """``send_event`` called while the ``oai-events`` channel is not open."""


def _channel_not_open(state: str) -> ChannelNotOpenError:
    return ChannelNotOpenError(
        Severity.TRANSIENT,
        "channel_not_open",
        f"cannot send: the {DATA_CHANNEL_LABEL!r} data channel is {state}",
        ErrorSource.CLIENT,
    )


class _Connection:
    """Everything that belongs to one ``open()``; discarded as a whole by ``close()``."""

    def __init__(self, sink: TransportSink) -> None:
        self.sink = sink
        self.pc: RTCPeerConnection | None = None
        self.dc: RTCDataChannel | None = None
        self.local_tracks: list[MediaStreamTrack] = []
        self.audio_sink: AudioSink | None = None
        self.liveness_task: asyncio.Task[None] | None = None
        self.liveness: PathLiveness | None = None
        self.reader_tasks: list[asyncio.Task[None]] = []
        self.closing = False
        self.closed = asyncio.Event()
        self.connected = False
        self.up = asyncio.Event()
        self.failed = False
        self.path_dead = False
        self.channel_open_reported = False
        self.messages_in = 0
        self.frames_in = 0
        self.clock_rate = DEFAULT_CLOCK_RATE
        self.last_metrics: ConnectionMetrics | None = None
        self.call_id: str | None = None
        self.gates: list[EnergyGate] = []
        self.received_gate: EnergyGate | None = None
        self.closed_event: Mapping[str, Any] | None = None
        """The server's ``session.closed`` (graceful close only), once it came."""
        self.last_usage: float | None = None
        self.finalise_wake = asyncio.Event()
        """Set when waiting for ``session.closed`` is over: it came, or the path closed."""

    def gate(self, gate: EnergyGate, frame: av.AudioFrame) -> None:
        """Feed one frame to ``gate``; report its change once the channel is open."""
        signal = gate.feed(frame_level(frame), frame_seconds(frame))
        if signal is not None and self.channel_open_reported:
            self.report(signal, f"audio level (at {gate.position:.2f} s of audio)")

    def gap(self, gate: EnergyGate, seconds: float) -> None:
        """No frame came on the received track for ``seconds``: silence to ``gate``."""
        signal = gate.feed(SILENCE_DBFS, seconds)
        if signal is not None and self.channel_open_reported:
            self.report(signal, f"no received audio for {gate.policy.hangover:.2f} s")

    def report(self, signal: TransportSignal, detail: str = "") -> None:
        if self.closing:
            return
        try:
            self.sink.signal(signal, detail)
        except Exception:
            log.exception("transport sink.signal(%s) raised; ignored", signal)

    def fail(self, detail: str) -> None:
        if self.failed or self.closing:
            return
        self.failed = True
        self.path_dead = True
        self.report(TransportSignal.FAILED, detail)

    def event(self, event: Mapping[str, Any]) -> None:
        if self.closing and event.get("type") != "session.closed":
            return  # the final usage still reaches the app (the machine drops it as stale)
        try:
            self.sink.server_event(event)
        except Exception:
            log.exception("transport sink.server_event raised; ignored")


class AiortcTransport:
    """:class:`fsm_voice.ports.Transport` on aiortc (see the module docstring).

    ``audio_source``/``audio_sink`` are factories called once per connection (a fresh track /
    sink each time). Without a source the audio transceiver is still ``sendrecv`` but sends
    nothing; without a sink received audio is counted and discarded. ``host_addresses`` forces
    the host ICE candidates (e.g. ``["127.0.0.1"]`` for a local peer). ``clock`` is a monotonic
    seconds clock used for liveness and metric timestamps.

    ``prober``: an :class:`~fsm_voice.ice.IceServerProber` consulted before every ``open()``
    (its servers are used when ``ice_servers`` is empty); ``"auto"`` (default) creates one when
    more than one STUN or more than one TURN URL is configured; None never probes (aiortc gets
    ``ice_servers`` as given).

    Liveness (see :mod:`fsm_voice.transport.liveness`): ``probe`` gives the timing of the STUN
    probes of the selected path (None: no probes, stall detection only); ``liveness_interval``
    and ``liveness_stall`` apply only to the stall detection (no probes, or the probe capability
    lost).
    """

    def __init__(
        self,
        signaling: Signaling,
        *,
        ice_servers: Sequence[IceServer] = (),
        relay_only: bool = False,
        audio_source: AudioSourceFactory | None = None,
        audio_sink: AudioSinkFactory | None = None,
        host_addresses: Sequence[str] | None = None,
        prober: IceServerProber | Literal["auto"] | None = "auto",
        liveness_interval: float = 0.25,
        liveness_stall: float = 0.75,
        probe: ProbeTiming | None = ProbeTiming(),  # noqa: B008 - frozen value object
        clock: Callable[[], float] = time.monotonic,
        graceful_close: GracefulClose | None = None,
        activity: ActivityPolicy | None = None,
    ) -> None:
        if not liveness_interval > 0:
            raise ConfigError.invalid(
                "liveness_interval", liveness_interval, "a positive number of seconds"
            )
        if not liveness_stall >= liveness_interval:
            raise ConfigError.invalid(
                "liveness_stall",
                liveness_stall,
                f"seconds >= liveness_interval ({liveness_interval})",
            )
        if probe is not None and not isinstance(probe, ProbeTiming):
            raise ConfigError.invalid("probe", probe, "a ProbeTiming or None")
        if graceful_close is not None and not isinstance(graceful_close, GracefulClose):
            raise ConfigError.invalid("graceful_close", graceful_close, "a GracefulClose or None")
        if activity is not None and not isinstance(activity, ActivityPolicy):
            raise ConfigError.invalid("activity", activity, "an ActivityPolicy or None")
        if isinstance(prober, ice_module.IceServerProber):
            if not ice_servers:
                ice_servers = prober.servers
            elif tuple(ice_servers) != prober.servers:
                raise ConfigError.invalid(
                    "prober", prober, "a prober of the same servers as ice_servers"
                )
        elif prober == "auto":
            prober = _auto_prober(ice_servers)
        elif prober is not None:
            raise ConfigError.invalid("prober", prober, "an IceServerProber, 'auto' or None")
        if relay_only and not any(s.is_relay for s in ice_servers):
            raise ConfigError.invalid(
                "relay_only", relay_only, "a TURN server in ice_servers when relay_only is set"
            )
        if host_addresses is not None:
            host_addresses = tuple(host_addresses)
            with loopback.host_addresses(host_addresses):  # validates literal IPs now
                pass
        self._signaling = signaling
        self._ice_servers = tuple(ice_servers)
        self._prober: IceServerProber | None = prober
        self._opens = 0
        self._servers_in_use: tuple[IceServer, ...] = ()
        self._relay_only = relay_only
        self._audio_source = audio_source
        self._audio_sink = audio_sink
        self._host_addresses = host_addresses
        self._liveness_interval = float(liveness_interval)
        self._liveness_stall = float(liveness_stall)
        self._probe = probe
        self._clock = clock
        self._conn: _Connection | None = None
        self._graceful = graceful_close
        self._activity = activity
        self.finalisations: collections.deque[Finalisation] = collections.deque(maxlen=32)
        self._finalising: set[_Connection] = set()
        self._hurried = False
        """The :class:`Finalisation` of each closed connection (graceful close only), oldest
        first (the last 32)."""

    # ----------------------------------------------------------------------------- properties

    @property
    def call_id(self) -> str | None:
        """Call id of the current connection (from the signaling answer), if any."""
        return self._conn.call_id if self._conn is not None else None

    def hurry(self) -> None:
        """Stop waiting for ``session.closed`` (graceful close): every wait in progress, and
        any later one, ends at once, unconfirmed. For an application that must exit now (a
        second Ctrl-C); the pending closes still release everything."""
        self._hurried = True
        for conn in self._finalising:
            conn.finalise_wake.set()

    @property
    def last_finalisation(self) -> Finalisation | None:
        """How the latest closed connection's session ended (with ``graceful_close``)."""
        return self.finalisations[-1] if self.finalisations else None

    @property
    def connection_state(self) -> str:
        """aiortc ``connectionState`` of the current peer connection, ``"idle"`` when none."""
        conn = self._conn
        return conn.pc.connectionState if conn is not None and conn.pc is not None else "idle"

    @property
    def liveness(self) -> LivenessStats | None:
        """Liveness counters of the current connection (None before it is connected)."""
        conn = self._conn
        return conn.liveness.stats() if conn is not None and conn.liveness is not None else None

    @property
    def prober(self) -> IceServerProber | None:
        """The ICE server prober consulted before each ``open()``, if any."""
        return self._prober

    @property
    def ice_servers_in_use(self) -> tuple[IceServer, ...]:
        """The servers handed to aiortc by the latest ``open()`` (aiortc uses the first STUN
        and the first TURN of them)."""
        return self._servers_in_use

    async def _select_servers(self) -> tuple[IceServer, ...]:
        attempt = self._opens
        self._opens += 1
        if self._prober is None:
            return self._ice_servers
        return tuple(await self._prober.select(attempt, relay_only=self._relay_only))

    def _configuration(self, servers: Sequence[IceServer] | None = None) -> RTCConfiguration:
        chosen = self._ice_servers if servers is None else servers
        return RTCConfiguration(
            iceServers=[s.to_aiortc() for s in chosen],  # ALWAYS a list
            iceTransportPolicy=(
                RTCIceTransportPolicy.RELAY if self._relay_only else RTCIceTransportPolicy.ALL
            ),
            bundlePolicy=RTCBundlePolicy.MAX_BUNDLE,
        )

    # ------------------------------------------------------------------------------ open

    async def open(self, sink: TransportSink) -> None:
        if self._conn is not None:
            log.debug("open() with a previous connection still present: closing it first")
            await self.close()
        conn = _Connection(sink)
        self._conn = conn
        try:
            await self._open(conn)
        except BaseException as exc:
            # Cancelled or failed half-way: nothing of this attempt may remain.
            await self._teardown(conn)
            if self._conn is conn:
                self._conn = None
            if isinstance(exc, VoiceError) or not isinstance(exc, Exception):
                raise
            raise classify_exception(exc) from exc

    async def _open(self, conn: _Connection) -> None:
        servers = await self._select_servers()
        self._servers_in_use = servers
        _check_not_closed(conn)
        pc = RTCPeerConnection(self._configuration(servers))
        conn.pc = pc

        @pc.on("connectionstatechange")  # type: ignore[untyped-decorator,unused-ignore]
        def _on_state() -> None:
            self._on_connection_state(conn, pc.connectionState)

        @pc.on("track")  # type: ignore[untyped-decorator,unused-ignore]
        def _on_track(track: MediaStreamTrack) -> None:
            self._start_reader(conn, track)

        track: MediaStreamTrack | None = None
        if self._audio_source is not None:
            track = self._audio_source()
            conn.local_tracks.append(track)
            if self._activity is not None and self._activity.mic:
                gate = EnergyGate(self._activity, TransportSignal.SPEECH_STARTED,
                                  TransportSignal.SPEECH_STOPPED)
                conn.gates.append(gate)
                track = ActivityTap(track, lambda frame: conn.gate(gate, frame))
                conn.local_tracks.append(track)
        if self._activity is not None and self._activity.received:
            conn.received_gate = EnergyGate(self._activity, TransportSignal.AUDIO_STARTED,
                                            TransportSignal.AUDIO_STOPPED)
            conn.gates.append(conn.received_gate)
        transceiver = pc.addTransceiver(track if track is not None else "audio", "sendrecv")
        transceiver.setCodecPreferences(_preferred_codecs())

        dc = pc.createDataChannel(DATA_CHANNEL_LABEL)
        conn.dc = dc
        self._wire_channel(conn, dc)
        _private.quiet_sctp_close(pc)

        offer = await pc.createOffer()
        with self._candidate_scope():
            await pc.setLocalDescription(offer)
        _check_not_closed(conn)
        local = pc.localDescription
        answer = await self._signaling.exchange(local.sdp)
        _check_not_closed(conn)
        conn.call_id = answer.call_id
        try:
            await pc.setRemoteDescription(RTCSessionDescription(sdp=answer.sdp, type="answer"))
        except (ValueError, TypeError) as exc:  # aiortc: unparseable / incompatible answer
            raise VoiceError(
                Severity.RECOVERABLE,
                "invalid_answer",
                f"answer SDP rejected by aiortc: {exc}",
                ErrorSource.SIGNALING,
            ) from exc
        conn.clock_rate = _clock_rate(answer.sdp)
        conn.liveness_task = asyncio.create_task(
            self._liveness(conn), name="fsm_voice.aiortc.liveness"
        )

    @contextlib.contextmanager
    def _candidate_scope(self) -> Iterator[None]:
        if self._host_addresses is None:
            yield
        else:
            with loopback.host_addresses(self._host_addresses):
                yield

    # ------------------------------------------------------------------------------ callbacks

    def _on_connection_state(self, conn: _Connection, state: str) -> None:
        log.debug("connectionState -> %s", state)
        if state in ("closed", "failed"):
            conn.finalise_wake.set()  # no session.closed can come any more
        if conn.closing:
            return
        if state == "connected" and not conn.connected:
            conn.connected = True
            conn.up.set()
            conn.report(TransportSignal.CONNECTED)
        elif state == "failed":
            conn.fail("peer connection failed (ICE or DTLS)")
        elif state == "closed":
            conn.fail("peer connection closed by the remote side or the network (not by us)")

    def _wire_channel(self, conn: _Connection, dc: RTCDataChannel) -> None:
        @dc.on("open")  # type: ignore[untyped-decorator,unused-ignore]
        def _on_open() -> None:
            if not conn.channel_open_reported:
                conn.channel_open_reported = True
                conn.report(TransportSignal.CHANNEL_OPEN)
                for gate in conn.gates:  # a side already talking: say so now
                    if gate.open:
                        conn.report(gate.started, "audio level (when the channel opened)")

        @dc.on("message")  # type: ignore[untyped-decorator,unused-ignore]
        def _on_message(message: str | bytes) -> None:
            conn.messages_in += 1
            event = parse_server_message(message)
            if self._graceful is not None:
                self._observe_for_close(conn, event)
            conn.event(event)

        @dc.on("close")  # type: ignore[untyped-decorator,unused-ignore]
        def _on_close() -> None:
            conn.finalise_wake.set()
            pc = conn.pc
            if pc is not None and pc.signalingState == "closed":
                conn.fail("peer connection closed by the remote side or the network (not by us)")
            else:
                conn.fail(f"data channel {DATA_CHANNEL_LABEL!r} closed by the remote side")

    def _start_reader(self, conn: _Connection, track: MediaStreamTrack) -> None:
        if conn.closing:
            track.stop()
            return
        if track.kind == "audio" and conn.audio_sink is None:
            sink: AudioSink = self._audio_sink() if self._audio_sink is not None else NullSink()
            conn.audio_sink = sink
        else:  # a second / non-audio track: drain and discard
            sink = NullSink()
        gate = conn.received_gate if sink is conn.audio_sink else None
        task = asyncio.create_task(
            self._read_track(conn, track, sink, gate),
            name=f"fsm_voice.aiortc.reader.{track.kind}",
        )
        conn.reader_tasks.append(task)

    @staticmethod
    async def _read_track(conn: _Connection, track: MediaStreamTrack, sink: AudioSink,
                          gate: EnergyGate | None = None) -> None:
        sink_ok = True
        while True:
            try:
                if gate is not None and gate.open:
                    # a remote that stops sending (muted) must still close the gate
                    try:
                        async with asyncio.timeout(RECEIVE_GAP):
                            frame = await track.recv()
                    except TimeoutError:
                        conn.gap(gate, RECEIVE_GAP)
                        continue
                else:
                    frame = await track.recv()
            except MediaStreamError:
                return
            conn.frames_in += 1
            if gate is not None and isinstance(frame, av.AudioFrame):
                try:
                    conn.gate(gate, frame)
                except Exception:  # never stop draining the track
                    gate = None
                    log.exception("received-audio activity failed; measuring stopped")
            if sink_ok and isinstance(frame, av.AudioFrame):
                try:
                    await sink.write(frame)
                except Exception:
                    sink_ok = False  # keep draining the track, stop feeding a broken sink
                    log.exception("audio sink write failed; discarding received audio from now")

    @staticmethod
    def _inbound_count(conn: _Connection) -> int:
        count = conn.frames_in + conn.messages_in
        if conn.pc is not None:
            count += _private.inbound_packets(conn.pc) or 0
        return count

    async def _liveness(self, conn: _Connection) -> None:
        """Sample the inbound counters, probe the path when they stall, report verdicts."""
        probing = self._probe is not None and _private.CAPABILITIES["path_probe"].available()
        timing = self._probe if self._probe is not None else ProbeTiming()
        monitor = PathLiveness(
            timing, now=self._clock(), probing=probing, stall=self._liveness_stall
        )
        conn.liveness = monitor
        interval = timing.interval if probing else self._liveness_interval
        sampled = False
        async with anyio.create_task_group() as probes:
            while not conn.closing and not conn.failed:
                if not conn.connected:
                    monitor.restart(self._clock())
                    with anyio.move_on_after(interval):
                        await conn.up.wait()
                    continue
                if sampled:
                    await anyio.sleep(interval)
                sampled = True  # the first sample (its calibration probe) as soon as connected
                try:
                    step = monitor.tick(self._clock(), self._inbound_count(conn))
                except Exception:  # pragma: no cover - defensive: never kill liveness
                    log.exception("liveness sample failed")
                    continue
                self._apply(conn, step)
                if step.probe and monitor.probing and conn.pc is not None:
                    monitor.probe_sent(self._clock())
                    probes.start_soon(self._probe_once, conn, monitor, conn.pc, timing)
            probes.cancel_scope.cancel()

    async def _probe_once(
        self,
        conn: _Connection,
        monitor: PathLiveness,
        pc: RTCPeerConnection,
        timing: ProbeTiming,
    ) -> None:
        sent = self._clock()
        answered = await _private.probe_path(pc, timing.probe_timeout)
        if conn.closing or conn.failed:
            return
        if answered is None:
            if monitor.probing:
                log.warning(
                    "cannot probe the ICE path of this connection (no nominated pair or "
                    "capability lost): stall detection only"
                )
                monitor.stop_probing()
            return
        if answered:
            now = self._clock()
            self._apply(conn, monitor.probe_answered(now, now - sent))

    @staticmethod
    def _apply(conn: _Connection, step: Step) -> None:
        if step.signal is None:
            return
        log.info("liveness: %s (%s)", step.signal.value, step.detail)
        if step.signal is TransportSignal.FAILED:
            conn.fail(step.detail)
            return
        conn.path_dead = step.signal is TransportSignal.ICE_DISCONNECTED
        conn.report(step.signal, step.detail)

    # ------------------------------------------------------------------------------ data

    def send_event(self, event: Mapping[str, Any]) -> None:
        conn = self._conn
        dc = conn.dc if conn is not None else None
        if conn is None or dc is None:
            raise _channel_not_open("not created (transport not open)")
        if conn.closing:
            raise _channel_not_open("closing")
        if dc.readyState != "open":
            raise _channel_not_open(dc.readyState)
        try:
            payload = json.dumps(event, ensure_ascii=False, separators=(",", ":"))
        except (TypeError, ValueError) as exc:
            raise VoiceError(
                Severity.TRANSIENT,
                "invalid_client_event",
                f"client event is not JSON-serialisable: {exc}",
                ErrorSource.CLIENT,
            ) from exc
        dc.send(payload)

    def unacknowledged_events(self) -> list[Mapping[str, Any]]:
        """The client events sent on the ``oai-events`` channel of the current connection that
        the peer has not acknowledged yet, oldest first (parsed back from the message bytes).

        Optional capability of a :class:`~fsm_voice.ports.Transport` (the runtime looks it up
        with ``getattr``). It is a live, non-destructive view of the SCTP association: the
        runtime must call it just **before** :meth:`close` (after ``close()`` there is no
        association left and it returns ``[]``). A message counts as unacknowledged while any of
        its chunks is not cumulatively acknowledged (a gap-acked chunk is not delivered to the
        peer application until the gap is filled, so it counts too): still in aiortc's
        data-channel queue, its outbound queue or its sent queue. Messages sent by the runtime
        itself (``session.update``, replayed items) are included: telling them apart is the
        caller's business. Never raises (``[]`` on any surprise, see
        :func:`fsm_voice.transport._private.unacknowledged_messages`).
        """
        conn = self._conn
        if conn is None or conn.closing or conn.pc is None or conn.dc is None:
            return []
        events: list[Mapping[str, Any]] = []
        for payload in _private.unacknowledged_messages(conn.pc, conn.dc):
            try:
                value = json.loads(payload)
            except (ValueError, RecursionError):
                log.debug("unacknowledged message is not JSON; skipped")
                continue
            if isinstance(value, dict):
                events.append(value)
        return events

    async def metrics(self) -> ConnectionMetrics | None:
        conn = self._conn
        if conn is None or conn.pc is None or conn.closing or not conn.connected:
            return None
        if conn.pc.connectionState != "connected":
            return None
        report = await conn.pc.getStats()
        sample = metrics_from_stats(
            report, clock_rate=conn.clock_rate, now=self._clock(), previous=conn.last_metrics
        )
        conn.last_metrics = sample
        return sample

    # ------------------------------------------------------------------------------ close

    async def close(self) -> None:
        conn = self._conn
        if conn is None:
            return
        if conn.closing:
            with anyio.CancelScope(shield=True):
                await conn.closed.wait()
            return
        await self._teardown(conn)
        if self._conn is conn:
            self._conn = None

    async def _teardown(self, conn: _Connection) -> None:
        """Release everything of ``conn`` in a fixed order; a failing step never stops the rest."""
        if conn.closing:
            with anyio.CancelScope(shield=True):
                await conn.closed.wait()
            return
        conn.closing = True
        with anyio.CancelScope(shield=True):
            try:
                await self._teardown_steps(conn)
            finally:
                conn.closed.set()

    async def _teardown_steps(self, conn: _Connection) -> None:
        # 0. end the call at the server: the graceful close handshake (Live), else the
        #    signaling hangup (bounded, never raises)
        if self._graceful is not None:
            if conn.call_id is not None:  # else no server session was created
                await self._finalise(conn, self._graceful)
        elif conn.call_id is not None and hasattr(self._signaling, "hangup"):
            await self._signaling.hangup(conn.call_id)
        # 1. liveness / monitor task
        if conn.liveness_task is not None:
            await _cancel_and_wait(conn.liveness_task, "liveness task")
        # 2. data channel
        if conn.dc is not None:
            try:
                conn.dc.close()
            except Exception as exc:
                log.warning("closing the data channel failed: %r", exc)
        # 3. peer connection (its TURN allocations aborted if it takes longer than the grace)
        if conn.pc is not None:
            grace = _CLOSE_GRACE_DEAD if conn.path_dead else _CLOSE_GRACE
            await _close_peer_connection(conn.pc, grace)
            try:
                conn.pc.remove_all_listeners()
            except Exception as exc:  # pragma: no cover
                log.warning("removing peer connection listeners failed: %r", exc)
        # 4. local tracks
        for track in conn.local_tracks:
            try:
                track.stop()
            except Exception as exc:
                log.warning("stopping local track failed: %r", exc)
        # 5. remote reader tasks
        for task in conn.reader_tasks:
            await _cancel_and_wait(task, "remote track reader")
        # 6. audio sink
        if conn.audio_sink is not None:
            try:
                conn.audio_sink.close()
            except Exception as exc:
                log.warning("closing the audio sink failed: %r", exc)
        conn.reader_tasks.clear()
        conn.local_tracks.clear()
        conn.liveness_task = None
        conn.dc = None
        conn.pc = None

    # ------------------------------------------------------------------------ graceful close

    @staticmethod
    def _observe_for_close(conn: _Connection, event: Mapping[str, Any]) -> None:
        etype = event.get("type")
        if etype == "session.usage.updated":
            seconds = _usage_seconds(event)
            if seconds is not None:
                conn.last_usage = seconds
        elif etype == "session.closed" and conn.closed_event is None:
            conn.closed_event = event
            conn.finalise_wake.set()

    async def _finalise(self, conn: _Connection, graceful: GracefulClose) -> None:
        """Send ``session.close`` and wait (bounded) for ``session.closed``; record the
        :class:`Finalisation`. Never raises."""
        requested = False
        detail = ""
        dc = conn.dc
        if conn.closed_event is None:
            if conn.failed:
                detail = "the connection had failed: session.close not sent"
            elif dc is None or dc.readyState != "open":
                detail = "the data channel was not open: session.close not sent"
            else:
                event_id = f"evt_close_{secrets.token_hex(8)}"
                try:
                    dc.send(json.dumps({"type": "session.close", "event_id": event_id}))
                    requested = True
                except Exception as exc:
                    detail = f"sending session.close failed: {exc!r}"
            if requested:
                self._finalising.add(conn)
                try:
                    with anyio.move_on_after(0 if self._hurried else graceful.timeout):
                        await conn.finalise_wake.wait()
                finally:
                    self._finalising.discard(conn)
                if conn.closed_event is None:
                    detail = ("not waited for: asked to hurry" if self._hurried
                              else f"no session.closed within {graceful.timeout:g} s"
                              if not conn.finalise_wake.is_set()
                              else "the connection closed before session.closed")
        closed = conn.closed_event
        if closed is not None:
            reason = closed.get("reason")
            usage = _usage_seconds(closed)
            result = Finalisation(
                True, reason if isinstance(reason, str) else None,
                usage if usage is not None else conn.last_usage, conn.call_id, requested,
                "session.closed received" + (" (after session.close)" if requested else ""))
            log.info("session %s finalised: %s, usage %s s", conn.call_id, result.reason,
                     result.usage_seconds)
        else:
            result = Finalisation(False, None, conn.last_usage, conn.call_id, requested, detail)
            log.warning("session %s: finalisation unconfirmed (%s); last usage %s s",
                        conn.call_id, detail, conn.last_usage)
        self.finalisations.append(result)


async def _cancel_and_wait(task: asyncio.Task[None], what: str) -> None:
    try:
        task.cancel()
        with anyio.move_on_after(_CLOSE_TIMEOUT) as scope:
            await asyncio.wait({task})
        if scope.cancelled_caught:
            log.warning("%s did not stop within %.0fs", what, _CLOSE_TIMEOUT)
        elif not task.cancelled() and task.exception() is not None:
            log.warning("%s had failed: %r", what, task.exception())
    except Exception as exc:
        log.warning("stopping %s failed: %r", what, exc)


async def _close_peer_connection(pc: RTCPeerConnection, grace: float) -> None:
    """``pc.close()``, bounded: after ``grace`` s its TURN allocations are aborted (which lets
    the close finish at once), after :data:`_CLOSE_TIMEOUT` more it is given up. Never raises;
    when it returns, no task of the close or of the connection's TURN allocations is left."""
    # aioice forgets its sockets at the end of its close: list the allocations first.
    allocations = _private.turn_allocations(pc)
    closing: asyncio.Task[None] = asyncio.create_task(pc.close(), name="fsm_voice.aiortc.close")
    aborted: list[asyncio.Task[Any]] = []
    try:
        done, _ = await asyncio.wait({closing}, timeout=grace)
        if not done:
            allocations += [t for t in _private.turn_allocations(pc) if t not in allocations]
            log.info(
                "pc.close() not done after %.2fs (TURN deallocation unanswered?): "
                "aborting %d TURN allocation(s)",
                grace,
                len(allocations),
            )
            aborted = _private.abort_turn_allocations(allocations)
            done, _ = await asyncio.wait({closing}, timeout=_CLOSE_TIMEOUT)
        if not done:
            log.warning("closing the peer connection did not finish within its bound; cancelled")
            closing.cancel()
            await asyncio.wait({closing}, timeout=_CLOSE_TIMEOUT)
        elif not closing.cancelled() and closing.exception() is not None:
            log.warning("closing the peer connection failed: %r", closing.exception())
        if aborted:
            # The deallocations were cancelled; wait until they have run their cleanup.
            await asyncio.wait(aborted, timeout=_CLOSE_TIMEOUT)
    except Exception as exc:  # pragma: no cover - defensive: close() must go on
        log.warning("closing the peer connection failed: %r", exc)


# ------------------------------------------------------------------------------------ helpers


def _auto_prober(servers: Sequence[IceServer]) -> IceServerProber | None:
    """A prober when some kind (STUN / TURN) has more than one URL: only then is there a choice
    to make (with one server, probing would only add latency)."""
    urls = [u for s in servers for u in s.parsed_urls]
    stun = sum(1 for u in urls if not u.is_relay)
    turn = len(urls) - stun
    return ice_module.IceServerProber(servers) if stun > 1 or turn > 1 else None


def _check_not_closed(conn: _Connection) -> None:
    if conn.closing:
        raise VoiceError(
            Severity.TRANSIENT,
            "closed_during_open",
            "the transport was closed while the connection was being opened",
            ErrorSource.CLIENT,
        )


def parse_server_message(message: str | bytes) -> dict[str, Any]:
    """A data-channel message -> the server event to report (never raises).

    A JSON object is returned as is; anything else becomes an :data:`INVALID_MESSAGE_EVENT`.
    """
    raw = message.decode("utf-8", errors="replace") if isinstance(message, bytes) else message
    try:
        value = json.loads(message)
    except (ValueError, RecursionError) as exc:
        return _invalid(f"invalid JSON: {exc}", raw)
    if not isinstance(value, dict):
        return _invalid(f"JSON {type(value).__name__} is not an event object", raw)
    if not isinstance(value.get("type"), str):
        return _invalid("event object has no string 'type'", raw)
    return value


def _invalid(error: str, raw: str) -> dict[str, Any]:
    return {"type": INVALID_MESSAGE_EVENT, "error": error, "raw": raw[:_RAW_LIMIT]}


def _preferred_codecs() -> list[Any]:
    codecs = RTCRtpSender.getCapabilities("audio").codecs
    ordered: list[Any] = []
    for mime in _CODEC_ORDER:
        ordered.extend(c for c in codecs if c.mimeType.lower() == mime.lower())
    return ordered


def _clock_rate(answer_sdp: str) -> int:
    """RTP clock rate of the first (negotiated) audio codec of the answer; Opus' 48 kHz when
    unknown."""
    try:
        description = SessionDescription.parse(answer_sdp)
        for media in description.media:
            if media.kind == "audio" and media.rtp.codecs:
                return int(media.rtp.codecs[0].clockRate) or DEFAULT_CLOCK_RATE
    except Exception:  # pragma: no cover - aiortc parsed it already
        pass
    return DEFAULT_CLOCK_RATE
