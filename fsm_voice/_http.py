"""HTTP hardening shared by the clients (token provider, signaling) and the local services
(broker, peer).

* :func:`read_response` - a response body read to its end in chunks (a body that arrives in
  several TCP segments is read whole) and refused as soon as it exceeds a limit, counted after
  decompression (a gzip bomb is stopped at the limit, never inflated whole).
* :class:`SafeAppRunner` - an :class:`aiohttp.web.AppRunner` whose malformed-request answers
  (NUL byte, bare LF, obs-fold, oversized header line ...) never echo the request: aiohttp's
  default puts the offending header line, secrets included, in the 400 body and logs it with a
  traceback. Here the 400 carries a fixed JSON error and the log line names the error type only.
  ``keepalive_timeout`` doubles as the request-head timeout: aiohttp closes a connection whose
  request head is not complete within it (slow-loris), counted from the connection or the last
  response.
"""

from __future__ import annotations

import http
import logging
from typing import Any

import aiohttp
from aiohttp import web
from aiohttp.web_request import BaseRequest

__all__ = ["SafeAppRunner", "read_response"]

log = logging.getLogger("fsm_voice.http")


async def read_response(response: aiohttp.ClientResponse, limit: int) -> bytes | None:
    """The whole (decoded) body of ``response``, or None as soon as it exceeds ``limit`` bytes
    (declared length or bytes read after decompression); the rest is never read."""
    if response.content_length is not None and response.content_length > limit and not (
        response.headers.get("Content-Encoding")
    ):
        return None
    chunks: list[bytes] = []
    total = 0
    while chunk := await response.content.readany():
        total += len(chunk)
        if total > limit:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


class _QuietRequestHandler(web.RequestHandler):
    """Answers unparseable requests without echoing them (see the module docstring)."""

    def handle_error(
        self,
        request: BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        if status >= 500:  # a handler bug, not request parsing: keep aiohttp's report
            return super().handle_error(request, status, exc, message)
        log.warning(
            "malformed request from %s refused (%d, %s)",
            request.remote,
            status,
            type(exc).__name__ if exc is not None else "error",
        )
        if request.writer.output_size > 0:
            raise ConnectionError("response already started; cannot send the error")
        try:
            phrase = http.HTTPStatus(status).phrase
        except ValueError:
            phrase = "Bad Request"
        resp = web.json_response(
            {
                "error": {
                    "message": f"Malformed HTTP request ({phrase}).",
                    "type": "invalid_request_error",
                    "param": None,
                    "code": "malformed_request",
                }
            },
            status=status,
        )
        resp.force_close()
        return resp


class _QuietServer(web.Server):
    def __call__(self) -> web.RequestHandler:
        return _QuietRequestHandler(self, loop=self._loop, **self._kwargs)


class SafeAppRunner(web.AppRunner):
    """An :class:`aiohttp.web.AppRunner` serving with :class:`_QuietRequestHandler`."""

    def __init__(self, app: web.Application, **kwargs: Any) -> None:
        super().__init__(app, **kwargs)

    async def _make_server(self) -> web.Server:
        server = await super()._make_server()
        # aiohttp builds the Server itself (Application._make_handler); only its protocol
        # factory changes: every connection gets the quiet handler.
        server.__class__ = _QuietServer
        return server
