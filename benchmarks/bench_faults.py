"""Dead-path detection and user-visible outage, over network namespaces and against the local peer.

Two harnesses, same measurements per fault (from the client session's own trace, all times
``time.monotonic()``):

* **detection**: fault start -> ``ice_disconnected`` (the path declared dead by unanswered STUN
  probes) and -> ``transport_failed`` (restart asked for);
* **outage**: fault start -> the session ``active`` again (on a fresh path when one exists);
* **recovery**: fault end (link back) -> ``active``, for faults that end;
* the path taken back to ``active`` (ridden out by ``ice_recovered``, a restart, a reconnect).

``--mode netns`` (root): the client and the local peer in two namespaces (``tests/netns.py``;
short policy: ICE grace 2 s, connect/restart timeouts 3 s, backoff 2/4/8 s). Fault kinds:
``path`` - ingress DROP of the selected ICE pair's datagrams only (that path is dead, the peer's
HTTP endpoint and new sockets work: the outage case of issue 10); ``drop`` - a blackout of the
whole link for ``--durations`` s; ``link`` - ``ip link`` down/up.

``--mode local`` (no root): an in-process session against the local peer over loopback with the
production policy (5 s ICE grace); fault ``silent`` - the peer's ``go_silent`` on the call
(everything it sends is dropped, consent answers included; its HTTP endpoint still answers);
``mute`` - the peer's ``mute_media`` (RTP stops like a browser's ``replaceTrack(null)``) for
``--mute-seconds``: counts sessions kept without any liveness signal.

Run: ``sudo .venv/bin/python benchmarks/bench_faults.py --mode netns --kind path --repeat 10``,
``.venv/bin/python benchmarks/bench_faults.py --mode local --kind silent --repeat 10``
[``--json``]. Not a test; nothing leaves the namespaces / 127.0.0.1.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.netns import Agent, NetnsPair, unavailable_reason


def _after(trace: list[dict[str, Any]], t0: float, event: str) -> float | None:
    hit = next((e for e in trace if e["time"] >= t0 and e["event"] == event), None)
    return hit["time"] - t0 if hit is not None else None


# ------------------------------------------------------------------------------------ netns


def _trace(client: Agent) -> list[dict[str, Any]]:
    return client.select(lambda m: m["type"] == "trace" and m["outcome"] == "taken")


def _path(client: Agent) -> dict[str, str]:
    mark = client.mark()
    client.send(cmd="status")
    state = client.wait_for(lambda m: m["type"] == "state", timeout=5, after=mark)
    if state["path"] is None:
        raise RuntimeError("the client reports no selected ICE pair")
    return dict(state["path"])


def netns_fault(pair: NetnsPair, client: Agent, kind: str, duration: float) -> dict[str, Any]:
    if kind == "path":
        via = _path(client)
        t0 = pair.drop_path(via["local"], via["remote"])
        t1 = None
    else:
        t0 = pair.drop_start() if kind == "drop" else pair.link_down()
        time.sleep(duration)
        t1 = pair.drop_stop() if kind == "drop" else pair.link_up()
    result: dict[str, Any] = {"kind": kind, "duration": duration if t1 else None}
    try:  # a blip shorter than the dead threshold raises nothing at all
        client.wait_for(
            lambda m: m["type"] == "trace" and m["time"] > t0 and m["event"] == "ice_disconnected",
            timeout=max(0.0, t0 + 3.0 - time.monotonic()),
        )
    except TimeoutError:
        result.update(detection=None, failed=None, survived=True, outage=0.0, recovery=0.0,
                      path="unnoticed")
        return result
    try:
        back = client.wait_for(
            lambda m: (
                m["type"] == "trace"
                and m["outcome"] == "taken"
                and m["time"] > t0
                and m["to"] in ("active", "error")
            ),
            timeout=45,
        )
    except TimeoutError:
        back = None
    if kind == "path":
        pair.drop_stop()  # the old path's rules: nothing uses that 5-tuple any more
    trace = [e for e in _trace(client) if e["time"] >= t0]
    result["detection"] = _after(trace, t0, "ice_disconnected")
    result["failed"] = _after(trace, t0, "transport_failed")
    result["survived"] = back is not None and back["to"] == "active"
    if back is not None and back["to"] == "active":
        result["outage"] = back["time"] - t0
        result["recovery"] = max(0.0, back["time"] - t1) if t1 is not None else None
        result["path"] = {
            "ice_grace": "ridden out",
            "restarting": "restart",
            "reconnecting": "reconnect",
        }.get(back["from"], back["from"])
    else:
        result["outage"] = result["recovery"] = None
        result["path"] = "error" if back is not None else "timeout"
    return result


def run_netns(args: argparse.Namespace) -> list[dict[str, Any]]:
    reason = unavailable_reason()
    if reason is not None:
        raise SystemExit(f"skipped: {reason}")
    durations = [float(d) for d in args.durations.split(",") if d] if args.kind != "path" else [0]
    results: list[dict[str, Any]] = []
    with NetnsPair() as pair:
        peer = pair.start_peer()
        client = pair.start_client(peer)
        client.wait_for(lambda m: m["type"] == "status" and m["status"] == "active", timeout=20)
        for _ in range(args.repeat):
            for duration in durations:
                time.sleep(args.settle)
                r = netns_fault(pair, client, args.kind, duration)
                results.append(r)
                _print(r, args)
                if not r["survived"]:
                    break
            else:
                continue
            break
        client.stop()
        peer.stop()
    return results


# ------------------------------------------------------------------------------------ local


async def local_fault(kind: str, mute_seconds: float) -> dict[str, Any]:
    from fsm_voice.client import realtime_session
    from fsm_voice.peer.server import RealtimePeer
    from fsm_voice.transport import AiortcTransport, NullSink, SilenceSource

    async with RealtimePeer() as peer:
        s = realtime_session(peer.base_url, "ek_bench", host_addresses=["127.0.0.1"],
                             audio_source=SilenceSource, audio_sink=NullSink)
        async with s:
            await s.start()
            await s.wait_for("active", timeout=10)
            transport = s.transport
            assert isinstance(transport, AiortcTransport)
            while transport.liveness is None or transport.liveness.rtt is None:
                await asyncio.sleep(0.01)
            await asyncio.sleep(0.5)  # settle: media flowing
            t0 = time.monotonic()
            result: dict[str, Any] = {"kind": kind}
            if kind == "mute":
                peer.mute_media()
                await asyncio.sleep(mute_seconds)
                stats = transport.liveness
                trace = [_entry(e) for e in s.trace]
                events = [e["event"] for e in trace if e["time"] >= t0 and e["outcome"] == "taken"]
                result.update(
                    kept=s.status == "active" and not stats.signals
                    and peer.stats()["offers_received"] == 1,
                    events=events,
                    probes_sent=stats.probes_sent,
                    probes_answered=stats.probes_answered,
                    silent_alive=stats.silent_alive,
                )
                return result
            peer.go_silent()
            failed_wait = asyncio.get_running_loop().time()
            while not any(e.event == "transport_failed" and e.time >= t0 for e in s.trace):
                await asyncio.sleep(0.005)
                if asyncio.get_running_loop().time() - failed_wait > 40:
                    break
            try:
                await s.wait_for("active", timeout=20)
                back = time.monotonic()
            except Exception:
                back = None
            trace = [_entry(e) for e in s.trace]
            result.update(
                detection=_after(trace, t0, "ice_disconnected"),
                failed=_after(trace, t0, "transport_failed"),
                outage=back - t0 if back is not None else None,
                survived=back is not None,
                path="restart" if _after(trace, t0, "transport_failed") is not None else "?",
                recovery=None,
            )
            return result


def _entry(e: Any) -> dict[str, Any]:
    return {"time": e.time, "event": e.event, "outcome": e.outcome, "to": e.target}


def run_local(args: argparse.Namespace) -> list[dict[str, Any]]:
    results = []
    for _ in range(args.repeat):
        r = asyncio.run(local_fault(args.kind, args.mute_seconds))
        results.append(r)
        _print(r, args)
    return results


# ------------------------------------------------------------------------------------ report


def _fmt(v: float | None) -> str:
    return f"{v:.2f}" if v is not None else "-"


def _print(r: dict[str, Any], args: argparse.Namespace) -> None:
    if args.json:
        return
    if r["kind"] == "mute":
        print(f"mute: kept={r['kept']} probes {r['probes_answered']}/{r['probes_sent']} answered,"
              f" silent-alive verdicts {r['silent_alive']}, events {r['events']}", flush=True)
        return
    print(
        f"{r['kind']}: ice_disconnected +{_fmt(r['detection'])} s, transport_failed "
        f"+{_fmt(r['failed'])} s, active again +{_fmt(r['outage'])} s ({r['path']})"
        + (f", {_fmt(r['recovery'])} s after the fault ended" if r.get("recovery") else ""),
        flush=True,
    )


def _stats(values: list[float]) -> dict[str, float] | None:
    if not values:
        return None
    return {"median": statistics.median(values), "max": max(values), "n": len(values)}


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--mode", choices=("netns", "local"), default="netns")
    parser.add_argument("--kind", choices=("path", "drop", "link", "silent", "mute"),
                        default=None, help="netns: path|drop|link; local: silent|mute")
    parser.add_argument("--durations", default="1,3", help="drop/link outage durations, s")
    parser.add_argument("--repeat", type=int, default=10)
    parser.add_argument("--settle", type=float, default=2.0, help="s of normal flow per fault")
    parser.add_argument("--mute-seconds", type=float, default=3.0)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if args.kind is None:
        args.kind = "path" if args.mode == "netns" else "silent"
    valid = ("path", "drop", "link") if args.mode == "netns" else ("silent", "mute")
    if args.kind not in valid:
        other = "local" if args.mode == "netns" else "netns"
        parser.error(f"--kind {args.kind} needs --mode {other}")
    started = time.monotonic()
    results = run_netns(args) if args.mode == "netns" else run_local(args)
    if args.kind == "mute":
        summary: dict[str, Any] = {
            "runs": len(results), "kept": sum(r["kept"] for r in results), "results": results
        }
    else:
        summary = {
            "faults": len(results),
            "survived": sum(bool(r["survived"]) for r in results),
            "detection": _stats([r["detection"] for r in results if r["detection"] is not None]),
            "failed": _stats([r["failed"] for r in results if r["failed"] is not None]),
            "outage": _stats([r["outage"] for r in results if r["outage"] is not None]),
            "recovery": _stats([r["recovery"] for r in results if r.get("recovery") is not None]),
            "results": results,
        }
    summary["wall_time"] = time.monotonic() - started
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        print(json.dumps({k: v for k, v in summary.items() if k != "results"}, indent=2))
    if args.kind == "mute":
        return 0 if summary["kept"] == summary["runs"] else 1
    return 0 if summary["survived"] == summary["faults"] else 1


if __name__ == "__main__":
    sys.exit(main())
