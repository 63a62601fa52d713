"""Token providers: where :class:`~fsm_voice.signaling.HttpSignaling` gets its key.

A provider is an ``async () -> str`` (pass it as ``token=``) with an ``invalidate()`` method:
after it the next call fetches a fresh key. :class:`~fsm_voice.signaling.HttpSignaling` calls it
itself when the backend answers 401 and retries the exchange once, so an ephemeral key that
expired (e.g. during a reconnect) is refreshed, not fatal; a second 401 is.

* :class:`StaticKey` - one fixed key (tests, development); not refreshable (no
  ``invalidate()``), so a 401 is not retried.
* :class:`EphemeralKeyProvider` - client side: asks a token broker (:mod:`fsm_voice.broker`)
  for short-lived ``ek_`` keys with the app's client credentials, caches each key until
  ``expires_at - refresh_margin``.
* :class:`OpenAIClientSecrets` - server side: mints ``ek_`` keys directly from
  ``POST {api_base}/v1/realtime/client_secrets`` with the real API key (what the broker uses
  upstream). As a provider it caches like :class:`EphemeralKeyProvider`; :meth:`mint` always
  mints a new one.

Failures are classified :class:`~fsm_voice.errors.VoiceError`\\ s (source ``SIGNALING`` for
HTTP statuses, ``NETWORK`` for connection problems). No key, client secret or API key is ever
logged, put in a ``repr`` or in an error message: messages go through
:func:`~fsm_voice.errors.redact`, and the providers scrub their own credential from anything
the remote end sends back.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import math
import time
import urllib.parse
from collections.abc import Callable, Mapping
from typing import Any, Final, Protocol, runtime_checkable

import aiohttp
import attrs

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

__all__ = [
    "CLIENT_SECRETS_PATH",
    "EphemeralKey",
    "EphemeralKeyProvider",
    "KeyProvider",
    "OpenAIClientSecrets",
    "StaticKey",
    "check_api_base",
    "key_fingerprint",
]

log = logging.getLogger(__name__)

CLIENT_SECRETS_PATH: Final = "/v1/realtime/client_secrets"
MAX_RESPONSE_BYTES: Final = 256 * 1024


def key_fingerprint(key: str) -> str:
    """A short, non-secret identifier of a key: the first 12 hex digits of its SHA-256
    (48 bits: enough to correlate log lines and audit rows, useless to recover the key)."""
    return hashlib.sha256(key.encode()).hexdigest()[:12]


@runtime_checkable
class KeyProvider(Protocol):
    """An async key source for :class:`~fsm_voice.signaling.HttpSignaling` (``token=``)."""

    async def __call__(self) -> str: ...

    def invalidate(self) -> None:
        """Forget the cached key: the next call fetches a fresh one."""


@attrs.frozen
class EphemeralKey:
    """An ephemeral key and when it expires (epoch seconds). ``value`` is never in ``repr``."""

    value: str = attrs.field(repr=False)
    expires_at: float
    session_id: str | None = None
    session: Mapping[str, Any] | None = attrs.field(default=None, repr=False, eq=False)

    @property
    def fingerprint(self) -> str:
        return key_fingerprint(self.value)


class StaticKey:
    """A fixed key (development, tests) that never shows in ``repr``. Deliberately without
    ``invalidate()``: there is nothing fresher to fetch, so signaling does not retry a 401."""

    def __init__(self, key: str) -> None:
        if not isinstance(key, str) or not key.strip():
            raise ConfigError.invalid("key", "<redacted>", "a non-empty key string")
        self._key = key.strip()

    def __repr__(self) -> str:
        return f"StaticKey(<{key_fingerprint(self._key)}>)"

    async def __call__(self) -> str:
        return self._key


def _check_url(name: str, url: object, *, path_allowed: bool) -> str:
    expected = "an http:// or https:// URL with a host" + (
        "" if path_allowed else " and no path, e.g. 'https://api.openai.com'"
    )
    if not isinstance(url, str) or not url.strip():
        raise ConfigError.invalid(name, url, expected)
    text = url.strip()
    try:
        parts = urllib.parse.urlsplit(text)
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError:
        raise ConfigError.invalid(name, url, expected) from None
    if parts.username or parts.password:
        raise ConfigError.invalid(name, "<redacted>", "a URL without credentials")
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.fragment:
        raise ConfigError.invalid(name, url, expected)
    if not path_allowed and (parts.path not in ("", "/") or parts.query):
        raise ConfigError.invalid(name, url, expected)
    return text.rstrip("/") if not path_allowed else text


def check_api_base(url: object) -> str:
    """Validate an API base URL (``http(s)://host[:port]``, no path): the normalised URL, or
    :class:`~fsm_voice.errors.ConfigError`."""
    return _check_url("api_base", url, path_allowed=False)


def _check_positive(name: str, value: object, *, zero: bool = False) -> float:
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or value < 0
        or (value == 0 and not zero)
    ):
        raise ConfigError.invalid(name, value, "a positive number of seconds")
    return float(value)


class _CachingProvider(OwnedHttpClient):
    """Caches one key until ``expires_at - refresh_margin``; one fetch at a time (concurrent
    callers share it). Subclasses implement :meth:`_fetch`."""

    def __init__(
        self,
        *,
        session: aiohttp.ClientSession | None,
        refresh_margin: float,
        now: Callable[[], float],
        timeout: float,
        secret: str,
    ) -> None:
        self.refresh_margin = _check_positive("refresh_margin", refresh_margin, zero=True)
        self.timeout = _check_positive("timeout", timeout)
        self._now = now
        self._init_http(session)
        self._secret = secret
        self._cached: EphemeralKey | None = None
        self._lock = asyncio.Lock()
        self.fetches = 0
        """How many keys were fetched (for tests and metrics)."""

    # -- caching -------------------------------------------------------------------------

    def _fresh(self, key: EphemeralKey | None) -> bool:
        return key is not None and self._now() < key.expires_at - self.refresh_margin

    async def __call__(self) -> str:
        return (await self.key()).value

    async def key(self) -> EphemeralKey:
        """The cached key if fresh enough, else a newly fetched one."""
        cached = self._cached
        if cached is not None and self._fresh(cached):
            return cached
        async with self._lock:
            cached = self._cached
            if cached is not None and self._fresh(cached):
                return cached  # another caller fetched it while we waited
            key = await self._fetch()
            self.fetches += 1
            if not self._fresh(key):
                log.warning(
                    "%s: key %s expires in %.0f s, within refresh_margin=%.0f s",
                    type(self).__name__,
                    key.fingerprint,
                    key.expires_at - self._now(),
                    self.refresh_margin,
                )
            self._cached = key
            return key

    def invalidate(self) -> None:
        """Forget the cached key (e.g. after a 401): the next call fetches a fresh one."""
        self._cached = None

    async def _fetch(self) -> EphemeralKey:
        raise NotImplementedError

    # -- HTTP ----------------------------------------------------------------------------

    def _scrub(self, text: str) -> str:
        return text.replace(self._secret, "***") if self._secret else text

    def _error(self, err: VoiceError, what: str) -> VoiceError:
        """``err`` with the provider's own secret scrubbed (even if it does not look like one)."""
        return attrs.evolve(err, message=printable(f"{what}: {self._scrub(err.message)}"))

    async def _post_json(
        self, url: str, headers: Mapping[str, str], body: Mapping[str, Any] | None, what: str
    ) -> Mapping[str, Any]:
        client = self._client()
        try:
            async with client.post(
                url,
                json=dict(body) if body is not None else None,
                headers=dict(headers),
                timeout=aiohttp.ClientTimeout(total=self.timeout),
                allow_redirects=False,
            ) as response:
                # The whole body, however many TCP segments it arrives in; bounded after
                # decompression (a gzip bomb stops at the limit).
                raw = await read_response(response, MAX_RESPONSE_BYTES)
                status = response.status
                resp_headers = dict(response.headers)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            err = self._error(classify_exception(exc), what)
            log.info("%s failed: %s", what, err)
            raise err from None
        if raw is None:
            raise VoiceError(
                Severity.RECOVERABLE,
                "invalid_token_response",
                f"{what}: HTTP {status} body larger than {MAX_RESPONSE_BYTES} bytes",
                ErrorSource.SIGNALING,
                http_status=status,
            )
        text = raw.decode("utf-8", errors="replace")
        if status != 200 and status != 201:
            # Only error text is scrubbed: a success body is parsed as sent (scrubbing a weak
            # secret such as "1" out of it would corrupt the key or its expiry).
            err = self._error(classify_http(status, self._scrub(text), resp_headers), what)
            log.info("%s refused: %s", what, err)
            raise err
        try:
            data = json.loads(text)
        except (ValueError, RecursionError):
            data = None
        if not isinstance(data, dict):
            raise VoiceError(
                Severity.RECOVERABLE,
                "invalid_token_response",
                f"{what}: HTTP {status} body is not a JSON object",
                ErrorSource.SIGNALING,
                http_status=status,
            )
        return data

    @staticmethod
    def _parse_key(data: Mapping[str, Any], what: str) -> EphemeralKey:
        value = data.get("value")
        expires_at = data.get("expires_at")
        if (
            not isinstance(value, str)
            or not value.strip()
            or any(c.isspace() for c in value)
            or isinstance(expires_at, bool)
            or not isinstance(expires_at, int | float)
            or not math.isfinite(expires_at)
        ):
            raise VoiceError(
                Severity.RECOVERABLE,
                "invalid_token_response",
                f"{what}: response lacks a key 'value' or a numeric 'expires_at'",
                ErrorSource.SIGNALING,
            )
        session = data.get("session")
        session_id = data.get("session_id")
        if not isinstance(session_id, str) and isinstance(session, Mapping):
            session_id = session.get("id")
        return EphemeralKey(
            value=value,
            expires_at=float(expires_at),
            session_id=session_id if isinstance(session_id, str) else None,
            session=session if isinstance(session, Mapping) else None,
        )

    # -- lifetime ------------------------------------------------------------------------

    async def aclose(self) -> None:
        """Forget the cached key and close the owned HTTP session (idempotent)."""
        self._cached = None
        await super().aclose()


class EphemeralKeyProvider(_CachingProvider):
    """Ephemeral keys from a token broker (client side).

    ``POST token_url`` with ``Authorization: Bearer <client_secret>`` and ``X-Client-Id:
    <client_id>``, optional JSON body ``{"expires_after": {"anchor": "created_at", "seconds":
    expires_after}}``; expects ``{"value", "expires_at", "session_id"?}``. The key is cached
    until ``expires_at - refresh_margin`` (``now`` is an epoch-seconds clock); :meth:`invalidate`
    forces a refresh. ``session``: an ``aiohttp.ClientSession`` to use (else one is owned).
    """

    def __init__(
        self,
        token_url: str,
        *,
        client_id: str,
        client_secret: str,
        session: aiohttp.ClientSession | None = None,
        refresh_margin: float = 10.0,
        now: Callable[[], float] = time.time,
        timeout: float = 10.0,
        expires_after: int | None = None,
    ) -> None:
        if (
            not isinstance(client_id, str)
            or not client_id.strip()
            or not all(" " <= c <= "~" for c in client_id.strip())  # an X-Client-Id header
        ):
            raise ConfigError.invalid(
                "client_id", client_id, "a non-empty client id of printable ASCII"
            )
        if (
            not isinstance(client_secret, str)
            or not client_secret.strip()
            or not all(" " <= c <= "~" for c in client_secret.strip())
        ):
            raise ConfigError.invalid(
                "client_secret", "<redacted>", "a non-empty secret of printable ASCII"
            )
        if expires_after is not None and (
            isinstance(expires_after, bool)
            or not isinstance(expires_after, int)
            or expires_after <= 0
        ):
            raise ConfigError.invalid("expires_after", expires_after, "a positive int or None")
        super().__init__(
            session=session,
            refresh_margin=refresh_margin,
            now=now,
            timeout=timeout,
            secret=client_secret.strip(),
        )
        self.token_url = _check_url("token_url", token_url, path_allowed=True)
        self.client_id = client_id.strip()
        self.expires_after = expires_after

    def __repr__(self) -> str:
        return f"EphemeralKeyProvider({self.token_url!r}, client_id={self.client_id!r})"

    async def _fetch(self) -> EphemeralKey:
        what = "token request"
        body = (
            {"expires_after": {"anchor": "created_at", "seconds": self.expires_after}}
            if self.expires_after is not None
            else None
        )
        headers = {"Authorization": f"Bearer {self._secret}", "X-Client-Id": self.client_id}
        data = await self._post_json(self.token_url, headers, body, what)
        key = self._parse_key(data, what)
        log.debug("ephemeral key %s fetched (expires_at=%.0f)", key.fingerprint, key.expires_at)
        return key


class OpenAIClientSecrets(_CachingProvider):
    """Mints client secrets from ``POST {api_base}/v1/realtime/client_secrets`` (server side).

    ``api_key`` is the real API key: keep it on servers. ``session_config`` is the ``session``
    object sent with every request (e.g. ``{"type": "realtime", "model": "gpt-realtime",
    "audio": {"output": {"voice": "alloy"}}, "instructions": "..."}``). ``expires_after`` is the
    default TTL in seconds (None: the API's default). :meth:`mint` always mints a new key;
    calling the object (provider use) caches like :class:`EphemeralKeyProvider`.
    """

    def __init__(
        self,
        api_base: str,
        api_key: str,
        session_config: Mapping[str, Any] | None = None,
        *,
        expires_after: int | None = None,
        session: aiohttp.ClientSession | None = None,
        refresh_margin: float = 10.0,
        now: Callable[[], float] = time.time,
        timeout: float = 10.0,
    ) -> None:
        if not isinstance(api_key, str) or not api_key.strip():
            raise ConfigError.invalid("api_key", "<redacted>", "a non-empty API key")
        if session_config is not None and not isinstance(session_config, Mapping):
            raise ConfigError.invalid("session_config", session_config, "a mapping or None")
        if expires_after is not None and (
            isinstance(expires_after, bool)
            or not isinstance(expires_after, int)
            or not 10 <= expires_after <= 7200
        ):
            raise ConfigError.invalid("expires_after", expires_after, "an int in [10, 7200]")
        super().__init__(
            session=session,
            refresh_margin=refresh_margin,
            now=now,
            timeout=timeout,
            secret=api_key.strip(),
        )
        self.api_base = _check_url("api_base", api_base, path_allowed=False)
        self.url = self.api_base + CLIENT_SECRETS_PATH
        self.session_config = dict(session_config) if session_config is not None else None
        self.expires_after = expires_after

    def __repr__(self) -> str:
        return f"OpenAIClientSecrets({self.api_base!r})"

    def request_body(self, expires_after: int | None = None) -> dict[str, Any]:
        """The JSON body of a mint request (no secret in it)."""
        body: dict[str, Any] = {}
        seconds = expires_after if expires_after is not None else self.expires_after
        if seconds is not None:
            body["expires_after"] = {"anchor": "created_at", "seconds": int(seconds)}
        if self.session_config is not None:
            body["session"] = self.session_config
        return body

    async def mint(self, expires_after: int | None = None) -> EphemeralKey:
        """A new client secret valid ``expires_after`` seconds (default: the configured TTL)."""
        what = "client_secrets request"
        headers = {"Authorization": f"Bearer {self._secret}"}
        data = await self._post_json(self.url, headers, self.request_body(expires_after), what)
        return self._parse_key(data, what)

    async def _fetch(self) -> EphemeralKey:
        return await self.mint()
