"""Token broker throughput: issued keys per second on loopback.

Starts a RealtimePeer (the upstream client_secrets endpoint) and a TokenBroker (SQLite audit log
in a temporary directory, rate limit raised out of the way) on 127.0.0.1, then ``--concurrency``
aiohttp workers POST token requests for ``--seconds`` (bounded by ``--max-requests``). Every
request goes client -> broker -> upstream -> broker -> audit row (committed) -> client, so the
number includes one upstream round trip and one audited SQLite insert per key.

Run: .venv/bin/python benchmarks/bench_broker.py [--seconds 5] [--concurrency 16]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from pathlib import Path

import aiohttp

from fsm_voice.broker import BrokerConfig, ClientRegistry, RatePolicy, TokenBroker
from fsm_voice.peer import RealtimePeer

API_KEY = "sk-bench-0123456789abcdef"
CLIENT_ID, CLIENT_SECRET = "bench", "bench-secret-0123456789"


async def worker(
    http: aiohttp.ClientSession,
    url: str,
    deadline: float,
    budget: list[int],
    latencies: list[float],
    statuses: dict[int, int],
) -> None:
    headers = {"Authorization": f"Bearer {CLIENT_SECRET}", "X-Client-Id": CLIENT_ID}
    while time.perf_counter() < deadline and budget[0] > 0:
        budget[0] -= 1
        t0 = time.perf_counter()
        async with http.post(url, headers=headers) as response:
            await response.read()
            statuses[response.status] = statuses.get(response.status, 0) + 1
        latencies.append(time.perf_counter() - t0)


async def main(seconds: float, concurrency: int, max_requests: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        async with RealtimePeer(api_keys={API_KEY}) as peer:
            config = BrokerConfig(
                upstream_base=peer.base_url,
                rate=RatePolicy(capacity=1e9, refill_per_second=1e9),
                max_concurrent_upstream=max(1, concurrency),
            )
            broker = TokenBroker(
                config,
                api_key=API_KEY,
                clients=ClientRegistry.from_secrets({CLIENT_ID: CLIENT_SECRET}),
                audit=Path(tmp) / "audit.sqlite3",
            )
            async with broker:
                connector = aiohttp.TCPConnector(limit=concurrency)
                async with aiohttp.ClientSession(connector=connector) as http:
                    # warm-up (connections, first SQLite transaction)
                    await worker(http, broker.token_url, time.perf_counter() + 0.3, [50], [], {})
                    latencies: list[float] = []
                    statuses: dict[int, int] = {}
                    budget = [max_requests]
                    t0 = time.perf_counter()
                    deadline = t0 + seconds
                    await asyncio.gather(
                        *(
                            worker(http, broker.token_url, deadline, budget, latencies, statuses)
                            for _ in range(concurrency)
                        )
                    )
                    elapsed = time.perf_counter() - t0
                rows = len(await broker.audit.rows())
    ok = statuses.get(200, 0)
    lat = sorted(latencies)
    p99 = lat[min(len(lat) - 1, int(0.99 * len(lat)))] if lat else float("nan")
    print(f"broker: {len(lat)} requests in {elapsed:.2f} s with {concurrency} workers")
    print(f"  {len(lat) / elapsed:8.0f} requests/s   ({ok / elapsed:.0f} keys issued/s)")
    print(f"  latency p50 {statistics.median(lat) * 1000:.2f} ms   p99 {p99 * 1000:.2f} ms")
    print(f"  statuses {dict(sorted(statuses.items()))}; audit rows {rows}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--max-requests", type=int, default=200_000)
    a = parser.parse_args()
    asyncio.run(main(a.seconds, a.concurrency, a.max_requests))
