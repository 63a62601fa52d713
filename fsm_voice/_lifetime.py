"""Shared lifetimes: an owned aiohttp client session, and a local aiohttp service."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from types import TracebackType
from typing import Self

import aiohttp
import anyio
from aiohttp import web

from fsm_voice._http import SafeAppRunner


async def read_limited(request: web.Request, limit: int) -> bytes | None:
    """The request body, or None as soon as it is known to exceed ``limit`` bytes (declared
    length or bytes actually read): an oversized body is never buffered whole."""
    if request.content_length is not None and request.content_length > limit:
        return None
    chunks: list[bytes] = []
    total = 0
    while chunk := await request.content.readany():
        total += len(chunk)
        if total > limit:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


class OwnedHttpClient:
    """Uses the given :class:`aiohttp.ClientSession`, or creates (and later closes) its own.

    Own sessions open a fresh TCP connection per request: requests here are rare (one per
    connection attempt or key) and a pooled keep-alive connection can belong to an address that
    no longer works after a network change, which would stall a restart until its timeout.
    """

    def _init_http(self, session: aiohttp.ClientSession | None) -> None:
        self._session = session
        self._owns_session = session is None
        self._closed = False

    def _client(self) -> aiohttp.ClientSession:
        if self._closed:
            raise RuntimeError(f"{type(self).__name__} is closed")
        if self._session is None:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(force_close=True)
            )
        return self._session

    async def aclose(self) -> None:
        """Close the owned HTTP session (idempotent); a given session is left open."""
        self._closed = True
        session, self._session = self._session, None
        if session is not None and self._owns_session:
            await session.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()


class LocalService:
    """``start``/``stop`` as an async context manager and as ``serve_forever``; ``base_url``
    from ``host`` and the port bound by ``start`` (``_bound_port``, None when stopped)."""

    host: str
    port: int
    _bound_port: int | None
    _runner: web.AppRunner | None
    shutdown_timeout: float = 2.0
    """Seconds in-flight requests get to finish on stop (then they are cancelled)."""
    header_timeout: float = 20.0
    """Seconds a connection may take to send a complete request head (slow-loris bound); an
    idle keep-alive connection is closed after as long (longer than aiohttp clients' 15 s pool
    keep-alive, so a client never reuses a connection the server just closed)."""

    async def _serve_app(self, app: web.Application) -> None:
        """Bind ``app`` on ``host:port`` (port 0: any free one); on failure nothing stays open.
        Malformed requests are answered without echoing them (:class:`SafeAppRunner`)."""
        runner = SafeAppRunner(
            app,
            shutdown_timeout=self.shutdown_timeout,
            access_log=None,
            keepalive_timeout=self.header_timeout,
        )
        await runner.setup()
        try:
            await web.TCPSite(runner, self.host, self.port).start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        self._bound_port = int(runner.addresses[0][1])

    @property
    def base_url(self) -> str:
        if self._bound_port is None:
            raise RuntimeError(f"{type(self).__name__} is not started")
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self._bound_port}"

    async def start(self) -> None:
        raise NotImplementedError

    async def stop(self) -> None:
        raise NotImplementedError

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    async def serve_forever(self, ready: Callable[[str], None] | None = None) -> None:
        """Start, report ``base_url`` to ``ready``, run until cancelled, then stop."""
        await self.start()
        try:
            if ready is not None:
                ready(self.base_url)
            await asyncio.Event().wait()
        finally:
            with anyio.CancelScope(shield=True):  # the stop that cancelled us must not cut it
                await self.stop()
