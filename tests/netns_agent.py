"""Agent run inside a test network namespace (``ip netns exec NS python tests/netns_agent.py``).

Two roles, both speaking JSON lines: commands on stdin, reports on stdout (one object a line,
``"type"`` says what it is; ``"t"`` is ``time.monotonic()``, one clock for every process of the
machine, so the orchestrator can compare its own fault times with the agents' traces).

``peer --host A --port P [--relay]``
    A :class:`~fsm_voice.peer.server.RealtimePeer` bound to ``A:P`` (``allow_bind=[A]``) whose
    calls gather exactly ``A`` as their ICE host candidate. ``--relay RELAY_IP``: every host
    candidate of each answer is replaced by a :class:`tests.udp_relay.UdpRelay` listening on
    ``RELAY_IP`` and forwarding to the real candidate. Prints ``ready`` (with ``base_url``).
    Commands: ``{"cmd": "relay", "delay": s, "jitter": s, "loss": p}`` (applies to every relay,
    present and future), ``{"cmd": "stats"}``, ``{"cmd": "received"}`` (answers ``received``:
    per call id, the ``item_id`` of every ``conversation.item.delete`` the call got, in arrival
    order, duplicates kept - recorded by a wrapper of ``Call._on_message`` in this process),
    ``{"cmd": "stop"}`` (or EOF).

``client --base-url URL --host-address A|auto [--policy short|default] [overrides]``
    A :class:`~fsm_voice.session.VoiceSession` over :class:`AiortcTransport` +
    :class:`HttpSignaling`, host candidates forced to ``A`` (``auto``: the namespace's own
    addresses, as aioice discovers them at each gathering - used when the address changes).
    Streams ``status`` (each status change), ``trace`` (each trace entry, with its effects),
    ``alert``, ``metrics`` and ``error`` lines. ``{"cmd": "status"}`` answers ``state`` (status,
    machine state, attempts and the ICE pair in use, read from aioice internals).
    ``{"cmd": "send", "count": N, "interval": s}`` starts a background task sending N events
    ``{"type": "conversation.item.delete", "item_id": "ev-<i>"}`` through
    ``session.send_event``, one every ``interval`` s, whatever the status (while not active they
    are queued by the session); a :class:`QueueOverflowError` is reported as ``send_overflow``
    and the task goes on; at the end it reports ``sent`` (``count`` accepted, ``overflows``). On
    ``{"cmd": "stop"}`` or EOF it prints ``summary`` (final status, the whole trace, alerts,
    errors, metrics, the session's event counters), stops the session and exits.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import re
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import attrs

from fsm_voice.effects import ArmTimer, OpenTransport
from fsm_voice.errors import VoiceError
from fsm_voice.policy import (
    IcePolicy,
    MonitorPolicy,
    QualityAlert,
    RetryPolicy,
    SessionPolicy,
)
from fsm_voice.ports import ConnectionMetrics

_out_lock = threading.Lock()


def emit(kind: str, /, **fields: Any) -> None:
    line = json.dumps({"type": kind, "t": time.monotonic(), **fields}, default=str)
    with _out_lock:
        sys.stdout.write(line + "\n")
        sys.stdout.flush()


def _commands(loop: asyncio.AbstractEventLoop, queue: asyncio.Queue[dict[str, Any]]) -> None:
    """Thread: stdin JSON lines -> queue; EOF -> a stop command."""
    for line in sys.stdin:
        line = line.strip()
        if not line:
            continue
        try:
            cmd = json.loads(line)
        except ValueError:
            cmd = {"cmd": "invalid", "line": line}
        loop.call_soon_threadsafe(queue.put_nowait, cmd)
    loop.call_soon_threadsafe(queue.put_nowait, {"cmd": "stop", "eof": True})


def _start_commands() -> asyncio.Queue[dict[str, Any]]:
    queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    loop = asyncio.get_running_loop()
    threading.Thread(target=_commands, args=(loop, queue), daemon=True).start()
    return queue


# ------------------------------------------------------------------------------------------ peer

_CANDIDATE = re.compile(r"^(a=candidate:\S+ \d+ udp \d+ )(\S+) (\d+)( typ host.*)$", re.I)


async def run_peer(args: argparse.Namespace) -> None:
    from fsm_voice.peer.server import RealtimePeer

    host = args.host

    relays: list[Any] = []
    impairment = {"delay": 0.0, "jitter": 0.0, "loss": 0.0}
    if args.relay:
        from udp_relay import UdpRelay  # tests/ is sys.path[0] when run as a script

        from fsm_voice.peer import call as call_module

        original = call_module.Call.accept_offer

        async def accept_via_relay(self: Any, sdp: str) -> str:
            answer = await original(self, sdp)
            lines = []
            by_target: dict[int, Any] = {}  # one relay per candidate (BUNDLE repeats it)
            for line in answer.splitlines():
                m = _CANDIDATE.match(line)
                if m is not None and m.group(2) == host:
                    port = int(m.group(3))
                    relay = by_target.get(port)
                    if relay is None:
                        relay = await UdpRelay((args.relay, 0), (host, port), **impairment).start()
                        by_target[port] = relay
                        relays.append(relay)
                        emit("relay", listen=list(relay.address), target=[host, port])
                    line = f"{m.group(1)}{args.relay} {relay.address[1]}{m.group(4)}"
                lines.append(line)
            return "\r\n".join(lines) + "\r\n"

        call_module.Call.accept_offer = accept_via_relay  # type: ignore[method-assign]

    from fsm_voice.peer import call as calls

    received: dict[str, list[str]] = {}
    on_message = calls.Call._on_message

    def recording_on_message(self: Any, raw: str | bytes) -> None:
        if not self.closed:
            with contextlib.suppress(ValueError, TypeError, AttributeError):
                event = json.loads(raw)
                if event.get("type") == "conversation.item.delete":
                    received.setdefault(self.id, []).append(str(event.get("item_id")))
        on_message(self, raw)

    calls.Call._on_message = recording_on_message  # type: ignore[method-assign]

    peer = RealtimePeer(host, args.port, allow_bind=[host], reply=args.reply)
    queue = _start_commands()
    async with peer:
        emit("ready", base_url=peer.base_url)
        while True:
            cmd = await queue.get()
            name = cmd.get("cmd")
            if name == "stop":
                break
            if name == "relay":
                for key in impairment:
                    if cmd.get(key) is not None:
                        impairment[key] = float(cmd[key])
                for relay in relays:
                    relay.configure(**impairment)
                emit("relay_configured", relays=len(relays), **impairment)
            elif name == "stats":
                emit("stats", peer=peer.stats(), relays=[r.stats() for r in relays])
            elif name == "received":
                emit("received", calls={k: list(v) for k, v in received.items()})
            else:
                emit("bad_command", command=cmd)
        emit("summary", peer=peer.stats(), relays=[r.stats() for r in relays])
    for relay in relays:
        relay.close()


# ---------------------------------------------------------------------------------------- client


def make_policy(args: argparse.Namespace) -> SessionPolicy:
    if args.policy == "short":
        ice = IcePolicy(disconnected_grace=2.0, connect_timeout=3.0, restart_timeout=3.0)
    else:
        ice = IcePolicy()
    overrides = {
        k: v
        for k, v in (
            ("disconnected_grace", args.grace),
            ("connect_timeout", args.connect_timeout),
            ("restart_timeout", args.restart_timeout),
        )
        if v is not None
    }
    ice = attrs.evolve(ice, **overrides)
    retry = RetryPolicy()
    if args.max_attempts is not None:
        retry = attrs.evolve(retry, max_attempts=args.max_attempts)
    return SessionPolicy(
        retry=retry, ice=ice, monitor=MonitorPolicy(metrics_interval=args.metrics_interval)
    )


def _effect(effect: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"kind": type(effect).__name__}
    if isinstance(effect, ArmTimer):
        out.update(timer=str(effect.timer), delay=effect.delay)
    elif isinstance(effect, OpenTransport):
        out.update(reason=str(effect.reason), attempt=effect.attempt)
    else:
        out.update(
            {k: str(v) for k, v in attrs.asdict(effect, recurse=False).items() if k != "error"}
        )
    return out


def _entry(e: Any) -> dict[str, Any]:
    return {
        "time": e.time,
        "event": e.event,
        "from": e.source,
        "to": e.target,
        "outcome": e.outcome,
        "detail": e.detail,
        "effects": [_effect(x) for x in e.effects],
    }


def _metrics(m: ConnectionMetrics) -> dict[str, Any]:
    return attrs.asdict(m)


def selected_path(transport: Any) -> dict[str, str] | None:
    """The ICE pair the current connection uses, ``{"local": "ip:port", "remote": ...}``
    (reads aiortc/aioice internals: diagnostic only, None when unavailable)."""
    try:
        from fsm_voice.transport import _private

        pair = _private.selected_pair(transport._conn.pc)
        local, remote = pair.local_candidate, pair.remote_candidate
        return {"local": f"{local.host}:{local.port}", "remote": f"{remote.host}:{remote.port}"}
    except Exception:
        return None


async def run_client(args: argparse.Namespace) -> None:
    from fsm_voice.session import QueueOverflowError, StatusChange, VoiceSession
    from fsm_voice.signaling import HttpSignaling
    from fsm_voice.transport import AiortcTransport, NullSink, SilenceSource, UtteranceSource

    policy = make_policy(args)
    source: Callable[[], Any] = (
        (lambda: UtteranceSource(repeat=True)) if args.audio == "utterance" else SilenceSource
    )
    host_addresses = None if args.host_address == "auto" else [args.host_address]
    signaling = HttpSignaling(
        args.base_url, token="ek_netns_test", timeout=args.signaling_timeout
    )
    transport = AiortcTransport(
        signaling,
        audio_source=source,
        audio_sink=NullSink,
        host_addresses=host_addresses,
        liveness_interval=policy.ice.liveness_interval,
        liveness_stall=policy.ice.liveness_stall,
    )
    queue = _start_commands()
    async with signaling, VoiceSession(transport, policy=policy) as session:

        def on_status(c: StatusChange) -> None:
            emit(
                "status",
                time=c.time,
                previous=c.previous,
                status=c.status,
                state=c.state,
                event=c.event,
            )

        def on_alert(a: QualityAlert) -> None:
            emit("alert", kind=a.kind, value=a.value, threshold=a.threshold)

        def on_metrics(m: ConnectionMetrics) -> None:
            emit("metrics", **_metrics(m))

        def on_error(err: VoiceError) -> None:
            emit("error", code=err.code, severity=str(err.severity), message=str(err))

        session.on_status(on_status)
        session.on_alert(on_alert)
        session.on_metrics(on_metrics)
        session.on_error(on_error)
        emitted = 0

        def flush_trace() -> None:
            nonlocal emitted
            entries = list(session.trace)
            for e in entries[emitted:]:
                emit("trace", **_entry(e))
            emitted = len(entries)

        async def send_events(count: int, interval: float) -> None:
            accepted = overflows = 0
            for i in range(count):
                event = {"type": "conversation.item.delete", "item_id": f"ev-{i}"}
                try:
                    session.send_event(event)
                    accepted += 1
                except QueueOverflowError as exc:
                    overflows += 1
                    emit("send_overflow", index=i, status=session.status, message=str(exc))
                except Exception as exc:  # idle/error: report it, go on
                    emit("send_error", index=i, status=session.status, message=repr(exc))
                if interval > 0 and i + 1 < count:
                    await asyncio.sleep(interval)
            emit("sent", count=accepted, overflows=overflows, status=session.status)

        senders: list[asyncio.Task[None]] = []
        await session.start()
        emit("started", policy=str(policy))
        get = asyncio.ensure_future(queue.get())
        try:
            while True:
                done, _ = await asyncio.wait({get}, timeout=0.05)
                flush_trace()
                if not done:
                    continue
                cmd = get.result()
                get = asyncio.ensure_future(queue.get())
                if cmd.get("cmd") == "stop":
                    break
                if cmd.get("cmd") == "status":
                    emit(
                        "state",
                        status=session.status,
                        state=session.state,
                        attempts=session.attempts,
                        path=selected_path(transport),
                        liveness=(
                            attrs.asdict(transport.liveness)
                            if transport.liveness is not None
                            else None
                        ),
                    )
                elif cmd.get("cmd") == "send":
                    senders.append(
                        asyncio.ensure_future(
                            send_events(int(cmd["count"]), float(cmd.get("interval", 0.0)))
                        )
                    )
                else:
                    emit("bad_command", command=cmd)
        finally:
            get.cancel()
            for task in senders:
                task.cancel()
        flush_trace()
        history = list(session.metrics_history)
        emit(
            "summary",
            status=session.status,
            state=session.state,
            attempts=session.attempts,
            trace=[_entry(e) for e in session.trace],
            alerts=[
                {"kind": a.kind, "value": a.value, "threshold": a.threshold} for a in session.alerts
            ],
            errors=[{"code": e.code, "severity": str(e.severity)} for e in session.errors],
            metrics=[_metrics(m) for m in history],
            max_packets_lost=max((m.packets_lost for m in history), default=0),
            sent_events=session.sent_events,
            delivered_events=session.delivered_events,
            resent_events=session.resent_events,
            dropped_events=session.dropped_events,
        )
        await session.stop()
    await signaling.aclose()
    emit("stopped")


def main() -> None:
    parser = argparse.ArgumentParser(description="fsm_voice namespace test agent")
    sub = parser.add_subparsers(dest="role", required=True)
    p = sub.add_parser("peer")
    p.add_argument("--host", required=True)
    p.add_argument("--port", type=int, default=8800)
    p.add_argument("--reply", choices=("echo", "tone"), default="tone")
    p.add_argument("--relay", default=None, help="relay address (enables the UDP relay)")
    c = sub.add_parser("client")
    c.add_argument("--base-url", required=True)
    c.add_argument("--host-address", required=True, help="IP, or 'auto'")
    c.add_argument("--policy", choices=("short", "default"), default="short")
    c.add_argument("--grace", type=float, default=None)
    c.add_argument("--connect-timeout", type=float, default=None)
    c.add_argument("--restart-timeout", type=float, default=None)
    c.add_argument("--max-attempts", type=int, default=None)
    c.add_argument("--metrics-interval", type=float, default=1.0)
    c.add_argument("--signaling-timeout", type=float, default=10.0)
    c.add_argument("--audio", choices=("silence", "utterance"), default="silence")
    parser.add_argument("--verbose", action="store_true")
    args = parser.parse_args()
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        stream=sys.stderr,
        format="%(asctime)s %(name)s %(message)s",
    )
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(run_peer(args) if args.role == "peer" else run_client(args))


if __name__ == "__main__":
    main()
