"""The token broker service: hands short-lived ``ek_`` keys to authenticated app clients.

It holds the real API key and mints client secrets upstream
(``POST {upstream}/v1/realtime/client_secrets`` with the operator's session configuration);
apps never see the API key.

Endpoints
=========

``POST /v1/session-tokens``
    Auth: ``Authorization: Bearer <client secret>`` with ``X-Client-Id: <client id>``, or
    ``Authorization: Basic base64(<client id>:<client secret>)``. Optional JSON body
    ``{"expires_after": {"anchor": "created_at", "seconds": N}}`` (N clamped to
    ``[10, max_expires_after]``; default ``default_expires_after``). ``200``:
    ``{"value": "ek_...", "expires_at": <unix>, "session_id": "sess_..." | null,
    "key_id": "<fingerprint>"}`` with ``Cache-Control: no-store``.
``GET /healthz``
    ``{"status": "ok"}``.

Every error is an OpenAI-shaped JSON body ``{"error": {"type", "code", "message", "param"}}``:
401 missing/wrong credentials (one message for unknown client and wrong secret), 429 per-client
token bucket exhausted (``Retry-After``, integer seconds), 413 body over ``max_body_bytes``,
400 invalid JSON / parameters, 405 wrong method, 404 unknown path, 503 too many upstream calls
in flight, 502 upstream failure (classified: ``code`` is the upstream's, ``Retry-After`` when
the upstream gave one). Each token request appends one row to the audit log
(:mod:`fsm_voice.broker.audit`).

Secrets: the API key is only ever put in the upstream ``Authorization`` header. It is not in
any ``repr``, log line, error, response or audit row; upstream error text is redacted and
scrubbed of the key before it goes anywhere. Client secrets are stored as SHA-256 digests and
compared in constant time.

Transport security is not this module's job: bind to loopback (the default) and put a TLS
terminating proxy in front for anything else.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import hmac
import json
import logging
import math
import re
import time
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Any, Final

import aiohttp
import attrs
from aiohttp import web

from fsm_voice._lifetime import LocalService, read_limited
from fsm_voice.errors import ConfigError, VoiceError, redact
from fsm_voice.tokens import EphemeralKey, OpenAIClientSecrets, check_api_base

from .audit import AuditEntry, AuditLog
from .ratelimit import RateLimiter, RatePolicy

__all__ = [
    "DEFAULT_UPSTREAM",
    "HEALTH_PATH",
    "TOKEN_PATH",
    "BrokerConfig",
    "ClientRegistry",
    "TokenBroker",
    "hash_secret",
    "read_clients_file",
]

log = logging.getLogger(__name__)

TOKEN_PATH: Final = "/v1/session-tokens"
HEALTH_PATH: Final = "/healthz"
DEFAULT_UPSTREAM: Final = "https://api.openai.com"
MIN_EXPIRES: Final = 10
MAX_SECRET_LENGTH: Final = 1024
_CLIENT_ID: Final = re.compile(r"^[A-Za-z0-9_.\-]{1,64}$")
_DIGEST: Final = re.compile(r"^sha256:([0-9a-f]{64})$")


# --------------------------------------------------------------------------------------------
# Clients
# --------------------------------------------------------------------------------------------


def hash_secret(secret: str) -> str:
    """The stored form of a client secret: ``sha256:<hex>``."""
    return "sha256:" + hashlib.sha256(secret.encode("utf-8")).hexdigest()


def read_clients_file(path: str | Path) -> dict[str, str]:
    """``client_id -> digest`` from a JSON file ``{"clients": {"<id>": "sha256:<hex>"}}`` (the
    inner object alone is accepted too). Raises :class:`ConfigError`."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read clients file {str(path)!r}: {exc}") from None
    if isinstance(data, dict) and isinstance(data.get("clients"), dict):
        data = data["clients"]
    if not isinstance(data, dict):
        raise ConfigError.invalid("clients file", str(path), 'a JSON object {"id": "sha256:..."}')
    return {str(k): v for k, v in data.items()}


class ClientRegistry:
    """Known clients: ``client_id -> "sha256:<hex digest of the secret>"``.

    Only digests are kept. :meth:`verify` compares in constant time, and spends the same work
    on an unknown client id as on a known one.
    """

    def __init__(self, digests: Mapping[str, str]) -> None:
        parsed: dict[str, bytes] = {}
        for client_id, digest in digests.items():
            if not isinstance(client_id, str) or not _CLIENT_ID.match(client_id):
                raise ConfigError.invalid(
                    "client_id", client_id, "1-64 characters of A-Z a-z 0-9 _ . -"
                )
            match = _DIGEST.match(digest) if isinstance(digest, str) else None
            if match is None:
                raise ConfigError.invalid(
                    f"clients[{client_id!r}]",
                    "<redacted>",
                    "'sha256:<64 lowercase hex digits>' (see `fsm-voice broker --hash-secret`)",
                )
            parsed[client_id] = bytes.fromhex(match.group(1))
        if not parsed:
            raise ConfigError.invalid("clients", "{}", "at least one client")
        self._digests = parsed
        self._dummy = hashlib.sha256(b"no such client").digest()

    @classmethod
    def from_secrets(cls, secrets: Mapping[str, str]) -> ClientRegistry:
        """From plain ``client_id -> secret`` (tests, development): digests are computed."""
        return cls({cid: hash_secret(s) for cid, s in secrets.items()})

    @classmethod
    def from_file(cls, path: str | Path) -> ClientRegistry:
        """A JSON file ``{"clients": {"<id>": "sha256:<hex>", ...}}`` (or the inner object)."""
        return cls(read_clients_file(path))

    def __contains__(self, client_id: object) -> bool:
        return isinstance(client_id, str) and client_id in self._digests

    def __len__(self) -> int:
        return len(self._digests)

    def __repr__(self) -> str:
        return f"ClientRegistry({sorted(self._digests)!r})"

    def verify(self, client_id: str, secret: str) -> bool:
        """Whether ``secret`` is ``client_id``'s secret."""
        expected = self._digests.get(client_id, self._dummy)
        given = hashlib.sha256(secret.encode("utf-8", errors="surrogatepass")).digest()
        return hmac.compare_digest(expected, given) and client_id in self._digests


# --------------------------------------------------------------------------------------------
# Configuration
# --------------------------------------------------------------------------------------------


def _int_in(name: str, low: int, high: int) -> Callable[[object, object, int], None]:
    def check(instance: object, attribute: object, value: int) -> None:
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise ConfigError.invalid(name, value, f"an int in [{low}, {high}]")

    return check


def _positive_seconds(name: str) -> Callable[[object, object, float], None]:
    def check(instance: object, attribute: object, value: float) -> None:
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not math.isfinite(value)
            or value <= 0
        ):
            raise ConfigError.invalid(name, value, "a positive number of seconds")

    return check


def _freeze_session(value: Mapping[str, Any]) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise ConfigError.invalid("session_config", value, "a JSON object")
    if value.get("type") != "realtime":
        raise ConfigError.invalid(
            "session_config.type", value.get("type"), "'realtime' (required by client_secrets)"
        )
    try:
        copied = json.loads(json.dumps(dict(value)))
    except (TypeError, ValueError) as exc:
        raise ConfigError.invalid(
            "session_config", "<object>", f"JSON-serialisable ({exc})"
        ) from None
    return MappingProxyType(copied)


def _check_upstream(instance: object, attribute: object, value: str) -> None:
    check_api_base(value)


@attrs.frozen
class BrokerConfig:
    """Everything the broker needs except secrets (safe to print)."""

    upstream_base: str = attrs.field(default=DEFAULT_UPSTREAM, validator=_check_upstream)
    session_config: Mapping[str, Any] = attrs.field(
        factory=lambda: {"type": "realtime", "model": "gpt-realtime"}, converter=_freeze_session
    )
    default_expires_after: int = attrs.field(
        default=60, validator=_int_in("default_expires_after", MIN_EXPIRES, 7200)
    )
    max_expires_after: int = attrs.field(
        default=600, validator=_int_in("max_expires_after", MIN_EXPIRES, 7200)
    )
    rate: RatePolicy = attrs.field(factory=RatePolicy)
    auth_failure_rate: RatePolicy | None = attrs.field(
        factory=lambda: RatePolicy(capacity=30, refill_per_second=1.0)
    )
    """Per remote address bucket of failed authentications (None: unlimited)."""
    max_concurrent_upstream: int = attrs.field(
        default=16, validator=_int_in("max_concurrent_upstream", 1, 10_000)
    )
    upstream_queue_timeout: float = attrs.field(
        default=5.0, validator=_positive_seconds("upstream_queue_timeout")
    )
    upstream_timeout: float = attrs.field(
        default=10.0, validator=_positive_seconds("upstream_timeout")
    )
    max_body_bytes: int = attrs.field(
        default=16 * 1024, validator=_int_in("max_body_bytes", 64, 1 << 24)
    )

    def __attrs_post_init__(self) -> None:
        if self.default_expires_after > self.max_expires_after:
            raise ConfigError.invalid(
                "default_expires_after",
                self.default_expires_after,
                f"<= max_expires_after ({self.max_expires_after})",
            )


# --------------------------------------------------------------------------------------------
# The service
# --------------------------------------------------------------------------------------------


def _error_body(
    message: str, *, type: str, code: str | None, param: str | None = None
) -> dict[str, Any]:
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


@attrs.frozen
class _Outcome:
    response: web.Response
    outcome: str
    client_id: str | None = None
    detail: str | None = None
    key: EphemeralKey | None = None


class _Refusal(Exception):
    def __init__(self, outcome: _Outcome) -> None:
        super().__init__(outcome.outcome)
        self.outcome = outcome


def _refuse(
    status: int,
    outcome: str,
    message: str,
    *,
    type: str = "invalid_request_error",
    code: str | None = None,
    param: str | None = None,
    client_id: str | None = None,
    headers: Mapping[str, str] | None = None,
) -> _Refusal:
    response = web.json_response(
        _error_body(message, type=type, code=code, param=param),
        status=status,
        headers=dict(headers) if headers else None,
    )
    return _Refusal(_Outcome(response, outcome, client_id, code))


class TokenBroker(LocalService):
    """The broker. ``async with TokenBroker(config, api_key=..., clients=..., audit=...)``.

    ``api_key``: the upstream API key (read it from the environment, never from argv).
    ``audit``: an :class:`AuditLog` (left open on stop) or a path (opened and closed here).
    ``clock``: monotonic seconds for rate limiting (injectable).
    """

    def __init__(
        self,
        config: BrokerConfig,
        *,
        api_key: str,
        clients: ClientRegistry,
        audit: AuditLog | str | Path,
        host: str = "127.0.0.1",
        port: int = 0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not isinstance(api_key, str) or not api_key.strip():
            raise ConfigError.invalid("api_key", "<redacted>", "a non-empty API key")
        if not 0 <= port <= 65535:
            raise ConfigError.invalid("port", port, "0..65535")
        self.config = config
        self._api_key = api_key.strip()
        self.clients = clients
        self._owns_audit = not isinstance(audit, AuditLog)
        self.audit = audit if isinstance(audit, AuditLog) else AuditLog(audit)
        self.host = host
        self.port = port
        self._clock = clock
        self.limiter = RateLimiter(config.rate, clock=clock)
        self.auth_failures = (
            RateLimiter(config.auth_failure_rate, clock=clock)
            if config.auth_failure_rate is not None
            else None
        )
        self._upstream_slots = asyncio.Semaphore(config.max_concurrent_upstream)
        self._upstream: OpenAIClientSecrets | None = None
        self._http: aiohttp.ClientSession | None = None
        self._runner: web.AppRunner | None = None
        self._bound_port: int | None = None
        self.counters: dict[str, int] = {}
        self.observers: list[Callable[[AuditEntry], object]] = []
        """Called with each token request's audit entry (metrics export); must not block."""

    def __repr__(self) -> str:
        state = self.base_url if self._bound_port is not None else "stopped"
        return f"TokenBroker({state}, upstream={self.config.upstream_base!r})"

    # -- lifecycle ---------------------------------------------------------------------------

    @property
    def token_url(self) -> str:
        return self.base_url + TOKEN_PATH

    def make_app(self) -> web.Application:
        app = web.Application(
            middlewares=[self._json_errors], client_max_size=self.config.max_body_bytes
        )
        app.router.add_route("*", TOKEN_PATH, self._token_endpoint)
        app.router.add_get(HEALTH_PATH, self._health)
        return app

    async def start(self) -> None:
        if self._runner is not None:
            raise RuntimeError("TokenBroker already started")
        if self._owns_audit:
            await self.audit.open()
        try:
            self._http = aiohttp.ClientSession()
            self._upstream = OpenAIClientSecrets(
                self.config.upstream_base,
                self._api_key,
                self.config.session_config,
                session=self._http,
                timeout=self.config.upstream_timeout,
            )
            await self._serve_app(self.make_app())
        except BaseException:
            await self._close_resources()
            raise
        log.info(
            "token broker listening on %s (upstream %s)", self.base_url, self.config.upstream_base
        )

    async def _close_resources(self) -> None:
        http, self._http = self._http, None
        self._upstream = None
        if http is not None:
            await http.close()
        if self._owns_audit:
            await self.audit.close()

    async def stop(self) -> None:
        runner, self._runner = self._runner, None
        try:
            if runner is not None:
                await runner.cleanup()
        finally:
            self._bound_port = None
            await self._close_resources()


    # -- helpers -----------------------------------------------------------------------------

    def _scrub(self, text: str) -> str:
        return redact(text.replace(self._api_key, "***"))

    def _count(self, outcome: str) -> None:
        self.counters[outcome] = self.counters.get(outcome, 0) + 1

    # -- HTTP --------------------------------------------------------------------------------

    @web.middleware
    async def _json_errors(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        try:
            return await handler(request)
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            code = re.sub(r"[^a-z0-9]+", "_", (exc.reason or "error").lower()).strip("_")
            return web.json_response(
                _error_body(exc.reason or "error", type="invalid_request_error", code=code),
                status=exc.status,
                headers={k: v for k, v in exc.headers.items() if k.lower() == "allow"},
            )
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.error("broker: unhandled %s on %s", type(exc).__name__, request.path)
            return web.json_response(
                _error_body("Internal error.", type="server_error", code="internal_error"),
                status=500,
            )

    async def _health(self, request: web.Request) -> web.StreamResponse:
        return web.json_response({"status": "ok"})

    async def _token_endpoint(self, request: web.Request) -> web.StreamResponse:
        started = time.perf_counter()
        try:
            result = await self._issue(request)
        except _Refusal as refusal:
            result = refusal.outcome
        key = result.key
        entry = AuditEntry(
            outcome=result.outcome,
            http_status=result.response.status,
            latency_ms=(time.perf_counter() - started) * 1000.0,
            client_id=result.client_id,
            remote_addr=request.remote,
            session_id=key.session_id if key is not None else None,
            key_id=key.fingerprint if key is not None else None,
            detail=result.detail,
        )
        self._count(result.outcome)
        for observe in self.observers:
            observe(entry)
        try:
            await self.audit.record(entry)
        except Exception as exc:
            log.error("broker: audit write failed (%s)", type(exc).__name__)
            self._count("audit_failed")
            if key is not None:  # fail closed: no key leaves without its audit row
                self._count("internal_error")
                return web.json_response(
                    _error_body(
                        "The audit log is unavailable.", type="server_error", code="audit_failed"
                    ),
                    status=500,
                )
        if key is not None:
            log.info(
                "issued key %s to client %s (session %s)",
                key.fingerprint,
                result.client_id,
                key.session_id,
            )
        else:
            log.info(
                "token request refused: %s %s (client %s)",
                result.response.status,
                result.outcome,
                result.client_id,
            )
        return result.response

    def _credentials(self, request: web.Request) -> tuple[str, str] | None:
        header = request.headers.get("Authorization", "")
        scheme, _, value = header.strip().partition(" ")
        value = value.strip()
        if not value:
            return None
        if scheme.lower() == "basic":
            try:
                decoded = base64.b64decode(value, validate=True).decode("utf-8")
            except (binascii.Error, ValueError):
                return None
            client_id, sep, secret = decoded.partition(":")
            return (client_id, secret) if sep else None
        if scheme.lower() == "bearer":
            client_id = request.headers.get("X-Client-Id", "").strip()
            return (client_id, value) if client_id else None
        return None

    async def _issue(self, request: web.Request) -> _Outcome:
        if request.method != "POST":
            raise _refuse(
                405,
                "bad_request",
                f"Method {request.method[:16]!r} not allowed: use POST.",
                code="method_not_allowed",
                headers={"Allow": "POST"},
            )
        remote = request.remote or "?"
        if self.auth_failures is not None and self.auth_failures.available(remote) < 1:
            blocked_for = self.auth_failures.acquire(remote) or 1.0
            raise _refuse(
                429,
                "rate_limited",
                "Too many failed authentications from this address.",
                type="requests",
                code="rate_limit_exceeded",
                headers={"Retry-After": str(max(1, math.ceil(blocked_for)))},
            )
        client_id = self._authenticate(request)
        wait = self.limiter.acquire(client_id)
        if wait is not None:
            seconds = max(1, math.ceil(wait))
            raise _refuse(
                429,
                "rate_limited",
                f"Rate limit reached for client {client_id!r}: try again in {seconds}s.",
                type="requests",
                code="rate_limit_exceeded",
                client_id=client_id,
                headers={"Retry-After": str(seconds)},
            )
        seconds = self._expires_after(await self._read_json(request, client_id), client_id)
        return await self._mint(client_id, seconds)

    def _authenticate(self, request: web.Request) -> str:
        creds = self._credentials(request)
        if creds is not None and len(creds[1]) <= MAX_SECRET_LENGTH:
            client_id, secret = creds
            if self.clients.verify(client_id, secret):
                return client_id
            known = client_id if client_id in self.clients else None
        else:
            known = None
        if self.auth_failures is not None:
            self.auth_failures.acquire(request.remote or "?")
        raise _refuse(
            401,
            "denied_auth",
            "Invalid client credentials: send 'Authorization: Bearer <client secret>' with "
            "'X-Client-Id: <client id>', or HTTP Basic auth.",
            code="invalid_client",
            client_id=known,
            headers={"WWW-Authenticate": 'Basic realm="fsm-voice broker"'},
        )

    async def _read_json(self, request: web.Request, client_id: str) -> object:
        limit = self.config.max_body_bytes
        too_large = _refuse(
            413,
            "bad_request",
            f"Request body too large: the limit is {limit} bytes.",
            code="request_too_large",
            client_id=client_id,
        )
        raw = await read_limited(request, limit)
        if raw is None:
            raise too_large
        if not raw.strip():
            return {}
        try:
            return json.loads(raw)
        except (ValueError, RecursionError):
            raise _refuse(
                400,
                "bad_request",
                "The request body is not valid JSON.",
                code="invalid_json",
                client_id=client_id,
            ) from None

    def _expires_after(self, body: object, client_id: str) -> int:
        def bad(message: str, code: str, param: str | None = None) -> _Refusal:
            return _refuse(400, "bad_request", message, code=code, param=param, client_id=client_id)

        if not isinstance(body, dict):
            raise bad("The request body must be a JSON object.", "invalid_type")
        for key in body:
            if key != "expires_after":
                raise bad(
                    f"Unknown parameter: {str(key)[:64]!r} (the session is configured by the "
                    "broker).",
                    "unknown_parameter",
                    str(key)[:64],
                )
        expires = body.get("expires_after")
        if expires is None:
            return self.config.default_expires_after
        if not isinstance(expires, dict):
            raise bad("'expires_after' must be an object.", "invalid_type", "expires_after")
        for key in expires:
            if key not in ("anchor", "seconds"):
                raise bad(
                    f"Unknown parameter: 'expires_after.{str(key)[:64]}'.",
                    "unknown_parameter",
                    f"expires_after.{str(key)[:64]}",
                )
        if expires.get("anchor", "created_at") != "created_at":
            raise bad(
                "'expires_after.anchor' must be 'created_at'.",
                "invalid_value",
                "expires_after.anchor",
            )
        seconds = expires.get("seconds", self.config.default_expires_after)
        if isinstance(seconds, bool) or not isinstance(seconds, int):
            raise bad(
                "'expires_after.seconds' must be an integer.",
                "invalid_type",
                "expires_after.seconds",
            )
        return max(MIN_EXPIRES, min(seconds, self.config.max_expires_after))

    async def _mint(self, client_id: str, seconds: int) -> _Outcome:
        upstream = self._upstream
        if upstream is None:
            raise _refuse(
                503,
                "overloaded",
                "The broker is not running.",
                type="server_error",
                code="not_running",
                client_id=client_id,
            )
        try:
            async with asyncio.timeout(self.config.upstream_queue_timeout):
                await self._upstream_slots.acquire()
        except TimeoutError:
            raise _refuse(
                503,
                "overloaded",
                "Too many token requests in flight; try again shortly.",
                type="server_error",
                code="server_overloaded",
                client_id=client_id,
                headers={"Retry-After": "1"},
            ) from None
        try:
            key = await upstream.mint(seconds)
        except VoiceError as err:
            headers = {}
            if err.retry_after is not None:
                headers["Retry-After"] = str(max(1, math.ceil(err.retry_after)))
            code = err.code if re.match(r"^[a-z0-9_]{1,64}$", err.code) else "upstream_error"
            raise _refuse(
                502,
                "upstream_error",
                self._scrub(f"Upstream client_secrets request failed: {err.message}"),
                type="upstream_error",
                code=code,
                client_id=client_id,
                headers=headers,
            ) from None
        finally:
            self._upstream_slots.release()
        body = {
            "value": key.value,
            "expires_at": int(key.expires_at),
            "session_id": key.session_id,
            "key_id": key.fingerprint,
        }
        response = web.json_response(
            body, headers={"Cache-Control": "no-store", "Pragma": "no-cache"}
        )
        return _Outcome(response, "issued", client_id, None, key)
