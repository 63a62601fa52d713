"""A user-space UDP relay adding delay, jitter and loss (``tc netem`` is not available here).

Used by the namespace tests (see ``tests/netns.py``) in front of the local peer: the peer agent
starts one relay per ICE host candidate of its answer, listening on a second address of the peer
namespace (``10.213.N.4``), and rewrites the candidate in the answer SDP to point at the relay.
The client only ever learns the relay's address; the peer sees the client as a peer-reflexive
candidate (the relay's upstream socket). The test blocks the direct path (UDP from the peer's
own address is dropped in the client namespace), so every media, DTLS, SCTP and STUN datagram of
the call crosses the relay both ways::

    client 10.213.N.1:c <--> relay 10.213.N.4:r ==(upstream socket per client)==> peer 10.213.N.2:p

Each datagram is delayed by ``delay + uniform(0, jitter)`` seconds (independently, so a large
jitter also reorders, as a real jittery path does) and dropped with probability ``loss``. The
parameters can be changed while the relay runs (:meth:`UdpRelay.configure`).

Standalone: ``python tests/udp_relay.py --listen 10.213.1.4:5000 --target 10.213.1.2:6000
--delay 0.2 --jitter 0.1`` (runs until interrupted; prints its counters on exit).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import random
from collections.abc import Callable
from typing import Any

Address = tuple[str, int]


class _Endpoint(asyncio.DatagramProtocol):
    def __init__(self, on_datagram: Callable[[bytes, Address], None]) -> None:
        self._on_datagram = on_datagram

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self._on_datagram(data, (addr[0], addr[1]))

    def error_received(self, exc: Exception) -> None:  # ICMP errors: keep relaying
        pass


class UdpRelay:
    """Relay datagrams between clients of ``listen`` and ``target``, with delay/jitter/loss."""

    def __init__(
        self,
        listen: Address,
        target: Address,
        *,
        delay: float = 0.0,
        jitter: float = 0.0,
        loss: float = 0.0,
        rng: random.Random | None = None,
    ) -> None:
        self.listen = listen
        self.target = target
        self._rng = rng or random.Random()
        self.delay = self.jitter = self.loss = 0.0
        self.configure(delay=delay, jitter=jitter, loss=loss)
        self._front: asyncio.DatagramTransport | None = None
        self._upstream: dict[Address, asyncio.DatagramTransport] = {}
        self._opening: set[Address] = set()
        self._pending: set[asyncio.TimerHandle] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self.forwarded = 0
        self.dropped = 0

    def configure(
        self, *, delay: float | None = None, jitter: float | None = None, loss: float | None = None
    ) -> None:
        """Change the impairment (``None`` keeps a value)."""
        if delay is not None:
            if not 0 <= delay <= 10:
                raise ValueError(f"delay must be in [0, 10] s, got {delay!r}")
            self.delay = float(delay)
        if jitter is not None:
            if not 0 <= jitter <= 10:
                raise ValueError(f"jitter must be in [0, 10] s, got {jitter!r}")
            self.jitter = float(jitter)
        if loss is not None:
            if not 0 <= loss <= 1:
                raise ValueError(f"loss must be in [0, 1], got {loss!r}")
            self.loss = float(loss)

    @property
    def address(self) -> Address:
        """The bound ``(host, port)`` clients send to."""
        if self._front is None:
            raise RuntimeError("relay not started")
        host, port = self._front.get_extra_info("sockname")[:2]
        return (host, port)

    async def start(self) -> UdpRelay:
        loop = asyncio.get_running_loop()
        self._front, _ = await loop.create_datagram_endpoint(
            lambda: _Endpoint(self._from_client), local_addr=self.listen
        )
        return self

    def close(self) -> None:
        for handle in self._pending:
            handle.cancel()
        self._pending.clear()
        for task in self._tasks:
            task.cancel()
        for tr in self._upstream.values():
            tr.close()
        self._upstream.clear()
        if self._front is not None:
            self._front.close()
            self._front = None

    async def __aenter__(self) -> UdpRelay:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        self.close()

    # -- forwarding ------------------------------------------------------------------------------
    def _schedule(self, send: Callable[[], None]) -> None:
        if self.loss and self._rng.random() < self.loss:
            self.dropped += 1
            return
        wait = self.delay + (self._rng.uniform(0.0, self.jitter) if self.jitter else 0.0)
        if wait <= 0:
            send()
            self.forwarded += 1
            return
        loop = asyncio.get_running_loop()
        handle: asyncio.TimerHandle

        def fire() -> None:
            self._pending.discard(handle)
            send()

        handle = loop.call_later(wait, fire)
        self._pending.add(handle)
        self.forwarded += 1

    def _from_client(self, data: bytes, client: Address) -> None:
        upstream = self._upstream.get(client)
        if upstream is None:
            # First datagram of this client: open its upstream socket, then forward the datagram
            # (what arrives meanwhile is dropped; ICE retransmits).
            if client not in self._opening:
                self._opening.add(client)
                task = asyncio.get_running_loop().create_task(self._open_upstream(client, data))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
            return

        def send() -> None:
            with contextlib.suppress(OSError):
                upstream.sendto(data)

        self._schedule(send)

    async def _open_upstream(self, client: Address, first: bytes) -> None:
        loop = asyncio.get_running_loop()

        def back(data: bytes, _addr: Address) -> None:
            front = self._front
            if front is None:
                return

            def send() -> None:
                with contextlib.suppress(OSError):
                    front.sendto(data, client)

            self._schedule(send)

        transport, _ = await loop.create_datagram_endpoint(
            lambda: _Endpoint(back), local_addr=(self.listen[0], 0), remote_addr=self.target
        )
        if self._front is None:
            transport.close()
            return
        self._opening.discard(client)
        self._upstream[client] = transport
        self._from_client(first, client)

    def stats(self) -> dict[str, Any]:
        return {
            "listen": list(self.address) if self._front is not None else None,
            "target": list(self.target),
            "delay": self.delay,
            "jitter": self.jitter,
            "loss": self.loss,
            "clients": len(self._upstream),
            "forwarded": self.forwarded,
            "dropped": self.dropped,
        }


def _address(text: str) -> Address:
    host, _, port = text.rpartition(":")
    return (host, int(port))


async def _main(args: argparse.Namespace) -> None:
    relay = UdpRelay(
        _address(args.listen),
        _address(args.target),
        delay=args.delay,
        jitter=args.jitter,
        loss=args.loss,
    )
    async with relay:
        print(f"relay {relay.address} -> {relay.target}", flush=True)
        try:
            await asyncio.Event().wait()
        finally:
            print(relay.stats(), flush=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--listen", required=True, help="host:port to listen on")
    parser.add_argument("--target", required=True, help="host:port to forward to")
    parser.add_argument("--delay", type=float, default=0.0, help="seconds, each way")
    parser.add_argument("--jitter", type=float, default=0.0, help="extra uniform [0, j) s")
    parser.add_argument("--loss", type=float, default=0.0, help="drop probability")
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_main(parser.parse_args()))
