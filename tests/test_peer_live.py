"""The local peer's Live API (``POST /v1/live/sessions``, ``oai-events``, the sideband) against
real aiortc clients over loopback.

The client is a raw RTCPeerConnection + aiohttp POST (like tests/test_peer.py), so these tests
depend on the peer only.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import av
import pytest
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack
from hypothesis import given, settings
from hypothesis import strategies as st

from fsm_voice.conversation import LIVE_MAX_TOKENS, Conversation, estimate_tokens
from fsm_voice.live_input import LiveInputError, validate_live_input
from fsm_voice.peer import RealtimePeer
from fsm_voice.peer.live import CLOSE_REASONS, SESSION_KEYS, LiveRequestError, parse_create
from fsm_voice.peer.server import listening_line
from fsm_voice.peer.vad import rms_dbfs
from fsm_voice.transport.loopback import loopback
from tests.test_peer import RATE, ToneBurstTrack, _burst_pcm

MODEL = "gpt-live-1"
# Event types a Live session must never carry (Realtime's VAD / playback / response lifecycle).
FORBIDDEN_PREFIXES = ("input_audio_buffer.", "output_audio_buffer.", "response.",
                      "conversation.", "session.created")
SEED = [
    {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "hi"}]},
    {"type": "message", "role": "assistant",
     "content": [{"type": "output_text", "text": "Hello there."}]},
]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class LiveClient:
    """A browser-like Live client: mic track, ``oai-events`` channel, JSON create."""

    def __init__(self, burst: bool = False) -> None:
        self.pc: RTCPeerConnection | None = None
        self.track = ToneBurstTrack(burst=burst)
        self.events: list[dict[str, Any]] = []
        self._queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.voiced_frames_in = 0
        self._tasks: list[asyncio.Task[None]] = []
        self.channel: Any = None
        self.session_id = ""

    async def create(
        self, peer: RealtimePeer, session: dict[str, Any] | None = None, token: str = "sk-test"
    ) -> dict[str, Any]:
        with loopback():
            pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
            self.pc = pc
            pc.addTrack(self.track)
            self.channel = pc.createDataChannel("oai-events")
            self.channel.on("message", self._on_message)
            pc.on("track", self._on_track)
            await pc.setLocalDescription(await pc.createOffer())
            body = {"session": session or {"model": MODEL},
                    "transport": {"type": "webrtc", "sdp": pc.localDescription.sdp}}
            status, _, text = await _post_json(peer, body, token=token)
            assert status == 201, text
            answer = json.loads(text)
            self.session_id = answer["session"]["id"]
            await pc.setRemoteDescription(
                RTCSessionDescription(sdp=answer["transport"]["sdp"], type="answer"))
        return dict(answer)

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
                if rms_dbfs(bytes(frame.planes[0])[: frame.samples * 2 * 2]) > -45:
                    self.voiced_frames_in += 1

    def send(self, event: dict[str, Any] | str) -> None:
        self.channel.send(event if isinstance(event, str) else json.dumps(event))

    async def wait_for(self, etype: str, timeout: float = 6.0) -> dict[str, Any]:
        """Next event of ``etype`` (others are skipped but kept in .events)."""
        async with asyncio.timeout(timeout):
            while True:
                event = await self._queue.get()
                if event["type"] == etype:
                    return event

    async def wait_state(self, pred: Callable[[str], bool], timeout: float = 6.0) -> str:
        assert self.pc is not None
        async with asyncio.timeout(timeout):
            while not pred(self.pc.connectionState):
                await asyncio.sleep(0.02)
        return self.pc.connectionState

    async def seen(self, etype: str, timeout: float = 6.0, **fields: Any) -> dict[str, Any]:
        """An event of ``etype`` (with these ``error`` fields) received so far or soon, whatever
        came in between."""
        async with asyncio.timeout(timeout):
            while True:
                for e in self.events:
                    if e["type"] == etype and all(
                            e.get("error", {}).get(k) == v for k, v in fields.items()):
                        return e
                await asyncio.sleep(0.02)

    def types(self) -> list[str]:
        return [e["type"] for e in self.events]

    async def close(self) -> None:
        if self.pc is not None:
            await self.pc.close()
        self.track.stop()
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


async def _post_json(
    peer: RealtimePeer, body: Any, token: str | None = "sk-test",
    ctype: str = "application/json",
) -> tuple[int, dict[str, str], str]:
    headers = {"Content-Type": ctype}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    data = body if isinstance(body, str) else json.dumps(body)
    async with (aiohttp.ClientSession() as http,
                http.post(peer.base_url + "/v1/live/sessions", data=data, headers=headers) as r):
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


async def _control(peer: RealtimePeer, path: str, body: dict[str, Any] | None = None
                   ) -> tuple[int, Any]:
    async with aiohttp.ClientSession() as http:
        if body is None:
            async with http.get(peer.base_url + path, headers=peer.control_headers) as r:
                return r.status, await r.json()
        async with http.post(peer.base_url + path, json=body, headers=peer.control_headers) as r:
            return r.status, await r.json()


def _no_forbidden(client: LiveClient) -> None:
    bad = [t for t in client.types() if t.startswith(FORBIDDEN_PREFIXES)]
    assert not bad, bad


@pytest.fixture
async def peer() -> AsyncIterator[RealtimePeer]:
    async with RealtimePeer(reply="echo", live_usage_interval=0.2, live_close_linger=0.5) as p:
        yield p


@pytest.fixture
async def client(peer: RealtimePeer) -> AsyncIterator[LiveClient]:
    c = LiveClient()
    try:
        await c.create(peer)
        await c.wait_for("session.started")
        yield c
    finally:
        await c.close()


# --------------------------------------------------------------------------- create


def test_parse_create_is_strict() -> None:
    ok = {"session": {"model": MODEL, "input": SEED, "audio": {"output": {"voice": "cedar"}}},
          "transport": {"type": "webrtc", "sdp": "v=0"}}
    config, sdp = parse_create(ok)
    assert config["input"] == SEED and sdp == "v=0"
    assert parse_create(ok, models=None)[0]["model"] == MODEL


_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8)
    | st.sampled_from(["gpt-live-1", "webrtc", "v=0", "client", "responses"]),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(
        st.sampled_from([*SESSION_KEYS, "type", "sdp", "output", "voice", "format", "id", "x"]),
        inner, max_size=4),
    max_leaves=12)


@settings(max_examples=300, deadline=None)
@given(session=_JSON, transport=_JSON, extra=st.booleans())
def test_parse_create_refuses_any_bad_body_with_a_typed_error(
    session: Any, transport: Any, extra: bool
) -> None:
    body: dict[str, Any] = {"session": session, "transport": transport}
    if extra:
        body["x"] = 1
    try:
        config, sdp = parse_create(body)
    except LiveRequestError as exc:
        assert exc.status == 400 and exc.message
        assert exc.code in ("unknown_parameter", "missing_required_parameter", "invalid_type",
                            "invalid_value", "array_above_max_length", "input_too_long")
    else:
        assert not extra and config["model"] in ("gpt-live-1", "gpt-live-1.1") and sdp.strip()


def _message(role: str, part: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"type": "message", "role": role, "content": [part], **extra}


def test_live_input_items_follow_the_reference_rules() -> None:
    user = {"type": "input_text", "text": "hi"}
    good = [_message("developer", user), _message("user", user, id="u1", status="completed"),
            _message("assistant", {"type": "text", "text": "a"}, status=None),
            _message("assistant", {"type": "output_text", "text": "b"}, status="incomplete"),
            {"role": "user", "content": [user]}]  # type defaults to message
    assert validate_live_input(good) == good
    bad: list[tuple[Any, str, str]] = [
        ({}, "invalid_type", "session.input"),
        ([_message("user", user)] * 129, "array_above_max_length", "session.input"),
        (["hi"], "invalid_type", "session.input[0]"),
        ([_message("system", user)], "invalid_value", "session.input[0].role"),
        ([{"type": "message", "content": [user]}], "invalid_value", "session.input[0].role"),
        ([{**_message("user", user), "type": "function_call"}], "invalid_value",
         "session.input[0].type"),
        ([_message("user", user, name="x")], "unknown_parameter", "session.input[0].name"),
        ([_message("user", user, id=5)], "invalid_type", "session.input[0].id"),
        ([_message("user", user, status="done")], "invalid_value", "session.input[0].status"),
        ([{"type": "message", "role": "user", "content": [user, user]}], "invalid_value",
         "session.input[0].content"),
        ([{"type": "message", "role": "user", "content": []}], "invalid_value",
         "session.input[0].content"),
        ([{"type": "message", "role": "user", "content": "hi"}], "invalid_value",
         "session.input[0].content"),
        ([_message("user", {"type": "output_text", "text": "x"})], "invalid_value",
         "session.input[0].content[0].type"),
        ([_message("developer", {"type": "text", "text": "x"})], "invalid_value",
         "session.input[0].content[0].type"),
        ([_message("assistant", user)], "invalid_value", "session.input[0].content[0].type"),
        ([_message("user", {"type": "input_text", "text": 3})], "invalid_type",
         "session.input[0].content[0].text"),
        ([_message("user", {"type": "input_text"})], "invalid_type",
         "session.input[0].content[0].text"),
        ([_message("user", {"type": "input_text", "text": "x", "audio": "AAAA"})],
         "unknown_parameter", "session.input[0].content[0].audio"),
        ([_message("user", {"type": "input_audio", "audio": "AAAA"})], "unknown_parameter",
         "session.input[0].content[0].audio"),
        ([_message("user", {"type": "input_text", "text": "x" * 30_000})], "input_too_long",
         "session.input"),
    ]
    for items, code, param in bad:
        with pytest.raises(LiveInputError) as info:
            validate_live_input(items)
        assert (info.value.code, info.value.param) == (code, param), items
        assert info.value.message
    with pytest.raises(LiveInputError) as info:
        validate_live_input(good, roles=("user", "assistant"))
    assert (info.value.code, info.value.param) == ("role_not_allowed", "session.input[0].role")


def test_what_the_conversation_seeds_passes_the_live_input_rules() -> None:
    conv = Conversation(limit=500)

    def add(item_id: str, role: str, text: str) -> None:
        kind = "output_text" if role == "assistant" else "input_text"
        conv.observe({"type": "conversation.item.created", "previous_item_id": None,
                      "item": {"id": item_id, "type": "message", "role": role,
                               "content": [{"type": kind, "text": text}]}})

    add("big", "user", "x" * 24_000)  # cut by the token budget
    for n in range(300):
        add(f"m{n}", ("user", "assistant")[n % 2], f"turn {n} " * (n % 7))
    add("sys", "system", "Be brief.")  # becomes a developer message
    items, report = conv.live_input()
    assert len(items) == 128 and report.tokens <= LIVE_MAX_TOKENS
    assert {i["role"] for i in items} == {"user", "assistant", "developer"}
    assert validate_live_input(items) == items
    assert sum(estimate_tokens(i["content"][0]["text"]) for i in items) == report.tokens
    # the broker's default (no developer input) refuses only the converted system message
    with pytest.raises(LiveInputError) as info:
        validate_live_input(items, roles=("user", "assistant"))
    assert info.value.param == "session.input[127].role"


@pytest.mark.anyio
async def test_create_refusals(peer: RealtimePeer) -> None:
    sdp = await _offer_sdp()
    transport = {"type": "webrtc", "sdp": sdp}
    cases: list[tuple[Any, int, str | None, str | None]] = [
        ({"session": {"model": MODEL}, "transport": transport, "extra": 1}, 400,
         "unknown_parameter", "extra"),
        ({"session": {"model": MODEL, "voice": "marin"}, "transport": transport}, 400,
         "unknown_parameter", "session.voice"),
        ({"session": {"model": MODEL, "audio": {"output": {"voice": "marin", "speed": 1}}},
          "transport": transport}, 400, "unknown_parameter", "session.audio.output.speed"),
        ({"session": {"instructions": "x"}, "transport": transport}, 400,
         "missing_required_parameter", "session.model"),
        ({"session": {"model": "gpt-realtime"}, "transport": transport}, 400, "invalid_value",
         "session.model"),
        ({"session": {"model": MODEL}, "transport": {"type": "websocket", "sdp": sdp}}, 400,
         "invalid_value", "transport.type"),
        ({"session": {"model": MODEL}, "transport": {"type": "webrtc", "sdp": ""}}, 400,
         "invalid_value", "transport.sdp"),
        ({"session": {"model": MODEL}, "transport": {"type": "webrtc", "sdp": "hello"}}, 400,
         "invalid_offer", "transport.sdp"),
        ({"session": {"model": MODEL, "audio": {"format": {"type": "audio/pcm"}}},
          "transport": transport}, 400, "invalid_value", "session.audio.format"),
        ({"session": {"model": MODEL, "input": [{}] * 129}, "transport": transport}, 400,
         "array_above_max_length", "session.input"),
        ({"session": {"model": MODEL, "input": [{"type": "message", "role": "system", "content":
          [{"type": "input_text", "text": "obey"}]}]}, "transport": transport}, 400,
         "invalid_value", "session.input[0].role"),
        ({"session": {"model": MODEL, "input": [{**SEED[0], "extra": 1}]},
          "transport": transport}, 400, "unknown_parameter", "session.input[0].extra"),
        ({"session": {"model": MODEL, "instructions": 7}, "transport": transport}, 400,
         "invalid_type", "session.instructions"),
        ({"session": {"model": MODEL}}, 400, "missing_required_parameter", "transport"),
        ({"session": {"model": MODEL, "client": {"data_channel": {"allowed_client_events": [
            "session.close", "Session.Close"]}}}, "transport": transport}, 400,
         "invalid_value", "session.client.data_channel.allowed_client_events[1]"),
        ({"session": {"model": MODEL, "client": {"data_channel": {"allowed_client_events": [
            "close"]}}}, "transport": transport}, 400,
         "invalid_value", "session.client.data_channel.allowed_client_events[0]"),
        ({"session": {"model": MODEL, "client": {"data_channel": {"allowed_client_events": [
            7]}}}, "transport": transport}, 400,
         "invalid_value", "session.client.data_channel.allowed_client_events[0]"),
        ({"session": {"model": MODEL, "client": {"data_channel": {"allowed_client_events":
            ["session.close"] * 257}}}, "transport": transport}, 400,
         "array_above_max_length", "session.client.data_channel.allowed_client_events"),
        ("{not json", 400, "invalid_json", None),
    ]
    for body, status, code, param in cases:
        got, _, text = await _post_json(peer, body)
        error = json.loads(text)["error"]
        assert (got, error["code"], error["param"]) == (status, code, param), (body, text)
        assert set(error) == {"message", "type", "param", "code"} and error["message"]
    ok = {"session": {"model": MODEL}, "transport": transport}
    status, _, text = await _post_json(peer, ok, token=None)
    assert status == 401 and json.loads(text)["error"]["type"] == "invalid_request_error"
    status, _, text = await _post_json(peer, ok, ctype="application/sdp")
    assert status == 415 and json.loads(text)["error"]["code"] == "unsupported_content_type"
    async with (aiohttp.ClientSession() as http,
                http.post(peer.base_url + "/v1/live/sessions?model=gpt-live-1", json=ok,
                          headers={"Authorization": "Bearer sk-test"}) as r):
        error = (await r.json())["error"]
        assert (r.status, error["code"], error["param"]) == (400, "unknown_parameter", "model")
    assert peer.live_sessions == [] and peer.calls == {}
    # the documented event-name shapes pass
    allowed = ["error", "info", "session.close", "session.input_audio.mute", "x-y.z_1"]
    good = {"session": {"model": MODEL, "client": {"data_channel": {
        "allowed_client_events": allowed}}}, "transport": transport}
    assert parse_create(good)[0]["client"]["data_channel"]["allowed_client_events"] == allowed


@pytest.mark.anyio
async def test_live_takes_api_keys_not_client_secrets() -> None:
    async with RealtimePeer(require_ephemeral=True) as peer:
        sdp = await _offer_sdp()
        body = {"session": {"model": MODEL}, "transport": {"type": "webrtc", "sdp": sdp}}
        minted = peer.client_secrets.mint(api_key="sk-test").value
        for token in (minted, "not-an-api-key"):
            status, _, text = await _post_json(peer, body, token=token)
            assert status == 401 and json.loads(text)["error"]["code"] == "invalid_api_key"
        c = LiveClient()  # the project key creates sessions even though calls need ek_ keys
        try:
            await c.create(peer, token="sk-test")
            await c.wait_for("session.started")
        finally:
            await c.close()


@pytest.mark.anyio
async def test_create_answers_201_json_and_starts(peer: RealtimePeer) -> None:
    c = LiveClient()
    try:
        answer = await c.create(peer, {"model": MODEL, "instructions": "Be brief.",
                                       "input": SEED})
        assert set(answer) == {"session", "transport"}
        assert answer["session"]["id"].startswith("live_")
        assert answer["transport"]["type"] == "webrtc"
        assert answer["transport"]["sdp"].startswith("v=0")
        started = await c.wait_for("session.started")
        resource = started["session"]
        assert started["event_id"] and c.events[0] is started  # the first event
        assert resource["id"] == answer["session"]["id"] and resource["status"] == "active"
        assert resource["model"] == MODEL and resource["instructions"] == "Be brief."
        assert resource["input"] == SEED
        assert resource["audio"]["output"]["voice"] == "marin"
        assert resource["delegation"] == {"type": "client"}
        assert isinstance(resource["expires_at"], int) and resource["expires_at"] > time.time()
        (record,) = peer.live_sessions
        assert (record.id, record.model, record.instructions, record.input, record.voice) == (
            resource["id"], MODEL, "Be brief.", SEED, "marin")
        assert record.closed_reason is None
        status, body = await _control(peer, "/control/live_sessions")
        assert status == 200 and body["sessions"][0]["input"] == SEED
        (info,) = peer.list_calls()
        assert info["protocol"] == "live" and info["call_id"] == resource["id"]
    finally:
        await c.close()


@pytest.mark.anyio
async def test_reject_config_and_reject_offers_apply_to_live(peer: RealtimePeer) -> None:
    sdp = await _offer_sdp()
    body = {"session": {"model": MODEL}, "transport": {"type": "webrtc", "sdp": sdp}}
    status, result = await _control(peer, "/control/reject_config",
                                    {"code": "invalid_config", "param": "session.instructions"})
    assert status == 200 and result["pending_config_rejections"] == 1
    status, _, text = await _post_json(peer, body)
    error = json.loads(text)["error"]
    assert status == 400 and error["code"] == "invalid_config"
    assert error["param"] == "session.instructions"
    peer.reject_offers(1, 503, retry_after=2)
    status, headers, text = await _post_json(peer, body)
    assert status == 503 and headers["Retry-After"] == "2"
    assert json.loads(text)["error"]["type"] == "server_error"
    with pytest.raises(ValueError):
        peer.reject_config("")
    c = LiveClient()
    try:
        await c.create(peer)  # the faults were used up
        await c.wait_for("session.started")
    finally:
        await c.close()


# --------------------------------------------------------------------------- session events


@pytest.mark.anyio
async def test_speech_gives_transcripts_reply_audio_and_usage(peer: RealtimePeer) -> None:
    c = LiveClient(burst=True)  # 0.5 s silence, then 1.2 s of voiced tone
    try:
        await c.create(peer)
        await c.wait_for("session.started")
        heard = await c.wait_for("session.input_transcript.delta", timeout=8)
        assert heard["delta"].startswith("(") and "word" in heard["delta"]
        assert 0 <= heard["start_ms"] < heard["end_ms"]
        assert 900 <= heard["end_ms"] - heard["start_ms"] <= 2000  # about the 1.2 s burst
        said = [await c.wait_for("session.output_transcript.delta", timeout=6)]
        text = said[0]["delta"]
        while not text.endswith("."):
            said.append(await c.wait_for("session.output_transcript.delta", timeout=6))
            text += said[-1]["delta"]
        assert text.startswith("I heard ")
        assert said[0]["start_ms"] >= heard["end_ms"]
        for a, b in itertools.pairwise(said):
            assert a["start_ms"] < a["end_ms"] <= b["start_ms"] + 1
        usage = [await c.wait_for("session.usage.updated") for _ in range(3)]
        seconds = [u["usage"]["seconds"] for u in usage]
        assert seconds == sorted(seconds) and seconds[0] < seconds[-1]
        assert all(0 < u["context_window"]["usage_ratio"] < 0.01 for u in usage)
        async with asyncio.timeout(6):
            while c.voiced_frames_in < 20:  # the echoed utterance came back as audio
                await asyncio.sleep(0.05)
        _no_forbidden(c)
    finally:
        await c.close()


@pytest.mark.anyio
async def test_muted_input_is_not_heard(peer: RealtimePeer) -> None:
    c = LiveClient(burst=True)
    c.track._pcm = bytes(2 * RATE * 2) + _burst_pcm(1.2)  # 2 s of silence first
    try:
        await c.create(peer)
        await c.wait_for("session.started")
        c.send({"type": "session.input_audio.mute"})
        await c.wait_for("session.input_audio.muted")
        (call,) = peer.calls.values()
        heard_before_mute = call.vad.position_ms  # silence only: the burst starts at 2 s
        async with asyncio.timeout(10):
            while call.audio_frames_in < 4.0 / 0.02:  # the burst and 0.8 s after it arrived
                await asyncio.sleep(0.05)
        assert "session.input_transcript.delta" not in c.types()
        assert call.vad.position_ms == heard_before_mute < 2000  # nothing while muted
    finally:
        await c.close()


@pytest.mark.anyio
async def test_commands_are_acked_and_bad_ones_get_errors(
    peer: RealtimePeer, client: LiveClient
) -> None:
    client.send({"type": "session.input_audio.mute", "event_id": "m1"})
    assert (await client.wait_for("session.input_audio.muted"))["client_event_id"] == "m1"
    client.send({"type": "session.input_audio.unmute", "event_id": "u1"})
    assert (await client.wait_for("session.input_audio.unmuted"))["client_event_id"] == "u1"
    client.send({"type": "session.instructions.append", "event_id": "a1",
                 "content": "Greet the user.", "delegation_id": None})
    appended = await client.wait_for("session.instructions.appended")
    assert appended["client_event_id"] == "a1" and appended["start_ms"] <= appended["end_ms"]
    greeting = await client.wait_for("session.output_transcript.delta")
    assert greeting["delta"] == "Hello" and greeting["start_ms"] < greeting["end_ms"]

    bad: list[tuple[dict[str, Any] | str, str | None, str | None]] = [
        ({"type": "session.teleport", "event_id": "x1"}, None, "x1"),
        ({"type": "session.start", "event_id": "x2", "session": {}}, "invalid_value", "x2"),
        ({"type": "session.input_audio.append", "event_id": "x3", "audio": ""},
         "invalid_value", "x3"),
        ({"type": "session.instructions.append", "event_id": "x4", "content": "hi"},
         "missing_required_parameter", "x4"),
        ({"type": "session.update", "event_id": "x5", "session": {"instructions": "new"}},
         "immutable_field_update", "x5"),
        ({"type": "session.update", "event_id": "x6",
          "session": {"delegation": {"type": "responses"}}}, "immutable_field_update", "x6"),
        ({"type": "response.create", "event_id": "x7"}, None, "x7"),
        ("{not json", "invalid_json", None),
        ({"event_id": "x9"}, "missing_required_parameter", "x9"),
    ]
    for event, code, eid in bad:
        client.send(event)
        error = (await client.wait_for("error"))["error"]
        assert (error["code"], error.get("client_event_id")) == (code, eid), (event, error)
        assert error["type"] == "invalid_request_error" and error["message"]
    client.send({"type": "session.update", "event_id": "ok",
                 "session": {"delegation": {"type": "client"}}})
    updated = await client.wait_for("session.updated")
    assert updated["client_event_id"] == "ok" and updated["session"]["id"] == client.session_id
    (record,) = peer.live_sessions
    assert record.appended == ["Greet the user."]
    _no_forbidden(client)


@pytest.mark.anyio
async def test_data_channel_permissions_limit_commands(peer: RealtimePeer) -> None:
    c = LiveClient()
    permissions = {"data_channel": {"allowed_client_events": ["session.close"]}}
    try:
        await c.create(peer, {"model": MODEL, "client": permissions})
        started = await c.wait_for("session.started")
        assert started["session"]["client"]["data_channel"]["allowed_client_events"] == [
            "session.close"]
        info = await c.wait_for("info")
        assert info["code"] == "data_channel_permissions" and info["message"]
        c.send({"type": "session.input_audio.mute", "event_id": "m"})
        error = (await c.wait_for("error"))["error"]
        assert (error["code"], error["client_event_id"]) == ("event_not_allowed", "m")
        c.send({"type": "session.close"})
        assert (await c.wait_for("session.closed"))["reason"] == "close_requested"
    finally:
        await c.close()


@pytest.mark.anyio
async def test_send_event_delivers_any_event(peer: RealtimePeer, client: LiveClient) -> None:
    status, result = await _control(peer, "/control/send_event",
                                    {"event": {"type": "session.future.thing", "x": 1}})
    assert status == 200 and result["sent"] == 1
    event = await client.wait_for("session.future.thing")
    assert event["x"] == 1 and event["event_id"].startswith("event_")
    status, _ = await _control(peer, "/control/send_event", {"event": {"x": 1}})
    assert status == 400


@pytest.mark.anyio
async def test_session_close_drains_then_closes(peer: RealtimePeer, client: LiveClient) -> None:
    last = await client.wait_for("session.usage.updated")
    client.send({"type": "session.close", "event_id": "bye"})
    client.send({"type": "session.input_audio.mute", "event_id": "late"})
    closed = await client.wait_for("session.closed")
    assert closed["reason"] == "close_requested" and closed["client_event_id"] == "bye"
    assert closed["usage"]["seconds"] >= last["usage"]["seconds"]
    assert closed["session"]["id"] == client.session_id
    assert closed["session"]["status"] == "active"
    # The command after session.close is refused.
    late = await client.seen("error", client_event_id="late")
    assert late["error"]["code"] == "session_closing"
    await client.close()  # as a client does once session.closed arrived
    async with asyncio.timeout(5):
        while peer.calls:
            await asyncio.sleep(0.02)
    (record,) = peer.live_sessions
    assert (record.closed_reason, record.closed_by, record.client_notified) == (
        "close_requested", "client", True)
    assert record.usage_seconds == pytest.approx(closed["usage"]["seconds"], abs=0.5)
    _no_forbidden(client)


# --------------------------------------------------------------------------- faults


@pytest.mark.anyio
@pytest.mark.parametrize("reason", CLOSE_REASONS)
async def test_live_close_fault_each_reason(
    peer: RealtimePeer, client: LiveClient, reason: str
) -> None:
    status, result = await _control(peer, "/control/live_close", {"reason": reason})
    assert status == 200 and result["closed"] == 1
    closed = await client.wait_for("session.closed")
    assert closed["reason"] == reason and "client_event_id" not in closed
    assert closed["usage"]["seconds"] > 0
    # The client does not close: the peer ends the call after its linger.
    await client.wait_state(lambda s: s in ("closed", "failed"), timeout=8)
    assert peer.calls == {}
    (record,) = peer.live_sessions
    assert (record.closed_reason, record.closed_by, record.client_notified) == (
        reason, "fault", True)


@pytest.mark.anyio
async def test_live_close_refuses_unknown_reason(peer: RealtimePeer, client: LiveClient) -> None:
    status, result = await _control(peer, "/control/live_close", {"reason": "client_request"})
    assert status == 400 and "close_requested" in result["error"]["message"]
    with pytest.raises(ValueError):
        await peer.live_close("bye")
    assert len(peer.calls) == 1 and peer.live_sessions[0].closed_reason is None
    assert await peer.live_close("content", session_id="live_nope") == 0


@pytest.mark.anyio
async def test_drop_calls_after_ends_without_session_closed(peer: RealtimePeer) -> None:
    peer.drop_calls_after(0.3)
    c = LiveClient()
    try:
        await c.create(peer)
        await c.wait_for("session.started")
        await c.wait_state(lambda s: s in ("closed", "failed"), timeout=8)
        assert "session.closed" not in c.types()
        (record,) = peer.live_sessions
        assert (record.closed_reason, record.closed_by, record.client_notified) == (
            "connection_lost", "fault", False)
    finally:
        await c.close()


@pytest.mark.anyio
async def test_session_limit_closes_with_expired() -> None:
    async with RealtimePeer(max_session_seconds=1.0, live_close_linger=0.3) as peer:
        peer.session_expires_at(1234)
        c = LiveClient()
        try:
            await c.create(peer)
            started = await c.wait_for("session.started")
            assert started["session"]["expires_at"] == 1234
            closed = await c.wait_for("session.closed", timeout=5)
            assert closed["reason"] == "expired" and closed["usage"]["seconds"] >= 0.9
            (record,) = peer.live_sessions
            assert (record.closed_reason, record.closed_by) == ("expired", "expiry")
        finally:
            await c.close()


@pytest.mark.anyio
async def test_send_error_uses_live_error_shape(peer: RealtimePeer, client: LiveClient) -> None:
    assert peer.send_error("server_error", None, "injected") == 1
    error = (await client.wait_for("error"))["error"]
    assert error == {"type": "server_error", "code": None, "message": "injected", "param": None}


# --------------------------------------------------------------------------- sideband


async def _attach(peer: RealtimePeer, session_id: str, http: aiohttp.ClientSession,
                  token: str = "sk-test") -> aiohttp.ClientWebSocketResponse:
    return await http.ws_connect(
        f"{peer.base_url}/v1/live/sessions/{session_id}/attach",
        headers={"Authorization": f"Bearer {token}"})


async def _ws_next(ws: aiohttp.ClientWebSocketResponse, etype: str | None = None
                   ) -> dict[str, Any]:
    async with asyncio.timeout(6):
        while True:
            msg = await ws.receive()
            assert msg.type is aiohttp.WSMsgType.TEXT, msg
            event: dict[str, Any] = json.loads(msg.data)
            if etype is None or event["type"] == etype:
                return event


@pytest.mark.anyio
async def test_sideband_attach_mirrors_and_closes(peer: RealtimePeer, client: LiveClient) -> None:
    base = f"{peer.base_url}/v1/live/sessions"
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{base}/{client.session_id}/attach") as r:
            assert r.status == 401
        for sid, token in ((client.session_id, "sk-other"), ("live_unknown", "sk-test")):
            with pytest.raises(aiohttp.WSServerHandshakeError) as info:
                await _attach(peer, sid, http, token)
            assert info.value.status == 404
        ws = await _attach(peer, client.session_id, http)
        # No replay, no first event: the first thing it receives answers its own command.
        await ws.send_json({"type": "session.input_audio.mute", "event_id": "sb1"})
        first = await _ws_next(ws)
        assert first == {"type": "session.input_audio.muted", "event_id": first["event_id"],
                         "client_event_id": "sb1"}
        for etype in ("session.start", "session.input_audio.append"):
            await ws.send_json({"type": etype, "event_id": etype})
            error = await _ws_next(ws, "error")
            assert error["error"]["client_event_id"] == etype
            assert error["error"]["code"] == "invalid_value"
        await ws.send_json({"type": "session.input_audio.unmute"})
        await _ws_next(ws, "session.input_audio.unmuted")
        # The data channel's command: its answer goes to the data channel, its effects to both.
        client.send({"type": "session.instructions.append", "content": "Say hi.",
                     "delegation_id": None})
        mirrored = await _ws_next(ws, "session.output_transcript.delta")
        own = await client.wait_for("session.output_transcript.delta")
        assert mirrored == own
        usage = await _ws_next(ws, "session.usage.updated")
        assert usage["usage"]["seconds"] > 0
        await ws.send_json({"type": "session.close", "event_id": "sb-close"})
        closed = await _ws_next(ws, "session.closed")
        assert closed["reason"] == "close_requested"
        assert closed["client_event_id"] == "sb-close"
        assert (await client.wait_for("session.closed"))["event_id"] == closed["event_id"]
        async with asyncio.timeout(6):
            msg = await ws.receive()
        assert msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED)
        await ws.close()
    assert "session.input_audio.muted" not in client.types()  # the sideband's own answers
    (record,) = peer.live_sessions
    assert (record.closed_reason, record.closed_by) == ("close_requested", "sideband")


@pytest.mark.anyio
async def test_commands_with_unknown_fields_are_refused_on_both_channels(
    peer: RealtimePeer, client: LiveClient
) -> None:
    async with aiohttp.ClientSession() as http:
        ws = await _attach(peer, client.session_id, http)
        for command in ({"type": "session.close", "event_id": "x1", "reason": "expired"},
                        {"type": "session.input_audio.mute", "event_id": "x2", "all": True},
                        {"type": "session.instructions.append", "event_id": "x3",
                         "content": "hi", "delegation_id": None, "role": "developer"},
                        {"type": "session.update", "event_id": "x4", "session": {},
                         "force": True}):
            await ws.send_json(command)
            error = await _ws_next(ws, "error")
            extra = next(k for k in command if k not in ("type", "event_id", "content",
                                                          "delegation_id", "session"))
            assert (error["error"]["code"], error["error"]["param"],
                    error["error"]["client_event_id"]) == ("unknown_parameter", extra,
                                                           command["event_id"])
        client.send({"type": "session.close", "event_id": "dc1", "graceful": False})
        error = await client.wait_for("error")  # the sideband's errors went to it alone
        assert error["error"]["client_event_id"] == "dc1"
        assert (error["error"]["code"], error["error"]["param"]) == (
            "unknown_parameter", "graceful")
        assert not peer.live_sessions[0].closed_reason  # nothing above took effect
        assert not peer.live_sessions[0].appended
        await ws.close()


@pytest.mark.anyio
async def test_attach_graceful_close_must_be_a_boolean(
    peer: RealtimePeer, client: LiveClient
) -> None:
    url = f"{peer.base_url}/v1/live/sessions/{client.session_id}/attach"
    headers = {"Authorization": "Bearer sk-test"}
    async with aiohttp.ClientSession() as http:
        for query, param in (("?graceful_close=maybe", "graceful_close"),
                             ("?graceful_close=", "graceful_close"), ("?replay=true", "replay")):
            async with http.get(url + query, headers=headers) as r:
                error = (await r.json())["error"]
                assert (r.status, error["param"]) == (400, param), query
        for value in ("true", "false"):
            ws = await http.ws_connect(f"{url}?graceful_close={value}", headers=headers)
            await ws.send_json({"type": "session.input_audio.mute", "event_id": value})
            assert (await _ws_next(ws))["client_event_id"] == value
            await ws.close()


@pytest.mark.anyio
async def test_a_live_session_whose_client_never_connects_is_ended_by_the_peer() -> None:
    async with RealtimePeer(connect_timeout=0.5) as peer:
        with loopback():
            pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        try:
            # the client makes an offer and then never applies the answer (never connects)
            pc.addTransceiver("audio", direction="sendrecv")
            pc.createDataChannel("oai-events")
            with loopback():
                await pc.setLocalDescription(await pc.createOffer())
            status, _, text = await _post_json(peer, {"session": {"model": MODEL}, "transport": {
                "type": "webrtc", "sdp": pc.localDescription.sdp}})
            assert status == 201, text
            session_id = json.loads(text)["session"]["id"]
            call = peer.calls[session_id]
            async with aiohttp.ClientSession() as http:
                sideband = await _attach(peer, session_id, http)
                closed = await _ws_next(sideband, "session.closed")
                async with asyncio.timeout(6):  # the peer ends the sideband after the call
                    msg = await sideband.receive()
                assert msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED)
                await sideband.close()
            assert closed["reason"] == "connection_lost"
            assert call.closed and session_id not in peer.calls
            (record,) = peer.live_sessions
            assert (record.closed_reason, record.closed_by) == ("connection_lost",
                                                                "connect_timeout")
        finally:
            await pc.close()


@pytest.mark.anyio
async def test_sideband_hears_the_end_of_a_dropped_client(peer: RealtimePeer) -> None:
    c = LiveClient()
    try:
        await c.create(peer)
        await c.wait_for("session.started")
        async with aiohttp.ClientSession() as http:
            ws = await _attach(peer, c.session_id, http)
            await ws.send_json({"type": "session.input_audio.mute"})
            await _ws_next(ws, "session.input_audio.muted")  # attached for sure
            await c.close()  # the client goes away without session.close
            closed = await _ws_next(ws, "session.closed")
            assert closed["reason"] == "remote_hangup"  # pc.close() said goodbye (DTLS)
            async with asyncio.timeout(6):
                msg = await ws.receive()
            assert msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED)
            await ws.close()
        (record,) = peer.live_sessions
        assert record.closed_reason == closed["reason"] and not record.client_notified
    finally:
        await c.close()


@pytest.mark.anyio
async def test_stop_ends_live_sessions_and_sidebands() -> None:
    peer = RealtimePeer()
    await peer.start()
    c = LiveClient()
    try:
        await c.create(peer)
        await c.wait_for("session.started")
        async with aiohttp.ClientSession() as http:
            ws = await _attach(peer, c.session_id, http)
            await ws.send_json({"type": "session.input_audio.mute"})
            await _ws_next(ws, "session.input_audio.muted")
            (call,) = peer.calls.values()
            await peer.stop()
            closed = await _ws_next(ws, "session.closed")
            assert closed["reason"] == "connection_lost"
            await ws.close()
        assert call.closed and not call._tasks
        assert peer.live_sessions[0].closed_by == "server"
    finally:
        await c.close()
        await peer.stop()


def test_listening_line_names_both_protocols() -> None:
    peer = RealtimePeer()
    line = listening_line(peer, "http://127.0.0.1:1")
    assert "/v1/realtime/calls" in line and "/v1/live/sessions" in line
    assert line.endswith(f"X-Control-Token: {peer.control_token})")
