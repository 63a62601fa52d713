"""The aiortc adapter against a real aiortc answerer on 127.0.0.1 (no mocks of aiortc).

The answerer is a tiny aiohttp app answering ``POST /v1/realtime/calls`` with aiortc inside
``loopback()``: it plays a tone, drains our audio, and echoes data-channel events. Faults are
injected on the answerer side: a black hole (its ICE sockets silently drop what it sends), an
abrupt close.
"""

from __future__ import annotations

import array
import asyncio
import contextlib
import gc
import itertools
import json
import math
import os
import statistics
import threading
import time
import wave
from collections.abc import AsyncIterator, Mapping
from typing import Any

import anyio
import av
import pytest
from aiohttp import web
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

from fsm_voice.errors import ConfigError, ErrorSource, Severity, VoiceError
from fsm_voice.policy import IceServer
from fsm_voice.ports import Transport, TransportSignal
from fsm_voice.signaling import HttpSignaling
from fsm_voice.transport import (
    INVALID_MESSAGE_EVENT,
    AiortcTransport,
    AudioFileError,
    ChannelNotOpenError,
    NullSink,
    SilenceSource,
    ToneSource,
    UtteranceSource,
    WavFileSource,
    WavRecorder,
    _private,
    loopback,
    parse_server_message,
)
from fsm_voice.transport.liveness import ProbeTiming

pytestmark = pytest.mark.anyio

LEAK_CYCLES = int(os.environ.get("FSM_VOICE_LEAK_CYCLES", "30"))
"""Connect/close cycles of the leak test (raise to 100 in benchmarks)."""
LOOPBACK = ["127.0.0.1"]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


# ------------------------------------------------------------------------------------------
# In-test answerer
# ------------------------------------------------------------------------------------------


class Answerer:
    """aiortc answerer behind aiohttp, speaking the OpenAI Realtime WebRTC wire protocol."""

    def __init__(self) -> None:
        self.pcs: list[RTCPeerConnection] = []
        self.tracks: list[MediaStreamTrack] = []
        self.tasks: set[asyncio.Task[None]] = set()
        self.requests: list[dict[str, Any]] = []
        self.received: list[Any] = []
        self.frames_in = 0
        self.send_media = True
        self.runner: web.AppRunner | None = None
        self.base_url = ""
        self._muted: list[Any] = []

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/v1/realtime/calls", self._calls)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        host, port = self.runner.addresses[0][:2]
        self.base_url = f"http://{host}:{port}"

    async def _calls(self, request: web.Request) -> web.Response:
        offer = await request.text()
        self.requests.append({"headers": dict(request.headers), "query": dict(request.query)})
        pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        self.pcs.append(pc)

        @pc.on("datachannel")  # type: ignore[untyped-decorator,unused-ignore]
        def _on_channel(channel: Any) -> None:
            @channel.on("message")  # type: ignore[untyped-decorator,unused-ignore]
            def _on_message(message: str | bytes) -> None:
                self.received.append(message)
                event = json.loads(message)
                if event.get("type") == "test.send_garbage":
                    channel.send("this is {not json")
                    channel.send("[1, 2, 3]")
                else:
                    channel.send(json.dumps({"type": "test.echo", "event": event}))

        @pc.on("track")  # type: ignore[untyped-decorator,unused-ignore]
        def _on_track(track: MediaStreamTrack) -> None:
            self._spawn(self._drain(track))

        with loopback():
            await pc.setRemoteDescription(RTCSessionDescription(sdp=offer, type="offer"))
            if self.send_media:
                track = ToneSource(440.0)
                self.tracks.append(track)
                pc.addTrack(track)
            answer = await pc.createAnswer()
            await pc.setLocalDescription(answer)
        n = len(self.pcs)
        return web.Response(
            status=201,
            text=pc.localDescription.sdp,
            content_type="application/sdp",
            headers={"Location": f"/v1/realtime/calls/rtc_test_{n}"},
        )

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _drain(self, track: MediaStreamTrack) -> None:
        with contextlib.suppress(MediaStreamError):
            while True:
                await track.recv()
                self.frames_in += 1

    def blackhole(self, pc: RTCPeerConnection) -> None:
        """Drop everything ``pc`` sends (media, RTCP, SCTP, STUN): the path looks dead to us."""
        self._muted.extend(_private.mute_datagrams(pc))
        assert self._muted, "datagram_mute capability lost"

    def restore(self) -> None:
        _private.unmute_datagrams(self._muted)
        self._muted.clear()

    def mute_media(self, pc: RTCPeerConnection) -> None:
        """Stop sending RTP like a browser's ``replaceTrack(null)`` (RTCP, ICE, SCTP go on)."""
        for sender in pc.getSenders():
            if sender.kind == "audio":
                sender.replaceTrack(None)

    async def close_calls(self) -> None:
        self.restore()
        pcs, self.pcs = self.pcs, []
        for pc in pcs:
            await pc.close()
        for track in self.tracks:
            track.stop()
        self.tracks.clear()
        for task in list(self.tasks):
            task.cancel()
        if self.tasks:
            await asyncio.wait(set(self.tasks))

    async def stop(self) -> None:
        await self.close_calls()
        if self.runner is not None:
            await self.runner.cleanup()


@pytest.fixture
async def answerer() -> AsyncIterator[Answerer]:
    server = Answerer()
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


class RecordingSink:
    """TransportSink recording signals and events, with waiters."""

    def __init__(self, clock: Any = time.monotonic) -> None:
        self.clock = clock
        self.signals: list[tuple[TransportSignal, str, float]] = []
        self.events: list[Mapping[str, Any]] = []
        self._changed = asyncio.Event()

    def signal(self, signal: TransportSignal, detail: str = "") -> None:
        self.signals.append((signal, detail, self.clock()))
        self._changed.set()

    def server_event(self, event: Mapping[str, Any]) -> None:
        self.events.append(event)
        self._changed.set()

    def kinds(self) -> list[TransportSignal]:
        return [s for s, _, _ in self.signals]

    def at(self, signal: TransportSignal) -> float:
        return next(t for s, _, t in self.signals if s is signal)

    async def wait_for(self, predicate: Any, timeout: float = 10.0) -> None:
        async def loop() -> None:
            while not predicate():
                self._changed.clear()
                await self._changed.wait()

        await asyncio.wait_for(loop(), timeout)

    async def wait_signal(self, signal: TransportSignal, timeout: float = 10.0) -> None:
        await self.wait_for(lambda: signal in self.kinds(), timeout)


async def poll_until(predicate: Any, timeout: float = 10.0, step: float = 0.05) -> None:
    """Poll a condition that is not reported through the sink (counters)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError("condition not met in time")
        await asyncio.sleep(step)


def make_transport(answerer: Answerer, **kwargs: Any) -> tuple[AiortcTransport, HttpSignaling]:
    signaling = HttpSignaling(answerer.base_url, "sk-test-key", model="gpt-realtime")
    kwargs.setdefault("host_addresses", LOOPBACK)
    return AiortcTransport(signaling, **kwargs), signaling


@contextlib.asynccontextmanager
async def connected(
    answerer: Answerer, **kwargs: Any
) -> AsyncIterator[tuple[AiortcTransport, RecordingSink]]:
    transport, signaling = make_transport(answerer, **kwargs)
    sink = RecordingSink()
    try:
        await transport.open(sink)
        await sink.wait_signal(TransportSignal.CHANNEL_OPEN)
        yield transport, sink
    finally:
        await transport.close()
        await signaling.aclose()


# ------------------------------------------------------------------------------------------
# Tests
# ------------------------------------------------------------------------------------------


async def test_is_a_transport(answerer: Answerer) -> None:
    transport, signaling = make_transport(answerer)
    assert isinstance(transport, Transport)
    await signaling.aclose()


async def test_connects_and_round_trips_json(answerer: Answerer) -> None:
    async with connected(answerer) as (transport, sink):
        await sink.wait_signal(TransportSignal.CONNECTED)
        assert sink.kinds()[:2] in (
            [TransportSignal.CONNECTED, TransportSignal.CHANNEL_OPEN],
            [TransportSignal.CHANNEL_OPEN, TransportSignal.CONNECTED],
        )
        assert transport.call_id == "rtc_test_1"
        assert transport.connection_state == "connected"
        # wire format of the signaling request
        assert answerer.requests[0]["headers"]["Authorization"] == "Bearer sk-test-key"
        assert answerer.requests[0]["headers"]["Content-Type"] == "application/sdp"
        assert answerer.requests[0]["query"] == {"model": "gpt-realtime"}

        event = {"type": "session.update", "session": {"instructions": "héllo"}}
        transport.send_event(event)
        await sink.wait_for(lambda: any(e.get("type") == "test.echo" for e in sink.events))
        assert json.loads(answerer.received[0]) == event
        echo = next(e for e in sink.events if e["type"] == "test.echo")
        assert echo["event"] == event
        assert not [s for s in sink.kinds() if s is TransportSignal.FAILED]
    assert transport.connection_state == "idle"


async def test_invalid_server_messages_are_reported(answerer: Answerer) -> None:
    async with connected(answerer) as (transport, sink):
        transport.send_event({"type": "test.send_garbage"})
        await sink.wait_for(
            lambda: sum(e.get("type") == INVALID_MESSAGE_EVENT for e in sink.events) >= 2
        )
        bad_json, not_object = [e for e in sink.events if e["type"] == INVALID_MESSAGE_EVENT]
        assert bad_json["raw"] == "this is {not json"
        assert "invalid JSON" in bad_json["error"]
        assert not_object["raw"] == "[1, 2, 3]"
        assert "list" in not_object["error"]


async def test_send_event_requires_open_channel(answerer: Answerer) -> None:
    transport, signaling = make_transport(answerer)
    with pytest.raises(ChannelNotOpenError) as info:
        transport.send_event({"type": "x"})
    assert info.value.source is ErrorSource.CLIENT
    assert "not created" in info.value.message
    await signaling.aclose()


async def test_audio_flows_both_ways(answerer: Answerer) -> None:
    sinks: list[NullSink] = []

    def sink_factory() -> NullSink:
        sinks.append(NullSink())
        return sinks[-1]

    async with connected(answerer, audio_source=SilenceSource, audio_sink=sink_factory) as (
        transport,
        _,
    ):
        await poll_until(lambda: bool(sinks) and sinks[0].frames > 10 and answerer.frames_in > 10)
        metrics = await transport.metrics()
        assert metrics is not None
        assert metrics.packets_received > 0
        assert metrics.jitter_ms is not None and 0 <= metrics.jitter_ms < 100
    assert sinks[0].closed
    assert sinks[0].seconds > 0.1


async def test_metrics_none_when_not_connected(answerer: Answerer) -> None:
    transport, signaling = make_transport(answerer)
    assert await transport.metrics() is None
    await signaling.aclose()


async def test_no_false_disconnect_during_normal_flow(answerer: Answerer) -> None:
    async with connected(answerer, audio_source=SilenceSource) as (_, sink):
        await asyncio.sleep(3.0)  # observation window, not a production delay
        assert TransportSignal.ICE_DISCONNECTED not in sink.kinds()
        assert TransportSignal.FAILED not in sink.kinds()


# Liveness timings (ProbeTiming) far from the assertions' bounds: the bounds hold on a loaded
# machine, and the event ORDER (disconnected before failed, recovered before failed) is what
# the tests check.
_SLOW_FAIL = ProbeTiming(interval=0.1, probe_after=0.2, dead_after=0.5, fail_after=30.0)


async def test_dead_path_reported_within_a_second_then_recovered(answerer: Answerer) -> None:
    """Everything from the remote stops (media, RTCP, SCTP, STUN answers): probes go
    unanswered -> ICE_DISCONNECTED; traffic back -> ICE_RECOVERED (no FAILED in between)."""
    async with connected(answerer, audio_source=SilenceSource, probe=_SLOW_FAIL) as (t, sink):
        await sink.wait_signal(TransportSignal.CONNECTED)
        await asyncio.sleep(0.3)  # let media flow first
        await poll_until(lambda: t.liveness is not None and t.liveness.rtt is not None)
        before = t.liveness.probes_answered  # type: ignore[union-attr]
        answerer.blackhole(answerer.pcs[0])
        cut = time.monotonic()
        await sink.wait_signal(TransportSignal.ICE_DISCONNECTED, timeout=3.0)
        detected = sink.at(TransportSignal.ICE_DISCONNECTED) - cut
        print(f"\ndead path noticed after {detected * 1000:.0f} ms")
        assert detected < 1.0, f"dead path noticed after {detected:.2f}s"
        stats = t.liveness
        assert stats is not None and stats.probing
        assert stats.probes_sent >= 2 and stats.signals == ("ice_disconnected",)
        answered = stats.probes_answered
        answerer.restore()
        await sink.wait_signal(TransportSignal.ICE_RECOVERED, timeout=3.0)
        assert sink.kinds().count(TransportSignal.ICE_DISCONNECTED) == 1
        assert TransportSignal.FAILED not in sink.kinds()
        assert answered == before  # while the path was dead, no probe came back


async def test_dead_path_fails_fast(answerer: Answerer) -> None:
    """A path that stays dead: ICE_DISCONNECTED, then FAILED (restart now, no grace period),
    both well before aiortc's own consent expiry (~30 s)."""
    async with connected(answerer, audio_source=SilenceSource) as (transport, sink):
        await sink.wait_signal(TransportSignal.CONNECTED)
        await asyncio.sleep(0.3)
        await poll_until(lambda: transport.liveness is not None and transport.liveness.rtt)
        answerer.blackhole(answerer.pcs[0])
        cut = time.monotonic()
        await sink.wait_signal(TransportSignal.FAILED, timeout=5.0)
        assert sink.kinds()[-2:] == [TransportSignal.ICE_DISCONNECTED, TransportSignal.FAILED]
        failed = sink.at(TransportSignal.FAILED) - cut
        print(f"\ndead path declared failed after {failed * 1000:.0f} ms")
        assert failed < 2.0, failed
        detail = next(d for s, d, _ in sink.signals if s is TransportSignal.FAILED)
        assert "STUN probe" in detail
        stats = transport.liveness
        assert stats is not None and stats.state == "failed"
        assert stats.probes_answered == 1  # the calibration probe, before the cut


async def test_muted_remote_is_silent_not_dead(answerer: Answerer) -> None:
    """The remote stops its RTP (``replaceTrack(None)``) but stays connected: the probes are
    answered (*remote silent, path alive*) and no liveness signal is raised."""
    async with connected(answerer, audio_source=SilenceSource, probe=_SLOW_FAIL) as (t, sink):
        await sink.wait_signal(TransportSignal.CONNECTED)
        await asyncio.sleep(0.3)
        answerer.mute_media(answerer.pcs[0])
        await poll_until(lambda: t.liveness is not None and t.liveness.silent_alive >= 3)
        stats = t.liveness
        assert stats is not None and stats.probes_answered >= 3
        assert set(sink.kinds()) == {TransportSignal.CONNECTED, TransportSignal.CHANNEL_OPEN}
        assert stats.signals == ()


async def test_without_probes_a_muted_remote_looks_dead(answerer: Answerer) -> None:
    """The control for the test above: with probing off (stall detection, the fallback when
    the capability is lost) the same mute is taken for a dead path."""
    async with connected(
        answerer, audio_source=SilenceSource, probe=None, liveness_interval=0.05,
        liveness_stall=0.3,
    ) as (transport, sink):
        await sink.wait_signal(TransportSignal.CONNECTED)
        await asyncio.sleep(0.3)
        answerer.mute_media(answerer.pcs[0])
        await sink.wait_signal(TransportSignal.ICE_DISCONNECTED, timeout=5.0)
        stats = transport.liveness
        assert stats is not None and not stats.probing and stats.probes_sent == 0


async def test_unexpected_remote_close_is_failed(answerer: Answerer) -> None:
    async with connected(answerer) as (transport, sink):
        await answerer.pcs[0].close()
        await sink.wait_signal(TransportSignal.FAILED, timeout=5.0)
        failures = [d for s, d, _ in sink.signals if s is TransportSignal.FAILED]
        assert len(failures) == 1
        assert "remote" in failures[0]
        with pytest.raises(ChannelNotOpenError):
            transport.send_event({"type": "x"})


async def test_own_close_reports_nothing(answerer: Answerer) -> None:
    async with connected(answerer) as (transport, sink):
        pass
    await transport.close()  # idempotent
    await asyncio.sleep(0.2)
    assert TransportSignal.FAILED not in sink.kinds()


async def test_signaling_error_propagates_and_cleans_up(answerer: Answerer) -> None:
    signaling = HttpSignaling("http://127.0.0.1:9", "sk-test")  # discard port: refused
    transport = AiortcTransport(signaling, host_addresses=LOOPBACK)
    before = _live_peer_connections()
    with pytest.raises(VoiceError) as info:
        await transport.open(RecordingSink())
    assert info.value.severity is Severity.TRANSIENT
    assert transport.connection_state == "idle"
    assert _live_peer_connections() <= before
    await signaling.aclose()


async def test_cancelled_open_cleans_up(answerer: Answerer) -> None:
    gate = asyncio.Event()

    class SlowSignaling:
        async def exchange(self, offer_sdp: str) -> Any:
            gate.set()
            await asyncio.sleep(30)

    transport = AiortcTransport(SlowSignaling(), host_addresses=LOOPBACK)
    baseline_tasks = len(asyncio.all_tasks())
    task = asyncio.ensure_future(transport.open(RecordingSink()))
    await gate.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert transport.connection_state == "idle"
    assert len(asyncio.all_tasks()) <= baseline_tasks
    assert _live_peer_connections() == 0


async def test_reopen_after_close(answerer: Answerer) -> None:
    transport, signaling = make_transport(answerer)
    for _ in range(2):
        sink = RecordingSink()
        await transport.open(sink)
        await sink.wait_signal(TransportSignal.CHANNEL_OPEN)
        await transport.close()
    assert answerer.requests and len(answerer.requests) == 2
    await signaling.aclose()


def _live_peer_connections() -> int:
    gc.collect()
    return sum(
        1
        for o in gc.get_objects()
        if isinstance(o, RTCPeerConnection) and o.signalingState != "closed"
    )


def _all_peer_connections() -> int:
    gc.collect()
    return sum(1 for o in gc.get_objects() if isinstance(o, RTCPeerConnection))


def _snapshot() -> dict[str, int]:
    gc.collect()
    return {
        "fds": len(os.listdir("/proc/self/fd")),
        "tasks": len(asyncio.all_tasks()),
        # the loop's default executor (aiortc encodes audio there) grows lazily up to its bound;
        # every other thread (e.g. aiortc's per-receiver decoder thread) must be gone
        "threads": sum(1 for t in threading.enumerate() if not t.name.startswith("asyncio_")),
        "executor_threads": sum(1 for t in threading.enumerate() if t.name.startswith("asyncio_")),
        "peer_connections": _all_peer_connections(),
    }


async def _cycle(answerer: Answerer, transport: AiortcTransport) -> float:
    sink = RecordingSink()
    start = time.monotonic()
    await transport.open(sink)
    await sink.wait_signal(TransportSignal.CHANNEL_OPEN)
    elapsed = time.monotonic() - start
    await transport.close()
    await answerer.close_calls()
    return elapsed


@pytest.mark.slow
async def test_no_leak_over_connect_close_cycles(answerer: Answerer) -> None:
    transport, signaling = make_transport(answerer, audio_source=SilenceSource)
    for _ in range(3):  # warm-up: executor threads, caches, aiohttp connection pool
        await _cycle(answerer, transport)
    await asyncio.sleep(0.2)
    before = _snapshot()
    started = time.monotonic()
    times = [await _cycle(answerer, transport) for _ in range(LEAK_CYCLES)]
    await asyncio.sleep(0.2)
    after = _snapshot()
    await signaling.aclose()
    print(
        f"\n{LEAK_CYCLES} cycles in {time.monotonic() - started:.1f}s; connect (open -> "
        f"CHANNEL_OPEN) median {statistics.median(times) * 1000:.0f} ms, "
        f"max {max(times) * 1000:.0f} ms; before {before}; after {after}"
    )
    # Tolerances: fds +2 (aiohttp keep-alive socket churn); executor threads up to the default
    # executor's bound; other threads, tasks and peer connections: none.
    assert after["fds"] <= before["fds"] + 2, (before, after)
    assert after["tasks"] <= before["tasks"], (before, after)
    assert after["threads"] <= before["threads"], (before, after)
    assert after["executor_threads"] <= min(32, (os.cpu_count() or 1) + 4), (before, after)
    assert after["peer_connections"] <= before["peer_connections"], (before, after)
    assert after["peer_connections"] == 0, after


# ------------------------------------------------------------------------------------------
# Audio sources and sinks (no network)
# ------------------------------------------------------------------------------------------


def _fast_clock() -> Any:
    """A clock that jumps 1 s per reading: paced sources never sleep."""
    ticks = itertools.count()
    return lambda: float(next(ticks))


def _pcm(frame: Any) -> array.array[int]:
    samples = array.array("h")
    samples.frombytes(bytes(frame.planes[0])[: frame.samples * 2 * len(frame.layout.channels)])
    return samples


def _dbfs(samples: array.array[int]) -> float:
    rms = math.sqrt(sum(s * s for s in samples) / len(samples))
    return 20 * math.log10(max(rms, 1e-9) / 32768)


async def test_tone_source_frames() -> None:
    tone = ToneSource(1000.0, seconds=0.04, clock=_fast_clock())
    frames = [await tone.recv() for _ in range(3)]
    assert [f.samples for f in frames] == [960, 960, 960]
    assert [f.pts for f in frames] == [0, 960, 1920]
    assert all(f.sample_rate == 48000 and f.layout.name == "mono" for f in frames)
    assert _dbfs(_pcm(frames[0])) == pytest.approx(-15.0, abs=0.5)  # -12 dBFS peak sine
    assert max(_pcm(frames[2])) == 0  # after `seconds`: silence
    tone.stop()
    with pytest.raises(MediaStreamError):
        await tone.recv()


async def test_sources_are_paced_in_real_time() -> None:
    silence = SilenceSource()
    start = time.monotonic()
    for _ in range(6):
        await silence.recv()
    assert 0.09 <= time.monotonic() - start < 0.3  # 5 frame periods of 20 ms
    silence.stop()


async def test_utterance_is_silence_voice_silence() -> None:
    source = UtteranceSource(
        lead_silence=0.2, speech_seconds=0.4, trail_silence=0.2, clock=_fast_clock()
    )
    levels = [_dbfs(_pcm(await source.recv())) for _ in range(45)]  # 0.9 s
    assert max(levels[:10]) < -90  # 0.0-0.2 s silence
    voiced = levels[11:29]  # 0.22-0.58 s (edges excluded)
    assert min(voiced) > -30 and statistics.mean(voiced) == pytest.approx(-20, abs=3)
    assert max(levels[31:]) < -90
    assert source.voiced_interval == (0.2, 0.6)
    source.stop()


def _write_wav(path: Any, *, rate: int, channels: int, seconds: float, width: int = 2) -> None:
    n = int(rate * seconds)
    with wave.open(str(path), "wb") as wf:
        wf.setnchannels(channels)
        wf.setsampwidth(width)
        wf.setframerate(rate)
        frames = bytearray()
        for i in range(n):
            value = int(8000 * math.sin(2 * math.pi * 440 * i / rate))
            sample = (
                value.to_bytes(2, "little", signed=True)
                if width == 2
                else bytes([value // 256 + 128])
            )
            frames += sample * channels
        wf.writeframes(bytes(frames))


async def test_wav_file_source_resamples_and_ends_with_silence(tmp_path: Any) -> None:
    path = tmp_path / "in.wav"
    _write_wav(path, rate=16000, channels=2, seconds=0.1)
    source = WavFileSource(path, clock=_fast_clock())
    assert source.duration == pytest.approx(0.1, abs=0.005)
    frames = [await source.recv() for _ in range(7)]
    assert all(f.sample_rate == 48000 and f.samples == 960 for f in frames)
    assert _dbfs(_pcm(frames[1])) > -30
    assert max(_pcm(frames[6])) == 0
    source.stop()


async def test_wav_file_source_loops(tmp_path: Any) -> None:
    path = tmp_path / "in.wav"
    _write_wav(path, rate=48000, channels=1, seconds=0.03)
    source = WavFileSource(path, loop=True, clock=_fast_clock())
    frames = [await source.recv() for _ in range(5)]
    assert all(_dbfs(_pcm(f)) > -30 for f in frames)
    source.stop()


def test_bad_wav_files(tmp_path: Any) -> None:
    with pytest.raises(AudioFileError, match="not found"):
        WavFileSource(tmp_path / "missing.wav")
    junk = tmp_path / "junk.wav"
    junk.write_bytes(b"definitely not a RIFF file")
    with pytest.raises(AudioFileError, match="PCM WAV"):
        WavFileSource(junk)
    with pytest.raises(AudioFileError):
        WavRecorder(tmp_path / "no" / "such" / "dir.wav")


async def test_wav_recorder_and_null_sink(tmp_path: Any) -> None:
    path = tmp_path / "out.wav"
    recorder = WavRecorder(path)
    null = NullSink()
    tone = ToneSource(clock=_fast_clock())
    for _ in range(10):
        frame = await tone.recv()
        await recorder.write(frame)
        await null.write(frame)
    # a stereo frame, as aiortc's Opus decoder delivers them
    stereo = av.AudioFrame(format="s16", layout="stereo", samples=960)
    stereo.planes[0].update(bytes(960 * 4))
    stereo.sample_rate = 48000
    await recorder.write(stereo)
    recorder.close()
    recorder.close()  # idempotent
    tone.stop()
    assert null.frames == 10
    assert null.seconds == pytest.approx(0.2)
    assert recorder.frames == 11
    with wave.open(str(path), "rb") as wf:
        assert (wf.getnchannels(), wf.getsampwidth(), wf.getframerate()) == (1, 2, 48000)
        assert wf.getnframes() == pytest.approx(11 * 960, abs=960)


def test_parse_server_message() -> None:
    assert parse_server_message('{"type": "x", "a": 1}') == {"type": "x", "a": 1}
    assert parse_server_message(b'{"type": "y"}') == {"type": "y"}
    bad = parse_server_message("x" * 500)
    assert bad["type"] == INVALID_MESSAGE_EVENT and len(bad["raw"]) == 200
    assert parse_server_message(b"\xff\xfe")["type"] == INVALID_MESSAGE_EVENT
    assert parse_server_message("null")["type"] == INVALID_MESSAGE_EVENT


def test_invalid_configuration() -> None:
    signaling = HttpSignaling("http://127.0.0.1:9", "k")
    with pytest.raises(ConfigError, match="liveness_stall"):
        AiortcTransport(signaling, liveness_interval=1.0, liveness_stall=0.5)
    with pytest.raises(ConfigError, match="relay_only"):
        AiortcTransport(signaling, relay_only=True)
    with pytest.raises(ValueError, match="not an IP address"):
        AiortcTransport(signaling, host_addresses=["localhost"])


def test_ice_servers_always_an_explicit_list() -> None:
    signaling = HttpSignaling("http://127.0.0.1:9", "k")
    assert AiortcTransport(signaling)._configuration().iceServers == []
    turn = IceServer("turn:127.0.0.1:3478", username="u", credential="c")
    config = AiortcTransport(signaling, ice_servers=[turn], relay_only=True)._configuration()
    assert [s.urls for s in config.iceServers or ()] == [["turn:127.0.0.1:3478"]]
    assert config.iceTransportPolicy.value == "relay"


async def test_open_cancelled_by_anyio_scope_cleans_up(answerer: Answerer) -> None:
    """The runtime cancels open() with an anyio cancel scope (level-triggered cancellation)."""
    release = asyncio.Event()

    class StuckSignaling:
        async def exchange(self, offer_sdp: str) -> Any:
            await release.wait()

    transport = AiortcTransport(StuckSignaling(), host_addresses=LOOPBACK)
    baseline_tasks = len(asyncio.all_tasks())
    with anyio.move_on_after(0.3) as scope:
        await transport.open(RecordingSink())
    assert scope.cancelled_caught
    assert transport.connection_state == "idle"
    assert len(asyncio.all_tasks()) <= baseline_tasks
    assert _live_peer_connections() == 0


async def test_close_under_cancelled_scope_still_completes(answerer: Answerer) -> None:
    transport, signaling = make_transport(answerer, audio_source=SilenceSource)
    sink = RecordingSink()
    await transport.open(sink)
    await sink.wait_signal(TransportSignal.CHANNEL_OPEN)
    with anyio.CancelScope() as scope:
        scope.cancel()
        await transport.close()  # shielded inside: must still release everything
    assert transport.connection_state == "idle"
    assert _live_peer_connections() <= len(answerer.pcs)  # only the answerer's remain
    await signaling.aclose()


async def test_close_during_open_aborts_open(answerer: Answerer) -> None:
    entered = asyncio.Event()
    release = asyncio.Event()
    inner = HttpSignaling(answerer.base_url, "k")

    class GatedSignaling:
        async def exchange(self, offer_sdp: str) -> Any:
            entered.set()
            await release.wait()
            return await inner.exchange(offer_sdp)

    transport = AiortcTransport(GatedSignaling(), host_addresses=LOOPBACK)
    opening = asyncio.ensure_future(transport.open(RecordingSink()))
    await entered.wait()
    await transport.close()
    release.set()
    with pytest.raises(VoiceError) as info:
        await opening
    assert info.value.code == "closed_during_open"
    assert transport.connection_state == "idle"
    assert _live_peer_connections() == len(answerer.pcs)  # only the answerer's own
    await inner.aclose()
