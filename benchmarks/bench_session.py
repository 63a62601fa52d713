"""Real sessions on loopback: connect time (start -> active) and resources over 100 cycles.

Run: .venv/bin/python benchmarks/bench_session.py [cycles]
"""

from __future__ import annotations

import asyncio
import gc
import os
import statistics
import sys
import threading
import time

import anyio
from aiortc import RTCPeerConnection

from fsm_voice.client import realtime_session
from fsm_voice.peer.server import RealtimePeer
from fsm_voice.transport import NullSink, SilenceSource


def snapshot() -> dict[str, int]:
    gc.collect()
    return {
        "fds": len(os.listdir("/proc/self/fd")),
        "tasks": len(asyncio.all_tasks()),
        "threads": threading.active_count(),
        "peer_connections": sum(isinstance(o, RTCPeerConnection) for o in gc.get_objects()),
    }


async def main(cycles: int) -> None:
    times: list[float] = []
    async with RealtimePeer() as peer:

        async def one() -> float:
            s = realtime_session(peer.base_url, "ek_bench", host_addresses=["127.0.0.1"],
                                 audio_source=SilenceSource, audio_sink=NullSink)
            async with s:
                t0 = time.perf_counter()
                await s.start()
                await s.wait_for("active", timeout=15)
                return time.perf_counter() - t0

        await one()
        await anyio.sleep(0.3)
        before = snapshot()
        for _ in range(cycles):
            times.append(await one())
        await anyio.sleep(0.5)
        after = snapshot()
    ms = sorted(t * 1000 for t in times)
    print(f"sessions: {cycles}")
    print(f"connect time start->active: median {statistics.median(ms):.1f} ms, "
          f"p90 {ms[int(len(ms) * 0.9) - 1]:.1f} ms, max {ms[-1]:.1f} ms")
    for k in before:
        print(f"{k:17s} before {before[k]:4d}  after {after[k]:4d}")


if __name__ == "__main__":
    anyio.run(main, int(sys.argv[1]) if len(sys.argv) > 1 else 100)
