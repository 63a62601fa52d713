"""Attacks on the token broker (issue 10, defects 2, 4, 5, 6, 8): malformed framing carrying a
secret, shared-address lockout, absurd upstream Retry-After / expires_at, REPLACE on the audit
table, unauthenticated audit growth, a /healthz blind to minting, slow request heads and bodies,
one client hogging the upstream slots. Each test is an attack the code before the fix failed."""

from __future__ import annotations

import asyncio
import json
import logging
import sqlite3
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from fsm_voice.broker import HEALTH_PATH, RatePolicy, TokenBroker
from tests.test_broker import (
    CLIENTS,
    FakeClock,
    bearer,
    fake_upstream,
    make_broker,
    request,
)

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
async def http() -> Any:
    async with aiohttp.ClientSession() as s:
        yield s


def minted(seconds: int = 60, value: str = "ek_fake_0123456789abcdef", **extra: Any) -> Any:
    body = {"value": value, "expires_at": int(time.time()) + seconds, "session_id": "sess_1"}
    body.update(extra)
    return body


async def ok_upstream(request: web.Request) -> web.StreamResponse:
    data = await request.json()
    return web.json_response(minted(data.get("expires_after", {}).get("seconds", 60)))


async def raw_exchange(port: int, data: bytes, timeout: float = 5.0) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(data)
        await writer.drain()
        return await asyncio.wait_for(reader.read(), timeout)
    finally:
        writer.close()


def port_of(broker: TokenBroker) -> int:
    return int(broker.base_url.rsplit(":", 1)[1])


# ------------------------------------------------------------------------------ defect 2

SECRET = CLIENTS["app-1"]
MALFORMED = {
    "nul": f"POST /v1/session-tokens HTTP/1.1\r\nHost: x\r\nX-Client-Id: app-1\r\n"
    f"Authorization: Bearer {SECRET}\x00\r\nContent-Length: 0\r\n\r\n",
    "bare_lf": f"POST /v1/session-tokens HTTP/1.1\nHost: x\nX-Client-Id: app-1\n"
    f"Authorization: Bearer {SECRET}\nContent-Length: 0\n\n",
    "obs_fold": f"POST /v1/session-tokens HTTP/1.1\r\nHost: x\r\nX-Client-Id: app-1\r\n"
    f"Authorization: Bearer\r\n {SECRET}\r\nContent-Length: 0\r\n\r\n",
}


@pytest.mark.parametrize("framing", sorted(MALFORMED))
async def test_malformed_request_never_echoes_the_client_secret(
    framing: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Defect 2: aiohttp put the offending header line (the secret) in the 400 body and logged
    it with a traceback."""
    caplog.set_level(logging.DEBUG)
    async with (
        fake_upstream(ok_upstream) as upstream,
        make_broker(upstream, tmp_path / "a.sqlite3") as broker,
    ):
        answer = await raw_exchange(port_of(broker), MALFORMED[framing].encode())
    assert answer.startswith(b"HTTP/1.")
    assert b" 400 " in answer.split(b"\r\n", 1)[0]
    assert SECRET.encode() not in answer
    assert SECRET[:12] not in caplog.text
    body = answer.partition(b"\r\n\r\n")[2]
    assert json.loads(body)["error"]["code"] == "malformed_request"


# ------------------------------------------------------------------------------ defect 4


async def test_an_attacker_behind_a_shared_address_locks_out_no_valid_client(
    http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    """Defect 4: 31 bad guesses from an address locked out every client behind it (the TLS
    proxy the README recommends)."""
    mono = FakeClock(0.0)
    async with (
        fake_upstream(ok_upstream) as upstream,
        make_broker(
            upstream,
            tmp_path / "a.sqlite3",
            clock=mono,
            auth_failure_rate=RatePolicy(capacity=30, refill_per_second=1.0),
        ) as broker,
    ):
        statuses = []
        for i in range(200):  # the attacker guesses secrets of real and made-up clients
            client = ("app-1", "app-2", f"nobody-{i}")[i % 3]
            statuses.append((await request(http, broker.token_url, headers={
                "Authorization": f"Bearer guess-{i}", "X-Client-Id": client}))[0])
        assert set(statuses) == {401, 429} and statuses[-1] == 429  # the guesser is limited
        for client in ("app-1", "app-2"):  # ... the valid clients are not
            status, _, body = await request(http, broker.token_url, headers=bearer(client))
            assert status == 200, body
        assert broker.auth_failures is not None


# ------------------------------------------------------------------------------ defect 5


@pytest.mark.parametrize(
    ("retry_after", "expected"),
    [("1" * 400, "300"), ("999999999", "300"), ("7", "7"), ("0.2", "1"), ("nan", None)],
)
async def test_absurd_upstream_retry_after_is_clamped_and_audited(
    http: aiohttp.ClientSession, tmp_path: Path, retry_after: str, expected: str | None
) -> None:
    """Defect 5: a 400-digit Retry-After gave a 500 with no audit row; huge finite values were
    passed on to clients."""

    async def limited(request: web.Request) -> web.StreamResponse:
        return web.json_response(
            {"error": {"type": "requests", "code": "rate_limit_exceeded", "message": "slow"}},
            status=429,
            headers={"Retry-After": retry_after},
        )

    async with (
        fake_upstream(limited) as upstream,
        make_broker(upstream, tmp_path / "a.sqlite3") as broker,
    ):
        status, headers, body = await request(http, broker.token_url, headers=bearer())
        assert status == 502, body
        assert headers.get("Retry-After") == expected
        rows = await broker.audit.rows()
    assert [(r["outcome"], r["http_status"]) for r in rows] == [("upstream_error", 502)]


async def test_upstream_expires_at_is_clamped_to_what_was_asked(
    http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    """Defect 5: the broker handed out the upstream's 10-year expires_at."""
    ten_years = 10 * 365 * 86400

    async def generous(request: web.Request) -> web.StreamResponse:
        return web.json_response(minted(ten_years, session_id="sess_\x1b[31m" + "x" * 500))

    async with (
        fake_upstream(generous) as upstream,
        make_broker(upstream, tmp_path / "a.sqlite3", default_expires_after=60) as broker,
    ):
        before = time.time()
        status, _, body = await request(http, broker.token_url, headers=bearer())
        after = time.time()
    assert status == 200, body
    assert int(before) + 60 <= body["expires_at"] <= after + 60
    assert body["session_id"] is None  # not identifier-like: dropped


@pytest.mark.parametrize(
    "answer",
    [
        {"value": "ek_past_0123456789", "expires_at": 1_000_000_000},  # already expired
        {"value": "ek_" + "k" * 5000, "expires_at": 4_000_000_000},  # absurd key
        {"value": "ek_ctl\x1b[2J", "expires_at": 4_000_000_000},  # control characters
    ],
)
async def test_unusable_upstream_keys_are_refused(
    http: aiohttp.ClientSession, tmp_path: Path, answer: dict[str, Any]
) -> None:
    async def odd(request: web.Request) -> web.StreamResponse:
        return web.json_response(answer)

    async with (
        fake_upstream(odd) as upstream,
        make_broker(upstream, tmp_path / "a.sqlite3") as broker,
    ):
        status, _, body = await request(http, broker.token_url, headers=bearer())
        assert status == 502, body
        assert body["error"]["code"] == "upstream_invalid_response"
        assert "value" not in body
        rows = await broker.audit.rows()
    assert [r["outcome"] for r in rows] == ["upstream_error"]


# ------------------------------------------------------------------------------ defect 6


async def test_audit_rows_cannot_be_replaced(http: aiohttp.ClientSession, tmp_path: Path) -> None:
    """Defect 6: INSERT OR REPLACE (and UPSERT) overwrote an 'append-only' row."""
    path = tmp_path / "a.sqlite3"
    async with (
        fake_upstream(ok_upstream) as upstream,
        make_broker(upstream, path) as broker,
    ):
        assert (await request(http, broker.token_url, headers=bearer()))[0] == 200
        [row] = await broker.audit.rows()
        forged = (
            "INSERT OR REPLACE INTO audit (id, ts, outcome, http_status, latency_ms) "
            "VALUES (?, 0, 'bad_request', 400, 0)"
        )
        with pytest.raises(sqlite3.DatabaseError):
            await broker.audit.execute(forged, (row["id"],))
        with pytest.raises(sqlite3.DatabaseError):
            await broker.audit.execute(
                "REPLACE INTO audit (id, ts, outcome, http_status, latency_ms) "
                "VALUES (?, 0, 'bad_request', 400, 0)",
                (row["id"],),
            )
        with pytest.raises(sqlite3.DatabaseError):
            await broker.audit.execute(
                "INSERT INTO audit (id, ts, outcome, http_status, latency_ms) "
                "VALUES (?, 0, 'bad_request', 400, 0) ON CONFLICT(id) DO UPDATE SET "
                "outcome = excluded.outcome",
                (row["id"],),
            )
        assert await broker.audit.rows() == [row]
    # another connection to the file (no recursive_triggers pragma) is refused as well
    conn = sqlite3.connect(path)
    try:
        with pytest.raises(sqlite3.DatabaseError):
            conn.execute(forged, (row["id"],))
        assert conn.execute("SELECT outcome FROM audit").fetchall() == [("issued",)]
    finally:
        conn.close()


async def test_unauthenticated_requests_cannot_grow_the_audit_log_without_bound(
    http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    """Defect 6: every 401 appended a row (82 B each), for anyone without credentials."""
    mono = FakeClock(0.0)
    async with (
        fake_upstream(ok_upstream) as upstream,
        make_broker(
            upstream,
            tmp_path / "a.sqlite3",
            clock=mono,
            auth_failure_rate=None,
            unauthenticated_audit_rate=RatePolicy(capacity=10, refill_per_second=0.1),
        ) as broker,
    ):
        for i in range(300):
            headers = {"Authorization": f"Bearer nope-{i}", "X-Client-Id": "app-1"}
            assert (await request(http, broker.token_url, headers=headers))[0] == 401
        for _ in range(3):  # authenticated requests are always audited
            assert (await request(http, broker.token_url, headers=bearer()))[0] == 200
        rows = await broker.audit.rows()
        health = (await request(http, broker.base_url + HEALTH_PATH, method="GET"))[2]
    outcomes = [r["outcome"] for r in rows]
    assert outcomes.count("denied_auth") == 10
    assert outcomes.count("issued") == 3
    assert health["audit_suppressed"] == 290


async def test_healthz_reflects_whether_minting_works(
    http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    """Defect 6: /healthz said ok while every mint failed."""
    failing = True

    async def flaky(request: web.Request) -> web.StreamResponse:
        if failing:
            return web.json_response(
                {"error": {"type": "server_error", "code": "server_error", "message": "down"}},
                status=500,
            )
        return await ok_upstream(request)

    async with (
        fake_upstream(flaky) as upstream,
        make_broker(upstream, tmp_path / "a.sqlite3", unhealthy_after_failures=3) as broker,
    ):
        health_url = broker.base_url + HEALTH_PATH
        assert (await request(http, health_url, method="GET"))[0] == 200
        for _ in range(3):
            assert (await request(http, broker.token_url, headers=bearer()))[0] == 502
        status, _, body = await request(http, health_url, method="GET")
        assert (status, body["status"], body["minting"]) == (503, "failing", "failing")
        assert body["last_mint_error"] == "server_error"
        failing = False
        assert (await request(http, broker.token_url, headers=bearer()))[0] == 200
        status, _, body = await request(http, health_url, method="GET")
        assert (status, body["status"]) == (200, "ok")


# ------------------------------------------------------------------------------ defect 8


async def test_slow_request_head_is_cut_off(tmp_path: Path) -> None:
    """Defect 8 (slow-loris): a request head dribbled one byte at a time held the connection
    open for ever."""
    async with (
        fake_upstream(ok_upstream) as upstream,
        make_broker(upstream, tmp_path / "a.sqlite3", header_timeout=0.5) as broker,
    ):
        reader, writer = await asyncio.open_connection("127.0.0.1", port_of(broker))
        head = b"POST /v1/session-tokens HTTP/1.1\r\nHost: x\r\n" + b"X-Pad: " + b"a" * 400

        async def dribble() -> None:
            for byte in head:
                writer.write(bytes([byte]))
                await writer.drain()
                await asyncio.sleep(0.05)

        sender = asyncio.create_task(dribble())
        started = time.monotonic()
        try:
            closed = await asyncio.wait_for(reader.read(), 10.0)  # b"" once the server closes
        finally:
            sender.cancel()
            writer.close()
        assert closed == b""
        assert time.monotonic() - started < 5.0  # 20 s of dribbling was planned


async def test_slow_request_body_gets_408(tmp_path: Path) -> None:
    async with (
        fake_upstream(ok_upstream) as upstream,
        make_broker(upstream, tmp_path / "a.sqlite3", body_timeout=0.3) as broker,
    ):
        head = (
            f"POST /v1/session-tokens HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {SECRET}\r\n"
            "X-Client-Id: app-1\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{"
        )
        reader, writer = await asyncio.open_connection("127.0.0.1", port_of(broker))
        try:
            writer.write(head.encode())
            answer = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10.0)
        finally:
            writer.close()
        rows = await broker.audit.rows()
    assert b" 408 " in answer.split(b"\r\n", 1)[0]
    assert [r["outcome"] for r in rows] == ["bad_request"]


async def test_upstream_slots_are_shared_fairly_between_clients(
    http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    """Defect 8: upstream slots were first come, first served: one client's burst queued
    ahead of every other client (which then timed out with 503)."""
    release = asyncio.Event()
    arrivals: list[int] = []
    arrived = asyncio.Event()

    async def gated(request: web.Request) -> web.StreamResponse:
        seconds = (await request.json())["expires_after"]["seconds"]
        arrivals.append(seconds)
        arrived.set()
        await release.wait()
        return web.json_response(minted(seconds))

    def body(seconds: int) -> str:
        return json.dumps({"expires_after": {"seconds": seconds}})

    async with (
        fake_upstream(gated) as upstream,
        make_broker(
            upstream,
            tmp_path / "a.sqlite3",
            max_concurrent_upstream=4,
            upstream_queue_timeout=30.0,
            rate=RatePolicy(capacity=100, refill_per_second=1.0),
        ) as broker,
    ):
        hog = [
            asyncio.create_task(
                request(http, broker.token_url, headers=bearer("app-1"), data=body(100))
            )
            for _ in range(12)
        ]
        # the hog's first requests are upstream (its per-client share: 2 of 4 slots)
        await asyncio.wait_for(_until(lambda: len(arrivals) >= 2, arrived), 10.0)
        polite = asyncio.create_task(
            request(http, broker.token_url, headers=bearer("app-2"), data=body(200))
        )
        try:
            # app-2's one request reaches upstream while app-1 still has a queue of its own
            await asyncio.wait_for(_until(lambda: 200 in arrivals, arrived), 5.0)
            assert arrivals.index(200) < 4
        finally:
            release.set()
            results = await asyncio.gather(polite, *hog)
    assert [r[0] for r in results] == [200] * 13


async def _until(predicate: Any, changed: asyncio.Event) -> None:
    while not predicate():
        changed.clear()
        await changed.wait()


async def test_fair_slots_unit() -> None:
    from fsm_voice.broker.ratelimit import FairSlots

    slots = FairSlots(3, per_key=2)
    await slots.acquire("a")
    await slots.acquire("a")
    blocked = asyncio.create_task(slots.acquire("a"))  # a is at its share
    await asyncio.sleep(0)
    assert not blocked.done() and slots.waiting("a") == 1
    await slots.acquire("b")  # b is served at once although a queued first
    late = asyncio.create_task(slots.acquire("c"))
    await asyncio.sleep(0)
    slots.release("a")  # a (holding 1) and c (holding 0) wait: the one holding fewer wins
    await asyncio.sleep(0)
    assert late.done() and not blocked.done()
    # a timed-out waiter leaves nothing behind
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(slots.acquire("d"), 0.01)
    assert slots.waiting("d") == 0
    # granted, then cancelled before it resumed: the slot is given back
    slots.release("b")
    blocked.cancel()
    with pytest.raises(asyncio.CancelledError):
        await blocked
    assert slots.held("a") == 1 and slots.free == 1
    with pytest.raises(RuntimeError):
        slots.release("nobody")
