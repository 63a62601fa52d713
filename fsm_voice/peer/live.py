"""The OpenAI Live API (GPT-Live) side of the local peer: wire shapes, strict create schema,
the :class:`LiveCall` and the sideband.

Facts follow ``shared/reference/openai-live.md``; the stand-in's own assumptions (things the
reference marks NOT FOUND) are collected here:

- error codes on ``POST /v1/live/sessions``: ``unknown_parameter``, ``missing_required_parameter``,
  ``invalid_type``, ``invalid_value``, ``invalid_offer``, ``invalid_json``,
  ``array_above_max_length``, ``input_too_long`` (OpenAI envelope, 400); ``session.input`` is
  checked by :mod:`fsm_voice.live_input` (the §1.2 item rules), a URL query (``?model=``) is
  ``unknown_parameter``;
- a command with a field the peer does not know gets ``unknown_parameter`` (not applied); an
  error answering a sideband's message goes to that sideband only; ``attach?graceful_close=``
  takes ``true``/``false`` only (else 400);
- a session whose client never connects is ended by the connect watchdog (``connect_timeout``
  s): sidebands get ``session.closed`` ``connection_lost``, the record says
  ``closed_by="connect_timeout"``;
- an unknown command type gets an ``error`` whose ``code`` is null (the docs allow null codes);
  ``session.start`` / ``session.input_audio.append`` on the data channel or sideband get
  ``invalid_value``; a command after ``session.close`` gets ``session_closing``;
- ``session.close`` drains by stopping the reply audio, then sends ``session.closed`` and closes
  the call once the client has closed or ``close_linger`` seconds passed (so the event is not lost);
- a call that ends without ``session.closed`` on its data channel still ends the session:
  sidebands get ``session.closed`` with ``remote_hangup`` (the client closed its connection) or
  ``connection_lost`` (failure, fault, peer shutdown);
- the session timeline (``start_ms``/``end_ms``, usage seconds) starts at the HTTP create;
- the peer replies (echo or tone, with ``session.output_transcript.delta``) after each user
  utterance its VAD hears and after ``session.instructions.append`` (the documented way to make
  the model greet); Responses delegation (``response.create``...) is not emulated (null-code
  error).
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import json
import logging
import math
import re
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Final

import attrs

from fsm_voice.live_input import LiveInputError, validate_live_input

from . import protocol as p
from .audio import pcm_ms
from .call import Call, assistant_transcript, user_transcript
from .vad import VadEvent, count_words

if TYPE_CHECKING:
    from aiohttp import web

log = logging.getLogger(__name__)

LIVE_SESSIONS_PATH: Final = "/v1/live/sessions"
LIVE_MODELS: Final = frozenset({"gpt-live-1", "gpt-live-1.1"})
LIVE_DEFAULT_VOICE: Final = "marin"
LIVE_DEFAULT_INSTRUCTIONS: Final = "You are a local stand-in for a live voice model."
CLOSE_REASONS: Final = ("close_requested", "expired", "content", "remote_hangup",
                        "connection_lost")
MAX_INPUT_MESSAGES: Final = 128
MAX_APPEND_WORDS: Final = 500  # stand-in for the documented 500-token limit
CONTEXT_TOKENS: Final = 128_000
SESSION_KEYS: Final = frozenset(
    {"model", "instructions", "audio", "input", "store", "client", "delegation"})
LIVE_VAD: Final[Mapping[str, Any]] = {"prefix_padding_ms": 300, "silence_duration_ms": 500}
"""The peer's fixed turn detection in Live mode (Live has no turn-detection settings)."""

COMMAND_TYPES: Final = frozenset({
    "session.close", "session.update", "session.input_audio.mute", "session.input_audio.unmute",
    "session.instructions.append", "session.thinking.append", "session.commentary.append",
    "response.create", "response.item.create", "session.start", "session.input_audio.append",
})
_COMMAND_KEYS: Final[Mapping[str, frozenset[str]]] = {
    "session.close": frozenset({"type", "event_id"}),
    "session.input_audio.mute": frozenset({"type", "event_id"}),
    "session.input_audio.unmute": frozenset({"type", "event_id"}),
    "session.update": frozenset({"type", "event_id", "session"}),
    **{t: frozenset({"type", "event_id", "content", "delegation_id"}) for t in (
        "session.instructions.append", "session.thinking.append", "session.commentary.append")},
}
"""The fields of each command the peer emulates (any other field: ``unknown_parameter``)."""
CLIENT_EVENT_PATTERN: Final = re.compile(
    r"^(?:error|info|[a-z][a-z0-9_-]*(?:\.[a-z0-9_-]+)+)$")
"""``session.client.data_channel.allowed_client_events`` items (reference §1.2)."""
MAX_ALLOWED_EVENTS: Final = 256
_APPENDS: Final = {
    "session.instructions.append": "session.instructions.appended",
    "session.thinking.append": "session.thinking.appended",
    "session.commentary.append": "session.commentary.appended",
}
# Call.close reasons of a call that ended without session.closed -> (reason, closed_by).
_ABRUPT: Final = {
    "connection_closed": ("remote_hangup", "transport"),
    "dropped_by_control": ("connection_lost", "fault"),
    "closed_by_control": ("connection_lost", "fault"),
    "server_stopped": ("connection_lost", "server"),
    "connect_timeout": ("connection_lost", "connect_timeout"),
}

JsonObject = dict[str, Any]


# --------------------------------------------------------------------------- wire shapes


class LiveRequestError(ValueError):
    """A ``POST /v1/live/sessions`` body the peer refuses (HTTP 400 with this code/param)."""

    def __init__(self, message: str, code: str | None, param: str | None = None,
                 status: int = 400) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.param = param
        self.status = status


def new_session_id() -> str:
    return p.new_id("live", 12)


def error_event(
    message: str,
    *,
    type: str = "invalid_request_error",
    code: str | None = None,
    param: str | None = None,
    client_event_id: str | None = None,
) -> JsonObject:
    """A Live ``error`` event: the correlation key is ``error.client_event_id`` (omitted when
    the command had no ``event_id``)."""
    error: JsonObject = {"type": type, "code": code, "message": message, "param": param}
    if client_event_id is not None:
        error["client_event_id"] = client_event_id
    return {"type": "error", "error": error}


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    return "an object"


def _unknown(obj: Mapping[str, Any], allowed: frozenset[str] | set[str], path: str) -> None:
    for key in obj:
        if key not in allowed:
            name = f"{path}.{key}" if path else str(key)
            raise LiveRequestError(f"Unknown parameter: '{name}'.", "unknown_parameter", name)


def _object(value: Any, path: str) -> Mapping[str, Any]:
    if not isinstance(value, dict):
        raise LiveRequestError(
            f"Invalid type for '{path}': expected an object, but got {_kind(value)} instead.",
            "invalid_type", path)
    return value


def _missing(path: str) -> LiveRequestError:
    return LiveRequestError(f"Missing required parameter: '{path}'.",
                            "missing_required_parameter", path)


def _string(value: Any, path: str, *, nullable: bool = False) -> None:
    if value is None and nullable:
        return
    if not isinstance(value, str):
        raise LiveRequestError(
            f"Invalid type for '{path}': expected a string, but got {_kind(value)} instead.",
            "invalid_type", path)


def parse_create(body: Any, models: frozenset[str] | None = LIVE_MODELS) -> tuple[JsonObject, str]:
    """Check a create body strictly; returns ``(session config, sdp offer)``.

    Raises :class:`LiveRequestError` for unknown keys at any level the schema closes, missing
    ``session.model`` / ``transport``, ``transport.type != "webrtc"``, an empty ``sdp``,
    ``session.audio.format`` (WebRTC negotiates it), or a value of the wrong type.
    ``models``: accepted model names (None: any non-empty string).
    """
    top = _object(body, "body")
    _unknown(top, {"session", "transport"}, "")
    if "session" not in top:
        raise _missing("session")
    if "transport" not in top:
        raise _missing("transport")
    session = _object(top["session"], "session")
    _unknown(session, SESSION_KEYS, "session")
    if "model" not in session:
        raise _missing("session.model")
    model = session["model"]
    _string(model, "session.model")
    if not model or (models is not None and model not in models):
        supported = ", ".join(f"'{m}'" for m in sorted(models or ()))
        raise LiveRequestError(
            f"Invalid value: {model!r}." + (f" Supported values are: {supported}."
                                            if supported else ""),
            "invalid_value", "session.model")
    _string(session.get("instructions"), "session.instructions", nullable=True)
    if "audio" in session:
        audio = _object(session["audio"], "session.audio")
        if "format" in audio:
            raise LiveRequestError(
                "'session.audio.format' is not accepted for WebRTC sessions: the audio format "
                "is negotiated by SDP; omit it.", "invalid_value", "session.audio.format")
        _unknown(audio, {"output"}, "session.audio")
        if "output" in audio:
            output = _object(audio["output"], "session.audio.output")
            if "format" in output:
                raise LiveRequestError(
                    "'session.audio.output.format' is not accepted for WebRTC sessions; omit "
                    "it.", "invalid_value", "session.audio.output.format")
            _unknown(output, {"voice"}, "session.audio.output")
            if "voice" in output:
                _voice(output["voice"])
    if "input" in session:
        _input(session["input"])
    if "store" in session and not isinstance(session["store"], bool):
        raise LiveRequestError(
            f"Invalid type for 'session.store': expected a boolean, but got "
            f"{_kind(session['store'])} instead.", "invalid_type", "session.store")
    if "client" in session:
        client = _object(session["client"], "session.client")
        _unknown(client, {"data_channel"}, "session.client")
        if "data_channel" in client:
            dc = _object(client["data_channel"], "session.client.data_channel")
            _unknown(dc, {"allowed_client_events", "allowed_server_events"},
                     "session.client.data_channel")
            for key in ("allowed_client_events", "allowed_server_events"):
                value = dc.get(key, "all")
                if value != "all" and not isinstance(value, list):
                    raise LiveRequestError(
                        f"Invalid value for 'session.client.data_channel.{key}': expected "
                        "'all' or an array.", "invalid_value",
                        f"session.client.data_channel.{key}")
            _allowed_client_events(dc.get("allowed_client_events", "all"))
    if session.get("delegation") is not None:
        delegation = _object(session["delegation"], "session.delegation")
        _unknown(delegation, {"type", "responses"}, "session.delegation")
        dtype = delegation.get("type")
        if dtype not in ("client", "responses"):
            raise LiveRequestError(
                f"Invalid value: {dtype!r}. Supported values are: 'client', 'responses'.",
                "invalid_value", "session.delegation.type")
        if dtype == "responses":
            responses = _object(delegation.get("responses", {}), "session.delegation.responses")
            if "model" not in responses:
                raise _missing("session.delegation.responses.model")
        elif "responses" in delegation:
            raise LiveRequestError(
                "Unknown parameter: 'session.delegation.responses'.", "unknown_parameter",
                "session.delegation.responses")
    transport = _object(top["transport"], "transport")
    _unknown(transport, {"type", "sdp"}, "transport")
    if "type" not in transport:
        raise _missing("transport.type")
    if transport["type"] != "webrtc":
        raise LiveRequestError(
            f"Invalid value: {transport['type']!r}. Supported values are: 'webrtc'.",
            "invalid_value", "transport.type")
    if "sdp" not in transport:
        raise _missing("transport.sdp")
    _string(transport["sdp"], "transport.sdp")
    if not transport["sdp"].strip():
        raise LiveRequestError("Invalid 'transport.sdp': empty string; expected an SDP offer.",
                               "invalid_value", "transport.sdp")
    return dict(session), str(transport["sdp"])


def _allowed_client_events(value: Any) -> None:
    path = "session.client.data_channel.allowed_client_events"
    if value == "all":
        return
    if len(value) > MAX_ALLOWED_EVENTS:
        raise LiveRequestError(
            f"Invalid '{path}': array too long. Expected an array with maximum length "
            f"{MAX_ALLOWED_EVENTS}, but got an array with length {len(value)} instead.",
            "array_above_max_length", path)
    for i, name in enumerate(value):
        if not isinstance(name, str) or not CLIENT_EVENT_PATTERN.match(name):
            raise LiveRequestError(
                f"Invalid '{path}[{i}]': expected a client event type matching "
                f"{CLIENT_EVENT_PATTERN.pattern!r}.", "invalid_value", f"{path}[{i}]")


def _voice(voice: Any) -> None:
    path = "session.audio.output.voice"
    if isinstance(voice, str):
        if not voice:
            raise LiveRequestError(f"Invalid '{path}': empty string.", "invalid_value", path)
        return
    obj = _object(voice, path)
    _unknown(obj, {"id"}, path)
    vid = obj.get("id")
    if not isinstance(vid, str) or not 1 <= len(vid) <= 128:
        raise LiveRequestError(f"Invalid '{path}.id': expected a string of 1 to 128 characters.",
                               "invalid_value", path + ".id")


def _input(items: Any) -> None:
    try:
        validate_live_input(items)
    except LiveInputError as exc:
        raise LiveRequestError(exc.message, exc.code, exc.param) from None


def session_resource(
    session_id: str, config: Mapping[str, Any], expires_at: int
) -> JsonObject:
    """The ``SessionResource`` of ``session.started``/``.closed``: the config as received with
    the server's defaults resolved (voice marin, input [], delegation client, store false)."""
    instructions = config.get("instructions")
    if not isinstance(instructions, str) or not instructions.strip():
        instructions = LIVE_DEFAULT_INSTRUCTIONS
    audio = copy.deepcopy(config.get("audio") or {})
    audio.setdefault("output", {}).setdefault("voice", LIVE_DEFAULT_VOICE)
    client = copy.deepcopy(config.get("client") or {})
    dc = client.setdefault("data_channel", {})
    dc.setdefault("allowed_client_events", "all")
    dc.setdefault("allowed_server_events", "all")
    return {
        "id": session_id,
        "expires_at": expires_at,
        "model": config["model"],
        "status": "active",
        "instructions": instructions,
        "input": copy.deepcopy(config.get("input") or []),
        "audio": audio,
        "client": client,
        "delegation": copy.deepcopy(config.get("delegation") or {"type": "client"}),
        "store": bool(config.get("store", False)),
    }


@attrs.define
class LiveSessionRecord:
    """What the peer received for one Live session, and how it ended (tests read these).

    ``input`` and ``instructions`` are exactly as received (None when omitted).
    ``closed_by``: "client" (data-channel ``session.close``), "sideband", "fault" (control
    API), "expiry", "transport" (the connection ended), "server" (peer shutdown),
    "connect_timeout" (the client never connected: the connect watchdog ended it).
    ``client_notified``: the ``session.closed`` event went out on the data channel.
    """

    id: str
    model: str
    instructions: str | None
    input: list[Any] | None
    voice: str
    created_at: float
    closed_reason: str | None = None
    usage_seconds: float | None = None
    closed_by: str | None = None
    client_notified: bool = False
    appended: list[str] = attrs.Factory(list)
    """``content`` of every accepted ``session.*.append`` command, in order."""

    def to_dict(self) -> JsonObject:
        return attrs.asdict(self)


class Sideband:
    """One attached sideband WebSocket: an outbound queue drained by :meth:`pump`."""

    MAX_QUEUED = 1024

    def __init__(self, ws: web.WebSocketResponse) -> None:
        self.ws = ws
        self.queue: asyncio.Queue[str | None] = asyncio.Queue()
        self.dropped = 0
        self.finished = asyncio.Event()
        self._ended = False

    def put(self, event: Mapping[str, Any]) -> None:
        if self._ended:
            return
        if self.queue.qsize() >= self.MAX_QUEUED:
            self.dropped += 1
            return
        self.queue.put_nowait(json.dumps(event))

    def end(self) -> None:
        """No more events: the pump sends what is queued, then closes the socket."""
        if not self._ended:
            self._ended = True
            self.queue.put_nowait(None)

    async def pump(self) -> None:
        while (text := await self.queue.get()) is not None:
            try:
                await self.ws.send_str(text)
            except (ConnectionError, RuntimeError):
                break
        await self.ws.close()


# --------------------------------------------------------------------------- the call


class LiveCall(Call):
    """One Live session on the peer: the Realtime :class:`Call`'s media, VAD and faults, with
    the Live events on ``oai-events`` and any attached sidebands."""

    protocol = "live"

    def __init__(
        self,
        *,
        record: LiveSessionRecord,
        config: Mapping[str, Any],
        usage_interval: float = 1.0,
        close_linger: float = 1.0,
        expires_at: int | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(call_id=record.id, model=record.model, **kwargs)
        self._t0 = time.monotonic()
        limit = int(self.created_at + self.max_session_seconds)
        self.session = session_resource(record.id, config,
                                        limit if expires_at is None else expires_at)
        self.record = record
        self.usage_interval = usage_interval
        self.close_linger = close_linger
        self.sidebands: set[Sideband] = set()
        self.closing = False
        """``session.closed`` was sent (or the session ended): commands are refused."""
        self.input_muted = False
        self._origin: Sideband | None = None  # who sent the command being handled
        self._audio_t0_ms: float | None = None  # timeline position of the first input frame
        self._reply_serial = 0
        self._words_heard = 0
        allowed = self.session["client"]["data_channel"]["allowed_client_events"]
        self._allowed: frozenset[str] | None = (
            None if allowed == "all" else frozenset(a for a in allowed if isinstance(a, str)))

    # ----------------------------------------------------------------- hooks

    @property
    def _turn_detection(self) -> Mapping[str, Any] | None:
        return LIVE_VAD

    def timeline_ms(self) -> float:
        """Milliseconds since the session was created (the HTTP create starts it)."""
        return (time.monotonic() - self._t0) * 1000.0

    def usage_seconds(self) -> float:
        return round(time.monotonic() - self._t0, 3)

    def _greet(self) -> None:
        self.send({"type": "session.started", "session": self.session})
        dc = self.session["client"]["data_channel"]
        if dc["allowed_client_events"] != "all" or dc["allowed_server_events"] != "all":
            self.send({"type": "info", "code": "data_channel_permissions",
                       "message": "This data channel is limited to the session's "
                                  "client.data_channel permissions."})
        self._spawn(self._usage_loop(), "usage")

    def context_ratio(self) -> float:
        """A stand-in for the context window's fill: seeded input, appends and heard words, at
        about 4 characters or 1 word per token."""
        tokens = len(json.dumps(self.session["input"])) / 4 + sum(
            len(a.split()) for a in self.record.appended) + self._words_heard
        return round(min(1.0, tokens / CONTEXT_TOKENS), 6)

    def _expire(self) -> None:
        self._spawn(self._end("expired", closed_by="expiry"), "expire")

    def _deliver(self, stamped: p.JsonObject) -> bool:
        """Data channel and every attached sideband; nothing after ``session.closed``."""
        if self.record.closed_reason is not None:
            self.events_dropped += 1
            return False
        for sb in list(self.sidebands):
            sb.put(stamped)
        return super()._deliver(stamped)

    def answer(self, event: Mapping[str, Any]) -> bool:
        """Send the answer to the command being handled to whoever sent it."""
        if self._origin is not None:
            self._origin.put(p.stamp(event))
            return True
        return super()._deliver(p.stamp(event))

    def _reply(self, event: p.JsonObject) -> None:
        self.answer(event)

    def send_error(
        self,
        message: str,
        *,
        type: str = "invalid_request_error",
        code: str | None = None,
        param: str | None = None,
        client_event_id: str | None = None,
    ) -> bool:
        return self.answer(error_event(message, type=type, code=code, param=param,
                                      client_event_id=client_event_id))

    async def _usage_loop(self) -> None:
        while True:
            await asyncio.sleep(self.usage_interval)
            if not self.closing:  # after session.close only session.closed carries usage
                self.send({"type": "session.usage.updated",
                           "usage": {"seconds": self.usage_seconds()},
                           "context_window": {"usage_ratio": self.context_ratio()}})

    # ----------------------------------------------------------------- commands

    def on_sideband_message(self, raw: str | bytes, sideband: Sideband) -> None:
        """A command from an attached sideband (answers go back to it)."""
        self._origin = sideband
        try:
            self._on_message(raw)
        finally:
            self._origin = None

    def _parse(self, raw: str | bytes) -> tuple[p.JsonObject | None, p.JsonObject | None]:
        try:
            text = raw.decode("utf-8") if isinstance(raw, bytes) else raw
            data = json.loads(text)
        except (UnicodeDecodeError, ValueError, RecursionError) as exc:
            return None, error_event(
                f"We could not parse the JSON body of your request. ({type(exc).__name__})",
                code="invalid_json")
        if not isinstance(data, dict):
            return None, error_event(
                f"Invalid type for event: expected an object, but got {_kind(data)} instead.",
                code="invalid_type")
        raw_id = data.get("event_id")
        eid = raw_id if isinstance(raw_id, str) else None
        etype = data.get("type")
        if etype is None:
            return None, error_event("Missing required parameter: 'type'.",
                                     code="missing_required_parameter", param="type",
                                     client_event_id=eid)
        if not isinstance(etype, str) or etype not in COMMAND_TYPES:
            return None, error_event(f"Unknown event type: {etype!r}.", code=None,
                                     param="type", client_event_id=eid)
        allowed = _COMMAND_KEYS.get(etype)
        if allowed is not None:
            unknown = sorted(str(k) for k in data if k not in allowed)
            if unknown:
                name = unknown[0][:64]
                return None, error_event(f"Unknown parameter: '{name}'.",
                                         code="unknown_parameter", param=name,
                                         client_event_id=eid)
        return data, None

    def _dispatch(self, event: p.JsonObject, eid: str | None) -> None:
        etype = event["type"]
        where = "sideband" if self._origin is not None else "data channel"
        if etype in ("session.start", "session.input_audio.append"):
            self.send_error(
                f"'{etype}' is not accepted on the {where} of a WebRTC session"
                + (": the HTTP create started it." if etype == "session.start"
                   else ": send audio on the media track."),
                code="invalid_value", param="type", client_event_id=eid)
            return
        if self._origin is None and self._allowed is not None and etype not in self._allowed:
            self.send_error(f"'{etype}' is not allowed on this session's data channel.",
                            code="event_not_allowed", param="type", client_event_id=eid)
            return
        if self.closing:
            self.send_error("The session is closing; no further commands are accepted.",
                            code="session_closing", client_event_id=eid)
            return
        ack: JsonObject = {} if eid is None else {"client_event_id": eid}
        if etype == "session.close":
            self.closing = True  # refuse what follows at once; end_session sends the event
            by = "sideband" if self._origin is not None else "client"
            self._spawn(self._end("close_requested", closed_by=by, client_event_id=eid,
                                  force=True), "session-close")
        elif etype in ("session.input_audio.mute", "session.input_audio.unmute"):
            self.input_muted = etype.endswith(".mute")
            self.answer({"type": etype + "d", **ack})  # .muted / .unmuted
        elif etype in _APPENDS:
            self._append(event, eid, ack)
        elif etype == "session.update":
            self._update(event, eid, ack)
        else:  # response.create / response.item.create
            self.send_error(
                f"'{etype}' requires Responses delegation, which the local peer does not "
                "emulate.", code=None, param="type", client_event_id=eid)

    def _append(self, event: p.JsonObject, eid: str | None, ack: JsonObject) -> None:
        content = event.get("content")
        if not isinstance(content, str) or not content.strip():
            self.send_error(
                "Missing required parameter: 'content'." if content is None
                else "Invalid 'content': expected a non-empty string.",
                code="missing_required_parameter" if content is None else "invalid_value",
                param="content", client_event_id=eid)
            return
        if len(content.split()) > MAX_APPEND_WORDS:
            self.send_error(f"Invalid 'content': longer than {MAX_APPEND_WORDS} tokens.",
                            code="string_above_max_length", param="content",
                            client_event_id=eid)
            return
        if "delegation_id" not in event:
            self.send_error("Missing required parameter: 'delegation_id'.",
                            code="missing_required_parameter", param="delegation_id",
                            client_event_id=eid)
            return
        if event["delegation_id"] is not None:
            self.send_error(f"Unknown client delegation: {event['delegation_id']!r}.",
                            code="invalid_value", param="delegation_id", client_event_id=eid)
            return
        self.record.appended.append(content)
        now = int(self.timeline_ms())
        self.answer({"type": _APPENDS[event["type"]], "start_ms": now, "end_ms": now, **ack})
        if event["type"] == "session.instructions.append" and not self.player.playing:
            self._speak()

    def _update(self, event: p.JsonObject, eid: str | None, ack: JsonObject) -> None:
        session = event.get("session")
        if not isinstance(session, dict):
            self.send_error("Invalid 'session': expected an object.", code="invalid_type",
                            param="session", client_event_id=eid)
            return
        for key, value in session.items():
            if key == "delegation":
                new = "client" if value is None else (
                    value.get("type") if isinstance(value, dict) else None)
                if new != self.session["delegation"].get("type"):
                    self.send_error("The delegation type cannot change after session startup.",
                                    code="immutable_field_update",
                                    param="session.delegation.type", client_event_id=eid)
                    return
            elif key in SESSION_KEYS:
                self.send_error(f"'session.{key}' cannot change after session startup.",
                                code="immutable_field_update", param=f"session.{key}",
                                client_event_id=eid)
                return
            else:
                self.send_error(f"Unknown parameter: 'session.{key}'.",
                                code="unknown_parameter", param=f"session.{key}",
                                client_event_id=eid)
                return
        self.answer({"type": "session.updated", "session": self.session, **ack})

    # ----------------------------------------------------------------- audio

    def on_audio(self, pcm: bytes) -> None:
        """Inbound audio: the VAD's utterances become ``session.input_transcript.delta`` and a
        spoken reply. Nothing is heard while muted or closing (no VAD events in Live)."""
        if self._audio_t0_ms is None:
            self._audio_t0_ms = max(0.0, self.timeline_ms() - pcm_ms(pcm))
        if self.input_muted or self.closing:
            return
        decision, utterance = self._track_speech(pcm)
        if decision is VadEvent.SPEECH_STARTED:
            if self.player.playing:  # the user talks over the reply: stop it
                self.player.clear()
        elif decision is VadEvent.SPEECH_STOPPED:
            padding = float(LIVE_VAD["prefix_padding_ms"])
            start = self._audio_t0_ms + max(0.0, self.vad.last_start_ms - padding)
            end = self._audio_t0_ms + self.vad.last_voiced_end_ms
            words = count_words(utterance, self.vad_threshold_dbfs)
            self._last_user_audio = utterance
            self._last_user_turn = ("audio", words)
            self._words_heard += words
            self.send({"type": "session.input_transcript.delta",
                       "delta": user_transcript(words, pcm_ms(utterance) / 1000),
                       "start_ms": int(start), "end_ms": max(int(start) + 1, int(end))})
            self._speak()

    def _speak(self) -> None:
        """Play the reply audio with ``session.output_transcript.delta``, one word per slice of
        the audio (``start_ms``/``end_ms`` on the session timeline)."""
        audio = self._reply_audio()
        self._reply_serial += 1
        self.player.clear()
        done = self.player.play(audio)
        text = assistant_transcript(self._last_user_turn, self.reply)
        self._spawn(self._output_transcript(self._reply_serial, done, text, self.timeline_ms(),
                                            pcm_ms(audio)), "transcript")

    async def _output_transcript(self, serial: int, done: asyncio.Future[bool], text: str,
                                 start_ms: float, duration_ms: float) -> None:
        words = text.split(" ")
        step = duration_ms / len(words)
        for i, word in enumerate(words):
            if serial != self._reply_serial or self.closing or (
                    done.done() and not done.result()):
                return  # interrupted or cleared
            begin = start_ms + i * step
            wait = (begin - self.timeline_ms()) / 1000
            if wait > 0:
                await asyncio.sleep(wait)
            if serial != self._reply_serial or self.closing:
                return
            self.send({"type": "session.output_transcript.delta",
                       "delta": word if i == 0 else " " + word,
                       "start_ms": int(begin), "end_ms": math.ceil(begin + step)})

    # ----------------------------------------------------------------- the end

    def _closed_event(self, reason: str, client_event_id: str | None = None) -> JsonObject:
        event: JsonObject = {"type": "session.closed", "reason": reason,
                             "session": self.session,
                             "usage": {"seconds": self.usage_seconds()}}
        if client_event_id is not None:
            event["client_event_id"] = client_event_id
        return event

    def _record_end(self, reason: str, closed_by: str, notified: bool) -> None:
        self.record.closed_reason = reason
        self.record.closed_by = closed_by
        self.record.usage_seconds = self.usage_seconds()
        self.record.client_notified = notified

    async def end_session(self, reason: str, *, closed_by: str,
                          client_event_id: str | None = None, force: bool = False) -> bool:
        """Send ``session.closed{reason}`` (data channel and sidebands), then end the call once
        the client has closed or ``close_linger`` passed. False if the session was already
        ending (``force``: the caller set ``closing`` itself)."""
        if self.closed or (self.closing and not force) or self.record.closed_reason:
            return False
        if reason not in CLOSE_REASONS:
            raise ValueError(f"reason must be one of {', '.join(CLOSE_REASONS)}; got {reason!r}")
        self.closing = True
        self._reply_serial += 1
        self.player.clear()  # drain: the reply in progress stops
        notified = self.send(self._closed_event(reason, client_event_id))
        self._record_end(reason, closed_by, notified)
        await self._linger()
        await self.close(f"live_{reason}")
        return True

    async def _end(self, reason: str, *, closed_by: str, client_event_id: str | None = None,
                   force: bool = False) -> None:
        await self.end_session(reason, closed_by=closed_by, client_event_id=client_event_id,
                               force=force)

    async def _linger(self) -> None:
        """Give the data channel time to deliver ``session.closed``: until the client closes
        its connection, at most ``close_linger`` seconds."""
        deadline = time.monotonic() + self.close_linger
        while time.monotonic() < deadline:
            ch, pc = self.channel, self.pc
            if ch is None or ch.readyState != "open" or pc is None or pc.connectionState in (
                    "closed", "failed"):
                return
            await asyncio.sleep(0.02)

    async def close(self, reason: str = "closed") -> None:
        if not self.closed and not self.record.closed_reason:
            # The session ends without a session.closed on the data channel: tell sidebands.
            live_reason, by = _ABRUPT.get(reason, ("connection_lost", "transport"))
            self.closing = True
            for sb in list(self.sidebands):
                sb.put(p.stamp(self._closed_event(live_reason)))
            self._record_end(live_reason, by, notified=False)
        await super().close(reason)
        await self._close_sidebands()

    async def _close_sidebands(self) -> None:
        sidebands = list(self.sidebands)
        for sb in sidebands:
            sb.end()
        for sb in sidebands:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(5.0):
                    await sb.finished.wait()
