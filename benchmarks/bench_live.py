"""OpenAI Live client costs: the audio activity gate per frame, and the graceful close
(``session.close`` -> ``session.closed``, then the peer connection closed) against the local peer.

* gate: ``frame_level`` + ``EnergyGate.feed`` on 20 ms frames of 48 kHz s16 (mono as sent,
  stereo as aiortc decodes Opus), microseconds per frame and share of one core at 50 frames/s;
* close: ``--sessions`` Live sessions one after another (start -> active -> stop); the time from
  ``stop()`` to the transport's close done (finalisation recorded), median and max, and how many
  were confirmed.

Run: .venv/bin/python benchmarks/bench_live.py [--frames 5000] [--sessions 10]
"""

from __future__ import annotations

import argparse
import array
import math
import statistics
import sys
import time
from pathlib import Path

import anyio
import av

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from fsm_voice.live import live_session
from fsm_voice.peer.server import RealtimePeer
from fsm_voice.ports import TransportSignal
from fsm_voice.transport import NullSink, SilenceSource
from fsm_voice.transport.activity import (
    ActivityPolicy,
    EnergyGate,
    frame_level,
    frame_seconds,
)
from fsm_voice.transport.aiortc_transport import AiortcTransport


def _frame(layout: str) -> av.AudioFrame:
    channels = 2 if layout == "stereo" else 1
    f = av.AudioFrame(format="s16", layout=layout, samples=960)
    f.planes[0].update(array.array(
        "h", [int(8000 * math.sin(i / 7)) for i in range(960 * channels)]).tobytes())
    f.sample_rate = 48000
    return f


def bench_gate(frames: int) -> None:
    gate = EnergyGate(ActivityPolicy(), TransportSignal.AUDIO_STARTED,
                      TransportSignal.AUDIO_STOPPED)
    for layout in ("mono", "stereo"):
        f = _frame(layout)
        t0 = time.perf_counter()
        for _ in range(frames):
            gate.feed(frame_level(f), frame_seconds(f))
        per = (time.perf_counter() - t0) / frames
        print(f"gate {layout:6s}: {per * 1e6:6.1f} us/frame = {per * 50 * 100:.2f} % of one "
              "core at 50 frames/s")


async def bench_close(sessions: int) -> None:
    took: list[float] = []
    confirmed = 0
    async with RealtimePeer() as peer:
        for _ in range(sessions):
            s = live_session(peer.base_url, "sk-bench", audio_source=SilenceSource,
                             audio_sink=NullSink)
            async with s:
                await s.start()
                await s.wait_for("active", timeout=30)
                t0 = time.perf_counter()
                await s.stop()
                await s.dispatcher.wait_closed()
                took.append(time.perf_counter() - t0)
            assert isinstance(s.transport, AiortcTransport)
            final = s.transport.last_finalisation
            confirmed += bool(final and final.confirmed)
    print(f"close ({sessions} sessions): median {statistics.median(took) * 1000:.0f} ms, "
          f"max {max(took) * 1000:.0f} ms, confirmed {confirmed}/{sessions}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--frames", type=int, default=5000)
    p.add_argument("--sessions", type=int, default=10)
    a = p.parse_args()
    bench_gate(a.frames)
    anyio.run(bench_close, a.sessions)


if __name__ == "__main__":
    main()
