"""Health-probing and rotation of STUN/TURN servers before aiortc sees them.

aiortc 1.16 uses only the **first** STUN URL and the **first** usable TURN URL of its
configuration, and an unreachable STUN or TURN server stalls candidate gathering for aioice's
whole 5 s gathering timeout. :class:`IceServerProber` makes a list of several servers useful:

* every configured URL is probed concurrently with a short ``timeout`` (0.5 s by default):
  ``stun:`` with a STUN Binding request over UDP, ``turn:``/``turns:`` with an unauthenticated
  TURN Allocate request over the URL's transport (UDP, TCP, or TLS over TCP) - a ``401`` error
  carrying REALM and NONCE means the server is alive (the credentials themselves are *not*
  checked, that would create an allocation);
* a URL that fails is remembered with the time of failure and not probed again for ``cooldown``
  seconds (30 s by default); it is ordered after every healthy URL meanwhile;
* :meth:`IceServerProber.select` returns the list to hand to aiortc: the chosen healthy STUN URL
  first among STUN URLs, the chosen healthy TURN URL first among TURN URLs. Which healthy URL is
  chosen rotates with the connection ``attempt`` (attempt ``n`` takes the ``n``-th healthy one,
  modulo their number), so a retry after a failure starts from a different server even when the
  failed one still answers probes.

If no STUN URL is healthy, STUN is left out of the list (aiortc would only stall 5 s for a
server-reflexive candidate that never comes; peer-reflexive candidates still work). If no TURN URL
is healthy, the TURN URLs are kept (rotated): a relay may be the only path, and aiortc's own
timeout is then the last word.

Each entry returned carries exactly one URL (with its entry's credentials), so "first" means
the same thing here and in aiortc.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import socket
import ssl
import time
from collections.abc import Callable, Sequence
from typing import Final, Literal

import attrs

from fsm_voice.errors import ConfigError
from fsm_voice.policy import IceServer, IceUrl
from fsm_voice.transport._private import stun  # aioice's STUN codec, behind the version gate

__all__ = ["DEFAULT_COOLDOWN", "DEFAULT_TIMEOUT", "IceServerProber", "IceTarget", "ProbeResult"]

DEFAULT_TIMEOUT: Final = 0.5
"""Seconds one probe may take (name lookup, connect and the request/response together)."""
DEFAULT_COOLDOWN: Final = 30.0
"""Seconds a failed URL is skipped (ordered last, not probed) before it is probed again."""

_RETRANSMIT: Final = (0.0, 0.1, 0.25)
"""Send times (s after the start) of a UDP probe request: survives a lost datagram or two."""
_UDP_TRANSPORT: Final = 0x11000000
"""REQUESTED-TRANSPORT value for UDP relaying (RFC 8656)."""

Kind = Literal["stun", "turn"]


@attrs.frozen
class IceTarget:
    """One URL of one configured :class:`~fsm_voice.policy.IceServer`: the unit probed."""

    server: IceServer
    """A one-URL entry with the credentials of the entry it came from."""
    url: IceUrl
    order: int
    """Position in the configuration (URLs flattened in order)."""

    @property
    def kind(self) -> Kind:
        return "stun" if self.url.scheme == "stun" else "turn"

    @property
    def transport(self) -> Literal["udp", "tcp", "tls"]:
        """What the probe (and aioice) speaks to the server."""
        if self.url.scheme == "turns":
            return "tls"
        if self.url.scheme == "turn" and self.url.transport == "tcp":
            return "tcp"
        return "udp"

    @property
    def aiortc_supported(self) -> str | None:
        """Why aiortc would ignore this URL, or None when it uses it."""
        if self.url.scheme == "turns" and self.url.transport == "udp":
            return "aiortc supports turns: over TCP only (no DTLS transport)"
        if ":" in self.url.host:
            return "aiortc cannot parse IPv6 addresses in STUN/TURN URLs"
        return None


@attrs.frozen
class ProbeResult:
    """Outcome of probing one :class:`IceTarget`."""

    target: IceTarget
    healthy: bool
    detail: str
    """``"ok"``, or why it failed (timeout, refused, error code ...)."""
    rtt: float | None = None
    """Seconds from first send to the answer (healthy probes only)."""
    skipped: bool = False
    """Not probed: still cooling down after an earlier failure (``healthy`` is False)."""


def _targets(servers: Sequence[IceServer]) -> tuple[IceTarget, ...]:
    out: list[IceTarget] = []
    for server in servers:
        if not isinstance(server, IceServer):
            raise ConfigError.invalid("IceServerProber.servers", server, "IceServer instances")
        for url, parsed in zip(server.urls, server.parsed_urls, strict=True):
            single = IceServer(url, username=server.username, credential=server.credential)
            out.append(IceTarget(single, parsed, len(out)))
    return tuple(out)


class IceServerProber:
    """Probe, remember and rotate STUN/TURN servers (see the module docstring).

    ``clock`` (monotonic seconds) dates failures for the cool-down; probe timeouts use the event
    loop's own time. One prober may be shared by successive connections of a transport: its
    memory is what makes a reconnect skip a server that just failed.
    """

    def __init__(
        self,
        servers: Sequence[IceServer],
        *,
        timeout: float = DEFAULT_TIMEOUT,
        cooldown: float = DEFAULT_COOLDOWN,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if isinstance(servers, IceServer) or not isinstance(servers, Sequence):
            raise ConfigError.invalid("IceServerProber.servers", servers, "a sequence of IceServer")
        for name, value, high in (("timeout", timeout, 30.0), ("cooldown", cooldown, 86_400.0)):
            ok = isinstance(value, int | float) and not isinstance(value, bool)
            if not (ok and 0 < value <= high):
                raise ConfigError.invalid(
                    f"IceServerProber.{name}", value, f"a number of seconds in (0, {high:g}]"
                )
        self._servers = tuple(servers)
        self._targets = _targets(self._servers)
        self.timeout = float(timeout)
        self.cooldown = float(cooldown)
        self._clock = clock
        self._failed_at: dict[IceTarget, float] = {}
        self._cursor = 0
        self.last_results: tuple[ProbeResult, ...] = ()
        """The results of the latest :meth:`probe` (skipped targets included)."""

    # ------------------------------------------------------------------------------ state

    @property
    def servers(self) -> tuple[IceServer, ...]:
        """The configured entries, as given."""
        return self._servers

    @property
    def targets(self) -> tuple[IceTarget, ...]:
        """Every configured URL, flattened, in configured order."""
        return self._targets

    def cooling_down(self, target: IceTarget) -> bool:
        """Whether ``target`` failed less than ``cooldown`` seconds ago."""
        failed = self._failed_at.get(target)
        return failed is not None and self._clock() - failed < self.cooldown

    def mark_failed(self, target: IceTarget | IceServer) -> None:
        """Record a failure seen elsewhere (e.g. an allocation refused during ICE). An
        :class:`IceServer` marks each of its URLs."""
        now = self._clock()
        for t in self._match(target):
            self._failed_at[t] = now

    def forget(self) -> None:
        """Drop every remembered failure."""
        self._failed_at.clear()

    def _match(self, target: IceTarget | IceServer) -> list[IceTarget]:
        if isinstance(target, IceTarget):
            return [target]
        urls = set(target.urls)
        return [
            t
            for t in self._targets
            if t.server.urls[0] in urls and t.server.username == target.username
        ]

    def ordered(self, kind: Kind) -> list[IceTarget]:
        """URLs of ``kind``: healthy-or-unknown ones in configured order, then the failed ones
        (cooling down or unusable by aiortc) in configured order."""
        of_kind = [t for t in self._targets if t.kind == kind]
        good = [t for t in of_kind if not self._bad(t)]
        return good + [t for t in of_kind if self._bad(t)]

    def _bad(self, target: IceTarget) -> bool:
        return target.aiortc_supported is not None or self.cooling_down(target)

    # ------------------------------------------------------------------------------ rotation

    @property
    def cursor(self) -> int:
        """The attempt number :meth:`select` uses when called without one."""
        return self._cursor

    def rotate(self) -> int:
        """Move to the next healthy server for the next :meth:`select` without an explicit
        attempt; returns the new cursor."""
        self._cursor += 1
        return self._cursor

    # ------------------------------------------------------------------------------ probing

    async def probe(self, kinds: Sequence[Kind] = ("stun", "turn")) -> list[ProbeResult]:
        """Probe every URL of ``kinds`` not cooling down, concurrently, each within ``timeout``.

        Failures are remembered (dated with ``clock``), successes clear the memory. Returns one
        result per URL of ``kinds``, in configured order.
        """
        wanted = [t for t in self._targets if t.kind in kinds]
        results: dict[IceTarget, ProbeResult] = {}
        to_probe: list[IceTarget] = []
        for t in wanted:
            why = t.aiortc_supported
            if why is not None:
                results[t] = ProbeResult(t, False, why, skipped=True)
            elif self.cooling_down(t):
                results[t] = ProbeResult(t, False, "cooling down after a failure", skipped=True)
            else:
                to_probe.append(t)
        if to_probe:
            async with asyncio.TaskGroup() as tg:
                tasks = [tg.create_task(self._probe_one(t)) for t in to_probe]
            now = self._clock()
            for t, task in zip(to_probe, tasks, strict=True):
                result = task.result()
                results[t] = result
                if result.healthy:
                    self._failed_at.pop(t, None)
                else:
                    self._failed_at[t] = now
        ordered = [results[t] for t in wanted]
        self.last_results = tuple(ordered)
        return ordered

    async def _probe_one(self, target: IceTarget) -> ProbeResult:
        loop = asyncio.get_running_loop()
        start = loop.time()
        try:
            async with asyncio.timeout(self.timeout):
                detail = await _probe(target)
        except TimeoutError:
            return ProbeResult(target, False, f"no answer within {self.timeout:g}s")
        except Exception as exc:  # any failure of the probe means: do not use this server
            return ProbeResult(target, False, f"{type(exc).__name__}: {exc}")
        if detail is not None:
            return ProbeResult(target, False, detail)
        return ProbeResult(target, True, "ok", rtt=loop.time() - start)

    # ------------------------------------------------------------------------------ selection

    async def select(
        self, attempt: int | None = None, *, relay_only: bool = False
    ) -> list[IceServer]:
        """Probe, then return the server list for aiortc's ``RTCConfiguration.iceServers``.

        ``attempt`` (0 for the first connection, +1 per reconnect; :attr:`cursor` when None)
        picks which healthy URL of each kind goes first. ``relay_only`` leaves STUN out (it is
        useless under ``iceTransportPolicy="relay"``). Never None: no servers -> ``[]``.
        """
        if attempt is None:
            attempt = self._cursor
        if isinstance(attempt, bool) or not isinstance(attempt, int) or attempt < 0:
            raise ConfigError.invalid("attempt", attempt, "an integer >= 0")
        kinds: tuple[Kind, ...] = ("turn",) if relay_only else ("stun", "turn")
        if not any(t.kind in kinds for t in self._targets):
            return []
        results = {r.target: r for r in await self.probe(kinds)}
        chosen: dict[Kind, list[IceTarget]] = {}
        for kind in kinds:
            of_kind = [t for t in self._targets if t.kind == kind]
            healthy = [t for t in of_kind if results[t].healthy]
            failed = [t for t in of_kind if not results[t].healthy]
            if healthy:
                k = attempt % len(healthy)
                chosen[kind] = healthy[k:] + healthy[:k] + failed
            elif kind == "turn" and failed:
                usable = [t for t in failed if t.aiortc_supported is None]
                rest = [t for t in failed if t.aiortc_supported is not None]
                k = attempt % len(usable) if usable else 0
                chosen[kind] = usable[k:] + usable[:k] + rest
            else:
                chosen[kind] = []
        firsts = [chosen[k][0] for k in kinds if chosen[k]]
        rest = [t for k in kinds for t in chosen[k][1:]]
        return [t.server for t in firsts + rest]


# ------------------------------------------------------------------------------------ probes


async def _probe(target: IceTarget) -> str | None:
    """None when the server answered as a live STUN/TURN server should; else why not."""
    url = target.url
    if target.kind == "stun":
        request = stun.Message(stun.Method.BINDING, stun.Class.REQUEST)
    else:
        request = stun.Message(
            stun.Method.ALLOCATE,
            stun.Class.REQUEST,
            attributes={"REQUESTED-TRANSPORT": _UDP_TRANSPORT},
        )
    if target.transport == "udp":
        response = await _exchange_udp(url.host, url.port, request)
    else:
        response = await _exchange_stream(
            url.host, url.port, request, tls=target.transport == "tls"
        )
    return _judge(target, response)


def _judge(target: IceTarget, response: stun.Message) -> str | None:
    if target.kind == "stun":
        if response.message_class == stun.Class.RESPONSE:
            return None
        return f"STUN binding refused: {response.attributes.get('ERROR-CODE')}"
    if response.message_class == stun.Class.ERROR:
        code = response.error_code
        if code == 401 and "REALM" in response.attributes and "NONCE" in response.attributes:
            return None  # alive, asks for our long-term credentials
        return f"TURN allocate refused: {response.attributes.get('ERROR-CODE')}"
    return None  # an open relay allocated without credentials: alive (allocation expires)


async def _resolve(host: str, port: int, kind: socket.SocketKind) -> tuple[int, tuple[str, int]]:
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        pass
    else:
        return (socket.AF_INET6 if ip.version == 6 else socket.AF_INET), (host, port)
    loop = asyncio.get_running_loop()
    infos = await loop.getaddrinfo(host, port, type=kind)
    if not infos:
        raise OSError(f"no address for {host!r}")
    family, _, _, _, address = infos[0]
    return family, (str(address[0]), int(address[1]))


class _UdpProbe(asyncio.DatagramProtocol):
    def __init__(self, transaction_id: bytes) -> None:
        self.transaction_id = transaction_id
        self.answer: asyncio.Future[stun.Message] = asyncio.get_running_loop().create_future()

    def datagram_received(self, data: bytes, addr: tuple[str | object, ...]) -> None:
        try:
            message = stun.parse_message(data)
        except ValueError:
            return
        if message.transaction_id == self.transaction_id and not self.answer.done():
            self.answer.set_result(message)

    def error_received(self, exc: Exception) -> None:  # ICMP port unreachable etc.
        if not self.answer.done():
            self.answer.set_exception(exc)


async def _exchange_udp(host: str, port: int, request: stun.Message) -> stun.Message:
    family, address = await _resolve(host, port, socket.SOCK_DGRAM)
    loop = asyncio.get_running_loop()
    transport, protocol = await loop.create_datagram_endpoint(
        lambda: _UdpProbe(request.transaction_id), remote_addr=address, family=family
    )
    payload = bytes(request)
    try:
        start = loop.time()
        for at in _RETRANSMIT:
            delay = start + at - loop.time()
            if delay > 0:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(delay):
                        await asyncio.shield(protocol.answer)
            if protocol.answer.done():
                break
            transport.sendto(payload)
        return await protocol.answer
    finally:
        transport.close()
        if protocol.answer.done() and not protocol.answer.cancelled():
            protocol.answer.exception()  # mark retrieved
        else:
            protocol.answer.cancel()


async def _exchange_stream(
    host: str, port: int, request: stun.Message, *, tls: bool
) -> stun.Message:
    context = ssl.create_default_context() if tls else None  # what aioice's ssl=True does
    reader, writer = await asyncio.open_connection(
        host, port, ssl=context, server_hostname=host if tls else None
    )
    try:
        writer.write(bytes(request))
        await writer.drain()
        while True:  # RFC 6062 framing: STUN messages back to back on the stream
            header = await reader.readexactly(stun.HEADER_LENGTH)
            length = int.from_bytes(header[2:4], "big")
            message = stun.parse_message(header + await reader.readexactly(length))
            if message.transaction_id == request.transaction_id:
                return message
    except asyncio.IncompleteReadError as exc:
        raise OSError("connection closed before an answer") from exc
    finally:
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()
