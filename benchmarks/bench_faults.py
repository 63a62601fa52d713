"""Detection and recovery times under real network faults (root; network namespaces).

One client session (``tests/netns_agent.py client``, short policy: ICE grace 2 s, connect and
restart timeouts 3 s, backoff 2/4/8 s) talks to the local peer across a veth pair between two
namespaces (``tests/netns.py``). A series of blackouts (ingress DROP both ways) or link down/up
faults of the given durations is injected, one after the other, each once the session has been
``active`` for a while. For every fault, from the client's own trace:

* detection: fault start -> ``ice_disconnected``;
* recovery: link back -> the session back in ``active`` (by ``ice_recovered`` when the outage was
  shorter than the grace period, else by a transport restart or a backoff reconnect);
* survived: back to ``active`` without reaching ``error``.

Run: ``sudo .venv/bin/python benchmarks/bench_faults.py [--durations 1,3,6] [--repeat 2]
[--kind drop|link] [--json]``. Not a test; nothing leaves the two namespaces.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.netns import Agent, NetnsPair, unavailable_reason


def _trace(client: Agent) -> list[dict[str, Any]]:
    return client.select(lambda m: m["type"] == "trace" and m["outcome"] == "taken")


def one_fault(pair: NetnsPair, client: Agent, kind: str, duration: float) -> dict[str, Any]:
    t0 = pair.drop_start() if kind == "drop" else pair.link_down()
    time.sleep(duration)
    t1 = pair.drop_stop() if kind == "drop" else pair.link_up()
    result: dict[str, Any] = {"kind": kind, "duration": duration}
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
    trace = [e for e in _trace(client) if e["time"] >= t0]
    lost = next((e for e in trace if e["event"] == "ice_disconnected"), None)
    result["detection"] = lost["time"] - t0 if lost else None
    result["survived"] = back is not None and back["to"] == "active"
    if back is not None and back["to"] == "active":
        result["recovery"] = max(0.0, back["time"] - t1)
        result["path"] = {
            "ice_grace": "ridden out",
            "restarting": "restart",
            "reconnecting": "reconnect",
        }.get(back["from"], back["from"])
    else:
        result["recovery"] = None
        result["path"] = "error" if back is not None else "timeout"
    return result


def _stats(values: list[float]) -> str:
    if not values:
        return "-"
    return f"median {statistics.median(values):.2f} s, max {max(values):.2f} s (n={len(values)})"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--durations", default="1,3,6", help="comma-separated outage durations, seconds"
    )
    parser.add_argument("--repeat", type=int, default=2, help="series repetitions")
    parser.add_argument("--kind", choices=("drop", "link"), default="drop")
    parser.add_argument(
        "--settle", type=float, default=2.0, help="seconds of normal flow before each fault"
    )
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    args = parser.parse_args()
    reason = unavailable_reason()
    if reason is not None:
        print(f"skipped: {reason}", file=sys.stderr)
        return 2
    durations = [float(d) for d in args.durations.split(",") if d]
    results: list[dict[str, Any]] = []
    started = time.monotonic()
    with NetnsPair() as pair:
        peer = pair.start_peer()
        client = pair.start_client(peer)
        client.wait_for(lambda m: m["type"] == "status" and m["status"] == "active", timeout=20)
        for _ in range(args.repeat):
            for duration in durations:
                time.sleep(args.settle)
                r = one_fault(pair, client, args.kind, duration)
                results.append(r)
                if not args.json:
                    det = f"{r['detection']:.2f}" if r["detection"] is not None else "-"
                    rec = f"{r['recovery']:.2f}" if r["recovery"] is not None else "-"
                    print(
                        f"{args.kind} {duration:5.1f} s: detected after {det} s, "
                        f"recovered {rec} s after the link returned ({r['path']})",
                        flush=True,
                    )
                if not r["survived"]:
                    break
            else:
                continue
            break
        client.stop()
        peer.stop()
    detections = [r["detection"] for r in results if r["detection"] is not None]
    summary = {
        "faults_injected": len(results),
        "faults_survived": sum(r["survived"] for r in results),
        "detection_median": statistics.median(detections) if detections else None,
        "detection_max": max(detections) if detections else None,
        "recovery_by_path": {
            p: [r["recovery"] for r in results if r["path"] == p]
            for p in sorted({r["path"] for r in results})
        },
        "wall_time": time.monotonic() - started,
        "results": results,
    }
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        print(
            f"\nfaults injected {summary['faults_injected']}, survived "
            f"{summary['faults_survived']}; wall time {summary['wall_time']:.0f} s"
        )
        print(f"detection (fault -> ice_disconnected): {_stats(detections)}")
        recoveries = [r["recovery"] for r in results if r["recovery"] is not None]
        print(f"recovery (link back -> active):        {_stats(recoveries)}")
        for p, values in summary["recovery_by_path"].items():
            print(f"  {p:12} {_stats([v for v in values if v is not None])}")
    return 0 if summary["faults_survived"] == summary["faults_injected"] else 1


if __name__ == "__main__":
    sys.exit(main())
