"""Attacks on the local peer (issue 10, defects 1, 7, 8): bodies split over TCP segments, an
unbounded ``reject_offers``, another local process listing and hanging up calls, DNS
rebinding, 600-deep JSON, slow request heads. Each test is an attack the code before the fix
failed."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from fsm_voice.peer import RealtimePeer
from fsm_voice.peer.control import control_refusal

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
async def peer() -> AsyncIterator[RealtimePeer]:
    async with RealtimePeer(reply="tone") as p:
        yield p


@pytest.fixture
async def impatient() -> AsyncIterator[RealtimePeer]:
    async with RealtimePeer(reply="tone", header_timeout=0.5) as p:
        yield p


def port_of(peer: RealtimePeer) -> int:
    return int(peer.base_url.rsplit(":", 1)[1])


def token_headers(peer: RealtimePeer) -> dict[str, str]:
    return dict(getattr(peer, "control_headers", {}))


async def segmented_post(
    peer: RealtimePeer, path: str, body: bytes, headers: dict[str, str], parts: int = 4
) -> tuple[int, bytes]:
    """POST with the body in ``parts`` TCP segments 20 ms apart (the attack's timing)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port_of(peer))
    head = f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port_of(peer)}\r\n"
    head += "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    head += f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    try:
        writer.write(head.encode())
        await writer.drain()
        step = max(1, len(body) // parts)
        for i in range(0, len(body), step):
            await asyncio.sleep(0.02)
            writer.write(body[i : i + step])
            await writer.drain()
        answer = await asyncio.wait_for(reader.read(), 10.0)
    finally:
        writer.close()
    status_line, _, rest = answer.partition(b"\r\n")
    return int(status_line.split()[1]), rest.partition(b"\r\n\r\n")[2]


# ------------------------------------------------------------------------------ defect 1


async def test_control_body_split_over_tcp_segments_is_read_whole(peer: RealtimePeer) -> None:
    """Defect 1 (peer): the control handler's one read(n) saw only the first segment."""
    body = json.dumps({"count": 2, "status": 503, "retry_after": 1, "message": "x" * 200})
    headers = {"Content-Type": "application/json", **token_headers(peer)}
    status, answer = await segmented_post(peer, "/control/reject_offers", body.encode(), headers)
    assert status == 200, answer
    assert json.loads(answer)["pending_rejections"] == 2


async def test_client_secrets_body_split_over_tcp_segments_is_read_whole(
    peer: RealtimePeer,
) -> None:
    """Defect 1 (peer): the client_secrets handler's one read(n) saw only the first segment."""
    body = json.dumps(
        {"expires_after": {"seconds": 120}, "session": {"type": "realtime", "instructions": "hi"}}
    )
    headers = {"Content-Type": "application/json", "Authorization": "Bearer sk-test-0123456789"}
    status, answer = await segmented_post(
        peer, "/v1/realtime/client_secrets", body.encode(), headers
    )
    assert status == 200, answer
    assert json.loads(answer)["session"]["instructions"] == "hi"


# ------------------------------------------------------------------------------ defect 7


async def test_reject_offers_count_is_bounded(peer: RealtimePeer) -> None:
    """Defect 7: any count was queued one object each (+195 MB, the loop blocked 2.7 s)."""
    async with aiohttp.ClientSession(headers=token_headers(peer)) as http:
        for count in (1001, 10**9, 1e308):
            async with http.post(
                peer.base_url + "/control/reject_offers", json={"count": count}
            ) as r:
                assert r.status == 400, count
        assert peer.pending_rejections == 0
        async with http.post(peer.base_url + "/control/reject_offers", json={"count": 1000}) as r:
            assert r.status == 200
        async with http.post(peer.base_url + "/control/reject_offers", json={"count": 1}) as r:
            assert r.status == 400  # the bound is on what is pending
    assert peer.pending_rejections == 1000
    with pytest.raises(ValueError):
        peer.reject_offers(1)


async def test_another_local_process_cannot_list_or_hang_up_calls(peer: RealtimePeer) -> None:
    """Defect 7: any local process could list every call and hang it up."""
    from tests.test_peer import _offer_sdp, _post

    sdp = await _offer_sdp()
    status, headers, _ = await _post(peer.calls_url, sdp, token="ek_owner_0123456789")
    assert status == 201
    call_id = headers["Location"].rsplit("/", 1)[1]
    async with aiohttp.ClientSession() as http:
        for intruder in ({}, {"X-Control-Token": "guessed-token-0123456789"}):
            async with http.get(peer.base_url + "/control/calls", headers=intruder) as r:
                assert r.status == 403
            async with http.post(
                peer.base_url + "/control/close_call", json={}, headers=intruder
            ) as r:
                assert r.status == 403
        async with http.get(peer.base_url + "/control/calls", headers=peer.control_headers) as r:
            assert r.status == 200
            assert [c["call_id"] for c in (await r.json())["calls"]] == [call_id]
    # hanging up someone else's call: as unknown as a missing one
    hangup = f"{peer.calls_url}/{call_id}/hangup"
    status, _, _ = await _post(hangup, "", ctype="text/plain", token="ek_intruder_987654")
    assert status == 404 and call_id in peer.calls
    status, _, _ = await _post(hangup, "", ctype="text/plain", token="ek_owner_0123456789")
    assert status == 200 and call_id not in peer.calls


async def test_minted_keys_of_one_api_key_share_their_calls() -> None:
    """A refreshed ephemeral key (same minting API key) may hang up the call of the old one."""
    from tests.test_peer import _offer_sdp, _post

    async with (
        RealtimePeer(reply="tone", require_ephemeral=True) as peer,
        aiohttp.ClientSession() as http,
    ):

        async def mint(api_key: str) -> str:
            async with http.post(
                peer.base_url + "/v1/realtime/client_secrets",
                json={},
                headers={"Authorization": f"Bearer {api_key}"},
            ) as r:
                return str((await r.json())["value"])

        first, second, other = await mint("sk-a-0123"), await mint("sk-a-0123"), await mint("sk-b")
        status, headers, _ = await _post(peer.calls_url, await _offer_sdp(), token=first)
        assert status == 201
        hangup = f"{peer.calls_url}/{headers['Location'].rsplit('/', 1)[1]}/hangup"
        assert (await _post(hangup, "", ctype="text/plain", token=other))[0] == 404
        assert (await _post(hangup, "", ctype="text/plain", token=second))[0] == 200


@pytest.mark.parametrize(
    "host",
    ["evil.example", "evil.example:{port}", "127.0.0.1:1", "10.0.0.1:{port}", "[::2]:{port}", ""],
)
async def test_control_api_refuses_a_rebound_host(peer: RealtimePeer, host: str) -> None:
    """Defect 7: no Host check, so a DNS-rebound page (Host: evil.example) drove the API."""
    headers = {"Host": host.format(port=port_of(peer)), **token_headers(peer)}
    async with (
        aiohttp.ClientSession() as http,
        http.get(peer.base_url + "/control/calls", headers=headers) as r,
    ):
        assert r.status == 403


@pytest.mark.parametrize("host", ["127.0.0.1:{port}", "localhost:{port}", "127.0.0.1", "[::1]"])
async def test_control_api_accepts_its_own_names(peer: RealtimePeer, host: str) -> None:
    headers = {"Host": host.format(port=port_of(peer)), **token_headers(peer)}
    async with (
        aiohttp.ClientSession() as http,
        http.get(peer.base_url + "/control/stats", headers=headers) as r,
    ):
        assert r.status == 200


def test_control_refusal_checks_host_and_token() -> None:
    ok: dict[str, Any] = {"bound": "127.0.0.1", "port": 80, "expected_token": "t" * 20}
    assert control_refusal("127.0.0.1", None, host="127.0.0.1:80", token="t" * 20, **ok) is None
    assert control_refusal("127.0.0.1", None, host="a.b:80", token="t" * 20, **ok) is not None
    assert control_refusal("127.0.0.1", None, host="127.0.0.1:80", token="x", **ok) is not None
    assert control_refusal("127.0.0.1", None, host="::1", token="t" * 20, **ok) is not None


@pytest.mark.parametrize("path", ["/control/send_error", "/control/reject_offers"])
async def test_deeply_nested_control_json_is_a_400(peer: RealtimePeer, path: str) -> None:
    """Defect 7: deep JSON (600 levels were enough) raised RecursionError -> 500."""
    deep = "[" * 20_000 + "]" * 20_000  # 40 KB: under the body limit
    async with (
        aiohttp.ClientSession(headers=token_headers(peer)) as http,
        http.post(
            peer.base_url + path, data=deep, headers={"Content-Type": "application/json"}
        ) as r,
    ):
        assert r.status == 400
        assert (await r.json())["error"]["code"] == "invalid_value"


def test_deeply_nested_data_channel_event_gets_an_error_event() -> None:
    """Defect 7 on the data channel: deep JSON raised RecursionError out of the parser."""
    from fsm_voice.peer.protocol import parse_client_event

    event, error = parse_client_event("[" * 100_000 + "]" * 100_000)
    assert event is None and error is not None
    assert error["error"]["code"] == "invalid_json"


async def test_deeply_nested_multipart_session_is_a_400(peer: RealtimePeer) -> None:
    from tests.test_peer import _offer_sdp

    form = aiohttp.FormData()
    form.add_field("sdp", await _offer_sdp(), content_type="application/sdp")
    form.add_field("session", "[" * 30_000 + "]" * 30_000, content_type="application/json")
    async with (
        aiohttp.ClientSession() as http,
        http.post(peer.calls_url, data=form, headers={"Authorization": "Bearer ek_x"}) as r,
    ):
        assert r.status == 400


# ------------------------------------------------------------------------------ defect 8


@pytest.mark.parametrize(
    "framing",
    [
        "Authorization: Bearer {key}\x00\r\n",  # NUL
        "Authorization: Bearer\r\n {key}\r\n",  # obs-fold
    ],
)
async def test_malformed_request_to_the_peer_never_echoes_the_key(
    peer: RealtimePeer, framing: str
) -> None:
    """Defect 2 on the peer (same server code as the broker): no key in the 400 body."""
    key = "sk-peer-secret-0123456789abcdef"
    head = "POST /v1/realtime/calls HTTP/1.1\r\nHost: x\r\n" + framing.format(key=key)
    reader, writer = await asyncio.open_connection("127.0.0.1", port_of(peer))
    try:
        writer.write((head + "Content-Length: 0\r\n\r\n").encode())
        answer = await asyncio.wait_for(reader.read(), 10.0)
    finally:
        writer.close()
    assert b" 400 " in answer.split(b"\r\n", 1)[0]
    assert key.encode() not in answer and key[:10].encode() not in answer


async def test_slow_request_head_is_cut_off(impatient: RealtimePeer) -> None:
    """Defect 8 (slow-loris): a request head dribbled byte by byte held the connection."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port_of(impatient))
    head = b"POST /v1/realtime/calls HTTP/1.1\r\nHost: x\r\nX-Pad: " + b"a" * 400

    async def dribble() -> None:
        for byte in head:
            writer.write(bytes([byte]))
            await writer.drain()
            await asyncio.sleep(0.05)

    sender = asyncio.create_task(dribble())
    started = time.monotonic()
    try:
        assert await asyncio.wait_for(reader.read(), 10.0) == b""
    finally:
        sender.cancel()
        writer.close()
    assert time.monotonic() - started < 5.0  # 20 s of dribbling was planned


async def test_slow_offer_body_gets_408(impatient: RealtimePeer) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port_of(impatient))
    try:
        writer.write(
            b"POST /v1/realtime/calls HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer ek_x\r\n"
            b"Content-Type: application/sdp\r\nContent-Length: 5000\r\n\r\nv=0\r\n"
        )
        answer = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10.0)
    finally:
        writer.close()
    assert b" 408 " in answer.split(b"\r\n", 1)[0]
