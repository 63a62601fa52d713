"""Attacks on the client side (issue 10, defects 1, 3, 8): token answers split over TCP segments,
a weak client secret, gzip/size bombs in the SDP answer, malformed SDP answers, ANSI escapes in
server text. Each test is an attack that the code before the fix failed."""

from __future__ import annotations

import asyncio
import gzip
import json
import tracemalloc
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from fsm_voice.errors import ErrorSource, Severity, VoiceError
from fsm_voice.signaling import HttpSignaling
from fsm_voice.tokens import EphemeralKeyProvider

pytestmark = pytest.mark.anyio

OFFER = "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n"
ANSWER = "v=0\r\no=- 2 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


Respond = Callable[[asyncio.StreamWriter], Awaitable[None]]


class RawServer:
    """A raw TCP HTTP/1.1 server on 127.0.0.1: reads one request, then ``respond`` writes the
    response bytes however it likes (split segments, bad framing)."""

    def __init__(self) -> None:
        self.respond: Respond | None = None
        self.url = ""
        self.requests: list[bytes] = []

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n"):
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value.strip())
            body = await reader.readexactly(length)
            self.requests.append(head + body)
            assert self.respond is not None
            await self.respond(writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()


@pytest.fixture
async def raw() -> AsyncIterator[RawServer]:
    srv = RawServer()
    server = await asyncio.start_server(srv.handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    srv.url = f"http://127.0.0.1:{port}"
    try:
        yield srv
    finally:
        server.close()
        await server.wait_closed()


def head(status: str, length: int, ctype: str, extra: str = "") -> bytes:
    return (
        f"HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {length}\r\n"
        f"{extra}Connection: close\r\n\r\n"
    ).encode()


def segmented(data: bytes, parts: int, gap: float = 0.02) -> Respond:
    """Write ``data`` in ``parts`` TCP segments ``gap`` seconds apart (the attack's timing)."""

    async def respond(writer: asyncio.StreamWriter) -> None:
        step = max(1, len(data) // parts)
        for i in range(0, len(data), step):
            writer.write(data[i : i + step])
            await writer.drain()
            await asyncio.sleep(gap)

    return respond


# ------------------------------------------------------------------------------ defect 1


async def test_token_answer_split_over_tcp_segments_is_read_whole(raw: RawServer) -> None:
    """Defect 1: one ``read(n)`` returned only the first segment -> invalid_token_response."""
    body = json.dumps(
        {"value": "ek_split_0123456789abcdef", "expires_at": 4_000_000_000, "session_id": "s1"}
    ).encode()
    # headers in one segment, the JSON body in four more
    raw.respond = segmented(head("200 OK", len(body), "application/json") + body, 5)
    provider = EphemeralKeyProvider(
        raw.url + "/v1/session-tokens", client_id="app", client_secret="cs-long-enough-secret"
    )
    async with provider:
        key = await provider.key()
    assert key.value == "ek_split_0123456789abcdef"
    assert key.expires_at == 4_000_000_000
    assert key.session_id == "s1"


async def test_weak_client_secret_does_not_corrupt_the_token_answer(raw: RawServer) -> None:
    """Defect 8: the provider scrubbed its secret out of the *success* body: a secret "1"
    turned ``"expires_at": 1700000060`` into ``***700000060`` (not JSON any more)."""
    body = json.dumps({"value": "ek_a1b1c1", "expires_at": 4_100_000_001}).encode()
    raw.respond = segmented(head("200 OK", len(body), "application/json") + body, 1)
    provider = EphemeralKeyProvider(
        raw.url + "/v1/session-tokens", client_id="app", client_secret="1"
    )
    async with provider:
        key = await provider.key()
    assert (key.value, key.expires_at) == ("ek_a1b1c1", 4_100_000_001)


async def test_token_error_text_is_still_scrubbed_and_printable(raw: RawServer) -> None:
    secret = "cs-echoed-secret-0123456789"
    body = json.dumps(
        {"error": {"message": f"bad secret {secret} \x1b[2J\x1b]0;pwned\x07", "code": "nope"}}
    ).encode()
    raw.respond = segmented(head("400 Bad Request", len(body), "application/json") + body, 1)
    provider = EphemeralKeyProvider(
        raw.url + "/v1/session-tokens", client_id="app", client_secret=secret
    )
    async with provider:
        with pytest.raises(VoiceError) as info:
            await provider.key()
    assert secret not in str(info.value)
    assert "\x1b" not in str(info.value) and "\x07" not in str(info.value)
    assert "\\x1b[2J" in str(info.value)  # shown, escaped


# ------------------------------------------------------------------------------ defect 3


async def test_gzip_bomb_answer_is_refused_without_inflating_it(raw: RawServer) -> None:
    """Defect 3: a 32 MB (inflated) answer in 32 KB of gzip was read whole into memory."""
    bomb = gzip.compress(ANSWER.encode() + b"a=x-pad:" + b"0" * (32 << 20), compresslevel=9)
    assert len(bomb) < 64 * 1024
    raw.respond = segmented(
        head("201 Created", len(bomb), "application/sdp", "Content-Encoding: gzip\r\n") + bomb, 1
    )
    tracemalloc.start()
    try:
        async with HttpSignaling(raw.url, "ek_test") as signaling:
            with pytest.raises(VoiceError) as info:
                await signaling.exchange(OFFER)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert info.value.code == "invalid_answer"
    assert info.value.severity is Severity.RECOVERABLE
    assert "larger than" in info.value.message
    assert peak < 8 << 20, f"peak {peak / 1e6:.1f} MB while refusing a 32 MB answer"


async def test_oversized_plain_answer_and_error_body_are_refused(raw: RawServer) -> None:
    big = ANSWER.encode() + b"a=x-pad:" + b"0" * (512 * 1024)
    raw.respond = segmented(head("201 Created", len(big), "application/sdp") + big, 1)
    async with HttpSignaling(raw.url, "ek_test", max_answer_bytes=64 * 1024) as signaling:
        with pytest.raises(VoiceError) as info:
            await signaling.exchange(OFFER)
        assert info.value.code == "invalid_answer"
        raw.respond = segmented(head("503 Service Unavailable", len(big), "text/plain") + big, 1)
        with pytest.raises(VoiceError) as info:
            await signaling.exchange(OFFER)
        assert info.value.code == "invalid_answer"


async def test_answer_split_over_tcp_segments_is_read_whole(raw: RawServer) -> None:
    data = ANSWER.encode()
    raw.respond = segmented(
        head("201 Created", len(data), "application/sdp", "Location: /v1/realtime/calls/rtc_z\r\n")
        + data,
        4,
    )
    async with HttpSignaling(raw.url, "ek_test") as signaling:
        answer = await signaling.exchange(OFFER)
    assert answer.sdp == ANSWER and answer.call_id == "rtc_z"


# ------------------------------------------------------------------------------ defect 8


@pytest.mark.parametrize(
    "sdp",
    [
        "v=0\r\nm=audio\r\n",  # AssertionError inside aiortc's parser
        "v=0\r\nc=IN\r\n",  # AssertionError
        "v=0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=candidate:1\r\n",  # AssertionError
        "v=0\r\nm=audio 9 UDP/TLS/RTP/SAVPF x\r\n",  # ValueError
        "v=0\r\no=- 1 1 IN IP4 1.1.1.1\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=rtpmap:111\r\n",
    ],
)
async def test_malformed_sdp_answer_is_a_typed_error(raw: RawServer, sdp: str) -> None:
    """Defect 8: aiortc's parser raised a bare AssertionError out of the transport."""
    data = sdp.encode()
    raw.respond = segmented(head("201 Created", len(data), "application/sdp") + data, 1)
    async with HttpSignaling(raw.url, "ek_test") as signaling:
        with pytest.raises(VoiceError) as info:
            await signaling.exchange(OFFER)
    err = info.value
    assert (err.code, err.severity, err.source) == (
        "invalid_answer",
        Severity.RECOVERABLE,
        ErrorSource.SIGNALING,
    )


async def test_malformed_answer_through_the_real_transport_is_typed(raw: RawServer) -> None:
    """The same attack end to end: AiortcTransport.open gets a VoiceError, not AssertionError."""
    from fsm_voice.transport import AiortcTransport

    class Sink:
        def signal(self, signal: object, detail: str = "") -> None: ...

        def server_event(self, event: object) -> None: ...

    data = b"v=0\r\nm=audio\r\n"
    raw.respond = segmented(head("201 Created", len(data), "application/sdp") + data, 1)
    async with HttpSignaling(raw.url, "ek_test") as signaling:
        transport = AiortcTransport(signaling, host_addresses=["127.0.0.1"])
        try:
            with pytest.raises(VoiceError) as info:
                await transport.open(Sink())
        finally:
            await transport.close()
    assert info.value.code == "invalid_answer"


async def test_ansi_escapes_in_server_error_text_are_escaped(raw: RawServer) -> None:
    """Defect 8: server-controlled text (an error body) reached the terminal raw."""
    body = json.dumps(
        {"error": {"message": "down \x1b[31mRED\x1b[0m \u202eevil\nforged log line"}}
    ).encode()
    data = head("503 Service Unavailable", len(body), "application/json") + body
    raw.respond = segmented(data, 1)
    async with HttpSignaling(raw.url, "ek_test") as signaling:
        with pytest.raises(VoiceError) as info:
            await signaling.exchange(OFFER)
    text = str(info.value)
    assert not any(c in text for c in "\x1b\u202e\n")
    assert "\\x1b[31mRED" in text


def test_printable_escapes_terminal_controls() -> None:
    from fsm_voice._text import printable

    assert printable("plain text, é 中 ok") == "plain text, é 中 ok"
    assert printable("\x1b]8;;http://x\x07link\x1b]8;;\x07") == (
        "\\x1b]8;;http://x\\x07link\\x1b]8;;\\x07"
    )
    assert printable("a\r\nb\u2028c\u200bd\ud800") == "a\\x0d\\x0ab\\u2028c\\u200bd\\ud800"
    assert printable("x" * 50, limit=10) == "x" * 10 + "..."


def test_demo_summary_shows_server_text_escaped() -> None:
    """Defect 8 at the call site: the demo's summary printed server error text and server event
    types raw (ANSI escapes, rich markup)."""
    import io
    import types

    from rich.console import Console

    from fsm_voice.demo import DemoRecorder, _summary

    rec = DemoRecorder(0.0)
    rec.errors.append(
        VoiceError(
            Severity.RECOVERABLE,
            "server_error",
            "boom \x1b[2J\x1b]0;owned\x07 [bold]x[/]",
            ErrorSource.SERVER,
        )
    )
    rec.server_event({"type": "error\x1b[31m"})
    session = types.SimpleNamespace(trace=[], alerts=[])
    out = io.StringIO()
    console = Console(file=out, force_terminal=False, color_system=None, width=400)
    _summary(console, rec, session, "none", None, None, 1.0, True, None)  # type: ignore[arg-type]
    text = out.getvalue()
    assert "\x1b" not in text and "\x07" not in text
    assert "\\x1b[2J" in text and "[bold]x[/]" in text and "error\\x1b[31m=1" in text
