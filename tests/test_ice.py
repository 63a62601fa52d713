"""ICE server probing, rotation and TURN relaying, against real coturn servers on 127.0.0.1 and a
real aiortc client talking to the local :class:`~fsm_voice.peer.server.RealtimePeer`.

Dead servers are UDP sockets bound on 127.0.0.1 that never answer (no ICMP "unreachable", so a
client must time out, as with a STUN server behind a firewall dropping packets).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import time
from collections.abc import AsyncIterator, Iterator, Mapping
from pathlib import Path
from typing import Any, Literal

import pytest
from aiohttp import ClientSession, TCPConnector

from fsm_voice.errors import ConfigError
from fsm_voice.ice import IceServerProber
from fsm_voice.peer.server import RealtimePeer
from fsm_voice.policy import IceServer
from fsm_voice.ports import TransportSignal
from fsm_voice.signaling import HttpSignaling
from fsm_voice.transport import AiortcTransport, _private
from tests.coturn import Coturn, coturn_server, dead_udp_port, free_port, self_signed_cert

pytestmark = pytest.mark.anyio

LOOPBACK = ["127.0.0.1"]
TIMEOUT = 0.5


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


# ------------------------------------------------------------------------------------------
# Fixtures
# ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def turn_a() -> Iterator[Coturn]:
    with coturn_server() as server:
        yield server


@pytest.fixture(scope="module")
def turn_b() -> Iterator[Coturn]:
    with coturn_server() as server:
        yield server


@pytest.fixture(scope="module")
def tls_turn(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Coturn, Path]]:
    cert = self_signed_cert(tmp_path_factory.mktemp("turns-cert"))
    with coturn_server(cert=cert) as server:
        yield server, cert[0]


@pytest.fixture
def dead_port() -> Iterator[int]:
    with dead_udp_port() as port:
        yield port


@pytest.fixture
async def peer() -> AsyncIterator[RealtimePeer]:
    async with RealtimePeer(reply="tone") as server:
        yield server


def dead_stun(port: int) -> IceServer:
    return IceServer(f"stun:127.0.0.1:{port}")


def dead_turn(port: int) -> IceServer:
    return IceServer(f"turn:127.0.0.1:{port}", username="u", credential="p")


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class RecordingSink:
    def __init__(self) -> None:
        self.signals: list[tuple[TransportSignal, str, float]] = []
        self._changed = asyncio.Event()

    def signal(self, signal: TransportSignal, detail: str = "") -> None:
        self.signals.append((signal, detail, time.monotonic()))
        self._changed.set()

    def server_event(self, event: Mapping[str, Any]) -> None:
        pass

    def kinds(self) -> list[TransportSignal]:
        return [s for s, _, _ in self.signals]

    async def wait_any(self, wanted: set[TransportSignal], timeout: float = 10.0) -> None:
        async def loop() -> None:
            while not wanted & set(self.kinds()):
                self._changed.clear()
                await self._changed.wait()

        await asyncio.wait_for(loop(), timeout)


@contextlib.asynccontextmanager
async def client(
    peer: RealtimePeer, *, keep_alive: bool = True, **kwargs: Any
) -> AsyncIterator[AiortcTransport]:
    """An :class:`AiortcTransport` to ``peer``; ``keep_alive=False``: signaling closes its HTTP
    connection after each exchange (no idle socket or server task to tell from leaks)."""
    session = None if keep_alive else ClientSession(connector=TCPConnector(force_close=True))
    signaling = HttpSignaling(peer.base_url, "ek_test", session=session)
    kwargs.setdefault("host_addresses", LOOPBACK)
    transport = AiortcTransport(signaling, **kwargs)
    try:
        yield transport
    finally:
        await transport.close()
        await signaling.aclose()
        if session is not None:
            await session.close()


async def connect(transport: AiortcTransport, timeout: float = 15.0) -> tuple[RecordingSink, float]:
    """open() until CHANNEL_OPEN; returns the sink and the seconds it took."""
    sink = RecordingSink()
    start = time.monotonic()
    await transport.open(sink)
    await sink.wait_any({TransportSignal.CHANNEL_OPEN}, timeout)
    return sink, time.monotonic() - start


def open_fds() -> int:
    """Number of file descriptors open in this process."""
    return len(os.listdir("/proc/self/fd"))


def nominated_pair(transport: AiortcTransport) -> Any:
    """aioice's nominated candidate pair of the current connection (aiortc 1.16 has no
    candidate-pair stats)."""
    conn = transport._conn
    assert conn is not None and conn.pc is not None
    pair = _private.selected_pair(conn.pc)
    assert pair is not None
    return pair


# ------------------------------------------------------------------------------------------
# The prober alone
# ------------------------------------------------------------------------------------------


async def test_live_stun_and_turn_answer_healthy(turn_a: Coturn) -> None:
    servers = [turn_a.stun(), turn_a.turn("udp"), turn_a.turn("tcp")]
    results = await IceServerProber(servers).probe()
    assert [r.healthy for r in results] == [True, True, True], results
    assert all(r.rtt is not None and r.rtt < TIMEOUT for r in results)
    assert [r.target.kind for r in results] == ["stun", "turn", "turn"]


async def test_dead_port_times_out_in_about_timeout(dead_port: int) -> None:
    prober = IceServerProber([dead_stun(dead_port), dead_turn(dead_port)], timeout=TIMEOUT)
    start = time.monotonic()
    results = await prober.probe()
    elapsed = time.monotonic() - start
    assert [r.healthy for r in results] == [False, False]
    assert all("no answer within 0.5s" in r.detail for r in results)
    assert TIMEOUT * 0.9 <= elapsed < TIMEOUT + 0.3, elapsed  # concurrent, not 2 x timeout


async def test_closed_port_fails_fast() -> None:
    port = free_port()  # nothing bound: ICMP port unreachable -> refused at once
    start = time.monotonic()
    tcp_turn = IceServer(f"turn:127.0.0.1:{port}?transport=tcp", username="u", credential="p")
    [stun_result, turn_result] = await IceServerProber([dead_stun(port), tcp_turn]).probe()
    assert not stun_result.healthy and not turn_result.healthy
    assert "Refused" in stun_result.detail and "Refused" in turn_result.detail
    assert time.monotonic() - start < 0.3


async def test_order_healthy_first_and_rotation(
    turn_a: Coturn, turn_b: Coturn, dead_port: int
) -> None:
    servers = [
        dead_stun(dead_port), turn_a.stun(), turn_b.stun(),
        dead_turn(dead_port), turn_a.turn(), turn_b.turn(),
    ]  # fmt: skip
    prober = IceServerProber(servers)

    def firsts(chosen: list[IceServer]) -> tuple[str, str]:
        stun = next(s.urls[0] for s in chosen if not s.is_relay)
        turn = next(s.urls[0] for s in chosen if s.is_relay)
        return stun, turn

    a = (turn_a.stun_url, turn_a.turn().urls[0])
    b = (turn_b.stun_url, turn_b.turn().urls[0])
    chosen0 = await prober.select(0)
    assert firsts(chosen0) == a
    # failed ones last among their kind, one URL per entry, nothing lost
    assert sorted(s.urls[0] for s in chosen0) == sorted(s.urls[0] for s in servers)
    stuns = [s.urls[0] for s in chosen0 if not s.is_relay]
    assert stuns[-1] == dead_stun(dead_port).urls[0]
    turns = [s.urls[0] for s in chosen0 if s.is_relay]
    assert turns[-1] == dead_turn(dead_port).urls[0]
    assert chosen0[1].username == "fsm" and chosen0[1].credential == "voice"
    assert firsts(await prober.select(1)) == b  # a retry uses the other healthy server
    assert firsts(await prober.select(2)) == a
    # without an explicit attempt: the cursor, moved by rotate()
    assert firsts(await prober.select()) == a
    assert prober.rotate() == 1
    assert firsts(await prober.select()) == b
    # relay-only: STUN is neither probed nor returned
    relay = await prober.select(0, relay_only=True)
    assert all(s.is_relay for s in relay) and relay[0].urls[0] == a[1]
    assert {r.target.kind for r in prober.last_results} == {"turn"}


async def test_entries_with_several_urls_are_split(turn_a: Coturn, dead_port: int) -> None:
    both = IceServer(
        (f"turn:127.0.0.1:{dead_port}", turn_a.turn("tcp").urls[0]),
        username="fsm",
        credential="voice",
    )
    chosen = await IceServerProber([both]).select(0)
    assert [s.urls for s in chosen] == [(turn_a.turn("tcp").urls[0],), (both.urls[0],)]
    assert all(s.username == "fsm" and s.credential == "voice" for s in chosen)


async def test_failures_cool_down_then_are_probed_again(turn_a: Coturn, dead_port: int) -> None:
    clock = FakeClock()
    prober = IceServerProber(
        [dead_stun(dead_port), turn_a.stun()], timeout=TIMEOUT, cooldown=30.0, clock=clock
    )
    dead, live = prober.targets
    await prober.probe()
    assert prober.cooling_down(dead) and not prober.cooling_down(live)

    clock.now += 29.0  # still cooling down: not probed, so no 0.5 s wait
    start = time.monotonic()
    chosen = await prober.select(0)
    assert time.monotonic() - start < 0.25
    assert chosen[0].urls[0] == turn_a.stun_url
    assert [r.skipped for r in prober.last_results] == [True, False]
    assert prober.ordered("stun") == [live, dead]

    clock.now += 2.0  # cool-down over: probed again (and fails again, freshly dated)
    results = await prober.probe()
    assert [(r.skipped, r.healthy) for r in results] == [(False, False), (False, True)]
    assert prober.cooling_down(dead)

    # a failure seen elsewhere (mark_failed) demotes a live server until its cool-down ends
    prober.mark_failed(turn_a.stun())
    assert prober.cooling_down(live) and prober.ordered("stun") == [dead, live]
    assert await prober.select(0) == []  # no healthy STUN: STUN left out (it would only stall)
    clock.now += 31.0
    prober.forget()
    assert (await prober.select(0))[0].urls[0] == turn_a.stun_url
    assert not prober.cooling_down(live)


async def test_no_healthy_turn_keeps_turn_servers(dead_port: int) -> None:
    one, two = (
        dead_turn(dead_port),
        IceServer(f"turn:127.0.0.1:{dead_port}?transport=udp", username="x", credential="y"),
    )
    prober = IceServerProber([one, two])
    assert [s.urls for s in await prober.select(0)] == [one.urls, two.urls]
    assert [s.urls for s in await prober.select(1)] == [two.urls, one.urls]  # still rotated


async def test_turns_over_udp_is_never_chosen(turn_a: Coturn) -> None:
    udp_tls = IceServer("turns:127.0.0.1:5349?transport=udp", username="u", credential="p")
    prober = IceServerProber([udp_tls, turn_a.turn()])
    chosen = await prober.select(0)
    assert chosen[0].urls == turn_a.turn().urls and chosen[1].urls == udp_tls.urls
    [skipped, _] = prober.last_results
    assert skipped.skipped and "TCP only" in skipped.detail


async def test_empty_and_invalid_configuration() -> None:
    assert await IceServerProber([]).select(0) == []
    with pytest.raises(ConfigError, match="timeout"):
        IceServerProber([], timeout=0)
    with pytest.raises(ConfigError, match="cooldown"):
        IceServerProber([], cooldown=-1)
    with pytest.raises(ConfigError, match="servers"):
        IceServerProber(IceServer("stun:127.0.0.1"))  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="attempt"):
        await IceServerProber([]).select(-1)


def test_transport_prober_auto_explicit_or_none() -> None:
    signaling = HttpSignaling("http://127.0.0.1:9", "k")
    s1, s2 = IceServer("stun:127.0.0.1:1"), IceServer("stun:127.0.0.1:2")
    t1 = IceServer("turn:127.0.0.1:3", username="u", credential="p")
    assert AiortcTransport(signaling, ice_servers=[s1, t1]).prober is None  # nothing to choose
    auto = AiortcTransport(signaling, ice_servers=[s1, s2]).prober
    assert auto is not None and auto.servers == (s1, s2)
    assert AiortcTransport(signaling, ice_servers=[s1, s2], prober=None).prober is None
    mine = IceServerProber([s1, t1])
    transport = AiortcTransport(signaling, prober=mine, relay_only=True)
    assert transport.prober is mine
    assert transport._configuration().iceTransportPolicy.value == "relay"
    with pytest.raises(ConfigError, match="prober"):
        AiortcTransport(signaling, ice_servers=[s2], prober=mine)
    assert AiortcTransport(signaling, prober=IceServerProber([]))._configuration().iceServers == []


# ------------------------------------------------------------------------------------------
# Real connections
# ------------------------------------------------------------------------------------------


async def test_dead_stun_first_does_not_stall_connect(
    peer: RealtimePeer, turn_a: Coturn, dead_port: int
) -> None:
    """aiortc alone waits 5 s for the dead first STUN server (see benchmarks/bench_ice.py);
    probed, the dead one costs at most the probe timeout (0.5 s)."""
    servers = [dead_stun(dead_port), turn_a.stun()]
    async with client(peer, ice_servers=servers) as transport:
        assert transport.prober is not None  # automatic: two STUN servers
        _, elapsed = await connect(transport)
        assert elapsed < 2.5, f"connect took {elapsed:.2f}s: the dead STUN server stalled it"
        assert transport.ice_servers_in_use[0].urls[0] == turn_a.stun_url
        await transport.close()
        # reconnect: the dead server is cooling down, not even probed
        _, again = await connect(transport)
        assert again < 2.0
        assert transport.prober.last_results[0].skipped


TurnTransport = Literal["udp", "tcp", "tls"]


@pytest.mark.parametrize("turn_transport", ["udp", "tcp", "tls"])
async def test_relay_only_session_through_coturn(
    peer: RealtimePeer,
    turn_a: Coturn,
    request: pytest.FixtureRequest,
    monkeypatch: pytest.MonkeyPatch,
    turn_transport: TurnTransport,
) -> None:
    if turn_transport == "tls":
        # aioice verifies the TURN server's certificate with the default trust store (it passes
        # ssl=True, no way to hand it a context): trust our self-signed one the standard way.
        server, cert = request.getfixturevalue("tls_turn")
        monkeypatch.setenv("SSL_CERT_FILE", str(cert))
    else:
        server = turn_a
    turn = server.turn(turn_transport)
    async with client(peer, ice_servers=[turn], relay_only=True) as transport:
        assert transport._configuration().iceTransportPolicy.value == "relay"
        sink, elapsed = await connect(transport)
        assert elapsed < 5.0
        pair = nominated_pair(transport)
        assert pair.local_candidate.type == "relay", pair
        assert pair.remote_candidate.host == "127.0.0.1"
        transport.send_event({"type": "response.create"})
        await asyncio.sleep(0.5)
        assert TransportSignal.ICE_DISCONNECTED not in sink.kinds()
        assert TransportSignal.FAILED not in sink.kinds()


async def test_untrusted_turns_certificate_is_refused(
    peer: RealtimePeer, tls_turn: tuple[Coturn, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    server, _ = tls_turn
    monkeypatch.delenv("SSL_CERT_FILE", raising=False)
    results = await IceServerProber([server.turn("tls")]).probe()
    assert not results[0].healthy and "CERTIFICATE_VERIFY_FAILED" in results[0].detail


async def test_killed_turn_server_mid_session_then_reopen_uses_the_other(
    peer: RealtimePeer,
) -> None:
    with coturn_server() as first, coturn_server() as second:
        servers = [first.turn(), second.turn()]
        async with client(
            peer, ice_servers=servers, relay_only=True, keep_alive=False
        ) as transport:
            fds_before = open_fds()
            tasks_before = asyncio.all_tasks()
            sink, _ = await connect(transport)
            assert transport.ice_servers_in_use[0] == first.turn()
            assert nominated_pair(transport).local_candidate.type == "relay"

            first.kill()
            killed_at = time.monotonic()
            lost = {TransportSignal.FAILED, TransportSignal.ICE_DISCONNECTED}
            await sink.wait_any(lost, timeout=5.0)
            detected = time.monotonic() - killed_at
            assert detected < 2.0, detected

            # What the runtime's transport restart does: close, then a new open(). aiortc's
            # pc.close() alone would wait for aioice to delete the TURN allocation on the dead
            # server (Refresh lifetime=0, retransmitted for ~60 s); the adapter aborts it.
            start = time.monotonic()
            await transport.close()
            close_took = time.monotonic() - start
            assert close_took < 1.5, f"close() took {close_took:.2f}s"
            # The server side of the call is not ours: close it too, then nothing of the
            # connection may remain: no task, no socket (+1 fd of tolerance).
            await peer.close_call()
            await asyncio.sleep(0.3)
            leftover = asyncio.all_tasks() - tasks_before - {asyncio.current_task()}
            assert not leftover, leftover
            assert open_fds() <= fds_before + 1, (fds_before, open_fds())

            sink2, elapsed = await connect(transport)
            assert transport.ice_servers_in_use[0] == second.turn()
            assert transport.ice_servers_in_use[1] == first.turn()
            assert nominated_pair(transport).local_candidate.type == "relay"
            assert elapsed < 5.0
            await asyncio.sleep(1.0)
            assert not lost & set(sink2.kinds())


def test_coturn_helper_cleans_up() -> None:
    with coturn_server() as server:
        pid, port = server.pid, server.port
        assert server.alive()
    assert not server.alive()
    assert server.process.returncode is not None  # reaped, not a zombie
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", port))  # the port is free again
