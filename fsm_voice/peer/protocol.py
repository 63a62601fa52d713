"""Wire shapes of the OpenAI Realtime API (GA, WebRTC flavour) used by the local peer. Pure.

HTTP errors: ``{"error": {"message", "type", "param", "code"}}``.
Data-channel errors: ``{"type": "error", "event_id", "error": {"type", "code", "message",
"param", "event_id"}}`` where the inner ``event_id`` is the client event that caused it (or None).
Every server event carries a unique ``event_id`` (``event_<hex>``).
"""

from __future__ import annotations

import copy
import json
import secrets
import time
from collections.abc import Mapping
from typing import Any

JsonObject = dict[str, Any]

DEFAULT_MODEL = "gpt-realtime"
DEFAULT_VOICE = "alloy"

CLIENT_EVENT_TYPES: tuple[str, ...] = (
    "session.update",
    "input_audio_buffer.append",
    "input_audio_buffer.commit",
    "input_audio_buffer.clear",
    "conversation.item.create",
    "conversation.item.retrieve",
    "conversation.item.delete",
    "response.create",
    "response.cancel",
    "output_audio_buffer.clear",
)
"""Client events the peer understands; any other ``type`` gets an ``invalid_value`` error."""


def new_id(prefix: str, nbytes: int = 10) -> str:
    """An id like ``event_3f2a...``: ``prefix`` + '_' + random hex."""
    return f"{prefix}_{secrets.token_hex(nbytes)}"


def new_call_id() -> str:
    return new_id("rtc", 12)


def http_error(
    message: str,
    *,
    type: str = "invalid_request_error",
    code: str | None = None,
    param: str | None = None,
) -> JsonObject:
    """OpenAI-shaped HTTP error body."""
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


def error_event(
    message: str,
    *,
    type: str = "invalid_request_error",
    code: str | None = None,
    param: str | None = None,
    client_event_id: str | None = None,
) -> JsonObject:
    """A server ``error`` event (without its own ``event_id``; :func:`stamp` adds it)."""
    return {
        "type": "error",
        "error": {
            "type": type,
            "code": code,
            "message": message,
            "param": param,
            "event_id": client_event_id,
        },
    }


def stamp(event: Mapping[str, Any]) -> JsonObject:
    """Copy of ``event`` with a fresh unique ``event_id`` placed first."""
    out: JsonObject = {"type": event["type"], "event_id": new_id("event")}
    out.update((k, v) for k, v in event.items() if k not in ("type", "event_id"))
    return out


def default_session(
    model: str, voice: str = DEFAULT_VOICE, *, silence_ms: int = 500, prefix_padding_ms: int = 300
) -> JsonObject:
    """The session object of ``session.created`` (GA shape, realtime session)."""
    return {
        "type": "realtime",
        "object": "realtime.session",
        "id": new_id("sess", 12),
        "model": model,
        "output_modalities": ["audio"],
        "instructions": "You are a local stand-in for a realtime voice model.",
        "tools": [],
        "tool_choice": "auto",
        "max_output_tokens": "inf",
        "tracing": None,
        "truncation": "auto",
        "prompt": None,
        "expires_at": int(time.time()) + 3600,
        "include": None,
        "audio": {
            "input": {
                "format": {"type": "audio/pcm", "rate": 24000},
                "transcription": None,
                "noise_reduction": None,
                "turn_detection": {
                    "type": "server_vad",
                    "threshold": 0.5,
                    "prefix_padding_ms": prefix_padding_ms,
                    "silence_duration_ms": silence_ms,
                    "idle_timeout_ms": None,
                    "create_response": True,
                    "interrupt_response": True,
                },
            },
            "output": {
                "format": {"type": "audio/pcm", "rate": 24000},
                "voice": voice,
                "speed": 1.0,
            },
        },
    }


READ_ONLY_SESSION_KEYS = frozenset({"id", "object", "model", "expires_at"})


def merge_session(current: Mapping[str, Any], update: Mapping[str, Any]) -> JsonObject:
    """Deep-merge a ``session.update`` payload into the session (read-only keys kept). Typed
    objects (those with a ``type``, e.g. an audio ``format`` or ``turn_detection``) are replaced
    whole: ``{"type": "audio/pcmu"}`` must not keep the ``rate`` of ``audio/pcm``."""

    def merge(base: JsonObject, patch: Mapping[str, Any]) -> JsonObject:
        for key, value in patch.items():
            if (isinstance(value, Mapping) and isinstance(base.get(key), dict)
                    and "type" not in value):
                base[key] = merge(base[key], value)
            else:
                base[key] = copy.deepcopy(value)
        return base

    patch = {k: v for k, v in update.items() if k not in READ_ONLY_SESSION_KEYS}
    return merge(copy.deepcopy(dict(current)), patch)


def response_object(
    response_id: str,
    conversation_id: str,
    voice: str,
    *,
    status: str = "in_progress",
    status_details: JsonObject | None = None,
    output: list[JsonObject] | None = None,
) -> JsonObject:
    done = status != "in_progress"
    return {
        "object": "realtime.response",
        "id": response_id,
        "status": status,
        "status_details": status_details,
        "output": output or [],
        "conversation_id": conversation_id,
        "output_modalities": ["audio"],
        "max_output_tokens": "inf",
        "audio": {"output": {"format": {"type": "audio/pcm", "rate": 24000}, "voice": voice}},
        "usage": (
            {
                "total_tokens": 0,
                "input_tokens": 0,
                "output_tokens": 0,
                "input_token_details": {"text_tokens": 0, "audio_tokens": 0, "cached_tokens": 0},
                "output_token_details": {"text_tokens": 0, "audio_tokens": 0},
            }
            if done
            else None
        ),
        "metadata": None,
    }


def assistant_item(item_id: str, *, status: str = "in_progress") -> JsonObject:
    return {
        "id": item_id,
        "object": "realtime.item",
        "type": "message",
        "status": status,
        "role": "assistant",
        "content": [{"type": "output_audio", "transcript": ""}] if status != "in_progress" else [],
    }


def user_audio_item(item_id: str) -> JsonObject:
    return {
        "id": item_id,
        "object": "realtime.item",
        "type": "message",
        "status": "completed",
        "role": "user",
        "content": [{"type": "input_audio", "transcript": None}],
    }


def parse_client_event(raw: str | bytes) -> tuple[JsonObject | None, JsonObject | None]:
    """Decode one data-channel message: ``(event, None)`` or ``(None, error_event)``."""
    try:
        text = raw.decode("utf-8") if isinstance(raw, bytes) else raw
        data = json.loads(text)
    except (UnicodeDecodeError, ValueError) as exc:
        return None, error_event(
            f"We could not parse the JSON body of your request. ({exc})", code="invalid_json"
        )
    except RecursionError:
        return None, error_event(
            "We could not parse the JSON body of your request. (nested too deeply)",
            code="invalid_json",
        )
    if not isinstance(data, dict):
        return None, error_event(
            f"Invalid type for event: expected an object, but got {type(data).__name__} instead.",
            code="invalid_type",
        )
    raw_id = data.get("event_id")
    client_event_id = raw_id if isinstance(raw_id, str) else None
    etype = data.get("type")
    if etype is None:
        return None, error_event(
            "Missing required parameter: 'type'.",
            code="missing_required_parameter",
            param="type",
            client_event_id=client_event_id,
        )
    if not isinstance(etype, str) or etype not in CLIENT_EVENT_TYPES:
        supported = ", ".join(f"'{t}'" for t in CLIENT_EVENT_TYPES)
        return None, error_event(
            f"Invalid value: {etype!r}. Supported values are: {supported}.",
            code="invalid_value",
            param="type",
            client_event_id=client_event_id,
        )
    return data, None
