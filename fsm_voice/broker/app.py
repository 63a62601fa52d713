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
    ``200 {"status": "ok", ...}`` while minting works; ``503 {"status": "failing", ...}`` once
    ``unhealthy_after_failures`` mints in a row failed upstream (or the audit log failed), until
    one succeeds. The body says which part fails (``minting``, ``audit``) and how many audit rows
    of unauthenticated requests were not written (``audit_suppressed``).

Every error is an OpenAI-shaped JSON body ``{"error": {"type", "code", "message", "param"}}``:
401 missing/wrong credentials (one message for unknown client and wrong secret), 429 per-client
token bucket exhausted (``Retry-After``, integer seconds), 413 body over ``max_body_bytes``,
400 invalid JSON / parameters (and malformed HTTP: never echoed), 405 wrong method, 404 unknown
path, 408 body not received in ``body_timeout``, 503 too many upstream calls in flight or the
rate-limit store unreachable (``rate_limits_unavailable`` + ``Retry-After``; fail closed unless
``limits_fail_open``), 500 ``audit_failed`` when a minted key's row could not be committed (the
key is dropped, never handed out), 502
upstream failure (classified: ``code`` is the upstream's, ``Retry-After`` when the upstream gave
one, clamped to ``[1, max_upstream_retry_after]``). Each authenticated token request appends one
row to the audit log (:mod:`fsm_voice.broker.audit`), so does each unauthenticated one within the
``unauthenticated_audit_rate`` budget (the rest are counted, not written: the log cannot be grown
without bound by anyone without credentials).

Failed authentications are limited per (remote address, claimed client id) and per address
(429 instead of 401 once exhausted); valid credentials are never refused by that limit, so an
attacker guessing behind a shared address (a NAT, the TLS proxy) locks out nobody. The limit
bounds the work and the log, not the guessing odds: use high-entropy client secrets (e.g.
``secrets.token_urlsafe(32)``).

Every upstream value is clamped before it reaches a client: the key must be a short printable
token, ``expires_at`` is cut to what the broker asked for (never later than ``now + seconds``;
non-finite or past -> 502), ``session_id`` is dropped unless identifier-like, ``Retry-After`` is
bounded. Upstream slots are shared fairly between clients (:class:`FairSlots`).

Secrets: the API key is only ever put in the upstream ``Authorization`` header. It is not in
any ``repr``, log line, error, response or audit row; upstream error text never reaches a
client (only the upstream's error code, when it is a short identifier sharing nothing with the
key, under the broker's own message). Client secrets are stored as SHA-256 digests and
compared in constant time.

Storage: rate limits live behind :class:`~fsm_voice.broker.ratelimit.LimitStore` (in process
by default, Redis for replicas) and the audit log behind
:class:`~fsm_voice.broker.audit.AuditStore` (SQLite by default, PostgreSQL for replicas). The
client address is the TCP peer, or behind ``trusted_proxies`` the one their forwarding header
names (:mod:`fsm_voice.broker.forwarded`).

Transport security is not this module's job: bind to loopback (the default) and put a TLS
terminating proxy in front for anything else.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import collections
import contextlib
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
from fsm_voice.errors import ConfigError, ErrorSource, Severity, VoiceError, redact
from fsm_voice.tokens import EphemeralKey, OpenAIClientSecrets, check_api_base

from .audit import AuditEntry, AuditLog, AuditStore
from .forwarded import FORWARDED_HEADERS, ForwardedHeader, Network, client_address, parse_networks
from .proxy import ProxyConfig, SessionProxy
from .ratelimit import (
    FairSlots,
    LimitStore,
    LimitsUnavailable,
    MemoryLimits,
    RateLimiter,
    RatePolicy,
)

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
_KEY_VALUE: Final = re.compile(r"^[\x21-\x7e]{1,2048}$")
_SESSION_ID: Final = re.compile(r"^[A-Za-z0-9_.:\-]{1,64}$")
_MAX_BACKLOG: Final = 10_000


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


def _check_forwarded_header(instance: object, attribute: object, value: str) -> None:
    if value not in FORWARDED_HEADERS:
        raise ConfigError.invalid("forwarded_header", value, f"one of {FORWARDED_HEADERS}")


def _networks(value: object) -> tuple[Network, ...]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list | tuple | set | frozenset):
        raise ConfigError.invalid("trusted_proxies", value, "a list of addresses or networks")
    return parse_networks(str(v) for v in value)


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
    """Bucket of failed authentications per (remote address, claimed client id); each address
    also gets one 4x this size across all ids (None: unlimited). Valid credentials never wait on
    it."""
    unauthenticated_audit_rate: RatePolicy | None = attrs.field(
        factory=lambda: RatePolicy(capacity=100, refill_per_second=1.0)
    )
    """Broker-wide budget of audit rows for unauthenticated requests (None: every one)."""
    max_concurrent_upstream: int = attrs.field(
        default=16, validator=_int_in("max_concurrent_upstream", 1, 10_000)
    )
    max_concurrent_upstream_per_client: int | None = attrs.field(default=None)
    """Upstream slots one client may hold at once (None: half of ``max_concurrent_upstream``,
    at least 1)."""
    max_upstream_retry_after: int = attrs.field(
        default=300, validator=_int_in("max_upstream_retry_after", 1, 86_400)
    )
    unhealthy_after_failures: int = attrs.field(
        default=3, validator=_int_in("unhealthy_after_failures", 1, 1_000_000)
    )
    header_timeout: float = attrs.field(
        default=20.0, validator=_positive_seconds("header_timeout")
    )
    """Seconds a connection may take to send a complete request head (slow-loris bound)."""
    body_timeout: float = attrs.field(default=10.0, validator=_positive_seconds("body_timeout"))
    """Seconds a request body may take to arrive (408 after)."""
    upstream_queue_timeout: float = attrs.field(
        default=5.0, validator=_positive_seconds("upstream_queue_timeout")
    )
    upstream_timeout: float = attrs.field(
        default=10.0, validator=_positive_seconds("upstream_timeout")
    )
    shutdown_grace: float = attrs.field(default=10.0, validator=_positive_seconds("shutdown_grace"))
    """Seconds in-flight token requests get to finish when the broker stops (SIGTERM); a request
    still running then is cancelled, and its audit row (``internal_error``, detail
    ``shutdown``) is written before the audit log closes."""
    max_body_bytes: int = attrs.field(
        default=16 * 1024, validator=_int_in("max_body_bytes", 64, 1 << 24)
    )
    trusted_proxies: tuple[Network, ...] = attrs.field(default=(), converter=_networks)
    """Reverse proxies whose forwarding header names the client (empty: the TCP peer is the
    client, forwarding headers are ignored)."""
    forwarded_header: ForwardedHeader = attrs.field(
        default="x-forwarded-for", validator=_check_forwarded_header
    )
    """The one header the trusted proxies write: ``x-forwarded-for`` or ``forwarded``."""
    limits_fail_open: bool = attrs.field(
        default=False, validator=attrs.validators.instance_of(bool)
    )
    """When the rate-limit store is unreachable: False (default) refuses with 503 and mints
    nothing; True lets requests through unlimited. Either way each decision is audited."""
    limits_retry_after: int = attrs.field(
        default=1, validator=_int_in("limits_retry_after", 1, 3600)
    )
    """``Retry-After`` seconds of the 503 sent while the rate-limit store is unreachable."""
    proxy: ProxyConfig | None = attrs.field(default=None)
    """Session proxy mode (:mod:`fsm_voice.broker.proxy`): None (default) serves tokens only."""

    @property
    def upstream_slots_per_client(self) -> int:
        per = self.max_concurrent_upstream_per_client
        return per if per is not None else max(1, self.max_concurrent_upstream // 2)

    def __attrs_post_init__(self) -> None:
        per = self.max_concurrent_upstream_per_client
        if per is not None and (
            isinstance(per, bool)
            or not isinstance(per, int)
            or not 1 <= per <= self.max_concurrent_upstream
        ):
            raise ConfigError.invalid(
                "max_concurrent_upstream_per_client",
                per,
                f"None or an int in [1, max_concurrent_upstream={self.max_concurrent_upstream}]",
            )
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
    authenticated: bool = False
    session_id: str | None = None


@attrs.define
class _RequestState:
    client_addr: str | None
    limits_fail_open: bool = False
    client_id: str | None = None


_STATE: Final = web.RequestKey("fsm_voice_broker", _RequestState)


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
    authenticated: bool = True,
) -> _Refusal:
    response = web.json_response(
        _error_body(message, type=type, code=code, param=param),
        status=status,
        headers=dict(headers) if headers else None,
    )
    return _Refusal(_Outcome(response, outcome, client_id, code, authenticated=authenticated))


class TokenBroker(LocalService):
    """The broker. ``async with TokenBroker(config, api_key=..., clients=..., audit=...)``.

    ``api_key``: the upstream API key (read it from the environment, never from argv).
    ``audit``: an audit store (:class:`AuditLog`, or
    :class:`~fsm_voice.broker.audit_pg.PostgresAuditLog`; left open on stop unless
    ``manage_stores``) or a SQLite path (opened and closed here).
    ``limits``: where the rate limits live (default: :class:`MemoryLimits`, this process only;
    :class:`~fsm_voice.broker.redis_limits.RedisLimits` to share them between replicas); opened
    and closed here only with ``manage_stores``.
    ``clock``: monotonic seconds for in-process rate limiting (injectable). ``now``: epoch
    seconds, to clamp the upstream's ``expires_at`` (injectable).
    """

    def __init__(
        self,
        config: BrokerConfig,
        *,
        api_key: str,
        clients: ClientRegistry,
        audit: AuditStore | str | Path,
        limits: LimitStore | None = None,
        manage_stores: bool = False,
        host: str = "127.0.0.1",
        port: int = 0,
        clock: Callable[[], float] = time.monotonic,
        now: Callable[[], float] = time.time,
    ) -> None:
        if not isinstance(api_key, str) or not api_key.strip():
            raise ConfigError.invalid("api_key", "<redacted>", "a non-empty API key")
        if not 0 <= port <= 65535:
            raise ConfigError.invalid("port", port, "0..65535")
        if config.proxy is not None:
            unknown = sorted(cid for cid in config.proxy.clients if cid not in clients)
            if unknown:
                raise ConfigError.invalid(
                    "proxy clients", ", ".join(unknown)[:200],
                    "ids of configured clients (an entry for an unknown id would never apply)")
        self.config = config
        self._api_key = api_key.strip()
        self.clients = clients
        self._owns_audit = isinstance(audit, str | Path) or manage_stores
        self.audit: AuditStore = AuditLog(audit) if isinstance(audit, str | Path) else audit
        self._owns_limits = limits is not None and manage_stores
        self.limits: LimitStore = limits if limits is not None else MemoryLimits(clock=clock)
        self.host = host
        self.port = port
        self._clock = clock
        self._now = now
        self.header_timeout = config.header_timeout
        self.shutdown_timeout = config.shutdown_grace
        self._inflight: set[asyncio.Task[Any]] = set()
        failures = config.auth_failure_rate
        self.auth_failures = failures
        self.auth_failures_by_address = (
            RatePolicy(
                capacity=failures.capacity * 4, refill_per_second=failures.refill_per_second * 4
            )
            if failures is not None
            else None
        )
        unauth = config.unauthenticated_audit_rate
        self._unauth_audit = RateLimiter(unauth, clock=clock) if unauth is not None else None
        self.upstream_slots = FairSlots(
            config.max_concurrent_upstream, config.upstream_slots_per_client
        )
        self.mint_failures_in_a_row = 0
        self.last_mint_error: str | None = None
        self.audit_failing = False
        self.limits_failing = False
        self.limits_error: str | None = None
        self._backlog: collections.deque[AuditEntry] = collections.deque()
        self._backlog_task: asyncio.Task[None] | None = None
        self._backlog_lock = asyncio.Lock()
        self._upstream: OpenAIClientSecrets | None = None
        self._http: aiohttp.ClientSession | None = None
        self._runner: web.AppRunner | None = None
        self._bound_port: int | None = None
        self.counters: dict[str, int] = {}
        self.observers: list[Callable[[AuditEntry], object]] = []
        """Called with each token request's audit entry (metrics export); must not block."""
        self.proxy = SessionProxy(self, config.proxy) if config.proxy is not None else None
        """The session proxy (None unless ``config.proxy``)."""

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
        if self.proxy is not None:
            self.proxy.add_routes(app)
        return app

    async def start(self) -> None:
        if self._runner is not None:
            raise RuntimeError("TokenBroker already started")
        if self._owns_limits:
            await self.limits.open()
        try:
            if self._owns_audit:
                await self.audit.open()
        except BaseException:
            if self._owns_limits:
                await self.limits.close()
            raise
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
        task, self._backlog_task = self._backlog_task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._backlog:
            try:
                async with asyncio.timeout(5.0):
                    await self.flush_backlog()
            except BaseException as exc:  # even when cancelled: never lost without a word
                log.error(
                    "broker: %d audit row(s) of dropped keys never written (%s): key ids %s",
                    len(self._backlog),
                    type(exc).__name__,
                    " ".join(str(e.key_id) for e in self._backlog),
                )
                if not isinstance(exc, Exception):
                    raise
        http, self._http = self._http, None
        self._upstream = None
        if http is not None:
            await http.close()
        try:
            if self._owns_audit:
                await self.audit.close()
        finally:
            if self._owns_limits:
                await self.limits.close()

    async def stop(self) -> None:
        """Stop listening, let in-flight token requests finish (``shutdown_grace``; then they
        are cancelled and write their rows), close the stores."""
        runner, self._runner = self._runner, None
        if self.proxy is not None:  # creates answered from now on are closed, not handed out
            self.proxy.begin_stop()
        try:
            if runner is not None:
                await runner.cleanup()
        finally:
            self._bound_port = None
            if self._inflight:  # cancelled handlers still writing their audit rows
                await asyncio.wait(set(self._inflight), timeout=self.shutdown_timeout)
            if self._inflight:
                log.error(
                    "broker: %d token request(s) stopped without their audit row",
                    len(self._inflight),
                )
            try:
                if self.proxy is not None:  # end the supervised sessions, rows first
                    await self.proxy.aclose()
            finally:
                await self._close_resources()


    # -- rows of dropped keys ----------------------------------------------------------------

    @property
    def unrecorded(self) -> int:
        """Rows of keys minted upstream but dropped (their row failed) still to be written."""
        return len(self._backlog)

    def _unrecorded_key(self, entry: AuditEntry) -> None:
        if len(self._backlog) >= _MAX_BACKLOG:
            self._count("audit_lost")
            log.error("broker: audit backlog full; the row of key %s is lost", entry.key_id)
            return
        self._backlog.append(entry)
        if self._backlog_task is None or self._backlog_task.done():
            self._backlog_task = asyncio.get_running_loop().create_task(
                self._drain_backlog(), name="audit-backlog"
            )

    async def flush_backlog(self) -> None:
        """Write the rows of dropped keys now (raises if the audit log still fails)."""
        async with self._backlog_lock:
            while self._backlog:
                batch = list(self._backlog)  # all at once: one group-committed transaction
                results = await asyncio.gather(
                    *(self.audit.record(e) for e in batch), return_exceptions=True
                )
                for _ in batch:
                    self._backlog.popleft()
                failed = [e for e, r in zip(batch, results, strict=True) if not isinstance(r, int)]
                self._backlog.extendleft(reversed(failed))
                for result in results:
                    if isinstance(result, BaseException):
                        raise result
                self.audit_failing = False

    async def _drain_backlog(self) -> None:
        delay = 0.1
        while self._backlog:
            try:
                await self.flush_backlog()
            except Exception:
                await asyncio.sleep(delay)  # the audit store is down: retry, backing off
                delay = min(delay * 2, 5.0)

    # -- helpers -----------------------------------------------------------------------------

    def _scrub(self, text: str) -> str:
        return redact(text.replace(self._api_key, "***"))

    def _upstream_code(self, code: str) -> str:
        """An upstream error code fit to pass on: a short identifier sharing no 8 characters
        with the API key (else ``upstream_error``)."""
        if not re.match(r"^[a-z0-9_]{1,64}$", code):
            return "upstream_error"
        key = re.sub(r"[^a-z0-9]", "", self._api_key.lower())
        bare = code.replace("_", "")
        if any(bare[i : i + 8] in key for i in range(max(0, len(bare) - 7))):
            return "upstream_error"
        return code

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

    @property
    def minting_healthy(self) -> bool:
        return self.mint_failures_in_a_row < self.config.unhealthy_after_failures

    async def _health(self, request: web.Request) -> web.StreamResponse:
        limits_down = self.limits_failing and not self.config.limits_fail_open
        ok = (
            self.minting_healthy
            and not self.audit_failing
            and not limits_down
            and self._upstream is not None
        )
        body = {
            "status": "ok" if ok else "failing",
            "minting": "ok" if self.minting_healthy else "failing",
            "mint_failures_in_a_row": self.mint_failures_in_a_row,
            "last_mint_error": self.last_mint_error,
            "audit": "failing" if self.audit_failing else "ok",
            "limits": "failing" if self.limits_failing else "ok",
            "limits_error": self.limits_error,
            "audit_suppressed": self.counters.get("audit_suppressed", 0),
        }
        return web.json_response(body, status=200 if ok else 503)

    def _request_state(self, request: web.Request) -> _RequestState:
        """The per-request audit state, with the client's address (forwarded headers read
        only from trusted proxies), stored on ``request``."""
        state = request[_STATE] = _RequestState(
            client_address(
                request.remote,
                request.headers.getall(self.config.forwarded_header, []),
                self.config.trusted_proxies,
                self.config.forwarded_header,
            )
        )
        return state

    async def _token_endpoint(self, request: web.Request) -> web.StreamResponse:
        started = time.perf_counter()
        state = self._request_state(request)
        task = asyncio.current_task()
        if task is not None:
            self._inflight.add(task)
        try:
            return await self._token_request(request, started, state)
        finally:
            if task is not None:
                self._inflight.discard(task)

    async def _token_request(
        self, request: web.Request, started: float, state: _RequestState
    ) -> web.StreamResponse:
        cancelled = False
        try:
            result = await self._issue(request)
        except _Refusal as refusal:
            result = refusal.outcome
        except asyncio.CancelledError:  # the broker is stopping: the row first, then go
            cancelled = True
            result = _Outcome(
                web.json_response(
                    _error_body("The broker is shutting down.", type="server_error",
                                code="shutting_down"),
                    status=503,
                ),
                "internal_error",
                state.client_id,
                detail="shutdown",
                authenticated=True,
            )
        except Exception as exc:  # a bug: still one answer and one audit row, no detail out
            log.error("broker: unhandled %s while issuing a token", type(exc).__name__)
            result = _Outcome(
                web.json_response(
                    _error_body("Internal error.", type="server_error", code="internal_error"),
                    status=500,
                ),
                "internal_error",
                detail="internal_error",
            )
        key = result.key
        detail = result.detail
        if detail is None and state.limits_fail_open:
            detail = "limits_fail_open"  # let through unlimited: the row says so
        entry = AuditEntry(
            outcome=result.outcome,
            http_status=result.response.status,
            latency_ms=(time.perf_counter() - started) * 1000.0,
            client_id=result.client_id,
            remote_addr=state.client_addr,
            session_id=key.session_id if key is not None else None,
            key_id=key.fingerprint if key is not None else None,
            detail=detail,
        )
        self._count(result.outcome)
        suppressed = (
            not result.authenticated
            and self._unauth_audit is not None
            and self._unauth_audit.acquire("*") is not None
        )
        for observe in self.observers:
            observe(entry)
        try:
            if suppressed:
                self._count("audit_suppressed")  # counted (see /healthz), not written
            else:
                await self.audit.record(entry)
                self.audit_failing = False
        except asyncio.CancelledError:  # stopping mid-write: the key is not handed out, say so
            if key is not None:
                self._unrecorded_key(
                    attrs.evolve(entry, outcome="internal_error", http_status=503,
                                 detail="shutdown")
                )
            raise
        except Exception as exc:
            log.error("broker: audit write failed (%s)", type(exc).__name__)
            self.audit_failing = True
            self._count("audit_failed")
            if key is not None:  # fail closed: no key leaves without its audit row
                self._count("internal_error")
                # ... and the key minted upstream but dropped here still gets its row, later
                self._unrecorded_key(
                    attrs.evolve(entry, outcome="internal_error", http_status=500,
                                 detail="audit_failed")
                )
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
        else:  # beyond the unauthenticated budget the log line is debug only, like the row
            log.log(
                logging.DEBUG if suppressed else logging.INFO,
                "token request refused: %s %s (client %s)",
                result.response.status,
                result.outcome,
                result.client_id,
            )
        if cancelled:
            raise asyncio.CancelledError
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
                authenticated=False,
            )
        client_id = request[_STATE].client_id = await self._admit(request)
        try:
            async with asyncio.timeout(self.config.body_timeout):
                body = await self._read_json(request, client_id)
        except TimeoutError:
            refusal = _refuse(
                408,
                "bad_request",
                f"The request body did not arrive within {self.config.body_timeout:g} s.",
                code="request_timeout",
                client_id=client_id,
            )
            refusal.outcome.response.force_close()  # the rest of the body must not be parsed
            raise refusal from None
        seconds = self._expires_after(body, client_id)
        return await self._mint(client_id, seconds)

    async def _admit(self, request: web.Request) -> str:
        """The client id of valid credentials within the client's token bucket (401/429
        refusals otherwise): the token endpoint's admission, shared with the session proxy."""
        client_id = request[_STATE].client_id = await self._authenticate(request)
        wait = await self._limit(request, "client", client_id, self.config.rate, client_id)
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
        return client_id

    async def _limit(
        self,
        request: web.Request,
        name: str,
        key: str,
        policy: RatePolicy,
        client_id: str | None,
        *,
        authenticated: bool = True,
    ) -> float | None:
        """The limit store's answer; when the store is unreachable, a 503 (fail closed) or, if
        configured, None with the request marked for its audit row (fail open)."""
        try:
            wait = await self.limits.acquire(name, key, policy)
        except LimitsUnavailable as exc:
            if not self.limits_failing or self.limits_error != exc.reason:
                log.error("broker: rate-limit store failing: %s", exc)
            self.limits_failing = True
            self.limits_error = exc.reason
            if self.config.limits_fail_open:
                request[_STATE].limits_fail_open = True
                return None
            seconds = self.config.limits_retry_after
            raise _refuse(
                503,
                "limits_unavailable",
                f"Rate limits are unavailable; try again in {seconds}s.",
                type="server_error",
                code="rate_limits_unavailable",
                client_id=client_id,
                headers={"Retry-After": str(seconds)},
                authenticated=authenticated,
            ) from None
        if self.limits_failing:
            log.warning("broker: rate-limit store is back")
        self.limits_failing = False
        self.limits_error = None
        return wait

    async def _authenticate(self, request: web.Request) -> str:
        """The client id of valid credentials. Authentication comes first: a valid client is
        never refused for someone else's failures. A failure is charged to the (address,
        claimed id) and the address buckets; when either is empty the answer is 429."""
        creds = self._credentials(request)
        claimed = ""
        if creds is not None and len(creds[1]) <= MAX_SECRET_LENGTH:
            client_id, secret = creds
            if self.clients.verify(client_id, secret):
                return client_id
            claimed = client_id if _CLIENT_ID.match(client_id) else "?"
        known = claimed if claimed in self.clients else None
        remote = request[_STATE].client_addr or "?"
        if self.auth_failures is not None and self.auth_failures_by_address is not None:
            waits = [
                await self._limit(
                    request,
                    "authfail",
                    f"{remote} {claimed}",
                    self.auth_failures,
                    known,
                    authenticated=False,
                ),
                await self._limit(
                    request,
                    "authfail-addr",
                    remote,
                    self.auth_failures_by_address,
                    known,
                    authenticated=False,
                ),
            ]
            wait = max((w for w in waits if w is not None), default=None)
            if wait is not None:
                raise _refuse(
                    429,
                    "rate_limited",
                    "Too many failed authentications.",
                    type="requests",
                    code="rate_limit_exceeded",
                    client_id=known,
                    headers={"Retry-After": str(max(1, min(3600, math.ceil(wait))))},
                    authenticated=False,
                )
        raise _refuse(
            401,
            "denied_auth",
            "Invalid client credentials: send 'Authorization: Bearer <client secret>' with "
            "'X-Client-Id: <client id>', or HTTP Basic auth.",
            code="invalid_client",
            client_id=known,
            headers={"WWW-Authenticate": 'Basic realm="fsm-voice broker"'},
            authenticated=False,
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
                await self.upstream_slots.acquire(client_id)
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
            key = self._clamp_key(await upstream.mint(seconds), seconds)
        except VoiceError as err:
            self.mint_failures_in_a_row += 1
            headers = {}
            retry = self._clamp_retry_after(err.retry_after)
            if retry is not None:
                headers["Retry-After"] = str(retry)
            code = self._upstream_code(err.code)
            self.last_mint_error = code
            # never the upstream's text: it can quote the API key in forms no scrubber knows
            # (cut, re-encoded, re-cased); only its code, vetted, and our own words
            raise _refuse(
                502,
                "upstream_error",
                f"The upstream refused to mint a client secret ({code}).",
                type="upstream_error",
                code=code,
                client_id=client_id,
                headers=headers,
            ) from None
        finally:
            self.upstream_slots.release(client_id)
        self.mint_failures_in_a_row = 0
        self.last_mint_error = None
        body = {
            "value": key.value,
            "expires_at": int(key.expires_at),
            "session_id": key.session_id,
            "key_id": key.fingerprint,
        }
        response = web.json_response(
            body, headers={"Cache-Control": "no-store", "Pragma": "no-cache"}
        )
        return _Outcome(response, "issued", client_id, None, key, authenticated=True)

    def _clamp_retry_after(self, value: float | None) -> int | None:
        """An upstream ``Retry-After`` as whole seconds in ``[1, max_upstream_retry_after]``
        (infinite or absurd values give the maximum)."""
        if value is None or math.isnan(value):
            return None
        limit = self.config.max_upstream_retry_after
        if not math.isfinite(value) or value >= limit:
            return limit
        return max(1, math.ceil(value))

    def _clamp_key(self, key: EphemeralKey, seconds: int) -> EphemeralKey:
        """The upstream key with every value bounded (see the module docstring); a value that
        cannot be bounded is a :class:`VoiceError` (502 upstream_invalid_response)."""

        def invalid(what: str) -> VoiceError:
            return VoiceError(
                Severity.RECOVERABLE,
                "upstream_invalid_response",
                f"upstream key rejected: {what}",
                ErrorSource.SIGNALING,
            )

        if not _KEY_VALUE.match(key.value):
            raise invalid("the key is not a short printable token")
        if not key.value.startswith("ek_") or self._api_key in key.value:
            raise invalid("the value is not an ephemeral ek_ key")  # e.g. our API key echoed
        now = self._now()
        if not math.isfinite(key.expires_at) or key.expires_at <= now:
            raise invalid("expires_at is not in the future")
        expires_at = min(key.expires_at, float(math.floor(now)) + seconds)
        if expires_at != key.expires_at:
            log.warning(
                "upstream key %s expires_at %.0f is beyond the %d s asked for: clamped",
                key.fingerprint,
                min(key.expires_at, 1e18),
                seconds,
            )
        session_id = key.session_id
        if session_id is not None and not _SESSION_ID.match(session_id):
            session_id = None
        return attrs.evolve(key, expires_at=expires_at, session_id=session_id)
