"""A local stand-in for the OpenAI Realtime WebRTC backend (aiohttp + aiortc), loopback only.

``POST /v1/realtime/calls`` takes an SDP offer (``application/sdp``, or ``multipart/form-data``
with ``sdp`` and an optional JSON ``session`` field, as the real API accepts) and answers ``201``
with the answer SDP and ``Location: /v1/realtime/calls/<call_id>``. Each call is an aiortc
answerer (:class:`~fsm_voice.peer.call.Call`): the ``oai-events`` data channel carries the
JSON events, the audio track is consumed by an energy VAD, and replies are played back as audio.
``POST /v1/realtime/calls/<call_id>/hangup`` ends a call, for the caller that made it (the same
key, or a key minted with the same API key; anyone else gets 404). ``/control/...`` injects
faults (see :mod:`fsm_voice.peer.control`; it needs :attr:`RealtimePeer.control_token`).
``POST /v1/realtime/client_secrets`` mints ephemeral ``ek_``
keys (see :mod:`fsm_voice.peer.secrets`); with ``require_ephemeral=True`` the calls endpoint
accepts only those keys, while unexpired.

The same peer speaks OpenAI's Live API (see :mod:`fsm_voice.peer.live`): ``POST
/v1/live/sessions`` takes ``{"session": {...}, "transport": {"type": "webrtc", "sdp"}}`` (strict
schema) and answers ``201 {"session": {"id": "live_..."}, "transport": {"type": "webrtc",
"sdp"}}``; the call is a :class:`~fsm_voice.peer.live.LiveCall` (``session.started``,
transcripts, usage, ``session.close``). ``WS /v1/live/sessions/<id>/attach`` is the sideband, for
the key that created the session. :attr:`RealtimePeer.live_sessions` records what each session
received.

Every peer connection is created inside :func:`fsm_voice.transport.loopback.loopback` with an
explicit empty ICE server list, so no packet leaves 127.0.0.1 and no public STUN server is used.
"""

from __future__ import annotations

import asyncio
import collections
import copy
import hashlib
import ipaddress
import json
import logging
import math
import secrets
import time
from collections.abc import Callable, Collection, Mapping
from typing import Any

from aiohttp import BodyPartReader, WSMsgType, web

from fsm_voice._lifetime import LocalService, read_limited

from . import protocol as p
from .call import Call, Reply, reply_tone
from .control import CONTROL_TOKEN_HEADER, add_control_routes
from .live import (
    CLOSE_REASONS,
    LIVE_MODELS,
    LIVE_SESSIONS_PATH,
    LiveCall,
    LiveRequestError,
    LiveSessionRecord,
    Sideband,
    error_event,
    new_session_id,
    parse_create,
)
from .secrets import ClientSecretStore, add_client_secret_routes, bearer_token

log = logging.getLogger(__name__)

CALLS_PATH = "/v1/realtime/calls"
DEFAULT_MAX_BODY = 64 * 1024
MAX_PENDING_REJECTIONS = 1000
MAX_LIVE_RECORDS = 1000
MAX_SIDEBAND_MESSAGE = 64 * 1024
_STATUS_ERROR_TYPE = {
    400: "invalid_request_error",
    401: "invalid_request_error",
    403: "invalid_request_error",
    404: "invalid_request_error",
    409: "invalid_request_error",
    413: "invalid_request_error",
    415: "invalid_request_error",
    429: "requests",
}


def loopback_host(host: str, allow: Collection[str] = ()) -> str:
    """Check that ``host`` is a loopback address; 'localhost' means 127.0.0.1.

    Raises ValueError for anything else: the peer must never listen on a real interface.
    ``allow`` lists extra literal addresses explicitly opted in (e.g. the address of a test's
    own network namespace).
    """
    if host == "localhost":
        return "127.0.0.1"
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(
            f"RealtimePeer binds to loopback only; {host!r} is not a literal IP address "
            "(use 127.0.0.1 or ::1)"
        ) from None
    if not ip.is_loopback and str(ip) not in {str(ipaddress.ip_address(a)) for a in allow}:
        raise ValueError(
            f"RealtimePeer binds to loopback only (127.0.0.0/8 or ::1); refusing {host!r}"
        )
    return str(ip)


def validate_offer(sdp: str) -> str | None:
    """Why ``sdp`` is not an acceptable offer (None when it looks fine)."""
    lines = [ln.strip() for ln in sdp.replace("\r\n", "\n").split("\n") if ln.strip()]
    if not lines or lines[0] != "v=0":
        return "SDP offer must start with 'v=0'"
    media = [ln.split()[0][2:] for ln in lines if ln.startswith("m=") and len(ln.split()) >= 4]
    if "audio" not in media:
        return "SDP offer has no audio m-line"
    if "application" not in media:
        return "SDP offer has no application (data channel) m-line"
    if not any(ln.startswith("a=fingerprint:") for ln in lines):
        return "SDP offer has no DTLS fingerprint"
    if not any(ln.startswith("a=ice-ufrag:") for ln in lines):
        return "SDP offer has no ICE credentials"
    return None


class _Rejection:
    __slots__ = ("code", "message", "param", "retry_after", "status")

    def __init__(
        self, status: int, retry_after: float | None, code: str | None, message: str | None,
        param: str | None = None,
    ) -> None:
        self.status = status
        self.retry_after = retry_after
        self.code = code
        self.message = message
        self.param = param


class RealtimePeer(LocalService):
    """The local realtime-compatible server. Use as ``async with RealtimePeer() as peer:``.

    ``reply``: "echo" replays the caller's last utterance; "tone" plays a ~1 s voiced tone.
    ``tokens``: predicate on bearer tokens (default: any non-empty token is accepted).
    ``api_keys``: API keys allowed to mint client secrets (default: any ``sk-`` key).
    ``require_ephemeral``: the calls endpoints accept only unexpired minted ``ek_`` keys.
    ``now``: epoch-seconds clock for client-secret expiry (injectable for tests).
    ``max_session_seconds``: each call's time limit (``session.expires_at``); at the limit the
    call gets a ``session_expired`` error event and ends, as on the real service.
    ``candidate_addresses``: the calls' ICE host candidates (default: 127.0.0.1, or ``host``
    when it is an opted-in non-loopback address).
    ``allow_bind``: non-loopback addresses ``host`` may explicitly be (opt-in; the namespace
    tests bind to their namespace's own address). ICE candidates stay loopback unless the
    caller overrides them (see ``tests/netns_agent.py``).
    ``control_token``: the secret the control API requires (default: a random one; send
    :attr:`control_headers`). ``header_timeout``: seconds a client may take to send a request
    head, then its body (slow-loris bound).
    ``live_usage_interval``: seconds between a Live session's ``session.usage.updated`` events.
    ``live_models``: models a Live create may name (None: any non-empty string).
    ``live_close_linger``: at most this long after ``session.closed`` the peer waits for the
    client to close the connection before it closes the call itself.
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        reply: Reply = "echo",
        vad_threshold_dbfs: float = -40.0,
        tokens: Callable[[str], bool] | None = None,
        model: str = p.DEFAULT_MODEL,
        voice: str = p.DEFAULT_VOICE,
        max_body_bytes: int = DEFAULT_MAX_BODY,
        max_calls: int = 64,
        connect_timeout: float = 30.0,
        tone_seconds: float = 1.0,
        api_keys: Collection[str] | None = None,
        require_ephemeral: bool = False,
        now: Callable[[], float] = time.time,
        allow_bind: Collection[str] = (),
        candidate_addresses: Collection[str] | None = None,
        max_session_seconds: float = 3600.0,
        control_token: str | None = None,
        header_timeout: float = 20.0,
        live_usage_interval: float = 1.0,
        live_models: Collection[str] | None = LIVE_MODELS,
        live_close_linger: float = 1.0,
    ) -> None:
        if not 0.05 <= tone_seconds <= 60:
            raise ValueError(f"tone_seconds must be in [0.05, 60], got {tone_seconds!r}")
        if reply not in ("echo", "tone"):
            raise ValueError(f"reply must be 'echo' or 'tone', got {reply!r}")
        if not 0 <= port <= 65535:
            raise ValueError(f"port out of range: {port!r}")
        if not -120.0 < vad_threshold_dbfs < 0.0:
            raise ValueError(f"vad_threshold_dbfs must be in (-120, 0), got {vad_threshold_dbfs}")
        if max_body_bytes <= 0 or max_calls <= 0 or connect_timeout <= 0:
            raise ValueError("max_body_bytes, max_calls and connect_timeout must be positive")
        if not (math.isfinite(header_timeout) and header_timeout > 0):
            raise ValueError(f"header_timeout must be positive, got {header_timeout!r}")
        for name, value in (("live_usage_interval", live_usage_interval),
                            ("live_close_linger", live_close_linger)):
            if not (math.isfinite(value) and 0 < value <= 3600):
                raise ValueError(f"{name} must be in (0, 3600], got {value!r}")
        self.live_usage_interval = float(live_usage_interval)
        self.live_close_linger = float(live_close_linger)
        self.live_models = None if live_models is None else frozenset(live_models)
        if control_token is not None and (not isinstance(control_token, str) or
                                          len(control_token) < 16):
            raise ValueError("control_token must be a string of at least 16 characters")
        self.control_token = control_token or secrets.token_urlsafe(24)
        self.header_timeout = float(header_timeout)
        self.host = loopback_host(host, allow_bind)
        self.max_session_seconds = max_session_seconds
        # The calls' ICE host candidates: loopback, or the bound address when opted in.
        self.candidate_addresses = tuple(candidate_addresses) if candidate_addresses else (
            ("127.0.0.1",) if ipaddress.ip_address(self.host).is_loopback else (self.host,)
        )
        self.port = port
        self.reply: Reply = reply
        self.vad_threshold_dbfs = vad_threshold_dbfs
        self.model = model
        self.voice = voice
        self.max_body_bytes = max_body_bytes
        self.max_calls = max_calls
        self.connect_timeout = connect_timeout
        self.tone_seconds = tone_seconds
        self._tokens = tokens
        self.require_ephemeral = require_ephemeral
        self.client_secrets = ClientSecretStore(
            api_keys=api_keys, now=now, model=model, voice=voice
        )
        self._runner: web.AppRunner | None = None
        self._bound_port: int | None = None
        self._calls: dict[str, Call] = {}
        # Snapshots of ended calls (not the calls: they hold closed peer connections).
        self._ended: collections.deque[dict[str, Any]] = collections.deque(maxlen=64)
        self._rejections: collections.deque[_Rejection] = collections.deque()
        self.answer_delay = 0.0
        self.drop_after: float | None = None
        self.expires_at: int | None = None
        self._stopping = False
        self._counters: collections.Counter[str] = collections.Counter()
        self._events_received: collections.Counter[str] = collections.Counter()
        self._owners: dict[str, str] = {}  # call id -> who made it (see _owner)
        self._live_records: collections.deque[LiveSessionRecord] = collections.deque(
            maxlen=MAX_LIVE_RECORDS)
        self._config_rejections: collections.deque[_Rejection] = collections.deque()

    def __repr__(self) -> str:  # never the control token
        state = self.base_url if self._bound_port is not None else "stopped"
        return f"RealtimePeer({state})"

    @property
    def control_headers(self) -> dict[str, str]:
        """Headers a control API request needs (the control token)."""
        return {CONTROL_TOKEN_HEADER: self.control_token}

    @property
    def bound_port(self) -> int | None:
        """The port bound by :meth:`start` (None when stopped)."""
        return self._bound_port

    # ----------------------------------------------------------------- lifecycle

    @property
    def calls_url(self) -> str:
        return self.base_url + CALLS_PATH

    async def start(self) -> None:
        if self._runner is not None:
            raise RuntimeError("RealtimePeer already started")
        self._stopping = False
        # Synthesize the reply tone (also echo's fallback) off the event loop, once.
        await asyncio.to_thread(reply_tone, self.tone_seconds)
        app = web.Application(client_max_size=self.max_body_bytes)
        app.router.add_post(CALLS_PATH, self._handle_offer)
        app.router.add_post(CALLS_PATH + "/{call_id}/hangup", self._handle_hangup)
        app.router.add_post(LIVE_SESSIONS_PATH, self._handle_live_create)
        app.router.add_get(LIVE_SESSIONS_PATH + "/{session_id}/attach", self._handle_live_attach)
        add_control_routes(app, self)
        add_client_secret_routes(app, self.client_secrets)
        await self._serve_app(app)

    async def stop(self) -> None:
        """Close every call (peer connections, tracks, tasks) and the HTTP server."""
        self._stopping = True
        calls = list(self._calls.values())
        if calls:
            await asyncio.gather(
                *(c.close("server_stopped") for c in calls), return_exceptions=True
            )
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()
        self._bound_port = None


    # ----------------------------------------------------------------- inspection

    @property
    def calls(self) -> dict[str, Call]:
        """Live calls by id (a copy)."""
        return dict(self._calls)

    def list_calls(self) -> list[dict[str, Any]]:
        """Live calls then recently ended ones, with state and counters."""
        return [c.info() for c in self._calls.values()] + list(self._ended)

    def stats(self) -> dict[str, Any]:
        return {
            "offers_received": self._counters["offers_received"],
            "offers_answered": self._counters["offers_answered"],
            "offers_refused": self._counters["offers_refused"],
            "offers_rejected_injected": self._counters["offers_rejected_injected"],
            "offers_abandoned": self._counters["offers_abandoned"],
            "calls_created": self._counters["calls_created"],
            "calls_active": len(self._calls),
            "calls_ended": self._counters["calls_ended"],
            "events_received": dict(self._events_received),
            "pending_rejections": self.pending_rejections,
            "answer_delay": self.answer_delay,
            "client_secrets_minted": self.client_secrets.minted,
            "client_secrets_refused": self.client_secrets.refused,
            "live_sessions_created": self._counters["live_sessions_created"],
            "live_sessions_active": sum(isinstance(c, LiveCall) for c in self._calls.values()),
            "sidebands_attached": self._counters["sidebands_attached"],
            "pending_config_rejections": len(self._config_rejections),
        }

    @property
    def live_sessions(self) -> list[LiveSessionRecord]:
        """Every Live session created (oldest first, the last 1000): what it received and how
        it ended. The records are live objects: a session's end updates its record."""
        return list(self._live_records)

    def live_session(self, session_id: str) -> LiveSessionRecord | None:
        return next((r for r in self._live_records if r.id == session_id), None)

    # ----------------------------------------------------------------- faults

    def _targets(self, call_id: str | None) -> list[Call]:
        if call_id is None:
            return list(self._calls.values())
        call = self._calls.get(call_id)
        return [call] if call is not None else []

    def send_error(
        self,
        type: str = "server_error",
        code: str | None = None,
        message: str = "Injected error",
        *,
        param: str | None = None,
        call_id: str | None = None,
    ) -> int:
        """Send an ``error`` event to every live call (or one). Returns how many got it."""
        return sum(
            c.send_error(message, type=type, code=code, param=param) for c in self._targets(call_id)
        )

    def send_event(self, event: Mapping[str, Any], call_id: str | None = None) -> int:
        """Send any server event (a fresh ``event_id`` is stamped on it) to every live call (or
        one), e.g. an event type the client does not know. Returns how many got it."""
        if not isinstance(event, Mapping) or not isinstance(event.get("type"), str):
            raise ValueError("event must be an object with a string 'type'")
        return sum(c.send(event) for c in self._targets(call_id))

    def go_silent(self, call_id: str | None = None) -> int:
        """Stop all outgoing UDP of the call(s): media, data channel, ICE responses, consent
        checks. No signalling; the client just sees traffic stop. Returns calls affected."""
        return sum(1 for c in self._targets(call_id) if c.go_silent() > 0)

    def resume(self, call_id: str | None = None) -> int:
        """Let silenced calls send again. Returns calls affected."""
        silenced = [c for c in self._targets(call_id) if c.silent]
        for c in silenced:
            c.resume()
        return len(silenced)

    def mute_media(self, call_id: str | None = None) -> int:
        """Stop the call(s)' outbound audio like a browser's ``replaceTrack(null)``: RTP stops,
        ICE, DTLS, RTCP and the data channel stay up. Returns calls affected."""
        return sum(1 for c in self._targets(call_id) if c.mute_media())

    def unmute_media(self, call_id: str | None = None) -> int:
        """Undo :meth:`mute_media`. Returns calls affected."""
        return sum(1 for c in self._targets(call_id) if c.unmute_media())

    async def close_call(self, call_id: str | None = None) -> int:
        """Close the call(s) abruptly (``pc.close()``, no event first). Returns how many."""
        targets = self._targets(call_id)
        await asyncio.gather(*(c.close("closed_by_control") for c in targets))
        return len(targets)

    def reject_offers(
        self,
        count: int,
        status: int = 503,
        retry_after: float | None = None,
        code: str | None = None,
        message: str | None = None,
    ) -> None:
        """Answer the next ``count`` offers with ``status`` (JSON error, Retry-After if set)."""
        if count < 0:
            raise ValueError("count must not be negative")
        if count > MAX_PENDING_REJECTIONS - len(self._rejections):
            raise ValueError(
                f"at most {MAX_PENDING_REJECTIONS} offer rejections may be pending "
                f"({len(self._rejections)} are)"
            )
        if not 400 <= status <= 599:
            raise ValueError(f"status must be a 4xx/5xx code, got {status}")
        if retry_after is not None and (retry_after < 0 or not math.isfinite(retry_after)):
            raise ValueError("retry_after must be a non-negative number")
        for _ in range(count):
            self._rejections.append(_Rejection(status, retry_after, code, message))

    @property
    def pending_rejections(self) -> int:
        return len(self._rejections)

    def delay_answers(self, seconds: float) -> None:
        """Hold every following answer for ``seconds`` (0 turns it off)."""
        if seconds < 0 or not math.isfinite(seconds) or seconds > 3600:
            raise ValueError("seconds must be in [0, 3600]")
        self.answer_delay = float(seconds)

    def drop_calls_after(self, seconds: float | None) -> None:
        """Close every following call ``seconds`` after its data channel opens (None: off)."""
        if seconds is not None and (not 0 <= seconds <= 3600 or not math.isfinite(seconds)):
            raise ValueError("seconds must be in [0, 3600] or null")
        self.drop_after = None if seconds is None else float(seconds)

    def session_expires_at(self, expires_at: int | None) -> None:
        """Every following call reports this ``session.expires_at`` (epoch seconds, any int,
        e.g. 0 or one in the past; None: the real limit)."""
        if expires_at is not None and (isinstance(expires_at, bool)
                                       or not isinstance(expires_at, int)):
            raise ValueError("expires_at must be an integer or null")
        self.expires_at = expires_at

    def expire_all_keys(self) -> int:
        """Expire every minted client secret now. Returns how many were still valid."""
        return self.client_secrets.expire_all()

    async def live_close(self, reason: str, session_id: str | None = None) -> int:
        """End the Live session(s) as the server would: ``session.closed{reason}`` on the data
        channel and the sidebands, then the call ends. ``reason`` is one of the five documented
        ones. Returns how many sessions it closed."""
        if reason not in CLOSE_REASONS:
            raise ValueError(f"reason must be one of {', '.join(CLOSE_REASONS)}; got {reason!r}")
        targets = [c for c in self._targets(session_id) if isinstance(c, LiveCall)]
        done = await asyncio.gather(*(c.end_session(reason, closed_by="fault") for c in targets))
        return sum(done)

    def reject_config(
        self, code: str, message: str | None = None, *, param: str | None = None, count: int = 1,
        status: int = 400,
    ) -> None:
        """Answer the next ``count`` Live creates with ``status`` (400) and this error ``code``
        (as if the session configuration were refused)."""
        if not isinstance(code, str) or not code:
            raise ValueError("code must be a non-empty string")
        if count < 0 or count > MAX_PENDING_REJECTIONS - len(self._config_rejections):
            raise ValueError(f"count must be in [0, {MAX_PENDING_REJECTIONS}] in all")
        if not 400 <= status <= 499:
            raise ValueError(f"status must be a 4xx code, got {status}")
        for _ in range(count):
            self._config_rejections.append(_Rejection(status, None, code, message, param))

    def reset_faults(self) -> None:
        self._config_rejections.clear()
        self._rejections.clear()
        self.answer_delay = 0.0
        self.drop_after = None
        self.expires_at = None

    # ----------------------------------------------------------------- HTTP

    def _error(
        self,
        status: int,
        message: str,
        code: str | None,
        headers: dict[str, str] | None = None,
        param: str | None = None,
    ) -> web.Response:
        etype = _STATUS_ERROR_TYPE.get(status, "server_error")
        self._counters["offers_refused"] += 1
        return web.json_response(
            p.http_error(message, type=etype, code=code, param=param),
            status=status,
            headers=headers,
        )

    def _authorized(self, request: web.Request, *, live: bool = False) -> web.Response | None:
        """None when the bearer key may use the endpoint, else the 401. Live endpoints take
        API keys only (the Live API has no ephemeral keys): a minted ``ek_`` key is refused, and
        with ``require_ephemeral`` the key must be one that may mint."""
        header = request.headers.get("Authorization", "")
        scheme, _, token = header.partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            return self._error(
                401,
                "You didn't provide an API key. You need to provide your API key in an "
                "Authorization header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY).",
                None,
            )
        if live and (self.client_secrets.lookup(token) is not None or (
                self.require_ephemeral and not self.client_secrets.accepts_api_key(token))):
            return self._error(
                401, "Incorrect API key provided: the Live API takes project API keys, not "
                "client secrets.", "invalid_api_key")
        if self.require_ephemeral and not live:
            status = self.client_secrets.status(token)
            if status != "valid":
                # Expired and unknown keys get the same answer (no key-state oracle).
                return self._error(
                    401,
                    "Incorrect API key provided: an unexpired client secret (ek_) is required.",
                    "invalid_api_key",
                )
            return None
        accept = self._tokens if self._tokens is not None else bool
        if not accept(token):
            return self._error(401, "Incorrect API key provided.", "invalid_api_key")
        return None

    async def _read_offer(self, request: web.Request) -> tuple[str, dict[str, Any] | None] | (
        web.Response
    ):
        ctype = request.content_type
        if ctype == "application/sdp":
            raw = await read_limited(request, self.max_body_bytes)
            if raw is None:
                return self._error(
                    413,
                    f"Request body too large: the limit is {self.max_body_bytes} bytes.",
                    "request_too_large",
                )
            try:
                return raw.decode("utf-8"), None
            except UnicodeDecodeError:
                return self._error(400, "SDP offer is not valid UTF-8.", "invalid_offer")
        if ctype == "multipart/form-data":
            return await self._read_multipart(request)
        return self._error(
            415,
            f"Unsupported content type {ctype!r}: send the SDP offer as 'application/sdp' "
            "(or 'multipart/form-data' with an 'sdp' field).",
            "unsupported_content_type",
        )

    async def _read_multipart(self, request: web.Request) -> tuple[str, dict[str, Any] | None] | (
        web.Response
    ):
        if request.content_length is not None and request.content_length > self.max_body_bytes:
            return self._error(
                413,
                f"Request body too large: the limit is {self.max_body_bytes} bytes.",
                "request_too_large",
            )
        sdp: str | None = None
        session: dict[str, Any] | None = None
        try:
            reader = await request.multipart()
            total = 0
            while True:
                part = await reader.next()
                if part is None:
                    break
                if not isinstance(part, BodyPartReader):
                    continue
                data = await part.read(decode=False)
                total += len(data)
                if total > self.max_body_bytes:
                    return self._error(
                        413,
                        f"Request body too large: the limit is {self.max_body_bytes} bytes.",
                        "request_too_large",
                    )
                if part.name == "sdp":
                    sdp = bytes(data).decode("utf-8")
                elif part.name == "session":
                    try:
                        parsed = json.loads(bytes(data))
                    except RecursionError:
                        return self._error(
                            400, "'session' is nested too deeply.", "invalid_json", param="session"
                        )
                    if not isinstance(parsed, dict):
                        return self._error(
                            400, "'session' must be a JSON object.", "invalid_type", param="session"
                        )
                    session = parsed
        except (ValueError, UnicodeDecodeError, AssertionError) as exc:
            return self._error(400, f"Malformed multipart body: {exc}", "invalid_request")
        if sdp is None:
            return self._error(
                400, "Missing required parameter: 'sdp'.", "missing_required_parameter", param="sdp"
            )
        return sdp, session

    def _injected_rejection(self) -> web.Response | None:
        """The next pending ``reject_offers`` answer, if any."""
        if not self._rejections:
            return None
        rej = self._rejections.popleft()
        self._counters["offers_rejected_injected"] += 1
        headers = {}
        if rej.retry_after is not None:
            headers["Retry-After"] = str(math.ceil(rej.retry_after))
        default_msg = (
            "The server is overloaded or not ready yet."
            if rej.status >= 500
            else "Request rejected by the local peer (injected fault)."
        )
        return self._error(
            rej.status,
            rej.message or default_msg,
            rej.code or ("server_overloaded" if rej.status >= 500 else None),
            headers=headers,
        )

    def _call_options(self) -> dict[str, Any]:
        """Keyword arguments every call of this peer gets."""
        return {
            "reply": self.reply,
            "vad_threshold_dbfs": self.vad_threshold_dbfs,
            "voice": self.voice,
            "on_event_received": self._count_event,
            "on_closed": self._call_closed,
            "connect_timeout": self.connect_timeout,
            "tone_seconds": self.tone_seconds,
            "candidate_addresses": self.candidate_addresses,
            "max_session_seconds": self.max_session_seconds,
        }

    async def _answer(
        self, request: web.Request, sdp: str, make: Callable[[], Call]
    ) -> tuple[Call, str] | web.Response:
        """Admit a new call (limits, injected delay), make it and answer ``sdp``."""
        if len(self._calls) >= self.max_calls:
            return self._error(
                429, "Too many concurrent calls on the local peer.", "rate_limit_exceeded"
            )
        if self.answer_delay > 0:
            await asyncio.sleep(self.answer_delay)
        if _gone(request):
            self._counters["offers_abandoned"] += 1
            return self._error(499, "The client closed the request.", "request_aborted")
        if self._stopping:
            return self._error(503, "The local peer is shutting down.", "server_shutting_down")
        call = make()
        call.drop_after = self.drop_after
        self._calls[call.id] = call
        self._owners[call.id] = self._owner(bearer_token(request) or "")
        self._counters["calls_created"] += 1
        try:
            answer = await call.accept_offer(sdp)
        except ValueError as exc:
            await call.close("bad_offer")
            return self._error(400, f"Invalid SDP offer: {exc}", "invalid_offer", param="sdp")
        except BaseException:
            await call.close("error")
            raise
        if call.closed:
            return self._error(503, "The call ended before it was answered.", "call_ended")
        if _gone(request):  # nobody will ever get this answer: end the call now, not in ~30 s
            self._counters["offers_abandoned"] += 1
            await call.close("request_aborted")
            return self._error(499, "The client closed the request.", "request_aborted")
        self._counters["offers_answered"] += 1
        return call, answer

    async def _handle_offer(self, request: web.Request) -> web.StreamResponse:
        self._counters["offers_received"] += 1
        rejected = self._injected_rejection()
        if rejected is not None:
            return rejected
        refused = self._authorized(request)
        if refused is not None:
            return refused
        try:
            async with asyncio.timeout(self.header_timeout):
                read = await self._read_offer(request)
        except TimeoutError:
            response = self._error(408, "The request body did not arrive in time.", "timeout")
            response.force_close()
            return response
        if isinstance(read, web.Response):
            return read
        sdp, session_cfg = read
        problem = validate_offer(sdp)
        if problem is not None:
            return self._error(400, f"Invalid SDP offer: {problem}.", "invalid_offer", param="sdp")
        if session_cfg is not None and session_cfg.get("type", "realtime") != "realtime":
            return self._error(
                400,
                "Invalid value for 'session.type': expected 'realtime'.",
                "invalid_value",
                param="session.type",
            )
        minted = self.client_secrets.lookup(bearer_token(request) or "")
        model = (
            request.query.get("model")
            or (session_cfg or {}).get("model")
            or (minted.session.get("model") if minted is not None else None)
            or self.model
        )

        def make() -> Call:
            call = Call(model=str(model), **self._call_options())
            if minted is not None:  # the client secret's session configuration applies first
                call.session = p.merge_session(call.session, minted.session)
            if session_cfg is not None:
                call.session = p.merge_session(call.session, session_cfg)
            if self.expires_at is not None:
                call.session["expires_at"] = self.expires_at
            return call

        answered = await self._answer(request, sdp, make)
        if isinstance(answered, web.Response):
            return answered
        call, answer = answered
        return web.Response(
            status=201,
            text=answer,
            content_type="application/sdp",
            headers={"Location": f"{CALLS_PATH}/{call.id}"},
        )

    # ----------------------------------------------------------------- Live

    async def _handle_live_create(self, request: web.Request) -> web.StreamResponse:
        """``POST /v1/live/sessions``: strict JSON ``{session, transport}`` -> 201 JSON."""
        self._counters["offers_received"] += 1
        rejected = self._injected_rejection()
        if rejected is not None:
            return rejected
        refused = self._authorized(request, live=True)
        if refused is not None:
            return refused
        if self._config_rejections:
            rej = self._config_rejections.popleft()
            self._counters["offers_rejected_injected"] += 1
            return self._error(
                rej.status, rej.message or "The session configuration was rejected "
                "(injected fault).", rej.code, param=rej.param)
        if request.content_type != "application/json":
            return self._error(
                415, f"Unsupported content type {request.content_type!r}: send the session "
                "as 'application/json'.", "unsupported_content_type")
        if request.query:  # the model goes in session.model, never in the URL
            name = next(iter(request.query))[:64]
            return self._error(
                400, f"Unknown parameter: {name!r}. Pass the model as 'session.model' in the "
                "body, not as a URL query parameter.", "unknown_parameter", param=name)
        try:
            async with asyncio.timeout(self.header_timeout):
                raw = await read_limited(request, self.max_body_bytes)
        except TimeoutError:
            response = self._error(408, "The request body did not arrive in time.", "timeout")
            response.force_close()
            return response
        if raw is None:
            return self._error(
                413, f"Request body too large: the limit is {self.max_body_bytes} bytes.",
                "request_too_large")
        try:
            body = json.loads(raw)
        except (ValueError, RecursionError) as exc:
            return self._error(400, f"We could not parse the JSON body of your request. "
                               f"({type(exc).__name__})", "invalid_json")
        try:
            config, sdp = parse_create(body, self.live_models)
        except LiveRequestError as exc:
            return self._error(exc.status, exc.message, exc.code, param=exc.param)
        problem = validate_offer(sdp)
        if problem is not None:
            return self._error(400, f"Invalid SDP offer: {problem}.", "invalid_offer",
                               param="transport.sdp")
        resolved_voice = (config.get("audio") or {}).get("output", {}).get("voice")
        record = LiveSessionRecord(
            id=new_session_id(),
            model=config["model"],
            instructions=config.get("instructions"),
            input=copy.deepcopy(config.get("input")),
            voice=resolved_voice if isinstance(resolved_voice, str) else (
                str(resolved_voice["id"]) if isinstance(resolved_voice, dict) else "marin"),
            created_at=time.time(),
        )

        def make() -> Call:
            return LiveCall(record=record, config=config,
                            usage_interval=self.live_usage_interval,
                            close_linger=self.live_close_linger,
                            expires_at=self.expires_at, **self._call_options())

        answered = await self._answer(request, sdp, make)
        if isinstance(answered, web.Response):
            return answered
        call, answer = answered
        self._live_records.append(record)
        self._counters["live_sessions_created"] += 1
        return web.json_response(
            {"session": {"id": call.id}, "transport": {"type": "webrtc", "sdp": answer}},
            status=201)

    async def _handle_live_attach(self, request: web.Request) -> web.StreamResponse:
        """``WS /v1/live/sessions/{id}/attach``: the sideband of a running session, for the key
        that created it (anyone else: 404). No replay, no first event."""
        refused = self._authorized(request, live=True)
        if refused is not None:
            return refused
        for name, value in request.query.items():
            if name != "graceful_close":
                return self._error(400, f"Unknown parameter: {name[:64]!r}.",
                                   "unknown_parameter", param=name[:64])
            if value not in ("true", "false"):
                return self._error(
                    400, f"Invalid value for 'graceful_close': {value[:16]!r}; expected "
                    "'true' or 'false'.", "invalid_value", param="graceful_close")
        session_id = request.match_info["session_id"]
        call = self._calls.get(session_id)
        if (not isinstance(call, LiveCall) or call.closing
                or self._owners.get(session_id) != self._owner(bearer_token(request) or "")):
            return self._error(404, "Session not found.", "session_not_found")
        ws = web.WebSocketResponse(max_msg_size=MAX_SIDEBAND_MESSAGE, timeout=2.0,
                                   heartbeat=30.0)
        if not ws.can_prepare(request).ok:
            return self._error(400, "Expected a WebSocket upgrade.", "invalid_request")
        await ws.prepare(request)
        sideband = Sideband(ws)
        call.sidebands.add(sideband)
        self._counters["sidebands_attached"] += 1
        pump = asyncio.get_running_loop().create_task(sideband.pump(), name="sideband-pump")
        try:
            async for msg in ws:
                if msg.type is WSMsgType.TEXT:
                    call.on_sideband_message(msg.data, sideband)
                elif msg.type is WSMsgType.BINARY:
                    sideband.put(p.stamp(error_event(
                        "Binary messages are not accepted; send JSON text.",
                        code="invalid_type")))
        finally:
            call.sidebands.discard(sideband)
            sideband.end()
            try:
                async with asyncio.timeout(5.0):
                    await asyncio.shield(pump)
            except (TimeoutError, asyncio.CancelledError):
                pump.cancel()
                await asyncio.gather(pump, return_exceptions=True)
                raise
            finally:
                await ws.close()
                sideband.finished.set()
        return ws

    async def _handle_hangup(self, request: web.Request) -> web.StreamResponse:
        refused = self._authorized(request)
        if refused is not None:
            return refused
        call_id = request.match_info["call_id"]
        call = self._calls.get(call_id)
        owner = self._owners.get(call_id)
        if call is None or isinstance(call, LiveCall) or (
                owner != self._owner(bearer_token(request) or "")):
            # Someone else's call is as unknown as a missing one (no existence oracle).
            return self._error(404, "Call not found.", "call_not_found")
        await call.close("hangup")
        return web.json_response({}, status=200)

    def _count_event(self, etype: str) -> None:
        self._events_received[etype] += 1

    def _owner(self, token: str) -> str:
        """Who a bearer token speaks for: the API key that minted it (an ``ek_`` key), else the
        token itself (as a digest: no key is kept)."""
        minted = self.client_secrets.lookup(token)
        if minted is not None and minted.minted_by:
            return "api:" + minted.minted_by
        return "key:" + hashlib.sha256(token.encode()).hexdigest()

    def _call_closed(self, call: Call) -> None:
        self._owners.pop(call.id, None)
        if self._calls.pop(call.id, None) is not None:
            self._ended.append(call.info())
            self._counters["calls_ended"] += 1


def listening_line(peer: RealtimePeer, url: str) -> str:
    """What ``fsm-voice peer`` prints once it listens (tests read the control token from it)."""
    return (f"fsm-voice peer listening on {url} (POST {url}{CALLS_PATH}, POST {url}"
            f"{LIVE_SESSIONS_PATH}; control: {url}/control with {CONTROL_TOKEN_HEADER}: "
            f"{peer.control_token})")


async def run_peer(host: str = "127.0.0.1", port: int = 8765, reply: Reply = "echo") -> None:
    """CLI entry (``fsm-voice peer``): print the URL, serve until cancelled (Ctrl-C), clean up.

    Cancellation propagates (``asyncio.run`` turns Ctrl-C into it); everything is closed first.
    """

    def ready(url: str) -> None:
        print(listening_line(peer, url), flush=True)

    peer = RealtimePeer(host, port, reply=reply)
    await peer.serve_forever(ready)


def _gone(request: web.Request) -> bool:
    """The client closed the connection of ``request`` (an answer could not reach it)."""
    transport = request.transport
    return transport is None or transport.is_closing()
