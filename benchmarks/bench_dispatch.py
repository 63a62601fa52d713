"""Events per second: transitions 0.9 vs python-statemachine vs fsm_voice (machine, fast path,
runtime), on a two-state toggle and on the lifecycle.

Run: .venv/bin/python benchmarks/bench_dispatch.py
"""

from __future__ import annotations

import time
from collections.abc import Callable

import anyio
from statemachine import State, StateMachine
from transitions import Machine

from fsm_voice.clock import VirtualClock
from fsm_voice.dispatcher import Posted
from fsm_voice.fastpath import FastLifecycle
from fsm_voice.machine import LifecycleMachine
from fsm_voice.session import VoiceSession
from fsm_voice.testing import ScriptedTransport

# A session that talks: the server events a live conversation produces, over and over.
CYCLE = ["speech_started", "speech_stopped", "audio_started", "audio_stopped",
         "ice_disconnected", "ice_recovered"]


def rate(fn: Callable[[], None], events_per_call: int, seconds: float = 1.0) -> float:
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        fn()
        n += events_per_call
    return n / (time.perf_counter() - t0)


class Toggle(StateMachine):
    off = State(initial=True)
    on = State()
    flip = off.to(on) | on.to(off)


def bench_toggle_psm() -> float:
    m = Toggle()
    return rate(lambda: [m.send("flip") for _ in range(100)] and None, 100)


def bench_toggle_transitions() -> float:
    class Model:
        pass

    model = Model()
    Machine(model=model, states=["off", "on"], initial="off",
            transitions=[["flip", "off", "on"], ["flip", "on", "off"]])
    return rate(lambda: [model.flip() for _ in range(100)] and None, 100)  # type: ignore[attr-defined]


def bench_lifecycle_transitions() -> float:
    """The lifecycle's active-session cycle, declared in transitions (no guards needed here)."""

    class Model:
        pass

    model = Model()
    states = ["idle", "connecting", "active", "listening", "speaking", "ice_grace"]
    trans = [["start", "idle", "connecting"], ["up", "connecting", "active"],
             ["speech_started", "active", "listening"], ["speech_stopped", "listening", "active"],
             ["audio_started", "active", "speaking"], ["audio_stopped", "speaking", "active"],
             ["ice_disconnected", "active", "ice_grace"], ["ice_recovered", "ice_grace", "active"]]
    Machine(model=model, states=states, transitions=trans, initial="idle")
    model.start()  # type: ignore[attr-defined]
    model.up()  # type: ignore[attr-defined]
    triggers = [getattr(model, e) for e in CYCLE]
    return rate(lambda: [t() for t in triggers] and None, len(CYCLE))


def _activate(m: LifecycleMachine | FastLifecycle) -> None:
    for e in ("start", "transport_connected", "channel_open"):
        m.send(e)
    m.take_effects()


def bench_lifecycle(cls: type) -> float:
    m = cls()
    _activate(m)

    def run() -> None:
        for e in CYCLE:
            m.send(e)
        m.effects.clear()

    return rate(run, len(CYCLE))


def bench_runtime(n: int = 200_000) -> float:
    async def main() -> float:
        t = ScriptedTransport(["ok"])
        async with VoiceSession(t, clock=VirtualClock()) as s:
            await s.start()
            await anyio.wait_all_tasks_blocked()
            t0 = time.perf_counter()
            for i in range(n):
                s.dispatcher.post(Posted(CYCLE[i % len(CYCLE)], token=s.dispatcher.generation))
            await s.dispatcher.drain()
            dt = time.perf_counter() - t0
            assert s.status == "active", s.status
            return n / dt

    return anyio.run(main)


def bench_many_sessions(sessions: int = 1000, per_session: int = 200) -> float:
    """1,000 sessions in one process, each fed a burst of server events: aggregate events/s."""

    async def main() -> float:
        async with anyio.create_task_group() as tg:
            live: list[tuple[VoiceSession, ScriptedTransport]] = []
            ready = anyio.Event()
            done = anyio.Event()

            async def hold(s: VoiceSession) -> None:
                async with s:
                    await s.start()
                    if len(live) == sessions:
                        ready.set()
                    await done.wait()

            for _ in range(sessions):
                t = ScriptedTransport(["ok"])
                s = VoiceSession(t, clock=VirtualClock())
                live.append((s, t))
                tg.start_soon(hold, s)
            await ready.wait()
            await anyio.wait_all_tasks_blocked()
            t0 = time.perf_counter()
            for s, _t in live:
                for i in range(per_session):
                    s.dispatcher.post(Posted(CYCLE[i % len(CYCLE)], token=s.dispatcher.generation))
            for s, _t in live:
                await s.dispatcher.drain()
            dt = time.perf_counter() - t0
            assert all(s.status == "active" for s, _ in live)
            done.set()
        return sessions * per_session / dt

    return anyio.run(main)


def main() -> None:
    rows = [
        ("toggle", "transitions 0.9", bench_toggle_transitions()),
        ("toggle", "python-statemachine 3.2", bench_toggle_psm()),
        ("lifecycle", "transitions 0.9 (same states, no guards/effects)",
         bench_lifecycle_transitions()),
        ("lifecycle", "fsm_voice LifecycleMachine (python-statemachine)",
         bench_lifecycle(LifecycleMachine)),
        ("lifecycle", "fsm_voice FastLifecycle (compiled table)", bench_lifecycle(FastLifecycle)),
        ("lifecycle", "fsm_voice VoiceSession runtime (queue + dispatch + trace)",
         bench_runtime()),
        ("lifecycle", "fsm_voice runtime, 1,000 sessions in one process (aggregate)",
         bench_many_sessions()),
    ]
    print(f"{'machine':10} {'engine':58} {'events/s':>12}")
    for kind, name, r in rows:
        print(f"{kind:10} {name:58} {r:12,.0f}")


if __name__ == "__main__":
    main()
