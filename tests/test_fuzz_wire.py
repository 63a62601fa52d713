"""Hypothesis fuzzing of what a remote end sends us (issue 10, item 4): SDP answers, token
answers, and requests to the local peer's control API.

Properties: the client turns any answer into either a usable result or a classified
:class:`~fsm_voice.errors.VoiceError` (never AssertionError, IndexError, ...); a well-formed
token answer is returned exactly, whatever the client secret; the control API answers every
request with JSON and a status below 500, and its state stays bounded.
"""

from __future__ import annotations

import gzip
import json
import math
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiortc.sdp import SessionDescription
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from fsm_voice.errors import VoiceError
from fsm_voice.peer import RealtimePeer
from fsm_voice.peer.server import MAX_PENDING_REJECTIONS
from fsm_voice.signaling import HttpSignaling
from fsm_voice.signaling.http import check_answer_sdp
from fsm_voice.tokens import EphemeralKeyProvider

pytestmark = pytest.mark.anyio

# A real answer of the local peer (one fingerprint kept).
ANSWER_LINES = [
    "v=0",
    "o=- 4005019712 4005019712 IN IP4 0.0.0.0",
    "s=-",
    "t=0 0",
    "a=group:BUNDLE 0 1",
    "a=msid-semantic:WMS *",
    "m=audio 45391 UDP/TLS/RTP/SAVPF 96 9 0 8",
    "c=IN IP4 127.0.0.1",
    "a=sendrecv",
    "a=extmap:1 urn:ietf:params:rtp-hdrext:sdes:mid",
    "a=mid:0",
    "a=msid:2e406bdb-d4d8-4a9a-998f-6da9e96dff8e 111bbcdc-c489-4a0c-9433-6abfef575ba9",
    "a=rtcp:9 IN IP4 0.0.0.0",
    "a=rtcp-mux",
    "a=ssrc:1891658357 cname:f59259bd-3758-41ef-8ad0-3e7f6c073d68",
    "a=rtpmap:96 opus/48000/2",
    "a=rtpmap:0 PCMU/8000",
    "a=candidate:16572de626da4e5384a0ce2d0d93678a 1 udp 2130706431 127.0.0.1 45391 typ host",
    "a=end-of-candidates",
    "a=ice-ufrag:IkCq",
    "a=ice-pwd:GpRVaLp4WUCke7pbTeg2Nm",
    "a=fingerprint:sha-256 73:99:CB:DB:74:D3:1B:B0:B3:EC:E1:B0:39:AF:FC:EC:20:38:47:91:94:26:"
    "17:BB:0B:41:F0:98:E0:E4:15:FF",
    "a=setup:active",
    "m=application 45391 UDP/DTLS/SCTP webrtc-datachannel",
    "c=IN IP4 127.0.0.1",
    "a=mid:1",
    "a=sctp-port:5000",
    "a=max-message-size:262144",
    "a=setup:active",
]
PREFIXES = ["v=", "o=", "s=", "t=", "c=", "m=", "b=", "a=", "a=rtpmap:", "a=candidate:",
            "a=ssrc:", "a=ssrc-group:", "a=fmtp:", "a=rtcp-fb:", "a=group:", "a=extmap:",
            "a=fingerprint:", "a=sctp-port:", "a=sctpmap:", "a=msid:", "a=rtcp:", ""]
TOKENS = st.sampled_from(["", " ", "x", "0", "-1", "99999999999999999999", "IN", "IP4", ":",
                          "/", "UDP/TLS/RTP/SAVPF", "audio", "nan", "\x00", "\u202e"])


@st.composite
def sdp_answers(draw: st.DrawFn) -> str:
    """The real answer, mutated: lines dropped, duplicated, cut, swapped, tokens replaced,
    junk lines inserted."""
    lines = list(ANSWER_LINES)
    for _ in range(draw(st.integers(0, 6))):
        if not lines:
            break
        i = draw(st.integers(0, len(lines) - 1))
        op = draw(st.sampled_from(["drop", "dup", "cut", "junk", "swap", "token"]))
        if op == "drop":
            del lines[i]
        elif op == "dup":
            lines.insert(i, lines[i])
        elif op == "cut":
            lines[i] = lines[i][: draw(st.integers(0, len(lines[i])))]
        elif op == "junk":
            junk = draw(st.sampled_from(PREFIXES)) + draw(
                st.lists(TOKENS | st.text(max_size=8), max_size=5).map(" ".join)
            )
            lines.insert(i, junk)
        elif op == "swap":
            j = draw(st.integers(0, len(lines) - 1))
            lines[i], lines[j] = lines[j], lines[i]
        else:
            words = lines[i].split(" ")
            k = draw(st.integers(0, len(words) - 1))
            words[k] = draw(TOKENS)
            lines[i] = " ".join(words)
    sep = draw(st.sampled_from(["\r\n", "\n"]))
    return sep.join(lines) + sep


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


# ------------------------------------------------------------------------------ SDP answers


@settings(max_examples=400, deadline=None)
@given(sdp=sdp_answers() | st.text(max_size=300).map(lambda t: "v=0\r\n" + t))
def test_answer_check_accepts_only_parseable_sdp(sdp: str) -> None:
    try:
        checked = check_answer_sdp(sdp)
    except VoiceError as err:
        event("refused")
        assert err.code == "invalid_answer"
        assert "\x1b" not in err.message and "\n" not in err.message
        return
    event("accepted")
    assert checked == sdp
    SessionDescription.parse(sdp)  # what the transport will do next: must not raise


class Scripted:
    """One HTTP endpoint answering with whatever the current example says."""

    def __init__(self) -> None:
        self.status = 201
        self.body = b""
        self.headers: dict[str, str] = {}
        self.url = ""

    async def handle(self, request: web.Request) -> web.StreamResponse:
        await request.read()
        return web.Response(status=self.status, body=self.body, headers=self.headers)


@pytest.fixture
async def scripted() -> AsyncIterator[Scripted]:
    srv = Scripted()
    app = web.Application()
    app.router.add_post("/v1/realtime/calls", srv.handle)
    app.router.add_post("/v1/session-tokens", srv.handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    srv.url = f"http://127.0.0.1:{runner.addresses[0][1]}"
    try:
        yield srv
    finally:
        await runner.cleanup()


STATUSES = st.sampled_from([200, 201, 201, 201, 204, 302, 400, 401, 403, 404, 429, 500, 503]) | (
    st.integers(200, 599)
)


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    status=STATUSES,
    body=sdp_answers().map(str.encode) | st.binary(max_size=400),
    compress=st.booleans(),
    retry_after=st.none() | st.sampled_from(["1", "1" * 400, "-5", "nan", "Wed, 21 Oct 2015"]),
)
async def test_signaling_turns_any_answer_into_sdp_or_a_voice_error(
    scripted: Scripted, status: int, body: bytes, compress: bool, retry_after: str | None
) -> None:
    scripted.status = status
    scripted.body = gzip.compress(body) if compress else body
    scripted.headers = {"Content-Type": "application/sdp"}
    if compress:
        scripted.headers["Content-Encoding"] = "gzip"
    if retry_after is not None:
        scripted.headers["Retry-After"] = retry_after
    async with HttpSignaling(scripted.url, "ek_fuzz") as signaling:
        try:
            answer = await signaling.exchange("v=0\r\n")
        except VoiceError as err:
            event(f"error {err.code}")
            assert "\x1b" not in err.message
            assert err.retry_after is None or err.retry_after >= 0
            return
    event("answer")
    assert status in (200, 201)
    SessionDescription.parse(answer.sdp)


# ------------------------------------------------------------------------------ token answers

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=20)
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner,
                                                                max_size=3),
    max_leaves=8,
)
key_values = st.from_regex(r"ek_[A-Za-z0-9_\-]{1,40}", fullmatch=True)
token_answers = st.one_of(
    st.fixed_dictionaries(
        {"value": key_values, "expires_at": st.integers(1_000_000_000, 4_000_000_000)},
        optional={"session_id": json_values, "session": json_values},
    ).map(lambda d: ("valid", json.dumps(d).encode())),
    st.fixed_dictionaries(
        {},
        optional={"value": json_values | key_values, "expires_at": json_values,
                  "session_id": json_values, "session": json_values},
    ).map(lambda d: ("maybe", json.dumps(d).encode())),
    st.binary(max_size=200).map(lambda b: ("maybe", b)),
    st.integers(1, 40).map(lambda n: ("maybe", b"[" * 10 * n + b"]" * 10 * n)),
)


@settings(
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    status=STATUSES,
    answer=token_answers,
    secret=st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1,
                   max_size=12),
)
async def test_token_answers_give_the_exact_key_or_a_voice_error(
    scripted: Scripted, status: int, answer: tuple[str, bytes], secret: str
) -> None:
    kind, body = answer
    scripted.status, scripted.body = status, body
    scripted.headers = {"Content-Type": "application/json"}
    provider = EphemeralKeyProvider(
        scripted.url + "/v1/session-tokens", client_id="fuzz", client_secret=secret
    )
    async with provider:
        try:
            key = await provider.key()
        except VoiceError as err:
            event(f"error {err.code}")
            assert kind != "valid" or status not in (200, 201), (err, body)
            return
    event("key")
    assert status in (200, 201)
    assert key.value and not any(c.isspace() for c in key.value)
    assert math.isfinite(key.expires_at)
    if kind == "valid":  # served exactly, whatever the (weak) client secret
        served = json.loads(body)
        assert (key.value, key.expires_at) == (served["value"], served["expires_at"])


# ------------------------------------------------------------------------------ control API

CONTROL_POST = ["send_error", "go_silent", "resume", "close_call", "reject_offers",
                "delay_answers", "reset"]


@pytest.fixture
async def control_peer() -> AsyncIterator[RealtimePeer]:
    async with RealtimePeer(reply="tone") as peer:
        yield peer


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


control_bodies = st.one_of(
    st.fixed_dictionaries(
        {},
        optional={
            "count": json_values | st.integers(-5, 2000),
            "status": json_values | st.integers(100, 700),
            "retry_after": json_values,
            "seconds": json_values | st.floats(-10, 5000),
            "code": json_values,
            "message": json_values,
            "type": json_values,
            "param": json_values,
            "call_id": json_values,
        },
    ).map(lambda d: json.dumps(d).encode()),
    json_values.map(lambda v: json.dumps(v).encode()),
    st.binary(max_size=200),
    st.integers(1, 3000).map(lambda n: b"[" * n + b"]" * n),
    st.integers(1, 3000).map(lambda n: b'{"a":' * n + b"1" + b"}" * n),
)


@settings(
    max_examples=250,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    endpoint=st.sampled_from([*CONTROL_POST, "calls", "stats"]),
    body=control_bodies,
    token=st.sampled_from(["right", "right", "right", "wrong", "none"]),
    host=st.sampled_from(["own", "own", "own", "evil.example", "localhost:1"]),
)
async def test_control_api_answers_json_below_500_and_stays_bounded(
    control_peer: RealtimePeer,
    http: aiohttp.ClientSession,
    endpoint: str,
    body: bytes,
    token: str,
    host: str,
) -> None:
    peer = control_peer
    headers = {"Content-Type": "application/json"}
    if token == "right":
        headers.update(peer.control_headers)
    elif token == "wrong":
        headers["X-Control-Token"] = "not-the-token-0123456789"
    if host != "own":
        headers["Host"] = host
    method = "GET" if endpoint in ("calls", "stats") else "POST"
    async with http.request(
        method, f"{peer.base_url}/control/{endpoint}", data=body, headers=headers
    ) as r:
        status = r.status
        answer: Any = await r.json(content_type=None)
    event(f"{endpoint} {status}")
    assert status < 500, answer
    assert isinstance(answer, dict)
    if token != "right" or host != "own":
        assert status == 403
    assert 0 <= peer.pending_rejections <= MAX_PENDING_REJECTIONS
    assert 0 <= peer.answer_delay <= 3600
    peer.reset_faults()
