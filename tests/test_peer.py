"""The local peer (fsm_voice.peer) against a real aiortc client over loopback.

The client here is deliberately minimal (raw RTCPeerConnection + aiohttp POST) so these tests do
not depend on fsm_voice.transport.
"""

from __future__ import annotations

import array
import asyncio
import contextlib
import fractions
import json
import math
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import anyio
import av
import pytest
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

from fsm_voice.peer import RealtimePeer, run_peer
from fsm_voice.peer import protocol as proto
from fsm_voice.peer.control import control_refusal, is_loopback_address
from fsm_voice.peer.server import loopback_host, validate_offer
from fsm_voice.peer.vad import EnergyVad, VadEvent, rms_dbfs
from fsm_voice.transport.loopback import loopback

RATE = 48_000
FRAME = 960  # 20 ms


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


# --------------------------------------------------------------------------- test client


def _burst_pcm(seconds: float, level_dbfs: float = -12.0, f0: float = 300.0) -> bytes:
    n = int(seconds * RATE)
    raw = [
        math.sin(2 * math.pi * f0 * i / RATE)
        + 0.5 * math.sin(2 * math.pi * 2 * f0 * i / RATE)
        + 0.25 * math.sin(2 * math.pi * 3 * f0 * i / RATE)
        for i in range(n)
    ]
    rms = math.sqrt(sum(v * v for v in raw) / n)
    gain = 10 ** (level_dbfs / 20) / rms * 32767
    return array.array("h", (int(v * gain) for v in raw)).tobytes()


class ToneBurstTrack(MediaStreamTrack):
    """0.5 s silence, then (if ``burst``) 1.2 s of 300 Hz + harmonics at about -12 dBFS, then
    silence; 48 kHz mono s16 in 20 ms frames, paced in real time."""

    kind = "audio"

    def __init__(self, burst: bool = True) -> None:
        super().__init__()
        lead = bytes(2 * RATE // 2)
        self._pcm = lead + (_burst_pcm(1.2) if burst else b"")
        self._pts = 0
        self._start: float | None = None

    async def recv(self) -> av.AudioFrame:
        if self.readyState != "live":
            raise MediaStreamError
        if self._start is None:
            self._start = time.monotonic()
        due = self._start + self._pts / RATE
        delay = due - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        off = self._pts * 2
        chunk = self._pcm[off : off + 2 * FRAME]
        chunk += bytes(2 * FRAME - len(chunk))
        frame = av.AudioFrame(format="s16", layout="mono", samples=FRAME)
        frame.planes[0].update(chunk)
        frame.sample_rate = RATE
        frame.time_base = fractions.Fraction(1, RATE)
        frame.pts = self._pts
        self._pts += FRAME
        return frame


class Client:
    def __init__(self, burst: bool = False) -> None:
        self.pc: RTCPeerConnection | None = None
        self.track = ToneBurstTrack(burst=burst)
        self.events: list[dict[str, Any]] = []
        self._queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.frames_in = 0
        self.voiced_frames_in = 0
        self._tasks: list[asyncio.Task[None]] = []
        self.channel: Any = None
        self.location: str | None = None

    async def connect(
        self, peer: RealtimePeer, token: str = "sk-test", session: dict[str, Any] | None = None
    ) -> None:
        """POST the offer: ``application/sdp``, or multipart (sdp + session) when ``session``."""
        with loopback():
            pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
            self.pc = pc
            pc.addTrack(self.track)
            self.channel = pc.createDataChannel("oai-events")
            self.channel.on("message", self._on_message)
            pc.on("track", self._on_track)
            await pc.setLocalDescription(await pc.createOffer())
            headers = {"Authorization": f"Bearer {token}"}
            body: Any = pc.localDescription.sdp
            if session is None:
                headers["Content-Type"] = "application/sdp"
            else:
                body = aiohttp.FormData()
                body.add_field("sdp", pc.localDescription.sdp, content_type="application/sdp")
                body.add_field("session", json.dumps(session), content_type="application/json")
            async with (
                aiohttp.ClientSession() as http,
                http.post(peer.calls_url, data=body, headers=headers) as resp,
            ):
                assert resp.status == 201, await resp.text()
                assert resp.content_type == "application/sdp"
                self.location = resp.headers["Location"]
                answer = await resp.text()
            await pc.setRemoteDescription(RTCSessionDescription(sdp=answer, type="answer"))

    def _on_message(self, raw: str) -> None:
        event = json.loads(raw)
        self.events.append(event)
        self._queue.put_nowait(event)

    def _on_track(self, track: MediaStreamTrack) -> None:
        self._tasks.append(asyncio.ensure_future(self._consume(track)))

    async def _consume(self, track: MediaStreamTrack) -> None:
        with contextlib.suppress(MediaStreamError):
            while True:
                frame = await track.recv()
                assert isinstance(frame, av.AudioFrame)
                self.frames_in += 1
                if rms_dbfs(bytes(frame.planes[0])[: frame.samples * 2 * 2]) > -45:
                    self.voiced_frames_in += 1

    def send(self, event: dict[str, Any] | str) -> None:
        self.channel.send(event if isinstance(event, str) else json.dumps(event))

    async def wait_for(self, etype: str, timeout: float = 5.0) -> dict[str, Any]:
        """Next event of ``etype`` (events of other types are skipped but kept in .events)."""
        async with asyncio.timeout(timeout):
            while True:
                event = await self._queue.get()
                if event["type"] == etype:
                    return event

    async def wait_state(self, pred: Callable[[str], bool], timeout: float = 5.0) -> str:
        assert self.pc is not None
        async with asyncio.timeout(timeout):
            while not pred(self.pc.connectionState):
                await asyncio.sleep(0.02)
        return self.pc.connectionState

    async def packets_received(self) -> int:
        assert self.pc is not None
        report = await self.pc.getStats()
        return sum(int(s.packetsReceived) for s in report.values() if s.type == "inbound-rtp")

    async def close(self) -> None:
        if self.pc is not None:
            await self.pc.close()
        self.track.stop()
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


@pytest.fixture
async def peer() -> AsyncIterator[RealtimePeer]:
    async with RealtimePeer(reply="echo") as p:
        yield p


@pytest.fixture
async def client(peer: RealtimePeer) -> AsyncIterator[Client]:
    c = Client()
    try:
        await c.connect(peer)
        await c.wait_for("session.created")
        yield c
    finally:
        await c.close()


async def _post(
    url: str, body: bytes | str, ctype: str = "application/sdp", token: str | None = "sk-test"
) -> tuple[int, dict[str, str], str]:
    headers = {"Content-Type": ctype}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    async with aiohttp.ClientSession() as http, http.post(url, data=body, headers=headers) as r:
        return r.status, dict(r.headers), await r.text()


async def _offer_sdp() -> str:
    with loopback():
        pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        try:
            pc.addTransceiver("audio", direction="sendrecv")
            pc.createDataChannel("oai-events")
            await pc.setLocalDescription(await pc.createOffer())
            return str(pc.localDescription.sdp)
        finally:
            await pc.close()


def _assert_error_body(text: str, code: str | None) -> None:
    body = json.loads(text)
    assert set(body["error"]) >= {"type", "code", "message", "param"}
    assert body["error"]["code"] == code
    assert body["error"]["message"]


# --------------------------------------------------------------------------- pure units


def test_vad_start_stop_with_hysteresis() -> None:
    vad = EnergyVad(-40.0, start_ms=100, stop_ms=500, hysteresis_db=6)
    decisions = [vad.process(-60, 20) for _ in range(10)]
    decisions += [vad.process(-20, 20) for _ in range(5)]  # 100 ms loud -> start
    assert decisions.count(VadEvent.SPEECH_STARTED) == 1 and decisions[-1] is not None
    # dips between threshold-hysteresis and threshold do not count as silence
    assert all(vad.process(-43, 20) is None for _ in range(50))
    out = [vad.process(-60, 20) for _ in range(25)]  # 500 ms quiet -> stop
    assert out[-1] is VadEvent.SPEECH_STOPPED and out.count(VadEvent.SPEECH_STOPPED) == 1
    assert vad.last_start_ms == pytest.approx(200)


def test_rms_dbfs_levels() -> None:
    assert rms_dbfs(bytes(1920)) == -120.0
    assert rms_dbfs(_burst_pcm(0.1)) == pytest.approx(-12.0, abs=0.2)


def test_parse_client_event_errors() -> None:
    _, err = proto.parse_client_event("{not json")
    assert err is not None and err["error"]["code"] == "invalid_json"
    _, err = proto.parse_client_event("[1, 2]")
    assert err is not None and err["error"]["code"] == "invalid_type"
    _, err = proto.parse_client_event('{"event_id": "e1"}')
    assert err is not None and err["error"]["param"] == "type"
    assert err["error"]["event_id"] == "e1"
    _, err = proto.parse_client_event('{"type": "nope.nope", "event_id": "e2"}')
    assert err is not None and err["error"]["code"] == "invalid_value"
    ev, err = proto.parse_client_event('{"type": "response.create"}')
    assert err is None and ev == {"type": "response.create"}


def test_peer_refuses_non_loopback_bind() -> None:
    assert loopback_host("localhost") == "127.0.0.1"
    assert loopback_host("::1") == "::1"
    for bad in ("0.0.0.0", "192.168.1.10", "example.com", "::"):
        with pytest.raises(ValueError, match="loopback"):
            RealtimePeer(bad)


def test_control_loopback_check() -> None:
    assert is_loopback_address("127.0.0.1") and is_loopback_address("127.8.0.1")
    assert is_loopback_address("::1") and is_loopback_address("::ffff:127.0.0.1")
    for bad in (None, "", "10.0.0.1", "192.168.0.2", "::ffff:10.0.0.1", "fe80::1", "junk"):
        assert not is_loopback_address(bad)
    assert control_refusal("127.0.0.1", None) is None
    assert control_refusal("10.1.2.3", None) is not None
    assert control_refusal("127.0.0.1", "http://evil.example") is not None


def test_validate_offer() -> None:
    assert validate_offer("hello") is not None
    assert validate_offer("v=0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\n") is not None


# --------------------------------------------------------------------------- HTTP signaling


@pytest.mark.anyio
async def test_http_refusals(peer: RealtimePeer) -> None:
    sdp = await _offer_sdp()
    status, _, text = await _post(peer.calls_url, sdp, token=None)
    assert status == 401
    _assert_error_body(text, None)
    status, _, text = await _post(peer.calls_url, sdp, ctype="application/json")
    assert status == 415
    _assert_error_body(text, "unsupported_content_type")
    status, _, text = await _post(peer.calls_url, "this is not SDP at all")
    assert status == 400
    _assert_error_body(text, "invalid_offer")
    status, _, text = await _post(peer.calls_url, "v=0\r\n" + "a=x\r\n" * 20_000)
    assert status == 413
    _assert_error_body(text, "request_too_large")
    async with aiohttp.ClientSession() as http:
        async with http.get(peer.base_url + "/control/stats", headers=peer.control_headers) as r:
            stats = await r.json()
        assert stats["offers_received"] == 4 and stats["calls_active"] == 0
        headers = {"Origin": "http://web.page.example", **peer.control_headers}
        async with http.post(peer.base_url + "/control/go_silent", headers=headers) as r:
            assert r.status == 403  # a browser page cannot drive the control API
    strict = RealtimePeer(tokens=lambda t: t == "good")
    async with strict:
        status, _, text = await _post(strict.calls_url, sdp, token="bad")
        assert status == 401
        _assert_error_body(text, "invalid_api_key")


@pytest.mark.anyio
async def test_reject_offers_then_accept(peer: RealtimePeer) -> None:
    async with (
        aiohttp.ClientSession() as http,
        http.post(
            peer.base_url + "/control/reject_offers",
            json={"count": 2, "status": 503, "retry_after": 1},
            headers=peer.control_headers,
        ) as r,
    ):
        assert r.status == 200 and (await r.json())["pending_rejections"] == 2
    sdp = await _offer_sdp()
    for _ in range(2):
        status, headers, text = await _post(peer.calls_url, sdp)
        assert status == 503 and headers["Retry-After"] == "1"
        assert json.loads(text)["error"]["type"] == "server_error"
    c = Client()
    try:
        await c.connect(peer)
        assert c.location is not None and c.location.startswith("/v1/realtime/calls/rtc_")
    finally:
        await c.close()


# --------------------------------------------------------------------------- data channel


@pytest.mark.anyio
async def test_connect_session_created_and_update(peer: RealtimePeer, client: Client) -> None:
    created = client.events[0]
    assert created["type"] == "session.created" and created["event_id"].startswith("event_")
    assert created["session"]["id"].startswith("sess_")
    assert created["session"]["audio"]["output"]["voice"] == "alloy"
    await client.wait_state(lambda s: s == "connected")
    client.send({"type": "session.update", "session": {"type": "realtime", "instructions": "hi"}})
    updated = await client.wait_for("session.updated")
    assert updated["session"]["instructions"] == "hi"
    assert updated["session"]["id"] == created["session"]["id"]
    client.send({"type": "session.update", "session": {"instructions": "no type"}})
    err = await client.wait_for("error")
    assert err["error"]["code"] == "missing_required_parameter"
    (call,) = peer.list_calls()
    assert client.location == f"/v1/realtime/calls/{call['call_id']}"
    assert call["state"] == "connected" and call["events_received"]["session.update"] == 2
    ids = [e["event_id"] for e in client.events]
    assert len(ids) == len(set(ids))


@pytest.mark.anyio
async def test_bad_events_get_errors_and_server_keeps_serving(
    peer: RealtimePeer, client: Client
) -> None:
    client.send("{definitely not json")
    err = await client.wait_for("error")
    assert err["error"]["type"] == "invalid_request_error"
    client.send({"type": "bogus.event", "event_id": "evt_client_1"})
    err = await client.wait_for("error")
    assert err["error"]["code"] == "invalid_value" and err["error"]["event_id"] == "evt_client_1"
    client.send('"just a string"')
    await client.wait_for("error")
    client.send({"type": "response.cancel"})
    err = await client.wait_for("error")
    assert err["error"]["code"] == "response_cancel_not_active"
    client.send({"type": "input_audio_buffer.commit"})
    err = await client.wait_for("error")
    assert err["error"]["code"] == "input_audio_buffer_commit_empty"
    item = {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "x"}]}
    client.send({"type": "conversation.item.create", "item": item})
    added = await client.wait_for("conversation.item.added")
    assert added["item"]["id"].startswith("item_")
    assert peer.stats()["events_received"]["<invalid>"] == 3


@pytest.mark.anyio
async def test_response_create_and_cancel(peer: RealtimePeer, client: Client) -> None:
    await client.wait_state(lambda s: s == "connected")
    client.send({"type": "response.create"})
    created = await client.wait_for("response.created")
    await client.wait_for("output_audio_buffer.started")
    client.send({"type": "response.create"})
    err = await client.wait_for("error")
    assert err["error"]["code"] == "conversation_already_has_active_response"
    client.send({"type": "response.cancel"})
    await client.wait_for("output_audio_buffer.cleared")
    done = await client.wait_for("response.done")
    assert done["response"]["id"] == created["response"]["id"]
    assert done["response"]["status"] == "cancelled"


@pytest.mark.anyio
async def test_speech_turn_produces_reply_audio(peer: RealtimePeer) -> None:
    c = Client(burst=True)
    try:
        await c.connect(peer)
        await c.wait_for("session.created")
        started = await c.wait_for("input_audio_buffer.speech_started", timeout=6)
        stopped = await c.wait_for("input_audio_buffer.speech_stopped", timeout=6)
        assert started["item_id"] == stopped["item_id"]
        assert 0 <= started["audio_start_ms"] < stopped["audio_end_ms"]
        await c.wait_for("input_audio_buffer.committed")
        await c.wait_for("response.created")
        voiced_before = c.voiced_frames_in
        await c.wait_for("output_audio_buffer.started")
        done = await c.wait_for("response.done", timeout=6)
        assert done["response"]["status"] == "completed"
        await c.wait_for("output_audio_buffer.stopped")
        await asyncio.sleep(0.2)  # jitter buffer tail
        assert c.frames_in > 0
        assert c.voiced_frames_in - voiced_before > 10  # about 1.2 s of echo came back
        types = [e["type"] for e in c.events]
        assert types.index("input_audio_buffer.speech_stopped") < types.index("response.created")
    finally:
        await c.close()


# --------------------------------------------------------------------------- faults


@pytest.mark.anyio
async def test_send_error_reaches_client(peer: RealtimePeer, client: Client) -> None:
    async with (
        aiohttp.ClientSession() as http,
        http.post(
            peer.base_url + "/control/send_error",
            json={"type": "server_error", "code": "boom", "message": "injected"},
            headers=peer.control_headers,
        ) as r,
    ):
        assert (await r.json())["sent"] == 1
    err = await client.wait_for("error")
    assert err["error"] == {
        "type": "server_error",
        "code": "boom",
        "message": "injected",
        "param": None,
        "event_id": None,
    }


@pytest.mark.anyio
async def test_go_silent_stops_inbound_rtp(peer: RealtimePeer, client: Client) -> None:
    await client.wait_state(lambda s: s == "connected")
    first = await client.packets_received()
    await asyncio.sleep(0.3)
    assert await client.packets_received() > first  # media flows while idle (silence)
    assert peer.go_silent() == 1
    await asyncio.sleep(0.3)  # let in-flight packets land
    before = await client.packets_received()
    await asyncio.sleep(1.0)
    assert await client.packets_received() == before
    (call,) = peer.list_calls()
    assert call["state"] == "silent" and call["datagrams_dropped"] > 0
    assert peer.resume() == 1
    await asyncio.sleep(0.3)
    assert await client.packets_received() > before


@pytest.mark.anyio
async def test_close_call_disconnects_client(peer: RealtimePeer, client: Client) -> None:
    await client.wait_state(lambda s: s == "connected")
    async with (
        aiohttp.ClientSession() as http,
        http.post(
            peer.base_url + "/control/close_call", json={}, headers=peer.control_headers
        ) as r,
    ):
        assert (await r.json())["closed"] == 1
    state = await client.wait_state(lambda s: s != "connected", timeout=8)
    assert state in ("closed", "failed", "disconnected")
    assert peer.stats()["calls_active"] == 0
    async with (
        aiohttp.ClientSession() as http,
        http.get(peer.base_url + "/control/calls", headers=peer.control_headers) as r,
    ):
        calls = (await r.json())["calls"]
    assert calls[0]["state"] == "closed" and calls[0]["close_reason"] == "closed_by_control"


@pytest.mark.anyio
async def test_stop_closes_everything() -> None:
    peer = RealtimePeer(reply="tone")
    await peer.start()
    c = Client()
    try:
        await c.connect(peer)
        await c.wait_for("session.created")
        (call,) = peer.calls.values()
        await peer.stop()
        assert call.closed and call.pc is not None and call.pc.connectionState == "closed"
        assert not call._tasks
        assert call.player.readyState == "ended"
    finally:
        await c.close()
        await peer.stop()


@pytest.mark.anyio
async def test_multipart_offer_applies_session(peer: RealtimePeer) -> None:
    c = Client()
    try:
        await c.connect(peer, session={"type": "realtime", "instructions": "from multipart"})
        created = await c.wait_for("session.created")
        assert created["session"]["instructions"] == "from multipart"
    finally:
        await c.close()


@pytest.mark.anyio
async def test_delay_answers_and_hangup(peer: RealtimePeer) -> None:
    peer.delay_answers(0.3)
    sdp = await _offer_sdp()
    t0 = time.monotonic()
    status, headers, _ = await _post(peer.calls_url, sdp)
    assert status == 201 and time.monotonic() - t0 >= 0.3
    call_id = headers["Location"].rsplit("/", 1)[1]
    assert call_id in peer.calls
    status, _, _ = await _post(f"{peer.calls_url}/{call_id}/hangup", "", ctype="text/plain")
    assert status == 200 and call_id not in peer.calls
    status, _, _ = await _post(f"{peer.calls_url}/{call_id}/hangup", "", ctype="text/plain")
    assert status == 404


@pytest.mark.anyio
async def test_speech_interrupts_playing_response() -> None:
    async with RealtimePeer(reply="tone", tone_seconds=4.0) as peer:
        c = Client(burst=True)  # starts talking 0.5 s after its media starts
        try:
            await c.connect(peer)
            await c.wait_for("session.created")
            c.send({"type": "response.create"})
            first = await c.wait_for("response.created")
            await c.wait_for("input_audio_buffer.speech_started", timeout=6)
            await c.wait_for("output_audio_buffer.cleared")
            done = await c.wait_for("response.done")
            assert done["response"]["id"] == first["response"]["id"]
            assert done["response"]["status_details"]["reason"] == "turn_detected"
            await c.wait_for("input_audio_buffer.speech_stopped", timeout=6)
            second = await c.wait_for("response.created")  # auto response after the turn
            assert second["response"]["id"] != first["response"]["id"]
            c.send({"type": "response.cancel", "response_id": second["response"]["id"]})
            done = await c.wait_for("response.done")
            assert done["response"]["status"] == "cancelled"
        finally:
            await c.close()


@pytest.mark.anyio
async def test_run_peer_serves_until_cancelled(capsys: pytest.CaptureFixture[str]) -> None:
    task = asyncio.ensure_future(run_peer("127.0.0.1", 0, "tone"))
    async with asyncio.timeout(5):
        while "listening on" not in capsys.readouterr().out:
            await asyncio.sleep(0.05)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


@pytest.mark.anyio
async def test_an_offer_whose_request_was_aborted_leaves_no_call(peer: RealtimePeer) -> None:
    """A client that gives up during the exchange (session stopped mid-signaling) never gets
    the call id, so it cannot hang up: the peer drops the offer instead of keeping a call
    until its ~30 s connect timeout."""
    peer.delay_answers(0.5)
    sdp = await _offer_sdp()
    headers = {"Content-Type": "application/sdp", "Authorization": "Bearer sk-test"}
    async with aiohttp.ClientSession() as http:
        with pytest.raises(TimeoutError):
            async with http.post(peer.calls_url, data=sdp, headers=headers,
                                 timeout=aiohttp.ClientTimeout(total=0.1)):
                pass
    with anyio.fail_after(5):
        while peer.stats()["offers_abandoned"] < 1:
            await anyio.sleep(0.02)
    stats = peer.stats()
    assert stats["calls_created"] == 0 and stats["calls_active"] == 0
    assert stats["offers_answered"] == 0
