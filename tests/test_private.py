"""Canaries for every aiortc/aioice internal fsm_voice uses (``fsm_voice.transport._private``).

One live session (a relay-only connection through a real coturn to the local peer, so a TURN
allocation exists) is opened once per module; every attribute of
:data:`~fsm_voice.transport._private.ATTRIBUTES` is then checked on the live objects, one test
each: an aiortc/aioice upgrade that moves one of them fails the test that names it. The
capabilities are exercised for real too, and a lost capability must log a WARNING.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterator
from typing import Any

import aioice.ice
import pytest

from fsm_voice.peer.server import RealtimePeer
from fsm_voice.ports import TransportSignal
from fsm_voice.signaling import HttpSignaling
from fsm_voice.transport import AiortcTransport, _private
from tests.coturn import coturn_server

CANARIES = [
    (capability, owner, attribute, kind)
    for capability, entries in _private.ATTRIBUTES.items()
    for owner, attribute, kind in entries
]


class _Sink:
    def __init__(self) -> None:
        self.signals: list[TransportSignal] = []
        self.changed = asyncio.Event()

    def signal(self, signal: TransportSignal, detail: str = "") -> None:
        self.signals.append(signal)
        self.changed.set()

    def server_event(self, event: Any) -> None:
        pass


async def _wait(sink: _Sink, signal: TransportSignal) -> None:
    async def loop() -> None:
        while signal not in sink.signals:
            sink.changed.clear()
            await sink.changed.wait()

    await asyncio.wait_for(loop(), 15)


def _live_objects(pc: Any) -> dict[str, list[Any]]:
    """Live instances of every owner class, found through public attributes where possible
    (the private hops are the ones under test and are read with getattr)."""
    ice = pc.sctp.transport.transport
    connection = getattr(ice, "_connection", None)
    protocols = list(getattr(connection, "_protocols", []))
    nominated = list(getattr(connection, "_nominated", {}).values())
    return {
        "aiortc.rtcdtlstransport.RTCDtlsTransport": [pc.sctp.transport],
        "aiortc.rtcicetransport.RTCIceTransport": [ice],
        "aiortc.rtcsctptransport.RTCSctpTransport": [pc.sctp],
        "aioice.ice.Connection": [connection] if connection is not None else [],
        "aioice.ice.CandidatePair": nominated,
        "aioice.ice.StunProtocol": protocols,
        "aioice.turn.TurnTransport": [
            p.transport for p in protocols if isinstance(p.transport, _private.TurnTransport)
        ],
        "aioice.ice": [aioice.ice],
        "aioice.stun": [_private.stun],
    }


async def _observe() -> dict[str, Any]:
    facts: dict[str, Any] = {}
    with coturn_server() as turn:
        async with RealtimePeer(reply="tone") as peer:
            signaling = HttpSignaling(peer.base_url, "ek_test")
            transport = AiortcTransport(
                signaling, ice_servers=[turn.turn("udp")], relay_only=True,
                host_addresses=["127.0.0.1"],
            )
            sink = _Sink()
            try:
                await transport.open(sink)
                await _wait(sink, TransportSignal.CHANNEL_OPEN)
                conn = transport._conn
                assert conn is not None and conn.pc is not None and conn.dc is not None
                pc = conn.pc
                objects = _live_objects(pc)
                facts["objects"] = {
                    (owner, attr): [hasattr(o, attr) for o in found]
                    for _, owner, attr, _ in CANARIES
                    for found in [objects[owner]]
                }
                facts["inbound_packets"] = _private.inbound_packets(pc)
                facts["probe_alive"] = await _private.probe_path(pc, 1.0)
                facts["selected_pair"] = _private.selected_pair(pc)
                transport.send_event({"type": "response.create"})
                facts["unacked_now"] = _private.unacknowledged_messages(pc, conn.dc)
                facts["turn_allocations"] = len(_private.turn_allocations(pc))
                facts["muted_calls"] = peer.go_silent()
                facts["probe_dead"] = await _private.probe_path(pc, 0.3)
                peer.resume()
                facts["probe_back"] = await _private.probe_path(pc, 1.0)
            finally:
                await transport.close()
                await signaling.aclose()
    return facts


@pytest.fixture(scope="module")
def live() -> Iterator[dict[str, Any]]:
    yield asyncio.run(_observe())


@pytest.mark.parametrize(
    ("capability", "owner", "attribute", "kind"),
    CANARIES,
    ids=[f"{c}:{o.rsplit('.', 1)[-1]}.{a}" for c, o, a, _ in CANARIES],
)
def test_canary(live: dict[str, Any], capability: str, owner: str, attribute: str,
                kind: str) -> None:
    """The attribute exists where ``_private`` expects it, on live objects of a real session."""
    if kind in ("class", "module"):
        assert hasattr(_private.owner(owner), attribute), f"{owner}.{attribute} is gone"
    seen = live["objects"][(owner, attribute)]
    assert seen, f"no live {owner} found in a relayed session"
    assert all(seen), f"{owner}.{attribute} missing on a live object ({capability})"


def test_capabilities_work_on_a_live_session(live: dict[str, Any]) -> None:
    assert live["inbound_packets"] > 0
    assert live["probe_alive"] is True
    assert live["selected_pair"].local_candidate.type == "relay"
    assert isinstance(live["unacked_now"], list)
    assert live["turn_allocations"] == 1
    assert live["muted_calls"] == 1
    assert live["probe_dead"] is False  # the peer answers nothing while silenced
    assert live["probe_back"] is True


def test_tested_versions_pass_the_gate() -> None:
    assert _private.version_problem() is None
    assert all(c.available() for c in _private.CAPABILITIES.values())


def test_version_gate_names_untested_versions() -> None:
    problem = _private.version_problem({"aiortc": "1.17.0", "aioice": "0.13.2"})
    assert problem is not None and "aiortc 1.17.0" in problem and "aioice" not in problem
    assert _private.version_problem({"aiortc": "1.16.3", "aioice": "0.13.0"}) is None


@pytest.fixture
def fresh_capabilities() -> Iterator[None]:
    for c in _private.CAPABILITIES.values():
        c.reset()
    yield
    for c in _private.CAPABILITIES.values():
        c.reset()


def test_untested_version_with_the_same_structure_warns_and_is_used(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, fresh_capabilities: None
) -> None:
    monkeypatch.setattr(_private.aiortc, "__version__", "1.99.0")
    with caplog.at_level(logging.WARNING, logger="fsm_voice.transport._private"):
        assert _private.CAPABILITIES["inbound_packets"].available()
    assert [r.levelno for r in caplog.records] == [logging.WARNING]
    assert "tested only on other versions" in caplog.text and "aiortc 1.99.0" in caplog.text


def test_missing_attribute_loses_the_capability_with_a_warning(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, fresh_capabilities: None
) -> None:
    monkeypatch.delattr(aioice.ice.Connection, "build_request")
    with caplog.at_level(logging.WARNING, logger="fsm_voice.transport._private"):
        assert not _private.CAPABILITIES["path_probe"].available()
        assert not _private.CAPABILITIES["path_probe"].available()  # warned once only
    assert len(caplog.records) == 1 and caplog.records[0].levelno == logging.WARNING
    assert "capability lost: path_probe" in caplog.text
    assert "aioice.ice.Connection.build_request" in caplog.text
    assert "cannot tell a silent remote from a dead path" in caplog.text  # the fallback


def test_a_capability_failing_in_use_is_lost_with_a_warning(
    caplog: pytest.LogCaptureFixture, fresh_capabilities: None
) -> None:
    class NotAPeerConnection:
        sctp = None

        def getTransceivers(self) -> list[Any]:
            raise AttributeError("layout changed")

    with caplog.at_level(logging.WARNING, logger="fsm_voice.transport._private"):
        assert _private.inbound_packets(NotAPeerConnection()) is None  # type: ignore[arg-type]
        assert _private.inbound_packets(NotAPeerConnection()) is None  # type: ignore[arg-type]
    assert len(caplog.records) == 1
    assert "capability lost: inbound_packets" in caplog.text and "layout changed" in caplog.text


def test_host_address_hook_without_aioice_support_is_a_clear_error(
    monkeypatch: pytest.MonkeyPatch, fresh_capabilities: None, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.delattr(aioice.ice, "get_host_addresses")
    with pytest.raises(_private.PrivateApiError, match="cannot choose ICE host addresses"):
        _private.install_host_address_hook(lambda original: original)
    assert "capability lost: host_addresses" in caplog.text


def test_no_private_access_outside_the_module() -> None:
    """The rule itself: no other file of the package or the tests reaches into aiortc/aioice
    internals (the attribute names of ATTRIBUTES that start with an underscore)."""
    import pathlib
    import re

    root = pathlib.Path(__file__).resolve().parent.parent
    names = {a for _, _, a, _ in CANARIES if a.startswith("_")}
    alternatives = "|".join(sorted(names))
    pattern = re.compile(rf"\.({alternatives})\b|['\"]({alternatives})['\"]")
    offenders = []
    for path in [*root.joinpath("fsm_voice").rglob("*.py"), *root.joinpath("tests").rglob("*.py"),
                 *root.joinpath("benchmarks").rglob("*.py")]:
        if path.name in ("_private.py", "test_private.py"):
            continue
        for n, line in enumerate(path.read_text().splitlines(), 1):
            if pattern.search(line):
                offenders.append(f"{path.relative_to(root)}:{n}: {line.strip()}")
    assert offenders == []


async def _connected_pair() -> tuple[Any, Any, Any]:
    """Two real aiortc peers on loopback with an open data channel."""
    from aiortc import RTCConfiguration, RTCPeerConnection

    from fsm_voice.transport.loopback import loopback

    with loopback():
        a = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        b = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        dc = a.createDataChannel("events")
        opened = asyncio.Event()
        dc.on("open", opened.set)
        await a.setLocalDescription(await a.createOffer())
        await b.setRemoteDescription(a.localDescription)
        await b.setLocalDescription(await b.createAnswer())
        await a.setRemoteDescription(b.localDescription)
        await asyncio.wait_for(opened.wait(), 15)
    return a, b, dc


async def _retransmit_after_close(quiet: bool) -> BaseException | None:
    """Replay aiortc's close race by hand: data in flight on a dead path, the association
    closed, the DTLS transport shut down, then a T3 retransmission runs."""
    from OpenSSL import SSL

    a, b, dc = await _connected_pair()
    try:
        if quiet:
            assert _private.quiet_sctp_close(a)
        _private.mute_datagrams(b)  # the far side never acknowledges
        sctp = a.sctp
        for i in range(3):
            dc.send(f"event {i}")

        async def in_flight() -> None:
            while not sctp._sent_queue:  # flushed by a detached task: yield until it ran
                await asyncio.sleep(0)

        await asyncio.wait_for(in_flight(), 5)
        sctp._set_state(sctp.State.CLOSED)  # what RTCSctpTransport.stop() ends with
        with contextlib.suppress(SSL.Error):
            sctp.transport._ssl.shutdown()  # what RTCDtlsTransport.stop() starts with
        sctp._t3_expired()  # marks the chunks and schedules ``_transmit`` detached
        pending = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        done, _ = await asyncio.wait(pending, timeout=2)
        failures = [t.exception() for t in done if not t.cancelled() and t.exception()]
        return failures[0] if failures else None
    finally:
        await a.close()
        await b.close()


def test_quiet_sctp_close_drops_a_retransmission_racing_the_dtls_shutdown() -> None:
    """The CI flake (``SSL.Error: protocol is shutdown`` from aiortc's detached ``_transmit``)
    is reproduced without the capability and gone with it."""
    from OpenSSL import SSL

    assert isinstance(asyncio.run(_retransmit_after_close(quiet=False)), SSL.Error)
    assert asyncio.run(_retransmit_after_close(quiet=True)) is None
