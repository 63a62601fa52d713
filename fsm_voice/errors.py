"""Error model and classifiers: every failure becomes one :class:`VoiceError`.

A :class:`VoiceError` says *how bad* a failure is (:class:`Severity`), *where* it came from
(:class:`ErrorSource`) and whether it can be dropped silently (``ignorable``). The lifecycle
machine only ever looks at those three; the classifiers below turn the outside world's failures
(OpenAI Realtime ``error`` server events, signaling HTTP responses, Python exceptions) into them.

Severity, precisely:

``TRANSIENT``
    One operation failed (one client event was rejected, one HTTP attempt, one socket call). The
    session and its connection are *not* broken. For a server ``error`` event this means: the
    session continues, report the error (unless ``ignorable``), do **not** reconnect. For a
    failure while opening a connection it means: the attempt failed for a passing reason; a new
    attempt (with backoff) is expected to succeed.
``RECOVERABLE``
    The current connection/session is unusable, but a new one (reconnect with backoff, bounded by
    :class:`fsm_voice.policy.RetryPolicy`) can succeed: server errors, rate limits, an expired
    session that has to roll over to a new one.
``FATAL``
    Retrying cannot help without a human changing something (key, quota, model, configuration,
    microphone permission). Stop and report.

``ignorable`` (only ever set together with ``TRANSIENT``) marks server errors that are harmless
races, e.g. cancelling a response that has just finished: nothing is reported as a failure.

The server-event mapping is one table, :data:`SERVER_ERROR_TABLE` (code -> severity, ignorable),
with per-``error.type`` defaults in :data:`SERVER_ERROR_TYPE_DEFAULTS`. HTTP statuses are mapped
by :data:`HTTP_STATUS_TABLE`.

Messages never carry secrets: every message is passed through :func:`redact` (it is the converter
of :attr:`VoiceError.message`, so no construction path can skip it).
"""

from __future__ import annotations

import asyncio
import email.utils
import enum
import errno
import http
import json
import math
import re
import socket
import ssl
import sys
import time
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any, Final

import attrs

from fsm_voice._text import printable

__all__ = [
    "HTTP_STATUS_TABLE",
    "LIVE_CLOSE_SEVERITY",
    "SERVER_ERROR_TABLE",
    "SERVER_ERROR_TYPE_DEFAULTS",
    "ConfigError",
    "ErrorSource",
    "FsmVoiceError",
    "Severity",
    "VoiceError",
    "classify",
    "classify_exception",
    "classify_http",
    "classify_live_close",
    "classify_live_server_event",
    "classify_server_event",
    "live_close_reason",
    "machine_severity",
    "parse_retry_after",
    "redact",
]


class Severity(enum.StrEnum):
    """How bad a failure is; see the module docstring for the exact contract."""

    TRANSIENT = "transient"
    RECOVERABLE = "recoverable"
    FATAL = "fatal"


_SEVERITY_RANK: Final = {Severity.TRANSIENT: 0, Severity.RECOVERABLE: 1, Severity.FATAL: 2}


class ErrorSource(enum.StrEnum):
    """Where a failure was observed."""

    SERVER = "server"
    """An ``error`` event sent by the realtime backend on the data channel."""
    SIGNALING = "signaling"
    """The SDP offer/answer HTTP exchange (or the token request)."""
    NETWORK = "network"
    """Sockets, DNS, timeouts: the path to the backend."""
    MEDIA = "media"
    """Audio devices and files, codecs (PyAV)."""
    TRANSPORT = "transport"
    """The WebRTC connection itself (ICE, DTLS, data channel)."""
    CONFIG = "config"
    """Invalid configuration detected by this library."""
    CLIENT = "client"
    """This process: unexpected exceptions, cancellation."""


# --------------------------------------------------------------------------------------------
# Redaction
# --------------------------------------------------------------------------------------------

MAX_MESSAGE_LENGTH: Final = 500
"""Messages built from external input are cut to this many characters (an HTML error page is not
a useful error message)."""

_SECRET_PATTERNS: Final = (
    # OpenAI API keys: sk-..., sk-proj-..., also when OpenAI masked part of them (sk-ab***yz).
    (re.compile(r"(?<![A-Za-z0-9])sk-[A-Za-z0-9_\-*.]{6,}"), "sk-***"),
    # OpenAI ephemeral client secrets: ek_...
    (re.compile(r"(?<![A-Za-z0-9])ek_[A-Za-z0-9_\-*.]{6,}"), "ek_***"),
    # HTTP credentials: "Bearer <token>", "Basic <token>".
    # Not a placeholder ("Bearer <client secret>") nor prose ("HTTP Basic auth").
    (re.compile(r"\b(Bearer|Basic)\s+(?!<|auth(?:entication|orization)?\b)[^\s\"',;]+",
                re.IGNORECASE), r"\1 ***"),
)


def redact(text: str) -> str:
    """Return ``text`` with API keys, ephemeral keys and bearer tokens masked, cut to
    :data:`MAX_MESSAGE_LENGTH` characters. Idempotent."""
    for pattern, replacement in _SECRET_PATTERNS:
        text = pattern.sub(replacement, text)
    if len(text) > MAX_MESSAGE_LENGTH:
        text = text[: MAX_MESSAGE_LENGTH - 1] + "…"
    return text


def _redact_any(value: object) -> str:
    return redact(value if isinstance(value, str) else str(value))


# --------------------------------------------------------------------------------------------
# The error value
# --------------------------------------------------------------------------------------------


class FsmVoiceError(Exception):
    """Base of every exception fsm_voice raises to its users (``except FsmVoiceError``)."""


@attrs.define(frozen=True, auto_exc=True)
class VoiceError(FsmVoiceError):
    """A classified failure. Immutable; raise it, pass it to the machine, show it to users.

    Being an ``auto_exc`` attrs class, two instances compare equal only if they are the same
    object (exception semantics); compare fields to compare contents.
    """

    severity: Severity
    code: str
    """Machine-readable code: the OpenAI ``error.code`` when there is one, else our own."""
    message: str = attrs.field(converter=_redact_any)
    """Human-readable; always redacted (see :func:`redact`)."""
    source: ErrorSource
    retry_after: float | None = None
    """Seconds the server asked us to wait before retrying (``Retry-After``), if it said so."""
    ignorable: bool = False
    """Harmless (a race the server reports as an error): the session keeps going, nothing is
    reported as a failure. Only ever true for ``TRANSIENT`` errors."""
    error_type: str | None = None
    """OpenAI ``error.type`` (``invalid_request_error``, ``server_error``, ...)."""
    param: str | None = None
    """OpenAI ``error.param``: the offending parameter, if any."""
    event_id: str | None = None
    """The client event that caused the error (Realtime ``error.event_id``, Live
    ``error.client_event_id``), if any."""
    http_status: int | None = None

    @property
    def retryable(self) -> bool:
        """Whether trying again (the operation or a new connection) can succeed."""
        return self.severity is not Severity.FATAL

    def __str__(self) -> str:
        where = str(self.source)
        if self.http_status is not None:
            where += f", HTTP {self.http_status}"
        text = f"[{self.severity}] {self.code} ({where}): {self.message}"
        if self.retry_after is not None:
            text += f" (retry after {self.retry_after:g}s)"
        return text


class ConfigError(FsmVoiceError, ValueError):
    """Invalid configuration. The message names the field, the bad value and what is allowed."""

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field
        """Name of the offending field (``None`` when not about one field)."""

    @classmethod
    def invalid(cls, field: str, value: object, expected: str) -> ConfigError:
        """``<field>=<value!r> is invalid: expected <expected>``."""
        return cls(f"{field}={value!r} is invalid: expected {expected}", field=field)


# --------------------------------------------------------------------------------------------
# OpenAI Realtime ``error`` server events
# --------------------------------------------------------------------------------------------

_T, _R, _F = Severity.TRANSIENT, Severity.RECOVERABLE, Severity.FATAL

SERVER_ERROR_TABLE: Final[Mapping[str, tuple[Severity, bool]]] = MappingProxyType(
    {
        # code                                          severity  ignorable
        # -- harmless races: the session keeps going, nothing is reported ----------------------
        "conversation_already_has_active_response": (_T, True),  # response.create while busy
        "response_cancel_not_active": (_T, True),  # cancel after the response ended
        "input_audio_buffer_commit_empty": (_T, True),  # commit with < 100 ms of audio
        "item_truncate_invalid_item_id": (_T, True),  # barge-in truncate of a gone item
        # -- one client event rejected (a client bug): reported, session continues, no reconnect
        "invalid_event": (_T, False),
        "unknown_event_type": (_T, False),
        "invalid_value": (_T, False),
        "invalid_type": (_T, False),
        "unknown_parameter": (_T, False),
        "missing_required_parameter": (_T, False),
        "integer_below_min_value": (_T, False),
        "integer_above_max_value": (_T, False),
        "decimal_below_min_value": (_T, False),
        "decimal_above_max_value": (_T, False),
        "string_above_max_length": (_T, False),
        "array_above_max_length": (_T, False),
        "invalid_item_id": (_T, False),
        "item_not_found": (_T, False),
        "unsupported_content_type": (_T, False),
        # -- the session must roll over / the backend is struggling: reconnect with backoff -----
        "session_expired": (_R, False),  # "Your session hit the maximum duration of N minutes."
        "server_error": (_R, False),
        "internal_error": (_R, False),
        "server_is_overloaded": (_R, False),
        "slow_down": (_R, False),
        "rate_limit_exceeded": (_R, False),
        # -- cannot succeed without a human: stop -------------------------------------------------
        "invalid_api_key": (_F, False),
        "insufficient_quota": (_F, False),  # out of credits: NOT a rate limit
        "billing_hard_limit_reached": (_F, False),
        "model_not_found": (_F, False),
        "invalid_model": (_F, False),
        "permission_denied": (_F, False),
        "unsupported_country_region_territory": (_F, False),
        "account_deactivated": (_F, False),
        "organization_deactivated": (_F, False),
    }
)
"""OpenAI Realtime ``error.code`` -> (severity, ignorable). Looked up first; see
:func:`classify_server_event`."""

SERVER_ERROR_TYPE_DEFAULTS: Final[Mapping[str, Severity]] = MappingProxyType(
    {
        # A request error about one client event: the session continues.
        "invalid_request_error": _T,
        "server_error": _R,
        "rate_limit_error": _R,
        "service_unavailable_error": _R,
        "authentication_error": _F,
        "permission_error": _F,
        "insufficient_quota": _F,
    }
)
"""OpenAI ``error.type`` -> severity, for codes not in :data:`SERVER_ERROR_TABLE` (never
ignorable). An unknown type (or none) is ``RECOVERABLE``."""

# Some errors arrive without a code (seen in the wild: code null). Recognised by message only when
# the code is missing, and mapped to the code they stand for.
_CODELESS_MESSAGES: Final = (
    ("already has an active response", "conversation_already_has_active_response"),
    ("no active response found", "response_cancel_not_active"),
    ("buffer too small", "input_audio_buffer_commit_empty"),
    ("maximum duration", "session_expired"),
)

_TRY_AGAIN = re.compile(r"try again in (\d+(?:\.\d+)?)\s*(ms|s)\b", re.IGNORECASE)


def _opt_str(value: object) -> str | None:
    """A non-empty string from untrusted input, else None."""
    if isinstance(value, str) and value.strip():
        return value.strip()
    return None


def _retry_hint(message: str) -> float | None:
    """``"... Please try again in 1.5s."`` -> 1.5 (OpenAI rate-limit messages)."""
    match = _TRY_AGAIN.search(message)
    if match is None:
        return None
    value = float(match.group(1))
    return value / 1000.0 if match.group(2).lower() == "ms" else value


def classify_server_event(event: Mapping[str, Any]) -> VoiceError:
    """Classify an OpenAI Realtime ``error`` server event.

    ``{"type": "error", "event_id": ..., "error": {"type", "code", "message", "param",
    "event_id"}}``. Lookup order: ``error.code`` in :data:`SERVER_ERROR_TABLE`, then ``error.type``
    in :data:`SERVER_ERROR_TYPE_DEFAULTS`, else ``RECOVERABLE``. Never raises: missing or garbage
    fields give code ``unknown_error`` (``RECOVERABLE``).
    """
    try:
        return _classify_server_event(event)
    except Exception as exc:  # defensive: a Mapping whose methods misbehave
        return VoiceError(
            Severity.RECOVERABLE,
            "unknown_error",
            f"unreadable error event ({type(exc).__name__})",
            ErrorSource.SERVER,
        )


def _classify_server_event(event: Mapping[str, Any]) -> VoiceError:
    body: Any = event.get("error") if isinstance(event, Mapping) else None
    if not isinstance(body, Mapping):
        body = {}
    code = _opt_str(body.get("code"))
    error_type = _opt_str(body.get("type"))
    message = _opt_str(body.get("message"))
    if code is None and message is not None:
        lowered = message.lower()
        code = next((c for text, c in _CODELESS_MESSAGES if text in lowered), None)

    if code is not None and code in SERVER_ERROR_TABLE:
        severity, ignorable = SERVER_ERROR_TABLE[code]
    elif error_type is not None and error_type in SERVER_ERROR_TYPE_DEFAULTS:
        severity, ignorable = SERVER_ERROR_TYPE_DEFAULTS[error_type], False
    else:
        severity, ignorable = Severity.RECOVERABLE, False

    if message is None:
        message = f"server reported an error ({error_type or 'no type'})"
    retry_after = _retry_hint(message) if severity is Severity.RECOVERABLE else None
    event_id = _opt_str(body.get("event_id"))
    return VoiceError(
        severity,
        code or error_type or "unknown_error",
        message,
        ErrorSource.SERVER,
        retry_after=retry_after,
        ignorable=ignorable,
        error_type=error_type,
        param=_opt_str(body.get("param")),
        event_id=event_id,
    )


# --------------------------------------------------------------------------------------------
# OpenAI Live (GPT-Live) ``error`` and ``session.closed`` server events
# --------------------------------------------------------------------------------------------

LIVE_CLOSE_SEVERITY: Final[Mapping[str, Severity]] = MappingProxyType(
    {
        "close_requested": _F,  # ended on purpose (session.close, hangup, a broker's cap)
        "remote_hangup": _F,  # the remote side left
        "content": _F,  # a safety filter ended it: not retried
        "expired": _R,  # duration limit: the conversation goes on in a new session
        "connection_lost": _R,  # lost unexpectedly: a new session (never the same id)
    }
)
"""Live ``session.closed`` ``reason`` -> severity of the error reported with it (the machine's
rows decide what happens; a reason not listed is ``FATAL``)."""


def classify_live_server_event(event: Mapping[str, Any]) -> VoiceError:
    """Classify a Live ``error`` event: ``{"type": "error", "error": {"type", "code" (may be
    null), "message", "param"?, "client_event_id"?}}``.

    A null or missing code gives ``unknown_error`` (no guessing from the message: the Realtime
    phrases do not apply). Severity: a known code as in :data:`SERVER_ERROR_TABLE`, else by
    ``error.type`` (:data:`SERVER_ERROR_TYPE_DEFAULTS`), else ``TRANSIENT``: on Live an error
    does not end the session (``session.closed`` does), so an unknown one is reported and the
    session goes on. ``client_event_id`` is kept in ``event_id``. Never raises.
    """
    try:
        body: Any = event.get("error") if isinstance(event, Mapping) else None
        if not isinstance(body, Mapping):
            body = {}
        code = _opt_str(body.get("code"))
        error_type = _opt_str(body.get("type"))
        if code is not None and code in SERVER_ERROR_TABLE:
            severity, ignorable = SERVER_ERROR_TABLE[code]
        else:
            severity = SERVER_ERROR_TYPE_DEFAULTS.get(error_type or "", _T)
            ignorable = False
        message = _opt_str(body.get("message")) or (
            f"server reported an error ({error_type or 'no type'})")
        return VoiceError(
            severity, code or "unknown_error", message, ErrorSource.SERVER,
            retry_after=_retry_hint(message) if severity is Severity.RECOVERABLE else None,
            ignorable=ignorable, error_type=error_type, param=_opt_str(body.get("param")),
            event_id=_opt_str(body.get("client_event_id")))
    except Exception as exc:  # defensive: a Mapping whose methods misbehave
        return VoiceError(Severity.TRANSIENT, "unknown_error",
                          f"unreadable error event ({type(exc).__name__})", ErrorSource.SERVER)


def live_close_reason(event: Mapping[str, Any]) -> str:
    """The ``reason`` of a Live ``session.closed``, verbatim; ``unknown`` when it is missing
    or not a (non-empty) string."""
    try:
        reason = event.get("reason")
    except Exception:
        return "unknown"
    return reason if isinstance(reason, str) and reason else "unknown"


def classify_live_close(event: Mapping[str, Any]) -> VoiceError:
    """The error that goes with a Live ``session.closed``: code = the reason (see
    :func:`live_close_reason`), severity by :data:`LIVE_CLOSE_SEVERITY`, the usage in the
    message. Never raises."""
    reason = live_close_reason(event)
    try:
        usage = event.get("usage")
        seconds = usage.get("seconds") if isinstance(usage, Mapping) else None
        client_event_id = _opt_str(event.get("client_event_id"))
    except Exception:
        seconds, client_event_id = None, None
    used = (f" after {seconds:g} s" if isinstance(seconds, int | float)
            and not isinstance(seconds, bool) else "")
    return VoiceError(LIVE_CLOSE_SEVERITY.get(reason, _F), reason,
                      f"the server closed the Live session ({reason}){used}", ErrorSource.SERVER,
                      event_id=client_event_id)


# --------------------------------------------------------------------------------------------
# Signaling HTTP failures
# --------------------------------------------------------------------------------------------

HTTP_STATUS_TABLE: Final[Mapping[int, Severity]] = MappingProxyType(
    {
        400: _F,  # bad request: malformed SDP, invalid session config
        401: _F,  # bad / expired key
        403: _F,  # not allowed (project, region, model access)
        404: _F,  # wrong URL or model
        408: _T,  # request timeout: try the attempt again
        409: _T,  # conflict: a fresh attempt (new offer) can succeed
        413: _F,  # offer too large: it will stay too large
        425: _T,  # too early
        429: _R,  # rate limited (honour Retry-After) - unless the body says insufficient_quota
        500: _R,
        502: _R,
        503: _R,  # honour Retry-After
        504: _R,
    }
)
"""HTTP status -> severity. Other 4xx are ``FATAL``, other 5xx ``RECOVERABLE``, 3xx (a redirect
we do not follow: wrong URL) ``FATAL``, anything else ``RECOVERABLE``."""

_RETRY_AFTER_SECONDS = re.compile(r"^[+-]?\d+(?:\.\d+)?$")


def parse_retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """Parse a ``Retry-After`` value: delta-seconds or an HTTP-date (RFC 9110 §10.2.3).

    Returns seconds (negative values and dates in the past give 0), or None when absent or
    unparseable. ``now`` (epoch seconds) defaults to :func:`time.time`.
    """
    if value is None:
        return None
    text = value.strip()
    if not text:
        return None
    if _RETRY_AFTER_SECONDS.match(text):
        return max(0.0, float(text))
    try:
        when = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if when.tzinfo is None:  # "-0000" or no zone: HTTP-dates are UTC
        return None
    delta = when.timestamp() - (time.time() if now is None else now)
    return max(0.0, delta) if math.isfinite(delta) else None


def _header(headers: Mapping[str, str] | None, name: str) -> str | None:
    if not headers:
        return None
    for key, value in headers.items():
        if isinstance(key, str) and key.lower() == name and isinstance(value, str):
            return value
    return None


def _retry_after_from_headers(headers: Mapping[str, str] | None, now: float | None) -> float | None:
    ms = _header(headers, "retry-after-ms")  # OpenAI sends this alongside Retry-After
    if ms is not None and _RETRY_AFTER_SECONDS.match(ms.strip()):
        return max(0.0, float(ms) / 1000.0)
    return parse_retry_after(_header(headers, "retry-after"), now=now)


def _status_severity(status: int) -> Severity:
    if status in HTTP_STATUS_TABLE:
        return HTTP_STATUS_TABLE[status]
    if 300 <= status < 500:
        return Severity.FATAL
    return Severity.RECOVERABLE


def _status_code(status: int) -> str:
    try:
        return "http_" + http.HTTPStatus(status).name.lower()
    except ValueError:
        return f"http_{status}"


def classify_http(
    status: int,
    body: bytes | str | None = None,
    headers: Mapping[str, str] | None = None,
    *,
    now: float | None = None,
) -> VoiceError:
    """Classify a failed signaling HTTP response (source ``SIGNALING``).

    Severity comes from :data:`HTTP_STATUS_TABLE`, except that a body naming a condition waiting
    cannot fix (a code that is ``FATAL`` in :data:`SERVER_ERROR_TABLE`, e.g. ``insufficient_quota``
    on a 429, or a fatal ``error.type``) makes it ``FATAL``. An OpenAI JSON error body
    (``{"error": {"type", "code", "message", "param"}}``) supplies code and message; otherwise the
    code is ``http_<reason>`` (``http_too_many_requests``). ``Retry-After`` (or OpenAI's
    ``retry-after-ms``) is honoured on non-fatal errors; ``now`` (epoch seconds) is for tests.
    """
    if isinstance(status, bool) or not isinstance(status, int):
        status = 0
    text = _body_text(body)
    error_type = code = message = param = None
    parsed = _json_error(text)
    if parsed is not None:
        code = _opt_str(parsed.get("code"))
        error_type = _opt_str(parsed.get("type"))
        message = _opt_str(parsed.get("message"))
        param = _opt_str(parsed.get("param"))

    severity = _status_severity(status)
    if (code is not None and SERVER_ERROR_TABLE.get(code, (None,))[0] is Severity.FATAL) or (
        error_type is not None and SERVER_ERROR_TYPE_DEFAULTS.get(error_type) is Severity.FATAL
    ):
        severity = Severity.FATAL

    if message is None:
        message = text.strip() if parsed is None and text.strip() else ""
    if not message:
        try:
            message = f"HTTP {status} {http.HTTPStatus(status).phrase}"
        except ValueError:
            message = f"HTTP {status}"
    retry_after = (
        _retry_after_from_headers(headers, now) if severity is not Severity.FATAL else None
    )
    return VoiceError(
        severity,
        code or _status_code(status),
        message,
        ErrorSource.SIGNALING,
        retry_after=retry_after,
        error_type=error_type,
        param=param,
        http_status=status,
    )


def _body_text(body: bytes | str | None) -> str:
    if isinstance(body, bytes | bytearray | memoryview):
        return bytes(body).decode("utf-8", errors="replace")
    return body if isinstance(body, str) else ""


def _json_error(text: str) -> Mapping[str, Any] | None:
    if not text.lstrip().startswith("{"):
        return None
    try:
        data = json.loads(text)
    except (ValueError, RecursionError):
        return None
    if isinstance(data, dict):
        inner = data.get("error")
        if isinstance(inner, dict):
            return inner
    return None


# --------------------------------------------------------------------------------------------
# Python exceptions
# --------------------------------------------------------------------------------------------

NETWORK_ERRNOS: Final = frozenset(
    getattr(errno, name)
    for name in (
        "ECONNREFUSED",
        "ECONNRESET",
        "ECONNABORTED",
        "ENETUNREACH",
        "ENETDOWN",
        "ENETRESET",
        "EHOSTUNREACH",
        "EHOSTDOWN",
        "ETIMEDOUT",
        "EPIPE",
    )
    if hasattr(errno, name)
)
"""``OSError.errno`` values that mean "the network path failed" (``TRANSIENT``, ``NETWORK``)."""


def _optional_types(module: str, *names: str) -> tuple[type[BaseException], ...]:
    """Exception classes of an optional dependency, only if it is already imported (an exception
    of a module that was never imported cannot exist, and we avoid importing it here)."""
    mod = sys.modules.get(module)
    found = (getattr(mod, name, None) for name in names) if mod is not None else ()
    return tuple(t for t in found if isinstance(t, type) and issubclass(t, BaseException))


def _is_media_exception(exc: BaseException) -> bool:
    module = type(exc).__module__ or ""
    return module == "av" or module.startswith("av.")


def classify_exception(exc: BaseException) -> VoiceError:
    """Classify an exception raised while running a session.

    * a :class:`VoiceError` is returned unchanged;
    * an exception group gives its most severe member's classification;
    * cancellation (``CancelledError``, ``KeyboardInterrupt``, ``SystemExit``): ``FATAL``
      ``CLIENT`` - never retried (callers must still re-raise cancellation);
    * PyAV errors, ``PermissionError``, ``FileNotFoundError``: ``FATAL`` ``MEDIA``;
    * timeouts, ``ConnectionError``, network ``errno``s, DNS failures, aiohttp connection errors,
      anyio ``BrokenResourceError``: ``TRANSIENT`` ``NETWORK``;
    * ``aiohttp.ClientResponseError``: as :func:`classify_http` for its status;
    * :class:`ConfigError`, ``ValueError``, ``TypeError``: ``FATAL`` ``CONFIG`` (except decoding
      errors of received data, which are ``RECOVERABLE``);
    * anything else: ``RECOVERABLE`` ``CLIENT`` with the class name as code.
    """
    if isinstance(exc, VoiceError):
        return exc
    if isinstance(exc, BaseExceptionGroup):
        members = [classify_exception(e) for e in exc.exceptions]
        if members:
            return max(members, key=lambda e: _SEVERITY_RANK[e.severity])
    name = type(exc).__name__
    try:
        text = str(exc) or name
    except Exception:  # a broken __str__ must not break classification
        text = name

    def make(severity: Severity, code: str, source: ErrorSource) -> VoiceError:
        return VoiceError(severity, code, text, source)

    if isinstance(exc, asyncio.CancelledError | KeyboardInterrupt | SystemExit):
        return make(Severity.FATAL, "cancelled", ErrorSource.CLIENT)
    if _is_media_exception(exc):
        return make(Severity.FATAL, name, ErrorSource.MEDIA)
    if isinstance(exc, PermissionError):
        return make(Severity.FATAL, "permission_denied", ErrorSource.MEDIA)
    if isinstance(exc, FileNotFoundError):
        return make(Severity.FATAL, "file_not_found", ErrorSource.MEDIA)

    garbled = _optional_types("aiohttp.http_exceptions", "HttpProcessingError")
    garbled += _optional_types("aiohttp", "ClientPayloadError")
    if garbled and (isinstance(exc, garbled) or isinstance(exc.__cause__, garbled)):
        # A response aiohttp could not parse (aiohttp reports it as a 400 ClientResponseError
        # caused by its parser's HttpProcessingError): the path, not the request, is at fault.
        lines = (ln.strip() for ln in getattr(exc, "message", text).splitlines())
        detail = " ".join(ln for ln in lines if ln and ln != "^")
        return VoiceError(Severity.TRANSIENT, "bad_response",
                          printable(f"unreadable HTTP response: {detail}", limit=300),
                          ErrorSource.NETWORK)
    response_error = _optional_types("aiohttp", "ClientResponseError")
    if response_error and isinstance(exc, response_error):
        status = getattr(exc, "status", 0)
        headers = getattr(exc, "headers", None)
        return classify_http(
            status if isinstance(status, int) else 0,
            getattr(exc, "message", None) or None,
            dict(headers) if isinstance(headers, Mapping) else None,
        )
    network = _optional_types(
        "aiohttp", "ClientConnectionError", "ServerDisconnectedError", "ClientOSError"
    ) + _optional_types("anyio", "BrokenResourceError")
    if isinstance(exc, TimeoutError):
        return make(Severity.TRANSIENT, "timeout", ErrorSource.NETWORK)
    if isinstance(exc, socket.gaierror):
        return make(Severity.TRANSIENT, "dns_error", ErrorSource.NETWORK)
    if isinstance(exc, (ConnectionError, *network)) or (
        isinstance(exc, OSError) and exc.errno in NETWORK_ERRNOS
    ):
        code = name
        if isinstance(exc, (*_optional_types("aiohttp", "ClientSSLError"), ssl.SSLError)):
            code = "tls_error"  # its errno is OpenSSL's (1: SSL_ERROR_SSL), not EPERM
        elif isinstance(exc, OSError) and exc.errno is not None and exc.errno in errno.errorcode:
            code = errno.errorcode[exc.errno].lower()  # "econnrefused"
        return make(Severity.TRANSIENT, code, ErrorSource.NETWORK)

    if isinstance(exc, ConfigError):
        return make(Severity.FATAL, "invalid_config", ErrorSource.CONFIG)
    if isinstance(exc, UnicodeError | json.JSONDecodeError):
        return make(Severity.RECOVERABLE, name, ErrorSource.CLIENT)
    if isinstance(exc, ValueError | TypeError):
        return make(Severity.FATAL, name, ErrorSource.CONFIG)
    return make(Severity.RECOVERABLE, name, ErrorSource.CLIENT)


# --------------------------------------------------------------------------------------------
# Dispatch
# --------------------------------------------------------------------------------------------


def machine_severity(err: VoiceError) -> str:
    """The ``severity=`` the lifecycle machine gets for ``err``: ``"ignorable"`` for harmless
    races (the table decides that they change nothing), else the severity itself."""
    return "ignorable" if err.ignorable else str(err.severity)


def classify(obj: object) -> VoiceError:
    """Classify anything: a Mapping is a server ``error`` event, an int an HTTP status, an
    exception an exception. Anything else gives ``unknown_error`` (``RECOVERABLE``)."""
    if isinstance(obj, BaseException):
        return classify_exception(obj)
    if isinstance(obj, Mapping):
        return classify_server_event(obj)
    if isinstance(obj, int) and not isinstance(obj, bool):
        return classify_http(obj)
    return VoiceError(
        Severity.RECOVERABLE,
        "unknown_error",
        f"unclassifiable failure: {type(obj).__name__}",
        ErrorSource.CLIENT,
    )
