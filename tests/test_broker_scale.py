"""The broker beyond one process (issue 13): rate limits shared in a real Redis, the audit log
hash-chained in SQLite and in a real PostgreSQL (append-only by the database), fail-closed on a
Redis outage, every handed-out key with its committed row across a PostgreSQL restart, trusted
proxies, ``audit-verify``. Redis and PostgreSQL run on unix sockets (tests/broker_servers.py);
the tests that need one skip only when its binaries are missing."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import sqlite3
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from fsm_voice.broker import BrokerConfig, ClientRegistry, RatePolicy, TokenBroker, hash_secret
from fsm_voice.broker import cli as broker_cli
from fsm_voice.broker.audit import (
    GENESIS,
    AuditEntry,
    AuditLog,
    AuditStore,
    chain_hash,
    verify_rows,
    verify_sqlite,
)
from fsm_voice.broker.audit_pg import PostgresAuditLog, verify_postgres
from fsm_voice.broker.forwarded import client_address, parse_networks
from fsm_voice.broker.ratelimit import LimitStore, LimitsUnavailable, MemoryLimits
from fsm_voice.broker.redis_limits import RedisLimits
from fsm_voice.errors import ConfigError
from fsm_voice.peer import RealtimePeer
from tests.broker_servers import (
    WRITER_ROLE,
    PostgresServer,
    RedisServer,
    postgres_missing,
    redis_missing,
)
from tests.test_broker import _RUN_CLI, API_KEY, CLIENTS, SESSION, FakeClock, bearer, request

pytestmark = pytest.mark.anyio

needs_redis = pytest.mark.skipif(redis_missing() is not None, reason=str(redis_missing()))
needs_postgres = pytest.mark.skipif(
    postgres_missing() is not None, reason=str(postgres_missing())
)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


@pytest.fixture
async def peer() -> AsyncIterator[RealtimePeer]:
    async with RealtimePeer(api_keys={API_KEY}) as p:
        yield p


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    server = RedisServer()
    try:
        server.start()
        yield server
    finally:
        server.close()


@pytest.fixture(scope="module")
def pg_server() -> Iterator[PostgresServer]:
    reason = postgres_missing()
    if reason is not None:
        pytest.skip(reason)
    server = PostgresServer()
    try:
        server.start()
        yield server
    finally:
        server.close()


@pytest.fixture
def pg_dsn(pg_server: PostgresServer) -> str:
    """A fresh audit database; the DSN of the broker's writer role on it."""
    return pg_server.dsn(WRITER_ROLE, pg_server.new_database())


def redis_limits(server: RedisServer) -> RedisLimits:
    return RedisLimits(server.url, timeout=0.5)


def pg_audit(dsn: str) -> PostgresAuditLog:
    return PostgresAuditLog(dsn)


def make_broker(
    upstream: str,
    audit: AuditStore | str | Path,
    limits: LimitStore | None = None,
    **config: Any,
) -> TokenBroker:
    config.setdefault("session_config", SESSION)
    return TokenBroker(
        BrokerConfig(upstream_base=upstream, **config),
        api_key=API_KEY,
        clients=ClientRegistry.from_secrets(CLIENTS),
        audit=audit,
        limits=limits,
        manage_stores=not isinstance(audit, str | Path),
    )


async def post(http: aiohttp.ClientSession, url: str, **headers: str) -> tuple[int, Any, Any]:
    status, hdrs, body = await request(http, url, headers={**bearer("app-1"), **headers})
    return status, hdrs, body


# ------------------------------------------------------------------------------ trusted proxies


def test_forwarding_headers_are_believed_only_from_trusted_proxies() -> None:
    proxies = parse_networks(["10.0.0.0/8", "::1"])
    xff = "x-forwarded-for"
    # not from a proxy: the header is the client's own claim, ignored
    assert client_address("198.51.100.7", ["1.2.3.4"], proxies, xff) == "198.51.100.7"
    # no proxies configured: never believed, even from loopback
    assert client_address("::1", ["1.2.3.4"], (), xff) == "::1"
    # from a proxy: the rightmost untrusted hop; what the client wrote itself is to its left
    assert client_address("10.0.0.2", ["6.6.6.6, 203.0.113.9"], proxies, xff) == "203.0.113.9"
    assert client_address("10.0.0.2", ["6.6.6.6", "203.0.113.9, 10.0.0.3"], proxies, xff) == (
        "203.0.113.9"
    )
    # a trusted proxy forwarding garbage or 'unknown': the last trusted hop stands in
    assert client_address("10.0.0.2", ["evil, 10.0.0.3"], proxies, xff) == "10.0.0.3"
    assert client_address("10.0.0.2", [], proxies, xff) == "10.0.0.2"
    # RFC 7239 Forwarded, with ports and IPv6
    fwd = "forwarded"
    assert client_address(
        "::1", ['for="[2001:db8::7]:4711";proto=https, for=10.1.1.1'], proxies, fwd
    ) == "2001:db8::7"
    assert client_address("10.0.0.2", ['for="192.0.2.60:8080"'], proxies, fwd) == "192.0.2.60"
    assert client_address("10.0.0.2", ["for=unknown"], proxies, fwd) == "10.0.0.2"
    with pytest.raises(ConfigError):
        parse_networks(["not-a-network"])
    with pytest.raises(ConfigError):
        BrokerConfig(forwarded_header="x-real-ip")  # type: ignore[arg-type]


async def test_the_broker_audits_and_limits_the_forwarded_client(
    http: aiohttp.ClientSession, peer: RealtimePeer, tmp_path: Path
) -> None:
    """Behind a trusted proxy (here: loopback) each forwarded client has its own failed-auth
    bucket and its own address in the audit log; without the trust list the proxy's."""
    failures = RatePolicy(capacity=2, refill_per_second=0.001)
    async with make_broker(
        peer.base_url,
        tmp_path / "a.sqlite3",
        trusted_proxies=["127.0.0.0/8"],
        auth_failure_rate=failures,
    ) as broker:
        wrong = {"Authorization": "Bearer nope", "X-Client-Id": "app-1"}
        spoofed = {**wrong, "X-Forwarded-For": "1.1.1.1"}
        statuses = [(await request(http, broker.token_url, headers=spoofed))[0] for _ in range(4)]
        assert statuses == [401, 401, 429, 429]
        # another client behind the same proxy is not locked out by the first one's failures
        status, _, _ = await request(
            http, broker.token_url, headers={**wrong, "X-Forwarded-For": "2.2.2.2"}
        )
        assert status == 401
        status, _, _ = await post(http, broker.token_url, **{"X-Forwarded-For": "6.6.6.6, 3.3.3.3"})
        assert status == 200
        rows = await broker.audit.rows()
        assert [r["remote_addr"] for r in rows] == ["1.1.1.1"] * 4 + ["2.2.2.2", "3.3.3.3"]
    async with make_broker(peer.base_url, tmp_path / "b.sqlite3") as broker:
        await post(http, broker.token_url, **{"X-Forwarded-For": "3.3.3.3"})
        [row] = await broker.audit.rows()
        assert row["remote_addr"] == "127.0.0.1"


# ------------------------------------------------------------------------------ SQLite chain


async def test_sqlite_audit_rows_are_hash_chained_and_an_edit_is_found_at_its_row(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "audit.sqlite3"
    async with AuditLog(path) as audit:
        await asyncio.gather(
            *(audit.record(AuditEntry("issued", 200, 1.0 + i, client_id="app-1")) for i in range(6))
        )
        rows = await audit.rows()
        assert rows[0]["prev_hash"] == GENESIS
        for before, row in itertools.pairwise(rows):
            assert row["prev_hash"] == before["row_hash"]
            assert row["row_hash"] == chain_hash(before["row_hash"], row)
        result = await audit.verify()
        assert result.ok and result.rows == 6 and result.head == rows[-1]["row_hash"]
        # an insert that does not continue the chain is refused by the database
        with pytest.raises(sqlite3.DatabaseError, match="prev_hash"):
            await audit.execute(
                "INSERT INTO audit (ts, outcome, http_status, latency_ms, prev_hash, row_hash) "
                "VALUES (0, 'issued', 200, 0, ?, ?)",
                (GENESIS, "f" * 64),
            )
    args = broker_cli_args("broker", "audit-verify", "--audit-db", str(path))
    assert broker_cli.cmd_audit_verify(args) == 0
    assert "ok: 6 row(s)" in capsys.readouterr().out
    # someone with the file drops the triggers and edits row 4
    conn = sqlite3.connect(path)
    conn.execute("DROP TRIGGER audit_append_only_update")
    conn.execute("UPDATE audit SET client_id = 'app-2' WHERE id = 4")
    conn.commit()
    conn.close()
    result = verify_sqlite(path)
    assert not result.ok and result.first_bad is not None
    assert result.first_bad.row_id == 4 and "contents" in result.first_bad.reason
    assert broker_cli.cmd_audit_verify(args) == 1
    assert "BROKEN at row id=4" in capsys.readouterr().out
    # ... or deletes row 2: the row after the gap is named
    rows = [dict(r) for r in _sqlite_rows(path)]
    del rows[1]
    result = verify_rows(rows)
    assert result.first_bad is not None and result.first_bad.row_id == 3
    assert "previous row" in result.first_bad.reason
    assert broker_cli.cmd_audit_verify(
        broker_cli_args("broker", "audit-verify", "--audit-db", str(tmp_path / "none.db"))
    ) == 2


def _sqlite_rows(path: Path) -> list[sqlite3.Row]:
    conn = sqlite3.connect(path)
    conn.row_factory = sqlite3.Row
    try:
        return conn.execute("SELECT * FROM audit ORDER BY id").fetchall()
    finally:
        conn.close()


def broker_cli_args(*argv: str) -> Any:
    import argparse

    parser = argparse.ArgumentParser(prog="fsm-voice")
    broker_cli.add_parsers(parser.add_subparsers(dest="command", required=True))
    return parser.parse_args(list(argv))


async def test_rows_cut_off_the_end_are_found_against_an_anchored_head(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "audit.sqlite3"
    async with AuditLog(path) as audit:
        for i in range(5):
            await audit.record(AuditEntry("issued", 200, float(i)))
        head = (await audit.verify()).head  # an operator keeps this elsewhere
        await audit.record(AuditEntry("denied_auth", 401, 0.0))
    conn = sqlite3.connect(path)
    conn.execute("DROP TRIGGER audit_append_only_delete")
    conn.execute("DELETE FROM audit WHERE id >= 5")  # the last two rows vanish
    conn.commit()
    conn.close()
    assert verify_sqlite(path).ok  # a shorter chain is still a chain ...
    result = verify_sqlite(path, anchor=head)  # ... but it no longer reaches the anchor
    assert result.first_bad is not None and result.first_bad.row_id == 5
    assert "removed" in result.first_bad.reason
    args = broker_cli_args("broker", "audit-verify", "--audit-db", str(path), "--anchor", head)
    assert broker_cli.cmd_audit_verify(args) == 1
    assert "BROKEN at row id=5" in capsys.readouterr().out


async def test_an_old_unchained_sqlite_log_is_refused_with_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "old.sqlite3"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE audit (id INTEGER PRIMARY KEY, ts REAL)")
    conn.close()
    with pytest.raises(sqlite3.OperationalError, match="predates the hash chain"):
        async with AuditLog(path):
            pass


def test_cli_refuses_passwords_in_store_urls() -> None:
    base = ("broker", "--client", f"a={hash_secret('x')}", "--api-key-env", "K")
    env = {"K": API_KEY}
    with pytest.raises(ConfigError) as info:
        broker_cli.build_broker(
            broker_cli_args(*base, "--redis-url", "redis://:hunter2@127.0.0.1/0"), env
        )
    assert "hunter2" not in str(info.value)
    if postgres_missing() is None:
        with pytest.raises(ConfigError) as info:
            broker_cli.build_broker(
                broker_cli_args(*base, "--audit-dsn", "host=/tmp user=x password=hunter2"), env
            )
        assert "hunter2" not in str(info.value)
    with pytest.raises(ConfigError, match="not both"):
        broker_cli.build_broker(
            broker_cli_args(*base, "--audit-dsn", "host=/tmp", "--audit-db", "x.db"), env
        )


# ------------------------------------------------------------------------------ session leases


async def test_memory_session_leases_cap_renew_release_and_expire() -> None:
    clock = FakeClock(0.0)
    limits = MemoryLimits(clock=clock)
    assert await limits.hold_session("app-1", "s1", 2, 10)
    assert await limits.hold_session("app-1", "s2", 2, 10)
    assert not await limits.hold_session("app-1", "s3", 2, 10)
    assert await limits.hold_session("app-1", "s2", 2, 10)  # renewing a held lease
    assert await limits.hold_session("app-2", "s1", 2, 10)  # another client's own cap
    await limits.release_session("app-1", "s1")
    assert await limits.hold_session("app-1", "s3", 2, 10)
    clock.t = 10.5  # every lease expired (a replica that died without releasing)
    assert await limits.sessions("app-1") == 0
    assert await limits.hold_session("app-1", "s4", 2, 10)


# ------------------------------------------------------------------------------ Redis


@needs_redis
async def test_redis_buckets_and_session_caps_are_shared_between_replicas(
    redis_server: RedisServer,
) -> None:
    policy = RatePolicy(capacity=5, refill_per_second=0.01)
    async with redis_limits(redis_server) as a, redis_limits(redis_server) as b:
        answers = [await (a if i % 2 else b).acquire("client", "app-1", policy) for i in range(8)]
        assert answers[:5] == [None] * 5  # one bucket of 5 for both replicas, not 5 each
        waits = answers[5:]
        assert all(w is not None and 0 < w <= 1 / 0.01 for w in waits)
        assert await a.acquire("client", "app-2", policy) is None  # buckets are per key
        # concurrent-session caps hold across replicas
        assert await a.hold_session("app-1", "call-1", 2, 60)
        assert await b.hold_session("app-1", "call-2", 2, 60)
        assert not await a.hold_session("app-1", "call-3", 2, 60)
        assert not await b.hold_session("app-1", "call-3", 2, 60)
        assert await b.hold_session("app-1", "call-1", 2, 60)  # renewal by another replica
        await b.release_session("app-1", "call-1")
        assert await a.sessions("app-1") == 1
        assert await a.hold_session("app-1", "call-3", 2, 60)
        # a lease not renewed expires (by the server's clock)
        assert await a.hold_session("app-9", "short", 1, 0.05)
        async with asyncio.timeout(10):
            while await b.sessions("app-9"):
                await asyncio.sleep(0.02)  # polling the server for the expiry, bounded
        assert await b.hold_session("app-9", "next", 1, 60)


@needs_redis
async def test_redis_outage_raises_limits_unavailable_then_recovers(
    redis_server: RedisServer,
) -> None:
    policy = RatePolicy(capacity=5, refill_per_second=1)
    async with redis_limits(redis_server) as limits:
        assert await limits.acquire("client", "app-1", policy) is None
        redis_server.pause()  # hung, not dead: the command times out (0.5 s), no hang here
        try:
            with pytest.raises(LimitsUnavailable):
                async with asyncio.timeout(10):
                    await limits.acquire("client", "app-1", policy)
        finally:
            redis_server.pause(False)
        assert await limits.acquire("client", "app-1", policy) is None  # thawed: served again
        redis_server.kill()
        with pytest.raises(LimitsUnavailable):
            await limits.acquire("client", "app-1", policy)
        with pytest.raises(LimitsUnavailable):
            await limits.hold_session("app-1", "s", 1, 1)
        redis_server.start()  # empty again (no persistence): a fresh bucket
        assert await limits.acquire("client", "app-1", policy) is None


# ------------------------------------------------------------------------------ PostgreSQL


@needs_postgres
async def test_postgres_audit_is_append_only_and_chained_across_replicas(
    pg_server: PostgresServer, pg_dsn: str, capsys: pytest.CaptureFixture[str]
) -> None:
    import psycopg

    async with pg_audit(pg_dsn) as one, pg_audit(pg_dsn) as two:
        ids = await asyncio.gather(
            *(
                (one if i % 2 else two).record(AuditEntry("issued", 200, float(i), key_id=f"k{i}"))
                for i in range(40)
            )
        )
        assert sorted(ids) == sorted(set(ids)) and len(ids) == 40
        result = await one.verify()
        assert result.ok and result.rows == 40
        # the broker's role: no UPDATE, DELETE or TRUNCATE at all
        for sql in ("UPDATE audit SET outcome = 'x'", "DELETE FROM audit", "TRUNCATE audit"):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                await one.execute(sql)
        # an insert that does not continue the chain is refused by the trigger
        with pytest.raises(psycopg.errors.RaiseException, match="prev_hash"):
            await one.execute(
                "INSERT INTO audit (ts, outcome, http_status, latency_ms, prev_hash, row_hash) "
                "VALUES (0, 'issued', 200, 0, %s, %s)",
                (GENESIS, "f" * 64),
            )
    owner_dsn = pg_dsn.replace(f"user={WRITER_ROLE}", "user=postgres")
    async with await psycopg.AsyncConnection.connect(owner_dsn, autocommit=True) as owner:
        # even the owner is refused by the triggers ...
        for sql in ("UPDATE audit SET outcome = 'x' WHERE id = 7", "DELETE FROM audit",
                    "TRUNCATE audit"):
            with pytest.raises(psycopg.errors.RaiseException, match="append-only"):
                await owner.execute(sql)
        # ... until it disables them: that edit is what audit-verify finds, at its row
        target = sorted(ids)[16]
        await owner.execute("ALTER TABLE audit DISABLE TRIGGER audit_no_change")
        await owner.execute("UPDATE audit SET key_id = 'forged' WHERE id = %s", (target,))
        await owner.execute("ALTER TABLE audit ENABLE TRIGGER audit_no_change")
    result = await verify_postgres(pg_dsn)
    assert result.first_bad is not None and result.first_bad.row_id == target
    assert result.rows == 16
    args = broker_cli_args("broker", "audit-verify", "--audit-dsn", pg_dsn)
    assert await asyncio.to_thread(broker_cli.cmd_audit_verify, args) == 1
    assert f"BROKEN at row id={target}" in capsys.readouterr().out


# ------------------------------------------------------------------------------ the broker


@needs_redis
@needs_postgres
async def test_redis_killed_mid_run_fails_closed_and_no_key_leaves_without_its_row(
    http: aiohttp.ClientSession, peer: RealtimePeer, redis_server: RedisServer, pg_dsn: str
) -> None:
    rate = RatePolicy(capacity=1000, refill_per_second=100)
    brokers = [
        make_broker(peer.base_url, pg_audit(pg_dsn), redis_limits(redis_server), rate=rate)
        for _ in range(3)
    ]
    async with contextlib.AsyncExitStack() as stack:
        for b in brokers:
            await stack.enter_async_context(b)
        before = [await post(http, brokers[i % 3].token_url) for i in range(9)]
        assert [s for s, _, _ in before] == [200] * 9
        redis_server.kill()
        during = [await post(http, brokers[i % 3].token_url) for i in range(9)]
        for status, headers, body in during:
            assert status == 503 and body["error"]["code"] == "rate_limits_unavailable"
            assert headers["Retry-After"] == "1"
        status, _, health = await request(http, brokers[0].base_url + "/healthz", method="GET")
        assert status == 503 and health["limits"] == "failing"
        redis_server.start()
        after = [await post(http, brokers[i % 3].token_url) for i in range(3)]
        assert [s for s, _, _ in after] == [200] * 3
        rows = await brokers[0].audit.rows()
    issued = [r for r in rows if r["outcome"] == "issued"]
    handed_out = {b["key_id"] for s, _, b in before + after if s == 200}
    # zero keys minted without an audit row: the upstream minted exactly the audited keys
    assert peer.client_secrets.minted == len(issued) == len(handed_out) == 12
    assert {r["key_id"] for r in issued} == handed_out
    refused = [r for r in rows if r["outcome"] == "limits_unavailable"]
    assert len(refused) == 9 and {r["http_status"] for r in refused} == {503}
    assert verify_rows(rows).ok


@needs_redis
async def test_redis_loss_with_fail_open_serves_and_audits_the_decision(
    http: aiohttp.ClientSession, peer: RealtimePeer, redis_server: RedisServer, tmp_path: Path
) -> None:
    async with make_broker(
        peer.base_url,
        AuditLog(tmp_path / "a.sqlite3"),
        redis_limits(redis_server),
        limits_fail_open=True,
    ) as broker:
        redis_server.kill()
        status, _, body = await post(http, broker.token_url)
        assert status == 200, body
        [row] = await broker.audit.rows()
        assert (row["outcome"], row["detail"], row["key_id"]) == (
            "issued", "limits_fail_open", body["key_id"]
        )
        status, _, health = await request(http, broker.base_url + "/healthz", method="GET")
        assert status == 200 and health["limits"] == "failing"


@needs_postgres
async def test_postgres_restarted_mid_run_every_handed_out_key_has_its_row(
    http: aiohttp.ClientSession, peer: RealtimePeer, pg_server: PostgresServer, pg_dsn: str
) -> None:
    rate = RatePolicy(capacity=10_000, refill_per_second=1000)
    brokers = [make_broker(peer.base_url, pg_audit(pg_dsn), MemoryLimits(), rate=rate)
               for _ in range(2)]
    statuses: dict[int, int] = {}
    handed_out: list[str] = []
    stop = asyncio.Event()
    progress = asyncio.Event()

    async def served_at_least(n: int) -> None:
        while len(handed_out) < n:
            progress.clear()
            await progress.wait()

    async def client(i: int) -> None:
        while not stop.is_set():
            status, _, body = await post(http, brokers[i % 2].token_url)
            statuses[status] = statuses.get(status, 0) + 1
            if status == 200:
                handed_out.append(body["key_id"])
                progress.set()
            else:
                assert status == 500 and body["error"]["code"] == "audit_failed"

    async with contextlib.AsyncExitStack() as stack:
        for b in brokers:
            await stack.enter_async_context(b)
        clients = [asyncio.create_task(client(i)) for i in range(4)]
        try:
            async with asyncio.timeout(60):
                await served_at_least(20)  # traffic flowing before the restart
                await asyncio.to_thread(pg_server.restart)
                await served_at_least(len(handed_out) + 20)  # ... and after, reconnected
        finally:
            stop.set()
            await asyncio.gather(*clients)
        for b in brokers:  # rows of the keys dropped during the restart (written in background)
            await b.flush_backlog()
            assert b.unrecorded == 0
        rows = await brokers[0].audit.rows()
    issued = {r["key_id"] for r in rows if r["outcome"] == "issued"}
    assert set(handed_out) <= issued  # every key a client got has its committed row
    assert len(handed_out) == len(set(handed_out)) == statuses[200]
    assert statuses.get(500, 0) >= 1  # the restart broke a connection in use: no key then
    dropped = [r for r in rows if r["detail"] == "audit_failed"]
    assert dropped and {r["outcome"] for r in dropped} == {"internal_error"}
    # every key the upstream minted has a row: handed out as 'issued', or dropped (500)
    assert peer.client_secrets.minted == len({r["key_id"] for r in rows if r["key_id"]})
    assert verify_rows(rows).ok


@needs_redis
@needs_postgres
async def test_three_broker_processes_share_one_quota_and_one_audit_chain(
    http: aiohttp.ClientSession, peer: RealtimePeer, redis_server: RedisServer, pg_dsn: str
) -> None:
    """Three ``fsm-voice broker`` processes on Redis + PostgreSQL: a client hammering all three
    gets its quota (capacity 10) across them, not 30."""
    env = {"BROKER_TEST_KEY": API_KEY, "PATH": "/usr/bin:/bin"}
    procs = []
    urls = []
    try:
        for _ in range(3):
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-c", _RUN_CLI, "broker",
                "--port", "0",
                "--api-key-env", "BROKER_TEST_KEY",
                "--client", f"app-1={hash_secret(CLIENTS['app-1'])}",
                "--upstream", peer.base_url,
                "--redis-url", redis_server.url,
                "--audit-dsn", pg_dsn,
                "--rate-capacity", "10",
                "--rate-refill", "0.001",
                env=env,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
            )  # fmt: skip
            procs.append(proc)
        for proc in procs:
            assert proc.stdout is not None
            line = (await asyncio.wait_for(proc.stdout.readline(), 60)).decode()
            assert "listening on" in line, line
            assert "limits redis" in line and "postgresql" in line
            urls.append(line.split("listening on ", 1)[1].split(" ", 1)[0])
        results = await asyncio.gather(
            *(post(http, urls[i % 3] + "/v1/session-tokens") for i in range(45))
        )
        statuses = [s for s, _, _ in results]
        assert statuses.count(200) == 10 and statuses.count(429) == 35
    finally:
        for proc in procs:
            if proc.returncode is None:
                proc.terminate()
        for proc in procs:
            await proc.wait()
    result = await verify_postgres(pg_dsn)
    assert result.ok and result.rows == 45
    assert peer.client_secrets.minted == 10


@needs_postgres
def test_cli_audit_setup_grants_the_writer_only_select_and_insert(
    pg_server: PostgresServer, capsys: pytest.CaptureFixture[str]
) -> None:
    import psycopg

    with psycopg.connect(pg_server.owner_dsn, autocommit=True) as conn:
        conn.execute("CREATE DATABASE setup_cli")
    owner = pg_server.dsn("postgres", "setup_cli")
    args = broker_cli_args("broker", "audit-setup", "--audit-dsn", owner, "--writer-role",
                           WRITER_ROLE)
    assert broker_cli.cmd_audit_setup(args) == 0
    assert broker_cli.cmd_audit_setup(args) == 0  # idempotent
    assert "SELECT and INSERT only" in capsys.readouterr().out
    with psycopg.connect(owner) as conn:
        privileges = conn.execute(
            "SELECT privilege_type FROM information_schema.role_table_grants "
            "WHERE grantee = %s AND table_name = 'audit'",
            (WRITER_ROLE,),
        ).fetchall()
    assert sorted(p for (p,) in privileges) == ["INSERT", "SELECT"]
    bad = broker_cli_args("broker", "audit-setup", "--audit-dsn", owner, "--writer-role", "x;y")
    assert broker_cli.cmd_audit_setup(bad) == 2


@needs_redis
async def test_failed_auth_limit_is_shared_between_replicas(
    http: aiohttp.ClientSession, peer: RealtimePeer, redis_server: RedisServer, tmp_path: Path
) -> None:
    failures = RatePolicy(capacity=4, refill_per_second=0.001)
    brokers = [
        make_broker(peer.base_url, AuditLog(tmp_path / f"{i}.sqlite3"),
                    redis_limits(redis_server), auth_failure_rate=failures)
        for i in range(2)
    ]
    async with brokers[0], brokers[1]:
        wrong = {"Authorization": "Bearer guess", "X-Client-Id": "app-1"}
        statuses = [
            (await request(http, brokers[i % 2].token_url, headers=wrong))[0] for i in range(8)
        ]
        assert statuses == [401] * 4 + [429] * 4  # 4 guesses in all, not 4 per replica
        status, _, _ = await post(http, brokers[1].token_url)
        assert status == 200  # valid credentials are never refused by that limit


def test_cli_builds_stores_and_proxy_trust_from_flags(tmp_path: Path) -> None:
    base = ("broker", "--client", f"a={hash_secret('x')}", "--api-key-env", "K")
    broker = broker_cli.build_broker(
        broker_cli_args(
            *base, "--redis-url", "unix:///tmp/r.sock", "--trusted-proxy", "10.0.0.0/8",
            "--trusted-proxy", "::1", "--forwarded-header", "forwarded", "--limits-fail-open",
            "--audit-db", str(tmp_path / "a.sqlite3"),
        ),
        {"K": API_KEY},
    )  # fmt: skip
    assert isinstance(broker.limits, RedisLimits) and broker.limits.url == "unix:///tmp/r.sock"
    assert [str(n) for n in broker.config.trusted_proxies] == ["10.0.0.0/8", "::1/128"]
    assert broker.config.forwarded_header == "forwarded" and broker.config.limits_fail_open
    default = broker_cli.build_broker(broker_cli_args(*base), {"K": API_KEY})
    assert isinstance(default.limits, MemoryLimits) and default.audit.path.endswith(".sqlite3")
    assert default.config.trusted_proxies == () and not default.config.limits_fail_open


# --------------------------------------------------------------- outages (issue 13 attack)


async def _writer_backends(pg_server: PostgresServer, dsn: str) -> list[int]:
    """Process ids of the writer role's backends on ``dsn``'s database."""
    import psycopg

    dbname = psycopg.conninfo.conninfo_to_dict(dsn)["dbname"]
    async with await psycopg.AsyncConnection.connect(pg_server.owner_dsn, autocommit=True) as c:
        cur = await c.execute(
            "SELECT pid FROM pg_stat_activity WHERE usename = %s AND datname = %s",
            (WRITER_ROLE, dbname),
        )
        return [int(r[0]) for r in await cur.fetchall()]


class _Traffic:
    """``n`` clients posting to ``urls`` until stopped; counts statuses, keeps handed-out keys."""

    def __init__(self, http: aiohttp.ClientSession, urls: list[str], n: int) -> None:
        self.http, self.urls, self.n = http, urls, n
        self.statuses: dict[int, int] = {}
        self.handed_out: list[str] = []
        self.errors: list[Any] = []
        self._progress = asyncio.Event()
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    async def _client(self, i: int) -> None:
        while not self._stop.is_set():
            status, _, body = await post(self.http, self.urls[i % len(self.urls)])
            self.statuses[status] = self.statuses.get(status, 0) + 1
            if status == 200:
                self.handed_out.append(body["key_id"])
            else:
                self.errors.append(body["error"]["code"])
            self._progress.set()

    def start(self) -> None:
        self._tasks = [asyncio.create_task(self._client(i)) for i in range(self.n)]

    async def served_at_least(self, n: int) -> None:
        while len(self.handed_out) < n:
            self._progress.clear()
            await self._progress.wait()

    async def stop(self) -> None:
        self._stop.set()
        await asyncio.gather(*self._tasks)


@needs_postgres
async def test_postgres_backend_terminated_mid_write_is_dropped_and_the_next_batch_writes(
    pg_server: PostgresServer, pg_dsn: str, capfd: pytest.CaptureFixture[str]
) -> None:
    """The writer's backend killed (pg_terminate_backend) while batches of 300 rows are in
    flight, twenty times: the broken connection (possibly left in pipeline mode) is never
    reused, the next row is written on a new one, and the chain stays whole."""
    import psycopg

    async with pg_audit(pg_dsn) as log, await psycopg.AsyncConnection.connect(
        pg_server.owner_dsn, autocommit=True
    ) as owner:
        written = 0
        for r in range(20):
            batch = [
                asyncio.create_task(log.record(AuditEntry("issued", 200, 1.0, key_id=f"k{r}.{i}")))
                for i in range(300)
            ]
            for _ in range(r % 4):  # land the kill at different points of the write
                await asyncio.sleep(0)
            for pid in await _writer_backends(pg_server, pg_dsn):
                await owner.execute("SELECT pg_terminate_backend(%s)", (pid,))
            results = await asyncio.gather(*batch, return_exceptions=True)
            written += sum(1 for x in results if isinstance(x, int))
            # the next row is written: no replica stuck on a connection it should have dropped
            await log.record(AuditEntry("issued", 200, 1.0, key_id=f"after{r}"))
            written += 1
        result = await log.verify()
    assert result.ok and result.rows == written
    assert "pipeline mode" not in capfd.readouterr().err


@needs_postgres
async def test_postgres_backend_terminated_mid_write_reconnects_and_keeps_every_row(
    http: aiohttp.ClientSession,
    peer: RealtimePeer,
    pg_server: PostgresServer,
    pg_dsn: str,
    capfd: pytest.CaptureFixture[str],
) -> None:
    """The broker's connection killed (pg_terminate_backend) mid-write, ten times under 32
    clients: each time the connection is dropped and a new one made (no replica stuck in
    pipeline mode), and the rows of the keys dropped meanwhile are written."""
    import psycopg

    rate = RatePolicy(capacity=100_000, refill_per_second=10_000)
    broker = make_broker(
        peer.base_url, pg_audit(pg_dsn), MemoryLimits(), rate=rate, max_concurrent_upstream=64
    )
    async with broker:
        traffic = _Traffic(http, [broker.token_url], 32)
        traffic.start()
        try:
            async with asyncio.timeout(120):
                async with await psycopg.AsyncConnection.connect(
                    pg_server.owner_dsn, autocommit=True
                ) as owner:
                    for _ in range(10):
                        await traffic.served_at_least(len(traffic.handed_out) + 10)
                        for pid in await _writer_backends(pg_server, pg_dsn):
                            await owner.execute("SELECT pg_terminate_backend(%s)", (pid,))
                await traffic.served_at_least(len(traffic.handed_out) + 50)  # not stuck
        finally:
            await traffic.stop()
        await broker.flush_backlog()
        assert broker.unrecorded == 0
        rows = await broker.audit.rows()
    assert set(traffic.errors) <= {"audit_failed"}
    issued = {r["key_id"] for r in rows if r["outcome"] == "issued"}
    assert set(traffic.handed_out) <= issued
    # every key the upstream minted has its row: handed out, or dropped with a 500
    assert peer.client_secrets.minted == len({r["key_id"] for r in rows if r["key_id"]})
    assert verify_rows(rows).ok
    assert "pipeline mode" not in capfd.readouterr().err


def _cluster_pids(pg_server: PostgresServer) -> list[int]:
    """The postmaster and every process it started."""
    postmaster = int((pg_server.data / "postmaster.pid").read_text().split()[0])
    pids = [postmaster]
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == postmaster:
                pids.append(int(stat.parent.name))
    return pids


@contextlib.contextmanager
def _frozen(pg_server: PostgresServer) -> Iterator[None]:
    """The whole cluster stopped (SIGSTOP): connections accept bytes, nothing answers."""
    import os
    import signal

    pids = _cluster_pids(pg_server)
    for pid in pids:
        os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)


@needs_postgres
async def test_a_frozen_postgres_fails_the_request_within_the_write_timeout(
    http: aiohttp.ClientSession, peer: RealtimePeer, pg_server: PostgresServer, pg_dsn: str
) -> None:
    """PostgreSQL stopped dead (SIGSTOP): the request is not held without limit, it gets 500
    audit_failed once the client-side write timeout passes, /healthz says the audit log fails,
    and the key's row, written after the thaw, says what the client got (500), not 'issued'."""
    audit = PostgresAuditLog(pg_dsn, connect_timeout=1.0, write_timeout=1.0)
    async with make_broker(peer.base_url, audit, MemoryLimits()) as broker:
        status, _, body = await post(http, broker.token_url)
        assert status == 200
        with _frozen(pg_server):
            async with asyncio.timeout(30):  # a bound on a hang, not a speed claim
                status, _, failed = await post(http, broker.token_url)
                assert status == 500 and failed["error"]["code"] == "audit_failed"
                status, _, health = await request(
                    http, broker.base_url + "/healthz", method="GET"
                )
                assert status == 503 and health["audit"] == "failing"
        async with asyncio.timeout(30):
            await broker.flush_backlog()
        rows = await broker.audit.rows()
    assert peer.client_secrets.minted == 2
    [dropped] = [r for r in rows if r["key_id"] not in (None, body["key_id"])]
    assert (dropped["outcome"], dropped["http_status"], dropped["detail"]) == (
        "internal_error", 500, "audit_failed"
    )
    assert verify_rows(rows).ok


async def test_upstream_error_text_never_reaches_the_client(
    http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    """An upstream 401 quoting the API key in forms no scrubber knows (without its sk- prefix,
    base64, upper-cased) and a code made of the key: the client gets the broker's own message
    and a vetted code, nothing of the upstream's text."""
    import base64

    from tests.test_broker import fake_upstream

    bare = API_KEY.removeprefix("sk-")
    copies = [bare, base64.b64encode(API_KEY.encode()).decode(), API_KEY.upper()]
    codes = iter(["invalid_api_key", bare.replace("-", "_").lower()])

    async def refuse(request: Any) -> Any:
        from aiohttp import web

        message = "UPSTREAM-TEXT Incorrect API key: " + " / ".join(copies)
        return web.json_response(
            {"error": {"type": "invalid_request_error", "code": next(codes),
                       "message": message, "param": None}},
            status=401,
        )

    async with fake_upstream(refuse) as upstream, make_broker(
        upstream, tmp_path / "a.sqlite3"
    ) as broker:
        answers = [await post(http, broker.token_url) for _ in range(2)]
    for status, _, body in answers:
        assert status == 502
        text = json.dumps(body)
        assert "UPSTREAM-TEXT" not in text
        for copy in copies:
            assert copy not in text and copy.lower() not in text.lower()
    assert [b["error"]["code"] for _, _, b in answers] == ["invalid_api_key", "upstream_error"]


async def test_stopping_with_a_request_in_flight_writes_its_row(
    http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    """SIGTERM (stop) while a token request waits on the upstream: it gets ``shutdown_grace``
    to finish, then is cancelled, and its audit row is written before the log closes."""
    from tests.test_broker import fake_upstream

    arrived, release = asyncio.Event(), asyncio.Event()

    async def stuck(request: Any) -> Any:
        arrived.set()
        await release.wait()  # until the test is done: the upstream never answers in time

    db = tmp_path / "a.sqlite3"
    async with fake_upstream(stuck) as upstream:
        broker = make_broker(upstream, db, shutdown_grace=0.2, upstream_timeout=60)
        await broker.start()
        try:
            pending = asyncio.create_task(post(http, broker.token_url))
            await arrived.wait()
        finally:
            await broker.stop()
        with pytest.raises(aiohttp.ClientError):
            await pending
        release.set()
    rows = [dict(r) for r in _sqlite_rows(db)]
    assert [(r["outcome"], r["http_status"], r["detail"], r["client_id"]) for r in rows] == [
        ("internal_error", 503, "shutdown", "app-1")
    ]
    assert verify_sqlite(db).ok


async def test_verify_names_the_edited_row_and_a_rewritten_chain(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Row 3 edited with its own row_hash recomputed: the break shows at row 4, and the message
    names row 3 as the suspect. The whole chain rewritten: it verifies alone, and against an
    anchor the message says the head is gone (removed or rewritten). A bad anchor is exit 2."""
    path = tmp_path / "audit.sqlite3"
    async with AuditLog(path) as audit:
        for i in range(5):
            await audit.record(AuditEntry("issued", 200, float(i), client_id="app-1"))
        head = (await audit.verify()).head
    rows = [dict(r) for r in _sqlite_rows(path)]
    rows[2]["client_id"] = "app-2"
    rows[2]["row_hash"] = chain_hash(rows[2]["prev_hash"], rows[2])
    result = verify_rows(rows)
    assert result.first_bad is not None and result.first_bad.row_id == 4
    assert "does not match the previous row 3 (row 3 or the link was changed" in (
        result.first_bad.reason
    )
    prev = GENESIS  # the forger rewrites every hash after the edit
    for row in rows:
        row["prev_hash"], row["row_hash"] = prev, chain_hash(prev, row)
        prev = row["row_hash"]
    assert verify_rows(rows).ok
    result = verify_rows(rows, anchor=head)
    assert result.first_bad is not None
    assert "is not in the chain (rows removed after id 5, or the chain rewritten)" in (
        result.first_bad.reason
    )
    verify = ("broker", "audit-verify", "--audit-db", str(path), "--anchor")
    for anchor in ("nothex", "g" * 64, head[:-1]):
        assert broker_cli.cmd_audit_verify(broker_cli_args(*verify, anchor)) == 2
        err = capsys.readouterr().err
        assert len(err.splitlines()) == 1 and "64 hex digits" in err
    assert broker_cli.cmd_audit_verify(broker_cli_args(*verify, head.upper())) == 0


@needs_postgres
async def test_postgres_refuses_a_wrong_row_hash_and_an_explicit_id(pg_dsn: str) -> None:
    """The writer role can no longer append a row whose row_hash is not the hash of its fields
    (the trigger recomputes it in SQL, the same as chain_hash for every float the broker
    writes), nor choose the row's id (OVERRIDING SYSTEM VALUE)."""
    import psycopg

    odd = [0.0, -0.0, 1e-05, 0.0001, 1 / 3, 123.456, 1e15, 2.5e-300, 1764500000.123456]
    async with pg_audit(pg_dsn) as log:
        for i, value in enumerate(odd):
            await log.record(AuditEntry("issued", 200, value, ts=value + i, key_id=f"k{i}"))
        [last] = await log.rows("id = (SELECT max(id) FROM audit)")
        fields = {"ts": 1.5, "outcome": "issued", "http_status": 200, "latency_ms": 2.0}
        good = chain_hash(last["row_hash"], fields)
        insert = (
            "INSERT INTO audit {} (ts, outcome, http_status, latency_ms, prev_hash, row_hash"
            "{}) {} VALUES (1.5, 'issued', 200, 2.0, %s, %s{})"
        )
        with pytest.raises(psycopg.errors.RaiseException, match="row_hash"):
            await log.execute(insert.format("", "", "", ""), (last["row_hash"], "e" * 64))
        with pytest.raises(psycopg.errors.RaiseException, match="row ids"):
            await log.execute(
                insert.format("", ", id", "OVERRIDING SYSTEM VALUE", ", %s"),
                (last["row_hash"], good, last["id"] + 100),
            )
        await log.execute(insert.format("", "", "", ""), (last["row_hash"], good))  # the right one
        result = await log.verify()
    assert result.ok and result.rows == len(odd) + 1


@needs_postgres
def test_bad_broker_flags_are_one_line_and_exit_2(
    pg_server: PostgresServer,
    pg_dsn: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Each bad flag: exit 2 and one line on stderr (libpq's trailing newline, PostgreSQL's
    DETAIL lines cut); a proxy range of every address needs --allow-any-proxy; a session file
    that is not a session object is refused at start, not by the upstream later."""
    monkeypatch.setenv("OPENAI_API_KEY", API_KEY)
    monkeypatch.chdir(tmp_path)
    base = ("broker", "--client", f"app-1={hash_secret('s')}", "--audit-db", "a.sqlite3")
    not_a_session = tmp_path / "clients.json"
    not_a_session.write_text(json.dumps({"clients": {"app-1": hash_secret("s")}}))
    bad_runs = [
        (*base[:3], "--audit-dsn", "host='/tmp/x dbname=f"),
        (*base[:3], "--audit-dsn", pg_dsn + " PASSWORD=x"),
        (*base, "--trusted-proxy", "0.0.0.0/0"),
        (*base, "--trusted-proxy", "10.0.0.0/8", "--trusted-proxy", "::/0"),
        (*base, "--session-config", str(not_a_session)),
    ]
    for argv in bad_runs:
        assert broker_cli.cmd_broker(broker_cli_args(*argv)) == 2, argv
        err = capsys.readouterr().err
        assert len(err.splitlines()) == 1, err
    broker = broker_cli.build_broker(
        broker_cli_args(*base, "--trusted-proxy", "0.0.0.0/0", "--allow-any-proxy")
    )
    assert [str(n) for n in broker.config.trusted_proxies] == ["0.0.0.0/0"]
    # audit-setup as a role without the rights to create the table: one line, exit 2
    setup = broker_cli_args(
        "broker", "audit-setup", "--audit-dsn", pg_dsn, "--writer-role", WRITER_ROLE
    )
    assert broker_cli.cmd_audit_setup(setup) == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and "audit-setup" in err, err


@needs_redis
async def test_a_wrong_redis_password_is_reported_as_an_authentication_error(
    http: aiohttp.ClientSession,
    peer: RealtimePeer,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Redis refusing the broker's password: 503 as for an outage, but the log line and
    /healthz say it is authentication, not a Redis that is down."""
    server = RedisServer(password="the-right-one")
    server.start()
    try:
        limits = RedisLimits(server.url, password="a-wrong-one", timeout=0.5)
        async with make_broker(peer.base_url, AuditLog(tmp_path / "a.sqlite3"), limits) as b:
            status, _, body = await post(http, b.token_url)
            assert status == 503 and body["error"]["code"] == "rate_limits_unavailable"
            status, _, health = await request(http, b.base_url + "/healthz", method="GET")
            assert status == 503
            assert (health["limits"], health["limits_error"]) == ("failing", "authentication")
    finally:
        server.close()
    assert "Redis refused authentication" in caplog.text
    assert "a-wrong-one" not in caplog.text
