"""HTTP signaling: SDP offer -> answer, wire-compatible with OpenAI Realtime WebRTC.

``POST {base_url}/v1/realtime/calls[?model=...]`` with ``Content-Type: application/sdp``,
``Authorization: Bearer <key>`` and the offer SDP as body; ``201 Created`` (or ``200``) carries
the answer SDP as body and the call URL in ``Location`` (its last path segment is the call id).
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import urllib.parse
from collections.abc import Awaitable, Callable

import aiohttp
import attrs
from aiortc.sdp import SessionDescription

from fsm_voice._http import read_response
from fsm_voice._lifetime import OwnedHttpClient
from fsm_voice._text import printable
from fsm_voice.errors import (
    ConfigError,
    ErrorSource,
    Severity,
    VoiceError,
    classify_exception,
    classify_http,
)
from fsm_voice.ports import SdpAnswer

__all__ = [
    "CALLS_PATH",
    "MAX_ANSWER_BYTES",
    "HttpSignaling",
    "TokenSource",
    "call_id_from_location",
    "check_answer_sdp",
]

log = logging.getLogger(__name__)

CALLS_PATH = "/v1/realtime/calls"
MAX_ANSWER_BYTES = 128 * 1024
"""Default bound of an answer (or error) body, counted after decompression: a real SDP answer
is a few KB."""

TokenSource = Callable[[], Awaitable[str]] | str
"""A static key, or an ``async () -> str`` called for a fresh (ephemeral) key per exchange."""


def _shown(url: object) -> object:
    """``url`` as an error may show it: '<redacted>' when it may hold a secret (credentials,
    a query or a fragment)."""
    return "<redacted>" if isinstance(url, str) and any(c in url for c in "@?#") else url


def _check_base_url(base_url: object) -> str:
    if not isinstance(base_url, str) or not base_url.strip():
        raise ConfigError.invalid(
            "base_url", base_url, "an http(s) URL such as 'https://api.openai.com'"
        )
    url = base_url.strip()
    try:
        parts = urllib.parse.urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError:
        raise ConfigError.invalid(
            "base_url", _shown(base_url), "an http(s) URL such as 'https://api.openai.com'"
        ) from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError.invalid(
            "base_url",
            _shown(base_url),
            "an http:// or https:// URL with a host, e.g. 'https://api.openai.com'",
        )
    if parts.username or parts.password:
        raise ConfigError.invalid(
            "base_url", "<redacted>", "a URL without credentials (pass the key as token)"
        )
    if parts.query or parts.fragment:
        raise ConfigError.invalid("base_url", "<redacted>", "a URL without query or fragment")
    return url.rstrip("/")


def _invalid_answer(status: int, why: str) -> VoiceError:
    return VoiceError(
        Severity.RECOVERABLE,
        "invalid_answer",
        printable(f"HTTP {status} answer {why}", limit=300),
        ErrorSource.SIGNALING,
        http_status=status,
    )


def check_answer_sdp(sdp: str, status: int = 201) -> str:
    """``sdp`` if it is an SDP description aiortc can parse, else a :class:`VoiceError`
    ``invalid_answer`` (never the parser's own AssertionError / IndexError / ValueError)."""
    if not sdp.lstrip().startswith("v="):
        raise _invalid_answer(status, f"is not SDP: {sdp[:120]!r}")
    if "\x00" in sdp:
        raise _invalid_answer(status, "contains a NUL character")
    try:
        SessionDescription.parse(sdp)
    except Exception as exc:  # aiortc's parser asserts and indexes without checking
        raise _invalid_answer(
            status, f"is malformed SDP ({type(exc).__name__}: {str(exc)[:120]})"
        ) from None
    return sdp


def call_id_from_location(location: str | None) -> str | None:
    """``/v1/realtime/calls/rtc_abc`` or an absolute URL -> ``rtc_abc``; None when absent."""
    if not location:
        return None
    path = urllib.parse.urlsplit(location.strip()).path
    segment = path.rstrip("/").rsplit("/", 1)[-1]
    return urllib.parse.unquote(segment) or None


HANGUP_TIMEOUT = 2.0
"""Seconds one hangup request may take (key included) before it is given up."""


class HttpSignaling(OwnedHttpClient):
    """:class:`fsm_voice.ports.Signaling` over HTTP (OpenAI Realtime ``/v1/realtime/calls``).

    ``token`` is a static key or an async callable awaited for every exchange (ephemeral keys).
    The key is sent only in the ``Authorization`` header and never logged. When ``session`` is
    not given, an :class:`aiohttp.ClientSession` is created on first use and owned (closed by
    :meth:`aclose` / ``async with``). ``timeout`` bounds one whole exchange (seconds).
    """

    def __init__(
        self,
        base_url: str,
        token: TokenSource,
        *,
        model: str | None = None,
        session: aiohttp.ClientSession | None = None,
        timeout: float = 10.0,
        max_answer_bytes: int = MAX_ANSWER_BYTES,
    ) -> None:
        self.base_url = _check_base_url(base_url)
        if (
            isinstance(max_answer_bytes, bool)
            or not isinstance(max_answer_bytes, int)
            or max_answer_bytes <= 0
        ):
            raise ConfigError.invalid("max_answer_bytes", max_answer_bytes, "a positive int")
        self.max_answer_bytes = max_answer_bytes
        if not (isinstance(token, str) and token) and not callable(token):
            raise ConfigError.invalid(
                "token", "<redacted>", "a non-empty key string or an async callable returning one"
            )
        if model is not None and (not isinstance(model, str) or not model.strip()):
            raise ConfigError.invalid("model", model, "a non-empty model name or None")
        if isinstance(timeout, bool) or not isinstance(timeout, int | float) or not timeout > 0:
            raise ConfigError.invalid("timeout", timeout, "a positive number of seconds")
        self._token = token
        self.model = model
        self.timeout = float(timeout)
        self.extra_headers: dict[str, str] = {}
        """Sent with every exchange besides ``Authorization`` (e.g. a broker's client id)."""
        self._init_http(session)
        query = f"?{urllib.parse.urlencode({'model': model})}" if model else ""
        self.url = f"{self.base_url}{CALLS_PATH}{query}"

    def __repr__(self) -> str:  # never show the token
        return f"HttpSignaling({self.url!r})"

    async def _key(self) -> str:
        if isinstance(self._token, str):
            return self._token
        value = self._token()
        key = await value if inspect.isawaitable(value) else value
        if not isinstance(key, str) or not key:
            raise VoiceError(
                Severity.FATAL,
                "invalid_token",
                f"token provider returned {type(key).__name__}, expected a non-empty str",
                ErrorSource.CONFIG,
            )
        return key

    async def exchange(self, offer_sdp: str) -> SdpAnswer:
        """POST the offer, return the answer. Raises a classified :class:`VoiceError`.

        A 401 with a refreshable token provider (one with an ``invalidate()`` method, such as
        :class:`fsm_voice.tokens.EphemeralKeyProvider`) is retried once with a fresh key: an
        ephemeral key that expired (e.g. during a reconnect) is refreshed, not fatal.
        """
        status, body, resp_headers, location = await self._post(offer_sdp)
        invalidate = getattr(self._token, "invalidate", None)
        if status == 401 and callable(invalidate):
            log.info("signaling got 401; refreshing the ephemeral key and retrying once")
            invalidate()
            status, body, resp_headers, location = await self._post(offer_sdp)
        if body is None:
            raise _invalid_answer(status, f"body is larger than {self.max_answer_bytes} bytes")
        if status not in (200, 201):
            err = classify_http(status, body, resp_headers)
            err = attrs.evolve(err, message=printable(err.message))
            log.info("signaling POST %s refused: %s", self.url, err)
            raise err
        sdp = check_answer_sdp(body.decode("utf-8", errors="replace"), status)
        call_id = call_id_from_location(location)
        log.debug("signaling answer received (call_id=%s)", call_id)
        return SdpAnswer(sdp=sdp, call_id=call_id)

    async def _post(
        self, offer_sdp: str
    ) -> tuple[int, bytes | None, dict[str, str], str | None]:
        return await self._send(offer_sdp.encode(), "application/sdp")

    async def _send(
        self, data: bytes, content_type: str
    ) -> tuple[int, bytes | None, dict[str, str], str | None]:
        """POST ``data`` to :attr:`url` with a fresh key: (status, body or None when too large,
        headers, Location). Raises a classified :class:`VoiceError` when no answer came."""
        try:
            key = await self._key()
        except VoiceError:
            raise
        except Exception as exc:
            err = classify_exception(exc)
            raise VoiceError(
                err.severity,
                "token_error",
                f"token provider failed: {err.message}",
                ErrorSource.SIGNALING,
            ) from exc
        headers = {**self.extra_headers, "Content-Type": content_type,
                   "Authorization": f"Bearer {key}"}
        client = self._client()
        try:
            async with client.post(
                self.url,
                data=data,
                headers=headers,
                timeout=aiohttp.ClientTimeout(total=self.timeout),
                allow_redirects=False,
            ) as response:
                return (
                    response.status,
                    await read_response(response, self.max_answer_bytes),
                    dict(response.headers),
                    response.headers.get("Location"),
                )
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            err = classify_exception(exc)
            log.info("signaling POST %s failed: %s", self.url, err)
            raise err from exc

    async def hangup(self, call_id: str | None, *, timeout: float = HANGUP_TIMEOUT) -> bool:
        """End ``call_id`` at the server: ``POST {base_url}/v1/realtime/calls/{id}/hangup``.

        Bounded by ``timeout`` and never raises (cancellation aside): a failure is logged and
        gives False; True once the server confirmed (2xx). Works after :meth:`aclose` too (with
        a one-off HTTP session), so a close that runs late can still hang up.
        """
        if not call_id:
            return False
        url = f"{self.base_url}{CALLS_PATH}/{urllib.parse.quote(call_id, safe='')}/hangup"
        try:
            async with asyncio.timeout(timeout):
                headers = {"Authorization": f"Bearer {await self._key()}"}
                if not self._closed:
                    return await _post_hangup(self._client(), url, headers)
                async with aiohttp.ClientSession(
                    connector=aiohttp.TCPConnector(force_close=True)
                ) as client:
                    return await _post_hangup(client, url, headers)
        except Exception as exc:  # TimeoutError included; never the caller's problem
            log.info("hangup of call %s failed: %r", call_id, exc)
            return False


async def _post_hangup(client: aiohttp.ClientSession, url: str, headers: dict[str, str]) -> bool:
    async with client.post(url, headers=headers, allow_redirects=False) as response:
        if 200 <= response.status < 300:
            log.debug("hung up %s", url)
            return True
        log.info("hangup %s refused: HTTP %d", url, response.status)
        return False
