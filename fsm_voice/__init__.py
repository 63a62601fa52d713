"""fsm_voice: a formally specified connection-lifecycle controller for WebRTC voice sessions.

The embedding surface, importable from here; each name is loaded on first use, so
``import fsm_voice`` itself imports nothing heavy (no aiortc until a session is built, and never
the CLI's terminal UI, the diagram toolkit, the local peer or the token broker)::

    from fsm_voice import RealtimeConfig, SessionPolicy, realtime_session
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from fsm_voice.client import realtime_session
    from fsm_voice.errors import ConfigError, ErrorSource, FsmVoiceError, Severity, VoiceError
    from fsm_voice.live import LiveConfig, live_session
    from fsm_voice.machine import STATUSES, Status  # type: ignore[attr-defined, unused-ignore]
    from fsm_voice.policy import (
        IcePolicy,
        IceServer,
        MonitorPolicy,
        QualityAlert,
        QualityThresholds,
        RetryPolicy,
        RolloverPolicy,
        SessionPolicy,
    )
    from fsm_voice.ports import ConnectionMetrics, TransportSignal
    from fsm_voice.protocols import LiveUsage
    from fsm_voice.realtime import RealtimeConfig
    from fsm_voice.session import (
        InvalidEventError,
        QueueOverflowError,
        SessionStateError,
        StatusChange,
        VoiceSession,
    )
    from fsm_voice.tokens import EphemeralKeyProvider
    from fsm_voice.transport.activity import ActivityPolicy
    from fsm_voice.transport.aiortc_transport import (
        ChannelNotOpenError,
        Finalisation,
        GracefulClose,
    )
    from fsm_voice.transport.audio import (
        AudioFileError,
        KeepOpen,
        NullSink,
        SilenceSource,
        ToneSource,
        UtteranceSource,
        WavFileSource,
        WavRecorder,
    )

#: Public name -> the module that defines it.
_EXPORTS: dict[str, str] = {
    "realtime_session": "fsm_voice.client",
    "live_session": "fsm_voice.live",
    "LiveConfig": "fsm_voice.live",
    "ActivityPolicy": "fsm_voice.transport.activity",
    "Finalisation": "fsm_voice.transport.aiortc_transport",
    "GracefulClose": "fsm_voice.transport.aiortc_transport",
    "VoiceSession": "fsm_voice.session",
    "StatusChange": "fsm_voice.session",
    "QueueOverflowError": "fsm_voice.session",
    "SessionStateError": "fsm_voice.session",
    "InvalidEventError": "fsm_voice.session",
    "Status": "fsm_voice.machine",
    "STATUSES": "fsm_voice.machine",
    "SessionPolicy": "fsm_voice.policy",
    "RetryPolicy": "fsm_voice.policy",
    "RolloverPolicy": "fsm_voice.policy",
    "IcePolicy": "fsm_voice.policy",
    "MonitorPolicy": "fsm_voice.policy",
    "QualityThresholds": "fsm_voice.policy",
    "QualityAlert": "fsm_voice.policy",
    "IceServer": "fsm_voice.policy",
    "RealtimeConfig": "fsm_voice.realtime",
    "ConnectionMetrics": "fsm_voice.ports",
    "TransportSignal": "fsm_voice.ports",
    "LiveUsage": "fsm_voice.protocols",
    "EphemeralKeyProvider": "fsm_voice.tokens",
    "FsmVoiceError": "fsm_voice.errors",
    "VoiceError": "fsm_voice.errors",
    "ConfigError": "fsm_voice.errors",
    "Severity": "fsm_voice.errors",
    "ErrorSource": "fsm_voice.errors",
    "ChannelNotOpenError": "fsm_voice.transport.aiortc_transport",
    "AudioFileError": "fsm_voice.transport.audio",
    "KeepOpen": "fsm_voice.transport.audio",
    "NullSink": "fsm_voice.transport.audio",
    "SilenceSource": "fsm_voice.transport.audio",
    "ToneSource": "fsm_voice.transport.audio",
    "UtteranceSource": "fsm_voice.transport.audio",
    "WavFileSource": "fsm_voice.transport.audio",
    "WavRecorder": "fsm_voice.transport.audio",
}

__all__ = [
    "STATUSES",
    "ActivityPolicy",
    "AudioFileError",
    "ChannelNotOpenError",
    "ConfigError",
    "ConnectionMetrics",
    "EphemeralKeyProvider",
    "ErrorSource",
    "Finalisation",
    "FsmVoiceError",
    "GracefulClose",
    "IcePolicy",
    "IceServer",
    "InvalidEventError",
    "KeepOpen",
    "LiveConfig",
    "LiveUsage",
    "MonitorPolicy",
    "NullSink",
    "QualityAlert",
    "QualityThresholds",
    "QueueOverflowError",
    "RealtimeConfig",
    "RetryPolicy",
    "RolloverPolicy",
    "SessionPolicy",
    "SessionStateError",
    "Severity",
    "SilenceSource",
    "Status",
    "StatusChange",
    "ToneSource",
    "TransportSignal",
    "UtteranceSource",
    "VoiceError",
    "VoiceSession",
    "WavFileSource",
    "WavRecorder",
    "live_session",
    "realtime_session",
]


def _status_enum() -> Any:
    """``fsm_voice.machine.Status``; until the machine defines it, the same StrEnum built
    from its ``STATUSES`` (so ``Status.ACTIVE == "active"`` either way)."""
    import enum

    machine = importlib.import_module("fsm_voice.machine")
    status = getattr(machine, "Status", None)
    if status is None:
        make: Any = enum.StrEnum  # members known only at run time
        status = make("Status", {s.upper(): s for s in machine.STATUSES}, module=__name__)
    return status


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'fsm_voice' has no attribute {name!r}")
    value = _status_enum() if name == "Status" else getattr(importlib.import_module(module), name)
    globals()[name] = value  # later look-ups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS})
