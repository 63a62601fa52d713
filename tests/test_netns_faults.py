"""Real network faults between a client session and the local peer in two network namespaces.

Harness: ``tests/netns.py`` (namespaces, veth, iptables faults; topology in its docstring) and
``tests/netns_agent.py`` (the peer and the client, each a process inside its namespace, JSON lines
on stdout). Every time compared here is ``time.monotonic()``, shared by all processes.

Policy ("short", see ``make_policy`` in the agent): ICE grace 2 s, connect and restart timeouts
3 s, the production backoff (2, 4, 8 s; 3 attempts), metrics every 1 s; liveness as in production
(STUN probes of the selected pair once inbound packets stall for 0.2 s; no evidence for 0.5 s ->
``ice_disconnected``, for ~0.85 s -> ``transport_failed``: restart at once, before the grace).

SPEC-ICE-1, SPEC-ICE-3, SPEC-RETRY-1/2/4, SPEC-CONNECT-1 over a real network path. The tests
marked ``netns`` need root (skipped with the reason otherwise); the last few check the UDP relay
and the peer's bind opt-in on loopback and run anywhere.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import pytest

from fsm_voice.peer.server import RealtimePeer
from tests.netns import Agent, Message, NetnsPair, unavailable_reason
from tests.udp_relay import UdpRelay

F = TypeVar("F", bound=Callable[..., Any])

_REASON = unavailable_reason()
_NETNS_MARKS = (pytest.mark.netns, pytest.mark.skipif(_REASON is not None, reason=_REASON or ""))


def netns(test: F) -> F:
    """Mark a test as needing root and network namespaces (skipped with the reason otherwise)."""
    for mark in _NETNS_MARKS:
        test = mark(test)
    return test


UP = ("active", "listening", "speaking")
"""Machine states with a working session (``ice_grace`` also shows ``active``)."""
DETECT_LIMIT = 1.5
"""Fault start -> ``ice_disconnected``: 0.5 s without evidence + sampling (0.1 s) + slack for a
loaded machine (measured: ~0.55 s, see benchmarks/bench_faults.py)."""


@pytest.fixture
def pair() -> Iterator[NetnsPair]:
    with NetnsPair() as p:
        yield p


def connect(
    pair: NetnsPair, *client_args: str, relay: bool = False, host_address: str | None = None
) -> tuple[Agent, Agent]:
    """Start the peer and a client; return both once the client is ``active``."""
    if relay:
        pair.add_relay_address()
        peer = pair.start_peer("--relay", pair.relay_ip)
        pair.block_direct_udp()
    else:
        peer = pair.start_peer()
    client = pair.start_client(peer, *client_args, host_address=host_address)
    client.wait_for(lambda m: m["type"] == "status" and m["status"] == "active", timeout=20)
    wait_calibrated(client)
    return peer, client


def wait_calibrated(client: Agent, timeout: float = 5.0) -> None:
    """Until the client's liveness has had a probe answered (probes are then trusted)."""
    deadline = time.monotonic() + timeout
    while True:
        mark = client.mark()
        client.send(cmd="status")
        state = client.wait_for(lambda m: m["type"] == "state", timeout=5, after=mark)
        if (state.get("liveness") or {}).get("rtt") is not None:
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"liveness not calibrated: {state}")
        time.sleep(0.05)  # poll interval


def taken(messages: list[Message]) -> list[Message]:
    """Transitions actually taken (no refused/stale events, no observations)."""
    return [m for m in messages if m.get("outcome") == "taken"]


def trace_of(client: Agent) -> list[Message]:
    return taken(client.select(lambda m: m["type"] == "trace"))


def wait_entry(client: Agent, pred: Any, timeout: float) -> Message:
    return client.wait_for(
        lambda m: m["type"] == "trace" and m["outcome"] == "taken" and pred(m), timeout=timeout
    )


def first_after(trace: list[Message], t: float, event: str) -> Message | None:
    return next((e for e in trace if e["time"] >= t and e["event"] == event), None)


def path(client: Agent) -> dict[str, str] | None:
    mark = client.mark()
    client.send(cmd="status")
    state = client.wait_for(lambda m: m["type"] == "state", timeout=5, after=mark)
    return state["path"]


def describe(trace: list[Message], t0: float) -> str:
    return "\n".join(
        f"{e['time'] - t0:8.2f} {e['event']:20} {e['from']} -> {e['to']}" for e in trace
    )


@netns
def test_baseline_no_false_alarm(pair: NetnsPair) -> None:
    """Connected across the veth; 5 s of normal flow raise no ICE_DISCONNECTED."""
    _, client = connect(pair)
    assert path(client)["local"].startswith(pair.client_ip + ":")  # type: ignore[index]
    t0 = time.monotonic()
    time.sleep(5)
    summary = client.stop()
    trace = taken(summary["trace"])
    assert summary["status"] == "active"
    assert not [e for e in trace if e["event"] == "ice_disconnected"], describe(trace, t0)
    received = [m["packets_received"] for m in summary["metrics"]]
    assert len(received) >= 4 and received[-1] > received[0] > 0
    assert summary["errors"] == []


@netns
def test_dead_path_restarts_at_once_on_a_fresh_path(pair: NetnsPair) -> None:
    """Only the selected ICE path dies (its datagrams dropped both ways; the peer's HTTP
    endpoint and new sockets work): declared dead by unanswered probes, the transport restarts
    at once (``transport_failed``, not the grace timer) and the session is active again on a
    new path."""
    _, client = connect(pair, "--grace", "5")
    old = path(client)
    assert old is not None
    t0 = pair.drop_path(old["local"], old["remote"])
    back = wait_entry(client, lambda m: m["to"] == "active" and m["time"] > t0, timeout=15)
    new = path(client)
    summary = client.stop()
    trace = taken(summary["trace"])
    events = [e["event"] for e in trace if e["time"] >= t0]
    lost = first_after(trace, t0, "ice_disconnected")
    assert lost is not None and lost["time"] - t0 < DETECT_LIMIT, describe(trace, t0)
    assert events[:2] == ["ice_disconnected", "transport_failed"], describe(trace, t0)
    assert "ice_grace_expired" not in events
    assert back["from"] == "restarting" and back["time"] - t0 < 5.0, describe(trace, t0)
    assert new is not None and new != old
    assert summary["status"] == "active"


@netns
def test_three_second_blackout_restarts_early_and_recovers(pair: NetnsPair) -> None:
    """3 s blackout of the whole link (both ways): detected within ~0.5 s, the restart is asked
    for at once (no 5 s grace); attempts inside the blackout fail and the session is active again
    after the link returns, without reaching ``error``."""
    _, client = connect(pair, "--grace", "5")
    t0 = pair.drop_start()
    time.sleep(3)
    t1 = pair.drop_stop()
    back = wait_entry(client, lambda m: m["to"] == "active" and m["time"] > t1 - 0.5, timeout=20)
    summary = client.stop()
    trace = taken(summary["trace"])
    lost = first_after(trace, t0, "ice_disconnected")
    assert lost is not None and lost["time"] - t0 < DETECT_LIMIT, describe(trace, t0)
    failed = first_after(trace, t0, "transport_failed")
    assert failed is not None and failed["time"] < t1, describe(trace, t0)
    assert back["from"] in ("restarting", "reconnecting"), describe(trace, t0)
    assert summary["status"] == "active" and summary["state"] in UP
    assert not [e for e in trace if e["to"] == "error"]


@netns
def test_short_blip_is_ridden_out_without_restart(pair: NetnsPair) -> None:
    """A 0.3 s blackout: shorter than the dead threshold; at most probing, no restart."""
    _, client = connect(pair)
    t0 = pair.drop_start()
    time.sleep(0.3)
    pair.drop_stop()
    time.sleep(2.0)  # observation window
    summary = client.stop()
    trace = taken(summary["trace"])
    assert not [e for e in trace if e["time"] >= t0 and e["event"] == "transport_failed"], (
        describe(trace, t0)
    )
    assert summary["status"] == "active"


@netns
def test_twenty_second_blackout_recovers_by_backoff(pair: NetnsPair) -> None:
    """20 s blackout: path declared dead (~0.9 s) -> restart (times out at 3 s) -> backoff 2 s,
    4 s, 8 s with 3 s attempts: attempts 1 and 2 fall inside the blackout, attempt 3 starts
    ~24 s after the fault, after the link is back, and succeeds."""
    _, client = connect(pair)
    t0 = pair.drop_start()
    time.sleep(20)
    t1 = pair.drop_stop()
    back = wait_entry(client, lambda m: m["to"] == "active" and m["time"] > t1, timeout=20)
    summary = client.stop()
    trace = taken(summary["trace"])
    assert summary["status"] == "active", describe(trace, t0)
    assert back["from"] == "reconnecting"
    assert first_after(trace, t0, "transport_failed") is not None
    opens = [
        x
        for e in trace
        if e["time"] >= t0
        for x in e["effects"]
        if x["kind"] == "OpenTransport" and x["reason"] == "reconnect"
    ]
    assert [x["attempt"] for x in opens] == [1, 2, 3]
    assert not [e for e in trace if e["to"] == "error"]


@netns
def test_permanent_blackout_gives_up_after_three_attempts(pair: NetnsPair) -> None:
    """The link never returns: exactly 3 reconnect attempts, after backoff delays of 2, 4 and 8 s
    (measured between arming the timer and ``backoff_expired``), then ``error``."""
    _, client = connect(pair)
    t0 = pair.drop_start()
    wait_entry(client, lambda m: m["to"] == "error", timeout=45)
    summary = client.stop()
    trace = taken(summary["trace"])
    armed = [
        (e["time"], x["delay"])
        for e in trace
        if e["time"] >= t0
        for x in e["effects"]
        if x["kind"] == "ArmTimer" and x["timer"] == "backoff_expired"
    ]
    expired = [e["time"] for e in trace if e["event"] == "backoff_expired"]
    assert [d for _, d in armed] == [2.0, 4.0, 8.0], describe(trace, t0)
    assert len(expired) == 3
    for (armed_at, delay), fired_at in zip(armed, expired, strict=True):
        assert fired_at - armed_at == pytest.approx(delay, abs=0.3)
    opens = [
        x
        for e in trace
        for x in e["effects"]
        if x["kind"] == "OpenTransport" and x["reason"] == "reconnect"
    ]
    assert [x["attempt"] for x in opens] == [1, 2, 3]
    assert summary["status"] == "error"
    assert [e["code"] for e in summary["errors"]] == ["retries_exhausted"]


@netns
def test_link_down_up_recovers(pair: NetnsPair) -> None:
    """``ip link set down`` for ~2 s, then up: detected, and the session is active again."""
    _, client = connect(pair)
    t0 = pair.link_down()
    time.sleep(2)
    pair.link_up()
    wait_entry(client, lambda m: m["to"] == "active" and m["time"] > t0, timeout=15)
    time.sleep(1)
    summary = client.stop()
    trace = taken(summary["trace"])
    lost = first_after(trace, t0, "ice_disconnected")
    assert lost is not None and lost["time"] - t0 < DETECT_LIMIT, describe(trace, t0)
    assert summary["status"] == "active"
    assert not [e for e in trace if e["to"] == "error"]


@netns
def test_random_loss_keeps_the_session_up(pair: NetnsPair) -> None:
    """10 % random loss both ways for 8 s: no reconnect, no error, losses reported."""
    _, client = connect(pair)
    t0 = pair.random_loss(0.10)
    time.sleep(8)
    pair.random_loss(0)
    time.sleep(1.5)
    summary = client.stop()
    trace = taken(summary["trace"])
    assert summary["status"] == "active"
    assert all(e["to"] in (*UP, "ice_grace") for e in trace if e["time"] >= t0), describe(trace, t0)
    assert summary["max_packets_lost"] > 0
    assert summary["errors"] == []


@netns
def test_address_change_recovers_on_the_new_address(pair: NetnsPair) -> None:
    """The client's address is replaced mid-session (candidates: whatever the namespace has).

    The transport restart succeeds at once on the new address: HttpSignaling opens a fresh TCP
    connection per exchange, so no pooled connection of the old address can stall it.
    """
    _, client = connect(pair, host_address="auto")
    old = pair.client_ip
    t0 = time.monotonic()
    new = pair.change_address()
    back = wait_entry(client, lambda m: m["to"] == "active" and m["time"] > t0, timeout=20)
    now_path = path(client)
    summary = client.stop()
    trace = taken(summary["trace"])
    assert summary["status"] == "active", describe(trace, t0)
    assert now_path is not None and now_path["local"].startswith(new + ":"), (old, now_path)
    assert first_after(trace, t0, "ice_disconnected") is not None
    assert back["from"] == "restarting", describe(trace, t0)
    assert first_after(trace, t0, "backoff_expired") is None


@netns
def test_delay_and_jitter_raise_alerts_without_ending_the_session(pair: NetnsPair) -> None:
    """A relay in front of the peer adds 200 ms + U(0, 300 ms) each way: RTT / jitter alerts,
    the session stays up."""
    peer, client = connect(pair, relay=True)
    via = path(client)
    assert via is not None and via["remote"].startswith(pair.relay_ip + ":")
    t0 = time.monotonic()
    peer.send(cmd="relay", delay=0.2, jitter=0.3)
    # (reordering by the jitter also shows as loss: loss_fraction alerts may come first)
    client.wait_for(
        lambda m: m["type"] == "alert" and m["t"] > t0 and m["kind"] in ("rtt", "jitter"),
        timeout=12,
    )
    time.sleep(2)
    peer.send(cmd="relay", delay=0, jitter=0)
    summary = client.stop()
    trace = taken(summary["trace"])
    assert summary["status"] == "active"
    assert all(e["to"] in (*UP, "ice_grace") for e in trace if e["time"] >= t0), describe(trace, t0)
    assert {a["kind"] for a in summary["alerts"]} & {"rtt", "jitter"}


@netns
def test_no_client_event_lost_across_a_real_blackout(pair: NetnsPair) -> None:
    """100 client events, one every 50 ms; ~1 s in, a 3.5 s blackout (grace 2 s: a transport
    restart). Events in flight when the path died (never acknowledged by SCTP) are re-sent on the
    new connection, events sent while not active are queued: the peer gets every one of the 100,
    over its calls, at least once (at-least-once: a few duplicates are allowed)."""
    n = 100
    peer, client = connect(pair, "--grace", "2")
    mark = client.mark()
    t_send = time.monotonic()
    client.send(cmd="send", count=n, interval=0.05)
    time.sleep(1.0)
    t0 = pair.drop_start()
    time.sleep(3.5)
    t1 = pair.drop_stop()
    back = wait_entry(client, lambda m: m["to"] == "active" and m["time"] > t0, timeout=15)
    sent = client.wait_for(lambda m: m["type"] == "sent", timeout=15, after=mark)
    time.sleep(1.0)  # the last events reach the peer
    pmark = peer.mark()
    peer.send(cmd="received")
    got = peer.wait_for(lambda m: m["type"] == "received", timeout=5, after=pmark)["calls"]
    summary = client.stop()
    trace = taken(summary["trace"])
    ids = [i for per_call in got.values() for i in per_call]
    expected = {f"ev-{i}" for i in range(n)}
    duplicates = len(ids) - len(set(ids))
    restarted = [e for e in trace if e["time"] >= t0 and e["to"] == "restarting"]
    print(
        f"\nsend at {t_send - t0:+.2f}s, blackout {t1 - t0:.2f}s; restarting at "
        f"{restarted[0]['time'] - t0 if restarted else float('nan'):+.2f}s; back active "
        f"{back['time'] - t1:+.2f}s after link up (from {back['from']}); calls "
        f"{[len(v) for v in got.values()]}, received {len(ids)} ({len(set(ids))} distinct), "
        f"duplicates {duplicates}; sent {summary['sent_events']}, delivered "
        f"{summary['delivered_events']}, resent {summary['resent_events']}, dropped "
        f"{summary['dropped_events']}"
    )
    assert sent["count"] == n and sent["overflows"] == 0, sent
    assert set(ids) == expected, sorted(expected - set(ids))
    assert duplicates <= 10, duplicates
    assert restarted, describe(trace, t0)
    assert back["from"] in ("restarting", "reconnecting"), describe(trace, t0)
    assert summary["sent_events"] == n == summary["delivered_events"], summary
    assert summary["dropped_events"] == 0
    assert summary["resent_events"] > 0, describe(trace, t0)
    assert summary["status"] == "active"


# -- no root needed: the relay on loopback, the peer's bind opt-in ----------------------------


class _Echo(asyncio.DatagramProtocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.transport.sendto(data, addr)  # type: ignore[attr-defined]


class _Client(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.received: asyncio.Queue[tuple[bytes, float]] = asyncio.Queue()

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.received.put_nowait((data, time.monotonic()))


async def _round_trips(
    n: int, wait: float = 1.0, **impairment: float
) -> tuple[list[float], int, UdpRelay]:
    loop = asyncio.get_running_loop()
    echo, _ = await loop.create_datagram_endpoint(_Echo, local_addr=("127.0.0.1", 0))
    target = echo.get_extra_info("sockname")[:2]
    relay = await UdpRelay(("127.0.0.1", 0), target, **impairment).start()
    client = _Client()
    tr, _ = await loop.create_datagram_endpoint(lambda: client, remote_addr=relay.address)
    rtts: list[float] = []
    try:
        for i in range(n):
            sent = time.monotonic()
            tr.sendto(b"%d" % i)
            try:
                _, at = await asyncio.wait_for(client.received.get(), timeout=wait)
            except TimeoutError:
                continue
            rtts.append(at - sent)
    finally:
        tr.close()
        relay.close()
        echo.close()
    return rtts, n - len(rtts), relay


def test_relay_adds_delay_both_ways() -> None:
    # the first datagram opens the upstream socket; all are answered
    rtts, lost, relay = asyncio.run(_round_trips(5, delay=0.05))
    assert lost == 0
    assert all(0.1 <= r < 0.3 for r in rtts), rtts
    assert relay.forwarded == 10 and relay.dropped == 0


def test_relay_jitter_spreads_and_loss_drops() -> None:
    rtts, _, _ = asyncio.run(_round_trips(8, delay=0.0, jitter=0.1))
    assert max(rtts) - min(rtts) > 0.01
    rtts, lost, relay = asyncio.run(_round_trips(3, wait=0.2, loss=1.0))
    assert rtts == [] and lost == 3 and relay.dropped >= 2


def test_relay_rejects_bad_values() -> None:
    with pytest.raises(ValueError, match="loss"):
        UdpRelay(("127.0.0.1", 0), ("127.0.0.1", 9), loss=2)


def test_peer_binds_beyond_loopback_only_when_opted_in() -> None:
    with pytest.raises(ValueError, match="loopback only"):
        RealtimePeer("10.213.1.2")
    assert RealtimePeer("10.213.1.2", allow_bind=["10.213.1.2"]).host == "10.213.1.2"
    with pytest.raises(ValueError, match="loopback only"):
        RealtimePeer("10.213.1.3", allow_bind=["10.213.1.2"])
