"""Cost of the metrics export, and the dashboard's push latency with 100 live sessions.

1. Runtime events per CPU second (one session, scripted transport, virtual clock, the
   conversation cycle of bench_dispatch; median of >= 5 interleaved rounds) bare, then watched
   by a hub alone (what the dashboard costs: it polls the hub), with the Prometheus sink, and with
   the OpenTelemetry sink (SDK providers, no exporter). Target: Prometheus <= 10 % (the script
   says MISSED and exits 1 when a target is missed).
2. 100 live sessions (scripted transports, real clock) on one dashboard; a transport failure
   every 20 ms on a random session; an SSE client measures, for every status change, the time
   from the change (``on_status``) to the first push that carries it. Target: within 1 s (a
   change not pushed 1 s after the sessions settle counts as undelivered).

Run: .venv/bin/python benchmarks/bench_metrics.py [--quick]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import random
import statistics
import time
from collections.abc import Callable

import aiohttp
import anyio

from fsm_voice.clock import VirtualClock
from fsm_voice.dashboard import Dashboard
from fsm_voice.dispatcher import Posted
from fsm_voice.ports import TransportSignal
from fsm_voice.session import StatusChange, VoiceSession
from fsm_voice.telemetry import Hub
from fsm_voice.testing import ScriptedTransport

CYCLE = ["speech_started", "speech_stopped", "audio_started", "audio_stopped",
         "ice_disconnected", "ice_recovered"]


TURNS = CYCLE[:4]
"""Conversation turns only (no ICE flap): the common case of a live session."""


def runtime_rate(watch: Callable[[VoiceSession], object] | None, n: int,
                 cycle: list[str] = CYCLE) -> float:
    async def main() -> float:
        t = ScriptedTransport(["ok"])
        s = VoiceSession(t, clock=VirtualClock(), trace_limit=1000)
        if watch is not None:
            watch(s)
        async with s:
            await s.start()
            await anyio.wait_all_tasks_blocked()
            t0 = time.process_time()  # CPU time: less disturbed by other processes
            for i in range(n):
                s.dispatcher.post(Posted(cycle[i % len(cycle)], token=s.dispatcher.generation))
            await s.dispatcher.drain()
            dt = time.process_time() - t0
            assert s.status == "active", s.status
            return n / dt
    return float(anyio.run(main))


def prometheus_watch() -> Callable[[VoiceSession], object]:
    from fsm_voice.metrics import PrometheusSink
    hub = Hub()
    PrometheusSink(hub)
    return hub.track


def otel_watch() -> Callable[[VoiceSession], object]:
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.trace import TracerProvider

    from fsm_voice.otel import OtelSink
    hub = Hub()
    OtelSink(hub, tracer_provider=TracerProvider(), meter_provider=MeterProvider())
    return hub.track


def tap_watch() -> Callable[[VoiceSession], object]:
    """Tracked, no sink: what the dashboard costs per event (it polls the taps)."""
    return Hub().track


def bench_cost(n: int, rounds: int, cycle: list[str] = CYCLE) -> dict[str, float]:
    """Median of ``rounds`` for each variant, the variants interleaved (the machine is shared:
    interleaving spreads the noise evenly)."""
    variants: dict[str, Callable[[], Callable[[VoiceSession], object]] | None] = {
        "bare": None, "tracked": tap_watch, "prometheus": prometheus_watch,
        "otel": otel_watch}
    rates: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(rounds):
        for name, make in variants.items():
            rates[name].append(runtime_rate(make() if make else None, n, cycle))
    med = {name: statistics.median(r) for name, r in rates.items()}
    out = {"bare_events_per_s": med["bare"]}
    for name in ("tracked", "prometheus", "otel"):
        out[f"{name}_events_per_s"] = med[name]
        out[f"{name}_cost_percent"] = 100.0 * (1.0 - med[name] / med["bare"])
    return out


async def bench_dashboard(sessions: int, changes: int, interval: float) -> dict[str, float]:
    hub = Hub()
    rng = random.Random(7)
    pending: dict[int, list[tuple[int, float]]] = {}  # tap id -> [(version, t_change)]
    latencies: list[float] = []
    measuring = False
    measured: dict[int, list[tuple[int, float]]] = {}
    async with Dashboard(hub) as board, anyio.create_task_group() as tg:
        transports: list[ScriptedTransport] = []
        opened: list[VoiceSession] = []
        taps = []
        for _ in range(sessions):
            t = ScriptedTransport(default="ok")
            s = VoiceSession(t)
            tap = hub.track(s)

            def on_status(c: StatusChange, tap_id: int = tap.id, tap_ref: object = tap) -> None:
                if not measuring:
                    return
                pending.setdefault(tap_id, []).append(
                    (tap_ref.marker(), time.monotonic()))  # type: ignore[attr-defined]
            s.on_status(on_status)
            transports.append(t)
            opened.append(s)
            taps.append(tap)
        async with aiohttp.ClientSession() as http, contextlib.AsyncExitStack() as stack:
            for s in opened:
                await stack.enter_async_context(s)
                await s.start()
            ready = anyio.Event()

            async def reader() -> None:
                async with http.get(board.url + "events") as resp:
                    async for raw in resp.content:
                        line = raw.decode()
                        if not line.startswith("data: "):
                            continue
                        now = time.monotonic()
                        msg = json.loads(line[6:])
                        ready.set()
                        for view in msg["changed"]:
                            waiting = pending.get(view["id"], [])
                            while waiting and waiting[0][0] <= view["version"]:
                                latencies.append(now - waiting.pop(0)[1])
            tg.start_soon(reader)
            await ready.wait()
            pending.clear()
            measuring = True
            for _ in range(changes):
                i = rng.randrange(sessions)
                if transports[i].is_open:
                    transports[i].emit(TransportSignal.FAILED)
                await anyio.sleep(interval)
            # until every session is up again (a failure soon after a start waits out a
            # backoff), then 1 s: the budget for the last changes to be pushed
            with anyio.fail_after(60):
                for sess in opened:
                    await sess.wait_for("active")
            await anyio.sleep(1.0)
            measured = dict(pending)  # what the teardown (every session -> idle) adds is not
            measuring = False
            tg.cancel_scope.cancel()
    undelivered = sum(len(v) for v in measured.values())
    lat = sorted(latencies)
    return {"sessions": sessions, "status_changes_measured": len(lat),
            "undelivered": undelivered, "pushes": board.pushes,
            "latency_p50_s": statistics.median(lat),
            "latency_p99_s": lat[int(0.99 * (len(lat) - 1))], "latency_max_s": lat[-1]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer events and changes")
    a = ap.parse_args()
    n, rounds, changes = (50_000, 5, 100) if a.quick else (100_000, 7, 300)
    ok_cost = True
    for title, cycle in (("turns + ICE flaps (bench_dispatch's cycle)", CYCLE),
                         ("conversation turns only", TURNS)):
        cost = bench_cost(n, rounds, cycle)
        print(f"{title}: runtime events per CPU second (median of {rounds})")
        print(f"  {'bare':31s} {cost['bare_events_per_s']:>10,.0f}")
        for name in ("tracked", "prometheus", "otel"):
            label = "tracked by a hub" if name == "tracked" else f"with {name} sink"
            print(f"  {label:31s} {cost[f'{name}_events_per_s']:>10,.0f}  "
                  f"(cost {cost[f'{name}_cost_percent']:.1f} %)")
        ok_cost = ok_cost and cost["prometheus_cost_percent"] <= 10.0
    dash = anyio.run(bench_dashboard, 100, changes, 0.02)
    print(f"dashboard, {dash['sessions']} live sessions: {dash['status_changes_measured']} status "
          f"changes pushed in {dash['pushes']} pushes; latency p50 "
          f"{dash['latency_p50_s'] * 1000:.0f} ms, p99 {dash['latency_p99_s'] * 1000:.0f} ms, "
          f"max {dash['latency_max_s'] * 1000:.0f} ms; undelivered {dash['undelivered']}")
    ok_dash = dash["latency_max_s"] <= 1.0 and dash["undelivered"] == 0
    print(f"targets: prometheus cost <= 10 % {'met' if ok_cost else 'MISSED'}; "
          f"dashboard <= 1 s {'met' if ok_dash else 'MISSED'}")
    if not (ok_cost and ok_dash):
        raise SystemExit(1)


if __name__ == "__main__":
    main()
