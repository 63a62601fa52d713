"""Soak: a simulated hour with periodic faults (virtual clock), 200 sequential real sessions, 50
concurrent real sessions in one process. Resources must not grow; every transition taken must be
a row of the spec's table."""

from __future__ import annotations

import asyncio
import gc
import os
import random
import threading
import tracemalloc
from pathlib import Path

import anyio
import pytest

from fsm_voice.check import parse_spec_table
from fsm_voice.client import realtime_session
from fsm_voice.clock import VirtualClock
from fsm_voice.peer.server import RealtimePeer
from fsm_voice.ports import TransportSignal
from fsm_voice.session import TraceEntry, VoiceSession
from fsm_voice.testing import ScriptedTransport, failure
from fsm_voice.transport import NullSink, SilenceSource

pytestmark = pytest.mark.anyio
SPEC = Path(__file__).resolve().parent.parent / "specs" / "connection.md"
ROWS = {(r[0], r[1], r[3]) for r in parse_spec_table(SPEC.read_text())}


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def assert_legal(trace: list[TraceEntry]) -> None:
    for e in trace:
        if e.outcome == "taken":
            assert (e.source, e.event, e.target) in ROWS, e


async def test_simulated_hour_with_periodic_faults() -> None:
    rng = random.Random(7)
    clock = VirtualClock()
    script: list[object] = []
    for _ in range(400):  # what each (re)connection attempt will meet
        script.append(rng.choice(["ok"] * 6 + ["hang", failure("transient"),
                                               failure("recoverable")]))
    t = ScriptedTransport(script, default="ok")  # type: ignore[arg-type]
    faults = survived = 0
    async with VoiceSession(t, clock=clock, trace_limit=100_000) as s:
        await s.start()
        await clock.advance(1)
        tracemalloc.start()
        mem0 = tracemalloc.get_traced_memory()[0]
        while clock.now() < 3600:
            await clock.advance(rng.uniform(30, 120))
            if s.status == "error":
                await s.start()
                await clock.advance(30)
            if not (t.is_open and t.sink is not None and s.status in ("active", "listening",
                                                                       "speaking")):
                continue
            faults += 1
            kind = rng.choice(["fail", "blip", "outage", "server", "speech"])
            if kind == "fail":
                t.emit(TransportSignal.FAILED)
            elif kind == "blip":
                t.emit(TransportSignal.ICE_DISCONNECTED)
                await clock.advance(rng.uniform(0.5, 4.5))
                if t.sink is not None:
                    t.emit(TransportSignal.ICE_RECOVERED)
            elif kind == "outage":
                t.emit(TransportSignal.ICE_DISCONNECTED)
            elif kind == "server":
                t.server({"type": "error", "error": {"type": "server_error"}})
            else:
                t.server({"type": "input_audio_buffer.speech_started"})
                t.server({"type": "input_audio_buffer.speech_stopped"})
            await clock.advance(60)
            survived += s.status in ("active", "listening", "speaking")
        mem1 = tracemalloc.get_traced_memory()[0]
        tracemalloc.stop()
        print(f"simulated hour: {faults} faults injected, {survived} survived, "
              f"{len(s.trace)} trace entries, memory +{(mem1 - mem0) / 1e3:.0f} kB")
        assert faults >= 25
        assert survived >= faults * 0.9  # the rest hit scripted failures and were restarted
        assert_legal(list(s.trace))
        assert max(e.time for e in s.trace) >= 3600
        assert mem1 - mem0 < 2_000_000  # the trace itself is the only thing that grows
    assert s.status == "idle" and not t.is_open and t.opens == t.closes


def _resources() -> tuple[int, int, int]:
    gc.collect()
    return (len(os.listdir("/proc/self/fd")), len(asyncio.all_tasks()), threading.active_count())


def _rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


@pytest.mark.slow
async def test_200_sequential_real_sessions() -> None:
    async with RealtimePeer() as peer:

        async def one() -> VoiceSession:
            s = realtime_session(peer.base_url, "ek_soak", host_addresses=["127.0.0.1"],
                                 audio_source=SilenceSource, audio_sink=NullSink)
            async with s:
                await s.start()
                await s.wait_for("active", timeout=15)
            return s

        for _ in range(20):  # warm up: codecs, caches, the default executor
            await one()
        await anyio.sleep(0.3)
        before = _resources()
        rss0 = _rss_mb()
        for _ in range(200):
            s = await one()
            assert_legal(list(s.trace))
        await anyio.sleep(0.5)
        after = _resources()
        rss1 = _rss_mb()
        print(f"200 sessions: fds/tasks/threads {before} -> {after}, RSS {rss0:.0f} -> "
              f"{rss1:.0f} MB")
        assert rss1 - rss0 < 25, (rss0, rss1)  # stated bound: < 25 MB over 200 sessions
        assert after[0] <= before[0] + 2, (before, after)  # fds
        assert after[1] <= before[1], (before, after)  # tasks
        assert after[2] <= before[2] + 2, (before, after)  # threads (default executor)


@pytest.mark.slow
async def test_50_concurrent_real_sessions_in_one_process() -> None:
    n = 50
    async with RealtimePeer(max_calls=n + 5) as peer:
        before = _resources()
        sessions = [realtime_session(peer.base_url, f"ek_{i}", host_addresses=["127.0.0.1"],
                                     audio_source=None, audio_sink=NullSink)
                    for i in range(n)]
        up = 0

        async def run(s: VoiceSession) -> None:
            nonlocal up
            async with s:
                await s.start()
                await s.wait_for("active", timeout=60)
                up += 1
                while up < n:
                    await anyio.sleep(0.1)
                await anyio.sleep(2.0)  # all 50 up together, media flowing from the peer
                assert s.status in ("active", "listening", "speaking")

        with anyio.fail_after(120):
            async with anyio.create_task_group() as tg:
                for s in sessions:
                    tg.start_soon(run, s)
        assert up == n
        for s in sessions:
            assert s.status == "idle"
            assert_legal(list(s.trace))
        await anyio.sleep(1.0)
        after = _resources()
        assert after[0] <= before[0] + 2, (before, after)
        assert after[1] <= before[1], (before, after)
