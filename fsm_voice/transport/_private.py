"""Every use of aiortc / aioice internals in fsm_voice, in one place, behind a version gate.

aiortc and aioice document only their public WebRTC/ICE objects. fsm_voice needs a few of their
internals for things the public API cannot do (see each :class:`Capability`). Every such access
lives in this module and nowhere else (tests included, through the helpers here).

**Version gate.** The internals were read and tested on the versions in :data:`TESTED`. On those
versions every capability is used. On any other version each capability is checked once, on
first use, against the structure it expects (:data:`ATTRIBUTES`, the same list the canary tests
check): if the structure matches it is used and one WARNING says the version is untested; if not
it is switched off and one WARNING says what is lost. A capability that raises while in use is
switched off the same way (one WARNING). Never silence: a lost capability always shows in the
log (logger ``fsm_voice.transport._private``), with its fallback.

Capabilities (name: what it gives; fallback when lost):

* ``inbound_packets``: datagrams received by a DTLS transport (RTP, RTCP, SCTP);
  liveness then counts decoded audio frames and data-channel messages only.
* ``path_probe``: a STUN binding request on the nominated ICE pair (consent-style, RFC 7675);
  liveness then cannot tell a silent remote from a dead path (stall-only detection, no early
  restart).
* ``sctp_unacked``: data-channel messages not yet acknowledged by the peer;
  at-least-once re-send across a restart becomes no re-send.
* ``sctp_quiet_close``: an SCTP retransmission that aiortc runs as a detached task after the
  association was closed (its DTLS transport shutting down under it) ends quietly instead of
  surfacing ``SSL.Error: protocol is shutdown`` as an unretrieved task exception; lost -> such
  a close can log that error (nothing else changes).
* ``turn_abort``: list and abort a connection's TURN allocations;
  a close over a dead TURN server takes aioice's ~60 s again (bounded by the close timeout).
* ``host_addresses``: choose the host candidates aioice gathers (loopback for a local peer);
  :func:`install_host_address_hook` raises :class:`PrivateApiError` (no silent fallback: a
  local peer could not be reached at all).
* ``datagram_mute``: swap the socket transport of a connection's ICE protocols (the local
  peer's ``go_silent`` fault); the fault then mutes nothing (reported 0).
* ``stun_codec``: aioice's STUN message codec (:mod:`aioice.stun`) used by the ICE server
  prober; lost -> :class:`PrivateApiError` at import of :mod:`fsm_voice.ice`.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, Final

import aioice
import aioice.ice
import aiortc
from aioice import stun
from aioice.ice import CandidatePair, Connection, StunProtocol
from aioice.turn import TurnTransport
from aiortc.rtcdtlstransport import RTCDtlsTransport
from aiortc.rtcicetransport import RTCIceTransport
from aiortc.rtcsctptransport import RTCSctpTransport

if TYPE_CHECKING:
    from aiortc import RTCDataChannel, RTCPeerConnection

__all__ = [
    "ATTRIBUTES",
    "CAPABILITIES",
    "TESTED",
    "Capability",
    "PrivateApiError",
    "abort_turn_allocations",
    "inbound_packets",
    "install_host_address_hook",
    "mute_datagrams",
    "probe_path",
    "quiet_sctp_close",
    "selected_pair",
    "stun",
    "turn_allocations",
    "unacknowledged_messages",
    "unmute_datagrams",
    "version_problem",
]

log = logging.getLogger(__name__)

TESTED: Final[dict[str, tuple[int, int]]] = {"aiortc": (1, 16), "aioice": (0, 13)}
"""(major, minor) of each library whose internals this module was written and tested against."""


class PrivateApiError(RuntimeError):
    """A needed aiortc/aioice internal is missing and nothing can replace it."""


def _major_minor(version: str) -> tuple[int, int] | None:
    try:
        major, minor = version.split(".")[:2]
        return int(major), int(minor)
    except ValueError:
        return None


def _installed() -> dict[str, str]:
    return {
        "aiortc": str(getattr(aiortc, "__version__", "?")),
        "aioice": str(getattr(aioice, "__version__", "?")),
    }


def version_problem(installed: dict[str, str] | None = None) -> str | None:
    """Why the installed aiortc/aioice are not the tested ones (None when they are)."""
    found = _installed() if installed is None else installed
    wrong = [
        f"{name} {found.get(name, '?')} (tested: {'.'.join(map(str, TESTED[name]))}.x)"
        for name in TESTED
        if _major_minor(found.get(name, "?")) != TESTED[name]
    ]
    return ", ".join(wrong) if wrong else None


# ------------------------------------------------------------------------------- attributes


ATTRIBUTES: Final[dict[str, tuple[tuple[str, str, str], ...]]] = {
    # capability -> (owner, attribute, kind); kind "class" = looked up on the class now,
    # "instance" = set in __init__ (checked on live objects by the canary tests),
    # "module" = module-level name.
    "inbound_packets": (("aiortc.rtcdtlstransport.RTCDtlsTransport", "_get_stats", "class"),),
    "path_probe": (
        ("aiortc.rtcicetransport.RTCIceTransport", "_connection", "instance"),
        ("aioice.ice.Connection", "_nominated", "instance"),
        ("aioice.ice.Connection", "build_request", "class"),
        ("aioice.ice.Connection", "remote_password", "instance"),
        ("aioice.ice.CandidatePair", "protocol", "instance"),
        ("aioice.ice.CandidatePair", "remote_addr", "class"),
        ("aioice.ice.StunProtocol", "request", "class"),
        ("aioice.stun", "TransactionError", "module"),
    ),
    "sctp_unacked": (
        ("aiortc.rtcsctptransport.RTCSctpTransport", "_last_sacked_tsn", "instance"),
        ("aiortc.rtcsctptransport.RTCSctpTransport", "_sent_queue", "instance"),
        ("aiortc.rtcsctptransport.RTCSctpTransport", "_outbound_queue", "instance"),
        ("aiortc.rtcsctptransport.RTCSctpTransport", "_data_channel_queue", "instance"),
    ),
    "sctp_quiet_close": (
        ("aiortc.rtcsctptransport.RTCSctpTransport", "_transmit", "class"),
        ("aiortc.rtcsctptransport.RTCSctpTransport", "_association_state", "instance"),
    ),
    "turn_abort": (
        ("aiortc.rtcicetransport.RTCIceTransport", "_connection", "instance"),
        ("aioice.ice.Connection", "_protocols", "instance"),
        ("aioice.turn.TurnTransport", "_TurnTransport__inner_protocol", "instance"),
        ("aioice.turn.TurnTransport", "_TurnTransport__close_task", "instance"),
        ("aioice.turn.TurnTransport", "_TurnTransport__send_tasks", "instance"),
    ),
    "host_addresses": (("aioice.ice", "get_host_addresses", "module"),),
    "datagram_mute": (
        ("aiortc.rtcicetransport.RTCIceTransport", "_connection", "instance"),
        ("aioice.ice.Connection", "_protocols", "instance"),
        ("aioice.ice.StunProtocol", "transport", "instance"),
    ),
    "stun_codec": (
        ("aioice.stun", "Message", "module"),
        ("aioice.stun", "Method", "module"),
        ("aioice.stun", "Class", "module"),
        ("aioice.stun", "parse_message", "module"),
        ("aioice.stun", "HEADER_LENGTH", "module"),
    ),
}
"""Every private attribute fsm_voice uses, per capability. The canary tests check each one."""

_OWNERS: Final[dict[str, Any]] = {
    "aiortc.rtcdtlstransport.RTCDtlsTransport": RTCDtlsTransport,
    "aiortc.rtcicetransport.RTCIceTransport": RTCIceTransport,
    "aiortc.rtcsctptransport.RTCSctpTransport": RTCSctpTransport,
    "aioice.ice.Connection": Connection,
    "aioice.ice.CandidatePair": CandidatePair,
    "aioice.ice.StunProtocol": StunProtocol,
    "aioice.turn.TurnTransport": TurnTransport,
    "aioice.ice": aioice.ice,
    "aioice.stun": stun,
}


def owner(name: str) -> Any:
    """The class or module named in :data:`ATTRIBUTES`."""
    return _OWNERS[name]


def _static_problem(capability: str) -> str | None:
    """Attributes of ``capability`` that can be checked without a live object and are missing."""
    missing = [
        f"{name}.{attr}"
        for name, attr, kind in ATTRIBUTES[capability]
        if kind in ("class", "module") and not hasattr(_OWNERS[name], attr)
    ]
    return f"missing {', '.join(missing)}" if missing else None


# ------------------------------------------------------------------------------- capabilities


class Capability:
    """One use of internals: available until lost; every loss is logged once as a WARNING."""

    def __init__(self, name: str, fallback: str) -> None:
        self.name = name
        self.fallback = fallback
        self._checked = False
        self._lost: str | None = None
        self._lock = threading.Lock()

    @property
    def lost_reason(self) -> str | None:
        """Why the capability is off (None while it is usable)."""
        self.available()
        return self._lost

    def available(self) -> bool:
        """Check once (version gate + structure); True while the capability may be used."""
        if not self._checked:
            with self._lock:
                if not self._checked:
                    self._checked = True
                    problem = _static_problem(self.name)
                    untested = version_problem()
                    if problem is not None:
                        self._lose(problem if untested is None else f"{untested}: {problem}")
                    elif untested is not None:
                        log.warning(
                            "fsm_voice uses aiortc/aioice internals (%s) tested only on other "
                            "versions: %s; the structure matches, using it",
                            self.name,
                            untested,
                        )
        return self._lost is None

    def lose(self, why: str | BaseException) -> None:
        """Switch the capability off (a WARNING the first time)."""
        with self._lock:
            self._checked = True
            if self._lost is None:
                self._lose(why if isinstance(why, str) else f"{type(why).__name__}: {why}")

    def _lose(self, why: str) -> None:
        self._lost = why
        version = version_problem()
        log.warning(
            "capability lost: %s (aiortc/aioice internals changed: %s%s); from now on %s",
            self.name,
            why,
            f"; untested versions {version}" if version else "",
            self.fallback,
        )

    def reset(self) -> None:
        """Forget a loss (tests only: a capability lost on purpose is re-checked)."""
        with self._lock:
            self._checked = False
            self._lost = None


CAPABILITIES: Final[dict[str, Capability]] = {
    c.name: c
    for c in (
        Capability(
            "inbound_packets",
            "liveness counts only decoded audio frames and data-channel messages",
        ),
        Capability(
            "path_probe",
            "liveness cannot tell a silent remote from a dead path (stall-only detection, "
            "no early restart)",
        ),
        Capability(
            "sctp_unacked",
            "client events in flight when a connection dies are NOT re-sent (no at-least-once)",
        ),
        Capability(
            "sctp_quiet_close",
            "a retransmission racing a close can log 'SSL.Error: protocol is shutdown'",
        ),
        Capability(
            "turn_abort",
            "closing over a dead TURN server waits for aioice (~60 s, bounded by the close "
            "timeout)",
        ),
        Capability("host_addresses", "host candidates cannot be chosen (no loopback peers)"),
        Capability("datagram_mute", "the local peer's go_silent fault mutes nothing"),
        Capability("stun_codec", "the ICE server prober cannot be used"),
    )
}


def _ice_transports(pc: RTCPeerConnection) -> Iterator[RTCIceTransport]:
    seen: set[int] = set()
    dtls: list[RTCDtlsTransport] = []
    for tr in pc.getTransceivers():
        dtls.extend((tr.sender.transport, tr.receiver.transport))
    if pc.sctp is not None:
        dtls.append(pc.sctp.transport)
    for d in dtls:
        ice = d.transport
        if id(ice) not in seen:
            seen.add(id(ice))
            yield ice


def _ice_connections(pc: RTCPeerConnection) -> list[Connection]:
    found: list[Connection] = []
    for ice in _ice_transports(pc):
        connection = ice._connection
        if not isinstance(connection, Connection):
            raise TypeError(f"RTCIceTransport._connection is a {type(connection).__name__}")
        if all(connection is not c for c in found):
            found.append(connection)
    return found


def _dtls_transports(pc: RTCPeerConnection) -> list[RTCDtlsTransport]:
    found: dict[int, RTCDtlsTransport] = {}
    for tr in pc.getTransceivers():
        found[id(tr.receiver.transport)] = tr.receiver.transport
    if pc.sctp is not None:
        found[id(pc.sctp.transport)] = pc.sctp.transport
    return list(found.values())


# ------------------------------------------------------------------------------- inbound_packets


def inbound_packets(pc: RTCPeerConnection) -> int | None:
    """Datagrams received so far by the DTLS transport(s) of ``pc`` (None: capability lost)."""
    cap = CAPABILITIES["inbound_packets"]
    if not cap.available():
        return None
    try:
        count = 0
        for dtls in _dtls_transports(pc):
            for stats in dtls._get_stats().values():
                count += int(stats.packetsReceived or 0)
        return count
    except Exception as exc:
        cap.lose(exc)
        return None


# ------------------------------------------------------------------------------- path_probe


def selected_pair(pc: RTCPeerConnection) -> CandidatePair | None:
    """The nominated ICE pair (component 1) of ``pc``, or None (not connected / lost)."""
    cap = CAPABILITIES["path_probe"]
    if not cap.available():
        return None
    try:
        for connection in _ice_connections(pc):
            pair = connection._nominated.get(1)
            if pair is not None:
                return pair
        return None
    except Exception as exc:
        cap.lose(exc)
        return None


async def probe_path(pc: RTCPeerConnection, timeout: float) -> bool | None:
    """One STUN binding request (no retransmission) on the nominated pair of ``pc``, signed
    with the remote ICE password, like a consent check (RFC 7675): True when the remote ICE
    agent answered within ``timeout`` s, False when not (or refused), None when no probe could
    be sent (no nominated pair, connection closed, capability lost)."""
    cap = CAPABILITIES["path_probe"]
    if not cap.available():
        return None
    try:
        pair: CandidatePair | None = None
        connection: Connection | None = None
        for c in _ice_connections(pc):
            pair = c._nominated.get(1)
            if pair is not None:
                connection = c
                break
        if pair is None or connection is None or connection.remote_password is None:
            return None
        request = connection.build_request(pair, nominate=False)
        key = connection.remote_password.encode("utf8")
        transport = getattr(pair.protocol, "transport", None)  # a TurnTransport when relayed
        closing = getattr(transport, "is_closing", None)
        if transport is None or (callable(closing) and closing()):
            return None
        remote = pair.remote_addr
    except Exception as exc:
        cap.lose(exc)
        return None
    try:
        async with asyncio.timeout(timeout):
            await pair.protocol.request(request, remote, integrity_key=key, retransmissions=0)
        return True
    except (stun.TransactionError, TimeoutError):
        return False
    except (OSError, AssertionError):  # socket closed under us / duplicate transaction id
        return False


# ------------------------------------------------------------------------------- sctp_unacked

_SCTP_FIRST_FRAG = 0x02
_SCTP_LAST_FRAG = 0x01
_PPID_STRING = 51
_PPID_BINARY = 53


def _tsn_after(a: int, b: int) -> bool:
    """Serial-number arithmetic (RFC 1982, 32 bits): ``a`` comes after ``b``."""
    return a != b and ((a - b) & 0xFFFFFFFF) < 0x80000000


def unacknowledged_messages(pc: RTCPeerConnection, dc: RTCDataChannel) -> list[bytes]:
    """The user messages of ``dc`` (payload bytes, oldest first) the peer has not cumulatively
    acknowledged; ``[]`` when there is no association or the capability is lost.

    Read (never written): ``RTCSctpTransport._sent_queue`` (chunks sent, not cumulatively
    acked) and ``_outbound_queue`` (made, not sent), both in TSN order, a message split into
    chunks flagged B (0x02) / E (0x01) and never interleaved with another; chunks of ``dc``
    have ``stream_id == dc.id`` and ppid 51/53; ``_data_channel_queue``: whole
    ``(channel, ppid, bytes)`` messages not fragmented yet; ``_last_sacked_tsn``. A message
    whose first chunks were already acked and popped is skipped (logged at debug).
    """
    cap = CAPABILITIES["sctp_unacked"]
    sctp = pc.sctp
    if sctp is None or not cap.available():
        return []
    try:
        stream_id = dc.id
        last_sacked = int(sctp._last_sacked_tsn)
        messages: list[bytes] = []
        parts: list[bytes] | None = None
        for chunk in [*sctp._sent_queue, *sctp._outbound_queue]:
            if chunk.stream_id != stream_id or chunk.protocol not in (_PPID_STRING, _PPID_BINARY):
                continue
            if not _tsn_after(int(chunk.tsn), last_sacked):
                continue  # cumulatively acked (not popped yet)
            if chunk.flags & _SCTP_FIRST_FRAG:
                parts = []
            if parts is None:
                log.debug("unacknowledged chunk tsn=%s has no first fragment; skipped", chunk.tsn)
                continue
            parts.append(bytes(chunk.user_data))
            if chunk.flags & _SCTP_LAST_FRAG:
                messages.append(b"".join(parts))
                parts = None
        for channel, protocol, data in list(sctp._data_channel_queue):
            if channel is dc and protocol in (_PPID_STRING, _PPID_BINARY):
                messages.append(bytes(data))
        return messages
    except Exception as exc:
        cap.lose(exc)
        return []


# ------------------------------------------------------------------------ sctp_quiet_close


def quiet_sctp_close(pc: RTCPeerConnection) -> bool:
    """Make the SCTP association of ``pc`` end its retransmissions quietly once it is closed.

    aiortc 1.16 retransmits from detached tasks (``asyncio.ensure_future(self._transmit())`` on
    a T3 expiry, data-channel flushes). ``pc.close()`` closes the association, then shuts its
    DTLS transport down while such a task may still be sending: ``ssl.send`` then raises
    ``SSL.Error`` in a task nobody awaits (an "exception never retrieved" in an application, a
    failed test under anyio). This sets an instance-level ``_transmit`` that runs aiortc's own
    and drops ``SSL.Error``/``ConnectionError`` only when the association is already CLOSED or
    its DTLS transport is no longer connected; any other failure is raised as before. Call
    once ``pc.sctp`` exists. True when installed.
    """
    cap = CAPABILITIES["sctp_quiet_close"]
    sctp = pc.sctp
    if sctp is None or not cap.available():
        return False
    try:
        from OpenSSL import SSL

        original = sctp._transmit
        closed = RTCSctpTransport.State.CLOSED

        async def transmit() -> None:
            try:
                await original()
            except (SSL.Error, ConnectionError) as exc:
                if sctp._association_state != closed and sctp.transport.state == "connected":
                    raise
                log.debug("retransmission after the SCTP association closed dropped: %r", exc)

        sctp._transmit = transmit  # type: ignore[method-assign]
        return True
    except Exception as exc:
        cap.lose(exc)
        return False


# ------------------------------------------------------------------------------- turn_abort


def turn_allocations(pc: RTCPeerConnection) -> list[TurnTransport]:
    """The TURN allocations of ``pc``'s ICE connection(s) (``Connection._protocols``: one
    ``StunProtocol`` per local candidate, its ``transport`` a ``TurnTransport`` when relayed)."""
    cap = CAPABILITIES["turn_abort"]
    if not cap.available():
        return []
    found: list[TurnTransport] = []
    try:
        for connection in _ice_connections(pc):
            for protocol in list(connection._protocols):
                transport = getattr(protocol, "transport", None)
                if isinstance(transport, TurnTransport) and transport not in found:
                    found.append(transport)
    except Exception as exc:
        cap.lose(exc)
    return found


def abort_turn_allocations(allocations: Sequence[TurnTransport]) -> list[asyncio.Task[Any]]:
    """Give up ``allocations`` at once: abort each socket to the TURN server and cancel its
    tasks (deallocation ``__close_task``, the inner protocol's ``refresh_task``, pending
    ``__send_tasks``). Returns the cancelled tasks, to be awaited. Never raises."""
    cap = CAPABILITIES["turn_abort"]
    cancelled: list[asyncio.Task[Any]] = []
    if not allocations or not cap.available():
        return cancelled
    for allocation in allocations:
        try:
            inner = allocation._TurnTransport__inner_protocol  # type: ignore[attr-defined]
            tasks = [
                allocation._TurnTransport__close_task,  # type: ignore[attr-defined]
                getattr(inner, "refresh_task", None),
                *list(allocation._TurnTransport__send_tasks),  # type: ignore[attr-defined]
            ]
            for task in tasks:
                if isinstance(task, asyncio.Task) and not task.done():
                    task.cancel()
                    cancelled.append(task)
            socket_transport = getattr(inner, "transport", None)
            if isinstance(socket_transport, asyncio.BaseTransport):
                abort = getattr(socket_transport, "abort", None)
                if callable(abort):
                    abort()
                else:  # pragma: no cover - every asyncio socket transport has abort()
                    socket_transport.close()
        except Exception as exc:
            cap.lose(exc)
    return cancelled


# ------------------------------------------------------------------------------- host_addresses

HostAddresses = Callable[[bool, bool], list[str]]


def install_host_address_hook(make: Callable[[HostAddresses], HostAddresses]) -> None:
    """Replace aioice's host-address discovery (``aioice.ice.get_host_addresses``,
    process-wide) by ``make(original)``; idempotent for the same ``make``.

    Raises PrivateApiError when aioice has no such function (no fallback exists)."""
    cap = CAPABILITIES["host_addresses"]
    if not cap.available():
        raise PrivateApiError(
            f"cannot choose ICE host addresses: {cap.lost_reason} (aioice internals changed)"
        )
    current = aioice.ice.get_host_addresses
    if getattr(current, "__fsm_voice_hook__", None) is make:
        return
    hooked = make(current)
    hooked.__fsm_voice_hook__ = make  # type: ignore[attr-defined]
    aioice.ice.get_host_addresses = hooked  # type: ignore[assignment]


# ------------------------------------------------------------------------------- datagram_mute


class MutedDatagramTransport(asyncio.DatagramTransport):
    """Wraps a UDP transport and silently drops every outgoing datagram."""

    def __init__(self, inner: asyncio.DatagramTransport) -> None:
        super().__init__()
        self.inner = inner
        self.dropped = 0

    def sendto(self, data: Any, addr: Any = None) -> None:
        self.dropped += 1

    def close(self) -> None:
        self.inner.close()

    def is_closing(self) -> bool:
        return self.inner.is_closing()

    def abort(self) -> None:
        self.inner.abort()

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self.inner.get_extra_info(name, default)


Muted = list[tuple[StunProtocol, MutedDatagramTransport]]


def mute_datagrams(pc: RTCPeerConnection) -> Muted:
    """Drop every datagram ``pc``'s ICE sockets send from now on (media, DTLS/SCTP, STUN
    answers and consent checks); returns what :func:`unmute_datagrams` needs."""
    cap = CAPABILITIES["datagram_mute"]
    muted: Muted = []
    if not cap.available():
        return muted
    try:
        for connection in _ice_connections(pc):
            for proto in list(connection._protocols):
                inner = getattr(proto, "transport", None)
                if inner is None or isinstance(inner, MutedDatagramTransport):
                    continue
                wrapper = MutedDatagramTransport(inner)
                proto.transport = wrapper
                muted.append((proto, wrapper))
    except Exception as exc:
        cap.lose(exc)
    return muted


def unmute_datagrams(muted: Muted) -> int:
    """Undo :func:`mute_datagrams`; returns the sockets restored."""
    restored = 0
    for proto, wrapper in muted:
        if proto.transport is wrapper:
            proto.transport = wrapper.inner
            restored += 1
    return restored


# ------------------------------------------------------------------------------- stun_codec

if not CAPABILITIES["stun_codec"].available():  # pragma: no cover - other aioice versions
    raise PrivateApiError(
        f"aioice's STUN codec changed: {CAPABILITIES['stun_codec'].lost_reason}"
    )
