"""Session proxy mode of the token broker: app clients post their SDP offer to the broker, which
creates the session upstream with the real API key and the server-side configuration of that
client, returns the answer, and enforces per-client caps on the running session server-side.

Endpoints (added to :class:`~fsm_voice.broker.app.TokenBroker` when ``BrokerConfig.proxy`` is
set; authentication and the per-client token bucket are exactly the token endpoint's)
===================================================================================

``POST /v1/live/sessions`` (Live)
    ``application/json`` only (anything else ``415``; a query string ``400``), body
    ``{"transport": {"type": "webrtc", "sdp": "<offer>"}, "session"?: {"input"?: [...]}}``.
    ``session.input`` is the only session field a client may send; its items are checked
    against the Live rules (:mod:`fsm_voice.live_input`: messages only, one text part, at most
    128 items / 8,192 estimated tokens, no unknown keys; ``400`` with the field in ``param``)
    and roles ``user``/``assistant`` only (``400 role_not_allowed`` for ``developer`` unless
    the client's ``allow_developer_input`` is set: developer messages are instruction-level
    guidance the broker's config owns). Any other session field (``model``, ``instructions``,
    ``audio``, ``store``, ...) is refused with ``400 session_field_not_allowed`` naming it in
    ``param``; an unknown top-level or ``transport`` key is ``400 unknown_parameter``.
    Upstream gets the client's server-side ``live_session`` plus that ``input``. ``201``
    ``{"session": {"id"}, "transport": {"type": "webrtc", "sdp": "<answer>"}}``, as upstream.
``POST /v1/realtime/calls`` (Realtime)
    ``application/sdp`` body only (anything else ``415``; a query string ``400``: the broker
    picks the model). Upstream gets ``multipart/form-data`` with the ``sdp`` and the client's
    server-side ``realtime_session``. ``201`` with the answer SDP and ``Location:
    /v1/realtime/calls/<call id>``, as upstream.
``POST /v1/realtime/calls/{call_id}/hangup``
    Ends the caller's own proxied Realtime call upstream (someone else's call: ``404``) and
    frees its slot (authenticated, not rate-limited: it only frees resources): ``200`` once
    upstream answered; ``202 {"status": "hangup_pending"}`` when it could not be reached (the
    slot stays held and the broker keeps hanging up, as for a cap).

Per client (:class:`SessionLimits`): ``max_sessions`` live at once (leases in the broker's
:class:`~fsm_voice.broker.ratelimit.LimitStore`: memory, or Redis shared between replicas;
``429 session_limit_reached`` beyond it), ``max_duration`` and ``idle_timeout`` seconds:

* Live: the broker attaches to every session it created over the sideband WebSocket
  (``/v1/live/sessions/{id}/attach``, real key). At the cap it sends ``session.close`` there;
  the session ends with ``session.closed {reason: "close_requested"}`` (the client sees the
  same event). Idle means no ``session.input_transcript.delta`` /
  ``session.output_transcript.delta`` on the sideband for ``idle_timeout`` seconds since the
  later of the creation and the last delta (``session.usage.updated`` is not activity: it keeps
  ticking while the session is open). The slot is freed only when the end is confirmed:
  ``session.closed`` (any reason) on the sideband, or the upstream saying the session is gone
  (404 on attach). Fail closed otherwise: a dropped or unreachable sideband is re-attached
  (backoff 0.2 s doubling to ``close_retry_max``, 30 s) and the cap is still enforced (audited)
  while detached, its ``session.close`` sent on re-attach; a ``session.close`` unanswered
  for ``close_grace`` is sent again on a fresh attach. Past the cap plus ``close_grace`` the
  session is overdue: one ``session_overdue`` row, the lease renewed, the slot held, the
  broker still trying; only after ``overdue_limit`` (default 24 h) does it give up
  (``session_ended close_abandoned``, an error log) and free the slot.
* Realtime: at ``max_duration`` the broker calls ``POST /v1/realtime/calls/{id}/hangup``,
  retried like the Live close (same backoff, ``session_overdue``, ``overdue_limit``) until it
  answers 2xx or 404.
  ``idle_timeout`` is NOT enforced for Realtime: the broker sees no event of a Realtime call
  (the Realtime sideband is not used). A call the client ends without hanging up through the
  broker keeps its slot until ``max_duration``.

Upstream errors: a 4xx rejection (other than 401/403/429) keeps its status with a typed body
(the upstream's ``type``/``code``/``param`` when they are short identifiers sharing nothing with
the API key, under the broker's own message); 401/403 (the broker's key refused) and 5xx are
``502``, a 429 stays ``429``, a timeout is ``504 upstream_timeout``; ``Retry-After`` is clamped.
Upstream text never reaches a client.

Audit rows (one each; ``http_status`` 0 for rows of no HTTP request): every proxied create
(``session_created``, with the session id) and refusal (the broker's usual outcomes:
``rate_limited`` with detail ``session_limit_reached``, ``bad_request``, ``upstream_error``, ...);
every enforcement (``session_enforced``, detail ``max_duration`` | ``idle_timeout`` |
``broker_stopping`` | ``audit_failed`` | ``client_hangup`` (a client hangup still pending);
``latency_ms`` = how late after the cap the close was
sent); every overdue session (``session_overdue``, detail the cap, ``latency_ms`` = how far
past it); every end (``session_ended``, detail the ``session.closed`` reason or ``hangup``,
``client_hangup``, ``session_gone``, ``close_abandoned``, ``broker_stopping``; ``latency_ms`` = the
session's lifetime); a create whose answer nobody can get (the client's request gone when the
upstream answered, or the broker stopping meanwhile) is not handed out: the new session is
closed upstream at once and the request's row is ``session_abandoned`` (detail
``client_gone``, status 499, or ``broker_stopping``, ``503 shutting_down``), not
``session_created``; the upstream call is shielded, so a create whose handler the stop cancels
still has the session it makes closed (``session_abandoned`` ``broker_stopping``). An end the
upstream did not confirm (the broker stopped first) leaves the
lease to expire by its TTL rather than releasing it. A created session whose row cannot
be written is ended at once and the client gets ``500 audit_failed``. When the broker stops, it
closes the sessions it supervises (``broker_stopping``): none runs on uncapped.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import math
import re
import secrets
import time
import urllib.parse
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Final, Literal

import aiohttp
import attrs
from aiohttp import web

from fsm_voice._lifetime import read_limited
from fsm_voice.errors import ConfigError
from fsm_voice.live_input import LiveInputError, validate_live_input

from .audit import AuditEntry
from .ratelimit import LimitsUnavailable

if TYPE_CHECKING:
    from .app import TokenBroker, _Outcome, _Refusal

__all__ = [
    "LIVE_SESSIONS_PATH",
    "LIVE_SESSION_FIELDS",
    "REALTIME_CALLS_PATH",
    "REALTIME_SESSION_FIELDS",
    "ClientProxy",
    "ProxiedSession",
    "ProxyConfig",
    "SessionLimits",
    "SessionProxy",
]

log = logging.getLogger(__name__)

LIVE_SESSIONS_PATH: Final = "/v1/live/sessions"
REALTIME_CALLS_PATH: Final = "/v1/realtime/calls"
LIVE_SESSION_FIELDS: Final = frozenset(
    {"model", "instructions", "audio", "client", "delegation", "store"}
)
"""What a server-side Live session config may hold (``input`` comes from the client)."""
REALTIME_SESSION_FIELDS: Final = frozenset(
    {
        "type", "model", "instructions", "audio", "output_modalities", "tools", "tool_choice",
        "tracing", "truncation", "prompt", "include", "max_output_tokens",
    }
)
ACTIVITY_EVENTS: Final = frozenset(
    {"session.input_transcript.delta", "session.output_transcript.delta"}
)
_ID: Final = re.compile(r"^[A-Za-z0-9_.:\-]{1,160}$")
_PARAM: Final = re.compile(r"^[A-Za-z0-9_.\[\]]{1,64}$")
_ERROR_TYPES: Final = frozenset(
    {"invalid_request_error", "requests", "server_error", "rate_limit_error", "not_found_error"}
)
_LEASE_SLACK: Final = 60.0
Kind = Literal["live", "realtime"]


# --------------------------------------------------------------------------------------------
# Configuration
# --------------------------------------------------------------------------------------------


def _seconds(name: str, value: object, *, allow_none: bool = False) -> float | None:
    if value is None and allow_none:
        return None
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or not 0 < value <= 7 * 86_400
    ):
        raise ConfigError.invalid(name, value, "a positive number of seconds (at most 7 days)")
    return float(value)


def _frozen_json(name: str, value: object) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise ConfigError.invalid(name, value, "a JSON object")
    try:
        copied = json.loads(json.dumps(dict(value)))
    except (TypeError, ValueError) as exc:
        raise ConfigError.invalid(name, "<object>", f"JSON-serialisable ({exc})") from None
    return MappingProxyType(copied)


def _live_session(value: object) -> Mapping[str, Any]:
    session = _frozen_json("live_session", value)
    unknown = sorted(k for k in session if k not in LIVE_SESSION_FIELDS)
    if unknown:
        raise ConfigError.invalid(
            "live_session",
            ", ".join(unknown)[:200],
            f"only {sorted(LIVE_SESSION_FIELDS)} (session.input comes from the client)",
        )
    model = session.get("model")
    if not isinstance(model, str) or not model.strip():
        raise ConfigError.invalid("live_session.model", model, "a model name, e.g. 'gpt-live-1'")
    return session


def _realtime_session(value: object) -> Mapping[str, Any]:
    session = _frozen_json("realtime_session", value)
    unknown = sorted(k for k in session if k not in REALTIME_SESSION_FIELDS)
    if unknown:
        raise ConfigError.invalid(
            "realtime_session", ", ".join(unknown)[:200], "a Realtime session object"
        )
    if session.get("type", "realtime") != "realtime":
        raise ConfigError.invalid("realtime_session.type", session.get("type"), "'realtime'")
    if not isinstance(session.get("model"), str):
        raise ConfigError.invalid(
            "realtime_session.model", session.get("model"), "a model name, e.g. 'gpt-realtime'"
        )
    return MappingProxyType({"type": "realtime", **session})


MIN_DURATION: Final = 1.0
"""Shortest ``max_duration`` (a cap below a second ends sessions before they can start)."""


def _duration(value: object) -> float:
    seconds = float(_seconds("max_duration", value) or 0.0)
    if seconds < MIN_DURATION:
        raise ConfigError.invalid("max_duration", value, f"at least {MIN_DURATION:g} s")
    return seconds


def _idle(value: object) -> float | None:
    return _seconds("idle_timeout", value, allow_none=True)


def _grace(value: object) -> float:
    return float(_seconds("close_grace", value) or 0.0)


def _attach_seconds(value: object) -> float:
    return float(_seconds("attach_timeout", value) or 0.0)


def _retry_max(value: object) -> float:
    return float(_seconds("close_retry_max", value) or 0.0)


def _overdue_limit(value: object) -> float:
    return float(_seconds("overdue_limit", value) or 0.0)


def _offer_bytes(instance: object, attribute: object, value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not 1024 <= value <= 1 << 24:
        raise ConfigError.invalid("max_offer_bytes", value, "an int in [1024, 16777216]")


def _max_sessions(instance: object, attribute: object, value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 100_000:
        raise ConfigError.invalid("max_sessions", value, "an int in [1, 100000]")


def _flag(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if not isinstance(value, bool):
        raise ConfigError.invalid(attribute.name, value, "true or false")


@attrs.frozen
class SessionLimits:
    """Caps on one client's proxied sessions, enforced by the broker."""

    max_sessions: int = attrs.field(default=2, validator=_max_sessions)
    """Sessions (Live and Realtime together) the client may have open at once."""
    max_duration: float = attrs.field(default=1800.0, converter=_duration)
    """Seconds after creation at which the broker ends the session."""
    idle_timeout: float | None = attrs.field(default=None, converter=_idle)
    """Seconds without a transcript delta after which the broker ends a Live session (None:
    never; not enforced for Realtime, see the module docstring)."""

    def __attrs_post_init__(self) -> None:
        if self.idle_timeout is not None and self.idle_timeout > self.max_duration:
            raise ConfigError.invalid(
                "idle_timeout", self.idle_timeout,
                f"at most max_duration ({self.max_duration:g} s): it could never fire")


@attrs.frozen
class ClientProxy:
    """One client's proxy settings: what the broker sends upstream, and the caps."""

    live_session: Mapping[str, Any] = attrs.field(
        factory=lambda: {"model": "gpt-live-1"}, converter=_live_session
    )
    realtime_session: Mapping[str, Any] = attrs.field(
        factory=lambda: {"type": "realtime", "model": "gpt-realtime"},
        converter=_realtime_session,
    )
    limits: SessionLimits = attrs.field(factory=SessionLimits)
    allow_developer_input: bool = attrs.field(default=False, validator=_flag)
    """Whether the client's ``session.input`` may hold ``developer`` messages (guidance at the
    instructions' level); by default only ``user`` and ``assistant`` turns."""


_ENTRY_KEYS: Final = frozenset(
    {"live_session", "realtime_session", "max_sessions", "max_duration_s", "idle_timeout_s",
     "allow_developer_input"}
)


def _client_proxy(name: str, entry: object, base: ClientProxy) -> ClientProxy:
    if not isinstance(entry, dict):
        raise ConfigError.invalid(name, entry, "a JSON object")
    unknown = sorted(str(k) for k in entry if k not in _ENTRY_KEYS)
    if unknown:
        raise ConfigError.invalid(name, ", ".join(unknown)[:200], f"keys of {sorted(_ENTRY_KEYS)}")
    changes = {field: entry[key] for key, field in (
        ("max_sessions", "max_sessions"), ("max_duration_s", "max_duration"),
        ("idle_timeout_s", "idle_timeout")) if key in entry}
    limits = attrs.evolve(base.limits, **changes)
    return ClientProxy(
        live_session=entry.get("live_session", base.live_session),
        realtime_session=entry.get("realtime_session", base.realtime_session),
        limits=limits,
        allow_developer_input=entry.get("allow_developer_input", base.allow_developer_input),
    )


def _client_map(value: Mapping[str, ClientProxy]) -> Mapping[str, ClientProxy]:
    for cid, entry in value.items():
        if not isinstance(entry, ClientProxy):
            raise ConfigError.invalid(f"proxy clients[{cid!r}]", entry, "a ClientProxy")
    return MappingProxyType(dict(value))


@attrs.frozen
class ProxyConfig:
    """The proxy mode: ``default`` settings, per-client overrides in ``clients``."""

    default: ClientProxy = attrs.field(factory=ClientProxy)
    clients: Mapping[str, ClientProxy] = attrs.field(factory=dict, converter=_client_map)
    close_grace: float = attrs.field(default=10.0, converter=_grace)
    """Seconds to wait for ``session.closed`` after the broker's ``session.close``."""
    attach_timeout: float = attrs.field(default=5.0, converter=_attach_seconds)
    close_retry_max: float = attrs.field(default=30.0, converter=_retry_max)
    """Longest pause between two attempts to close an overdue session (backoff from 0.2 s)."""
    overdue_limit: float = attrs.field(default=86_400.0, converter=_overdue_limit)
    """Seconds past its cap after which the broker stops trying to close a session it cannot
    reach and frees its slot (``close_abandoned``, logged as an error); until then the slot
    stays held (fail closed)."""
    max_offer_bytes: int = attrs.field(default=256 * 1024, validator=_offer_bytes)
    """Largest request body (the SDP offer, plus ``session.input`` for Live)."""

    def for_client(self, client_id: str) -> ClientProxy:
        return self.clients.get(client_id, self.default)

    @classmethod
    def from_file(
        cls, path: str | Path, default: ClientProxy | None = None, **options: Any
    ) -> ProxyConfig:
        """From a JSON file ``{"default": ENTRY, "clients": {"<id>": ENTRY}}``, ENTRY being
        ``{"live_session", "realtime_session", "max_sessions", "max_duration_s",
        "idle_timeout_s", "allow_developer_input"}`` (all optional; a client entry overrides the
        default's fields)."""
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise ConfigError(f"cannot read proxy config {str(path)!r}: {exc}") from None
        if not isinstance(data, dict) or set(data) - {"default", "clients"}:
            raise ConfigError.invalid(
                "proxy config", str(path), 'a JSON object {"default": {...}, "clients": {...}}'
            )
        base = _client_proxy("proxy default", data.get("default", {}), default or ClientProxy())
        clients = data.get("clients", {})
        if not isinstance(clients, dict):
            raise ConfigError.invalid("proxy clients", clients, "a JSON object")
        return cls(
            default=base,
            clients={
                str(cid): _client_proxy(f"proxy clients[{cid!r}]", entry, base)
                for cid, entry in clients.items()
            },
            **options,
        )


# --------------------------------------------------------------------------------------------
# Sessions
# --------------------------------------------------------------------------------------------


@attrs.define(eq=False)
class ProxiedSession:
    """A session the broker created and supervises (times: the event loop's clock)."""

    kind: Kind
    session_id: str
    client_id: str
    lease: str | None
    limits: SessionLimits
    created: float
    deadline: float
    last_activity: float
    ended: asyncio.Event = attrs.field(factory=asyncio.Event)
    end_reason: str | None = None
    end_audited: bool = False
    enforced: str | None = None
    ws: aiohttp.ClientWebSocketResponse | None = None
    task: asyncio.Task[None] | None = None
    close_by: float | None = None
    enforced_at: float | None = None
    wake: asyncio.Event = attrs.field(factory=asyncio.Event)
    attached: asyncio.Event = attrs.field(factory=asyncio.Event)
    """Set while the Live sideband is attached."""
    attachments: int = 0
    overdue: asyncio.Event = attrs.field(factory=asyncio.Event)
    """Set once the session is past its cap plus ``close_grace`` without a confirmed end (its
    ``session_overdue`` row written); the slot stays held until the end is confirmed."""
    overdue_audited: bool = False
    confirmed: bool = False
    """The end is known upstream (``session.closed``, a 404, a hangup answered)."""


class _SessionGone(Exception):
    """The upstream says the session does not exist (any more)."""


class SessionProxy:
    """The proxy endpoints and the supervisors of the sessions they create; owned by a
    :class:`~fsm_voice.broker.app.TokenBroker` (its auth, limits, audit log, HTTP client)."""

    def __init__(self, broker: TokenBroker, config: ProxyConfig) -> None:
        self.broker = broker
        self.config = config
        self.sessions: dict[str, ProxiedSession] = {}
        self._event_ids = itertools.count(1)
        self._closing = False
        self._adopting: set[asyncio.Task[None]] = set()

    # -- wiring --------------------------------------------------------------------------

    def add_routes(self, app: web.Application) -> None:
        app.router.add_route("*", LIVE_SESSIONS_PATH, self._live_endpoint)
        app.router.add_route("*", REALTIME_CALLS_PATH, self._realtime_endpoint)
        app.router.add_route(
            "*", REALTIME_CALLS_PATH + "/{call_id}/hangup", self._hangup_endpoint
        )

    @property
    def _upstream(self) -> str:
        return self.broker.config.upstream_base

    def _auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.broker._api_key}"}

    def _http(self) -> aiohttp.ClientSession:
        http = self.broker._http
        if http is None:
            from .app import _refuse

            raise _refuse(
                503, "overloaded", "The broker is not running.", type="server_error",
                code="not_running",
            )
        return http

    def begin_stop(self) -> None:
        """Refuse new creates from now on; a create whose upstream answer arrives later is
        closed at once and answered ``503 shutting_down`` (called first by the broker's stop)."""
        self._closing = True

    async def aclose(self) -> None:
        """End every supervised session (audited ``broker_stopping``), bounded by
        ``close_grace``; then stop the supervisors."""
        self._closing = True
        if self._adopting:  # creates cut off by the stop: their sessions first
            await asyncio.gather(*list(self._adopting), return_exceptions=True)
        live = list(self.sessions.values())
        await asyncio.gather(*(self._enforce(s, "broker_stopping") for s in live),
                             return_exceptions=True)
        tasks = [s.task for s in live if s.task is not None]
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=self.config.close_grace + 1.0)
            for task in pending:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    # -- the request wrapper: one answer and one audit row per request ---------------------

    async def _audited(
        self, request: web.Request, work: Callable[[web.Request], Awaitable[_Outcome]]
    ) -> web.StreamResponse:
        from .app import _error_body, _Outcome, _Refusal

        broker = self.broker
        started = time.perf_counter()
        state = broker._request_state(request)
        task = asyncio.current_task()
        if task is not None:
            broker._inflight.add(task)
        cancelled = False
        try:
            try:
                result = await work(request)
            except _Refusal as refusal:
                result = refusal.outcome
            except asyncio.CancelledError:
                cancelled = True
                result = _Outcome(
                    web.json_response(
                        _error_body("The broker is shutting down.", type="server_error",
                                    code="shutting_down"),
                        status=503,
                    ),
                    "internal_error", state.client_id, detail="shutdown", authenticated=True,
                )
            except Exception as exc:
                log.error("broker proxy: unhandled %s on %s", type(exc).__name__, request.path)
                result = _Outcome(
                    web.json_response(
                        _error_body("Internal error.", type="server_error", code="internal_error"),
                        status=500,
                    ),
                    "internal_error", state.client_id, detail="internal_error",
                    authenticated=state.client_id is not None,
                )
            detail = result.detail
            if detail is None and state.limits_fail_open:
                detail = "limits_fail_open"
            entry = AuditEntry(
                outcome=result.outcome,
                http_status=result.response.status,
                latency_ms=(time.perf_counter() - started) * 1000.0,
                client_id=result.client_id,
                remote_addr=state.client_addr,
                session_id=result.session_id,
                detail=detail,
            )
            broker._count(result.outcome)
            suppressed = (
                not result.authenticated
                and broker._unauth_audit is not None
                and broker._unauth_audit.acquire("*") is not None
            )
            if suppressed:
                broker._count("audit_suppressed")
            else:
                try:
                    await broker.audit.record(entry)
                    broker.audit_failing = False
                except Exception as exc:
                    log.error("broker proxy: audit write failed (%s)", type(exc).__name__)
                    broker.audit_failing = True
                    broker._count("audit_failed")
                    session = self.sessions.get(result.session_id or "")
                    if result.outcome == "session_created" and session is not None:
                        # fail closed: no session runs without its row
                        await self._enforce(session, "audit_failed")
                        return web.json_response(
                            _error_body("The audit log is unavailable.", type="server_error",
                                        code="audit_failed"),
                            status=500,
                        )
            if cancelled:
                raise asyncio.CancelledError
            return result.response
        finally:
            if task is not None:
                broker._inflight.discard(task)

    async def _admit(self, request: web.Request, *, rate_limited: bool = True) -> str:
        from .app import _STATE, _refuse

        if request.method != "POST":
            raise _refuse(
                405, "bad_request", f"Method {request.method[:16]!r} not allowed: use POST.",
                code="method_not_allowed", headers={"Allow": "POST"}, authenticated=False,
            )
        if rate_limited:
            client_id = await self.broker._admit(request)
        else:
            client_id = await self.broker._authenticate(request)
        request[_STATE].client_id = client_id
        return client_id

    async def _body(self, request: web.Request, client_id: str) -> bytes:
        from .app import _refuse

        limit = self.config.max_offer_bytes
        try:
            async with asyncio.timeout(self.broker.config.body_timeout):
                raw = await read_limited(request, limit)
        except TimeoutError:
            refusal = _refuse(
                408, "bad_request",
                f"The request body did not arrive within {self.broker.config.body_timeout:g} s.",
                code="request_timeout", client_id=client_id,
            )
            refusal.outcome.response.force_close()
            raise refusal from None
        if raw is None:
            raise _refuse(
                413, "bad_request", f"Request body too large: the limit is {limit} bytes.",
                code="request_too_large", client_id=client_id,
            )
        return raw

    # -- Live -----------------------------------------------------------------------------

    async def _live_endpoint(self, request: web.Request) -> web.StreamResponse:
        return await self._audited(request, self._live_create)

    def _live_request(
        self, raw: bytes, client_id: str, settings: ClientProxy
    ) -> tuple[str, list[Any] | None]:
        """The client's offer SDP and ``session.input`` (None when absent), or a 400."""
        from .app import _refuse

        def bad(message: str, code: str, param: str | None = None) -> _Refusal:
            return _refuse(400, "bad_request", message, code=code, param=param,
                           client_id=client_id)

        try:
            body = json.loads(raw)
        except (ValueError, RecursionError):
            raise bad("The request body is not valid JSON.", "invalid_json") from None
        if not isinstance(body, dict):
            raise bad("The request body must be a JSON object.", "invalid_type")
        for key in body:
            if key not in ("session", "transport"):
                raise bad(f"Unknown parameter: {str(key)[:64]!r}.", "unknown_parameter",
                          str(key)[:64])
        transport = body.get("transport")
        if not isinstance(transport, dict):
            raise bad("Missing required parameter: 'transport'.", "missing_required_parameter",
                      "transport")
        for key in transport:
            if key not in ("type", "sdp"):
                raise bad(f"Unknown parameter: 'transport.{str(key)[:64]}'.",
                          "unknown_parameter", f"transport.{str(key)[:64]}")
        if transport.get("type") != "webrtc":
            raise bad("'transport.type' must be 'webrtc'.", "invalid_value", "transport.type")
        sdp = transport.get("sdp")
        if not isinstance(sdp, str) or not sdp.strip():
            raise bad("'transport.sdp' must be a non-empty SDP offer.", "invalid_value",
                      "transport.sdp")
        session = body.get("session", {})
        if not isinstance(session, dict):
            raise bad("'session' must be an object.", "invalid_type", "session")
        for key in session:
            if key != "input":
                name = str(key)[:64]
                raise bad(
                    f"'session.{name}' is set by the broker for this client; a client may send "
                    "only 'session.input'.",
                    "session_field_not_allowed",
                    f"session.{name}",
                )
        items = session.get("input")
        if items is not None:
            roles = ("developer", "user", "assistant") if settings.allow_developer_input else (
                "user", "assistant")
            try:
                validate_live_input(items, roles=roles)
            except LiveInputError as exc:
                raise bad(exc.message, exc.code, exc.param) from None
        return sdp, items

    async def _admit_create(self, request: web.Request, content_type: str, how: str) -> str:
        """A create's client (authenticated, rate-limited), refused when it carries a query
        (the broker sets the session) or a body that is not ``content_type``."""
        from .app import _refuse

        client_id = await self._admit(request)
        if request.query:
            name = next(iter(request.query))[:64]
            raise _refuse(
                400, "bad_request",
                f"Unknown parameter: {name!r} (the session, model included, is set by the "
                "broker for this client).",
                code="unknown_parameter", param=name, client_id=client_id,
            )
        if request.content_type != content_type:
            raise _refuse(
                415, "bad_request",
                f"Unsupported content type {request.content_type[:64]!r}: {how}",
                code="unsupported_content_type", client_id=client_id,
            )
        return client_id

    async def _live_create(self, request: web.Request) -> _Outcome:
        from .app import _Outcome

        client_id = await self._admit_create(request, "application/json",
                                             "send the body as 'application/json'.")
        settings = self.config.for_client(client_id)
        sdp, items = self._live_request(await self._body(request, client_id), client_id,
                                        settings)
        session: dict[str, Any] = json.loads(json.dumps(dict(settings.live_session)))
        if items is not None:
            session["input"] = items
        payload = {"session": session, "transport": {"type": "webrtc", "sdp": sdp}}

        async def call(http: aiohttp.ClientSession) -> tuple[str, web.Response]:
            async with http.post(
                self._upstream + LIVE_SESSIONS_PATH, json=payload, headers=self._auth(),
                allow_redirects=False,
            ) as resp:
                raw = await _read_capped(resp, self.config.max_offer_bytes)
                if resp.status != 201:
                    raise self._upstream_refusal(resp.status, raw, resp.headers, client_id)
            session_id, answer = self._live_answer(raw, client_id)
            body = {"session": {"id": session_id},
                    "transport": {"type": "webrtc", "sdp": answer}}
            return session_id, web.json_response(
                body, status=201, headers={"Cache-Control": "no-store"}
            )

        s, response = await self._create(request, "live", client_id, settings.limits, call)
        return _Outcome(response, "session_created", client_id, authenticated=True,
                        session_id=s.session_id)

    def _live_answer(self, raw: bytes, client_id: str) -> tuple[str, str]:
        try:
            body = json.loads(raw)
            session_id = body["session"]["id"]
            answer = body["transport"]["sdp"]
        except (ValueError, TypeError, KeyError, RecursionError):
            raise self._invalid_response(client_id, "the answer is not Live JSON") from None
        if not isinstance(session_id, str) or not _ID.match(session_id):
            raise self._invalid_response(client_id, "the session id is not identifier-like")
        if not isinstance(answer, str) or not answer.strip():
            raise self._invalid_response(client_id, "no SDP answer")
        return session_id, answer

    # -- Realtime -------------------------------------------------------------------------

    async def _realtime_endpoint(self, request: web.Request) -> web.StreamResponse:
        return await self._audited(request, self._realtime_create)

    async def _realtime_create(self, request: web.Request) -> _Outcome:
        from .app import _Outcome, _refuse

        client_id = await self._admit_create(
            request, "application/sdp", "send the SDP offer as 'application/sdp' (the broker "
            "supplies the session configuration).")
        raw = await self._body(request, client_id)
        try:
            sdp = raw.decode("utf-8")
        except UnicodeDecodeError:
            sdp = ""
        if not sdp.strip():
            raise _refuse(400, "bad_request", "The body must be a UTF-8 SDP offer.",
                          code="invalid_offer", param="sdp", client_id=client_id)
        settings = self.config.for_client(client_id)
        form = aiohttp.FormData()
        form.add_field("sdp", sdp, content_type="application/sdp")
        form.add_field("session", json.dumps(dict(settings.realtime_session)),
                       content_type="application/json")

        async def call(http: aiohttp.ClientSession) -> tuple[str, web.Response]:
            async with http.post(
                self._upstream + REALTIME_CALLS_PATH, data=form, headers=self._auth(),
                allow_redirects=False,
            ) as resp:
                raw = await _read_capped(resp, self.config.max_offer_bytes)
                if resp.status != 201:
                    raise self._upstream_refusal(resp.status, raw, resp.headers, client_id)
                location = resp.headers.get("Location", "")
            call_id = location.rstrip("/").rsplit("/", 1)[-1]
            if not _ID.match(call_id):
                raise self._invalid_response(client_id, "no call id in Location")
            try:
                answer = raw.decode("utf-8")
            except UnicodeDecodeError:
                answer = ""
            if not answer.strip():
                raise self._invalid_response(client_id, "no SDP answer")
            return call_id, web.Response(
                status=201, text=answer, content_type="application/sdp",
                headers={"Location": f"{REALTIME_CALLS_PATH}/{call_id}",
                         "Cache-Control": "no-store"},
            )

        s, response = await self._create(request, "realtime", client_id, settings.limits, call)
        return _Outcome(response, "session_created", client_id, authenticated=True,
                        session_id=s.session_id)

    async def _hangup_endpoint(self, request: web.Request) -> web.StreamResponse:
        return await self._audited(request, self._client_hangup)

    async def _client_hangup(self, request: web.Request) -> _Outcome:
        from .app import _Outcome, _refuse

        client_id = await self._admit(request, rate_limited=False)
        call_id = request.match_info["call_id"]
        s = self.sessions.get(call_id)
        if s is None or s.kind != "realtime" or s.client_id != client_id or s.ended.is_set():
            # someone else's call is as unknown as a missing one
            raise _refuse(404, "bad_request", "Call not found.", code="call_not_found",
                          client_id=client_id)
        if s.enforced is None:  # no cap row from now on: the client is ending it
            s.enforced = "client_hangup"
            s.enforced_at = asyncio.get_running_loop().time()
        status = await self._post_hangup(s)
        if status is not None and status < 500:
            if not s.ended.is_set():
                s.end_reason = "client_hangup"
                s.confirmed = True
                s.end_audited = True  # this request's row is the end's row
                s.ended.set()  # the supervisor frees the slot
            return _Outcome(web.json_response({}, status=200), "session_ended", client_id,
                            detail="client_hangup", authenticated=True,
                            session_id=s.session_id)
        # fail closed: the slot stays held and the supervisor keeps hanging up until upstream
        # answers (the end row comes from it)
        s.wake.set()
        return _Outcome(web.json_response({"status": "hangup_pending"}, status=202),
                        "session_enforced", client_id, detail="client_hangup",
                        authenticated=True, session_id=s.session_id)

    async def _post_hangup(self, s: ProxiedSession) -> int | None:
        """POST the upstream hangup of ``s``: its status, or None when it could not be sent."""
        http = self.broker._http
        if http is None:
            return None
        url = (f"{self._upstream}{REALTIME_CALLS_PATH}/"
               f"{urllib.parse.quote(s.session_id, safe='')}/hangup")
        try:
            async with (
                asyncio.timeout(self.broker.config.upstream_timeout),
                http.post(url, headers=self._auth(), allow_redirects=False) as resp,
            ):
                await resp.read()
                return resp.status
        except (TimeoutError, aiohttp.ClientError) as exc:
            log.warning("broker proxy: hangup of %s failed (%s)", s.session_id,
                        type(exc).__name__)
            return None

    # -- creation: slot, upstream, supervisor ------------------------------------------------

    async def _create(
        self,
        request: web.Request,
        kind: Kind,
        client_id: str,
        limits: SessionLimits,
        call: Callable[[aiohttp.ClientSession], Awaitable[tuple[str, web.Response]]],
    ) -> tuple[ProxiedSession, web.Response]:
        from .app import _STATE, _refuse

        broker = self.broker
        if self._closing:
            raise _refuse(503, "overloaded", "The broker is shutting down.", type="server_error",
                          code="shutting_down", client_id=client_id)
        http = self._http()
        new_lease = f"{kind}:{secrets.token_hex(12)}"
        lease: str | None = new_lease
        ttl = limits.max_duration + self.config.close_grace + _LEASE_SLACK
        try:
            held = await broker.limits.hold_session(
                client_id, new_lease, limits.max_sessions, ttl
            )
        except LimitsUnavailable as exc:
            log.error("broker proxy: session leases unavailable: %s", exc)
            broker.limits_failing = True
            broker.limits_error = exc.reason
            if not broker.config.limits_fail_open:
                seconds = broker.config.limits_retry_after
                raise _refuse(
                    503, "limits_unavailable",
                    f"Session limits are unavailable; try again in {seconds}s.",
                    type="server_error", code="rate_limits_unavailable", client_id=client_id,
                    headers={"Retry-After": str(seconds)},
                ) from None
            held, lease = True, None  # fail open: uncounted, and the row says so (detail)
            request[_STATE].limits_fail_open = True
        if not held:
            raise _refuse(
                429, "rate_limited",
                f"Client {client_id!r} already has {limits.max_sessions} session(s) open "
                "(its limit): end one first.",
                type="requests", code="session_limit_reached", client_id=client_id,
            )
        try:
            try:
                async with asyncio.timeout(broker.config.upstream_queue_timeout):
                    await broker.upstream_slots.acquire(client_id)
            except TimeoutError:
                raise _refuse(
                    503, "overloaded", "Too many upstream requests in flight; try again shortly.",
                    type="server_error", code="server_overloaded", client_id=client_id,
                    headers={"Retry-After": "1"},
                ) from None
            upstream = asyncio.ensure_future(call(http))
            try:
                async with asyncio.timeout(broker.config.upstream_timeout):
                    # shielded: a handler cancelled by the broker's stop must not drop a session
                    # the upstream is creating (it would run on unsupervised)
                    session_id, response = await asyncio.shield(upstream)
            except asyncio.CancelledError:
                if not upstream.done():
                    self._adopt(upstream, kind, client_id, limits)
                raise
            except TimeoutError:
                upstream.cancel()
                raise _refuse(
                    504, "upstream_error",
                    f"The upstream did not answer within {broker.config.upstream_timeout:g} s.",
                    type="upstream_error", code="upstream_timeout", client_id=client_id,
                ) from None
            except aiohttp.ClientError as exc:
                log.warning("broker proxy: upstream unreachable (%s)", type(exc).__name__)
                raise _refuse(
                    502, "upstream_error", "The upstream could not be reached.",
                    type="upstream_error", code="upstream_unreachable", client_id=client_id,
                ) from None
            finally:
                broker.upstream_slots.release(client_id)
        except BaseException:
            if lease is not None:
                with contextlib.suppress(LimitsUnavailable):
                    await broker.limits.release_session(client_id, lease)
            raise
        loop = asyncio.get_running_loop()
        now = loop.time()
        s = ProxiedSession(
            kind=kind, session_id=session_id, client_id=client_id, lease=lease, limits=limits,
            created=now, deadline=now + limits.max_duration, last_activity=now,
        )
        self.sessions[session_id] = s
        runner = self._run_live if kind == "live" else self._run_realtime
        s.task = loop.create_task(runner(s), name=f"broker-proxy-{kind}-{session_id}")
        log.info("broker proxy: %s session %s for client %s", kind, session_id, client_id)
        transport = request.transport
        if transport is None or transport.is_closing() or self._closing:
            # nobody will get this answer (the client left, or the broker is stopping): close
            # the new session upstream at once; its slot is freed when the close is confirmed
            why = "broker_stopping" if self._closing else "client_gone"
            log.warning("broker proxy: %s session %s abandoned (%s): closing it", kind,
                        session_id, why)
            await self._enforce(s, why, audit=False)
            raise _abandoned(s, why)
        return s, response

    def _adopt(
        self,
        upstream: asyncio.Future[tuple[str, web.Response]],
        kind: Kind,
        client_id: str,
        limits: SessionLimits,
    ) -> None:
        """The create's handler was cancelled (the broker stopping) while the upstream was
        still answering: when it answers, close that session at once (``session_abandoned``
        ``broker_stopping``); :meth:`aclose` waits for this first."""

        async def adopt() -> None:
            try:
                async with asyncio.timeout(self.broker.config.upstream_timeout):
                    session_id, _ = await upstream
            except Exception:  # refused, failed or timed out: no session was made
                upstream.cancel()
                return
            loop = asyncio.get_running_loop()
            now = loop.time()
            s = ProxiedSession(
                kind=kind, session_id=session_id, client_id=client_id, lease=None,
                limits=limits, created=now, deadline=now + limits.max_duration,
                last_activity=now,
            )
            self.sessions[session_id] = s
            runner = self._run_live if kind == "live" else self._run_realtime
            s.task = loop.create_task(runner(s), name=f"broker-proxy-{kind}-{session_id}")
            log.warning("broker proxy: %s session %s answered after its request was cancelled: "
                        "closing it", kind, session_id)
            await self._enforce(s, "broker_stopping", audit=False)
            await self._audit(s, "session_abandoned", "broker_stopping", 0.0)

        task = asyncio.get_running_loop().create_task(adopt(), name="broker-proxy-adopt")
        self._adopting.add(task)
        task.add_done_callback(self._adopting.discard)

    # -- upstream answers ----------------------------------------------------------------------

    def _invalid_response(self, client_id: str, why: str) -> _Refusal:
        from .app import _refuse

        log.warning("broker proxy: upstream answer rejected: %s", why)
        return _refuse(502, "upstream_error", "The upstream's answer was not usable.",
                       type="upstream_error", code="upstream_invalid_response",
                       client_id=client_id)

    def _upstream_refusal(
        self, status: int, raw: bytes, headers: Mapping[str, str], client_id: str
    ) -> _Refusal:
        """A typed refusal for an upstream error: its status kept for a 4xx rejection (but
        401/403: the broker's own key -> 502), 502 for the rest; only vetted identifiers."""
        from .app import _refuse

        broker = self.broker
        code, etype, param = "upstream_error", "upstream_error", None
        try:
            error = json.loads(raw)["error"]
            if isinstance(error.get("code"), str):
                code = broker._upstream_code(error["code"])
            if error.get("type") in _ERROR_TYPES:
                etype = error["type"]
            if isinstance(error.get("param"), str) and _PARAM.match(error["param"]):
                vetted = broker._upstream_code(re.sub(r"[^a-z0-9_]", "_", error["param"].lower()))
                param = error["param"] if vetted != "upstream_error" else None
        except (ValueError, TypeError, KeyError, AttributeError, RecursionError):
            pass
        extra: dict[str, str] = {}
        retry = broker._clamp_retry_after(_retry_after(headers.get("Retry-After")))
        if retry is not None:
            extra["Retry-After"] = str(retry)
        if status in (401, 403):
            code = "upstream_auth_failed"
            out_status, etype = 502, "upstream_error"
            message = "The upstream refused the broker's credentials."
        elif status == 429:
            out_status, etype = 429, "requests"
            message = f"The upstream is at its session limit ({code}); try again later."
        elif 400 <= status < 500:
            out_status = status
            where = f" at {param!r}" if param else ""
            message = f"The upstream rejected the session ({code}{where})."
        else:
            out_status = 502
            message = f"The upstream failed ({code}, HTTP {status})."
        return _refuse(out_status, "upstream_error", message, type=etype, code=code,
                       param=param, client_id=client_id, headers=extra)

    # -- supervisors ---------------------------------------------------------------------------

    async def _attach(self, s: ProxiedSession) -> aiohttp.ClientWebSocketResponse:
        """Attach to ``s``'s sideband (raises :class:`_SessionGone` on 404, else
        ``aiohttp.ClientError`` / ``TimeoutError``)."""
        base = self._upstream
        ws_base = "ws" + base[4:] if base.startswith("http") else base
        url = (f"{ws_base}{LIVE_SESSIONS_PATH}/"
               f"{urllib.parse.quote(s.session_id, safe='')}/attach")
        try:
            async with asyncio.timeout(self.config.attach_timeout):
                return await self._http().ws_connect(url, headers=self._auth(), autoping=True)
        except aiohttp.WSServerHandshakeError as exc:
            if exc.status in (404, 410):
                raise _SessionGone from None
            raise

    def _due(self, s: ProxiedSession) -> tuple[str, float]:
        """The cap ``s`` reaches first and when."""
        idle = s.limits.idle_timeout
        if s.kind == "live" and idle is not None and s.last_activity + idle < s.deadline:
            return "idle_timeout", s.last_activity + idle
        return "max_duration", s.deadline

    async def _overdue(self, s: ProxiedSession, delay: float) -> bool:
        """Bookkeeping for a failed close attempt: past the cap plus ``close_grace`` the session
        is overdue (one ``session_overdue`` row) and its lease is renewed so the slot stays
        held; False (``close_abandoned``) once ``overdue_limit`` has passed."""
        now = asyncio.get_running_loop().time()
        cap_at = s.deadline if s.enforced_at is None else min(s.deadline, s.enforced_at)
        if now < cap_at + self.config.close_grace:
            return True
        if not s.overdue_audited:
            s.overdue_audited = True
            log.error("broker proxy: %s of client %s is overdue: its end is not confirmed; "
                      "the slot stays held while the broker keeps closing it",
                      s.session_id, s.client_id)
            await self._audit(s, "session_overdue", s.enforced or "max_duration",
                              (now - cap_at) * 1000.0)
            s.overdue.set()
        if now >= cap_at + self.config.overdue_limit:
            log.error("broker proxy: giving up on closing %s after %g s overdue",
                      s.session_id, self.config.overdue_limit)
            s.end_reason = "close_abandoned"
            return False
        if s.lease is not None:
            ttl = delay + self.config.close_grace + self.config.attach_timeout + _LEASE_SLACK
            try:
                await self.broker.limits.hold_session(
                    s.client_id, s.lease, s.limits.max_sessions, ttl
                )
            except LimitsUnavailable as exc:
                log.error("broker proxy: lease renewal of %s failed: %s", s.session_id, exc)
        return True

    async def _attach_until(self, s: ProxiedSession) -> aiohttp.ClientWebSocketResponse | None:
        """The sideband, retried with backoff (0.2 s doubling to ``close_retry_max``) until it
        works or the session is gone (``end_reason`` ``session_gone``: None). A cap reached
        meanwhile is enforced (audited; its ``session.close`` goes out on re-attach); past the
        cap the session is overdue and its slot stays held (fail closed) until ``overdue_limit``
        (``close_abandoned``: None)."""
        loop = asyncio.get_running_loop()
        delay = 0.2
        attempt = 0
        while True:
            attempt += 1
            try:
                return await self._attach(s)
            except _SessionGone:
                s.end_reason = "session_gone"
                s.confirmed = True
                return None
            except Exception as exc:  # unreachable, refused, timed out, broker stopping
                log.warning("broker proxy: attach to %s failed (%s), attempt %d",
                            s.session_id, type(exc).__name__, attempt)
            now = loop.time()
            cap, due = self._due(s)
            if s.enforced is None and now >= due:
                await self._enforce(s, cap, late_ms=(now - due) * 1000.0)
            if not await self._overdue(s, delay):
                return None
            wait = delay if s.enforced is not None else min(delay, max(0.0, due - now))
            await self._pause(s, wait)
            delay = min(delay * 2, self.config.close_retry_max)

    async def _pause(self, s: ProxiedSession, seconds: float) -> None:
        """Back off ``seconds`` (woken early by an enforcement from outside)."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await s.wake.wait()
        s.wake.clear()

    async def _run_live(self, s: ProxiedSession) -> None:
        try:
            await self._live_loop(s)
        except asyncio.CancelledError:
            s.end_reason = s.end_reason or "broker_stopping"
            raise
        except Exception as exc:
            log.error("broker proxy: supervisor of %s failed (%s)", s.session_id,
                      type(exc).__name__)
            s.end_reason = s.end_reason or "supervisor_failed"
        finally:
            ws, s.ws = s.ws, None
            if ws is not None:
                with contextlib.suppress(Exception):
                    await asyncio.shield(ws.close())
            await asyncio.shield(self._finish(s))

    async def _live_loop(self, s: ProxiedSession) -> None:
        loop = asyncio.get_running_loop()
        retry = 0.2
        while True:
            if s.ws is None:
                s.ws = await self._attach_until(s)
                if s.ws is None:
                    return
                s.attachments += 1
                s.attached.set()
                if s.enforced is not None:  # decided while detached, or a close to repeat
                    await self._send_close(s)
                    assert s.enforced_at is not None
                    s.close_by = loop.time() + max(self.config.close_grace, retry)
            now = loop.time()
            if s.enforced is None:
                cap, due = self._due(s)
                if now >= due:
                    await self._enforce(s, cap, late_ms=(now - due) * 1000.0)
                    continue
                wait = due - now
            else:
                assert s.close_by is not None
                wait = s.close_by - now
                if wait <= 0:
                    # no session.closed: fail closed; drop the sideband and re-attach (a 404
                    # says it is gone), the close is sent again, the slot stays held
                    if not await self._overdue(s, retry):
                        return
                    retry = min(retry * 2, self.config.close_retry_max)
                    self._detach(s, "close unconfirmed")
                    continue
            msg = await _receive(s.ws, s.wake, wait)
            if msg is None:  # timed out, or woken by an enforcement from outside
                continue
            if msg.type == aiohttp.WSMsgType.TEXT:
                event = _event(msg.data)
                etype = event.get("type") if event is not None else None
                if etype in ACTIVITY_EVENTS:
                    s.last_activity = loop.time()
                elif etype == "session.closed":
                    reason = event.get("reason") if event is not None else None
                    s.end_reason = reason if isinstance(reason, str) else "unknown"
                    s.confirmed = True
                    return
                continue
            if msg.type in (aiohttp.WSMsgType.PING, aiohttp.WSMsgType.PONG,
                            aiohttp.WSMsgType.BINARY):
                continue
            # the sideband closed without session.closed: re-attach (a 404 says it is gone)
            self._detach(s, msg.type.name)

    def _detach(self, s: ProxiedSession, why: str) -> None:
        ws, s.ws = s.ws, None
        s.attached.clear()
        log.warning("broker proxy: sideband of %s dropped (%s): re-attaching", s.session_id, why)
        if ws is not None:
            task = asyncio.get_running_loop().create_task(ws.close())
            task.add_done_callback(_ignore_result)

    async def _send_close(self, s: ProxiedSession) -> bool:
        ws = s.ws
        if ws is None or ws.closed:
            return False
        try:
            await ws.send_str(json.dumps(
                {"type": "session.close", "event_id": f"broker_cap_{next(self._event_ids)}"}
            ))
            return True
        except (aiohttp.ClientError, ConnectionError, RuntimeError) as exc:
            log.warning("broker proxy: session.close to %s failed (%s)", s.session_id,
                        type(exc).__name__)
            return False

    async def _enforce(
        self, s: ProxiedSession, cap: str, late_ms: float = 0.0, *, audit: bool = True
    ) -> None:
        """Decide to end ``s`` for ``cap`` (once): an audit row (unless ``audit`` is False: the
        caller writes its own), ``session.close`` on the sideband (Live; the Realtime
        supervisor posts the hangup, retried until answered)."""
        if s.enforced is not None or s.ended.is_set():
            return
        s.enforced = cap
        loop = asyncio.get_running_loop()
        s.enforced_at = loop.time()
        s.close_by = s.enforced_at + self.config.close_grace
        s.wake.set()
        log.info("broker proxy: %s of client %s reached %s: closing", s.session_id,
                 s.client_id, cap)
        if s.kind == "live":
            await self._send_close(s)
        if audit:
            await self._audit(s, "session_enforced", cap, late_ms)

    async def _run_realtime(self, s: ProxiedSession) -> None:
        loop = asyncio.get_running_loop()
        try:
            while s.enforced is None and not s.ended.is_set():
                now = loop.time()
                if now >= s.deadline:
                    await self._enforce(s, "max_duration", late_ms=(now - s.deadline) * 1000.0)
                    break
                ended = asyncio.ensure_future(s.ended.wait())
                woken = asyncio.ensure_future(s.wake.wait())
                try:
                    await asyncio.wait({ended, woken}, timeout=s.deadline - now,
                                       return_when=asyncio.FIRST_COMPLETED)
                finally:
                    for t in (ended, woken):
                        t.cancel()
                    await asyncio.gather(ended, woken, return_exceptions=True)
                s.wake.clear()
            delay = 0.2
            while not s.ended.is_set():  # the hangup, retried until answered (fail closed)
                status = await self._post_hangup(s)
                if s.ended.is_set():
                    break
                if status is not None and (status < 300 or status == 404):
                    s.end_reason = "hangup" if status < 300 else "session_gone"
                    s.confirmed = True
                    break
                if not await self._overdue(s, delay):
                    break
                await self._pause(s, delay)
                delay = min(delay * 2, self.config.close_retry_max)
        except asyncio.CancelledError:
            s.end_reason = s.end_reason or "broker_stopping"
            raise
        finally:
            await asyncio.shield(self._finish(s))

    async def _finish(self, s: ProxiedSession) -> None:
        """Free ``s``'s slot, forget it, write its end row (once). An end the upstream did not
        confirm (the broker stopping or its supervisor failing before the close got through)
        leaves the lease to expire by its TTL: a shared (Redis) slot count stays fail-closed."""
        if self.sessions.get(s.session_id) is s:
            del self.sessions[s.session_id]
        s.ended.set()
        if s.lease is not None and not (
            s.confirmed or s.end_reason in ("close_abandoned", "client_hangup")
        ):
            log.warning("broker proxy: end of %s unconfirmed (%s): its slot is left to expire",
                        s.session_id, s.end_reason)
            s.lease = None
        if s.lease is not None:
            lease, s.lease = s.lease, None
            try:
                await self.broker.limits.release_session(s.client_id, lease)
            except LimitsUnavailable as exc:  # the lease expires by itself (its TTL)
                log.error("broker proxy: release of %s's slot failed: %s", s.client_id, exc)
        if not s.end_audited:
            s.end_audited = True
            lifetime = (asyncio.get_running_loop().time() - s.created) * 1000.0
            await self._audit(s, "session_ended", s.end_reason or "unknown", lifetime)

    async def _audit(self, s: ProxiedSession, outcome: str, detail: str, ms: float) -> None:
        entry = AuditEntry(outcome=outcome, http_status=0, latency_ms=max(0.0, ms),
                           client_id=s.client_id, session_id=s.session_id, detail=detail)
        self.broker._count(outcome)
        try:
            await self.broker.audit.record(entry)
            self.broker.audit_failing = False
        except Exception as exc:
            log.error("broker proxy: audit write failed (%s): %s %s of %s", type(exc).__name__,
                      outcome, detail, s.session_id)
            self.broker.audit_failing = True
            self.broker._count("audit_failed")


def _abandoned(s: ProxiedSession, why: str) -> Exception:
    """The refusal of a create whose session was closed at once (``session_abandoned`` row)."""
    from .app import _error_body, _Outcome, _Refusal

    if why == "broker_stopping":
        body = _error_body("The broker is shutting down.", type="server_error",
                           code="shutting_down")
        status = 503
    else:  # the client is gone: this answer goes nowhere
        body = _error_body("The client closed the request.", type="invalid_request_error",
                           code="client_closed_request")
        status = 499
    return _Refusal(_Outcome(web.json_response(body, status=status), "session_abandoned",
                             s.client_id, detail=why, authenticated=True,
                             session_id=s.session_id))


def _ignore_result(task: asyncio.Task[Any]) -> None:
    if not task.cancelled():
        task.exception()


def _event(data: object) -> dict[str, Any] | None:
    try:
        event = json.loads(data) if isinstance(data, str) else None
    except (ValueError, RecursionError):
        return None
    return event if isinstance(event, dict) else None


def _retry_after(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        return float(value)
    except ValueError:
        return None


async def _receive(
    ws: aiohttp.ClientWebSocketResponse, wake: asyncio.Event, timeout: float
) -> aiohttp.WSMessage | None:
    """The next sideband message, or None after ``timeout`` s or once ``wake`` is set (it is
    cleared then)."""
    if wake.is_set():
        wake.clear()
        return None
    recv = asyncio.ensure_future(ws.receive())
    woken = asyncio.ensure_future(wake.wait())
    try:
        await asyncio.wait({recv, woken}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        pending = [t for t in (recv, woken) if not t.done()]
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
    if recv.done() and not recv.cancelled():
        return recv.result()
    if woken.done() and not woken.cancelled():
        wake.clear()
    return None


async def _read_capped(resp: aiohttp.ClientResponse, limit: int) -> bytes:
    chunks: list[bytes] = []
    total = 0
    async for chunk in resp.content.iter_chunked(64 * 1024):
        total += len(chunk)
        if total > limit:
            raise aiohttp.ClientPayloadError(f"upstream body over {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


