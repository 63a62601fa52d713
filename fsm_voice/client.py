"""Wiring helpers: one call builds a :class:`VoiceSession` on the real aiortc transport."""

from __future__ import annotations

import ipaddress
import urllib.parse
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

import aiohttp

from fsm_voice.policy import SessionPolicy
from fsm_voice.realtime import RealtimeConfig
from fsm_voice.session import VoiceSession
from fsm_voice.signaling import HttpSignaling
from fsm_voice.transport import AiortcTransport
from fsm_voice.transport.audio import AudioSinkFactory, AudioSourceFactory


def realtime_session(
    base_url: str,
    token: str | Callable[[], Awaitable[str]],
    *,
    policy: SessionPolicy | None = None,
    model: str | None = None,
    session_config: RealtimeConfig | Mapping[str, Any] | None = None,
    audio_source: AudioSourceFactory | None = None,
    audio_sink: AudioSinkFactory | None = None,
    host_addresses: Sequence[str] | None = None,
    http: aiohttp.ClientSession | None = None,
    **session_kw: Any,
) -> VoiceSession:
    """A session against an OpenAI-Realtime-compatible backend at ``base_url``.

    ``token`` is a key or an async provider of fresh ephemeral keys (awaited per SDP exchange).
    ``session_config`` (a :class:`~fsm_voice.realtime.RealtimeConfig` or a raw GA session dict)
    goes out as ``session.update`` after every connect and restart.
    The ICE servers, relay policy and liveness timing come from ``policy``; ``host_addresses``
    forces the host candidates. When it is not given and ``base_url`` points at a loopback
    address (a peer on this machine), the candidates are ``["127.0.0.1"]``: aioice would
    otherwise offer only the machine's other addresses, which a loopback peer cannot reach.
    """
    policy = policy or SessionPolicy()
    if isinstance(session_config, RealtimeConfig):
        session_config = session_config.to_session()
    if host_addresses is None and _is_loopback_url(base_url):
        host_addresses = ["127.0.0.1"]
    signaling = HttpSignaling(base_url, token, model=model, session=http)
    transport = AiortcTransport(
        signaling,
        ice_servers=policy.ice_servers,
        relay_only=policy.relay_only,
        audio_source=audio_source,
        audio_sink=audio_sink,
        host_addresses=host_addresses,
        liveness_interval=policy.ice.liveness_interval,
        liveness_stall=policy.ice.liveness_stall,
    )
    session = VoiceSession(transport, policy=policy, session_config=session_config, **session_kw)
    session.closers.append(signaling.aclose)
    return session


def _is_loopback_url(url: str) -> bool:
    host = urllib.parse.urlsplit(url).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
