"""Typed OpenAI Live (``gpt-live-*``) session configuration and the one-call wiring helper.

``LiveConfig(...).to_session()`` is the ``session`` object of ``POST /v1/live/sessions``
(``MediaSessionConfig``). Live configuration is immutable once the session runs: it goes out
with every create (the first connection and each new session after ``expired`` /
``connection_lost``), never as ``session.update``. The conversation so far goes out as the
create's ``input`` (see :class:`fsm_voice.signaling.live.LiveSignaling`).

:func:`live_session` builds a :class:`~fsm_voice.session.VoiceSession` (``protocol="live"``) on
the aiortc transport with Live signaling, the graceful ``session.close`` handshake and the
audio activity detector (Live sends no speech/playback events).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any, Final

import attrs

from fsm_voice.errors import ConfigError

if TYPE_CHECKING:
    import aiohttp

    from fsm_voice.policy import SessionPolicy
    from fsm_voice.session import VoiceSession
    from fsm_voice.transport.activity import ActivityPolicy
    from fsm_voice.transport.audio import AudioSinkFactory, AudioSourceFactory

__all__ = ["KNOWN_MODELS", "LiveConfig", "live_session"]

KNOWN_MODELS: Final = ("gpt-live-1", "gpt-live-1.1")
"""Model names documented so far. Others are accepted (the server judges them: a new model
must not need a library release); see ``docs`` in the reference notes."""

DEFAULT_FINALISE_TIMEOUT: Final = 15.0
"""Seconds a close waits for ``session.closed`` (OpenAI's own examples use 15 s)."""


def _non_empty(name: str) -> Any:
    def check(_: object, attribute: attrs.Attribute[Any], value: object) -> None:
        if not isinstance(value, str) or not value.strip():
            raise ConfigError.invalid(f"LiveConfig.{name}", value, "a non-empty string")

    return check


def _optional_text(name: str, *, blank_ok: bool) -> Any:
    def check(_: object, attribute: attrs.Attribute[Any], value: object) -> None:
        if value is None:
            return
        if not isinstance(value, str) or (not blank_ok and not value.strip()):
            expected = "a string or None" if blank_ok else "a non-empty string or None"
            raise ConfigError.invalid(f"LiveConfig.{name}", value, expected)

    return check


def _optional_bool(_: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if value is not None and not isinstance(value, bool):
        raise ConfigError.invalid("LiveConfig.store", value, "True, False or None")


@attrs.frozen
class LiveConfig:
    """Model, instructions, voice and storage of a Live session (all fixed at creation).

    ``model``: ``"gpt-live-1"`` (default) or ``"gpt-live-1.1"`` (any non-empty name is passed
    on). ``instructions``: None or blank -> the server's defaults. ``voice``: None -> the
    server's default (``marin``). ``store``: None -> the server's default; True keeps a
    recording (needed to fork a session).
    """

    model: str = attrs.field(default="gpt-live-1", validator=_non_empty("model"))
    instructions: str | None = attrs.field(
        default=None, validator=_optional_text("instructions", blank_ok=True))
    voice: str | None = attrs.field(default=None, validator=_optional_text("voice", blank_ok=False))
    store: bool | None = attrs.field(default=None, validator=_optional_bool)

    def to_session(self) -> dict[str, Any]:
        """The ``session`` object of ``POST /v1/live/sessions`` (without ``input``)."""
        session: dict[str, Any] = {"model": self.model}
        if self.instructions is not None:
            session["instructions"] = self.instructions
        if self.voice is not None:
            session["audio"] = {"output": {"voice": self.voice}}
        if self.store is not None:
            session["store"] = self.store
        return session


def live_session(
    base_url: str,
    token: str | Callable[[], Awaitable[str]],
    *,
    config: LiveConfig | None = None,
    policy: SessionPolicy | None = None,
    audio_source: AudioSourceFactory | None = None,
    audio_sink: AudioSinkFactory | None = None,
    host_addresses: Sequence[str] | None = None,
    http: aiohttp.ClientSession | None = None,
    finalise_timeout: float = DEFAULT_FINALISE_TIMEOUT,
    activity: ActivityPolicy | None = None,
    broker_client_id: str | None = None,
    **session_kw: Any,
) -> VoiceSession:
    """A Live session against ``base_url`` (``POST /v1/live/sessions``).

    Every open posts ``config`` plus the conversation so far as ``input``
    (:meth:`VoiceSession.seed_input`: empty on a start, the history on a restart). Closing a
    connection sends ``session.close`` and waits up to ``finalise_timeout`` s for
    ``session.closed`` (``session.transport.last_finalisation``). ``activity`` tunes the audio
    activity detector (default :class:`~fsm_voice.transport.activity.ActivityPolicy`), which
    derives ``listening``/``speaking`` from the audio. Loopback ``base_url`` -> host candidates
    ``["127.0.0.1"]`` as in :func:`~fsm_voice.client.realtime_session`.

    Through a token broker in proxy mode: ``base_url`` is the broker, ``token`` this app's
    client secret and ``broker_client_id`` its client id; the broker sets the configuration
    (``config`` must then be None: only ``input`` is sent).
    """
    from fsm_voice.client import _is_loopback_url
    from fsm_voice.policy import SessionPolicy
    from fsm_voice.session import VoiceSession
    from fsm_voice.signaling.live import LiveSignaling
    from fsm_voice.transport import AiortcTransport
    from fsm_voice.transport.activity import ActivityPolicy
    from fsm_voice.transport.aiortc_transport import GracefulClose

    policy = policy or SessionPolicy()
    if host_addresses is None and _is_loopback_url(base_url):
        host_addresses = ["127.0.0.1"]
    if broker_client_id is not None and config is not None:
        raise ConfigError.invalid("config", config, "None with broker_client_id (the broker "
                                  "sets the configuration)")
    signaling = LiveSignaling(
        base_url, token, None if broker_client_id is not None else (config or LiveConfig()),
        session=http, client_id=broker_client_id)
    closer = GracefulClose(timeout=finalise_timeout)
    transport = AiortcTransport(
        signaling,
        ice_servers=policy.ice_servers,
        relay_only=policy.relay_only,
        audio_source=audio_source,
        audio_sink=audio_sink,
        host_addresses=host_addresses,
        liveness_interval=policy.ice.liveness_interval,
        liveness_stall=policy.ice.liveness_stall,
        graceful_close=closer,
        activity=activity or ActivityPolicy(),
    )
    # A close waits for session.closed: the runtime must not abandon it before that bound.
    session_kw.setdefault("close_timeout", finalise_timeout + 10.0)
    session = VoiceSession(transport, policy=policy, protocol="live", **session_kw)
    signaling.input_provider = session.seed_input
    session.closers.append(signaling.aclose)
    return session
