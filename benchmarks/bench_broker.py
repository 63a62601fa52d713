"""Token broker throughput and latency: one process on SQLite against 1 and 3 replicas sharing
Redis (rate limits) and PostgreSQL (audit log), all on this machine.

Every configuration has the same shape: a local peer process (the upstream client_secrets
endpoint), ``fsm-voice broker`` process(es), and this process as the load: ``--concurrency``
aiohttp workers POSTing token requests round-robin over the replicas for ``--seconds`` (bounded
by ``--max-requests``). Every request is client -> broker -> rate limit (in process, or one
Redis script) -> upstream -> audited row committed (SQLite, or PostgreSQL through the chain
lock) -> client. The rate limit is raised out of the way (every request is charged, none is
refused). Redis and PostgreSQL run on unix sockets (tests/broker_servers.py); PostgreSQL with
``fsync`` on (as in production; ``--pg-fsync off`` for comparison), SQLite in WAL mode with
``synchronous=NORMAL`` (the broker's setting).

Run: .venv/bin/python benchmarks/bench_broker.py [--seconds 5] [--concurrency 32]
     [--configs sqlite,redis-pg-1,redis-pg-3]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from fsm_voice.broker import hash_secret  # noqa: E402
from tests.broker_servers import (  # noqa: E402
    WRITER_ROLE,
    PostgresServer,
    RedisServer,
    postgres_missing,
    redis_missing,
)

API_KEY = "sk-bench-0123456789abcdef"
CLIENT_ID, CLIENT_SECRET = "bench", "bench-secret-0123456789"
_PEER = (
    "import asyncio\n"
    "from fsm_voice.peer.server import run_peer\n"
    "asyncio.run(run_peer('127.0.0.1', 0))\n"
)
_BROKER = (
    "import argparse, sys\n"
    "from fsm_voice.broker import cli\n"
    "p = argparse.ArgumentParser(prog='fsm-voice')\n"
    "cli.add_parsers(p.add_subparsers(dest='command', required=True))\n"
    "a = p.parse_args(sys.argv[1:])\n"
    "sys.exit(a.func(a))\n"
)


@contextlib.asynccontextmanager
async def process(code: str, *args: str) -> AsyncIterator[str]:
    """Run ``python -c code args``; yields the URL from its "listening on URL" line."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", code, *args,
        env={**os.environ, "BENCH_API_KEY": API_KEY},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        line = (await asyncio.wait_for(proc.stdout.readline(), 60)).decode()
        if "listening on " not in line:
            raise RuntimeError(f"process did not start: {line!r}")
        yield line.split("listening on ", 1)[1].split(" ", 1)[0]
    finally:
        if proc.returncode is None:
            proc.terminate()
        await proc.wait()


async def worker(
    http: aiohttp.ClientSession,
    urls: list[str],
    offset: int,
    deadline: float,
    budget: list[int],
    latencies: list[float],
    statuses: dict[int, int],
) -> None:
    headers = {"Authorization": f"Bearer {CLIENT_SECRET}", "X-Client-Id": CLIENT_ID}
    i = offset
    while time.perf_counter() < deadline and budget[0] > 0:
        budget[0] -= 1
        url = urls[i % len(urls)]
        i += 1
        t0 = time.perf_counter()
        async with http.post(url, headers=headers) as response:
            await response.read()
            statuses[response.status] = statuses.get(response.status, 0) + 1
        latencies.append(time.perf_counter() - t0)


async def load(urls: list[str], seconds: float, concurrency: int, max_requests: int) -> str:
    token_urls = [u + "/v1/session-tokens" for u in urls]
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as http:
        await asyncio.gather(  # warm-up: connections, first transactions, script loading
            *(worker(http, token_urls, i, time.perf_counter() + 0.5, [20], [], {})
              for i in range(min(concurrency, 8)))
        )
        latencies: list[float] = []
        statuses: dict[int, int] = {}
        budget = [max_requests]
        t0 = time.perf_counter()
        await asyncio.gather(
            *(
                worker(http, token_urls, i, t0 + seconds, budget, latencies, statuses)
                for i in range(concurrency)
            )
        )
        elapsed = time.perf_counter() - t0
    lat = sorted(latencies)
    p99 = lat[min(len(lat) - 1, int(0.99 * len(lat)))]
    ok = statuses.get(200, 0)
    return (
        f"{len(lat) / elapsed:8.0f} req/s  p50 {statistics.median(lat) * 1000:7.2f} ms  "
        f"p99 {p99 * 1000:7.2f} ms  ({ok} keys issued, statuses {dict(sorted(statuses.items()))})"
    )


def broker_args(upstream: str) -> list[str]:
    return [
        "broker", "--port", "0", "--api-key-env", "BENCH_API_KEY",
        "--client", f"{CLIENT_ID}={hash_secret(CLIENT_SECRET)}",
        "--upstream", upstream,
        "--rate-capacity", "1e9", "--rate-refill", "1e9",
        "--max-concurrency", "256",
    ]  # fmt: skip


async def run(config: str, args: argparse.Namespace, tmp: Path) -> str:
    async with process(_PEER) as upstream, contextlib.AsyncExitStack() as stack:
        if config == "sqlite":
            extra = [["--audit-db", str(tmp / f"audit-{time.monotonic_ns()}.sqlite3")]]
        else:
            replicas = int(config.rsplit("-", 1)[1])
            redis = RedisServer()
            stack.callback(redis.close)
            redis.start()
            pg = PostgresServer(fsync=args.pg_fsync == "on")
            stack.callback(pg.close)
            pg.start()
            dsn = pg.dsn(WRITER_ROLE, await asyncio.to_thread(pg.new_database))
            extra = [["--redis-url", redis.url, "--audit-dsn", dsn]] * replicas
        urls = [
            await stack.enter_async_context(process(_BROKER, *broker_args(upstream), *e))
            for e in extra
        ]
        return await load(urls, args.seconds, args.concurrency, args.max_requests)


async def main(args: argparse.Namespace) -> None:
    print(f"{os.cpu_count()} CPUs; {args.concurrency} concurrent clients; {args.seconds:g} s each")
    with tempfile.TemporaryDirectory() as tmp:
        for config in args.configs.split(","):
            missing = None if config == "sqlite" else (redis_missing() or postgres_missing())
            if missing:
                print(f"{config:>11}: skipped ({missing})")
                continue
            print(f"{config:>11}: {await run(config, args, Path(tmp))}", flush=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--max-requests", type=int, default=200_000)
    parser.add_argument("--configs", default="sqlite,redis-pg-1,redis-pg-3")
    parser.add_argument("--pg-fsync", choices=("on", "off"), default="on")
    asyncio.run(main(parser.parse_args()))
