"""The OpenAI Live client end to end: LiveConfig, LiveSignaling, the graceful close, the audio
activity gates and ``connect``/``demo --protocol live``, against the local peer (real aiortc,
real HTTP, real audio: espeak-ng speech and the peer's replies)."""

from __future__ import annotations

import array
import json
import re
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

import anyio
import av
import pytest
from aiohttp import web

from fsm_voice.errors import ConfigError, Severity, VoiceError
from fsm_voice.live import LiveConfig, live_session
from fsm_voice.peer.server import RealtimePeer
from fsm_voice.policy import IcePolicy, MonitorPolicy, RetryPolicy, SessionPolicy
from fsm_voice.ports import TransportSignal
from fsm_voice.session import VoiceSession
from fsm_voice.signaling.live import LiveSignaling
from fsm_voice.terminal import Transcripts
from fsm_voice.transport import NullSink, SilenceSource, ToneSource, UtteranceSource
from fsm_voice.transport.activity import ActivityPolicy, EnergyGate, frame_level, frame_seconds
from fsm_voice.transport.aiortc_transport import AiortcTransport, Finalisation, GracefulClose
from fsm_voice.transport.audio import FRAME_SAMPLES, SAMPLE_RATE, WavInput
from tests.test_cli import finish, lines_until, start, status_is
from tests.test_terminal import SENTENCE, _need, sound_span

pytestmark = pytest.mark.anyio

FAST = SessionPolicy(
    retry=RetryPolicy(base_delay=0.2, factor=2.0, max_attempts=3, jitter=0.0, stable_after=0.5),
    ice=IcePolicy(disconnected_grace=1.0, connect_timeout=8.0, restart_timeout=8.0),
    monitor=MonitorPolicy(metrics_interval=0.5, health_interval=5.0),
)
BOUND = 60.0  # a bound against hanging on a loaded 2-core machine, not a speed claim


def same_usage(seconds: float | None) -> Any:
    """The usage the client was told equals the peer's record, to the millisecond the peer
    rounds to (it reads its clock once for the event and once for the record)."""
    assert seconds is not None
    return pytest.approx(seconds, abs=0.002)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="module")
def speech(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The sentence by espeak-ng, with 1 s of silence before and 2 s after (sox)."""
    work = tmp_path_factory.mktemp("live-speech")
    raw, padded = work / "raw.wav", work / "speech.wav"
    subprocess.run([_need("espeak-ng"), "-g", "15", "-w", str(raw), SENTENCE], check=True)
    subprocess.run([_need("sox"), str(raw), str(padded), "pad", "1.0", "2.0"], check=True)
    return padded


def frames_of(path: Path) -> list[av.AudioFrame]:
    pcm = WavInput(path)._pcm
    out = []
    for i in range(0, len(pcm) - FRAME_SAMPLES + 1, FRAME_SAMPLES):
        f = av.AudioFrame(format="s16", layout="mono", samples=FRAME_SAMPLES)
        f.planes[0].update(array.array("h", pcm[i:i + FRAME_SAMPLES]).tobytes())
        f.sample_rate = SAMPLE_RATE
        out.append(f)
    return out


def session_for(peer: RealtimePeer, *, speak: bool = False, source: Any = None,
                config: LiveConfig | None = None, **kw: Any) -> VoiceSession:
    if source is None:
        source = (lambda: UtteranceSource(lead_silence=0.3, speech_seconds=1.0,
                                          trail_silence=3.0, repeat=True)) if speak \
            else SilenceSource
    return live_session(peer.base_url, "sk-live-test", config=config, policy=FAST,
                        audio_source=source, audio_sink=NullSink, **kw)


def finalisation(s: VoiceSession) -> Finalisation | None:
    assert isinstance(s.transport, AiortcTransport)
    return s.transport.last_finalisation


# ---------------------------------------------------------------------------- configuration


def test_live_config_to_session_and_strict_values() -> None:
    assert LiveConfig().to_session() == {"model": "gpt-live-1"}
    assert LiveConfig(model="gpt-live-1.1", instructions="Be brief.", voice="cedar",
                      store=True).to_session() == {
        "model": "gpt-live-1.1", "instructions": "Be brief.",
        "audio": {"output": {"voice": "cedar"}}, "store": True}
    for bad in ({"model": ""}, {"model": 1}, {"voice": ""}, {"voice": 3}, {"store": "yes"},
                {"instructions": 5}):
        with pytest.raises(ConfigError) as info:
            LiveConfig(**bad)
        assert f"LiveConfig.{next(iter(bad))}" in str(info.value)


def test_bad_signaling_and_transport_options_are_config_errors() -> None:
    with pytest.raises(ConfigError, match=r"config\.model"):
        LiveSignaling("http://127.0.0.1:9", "sk-x", {"instructions": "no model"})
    with pytest.raises(ConfigError, match=r"config\.input"):
        LiveSignaling("http://127.0.0.1:9", "sk-x", {"model": "gpt-live-1", "input": []})
    with pytest.raises(ConfigError, match="base_url"):
        LiveSignaling("ftp://x", "sk-x", LiveConfig())
    with pytest.raises(ConfigError, match=r"GracefulClose\.timeout"):
        GracefulClose(timeout=0)
    with pytest.raises(ConfigError, match=r"ActivityPolicy\.threshold_dbfs"):
        ActivityPolicy(threshold_dbfs=3)
    with pytest.raises(ConfigError, match=r"ActivityPolicy\.hangover"):
        ActivityPolicy(hangover=-1)


# ----------------------------------------------------------------------------- audio gates


def test_gate_follows_real_speech_with_hangover(speech: Path) -> None:
    """espeak-ng's sentence (word gaps of 150 ms) opens the gate once near its onset and closes
    it one hangover after its end, both as sox measures them (the README's defaults)."""
    policy = ActivityPolicy()
    assert (policy.threshold_dbfs, policy.attack, policy.hangover) == (-45.0, 0.06, 0.6)
    gate = EnergyGate(policy, TransportSignal.SPEECH_STARTED, TransportSignal.SPEECH_STOPPED)
    changes = []
    for f in frames_of(speech):
        signal = gate.feed(frame_level(f), frame_seconds(f))
        if signal is not None:
            changes.append((signal, gate.position))
    onset, end = sound_span(speech)
    assert [c for c, _ in changes] == [TransportSignal.SPEECH_STARTED,
                                       TransportSignal.SPEECH_STOPPED], changes
    assert abs(changes[0][1] - (onset + policy.attack)) < 0.1, (changes, onset)
    assert abs(changes[1][1] - (end + policy.hangover)) < 0.1, (changes, end)


def test_silence_and_a_click_do_not_open_the_gate() -> None:
    gate = EnergyGate(ActivityPolicy(), TransportSignal.AUDIO_STARTED,
                      TransportSignal.AUDIO_STOPPED)
    silent = av.AudioFrame(format="s16", layout="stereo", samples=FRAME_SAMPLES)
    silent.planes[0].update(bytes(4 * FRAME_SAMPLES))
    silent.sample_rate = SAMPLE_RATE
    click = av.AudioFrame(format="s16", layout="mono", samples=FRAME_SAMPLES // 4)  # 5 ms
    click.planes[0].update(array.array("h", [20000, -20000] * (FRAME_SAMPLES // 8)).tobytes())
    click.sample_rate = SAMPLE_RATE
    assert frame_level(silent) == -120.0 and frame_level(click) > -10
    assert [gate.feed(frame_level(f), frame_seconds(f))
            for f in (silent, click, silent, silent)] == [None] * 4
    assert not gate.open


# ------------------------------------------------------------------ signaling error shapes


class Upstream:
    """A real HTTP server answering POST /v1/live/sessions with a scripted body."""

    def __init__(self) -> None:
        self.status = 201
        self.body: str = ""
        self.headers: dict[str, str] = {}
        self.received: list[Mapping[str, Any]] = []
        self.auth: list[tuple[str | None, str | None]] = []

    async def handle(self, request: web.Request) -> web.Response:
        self.received.append(await request.json())
        self.auth.append((request.headers.get("Authorization"),
                          request.headers.get("X-Client-Id")))
        return web.Response(status=self.status, text=self.body, headers=self.headers,
                            content_type="application/json")


@pytest.fixture
async def upstream() -> AsyncIterator[tuple[Upstream, str]]:
    srv = Upstream()
    app = web.Application()
    app.router.add_post("/v1/live/sessions", srv.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield srv, f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


OFFER = "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n"


@pytest.mark.parametrize(("body", "why"), [
    ("not json", "is not JSON"),
    ('{"session": {}, "transport": {"type": "webrtc", "sdp": "v=0"}}', "no session.id"),
    ('{"session": {"id": "live_1"}}', "no transport object"),
    ('{"session": {"id": "live_1"}, "transport": {"type": "sip", "sdp": "v=0"}}',
     "not 'webrtc'"),
    ('{"session": {"id": "live_1"}, "transport": {"type": "webrtc", "sdp": "hello"}}',
     "is not SDP"),
])
async def test_malformed_answer_is_a_typed_recoverable_error(
        upstream: tuple[Upstream, str], body: str, why: str) -> None:
    srv, base = upstream
    srv.body = body
    seeded = [{"type": "message", "role": "user", "content": [{"type": "input_text",
                                                                "text": "hi"}]}]
    async with LiveSignaling(base, "sk-x", LiveConfig(instructions="x"),
                             input_provider=lambda: seeded) as sig:
        with pytest.raises(VoiceError) as info:
            await sig.exchange(OFFER)
    assert info.value.code == "invalid_answer" and why in info.value.message
    assert info.value.severity is Severity.RECOVERABLE
    assert srv.received == [{"session": {"model": "gpt-live-1", "instructions": "x",
                                         "input": seeded},
                             "transport": {"type": "webrtc", "sdp": OFFER}}]


@pytest.mark.parametrize(("status", "body", "code", "severity", "retry_after"), [
    (400, '{"error": {"type": "invalid_request_error", "code": "unknown_parameter", '
          '"message": "Unknown parameter: session.voice", "param": "session.voice"}}',
     "unknown_parameter", Severity.FATAL, None),
    (400, "{}", "invalid_config", Severity.FATAL, None),
    (401, '{"error": {"type": "invalid_request_error", "code": "invalid_api_key", '
          '"message": "bad key"}}', "invalid_api_key", Severity.FATAL, None),
    (403, "", "http_forbidden", Severity.FATAL, None),
    (429, '{"error": {"type": "requests", "code": "rate_limit_exceeded", "message": "slow"}}',
     "rate_limit_exceeded", Severity.RECOVERABLE, 2.0),
    (503, "", "http_service_unavailable", Severity.RECOVERABLE, 2.0),
])
async def test_refusals_are_classified(upstream: tuple[Upstream, str], status: int, body: str,
                                       code: str, severity: Severity,
                                       retry_after: float | None) -> None:
    srv, base = upstream
    srv.status, srv.body, srv.headers = status, body, {"Retry-After": "2"}
    async with LiveSignaling(base, "sk-x", LiveConfig()) as sig:
        with pytest.raises(VoiceError) as info:
            await sig.exchange(OFFER)
    err = info.value
    assert (err.code, err.severity, err.retry_after, err.http_status) == (
        code, severity, retry_after, status)


async def test_through_a_broker_only_the_input_goes_with_the_client_id(
        upstream: tuple[Upstream, str]) -> None:
    """Proxy mode: the broker sets the configuration; the client sends its offer, the seeded
    input when there is one, its secret as bearer and its id as X-Client-Id."""
    srv, base = upstream
    srv.body = "not json"  # the answer does not matter here
    history: list[list[dict[str, Any]]] = [[], [{"type": "message", "role": "user",
                                                 "content": [{"type": "input_text",
                                                              "text": "hi"}]}]]
    async with LiveSignaling(base, "app-secret", None, client_id="app-1",
                             input_provider=history.pop) as sig:
        for _ in range(2):
            with pytest.raises(VoiceError):
                await sig.exchange(OFFER)
    transport = {"type": "webrtc", "sdp": OFFER}
    assert srv.received == [
        {"session": {"input": [{"type": "message", "role": "user",
                                "content": [{"type": "input_text", "text": "hi"}]}]},
         "transport": transport},
        {"transport": transport}]
    assert srv.auth == [("Bearer app-secret", "app-1")] * 2
    with pytest.raises(ConfigError, match="client_id"):
        LiveSignaling(base, "app-secret", None, client_id="app 1")
    with pytest.raises(ConfigError, match="broker_client_id"):
        live_session(base, "app-secret", config=LiveConfig(), broker_client_id="app-1")


async def test_a_bad_input_provider_is_a_typed_fatal_error(
        upstream: tuple[Upstream, str]) -> None:
    srv, base = upstream
    async with LiveSignaling(base, "sk-x", LiveConfig(),
                             input_provider=lambda: "not a list") as sig:  # type: ignore[arg-type,return-value]
        with pytest.raises(VoiceError) as info:
            await sig.exchange(OFFER)
    assert (info.value.code, info.value.severity) == ("invalid_input", Severity.FATAL)
    assert srv.received == []  # nothing was sent


# ------------------------------------------------------------------ against the local peer

GATES = ActivityPolicy(hangover=0.3)
"""Shorter than the peer's 500 ms end-of-turn silence: the user's turn ends before its reply."""


def texts(messages: object) -> str:
    return json.dumps(messages)


async def test_session_up_listening_speaking_from_audio_and_close_confirmed(
        speech: Path) -> None:
    """espeak-ng speech in, the peer's tone reply out: statuses from the two audio gates only
    (the peer sends no VAD events in Live), then a stop finalised by session.closed."""
    async with RealtimePeer(reply="tone") as peer:
        s = session_for(peer, source=WavInput(speech).track, activity=GATES)
        seen: list[str] = []
        events: list[Mapping[str, Any]] = []
        s.on_status(lambda c: seen.append(c.status))
        s.on_server_event(events.append)
        async with s:
            await s.start()
            await s.wait_for("active", timeout=BOUND)
            await s.wait_for("listening", timeout=BOUND)
            await s.wait_for("speaking", timeout=BOUND)
            await s.wait_for("active", timeout=BOUND)
            await s.stop()
        (record,) = peer.live_sessions
        assert peer.stats()["events_received"] == {"session.close": 1}  # and nothing else
    types = {e["type"] for e in events}
    assert "session.started" in types and "session.output_transcript.delta" in types, types
    assert not any(t.startswith(("input_audio_buffer.", "output_audio_buffer.")) for t in types)
    i = seen.index("listening")
    assert seen[:2] == ["connecting", "active"] and seen[i:i + 4] == [
        "listening", "active", "speaking", "active"], seen
    assert seen[-1] == "idle"
    final = finalisation(s)
    assert final is not None and final.confirmed and final.requested, final
    assert (final.reason, final.session_id) == ("close_requested", record.id)
    assert final.usage_seconds is not None and final.usage_seconds > 0
    assert final.usage_seconds == same_usage(record.usage_seconds)
    assert s.usage is not None and s.usage.seconds == final.usage_seconds  # the final figure
    assert (record.closed_reason, record.closed_by) == ("close_requested", "client")
    assert record.model == "gpt-live-1" and not record.input  # a start seeds nothing


async def test_a_user_talking_from_the_start_is_heard_and_silence_is_not() -> None:
    """A tone from the first frame: the mic gate may open before the channel does; the session
    still reaches listening and stays there (nothing said it stopped). The peer sends only
    silence back (no utterance ended, no reply): never speaking."""
    async with RealtimePeer() as peer:
        s = session_for(peer, source=lambda: ToneSource(300.0, level_dbfs=-12.0))
        later = anyio.Event()  # two seconds of session time, by the server's usage clock
        s.on_server_event(lambda e: later.set() if e.get("type") == "session.usage.updated"
                          and e["usage"]["seconds"] >= 2.0 else None)
        async with s:
            await s.start()
            await s.wait_for("listening", timeout=BOUND)
            with anyio.fail_after(BOUND):
                await later.wait()
            assert s.status == "listening"
        events = [e.event for e in s.trace if e.outcome == "taken"]
        assert events.count("speech_started") == 1 and "speech_stopped" not in events[
            :events.index("stop")], events
        assert "audio_started" not in events, events


async def test_close_unconfirmed_when_session_closed_never_comes(
        caplog: pytest.LogCaptureFixture) -> None:
    async with RealtimePeer() as peer:
        s = session_for(peer, finalise_timeout=1.0)
        async with s:
            await s.start()
            await s.wait_for("active", timeout=BOUND)
            assert peer.go_silent() == 1  # nothing more comes back, session.closed neither
            await s.stop()
    final = finalisation(s)
    assert final is not None and not final.confirmed and final.reason is None, final
    assert final.requested and "no session.closed within 1 s" in final.detail, final
    assert any("finalisation unconfirmed" in r.getMessage() and r.levelname == "WARNING"
               for r in caplog.records)


async def test_a_call_cut_without_session_closed_is_unconfirmed_and_restarts() -> None:
    async with RealtimePeer() as peer:
        s = session_for(peer)
        async with s:
            await s.start()
            await s.wait_for("active", timeout=BOUND)
            assert await peer.close_call() == 1  # abrupt: no session.closed first
            await s.wait_for("reconnecting", timeout=BOUND)
            await s.wait_for("active", timeout=BOUND)
            assert isinstance(s.transport, AiortcTransport)
            (cut,) = s.transport.finalisations
        assert not cut.confirmed and not cut.requested, cut
        assert cut.detail.endswith("session.close not sent"), cut
        assert len(peer.live_sessions) == 2


async def test_rejected_config_is_a_typed_fatal_error() -> None:
    async with RealtimePeer() as peer:
        peer.reject_config("unknown_parameter", "Unknown parameter: 'session.tone'.",
                           param="session.tone")
        s = session_for(peer)
        async with s:
            await s.start()
            await s.wait_for("error", timeout=BOUND)
            assert not s.armed_timers  # no retry can come
        err = s.errors[-1]
        assert (err.code, err.severity, err.http_status, err.param) == (
            "unknown_parameter", Severity.FATAL, 400, "session.tone")
        assert peer.live_sessions == []
        assert finalisation(s) is None  # no server session: nothing to finalise


async def test_busy_server_is_retried_after_its_retry_after() -> None:
    async with RealtimePeer() as peer:
        peer.reject_offers(1, 503, retry_after=1.0, code="server_busy")
        s = session_for(peer)
        traced: list[Any] = []
        s.on_trace(traced.append)
        async with s:
            await s.start()
            await s.wait_for("active", timeout=BOUND)
        failed = [t.item for t in traced if t.entry.event == "signaling_failed"]
        assert len(failed) == 1, failed
        assert (failed[0].code, failed[0].severity, failed[0].retry_after) == (
            "server_busy", "recoverable", 1.0)
        assert len(peer.live_sessions) == 1  # the refused create made none


async def _converse(s: VoiceSession) -> None:
    await s.start()
    await s.wait_for("active", timeout=BOUND)
    await s.wait_for("speaking", timeout=BOUND)
    await s.wait_for("active", timeout=BOUND)


@pytest.mark.parametrize("reason", ["connection_lost", "expired"])
async def test_lost_or_expired_session_continues_in_a_new_seeded_session(
        speech: Path, reason: str) -> None:
    async with RealtimePeer(reply="tone") as peer:
        s = session_for(peer, source=WavInput(speech).track, activity=GATES,
                        config=LiveConfig(instructions="Answer briefly.", voice="cedar"))
        said: list[str] = []
        s.on_server_event(lambda e: said.append(e["delta"])
                          if e.get("type") == "session.output_transcript.delta" else None)
        async with s:
            await _converse(s)
            assert await peer.live_close(reason) == 1
            await s.wait_for("reconnecting", timeout=BOUND)
            await s.wait_for("active", timeout=BOUND)
            first, second = peer.live_sessions
            reported = [e for e in s.errors if e.code == reason]
        assert (first.closed_reason, first.closed_by) == (reason, "fault")
        assert second.id != first.id
        # the configuration goes with every create, never as session.update
        assert [(r.instructions, r.voice) for r in (first, second)] == [
            ("Answer briefly.", "cedar")] * 2
        assert "session.update" not in peer.stats()["events_received"]
        assert second.input, "the new session got no conversation"
        assert "".join(said).strip() in texts(second.input), (said, second.input)
        assert reported and reported[-1].severity is Severity.RECOVERABLE
        first_final = s.transport.finalisations[0]  # type: ignore[attr-defined]
        assert first_final.confirmed and first_final.reason == reason
        assert not first_final.requested  # the server ended it: no session.close was sent


@pytest.mark.parametrize(("reason", "status"), [("content", "error"),
                                                 ("remote_hangup", "idle"),
                                                 ("close_requested", "idle")])
async def test_content_ends_in_error_remote_hangup_in_idle_without_retry(
        reason: str, status: str) -> None:
    async with RealtimePeer() as peer:
        s = session_for(peer)
        async with s:
            await s.start()
            await s.wait_for("active", timeout=BOUND)
            assert await peer.live_close(reason) == 1
            await s.wait_for(status, timeout=BOUND)
            assert not s.armed_timers  # nothing will reopen it
            assert len(peer.live_sessions) == 1
        err = s.errors[-1]
        assert (err.code, err.severity) == (reason, Severity.FATAL)


# ------------------------------------------------------------------------------- the CLI


async def test_connect_protocol_live_json_and_exit_codes() -> None:
    async with RealtimePeer(reply="tone") as peer:
        proc = await start("connect", "--protocol", "live", "--base-url", peer.base_url,
                           "--json", "--duration", "4", env={"FSM_VOICE_TOKEN": "sk-cli-live"})
        out, err = await finish(proc, timeout=BOUND)
        assert proc.returncode == 0, (out, err)
        lines = [json.loads(ln) for ln in out.splitlines()]
        statuses = [x["status"] for x in lines[:-2]]
        assert statuses[:2] == ["connecting", "active"] and statuses[-1] == "idle", lines
        assert "listening" in statuses and "speaking" in statuses, statuses
        final, stopped = lines[-2:]
        (record,) = peer.live_sessions
        assert record.model == "gpt-live-1"  # the Live default without --model
        assert final == {"finalised": True, "reason": "close_requested",
                         "usage_seconds": same_usage(record.usage_seconds)}
        assert stopped == {"stopped": "duration", "status": "idle"}

        peer.reject_config("invalid_value", "Invalid value for 'session.model'.")
        proc = await start("connect", "--protocol", "live", "--base-url", peer.base_url,
                           "--json", "--duration", "30", env={"FSM_VOICE_TOKEN": "sk-cli-live"})
        out, err = await finish(proc, timeout=BOUND)
        assert proc.returncode == 1, (out, err)
        assert err.strip().splitlines()[-1] == (
            "fsm-voice connect: the session ended in error: [fatal] invalid_value "
            "(signaling, HTTP 400): Invalid value for 'session.model'."), err


def test_live_transcript_lines_end_when_the_other_side_speaks_or_the_talker_stops() -> None:
    lines = Transcripts(t0=0.0)

    def delta(kind: str, text: str) -> None:
        lines.event({"type": f"session.{kind}_transcript.delta", "delta": text,
                     "start_ms": 0, "end_ms": 1})

    delta("input", "(6 words, ")
    delta("input", "2.6 s)")
    delta("output", "I heard ")  # the other side: the user's line is finished
    delta("output", "6 words.")
    assert [(r, t) for _, r, t in lines.lines] == [("you", "(6 words, 2.6 s)")]
    lines.flush("assistant")  # the assistant stopped (speaking -> active)
    assert [(r, t) for _, r, t in lines.lines][1:] == [("assistant", "I heard 6 words.")]
    assert lines.partial == {}


async def test_connect_protocol_live_stops_after_n_assistant_turns(speech: Path) -> None:
    async with RealtimePeer(reply="tone") as peer:
        proc = await start("connect", "--protocol", "live", "--base-url", peer.base_url,
                           "--input", str(speech), "--responses", "1", "--duration", "120",
                           env={"FSM_VOICE_TOKEN": "sk-cli-live"})
        out, err = await finish(proc, timeout=BOUND * 2)
    assert proc.returncode == 0, (out, err)
    lines = [json.loads(ln) for ln in out.splitlines()]
    statuses = [x.get("status") for x in lines[:-2]]
    assert statuses.count("speaking") == 1 and statuses[-2:] == ["active", "idle"], statuses
    assert lines[-2]["finalised"] is True
    assert lines[-1] == {"stopped": "responses", "status": "idle"}


async def test_connect_protocol_live_exits_3_when_not_connected_at_the_end() -> None:
    async with RealtimePeer() as peer:
        peer.delay_answers(20)
        proc = await start("connect", "--protocol", "live", "--base-url", peer.base_url,
                           "--duration", "1", env={"FSM_VOICE_TOKEN": "sk-cli-live"})
        out, err = await finish(proc, timeout=BOUND)
    assert proc.returncode == 3, (out, err)
    assert [json.loads(ln) for ln in out.splitlines()][-2:] == [
        {"finalised": False, "reason": None, "usage_seconds": None},  # no session was made
        {"stopped": "duration", "status": "idle"}]


@pytest.mark.parametrize("flag", [["--turn-detection", "none"], ["--audio-format", "pcm16"],
                                  ["--transcribe", "none"], ["--text-input", "stdin"]])
async def test_connect_live_refuses_realtime_only_flags(flag: list[str]) -> None:
    proc = await start("connect", "--protocol", "live", "--base-url", "http://127.0.0.1:9",
                       *flag, env={"FSM_VOICE_TOKEN": "sk-x"})
    out, err = await finish(proc)
    assert proc.returncode == 2, (out, err)
    named = " ".join(flag) if flag[0] == "--text-input" else flag[0]
    assert err.strip() == (f"fsm-voice connect: {named}: "
                           "Realtime-only, not with --protocol live"), err


async def test_demo_protocol_live_recovers_into_a_seeded_session() -> None:
    proc = await start("demo", "--protocol", "live", "--duration", "12")
    out, err = await finish(proc, timeout=BOUND * 2)
    assert proc.returncode == 0, (out, err)
    assert "demo passed" in out
    seeded = re.search(r"session 2 received input\s*│\s*(\d+) message", out)
    assert seeded and int(seeded.group(1)) > 0 and "connection_lost" in out, out
    assert "finalised (session.closed)" in out and "close_requested, usage" in out, out


async def test_readme_live_example_runs(tmp_path: Path) -> None:
    text = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    begin = text.index("```python\n", text.index("## OpenAI Live")) + len("```python\n")
    code = text[begin:text.index("```", begin)]
    async with RealtimePeer() as peer:
        script = tmp_path / "live_example.py"
        script.write_text(code.replace("http://127.0.0.1:8765", peer.base_url)
                          .replace("anyio.sleep(5)", "anyio.sleep(1)"))
        with anyio.fail_after(BOUND):
            result = await anyio.run_process([sys.executable, str(script)], cwd=tmp_path,
                                             check=False)
        (record,) = peer.live_sessions
    out = result.stdout.decode()
    assert result.returncode == 0, result.stderr.decode()[-3000:]
    assert "connecting -> active" in out and "-> idle" in out, out
    last = out.strip().splitlines()[-1].split()
    assert last[:3] == ["finalised:", "True", "close_requested"], out
    assert float(last[3]) == same_usage(record.usage_seconds), out
    assert record.instructions == "Be brief."


# ------------------------------------------------------------------ through the broker proxy


async def test_through_the_broker_proxy_a_duration_cap_ends_the_session_in_idle(
        tmp_path: Path) -> None:
    """The app posts its offer to the broker (client id + secret), the broker creates the
    session upstream with its own configuration and the real key, and at its duration cap
    closes it over the sideband: the client sees session.closed close_requested -> idle,
    reported, finalised by the server's event; the peer saw the broker's config."""
    proxy = pytest.importorskip("fsm_voice.broker.proxy")
    from fsm_voice.broker import BrokerConfig, ClientRegistry, RatePolicy, TokenBroker

    key, secret = "sk-live-client-upstream-3f9a1c7e5b2d", "app-secret-8d4e2a6c1b3f5a7d"
    default = proxy.ClientProxy(
        live_session={"model": "gpt-live-1", "instructions": "Broker-side instructions."},
        limits=proxy.SessionLimits(1, 2.0, None))
    async with RealtimePeer(tokens=lambda t: t == key) as peer, TokenBroker(
            BrokerConfig(upstream_base=peer.base_url,
                         proxy=proxy.ProxyConfig(default=default, close_grace=5.0),
                         rate=RatePolicy(capacity=100, refill_per_second=10)),
            api_key=key, clients=ClientRegistry.from_secrets({"app-1": secret}),
            audit=tmp_path / "audit.sqlite3") as broker:
        s = live_session(broker.base_url, secret, broker_client_id="app-1", policy=FAST,
                         audio_source=SilenceSource, audio_sink=NullSink)
        async with s:
            await s.start()
            await s.wait_for("active", timeout=BOUND)
            await s.wait_for("idle", timeout=BOUND)
            assert not s.armed_timers
        (record,) = peer.live_sessions
    assert (record.instructions, record.closed_reason, record.closed_by) == (
        "Broker-side instructions.", "close_requested", "sideband")
    assert (s.errors[-1].code, s.errors[-1].severity) == ("close_requested", Severity.FATAL)
    final = finalisation(s)
    assert final is not None and final.confirmed and not final.requested, final
    assert final.reason == "close_requested" and final.session_id == record.id


async def test_connect_through_the_broker_proxy_stops_when_the_cap_closes_it(
        tmp_path: Path) -> None:
    proxy = pytest.importorskip("fsm_voice.broker.proxy")
    from fsm_voice.broker import BrokerConfig, ClientRegistry, RatePolicy, TokenBroker

    key, secret = "sk-live-client-upstream-3f9a1c7e5b2d", "app-secret-8d4e2a6c1b3f5a7d"
    default = proxy.ClientProxy(live_session={"model": "gpt-live-1.1"},
                                limits=proxy.SessionLimits(1, 2.0, None))
    async with RealtimePeer(tokens=lambda t: t == key) as peer, TokenBroker(
            BrokerConfig(upstream_base=peer.base_url,
                         proxy=proxy.ProxyConfig(default=default, close_grace=5.0),
                         rate=RatePolicy(capacity=100, refill_per_second=10)),
            api_key=key, clients=ClientRegistry.from_secrets({"app-1": secret}),
            audit=tmp_path / "audit.sqlite3") as broker:
        proc = await start("connect", "--protocol", "live", "--base-url", broker.base_url,
                           "--client-id", "app-1", "--json", "--duration", "60",
                           env={"FSM_VOICE_CLIENT_SECRET": secret})
        out, err = await finish(proc, timeout=BOUND)  # not the 60 s --duration
        (record,) = peer.live_sessions
    assert proc.returncode == 0, (out, err)
    lines = [json.loads(ln) for ln in out.splitlines()]
    assert {"error": lines[-4]["error"], "code": "close_requested",
            "severity": "fatal"} == lines[-4], lines
    assert lines[-2:] == [
        {"finalised": True, "reason": "close_requested",
         "usage_seconds": same_usage(record.usage_seconds)},
        {"stopped": "closed", "status": "idle"}]
    assert record.model == "gpt-live-1.1"  # the broker's choice


async def test_a_remote_that_stops_sending_mid_reply_ends_speaking() -> None:
    """The peer mutes its audio (``replaceTrack(null)``: no RTP at all) while it speaks: with
    no frame to measure, the gap counts as silence and ``speaking`` ends after the hangover
    (it used to stay ``speaking`` until the stop)."""
    async with RealtimePeer(reply="tone", tone_seconds=8.0) as peer:
        s = session_for(peer, activity=GATES)
        async with s:
            await s.start()
            await s.wait_for("active", timeout=BOUND)
            s.send_event({"type": "session.instructions.append", "content": "Say hello.",
                          "delegation_id": None})
            await s.wait_for("speaking", timeout=BOUND)
            assert peer.mute_media() == 1
            await s.wait_for("active", timeout=BOUND)  # the reply itself lasts 8 s
            assert peer.list_calls()[0]["media_muted"] is True


@pytest.mark.parametrize(("args", "env", "said"), [
    (["--model", ""], {"FSM_VOICE_TOKEN": "sk-x"}, "LiveConfig.model"),
    (["--protocol", "realtime", "--model", ""], {"FSM_VOICE_TOKEN": "ek_x"},
     "RealtimeConfig.model"),
    ([], {"FSM_VOICE_TOKEN": ""}, "Live has no ephemeral keys"),
])
async def test_connect_live_bad_model_or_missing_key_is_one_clear_line(
        args: list[str], env: dict[str, str], said: str) -> None:
    """An empty --model is refused (it used to fall back to the default silently) and a
    missing key for Live is not told to use an ephemeral key (Live has none)."""
    proc = await start("connect", "--protocol", "live", "--base-url", "http://127.0.0.1:9",
                       *args, env=env)
    out, err = await finish(proc)
    assert proc.returncode == 2, (out, err)
    assert said in err and len(err.strip().splitlines()) == 1, err


async def test_a_second_ctrl_c_cuts_the_wait_for_session_closed() -> None:
    """The first Ctrl-C sends ``session.close`` and waits up to 15 s for ``session.closed``
    (a silent server never answers); a second one ends that wait at once: exit 130, the
    finalisation unconfirmed (it used to sit out the whole 15 s)."""
    async with RealtimePeer(reply="tone") as peer:
        proc = await start("connect", "--protocol", "live", "--base-url", peer.base_url,
                           "--json", "--duration", "60", env={"FSM_VOICE_TOKEN": "sk-cli-live"})
        await lines_until(proc, status_is("active"))
        assert peer.go_silent() == 1  # session.close will never be answered
        proc.send_signal(signal.SIGINT)
        await lines_until(proc, status_is("idle"))
        second = time.monotonic()
        proc.send_signal(signal.SIGINT)
        out, err = await finish(proc, timeout=BOUND)
        waited = time.monotonic() - second
        assert proc.returncode == 130, (out, err)
        assert "Traceback" not in err, err
        assert json.loads(out.splitlines()[-2])["finalised"] is False, out
        assert waited < 10.0, waited  # a bound far below the 15 s wait it replaces
