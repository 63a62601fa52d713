"""Cost of recording a trace: the runtime's events/s (benchmarks/bench_dispatch.py's
``bench_runtime``: a session in its active cycle on a scripted transport and a virtual clock)
with and without ``session.record_trace``, in CPU seconds of this process; the recorded run's
time includes writing the whole file (flush and close). Rounds alternate, medians are compared.
Budget (issue 11): recording costs <= 10 % of the runtime's events/s; the script says OVER and
exits 1 when the median cost is above it.

Run: .venv/bin/python benchmarks/bench_trace.py [rounds]   (rounds >= 5; default 9)
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from pathlib import Path

import anyio

from fsm_voice.clock import VirtualClock
from fsm_voice.dispatcher import Posted
from fsm_voice.session import VoiceSession
from fsm_voice.testing import ScriptedTransport

CYCLE = ["speech_started", "speech_stopped", "audio_started", "audio_stopped",
         "ice_disconnected", "ice_recovered"]


def run(n: int, trace: Path | None) -> tuple[float, int]:
    """Events/s of ``n`` events (and the trace file's size)."""

    async def main() -> float:
        t = ScriptedTransport(["ok"])
        async with VoiceSession(t, clock=VirtualClock()) as s:
            writer = s.record_trace(trace) if trace is not None else None
            await s.start()
            await anyio.wait_all_tasks_blocked()
            t0 = time.process_time()  # this process's CPU: other processes' load counts less
            for i in range(n):
                s.dispatcher.post(Posted(CYCLE[i % len(CYCLE)], token=s.dispatcher.generation))
            await s.dispatcher.drain()
            if writer is not None:
                writer.close()
            dt = time.process_time() - t0
            assert s.status == "active", s.status
            return n / dt

    rate = anyio.run(main)
    return rate, trace.stat().st_size if trace is not None else 0


BUDGET_PERCENT = 10.0


def main() -> None:
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 9
    if rounds < 5:
        raise SystemExit("rounds must be >= 5 (the medians of a shared machine need them)")
    n = 100_000
    plain, traced, size = [], [], 0
    with tempfile.TemporaryDirectory() as d:
        for i in range(rounds):  # interleaved, so drift in machine load hits both alike
            plain.append(run(n, None)[0])
            r, size = run(n, Path(d) / f"t{i}.jsonl")
            traced.append(r)
    p, t = statistics.median(plain), statistics.median(traced)
    cost = 100 * (1 - t / p)
    spread = sorted(100 * (1 - b / a) for a, b in zip(plain, traced, strict=True))
    print(f"runtime without trace: {p:,.0f} events/s (median of {rounds})")
    print(f"runtime with trace:    {t:,.0f} events/s ({size / n:.0f} bytes/event)")
    print(f"cost of recording:     {cost:.1f} % of events/s (budget {BUDGET_PERCENT:.0f} %; "
          f"per round {spread[0]:.1f} .. {spread[-1]:.1f} %): "
          f"{'within budget' if cost <= BUDGET_PERCENT else 'OVER BUDGET'}")
    if cost > BUDGET_PERCENT:
        sys.exit(1)


if __name__ == "__main__":
    main()
