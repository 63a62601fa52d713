"""Session proxy overhead and cap enforcement delay, in one process on 127.0.0.1.

1. Create latency: ``--creates`` Realtime creates (one aiortc offer, made once, not timed)
   POSTed straight to the local peer, then as many through the broker's proxy (auth, rate
   limit, session lease, multipart to the peer with the real key, audit row committed in
   SQLite), alternating; each call is hung up right after (not timed). Overhead = the
   difference of the medians. With the Live peer, the same for ``POST /v1/live/sessions``.
2. Enforcement delay: ``--caps`` sessions with a 1 s duration cap. Realtime: how late after the
   cap the broker sent the hangup (its ``session_enforced`` row's ``latency_ms``) and cap ->
   the call closed on the peer. Live (when the peer serves it): cap -> the client's
   ``session.closed`` on its data channel.

Run: .venv/bin/python benchmarks/bench_broker_proxy.py [--creates 30] [--caps 5]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from fsm_voice.broker import BrokerConfig, ClientRegistry, RatePolicy, TokenBroker  # noqa: E402
from fsm_voice.broker.proxy import (  # noqa: E402
    LIVE_SESSIONS_PATH,
    REALTIME_CALLS_PATH,
    ClientProxy,
    ProxyConfig,
    SessionLimits,
)
from fsm_voice.peer import RealtimePeer  # noqa: E402
from tests.test_broker_proxy import AppClient  # noqa: E402

API_KEY = "sk-bench-proxy-0123456789abcdef"
AUTH = {"Authorization": "Basic " + base64.b64encode(b"bench:bench-secret-0123456789").decode()}


def broker(upstream: str, audit: Path, duration: float) -> TokenBroker:
    proxy = ProxyConfig(default=ClientProxy(limits=SessionLimits(1000, duration, None)))
    return TokenBroker(
        BrokerConfig(upstream_base=upstream, proxy=proxy,
                     rate=RatePolicy(capacity=1e6, refill_per_second=1e6)),
        api_key=API_KEY,
        clients=ClientRegistry.from_secrets({"bench": "bench-secret-0123456789"}),
        audit=audit,
    )


def ms(values: list[float]) -> str:
    values = sorted(values)
    p90 = values[min(len(values) - 1, int(0.9 * len(values)))]
    return f"median {statistics.median(values):6.1f} ms  p90 {p90:6.1f} ms  (n={len(values)})"


async def creates(http: aiohttp.ClientSession, peer: RealtimePeer, b: TokenBroker, n: int,
                  live: bool) -> None:
    client = AppClient()
    sdp = await client.offer()
    direct: list[float] = []
    proxied: list[float] = []
    for i in range(2 * n):
        via_broker = i % 2 == 1
        base = b.base_url if via_broker else peer.base_url
        headers = dict(AUTH) if via_broker else {"Authorization": f"Bearer {API_KEY}"}
        t0 = time.perf_counter()
        if live:
            body = {"transport": {"type": "webrtc", "sdp": sdp}}
            if not via_broker:
                body["session"] = {"model": "gpt-live-1"}
            async with http.post(base + LIVE_SESSIONS_PATH, json=body, headers=headers) as r:
                assert r.status == 201, await r.text()
                call_id = (await r.json())["session"]["id"]
        else:
            headers["Content-Type"] = "application/sdp"
            async with http.post(base + REALTIME_CALLS_PATH, data=sdp, headers=headers) as r:
                assert r.status == 201, await r.text()
                call_id = r.headers["Location"].rsplit("/", 1)[-1]
                await r.read()
        (proxied if via_broker else direct).append((time.perf_counter() - t0) * 1000.0)
        if live:
            assert b.proxy is not None
            s = b.proxy.sessions.get(call_id)
            if s is not None:
                await b.proxy._enforce(s, "bench")  # end it through the sideband
                if s.task is not None:
                    await s.task
            else:
                for call in list(peer.calls.values()):
                    await call.close("bench")
        elif via_broker:
            async with http.post(f"{b.base_url}{REALTIME_CALLS_PATH}/{call_id}/hangup",
                                 headers=AUTH) as r:
                assert r.status == 200
        else:
            await peer.close_call(call_id)
    await client.close()
    kind = "Live" if live else "Realtime"
    print(f"{kind} create, direct to the peer: {ms(direct)}")
    print(f"{kind} create, through the broker: {ms(proxied)}")
    print(f"{kind} proxy overhead (difference of medians): "
          f"{statistics.median(proxied) - statistics.median(direct):.1f} ms")


async def caps(http: aiohttp.ClientSession, b: TokenBroker, n: int, live: bool) -> None:
    late: list[float] = []
    seen: list[float] = []
    for _ in range(n):
        client = AppClient()
        if live:
            body = {"transport": {"type": "webrtc", "sdp": await client.offer()}}
            async with http.post(b.base_url + LIVE_SESSIONS_PATH, json=body, headers=AUTH) as r:
                answer = await r.json()
            sid = answer["session"]["id"]
            await client.accept(answer["transport"]["sdp"])
        else:
            headers = {**AUTH, "Content-Type": "application/sdp"}
            async with http.post(b.base_url + REALTIME_CALLS_PATH, data=await client.offer(),
                                 headers=headers) as r:
                sid = r.headers["Location"].rsplit("/", 1)[-1]
                await client.accept(await r.text())
        assert b.proxy is not None
        s = b.proxy.sessions[sid]
        if live:
            await client.wait_for("session.closed", timeout=30)
            seen.append((asyncio.get_running_loop().time() - s.deadline) * 1000.0)
        assert s.task is not None
        await s.task
        if not live:
            seen.append((asyncio.get_running_loop().time() - s.deadline) * 1000.0)
        [row] = await b.audit.rows("outcome = ? AND session_id = ?", ("session_enforced", sid))
        late.append(float(row["latency_ms"]))
        await client.close()
    kind = "Live" if live else "Realtime"
    print(f"{kind} cap -> close sent (audit latency_ms): {ms(late)}")
    what = "client's session.closed" if live else "hangup answered, slot freed"
    print(f"{kind} cap -> {what}: {ms(seen)}")


async def main(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        async with (
            RealtimePeer(reply="tone") as peer,
            aiohttp.ClientSession() as http,
        ):
            live = hasattr(peer, "live_sessions")
            async with broker(peer.base_url, Path(tmp) / "a.sqlite3", 600.0) as b:
                await creates(http, peer, b, args.creates, live=False)
                if live:
                    await creates(http, peer, b, args.creates, live=True)
            async with broker(peer.base_url, Path(tmp) / "b.sqlite3", 1.0) as b:
                await caps(http, b, args.caps, live=False)
                if live:
                    await caps(http, b, args.caps, live=True)
            if not live:
                print("Live: the local peer does not serve it here (no numbers)")
    print(json.dumps({"creates": args.creates, "caps": args.caps}))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--creates", type=int, default=30)
    parser.add_argument("--caps", type=int, default=5)
    asyncio.run(main(parser.parse_args()))
