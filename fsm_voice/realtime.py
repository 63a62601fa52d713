"""Typed OpenAI Realtime session configuration (GA ``session`` object shape).

``RealtimeConfig(...).to_session()`` is what goes out as ``session.update`` after every connect
and restart, and what a token broker sends with ``POST /v1/realtime/client_secrets``.
"""

from __future__ import annotations

from typing import Any, Final, Literal

import attrs

from fsm_voice.errors import ConfigError

AudioFormat = Literal["pcm16", "g711_ulaw", "g711_alaw"]

#: Our format names -> the GA ``audio.*.format`` objects (PCM16 is 24 kHz mono).
AUDIO_FORMATS: Final[dict[str, dict[str, Any]]] = {
    "pcm16": {"type": "audio/pcm", "rate": 24000},
    "g711_ulaw": {"type": "audio/pcmu"},
    "g711_alaw": {"type": "audio/pcma"},
}


def _choice(name: str, allowed: tuple[str, ...]) -> Any:
    def check(_: object, attribute: attrs.Attribute[Any], value: object) -> None:
        if value not in allowed:
            raise ConfigError.invalid(f"RealtimeConfig.{name}", value,
                                      f"one of {', '.join(map(repr, allowed))}")

    return check


def _non_empty(name: str) -> Any:
    def check(_: object, attribute: attrs.Attribute[Any], value: object) -> None:
        if not isinstance(value, str) or not value.strip():
            raise ConfigError.invalid(f"RealtimeConfig.{name}", value, "a non-empty string")

    return check


def _fraction(_: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 1:
        raise ConfigError.invalid("RealtimeConfig.vad_threshold", value, "a number in [0, 1]")


def _millis(name: str) -> Any:
    def check(_: object, attribute: attrs.Attribute[Any], value: object) -> None:
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 10_000:
            raise ConfigError.invalid(f"RealtimeConfig.{name}", value,
                                      "an integer number of milliseconds in [0, 10000]")

    return check


@attrs.frozen
class RealtimeConfig:
    """Model, voice, instructions, turn detection and audio formats of a realtime session.

    ``turn_detection``: ``"server_vad"`` (default), ``"semantic_vad"`` or ``None`` (the app
    commits audio itself). Audio formats: ``"pcm16"`` (24 kHz, default), ``"g711_ulaw"`` or
    ``"g711_alaw"`` (telephony).
    """

    model: str = attrs.field(default="gpt-realtime", validator=_non_empty("model"))
    voice: str = attrs.field(default="alloy", validator=_non_empty("voice"))
    instructions: str | None = None
    turn_detection: Literal["server_vad", "semantic_vad"] | None = attrs.field(
        default="server_vad", validator=_choice("turn_detection",
                                                ("server_vad", "semantic_vad", None))  # type: ignore[arg-type]
    )
    vad_threshold: float = attrs.field(default=0.5, validator=_fraction)
    silence_duration_ms: int = attrs.field(default=500, validator=_millis("silence_duration_ms"))
    prefix_padding_ms: int = attrs.field(default=300, validator=_millis("prefix_padding_ms"))
    input_format: AudioFormat = attrs.field(
        default="pcm16", validator=_choice("input_format", tuple(AUDIO_FORMATS))
    )
    output_format: AudioFormat = attrs.field(
        default="pcm16", validator=_choice("output_format", tuple(AUDIO_FORMATS))
    )

    def to_session(self) -> dict[str, Any]:
        """The GA ``session`` object for ``session.update`` / ``client_secrets``."""
        turn: dict[str, Any] | None = None
        if self.turn_detection == "server_vad":
            turn = {"type": "server_vad", "threshold": self.vad_threshold,
                    "silence_duration_ms": self.silence_duration_ms,
                    "prefix_padding_ms": self.prefix_padding_ms}
        elif self.turn_detection == "semantic_vad":
            turn = {"type": "semantic_vad"}
        session: dict[str, Any] = {
            "type": "realtime",
            "model": self.model,
            "audio": {
                "input": {"format": dict(AUDIO_FORMATS[self.input_format]),
                          "turn_detection": turn},
                "output": {"format": dict(AUDIO_FORMATS[self.output_format]),
                           "voice": self.voice},
            },
        }
        if self.instructions is not None:
            session["instructions"] = self.instructions
        return session
