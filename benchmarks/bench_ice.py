"""Connect time with a dead STUN server listed first (aiortc alone vs. probed), and relay-only
connect time through coturn (TURN over UDP, TCP, TLS), against the local RealtimePeer.

Everything stays on 127.0.0.1: coturn (tests/coturn.py), a "dead" STUN server (a bound UDP
socket that never answers), the peer, and the client's host candidates.

Connect time = ``AiortcTransport.open()`` until the ``oai-events`` channel is open.

Run: .venv/bin/python benchmarks/bench_ice.py [runs]   (needs coturn's `turnserver`)
"""

from __future__ import annotations

import asyncio
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # for tests.coturn

from fsm_voice.ice import IceServerProber
from fsm_voice.peer.server import RealtimePeer
from fsm_voice.policy import IceServer
from fsm_voice.ports import TransportSignal
from fsm_voice.signaling import HttpSignaling
from fsm_voice.transport import AiortcTransport
from tests.coturn import (
    coturn_server,
    dead_udp_port,
    self_signed_cert,
    turnserver_path,
)


class _Sink:
    def __init__(self) -> None:
        self.open = asyncio.Event()

    def signal(self, signal: TransportSignal, detail: str = "") -> None:
        if signal is TransportSignal.CHANNEL_OPEN:
            self.open.set()

    def server_event(self, event: Mapping[str, Any]) -> None:
        pass


async def connect_time(peer: RealtimePeer, **kwargs: Any) -> float:
    signaling = HttpSignaling(peer.base_url, "ek_bench")
    transport = AiortcTransport(signaling, host_addresses=["127.0.0.1"], **kwargs)
    try:
        sink = _Sink()
        start = time.perf_counter()
        await transport.open(sink)
        await asyncio.wait_for(sink.open.wait(), 30)
        return time.perf_counter() - start
    finally:
        await transport.close()
        await signaling.aclose()


async def series(label: str, runs: int, peer: RealtimePeer, make: Any) -> None:
    times = [await connect_time(peer, **make()) for _ in range(runs)]
    print(
        f"  {label:<44} median {statistics.median(times) * 1000:7.0f} ms"
        f"   (min {min(times) * 1000:.0f}, max {max(times) * 1000:.0f}, n={runs})"
    )


async def main(runs: int) -> None:
    if turnserver_path() is None:
        sys.exit("coturn's `turnserver` is not installed (apt-get install -y coturn)")
    with tempfile.TemporaryDirectory() as tmp:
        cert = self_signed_cert(Path(tmp))
        with coturn_server(cert=cert) as turn, dead_udp_port() as dead:
            os.environ["SSL_CERT_FILE"] = str(cert[0])  # trust our turns: certificate
            dead_first = [IceServer(f"stun:127.0.0.1:{dead}"), turn.stun()]
            async with RealtimePeer(reply="tone") as peer:
                await connect_time(peer)  # warm-up (imports, codecs)
                print("connect time, dead STUN server listed first:")
                await series("no ICE servers (host only, baseline)", runs, peer, dict)
                await series(
                    "naive: aiortc gets [dead, live]",
                    runs,
                    peer,
                    lambda: {"ice_servers": dead_first, "prober": None},
                )
                await series(
                    "probed: first connect (fresh prober)",
                    runs,
                    peer,
                    lambda: {"prober": IceServerProber(dead_first)},
                )
                shared = IceServerProber(dead_first)
                await shared.probe()
                await series(
                    "probed: reconnect (dead one cooling down)",
                    runs,
                    peer,
                    lambda: {"prober": shared},
                )
                print("relay-only connect time through coturn:")
                for transport in ("udp", "tcp", "tls"):
                    server = turn.turn(transport)
                    await series(
                        f"TURN/{transport.upper()} ({server.urls[0].split(':')[0]}:)",
                        runs,
                        peer,
                        lambda s=server: {"ice_servers": [s], "relay_only": True},
                    )


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]) if len(sys.argv) > 1 else 5))
