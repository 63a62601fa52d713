"""Live signaling: SDP offer -> answer over ``POST {base_url}/v1/live/sessions`` (OpenAI Live).

The request is JSON ``{"session": {...config, "input"?: [...]}, "transport": {"type":
"webrtc", "sdp": <offer>}}``; the answer is ``201`` JSON ``{"session": {"id": "live_..."},
"transport": {"type": "webrtc", "sdp": <answer>}}``. The HTTP request itself starts the
session. Errors are classified as for Realtime (:class:`~fsm_voice.signaling.http.HttpSignaling`,
whose key handling and request code this reuses): 401/403 fatal, 400 fatal with the server's
code (``invalid_config`` when it gives none), 429/5xx recoverable with ``Retry-After``; an answer
that is not the documented JSON is a recoverable ``invalid_answer``.

Through a broker in proxy mode (:mod:`fsm_voice.broker.proxy`) the broker holds the key and the
configuration: ``config=None`` sends only ``session.input`` (and no ``session`` at all when it is
empty), ``client_id`` goes as ``X-Client-Id`` with the client secret as the bearer token.

There is no HTTP hangup for a Live WebRTC session: a connection ends with ``session.close`` on
the data channel (:class:`fsm_voice.transport.aiortc_transport.GracefulClose`).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping
from typing import Any, Final, Protocol

import aiohttp
import attrs

from fsm_voice._text import printable
from fsm_voice.errors import ConfigError, ErrorSource, Severity, VoiceError, classify_http
from fsm_voice.ports import SdpAnswer
from fsm_voice.signaling.http import (
    HANGUP_TIMEOUT,
    MAX_ANSWER_BYTES,
    HttpSignaling,
    TokenSource,
    _invalid_answer,
    check_answer_sdp,
)

__all__ = ["LIVE_SESSIONS_PATH", "MAX_INPUT_MESSAGES", "InputProvider", "LiveSignaling"]

log = logging.getLogger(__name__)

LIVE_SESSIONS_PATH: Final = "/v1/live/sessions"
MAX_INPUT_MESSAGES: Final = 128
"""The server's bound on ``session.input`` (the newest messages are kept)."""

InputProvider = Callable[[], list[dict[str, Any]]]
"""Called once per exchange: the ``input`` messages of the new session ([] for none)."""


class _SessionConfig(Protocol):
    def to_session(self) -> dict[str, Any]: ...


def _config_error(why: str) -> VoiceError:
    return VoiceError(Severity.FATAL, "invalid_input", why, ErrorSource.CONFIG)


class LiveSignaling(HttpSignaling):
    """:class:`fsm_voice.ports.Signaling` for OpenAI Live (see the module docstring).

    ``config``: a :class:`~fsm_voice.live.LiveConfig` (or anything with ``to_session()``) or a
    raw ``session`` mapping with a non-empty ``model``. ``input_provider``: called on every
    exchange for the session's ``input`` (wired to :meth:`VoiceSession.seed_input` by
    :func:`fsm_voice.live.live_session`); may be set after construction. :attr:`session_ids`
    lists the ids the server gave, oldest first (bounded).
    """

    def __init__(
        self,
        base_url: str,
        token: TokenSource,
        config: _SessionConfig | Mapping[str, Any] | None,
        *,
        input_provider: InputProvider | None = None,
        client_id: str | None = None,
        session: aiohttp.ClientSession | None = None,
        timeout: float = 10.0,
        max_answer_bytes: int = MAX_ANSWER_BYTES,
    ) -> None:
        super().__init__(base_url, token, session=session, timeout=timeout,
                         max_answer_bytes=max_answer_bytes)
        if client_id is not None and (
                not isinstance(client_id, str) or not client_id
                or not all("!" <= c <= "~" for c in client_id)):
            raise ConfigError.invalid("client_id", client_id,
                                      "printable ASCII without spaces, or None")
        self.session_config: dict[str, Any] | None = None
        """The configuration sent with every create; None: the server (a broker) sets it."""
        if config is not None:
            raw = config.to_session() if hasattr(config, "to_session") else config
            if not isinstance(raw, Mapping):
                raise ConfigError.invalid("config", config,
                                          "a LiveConfig, a session mapping or None")
            model = raw.get("model")
            if not isinstance(model, str) or not model.strip():
                raise ConfigError.invalid("config.model", model, "a non-empty model name")
            if "input" in raw:
                raise ConfigError.invalid("config.input", "...", "no input (it comes from "
                                          "input_provider, per session)")
            self.session_config = dict(raw)
            self.model = model
        if client_id is not None:
            self.extra_headers["X-Client-Id"] = client_id
        if input_provider is not None and not callable(input_provider):
            raise ConfigError.invalid("input_provider", input_provider, "a callable or None")
        self.input_provider = input_provider
        self.url = f"{self.base_url}{LIVE_SESSIONS_PATH}"
        self.session_ids: list[str] = []

    def __repr__(self) -> str:  # never show the token
        return f"LiveSignaling({self.url!r}, model={self.model or '(server-side)'!r})"

    def _input(self) -> list[dict[str, Any]]:
        if self.input_provider is None:
            return []
        try:
            value = self.input_provider()
        except Exception as exc:
            raise VoiceError(Severity.FATAL, "input_provider_failed",
                             f"input provider raised {type(exc).__name__}: {exc}",
                             ErrorSource.CLIENT) from exc
        if not isinstance(value, list) or not all(isinstance(m, dict) for m in value):
            raise _config_error(f"input provider returned {type(value).__name__}, "
                                "expected a list of message objects")
        if len(value) > MAX_INPUT_MESSAGES:
            log.warning("input has %d messages; sending the newest %d", len(value),
                        MAX_INPUT_MESSAGES)
            value = value[-MAX_INPUT_MESSAGES:]
        return value

    def request_body(self, offer_sdp: str) -> dict[str, Any]:
        """The JSON body of one create (calls the input provider)."""
        session = dict(self.session_config or {})
        messages = self._input()
        if messages:
            session["input"] = messages
        body: dict[str, Any] = {"transport": {"type": "webrtc", "sdp": offer_sdp}}
        if session:
            body["session"] = session
        return body

    async def exchange(self, offer_sdp: str) -> SdpAnswer:
        """POST the offer (and the seeded ``input``), return the answer with the session id as
        ``call_id``. Raises a classified :class:`VoiceError`. A 401 with a refreshable token
        provider is retried once with a fresh key, as for Realtime."""
        try:
            data = json.dumps(self.request_body(offer_sdp), ensure_ascii=False,
                              separators=(",", ":")).encode()
        except (TypeError, ValueError) as exc:
            raise _config_error(f"session or input is not JSON-serialisable: {exc}") from exc
        status, body, headers, _ = await self._send(data, "application/json")
        invalidate = getattr(self._token, "invalidate", None)
        if status == 401 and callable(invalidate):
            log.info("live signaling got 401; refreshing the key and retrying once")
            invalidate()
            status, body, headers, _ = await self._send(data, "application/json")
        if body is None:
            raise _invalid_answer(status, f"body is larger than {self.max_answer_bytes} bytes")
        if status not in (200, 201):
            err = classify_http(status, body, headers)
            if status == 400 and err.code.startswith("http_"):
                err = attrs.evolve(err, code="invalid_config")
            err = attrs.evolve(err, message=printable(err.message))
            log.info("live session create refused: %s", err)
            raise err
        session_id, sdp = _parse_answer(status, body)
        check_answer_sdp(sdp, status)
        self.session_ids = [*self.session_ids[-99:], session_id]
        log.debug("live session %s created", session_id)
        return SdpAnswer(sdp=sdp, call_id=session_id)

    async def hangup(self, call_id: str | None, *, timeout: float = HANGUP_TIMEOUT) -> bool:
        """No HTTP hangup exists for a Live WebRTC session (only for SIP): always False, no
        request. Connections end with ``session.close`` on the data channel."""
        return False


def _parse_answer(status: int, body: bytes) -> tuple[str, str]:
    """(session id, answer SDP) of a create's JSON answer, else ``invalid_answer``."""
    try:
        value = json.loads(body)
    except (ValueError, RecursionError):
        raise _invalid_answer(status, f"is not JSON: {body[:120]!r}") from None
    session = value.get("session") if isinstance(value, dict) else None
    transport = value.get("transport") if isinstance(value, dict) else None
    sid = session.get("id") if isinstance(session, dict) else None
    if not isinstance(sid, str) or not sid.strip():
        raise _invalid_answer(status, "has no session.id string")
    if not isinstance(transport, dict):
        raise _invalid_answer(status, "has no transport object")
    kind = transport.get("type", "webrtc")
    if kind != "webrtc":
        raise _invalid_answer(status, f"has transport.type {printable(kind, 40)}, not 'webrtc'")
    sdp = transport.get("sdp")
    if not isinstance(sdp, str):
        raise _invalid_answer(status, "has no transport.sdp string")
    return sid, sdp
